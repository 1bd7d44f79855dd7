"""TorchScript and ONNX export: any image size, same output as the eager model, the script."""

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import ROOT

from hrstyle.checkpoint import save_generator
from hrstyle.errors import UserError
from hrstyle.inference.onnx.export import export_checkpoint, export_onnx, export_torchscript, verify_exports
from hrstyle.models import HRNet

# Odd, not a multiple of 4, tiny (1 pixel high), square, and batches of 2.
SHAPES = [(1, 3, 37, 53), (1, 3, 64, 64), (1, 3, 1, 5), (2, 3, 9, 14), (2, 3, 30, 21)]
CONFIGS = [
    {"width": 1.0, "padding_mode": "zeros"},
    {"width": 0.5, "padding_mode": "reflect", "output": "residual"},
    {"width": 0.5, "padding_mode": "replicate", "output": "residual", "color_branch": True},
]
ATOL = 1e-4


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def exported(request, tmp_path_factory):
    """A seeded random-weight HRNet and its two exported files (exported once per config)."""
    torch.manual_seed(0)
    model = HRNet(**request.param).eval()
    torch.nn.init.normal_(model.head[3].weight, std=0.1)  # a residual model starts at zero: make it do something
    if model.color_branch:  # a target far from the identity: a warm, low-contrast style
        model.color.set_target(torch.tensor([0.6, 0.45, 0.3]), torch.tensor([[0.02, 0.01, 0.0], [0.01, 0.015, 0.0],
                                                                             [0.0, 0.0, 0.01]]))
    out = tmp_path_factory.mktemp("export")
    return model, export_torchscript(model, out / "m.torchscript.pt"), export_onnx(model, out / "m.onnx")


def reference(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("shape", SHAPES)
def test_torchscript_matches_eager_at_any_size(exported, shape):
    model, ts_path, _ = exported
    scripted = torch.jit.load(str(ts_path))
    x = torch.rand(shape)
    with torch.no_grad():
        y = scripted(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, reference(model, x), atol=ATOL, rtol=0)


def test_onnx_matches_eager_at_any_size(exported):
    ort = pytest.importorskip("onnxruntime")
    model, _, onnx_path = exported
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for shape in SHAPES:
        x = torch.rand(shape)
        (y,) = session.run(["stylized"], {"image": x.numpy()})
        assert y.shape == shape and y.dtype == "float32"
        torch.testing.assert_close(torch.from_numpy(y), reference(model, x), atol=ATOL, rtol=0)


def test_onnx_graph_has_dynamic_batch_and_size_and_instance_norm(exported):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(exported[2])).graph
    for value, name in ((graph.input[0], "image"), (graph.output[0], "stylized")):
        dims = value.type.tensor_type.shape.dim
        assert value.name == name
        assert dims[1].dim_value == 3
        # Symbolic, not fixed: the input's axes are named; the output's may be expressions
        # of them (the exporter does not simplify the pad-then-crop back to "height").
        assert all(dims[i].dim_param and not dims[i].dim_value for i in (0, 2, 3))
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    assert "InstanceNormalization" in {node.op_type for node in graph.node}
    assert not graph.initializer or all(t.data_location == onnx.TensorProto.DEFAULT for t in graph.initializer)


def test_torchscript_loads_without_hrstyle(exported, tmp_path):
    # The file carries its own code: a fresh interpreter with only torch can run it.
    code = textwrap.dedent(f"""
        import sys, torch
        sys.modules["hrstyle"] = None  # any import of hrstyle now fails
        model = torch.jit.load({str(exported[1])!r})
        print(tuple(model(torch.rand(1, 3, 7, 11)).shape))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(1, 3, 7, 11)"


def test_export_leaves_the_model_alone_and_exports_live_norm(tmp_path):
    # Tiled inference leaves norms frozen; export must not bake those statistics in.
    from hrstyle.models import frozen_norm_stats

    torch.manual_seed(1)
    model = HRNet(width=0.25).eval()
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad(), frozen_norm_stats(model, torch.rand(1, 3, 8, 8)):
        path = export_torchscript(model, tmp_path / "m.pt")
        assert model.layer1.body[1].mode == "frozen"
    assert not list(tmp_path.glob(".*.tmp"))
    torch.testing.assert_close(torch.jit.load(str(path))(x), reference(model, x), atol=ATOL, rtol=0)


def test_bad_formats_and_opset(tmp_path):
    ckpt = _small_checkpoint(tmp_path)
    with pytest.raises(UserError, match="formats"):
        export_checkpoint(ckpt, tmp_path, formats=["pdf"])
    with pytest.raises(UserError, match="opset"):
        export_onnx(HRNet(width=0.25), tmp_path / "m.onnx", opset=11)


def test_verify_reports_tiny_differences(exported):
    model, ts_path, onnx_path = exported
    pytest.importorskip("onnxruntime")
    diffs = verify_exports(model, {"torchscript": ts_path, "onnx": onnx_path})
    assert diffs["torchscript"] < ATOL and diffs["onnx"] < ATOL


def _small_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = HRNet(width=0.5)
    meta = {"generator_class": "hrstyle.models.hrnet.HRNet", "generator_config": model.config, "style_name": "tiny"}
    return save_generator(tmp_path / "tiny.pt", model, meta)


def run_script(tmp_path, *args):
    return subprocess.run([sys.executable, "scripts/export.py", f"hydra.run.dir={tmp_path}/hydra", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_script_end_to_end(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    proc = run_script(tmp_path, f"checkpoint={_small_checkpoint(tmp_path)}", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "tiny.torchscript.pt").is_file() and (out / "tiny.onnx").is_file()
    assert f"Wrote {out / 'tiny.onnx'}" in proc.stdout
    assert "torchscript: " in proc.stdout and "onnx: " in proc.stdout


def test_script_reports_missing_checkpoint_without_traceback(tmp_path):
    proc = run_script(tmp_path, f"checkpoint={tmp_path}/nope.pt", f"output_dir={tmp_path}/out")
    assert proc.returncode == 2
    assert "error: checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
