"""The memory budget of CPU inference: the plan (untiled, batch, tile, stage cache) and that the
Stylizer and the file runner follow it."""

import pytest
import torch

from conftest import random_photo
from hrstyle.errors import UserError
from hrstyle.inference import Stylizer, plan_jobs, stylize_files
from hrstyle.inference import memory
from hrstyle.inference.memory import GIB, plan_tiling, tile_bytes, untiled_bytes
from hrstyle.inference.tiling import min_tile_size

pytest.importorskip("onnxruntime")


def test_small_images_run_untiled_in_batches_that_fit():
    plan = plan_tiling(1024, 1024, 11 * GIB)
    assert plan.tile_size == 0 and plan.cache_bytes == 0
    assert plan.batch >= 2 and plan.estimate <= 11 * GIB
    assert untiled_bytes(1024 * 1024 * (plan.batch + 1)) > 11 * GIB  # the largest batch that fits
    # 2048² untiled fits half of a 24 GB machine (measured 9.4 GB): the fast path is kept.
    assert plan_tiling(2048, 2048, 11 * GIB).tile_size == 0


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


def test_batches_never_exceed_the_budget(tiny_checkpoint, tmp_path, monkeypatch):
    """Same-size photos share a forward only as far as the budget allows (four 4 MP phone photos
    in one batch would need about 40 GB)."""
    stylizer = Stylizer(tiny_checkpoint, device="cpu", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(memory, "RUNTIME_BYTES", 0)
    stylizer.memory_bytes = memory.untiled_bytes(2 * 40 * 30)  # room for two 40×30 images per forward
    assert stylizer.batch_limit(30, 40) == 2
    src = tmp_path / "in"
    for i in range(5):
        random_photo(src / f"p{i}.png", (40, 30))
    sizes = []
    forward = stylizer._ort.__call__
    monkeypatch.setattr(type(stylizer._ort), "__call__", lambda self, x: sizes.append(len(x)) or forward(x))
    jobs, _ = plan_jobs(str(src), str(tmp_path / "out"))
    summary = stylize_files(stylizer, jobs, batch_size=4, log=lambda _: None)
    assert summary.done == 5 and not summary.failed
    assert sizes and max(sizes) == 2 and sum(sizes) == 5
