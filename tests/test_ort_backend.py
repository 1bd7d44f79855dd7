"""The default fast CPU path: ONNX Runtime on the cached export, untiled and tiled."""

import subprocess
import sys

import pytest
import torch
from helpers import ROOT

from hrstyle.errors import UserError
from hrstyle.inference import Stylizer, save_generator
from hrstyle.models import HRNet

ort = pytest.importorskip("onnxruntime")


def _random_checkpoint(path, seed=0, **config):
    torch.manual_seed(seed)
    model = HRNet(**config)
    for name, p in model.named_parameters():  # non-trivial norm affine parameters
        if name.endswith("bias"):
            p.data.uniform_(-0.5, 0.5)
    torch.nn.init.normal_(model.head[3].weight, std=0.1)
    meta = {"generator_class": "hrstyle.models.hrnet.HRNet", "generator_config": model.config, "style_name": "test"}
    return save_generator(path, model, meta)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random-weight checkpoint, a private cache with its export, and eager/ONNX stylizers."""
    root = tmp_path_factory.mktemp("ort")
    ckpt = _random_checkpoint(root / "style.pt")
    cache = root / "cache"
    fast = Stylizer(ckpt, device="cpu", tile_size=0, cache_dir=cache)  # exports once (~10-30 s)
    eager = Stylizer(ckpt, device="cpu", tile_size=0, backend="eager")
    return ckpt, cache, fast, eager


def smooth(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g)
    return torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # photo-like spatial structure


def test_onnx_is_the_cpu_default_and_matches_eager(setup):
    _, _, fast, eager = setup
    assert fast.backend == "onnx" and eager.backend == "eager"
    # Odd sizes, 1 pixel high, a batch, one size after another from one session (dynamic H and W).
    for shape in [(1, 3, 37, 53), (1, 3, 1, 5), (2, 3, 30, 21), (1, 3, 64, 64), (3, 3, 17, 40)]:
        x = smooth(*shape)
        y = fast(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert (y - eager(x)).abs().max() < 1e-3


def test_onnx_norms_stay_accurate_on_large_maps(setup):
    """ONNX Runtime's own InstanceNormalization sums whole maps in float32 (2.5e-3 off at 1024²);
    the rewritten norms must not drift with size."""
    _, _, fast, eager = setup
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 24, 20), size=(480, 400), mode="bilinear")
    assert (fast(x) - eager(x)).abs().max() < 1e-3


def test_post_controls_apply_on_the_onnx_path(setup):
    ckpt, cache, fast, eager = setup
    x = smooth(1, 3, 24, 40)
    full = fast(x)
    half = Stylizer(ckpt, device="cpu", strength=0.5, cache_dir=cache)
    assert half.backend == "onnx"
    torch.testing.assert_close(half(x), (x + full) / 2, atol=1e-5, rtol=0)
    kept = Stylizer(ckpt, device="cpu", preserve_color=True, cache_dir=cache)
    kept_eager = Stylizer(ckpt, device="cpu", preserve_color=True, backend="eager")
    assert (kept(x) - kept_eager(x)).abs().max() < 1e-3
    guided = Stylizer(ckpt, device="cpu", guided_radius=2, cache_dir=cache)
    guided_eager = Stylizer(ckpt, device="cpu", guided_radius=2, backend="eager")
    assert (guided(x) - guided_eager(x)).abs().max() < 1e-3


def test_cache_is_reused_and_keyed_by_content(setup, tmp_path, monkeypatch):
    import hrstyle.inference.onnx.export as export
    from hrstyle.inference.onnx.backend import cache_path

    ckpt, cache, fast, _ = setup
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: pytest.fail("re-exported a cached checkpoint"))
    again = Stylizer(ckpt, device="cpu", cache_dir=cache)
    assert again.backend == "onnx" and again._ort.path == fast._ort.path
    assert fast._ort.path == cache_path(ckpt, fast.model, cache)
    other = _random_checkpoint(tmp_path / "style.pt", seed=1)  # same name, other weights
    assert cache_path(other, fast.model, cache) != fast._ort.path


def test_falls_back_to_eager_with_a_one_line_warning(setup, tmp_path, monkeypatch, capsys):
    import hrstyle.inference.onnx.backend as backend
    import hrstyle.inference.onnx.export as export

    ckpt, _, _, eager = setup
    x = smooth(1, 3, 20, 30)
    # No onnxruntime.
    def missing():
        raise backend.BackendUnavailable("onnxruntime is not installed (test)")
    monkeypatch.setattr(backend, "import_onnxruntime", missing)
    plain = Stylizer(ckpt, device="cpu", cache_dir=tmp_path / "c1")
    err = capsys.readouterr().err.strip().splitlines()
    assert plain.backend == "eager" and len(err) == 1 and err[0].startswith("warning:") and "not installed" in err[0]
    torch.testing.assert_close(plain(x), eager(x))
    with pytest.raises(UserError, match="backend=onnx is not available"):
        Stylizer(ckpt, device="cpu", backend="onnx", cache_dir=tmp_path / "c1")
    monkeypatch.undo()
    # The export fails.
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded\nsecond line")
    monkeypatch.setattr(export, "export_onnx", broken)
    failed = Stylizer(ckpt, device="cpu", cache_dir=tmp_path / "c2")
    err = capsys.readouterr().err.strip().splitlines()
    assert failed.backend == "eager" and err[-1].startswith("warning:") and "exporter exploded" in err[-1]
    assert not list((tmp_path / "c2").rglob("*.onnx"))  # nothing half-written left in the cache


def test_backend_choice_follows_device_precision_and_compile(setup):
    ckpt, cache, _, _ = setup
    assert Stylizer(ckpt, device="cpu", precision="bf16", cache_dir=cache).backend == "eager"
    assert Stylizer(ckpt, device="cpu", backend="eager", cache_dir=cache).backend == "eager"
    with pytest.raises(UserError, match="fp32 on the CPU"):
        Stylizer(ckpt, device="cpu", precision="bf16", backend="onnx", cache_dir=cache)
    with pytest.raises(UserError, match="backend must be one of"):
        Stylizer(ckpt, device="cpu", backend="tensorrt")


@pytest.mark.parametrize("size,tile,cache_mb", [
    ((150, 203), 96, None),   # every cut cached
    ((97, 130), 100, 0),      # nothing cached: every pass recomputes from the image
    ((301, 197), 160, 3),     # a budget for only some tiles' cuts
    ((64, 300), 120, None),
])
def test_onnx_tiled_equals_untiled(setup, size, tile, cache_mb):
    ckpt, cache, _, eager = setup
    tiled = Stylizer(ckpt, device="cpu", tile_size=tile, cache_dir=cache, tile_cache_mb=cache_mb)
    assert tiled.backend == "onnx" and tiled.needs_tiling(*size)
    x = smooth(1, 3, *size, seed=1)
    assert (tiled(x) - eager(x)).abs().max() < 1e-4


def test_tiler_measures_each_norm_once_and_caches_small_cuts(setup):
    from hrstyle.inference.onnx.tiling import OrtTiler

    _, _, fast, _ = setup
    tiler = OrtTiler(fast._ort.path)
    summary = tiler.cut_summary()
    assert sum(n for _, n, _ in summary) == 29 and tiler.passes == len(summary) == 21
    # Cuts are trimmed back through cheap ops: never more than the widest stage of the network.
    assert max(channels for _, _, channels in summary) < 160


def test_warm_start_imports_neither_the_exporter_nor_the_training_stack(setup):
    """Start-up: with the export cached, stylizing imports no exporter (onnx, onnxscript,
    torch.onnx), no kornia (only the guided filter needs it) and nothing of training."""
    ckpt, cache, _, _ = setup
    code = (
        "import sys, torch\n"
        "from hrstyle.inference import Stylizer\n"
        f"s = Stylizer({str(ckpt)!r}, device='cpu', cache_dir={str(cache)!r})\n"
        "assert s.backend == 'onnx'\n"
        "s(torch.rand(1, 3, 16, 16))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxscript', 'kornia', "
        "'pytorch_lightning', 'lightning', 'torchvision') or m.startswith(('torch.onnx', 'hrstyle.training', "
        "'hrstyle.losses')))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_sessions_plan_no_memory_pattern():
    """With dynamic H, W a memory pattern is planned per shape next to the arena: twice the peak."""
    from hrstyle.inference.onnx.session import session_options

    assert session_options(1, arena=True).enable_mem_pattern is False


