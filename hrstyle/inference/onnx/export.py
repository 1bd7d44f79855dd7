"""Export a trained generator to TorchScript and ONNX for use without hrstyle.

Both files hold one function of an RGB batch ``image``: float32, (N, 3, H, W), values in
[0, 1], any N >= 1 and any H, W >= 1 (odd sizes included; the network pads to a multiple
of 4 internally and crops back). It returns ``stylized``, float32, same shape, in [0, 1].
Instance norm is "live": each image is normalized with its own statistics, as in training
(no tiling, so memory grows with H×W).

What they need at run time:

* TorchScript (``<name>.torchscript.pt``): only ``torch`` (CPU or CUDA)::

      model = torch.jit.load("starry.torchscript.pt")
      stylized = model(image)

* ONNX (``<name>.onnx``, one self-contained file, opset 20 by default): an ONNX runtime,
  e.g. ``onnxruntime >= 1.17`` (``pip install -e ".[onnx]"``)::

      session = onnxruntime.InferenceSession("starry.onnx")
      (stylized,) = session.run(None, {"image": image})  # numpy float32 arrays

  Batch, height and width are dynamic axes named ``batch``, ``height``, ``width``.

Large photos: run the network at a working resolution and lift (what ``Stylizer`` does by
default, ``work_size=512``; ``hrstyle.image.lift``). The exported network is only the first
step; a deployment does the rest in a few lines of array code:

1. ``small`` = the photo resized (antialiased) so its long side is ``work_size`` (never upscaled).
2. ``styled`` = the network on ``small``, clamped to [0, 1].
3. Painterly styles (``guided_radius`` 0 in the checkpoint): upsample ``styled`` bilinearly to the
   photo's size. Photo styles: the fast guided filter (He & Sun 2015) with radius ``r`` = the
   checkpoint's ``guided_radius`` (in working-resolution pixels) and ``eps`` = 1e-3. At the working
   resolution, with box means ``mean(.)`` over (2r+1)² windows (reflected borders): ``Σ`` = the
   3×3 local covariance of ``small``, ``C`` = the local cross-covariance of ``styled`` with
   ``small``; ``A = C(Σ + eps·I)⁻¹`` and ``b = mean(styled) − A·mean(small)`` per pixel (He et
   al.'s guided-filter coefficients); then ``A``, ``b`` box-averaged once more, upsampled
   bilinearly (half-pixel centres, ``align_corners=False``) to the photo's size, and
   ``out = clamp(A(x)·photo(x) + b(x), 0, 1)``.
4. The checkpoint's colour match (its ``color_match`` strength towards ``style_color``), as
   ``hrstyle.image.color.match_color``; with ``color_bands`` > 1 in the checkpoint, the graduated
   match ``match_color_banded`` towards ``style_color["bands"]`` (one 3×3 map per horizontal band,
   blended per row with the Gaussian band weights of ``band_weights``), its strength multiplied by
   ``layout_weight`` of the photo (0 for a photo without a sky-above-ground layout). The default
   aligns the horizons first: the band targets are ``aligned_band_statistics`` of
   ``style_color["strips"]`` (the style's 64 strip statistics and its horizon) for the photo (its
   ``find_horizon``, the move weighted by ``layout_weight``, limited by ``move_horizon``). Each map's
   eigenvalues (it is symmetric) are capped at ``MAX_GAIN`` = 2 before the strength blends it with
   the identity (``max_gain``: no stretching of flat bands into streaks).

Step 3 costs about 12 multiply-adds per pixel and channel at full resolution and can run in bands
of rows; ``hrstyle.image.lift.lift`` is the reference implementation.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from hrstyle.checkpoint import load_generator, resolve_checkpoint
from hrstyle.errors import UserError
from hrstyle.models.norm import set_norm_mode

#: Export formats and the file suffix of each.
FORMATS = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
#: ONNX opset written by default: what torch's dynamo exporter emits, and the newest opset
#: that onnxruntime 1.17 (the oldest version pyproject allows) runs.
DEFAULT_OPSET = 20
MIN_OPSET = 18
#: Input and output names of the ONNX graph.
INPUT_NAME, OUTPUT_NAME = "image", "stylized"
ONNX_HINT = 'pip install -e ".[onnx]"'


def export_torchscript(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` as a scripted TorchScript module; returns ``path``.

    Scripting (not tracing) keeps every size computation symbolic, so the file runs on any
    (N, 3, H, W) input exactly like the eager model. Loading needs only ``torch.jit.load``.
    """
    with _writing(Path(path)) as tmp, _jit_without_deprecation_warnings():
        torch.jit.save(torch.jit.script(_prepared(model)), str(tmp))
    return Path(path)


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int | None = None) -> Path:
    """Write ``model`` as one ONNX file with dynamic batch, height and width; returns ``path``.

    Input ``image`` and output ``stylized`` are float32 (N, 3, H, W) in [0, 1]. Uses the
    torch.export-based exporter (the default since torch 2.9; the TorchScript-based one is
    deprecated), which needs the ``onnx`` and ``onnxscript`` packages.
    """
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < MIN_OPSET:
        # Older opsets fail to convert (no adapter for Pad) and would come out as 18 anyway.
        raise UserError(f"ONNX opset must be >= {MIN_OPSET} (torch's ONNX exporter), got {opset}")
    model = _prepared(model)
    # A sample with batch > 1 and sizes not a multiple of 4, so that nothing is specialized
    # to 1 or to "no padding".
    sample = torch.rand(2, 3, 61, 47)
    # Strings become Dim.DYNAMIC and name the ONNX axes. Named torch.export.Dim objects trip
    # an assertion in torch's constraint solver on reflect-padded models (torch 2.14).
    dims = {0: "batch", 2: "height", 3: "width"}
    with _writing(Path(path)) as tmp:
        try:
            torch.onnx.export(
                model, (sample,), str(tmp), dynamo=True, dynamic_shapes=(dims,), opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                external_data=False,  # weights inside the .onnx: one file to ship
                verbose=False,
            )
        except ImportError as exc:
            raise UserError(f"ONNX export needs the onnx and onnxscript packages ({exc}); {ONNX_HINT}") from exc
    return Path(path)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: str | Sequence[str] = tuple(FORMATS),
    opset: int | None = None,
    name: str | None = None,
) -> tuple[nn.Module, dict[str, Path]]:
    """Export the generator of ``checkpoint`` to ``output_dir/<name><suffix>`` per format.

    ``name`` defaults to the checkpoint's style name (a Lightning ``last.ckpt`` says little),
    else its file name. Returns the eager model (for ``verify_exports``) and the files written.
    """
    formats = [formats] if isinstance(formats, str) else list(formats)  # formats=onnx on the command line
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"formats must be a non-empty subset of {list(FORMATS)}, got {formats}")
    model, meta = load_generator(checkpoint)
    name = name or meta.get("style_name") or resolve_checkpoint(checkpoint).stem
    files: dict[str, Path] = {}
    for fmt in formats:
        path = Path(output_dir) / f"{name}{FORMATS[fmt]}"
        files[fmt] = export_torchscript(model, path) if fmt == "torchscript" else export_onnx(model, path, opset)
    return model, files


