"""The fast CPU backend: the generator exported once to ONNX and run by ONNX Runtime.

ONNX Runtime runs hrstyle's own exported graph several times faster than eager PyTorch on the CPU
(docs/benchmarks.md). The export has dynamic batch, height
and width, so a folder of mixed-size photos never recompiles anything; it is made once per
checkpoint and kept on disk:

    <cache_dir>/onnx/<checkpoint stem>-<key>.onnx        the export (the tiled path works on it)
    <cache_dir>/onnx/<checkpoint stem>-<key>.fast.onnx   what untiled inference runs (below)

where ``key`` hashes the checkpoint's bytes, the source of the generator's code, the opset and the
torch version (anything that could change the exported graph). ``cache_dir`` is, in order: the
argument, ``$HRSTYLE_CACHE_DIR``, ``$XDG_CACHE_HOME/hrstyle``, ``~/.cache/hrstyle``.

ONNX Runtime's ``InstanceNormalization`` accumulates each channel's mean and variance in float32
over the whole feature map: at 1024² that moved outputs by up to 2.5e-3 from PyTorch (float64
reference: eager fp32 7.8e-6). The ``.fast.onnx`` graph therefore computes each norm's statistics
in two levels (per row, then over the rows: ``ReduceMean`` and ``ReduceSumSquare``), takes the
variance as E[x²] - E[x]² in float32 (the inputs' |mean| / std is below 7 on real photos) and
normalizes with ``BatchNormalization``: 9e-5 from the float64 reference at 1024².

Every fresh export is checked against the eager model before it is used (max difference ≤ 1e-3);
a failed export, a failed check or a missing ``onnxruntime`` raises ``BackendUnavailable``, and the
Stylizer falls back to eager PyTorch with a one-line warning.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrstyle.inference.onnx.export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME
from hrstyle.inference.onnx.memory import ARENA_MAX_PIXELS
from hrstyle.inference.onnx.session import BackendUnavailable, default_threads, import_onnxruntime, make_session
from hrstyle.inference.onnx.tiling import OrtTiler
from hrstyle.paths import user_path

#: Largest |ONNX Runtime - eager| accepted for a fresh export (on the 61×47 check image: ~1e-6).
EXPORT_TOLERANCE = 1e-3


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where exported graphs are kept (see the module docstring)."""
    if cache_dir:
        return user_path(cache_dir)
    if os.environ.get("HRSTYLE_CACHE_DIR"):
        return user_path(os.environ["HRSTYLE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return user_path(base) / "hrstyle"


def _code_digest(model: nn.Module) -> bytes:
    """The source of the modules that define the generator: a change to the network's code invalidates the cache."""
    digest = hashlib.sha256()
    modules = {type(m).__module__ for m in model.modules()}
    for name in sorted(modules):
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and name.startswith("hrstyle."):
            digest.update(name.encode())
            digest.update(Path(path).read_bytes())
    return digest.digest()


def cache_path(checkpoint: str | os.PathLike, model: nn.Module, cache_dir: str | os.PathLike | None = None,
               opset: int = DEFAULT_OPSET) -> Path:
    """The cached ONNX file for this checkpoint, generator code, opset and torch version."""
    checkpoint = Path(checkpoint)
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    digest.update(_code_digest(model))
    digest.update(f"opset={opset} torch={torch.__version__}".encode())
    return default_cache_dir(cache_dir) / "onnx" / f"{checkpoint.stem}-{digest.hexdigest()[:20]}.onnx"


def fast_path(export: Path) -> Path:
    """The accurate-norm graph cached next to ``export``."""
    return export.with_name(export.name.removesuffix(".onnx") + ".fast.onnx")


def accurate_norms(model: Any) -> Any:
    """Rewrite every ``InstanceNormalization`` of an ONNX ``ModelProto`` (in place, returned):
    two-level mean and mean of squares, then ``BatchNormalization`` with those statistics."""
    from onnx import TensorProto, helper

    graph = model.graph
    nodes = []
    consts = [helper.make_tensor("hrs_axis_w", TensorProto.INT64, [1], [3]),
              helper.make_tensor("hrs_axis_h", TensorProto.INT64, [1], [2]),
              helper.make_tensor("hrs_flat", TensorProto.INT64, [1], [-1]),
              helper.make_tensor("hrs_fold", TensorProto.INT64, [4], [1, -1, 0, 0])]
    for i, node in enumerate(graph.node):
        if node.op_type != "InstanceNormalization":
            nodes.append(node)
            continue
        x, scale, bias = node.input
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        p = f"hrs_in{i}_"
        nodes += [
            helper.make_node("ReduceMean", [x, "hrs_axis_w"], [p + "row_mean"], keepdims=1),
            helper.make_node("ReduceMean", [p + "row_mean", "hrs_axis_h"], [p + "mean4"], keepdims=1),
            helper.make_node("ReduceSumSquare", [x, "hrs_axis_w"], [p + "row_ssq"], keepdims=1),
            helper.make_node("ReduceMean", [p + "row_ssq", "hrs_axis_h"], [p + "ssq4"], keepdims=1),
            helper.make_node("Shape", [x], [p + "width"], start=3, end=4),
            helper.make_node("Cast", [p + "width"], [p + "width_f"], to=TensorProto.FLOAT),
            helper.make_node("Div", [p + "ssq4", p + "width_f"], [p + "sq_mean4"]),
            helper.make_node("Mul", [p + "mean4", p + "mean4"], [p + "mean_sq4"]),
            helper.make_node("Sub", [p + "sq_mean4", p + "mean_sq4"], [p + "var4_raw"]),
            helper.make_node("Relu", [p + "var4_raw"], [p + "var4"]),  # rounding never makes it negative
            helper.make_node("Reshape", [p + "var4", "hrs_flat"], [p + "var"]),
            helper.make_node("Reshape", [p + "mean4", "hrs_flat"], [p + "mean"]),
            # A batch of N is normalized as one image of N·C channels (reshapes are free).
            helper.make_node("Shape", [x], [p + "shape"]),
            helper.make_node("Shape", [x], [p + "n"], start=0, end=1),
            helper.make_node("Tile", [scale, p + "n"], [p + "scale"]),
            helper.make_node("Tile", [bias, p + "n"], [p + "bias"]),
            helper.make_node("Reshape", [x, "hrs_fold"], [p + "x"]),
            helper.make_node("BatchNormalization", [p + "x", p + "scale", p + "bias", p + "mean", p + "var"],
                             [p + "y"], name=f"hrs_in{i}", epsilon=eps),
            helper.make_node("Reshape", [p + "y", p + "shape"], list(node.output)),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(consts)
    return model


def export_cached(checkpoint: str | os.PathLike, model: nn.Module, cache_dir: str | os.PathLike | None = None,
                  opset: int = DEFAULT_OPSET, log: Any = None) -> Path:
    """The ONNX file of ``model`` (the generator of ``checkpoint``): from the cache, or exported,
    checked against eager and cached. Raises ``BackendUnavailable`` when that fails."""
    import_onnxruntime()
    path = cache_path(checkpoint, model, cache_dir, opset)
    if path.is_file() and fast_path(path).is_file():
        return path
    if log is not None:
        log(f"Preparing the fast CPU backend (once per checkpoint): exporting {Path(checkpoint).name} to {path}")
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.partial.onnx")
    tmp_fast = path.with_name(f"{path.stem}.{os.getpid()}.partial.fast.onnx")
    try:
        import onnx

        from hrstyle.inference.onnx.export import export_onnx, verify_exports

        export_onnx(model, tmp, opset)
        onnx.save(accurate_norms(onnx.load(str(tmp))), str(tmp_fast))
        for file in (tmp, tmp_fast):
            diff = verify_exports(model, {"onnx": file}, size=(61, 47))["onnx"]
            if not isinstance(diff, float) or not diff <= EXPORT_TOLERANCE:
                raise BackendUnavailable(f"the exported graph differs from PyTorch by {diff}")
        # Atomic renames, the fast graph first: a process that sees the export sees both.
        os.replace(tmp_fast, fast_path(path))
        os.replace(tmp, path)
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any exporter failure means "use eager"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BackendUnavailable(f"ONNX export failed: {type(exc).__name__}: {message}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        tmp_fast.unlink(missing_ok=True)
    return path


class OrtGenerator:
    """The generator as an ONNX Runtime session: ``(N, 3, H, W)`` float32 in [0, 1] → same shape.

    ``tiled`` runs one image tile by tile with exact instance-norm statistics (``ort_tiling``).
    """

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(onnx_path)
        self.threads = threads or default_threads()
        fast = fast_path(self.path)
        self._graph = fast if fast.is_file() else self.path
        self.session = make_session(self._graph, self.threads, arena=True)
        self._large_shape: tuple[int, ...] | None = None  # the large batch shape the arena was grown for
        self._big_session: Any = None  # without the arena, for large batches (made when first needed)
        self._tiler: Any = None

    def __call__(self, images: torch.Tensor, arena: bool | None = None) -> torch.Tensor:
        """``arena``: keep ONNX Runtime's memory arena for this batch (None: only up to ``ARENA_MAX_PIXELS``)."""
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        large = x.shape[0] * x.shape[2] * x.shape[3] > ARENA_MAX_PIXELS
        arena = not large if arena is None else arena
        if not arena or (large and x.shape != self._large_shape):
            self._release_arena()  # one large shape's arena at most, and none beside arena-less or tiled runs
        if arena:
            if self.session is None:
                self.session = make_session(self._graph, self.threads, arena=True)
            if large:
                self._large_shape = x.shape
            (y,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        else:
            if self._big_session is None:
                self._big_session = make_session(self._graph, self.threads, arena=False)
            (y,) = self._big_session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return torch.from_numpy(y)

    def _release_arena(self) -> None:
        """Drop the arena session: what its arena grew to goes back to the system, so the memory budget
        holds for the run that follows (a new session, made when next needed, costs ~0.1 s)."""
        self.session = None
        self._large_shape = None

    def release_memory(self) -> None:
        """Give back what this generator holds between forwards (its arena and tiler), for another's turn."""
        self._release_arena()
        self._tiler = None

    def tiled(self, image: torch.Tensor, tile_size: int, margin: int, cache_bytes: int | None = None) -> torch.Tensor:
        """One (1, 3, H, W) image, tiled, equal to ``self(image)`` up to float rounding."""

        self._release_arena()
        if self._tiler is None:
            self._tiler = OrtTiler(self.path, self.threads)
        return self._tiler(image, tile_size, margin, cache_bytes)


def load_ort_generator(checkpoint: str | os.PathLike, model: nn.Module, cache_dir: str | os.PathLike | None = None,
                       threads: int | None = None, log: Any = None) -> OrtGenerator:
    """Export (or find in the cache) and open the ONNX Runtime session; ``BackendUnavailable`` on failure."""
    path = export_cached(checkpoint, model, cache_dir, log=log)
    try:
        return OrtGenerator(path, threads)
    except Exception as exc:  # noqa: BLE001 - a corrupt cache file, an old runtime, ...
        raise BackendUnavailable(f"onnxruntime cannot load {path}: {exc}") from exc
