"""The memory budget of CPU inference: the plan (untiled, batch, tile, stage cache) and that the
Stylizer and the file runner follow it."""

import time

import pytest
import torch
from helpers import random_photo

from hrstyle.errors import UserError
from hrstyle.image.tiles import min_tile_size
from hrstyle.inference import Stylizer, plan_jobs, stylize_files
from hrstyle.inference.onnx import memory
from hrstyle.inference.onnx.memory import GIB, TilingPlan, arena_bytes, plan_tiling, tile_bytes, untiled_bytes

pytest.importorskip("onnxruntime")


def test_small_images_run_untiled_in_batches_that_fit():
    plan = plan_tiling(1024, 1024, 11 * GIB)
    assert plan.tile_size == 0 and plan.cache_bytes == 0
    # Batches over ARENA_MAX_PIXELS keep the arena when it fits: costed at its (higher) rate.
    assert plan.arena and plan.batch >= 2 and plan.estimate == arena_bytes(1024 * 1024 * plan.batch) <= 11 * GIB
    assert arena_bytes(1024 * 1024 * (plan.batch + 1)) > 11 * GIB  # the largest batch that fits
    one = plan_tiling(1024, 1024, int(3.5 * GIB))  # up to ARENA_MAX_PIXELS the arena is always kept
    assert one.arena and one.batch == 1 and one.tile_size == 0
    # 2048² untiled fits 11 GiB (measured 9.4 GB without the arena), with its arena (13.3 GiB) 15 GiB.
    assert plan_tiling(2048, 2048, 11 * GIB) == TilingPlan(0, 1, 0, untiled_bytes(2048 * 2048), arena=False)
    assert plan_tiling(2048, 2048, 15 * GIB) == TilingPlan(0, 1, 0, arena_bytes(2048 * 2048), arena=True)


@pytest.mark.slow
def test_an_arena_is_held_for_one_large_shape_and_never_beside_other_runs(tiny_checkpoint, tmp_path, monkeypatch):
    """The arena grown for a large batch is kept for the next batch of that shape (no page faults),
    and dropped (its memory freed) before another large shape; no arena, small or large, is held
    during an arena-less or a tiled run (the budget plans those alone)."""
    from hrstyle.inference.onnx import backend as ort_backend

    stylizer = Stylizer(tiny_checkpoint, device="cpu", cache_dir=tmp_path / "cache")
    ort = stylizer._ort
    monkeypatch.setattr(ort_backend, "ARENA_MAX_PIXELS", 40 * 40)
    a, b, small = torch.rand(1, 3, 48, 48), torch.rand(1, 3, 48, 64), torch.rand(1, 3, 32, 32)
    expected = ort(a, arena=False)
    first = ort(a, arena=True)
    session = ort.session
    assert torch.allclose(first, expected, atol=1e-5)
    ort(a, arena=True)
    assert ort.session is session  # same shape: the grown arena is reused
    ort(small)
    assert ort.session is session  # small batches run inside it
    ort(b, arena=True)
    assert ort.session is not session  # another large shape: a fresh arena
    ort(a, arena=False)
    assert ort.session is None  # an arena-less run does not hold a large arena beside it
    ort(small)
    assert ort.session is not None
    ort(a, arena=True)
    ort.tiled(torch.rand(1, 3, 100, 100), min_tile_size(32), 32)
    assert ort.session is None  # neither does a tiled run
    ort(small)
    ort.tiled(torch.rand(1, 3, 100, 100), min_tile_size(32), 32)
    assert ort.session is None  # nor the small-batch arena


@pytest.mark.parametrize("budget_gb", [3, 6, 11, 40])
def test_large_images_are_tiled_within_the_budget(budget_gb):
    budget = budget_gb * GIB
    plan = plan_tiling(4000, 6000, budget)  # a 24 MP photo
    assert plan.tile_size in memory.TILE_SIZES and plan.batch == 1
    assert plan.estimate <= budget
    assert plan.estimate >= tile_bytes(plan.tile_size, 32) + memory.RUNTIME_BYTES  # the tile's passes are counted


def test_more_memory_buys_cache_first_then_larger_tiles():
    plans = [plan_tiling(4000, 6000, gb * GIB) for gb in (3, 4, 6, 11, 20)]
    caches = [p.cache_bytes for p in plans]
    tiles = [p.tile_size for p in plans]
    assert caches == sorted(caches) and caches[0] < caches[-1]
    assert tiles == sorted(tiles) and tiles[0] == 512 and tiles[-1] == 1024
    # The tile never takes most of the room: the stage cache is what makes tiling cheap.
    big = plans[-1]
    assert big.cache_bytes > tile_bytes(big.tile_size, 32)