def verify_exports(model: nn.Module, files: dict[str, Path], size: tuple[int, int] = (61, 47),
                   seed: int = 0) -> dict[str, float | str]:
    """Max |exported - eager| of each exported file on one random (1, 3, *size) image.

    Values are floats, or a message string when a file could not be checked (no onnxruntime).
    """
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = _prepared(model)(x)
        results: dict[str, float | str] = {}
        for fmt, path in files.items():
            if fmt == "torchscript":
                with _jit_without_deprecation_warnings():
                    out = torch.jit.load(str(path), map_location="cpu")(x)
            else:
                try:
                    import onnxruntime
                except ImportError:
                    results[fmt] = f"not checked: onnxruntime is not installed ({ONNX_HINT})"
                    continue
                session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                out = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
            results[fmt] = (out - reference).abs().max().item()
    return results


def _prepared(model: nn.Module) -> nn.Module:
    """A copy in the exported state: CPU, fp32, eval, live instance norm (caller's model untouched)."""
    model = copy.deepcopy(model).cpu().float().eval()
    set_norm_mode(model, "live")
    return model.requires_grad_(False)


@contextmanager
def _jit_without_deprecation_warnings() -> Iterator[None]:
    # torch.jit is deprecated in favour of torch.export, but it is still the one format that
    # loads with torch alone (no Python source) and runs any input size from one file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """A temporary file next to ``path`` that replaces it only once completely written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
