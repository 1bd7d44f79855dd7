"""The lift: a stylization computed at a working resolution, carried to the photo's full resolution.

For a photo style the result is, window by window, an affine colour transform of the photo (the
guided filter, ``photoreal``). Such a transform field is smooth, so it can be fitted where the
network ran, on the downscaled photo, and applied to the full-resolution photo after a bilinear
upsample: ``out(x) = A(x)·photo(x) + b(x)`` (He & Sun's fast guided filter, arXiv 1505.00996). Every
output pixel is the photo's own pixel under a slowly varying colour transform, so the photo's fine
detail comes through at full resolution, with no blur and no seams; the network and the fit cost
only what the working resolution costs.

The ridge: He's fit (``prior="zero"``, the default) pulls each window's ``A`` towards zero, so
windows whose contrast at the working resolution is below ``eps`` flatten towards their mean, and at
full resolution the fine texture they hide (averaged away by the downscale) is dimmed: under an
identity style 12–16% of the finest detail energy went at 2048 px from 512 (``capvst_01``,
``fps_content1``). ``prior="global"`` pulls towards the image's global colour transform instead, so an
identity or global style returns the photo (or its global grade) exactly for any ``eps``; but on
``winter.pt`` it kept less of the style (Gram distance 1–9% above the full-resolution path, He's
within 0.3%), hence not the default.

The full-resolution part streams over bands of rows: each band upsamples just the rows of the
coefficient field it needs (12 float32 maps per band, not per image) and writes its rows of the
output, so memory stays at the input and output images plus a few megabytes however large the photo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hrstyle.image.guided import FIELD_CHANNELS, affine_field, apply_affine, check_guided
from hrstyle.image.io import long_side_size

#: Output pixels per band: the band's 12 upsampled coefficient maps (48 bytes per pixel, ~6 MB here)
#: stay in the CPU's cache-friendly range; larger bands measured no faster.
BAND_PIXELS = 1 << 17


def working_shape(height: int, width: int, work_size: int | None) -> tuple[int, int]:
    """(height, width) at which the network runs: the long side at most ``work_size``.

    ``None`` (full resolution) and images no larger than ``work_size`` keep their size: never upscaled.
    """
    if work_size is None or max(height, width) <= work_size:
        return height, width
    w, h = long_side_size(width, height, work_size)
    return h, w


def downscale(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] → (N, 3, *size), antialiased (bilinear with a widened kernel, so
    every source pixel counts; no aliasing of fine texture); the same tensor when the size is equal."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def upsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) → (N, C, *size), bilinear (``align_corners=False``); unchanged when equal."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def lift(
    photo: torch.Tensor,
    small_photo: torch.Tensor,
    small_stylized: torch.Tensor,
    radius: int,
    eps: float = 1e-3,
    out: torch.Tensor | None = None,
    prior: str = "zero",
) -> torch.Tensor:
    """The full-resolution stylization of ``photo`` from its stylization at a working resolution.

    Args:
        photo: (N, 3, H, W) float in [0, 1], the full-resolution photo.
        small_photo: (N, 3, h, w) in [0, 1], the photo at the working resolution (h <= H, w <= W),
            the one the network ran on: the guide of the fit.
        small_stylized: (N, 3, h, w) in [0, 1], the network's output for ``small_photo``.
        radius, eps: the guided filter's window radius (>= 1, in working-resolution pixels) and
            ridge (``photoreal.affine_field``).
        out: an (N, 3, H, W) float32 tensor to write into (may be ``photo`` itself: each band
            reads its rows of the photo before writing them), else a new one.
        prior: what the ridge pulls ``A`` towards: "global" (the image's global colour transform,
            see the module's docstring) or "zero" (He et al.'s guided filter exactly, the default).

    Returns (N, 3, H, W) float32 in [0, 1]: per pixel ``A(x)·photo(x) + b(x)``, with ``A``, ``b``
    the guided filter's field fitted at (h, w) and upsampled bilinearly. At h, w = H, W with
    the default prior this is ``guided_filter(small_stylized, photo, radius, eps)``.
    """
    check_guided(radius, eps)
    if radius < 1:
        raise ValueError("the lift needs a guided-filter radius >= 1 (its local colour transforms)")
    if small_photo.shape != small_stylized.shape or small_photo.shape[:2] != photo.shape[:2]:
        raise ValueError(f"small photo {tuple(small_photo.shape)}, small stylized {tuple(small_stylized.shape)} "
                         f"and photo {tuple(photo.shape)} do not match")
    n, _, big_h, big_w = photo.shape
    h, w = small_photo.shape[-2:]
    if prior not in ("global", "zero"):
        raise ValueError(f"prior must be 'global' or 'zero', got {prior!r}")
    small_photo, small_stylized = small_photo.float(), small_stylized.float()
    towards = global_transform(small_photo, small_stylized) if prior == "global" else None
    field = affine_field(small_photo, small_stylized, radius, eps, towards)
    if out is None:
        out = torch.empty(n, 3, big_h, big_w, dtype=torch.float32, device=photo.device)
    rows = max(1, BAND_PIXELS // big_w)
    for top in range(0, big_h, rows):
        bottom = min(top + rows, big_h)
        band = _field_rows(field, top, bottom, big_h, big_w)
        apply_affine(band, photo[..., top:bottom, :].float(), out[..., top:bottom, :])
    return out


def global_transform(photo: torch.Tensor, stylized: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3): per image, the ``A`` of the least-squares fit ``stylized ≈ A·photo + b`` over all
    pixels (``A[c, j]``: output channel ``c`` from photo channel ``j``). Both (N, 3, h, w) in [0, 1];
    float64 statistics with a tiny ridge (a flat photo gives ``A`` = 0, its mean colour in ``b``)."""
    x = photo.flatten(2).double()
    y = stylized.flatten(2).double()
    x = x - x.mean(2, keepdim=True)
    y = y - y.mean(2, keepdim=True)
    pixels = x.shape[2]
    sigma = x @ x.transpose(1, 2) / pixels + 1e-8 * torch.eye(3, dtype=torch.float64)
    cross = y @ x.transpose(1, 2) / pixels  # cov(stylized_c, photo_j)
    return torch.linalg.solve(sigma, cross.transpose(1, 2)).transpose(1, 2).float()


def _field_rows(field: torch.Tensor, top: int, bottom: int, height: int, width: int) -> torch.Tensor:
    """Rows ``top:bottom`` of ``field`` (N, 12, h, w) upsampled bilinearly to (height, width), the same
    numbers as ``upsample(field, (height, width))[..., top:bottom, :]`` up to float rounding.

    Vertically, each output row mixes two field rows (``align_corners=False``: row ``y`` samples
    ``(y + 0.5)·h/height − 0.5``, clamped at the borders); horizontally one 1-D linear interpolation.
    """
    n, _, h, w = field.shape
    if h == height:
        rows = field[..., top:bottom, :]
    else:
        y = (torch.arange(top, bottom, dtype=torch.float64) + 0.5) * (h / height) - 0.5
        y = y.clamp_(min=0)
        y0 = y.floor().long().clamp_(max=h - 1)
        y1 = (y0 + 1).clamp_(max=h - 1)
        weight = (y - y0).to(field.dtype).view(1, 1, -1, 1)
        rows = torch.lerp(field.index_select(2, y0), field.index_select(2, y1), weight)
    if w == width:
        return rows
    flat = rows.reshape(n, FIELD_CHANNELS * rows.shape[2], w)
    return F.interpolate(flat, size=width, mode="linear", align_corners=False).view(n, FIELD_CHANNELS, -1, width)