def test_forced_tile_size_and_impossible_budgets():
    plan = plan_tiling(3000, 3000, 11 * GIB, tile_size=768)
    assert plan.tile_size == 768 and plan.cache_bytes > 0
    assert plan_tiling(700, 700, 11 * GIB, tile_size=768).tile_size == 0  # smaller than one tile
    assert plan_tiling(30000, 30000, 400 * GIB, tile_size=0).tile_size == 0  # 0: never tile
    tight = plan_tiling(4000, 6000, GIB)  # below what the image itself needs: smallest tile, no cache
    assert tight.tile_size == 512 and tight.cache_bytes == 0
    assert plan_tiling(400, 400, GIB // 4).tile_size == 0  # less than one tile: untiled is no worse
    assert plan_tiling(4000, 6000, 3 * GIB, margin=400).tile_size == min_tile_size(400)  # never below the margin's minimum
    with pytest.raises(ValueError):
        plan_tiling(0, 10, GIB)


@pytest.mark.slow
def test_stylizer_follows_the_plan(tiny_checkpoint, tmp_path, monkeypatch):
    """A budget too small for a 150×200 image (with test-sized tiles) makes the default path tile it,
    with the planned tile and cache, and the result is still the untiled one."""
    cache = tmp_path / "cache"
    plain = Stylizer(tiny_checkpoint, device="cpu", tile_size=0, cache_dir=cache)
    assert plain.backend == "onnx" and plain.memory_bytes > 0
    # The reference: eager PyTorch (the untiled onnx graph's variance formula is the less exact one).
    eager = Stylizer(tiny_checkpoint, device="cpu", tile_size=0, backend="eager")
    assert eager.memory_bytes is None and eager.plan(4000, 6000).tile_size == 0
    monkeypatch.setattr(memory, "TILE_SIZES", (160, 128))
    monkeypatch.setattr(memory, "RUNTIME_BYTES", 0)
    monkeypatch.setattr(memory, "TILE_BYTES", 0)
    monkeypatch.setattr(memory, "STORE_BYTES", 0)
    budget_gb = (untiled_bytes(150 * 200) - 1) / GIB  # just too small for the untiled forward
    small = Stylizer(tiny_checkpoint, device="cpu", cache_dir=cache, memory_gb=budget_gb)
    plan = small.plan(150, 200)
    assert plan.tile_size in (160, 128) and plan.cache_bytes > 0 and small.needs_tiling(150, 200)
    assert not small.needs_tiling(60, 80) and small.batch_limit(60, 80) >= 2
    calls = []
    tiled = small._ort.tiled
    monkeypatch.setattr(small._ort, "tiled", lambda *a: calls.append(a[1:]) or tiled(*a))
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 150, 200, generator=g), 5, 1, 2)
    assert (small(x) - eager(x)).abs().max() < 1e-4
    assert calls == [(plan.tile_size, small.tile_margin, plan.cache_bytes)]
    with pytest.raises(UserError, match="memory_gb"):
        Stylizer(tiny_checkpoint, device="cpu", cache_dir=cache, memory_gb=0)


@pytest.mark.slow
def test_batches_never_exceed_the_budget(tiny_checkpoint, tmp_path, monkeypatch):
    """Same-size photos share a forward only as far as the budget allows (four 4 MP phone photos
    in one batch would need about 40 GB)."""
    stylizer = Stylizer(tiny_checkpoint, device="cpu", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(memory, "RUNTIME_BYTES", 0)
    memory.process_budget(memory.untiled_bytes(2 * 40 * 30) / memory.GIB)  # room for two 40×30 images per forward
    assert stylizer.batch_limit(30, 40) == 2
    src = tmp_path / "in"
    for i in range(5):
        random_photo(src / f"p{i}.png", (40, 30))
    sizes = []
    forward = stylizer._ort.__call__
    monkeypatch.setattr(type(stylizer._ort), "__call__", lambda self, x, **kw: sizes.append(len(x)) or forward(x, **kw))
    jobs, _ = plan_jobs(str(src), str(tmp_path / "out"))
    summary = stylize_files(stylizer, jobs, batch_size=4, log=lambda _: None)
    assert summary.done == 5 and not summary.failed
    assert sizes and max(sizes) == 2 and sum(sizes) == 5


def test_read_ahead_holds_one_large_image(tiny_checkpoint, tmp_path, monkeypatch):
    """Images the budget tiles are recognised from their header before decoding: while one is
    stylized at most one more is decoded (not 2 × batch_size: eight 24 MP photos are ~2.3 GB of
    float tensors), and each goes to the model alone; small ones still batch and read ahead."""
    from hrstyle.inference import files

    stylizer = Stylizer(tiny_checkpoint, device="cpu", cache_dir=tmp_path / "cache")
    large = lambda h, w: h * w > 40 * 30  # noqa: E731 - "tiled" by this budget: anything over 40×30
    monkeypatch.setattr(stylizer, "needs_tiling", large)
    src = tmp_path / "in"
    sizes = [(40, 30)] * 3 + [(64, 48)] * 4 + [(40, 30)] * 2
    for i, size in enumerate(sizes):
        random_photo(src / f"p{i}.png", size, seed=i)
    started, finished = [], []
    decode = files._decode
    monkeypatch.setattr(files, "_decode", lambda job, *a: started.append(job.src.name) or decode(job, *a))
    forward = stylizer.stylize_tensor

    def stylize(x):
        h, w = x.shape[-2:]
        if not batches:  # the read-ahead has submitted the next photo: let a busy machine's worker start it
            deadline = time.monotonic() + 10
            while len(started) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
        # large images decoded (or decoding) and not yet stylized, this one included; and all images
        large_in_flight = sum(sizes[int(name[1:-4])] == (64, 48) for name in started) - finished.count((48, 64))
        finished.extend([(h, w)] * len(x))
        batches.append((len(x), (w, h), large_in_flight, len(started) - len(finished) + len(x)))
        return forward(x)

    batches = []
    monkeypatch.setattr(stylizer, "stylize_tensor", stylize)
    jobs, _ = plan_jobs(str(src), str(tmp_path / "out"))
    summary = stylize_files(stylizer, jobs, batch_size=3, log=lambda _: None)
    assert summary.done == len(sizes) and not summary.failed
    assert [b[:2] for b in batches] == [(3, (40, 30))] + [(1, (64, 48))] * 4 + [(2, (40, 30))]
    assert batches[0][3] >= 4  # small photos: decoding ran ahead of the first batch
    for _, _, large_in_flight, _ in batches[1:5]:
        assert large_in_flight <= 2, f"{large_in_flight} large images decoded at once"
