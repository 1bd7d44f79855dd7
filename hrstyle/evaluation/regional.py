"""Regional colour distance: does each region of the output look like the matching region of the style?

A photo style promises sky to sky and ground to ground, which one global number cannot check. With a
segmentation of the photo and of the style (label maps in which the same value means the same kind of
region in both), the distance is, for every label covering at least ``min_share`` of both images:

* a Gaussian fitted to the region's CIELAB colours in the output, another to the same region in the style;
* the 2-Wasserstein distance between the two Gaussians (CIELAB units: ~2.3 is a just-noticeable difference);

averaged over the regions, weighted by the region's area in the photo. 0 = every region has the style's
colour distribution (as far as mean and covariance tell). Masks are evaluation data only: training and
inference never need them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from kornia.color import rgb_to_lab
from PIL import Image

from hrstyle.errors import UserError
from hrstyle.image.color import sqrtm_psd
from hrstyle.image.io import IMAGE_EXTENSIONS
from hrstyle.paths import user_path

#: Labels covering less than this share of either image are ignored (a few stray pixels are no region).
MIN_SHARE = 0.02


def load_label_map(path: str | Path) -> torch.Tensor:
    """A segmentation as an (H, W) int64 tensor of region ids.

    Grayscale (8/16-bit) maps keep their values; an RGB map gets one id per colour.
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGB", "RGBA", "P"):
                rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
                ids = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            else:
                ids = np.asarray(img if img.mode in ("L", "I", "I;16") else img.convert("L")).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the label map {path}: {exc}") from exc
    return torch.from_numpy(ids)


def find_label_map(folder: str | Path, image: str | Path) -> Path | None:
    """The label map in ``folder`` with the same file stem as ``image`` (any image extension), or None."""
    folder, stem = user_path(folder), Path(image).stem
    if not folder.is_dir():
        raise UserError(f"mask folder not found: {folder}")
    for candidate in sorted(folder.iterdir()):
        if candidate.stem == stem and candidate.suffix.lower() in IMAGE_EXTENSIONS and candidate.is_file():
            return candidate
    return None


def _resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an (H, W) label map to ``size`` = (H', W') (ids are not blended)."""
    if tuple(labels.shape) == tuple(size):
        return labels
    return F.interpolate(labels[None, None].double(), size=size, mode="nearest-exact")[0, 0].long()


def _gaussian(lab: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (3,) and covariance (3, 3), float64, of the (3, H, W) Lab pixels where ``mask`` is True."""
    pixels = lab.reshape(3, -1)[:, mask.reshape(-1)].double()
    mean = pixels.mean(1)
    centred = pixels - mean[:, None]
    return mean, centred @ centred.T / max(pixels.shape[1] - 1, 1)


def gaussian_w2(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """2-Wasserstein distance between two Gaussians given as (mean (d,), covariance (d, d)).

    ``W2² = |μa − μb|² + tr(Σa + Σb − 2 (Σb^½ Σa Σb^½)^½)``; 0 for identical Gaussians.
    """
    (mu_a, cov_a), (mu_b, cov_b) = a, b
    root_b = sqrtm_psd(cov_b)
    cross = sqrtm_psd(root_b @ cov_a @ root_b)
    w2 = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a + cov_b - 2 * cross)
    return float(w2.clamp_min(0).sqrt())


def region_distances(
    output: torch.Tensor, style: torch.Tensor, content_labels: torch.Tensor, style_labels: torch.Tensor,
    min_share: float = MIN_SHARE,
) -> dict[int, tuple[float, float]]:
    """Per matching region: ``{label: (share of the photo, CIELAB Gaussian 2-Wasserstein distance)}``.

    Arguments as for ``regional_color_distance``; labels under ``min_share`` of either image are left out.
    """
    output, style = output.reshape(-1, *output.shape[-3:])[:1], style.reshape(-1, *style.shape[-3:])[:1]
    if output.shape[1] != 3 or style.shape[1] != 3:
        raise ValueError(f"expected RGB images, got {tuple(output.shape)} and {tuple(style.shape)}")
    c_labels = _resize_labels(content_labels, tuple(output.shape[-2:]))
    s_labels = _resize_labels(style_labels, tuple(style.shape[-2:]))
    out_lab = rgb_to_lab(output.float().clamp(0, 1))[0]
    style_lab = rgb_to_lab(style.float().clamp(0, 1))[0]
    regions = {}
    for label in torch.unique(c_labels).tolist():
        c_mask, s_mask = c_labels == label, s_labels == label
        c_share, s_share = c_mask.float().mean().item(), s_mask.float().mean().item()
        if c_share >= min_share and s_share >= min_share:
            regions[int(label)] = (c_share, gaussian_w2(_gaussian(out_lab, c_mask), _gaussian(style_lab, s_mask)))
    return regions


def regional_color_distance(
    output: torch.Tensor, style: torch.Tensor, content_labels: torch.Tensor, style_labels: torch.Tensor,
    min_share: float = MIN_SHARE,
) -> float:
    """Area-weighted mean over matching regions of the CIELAB Gaussian 2-Wasserstein distance.

    Args:
        output: the stylized photo, (1, 3, H, W) or (3, H, W) RGB in [0, 1].
        style: the style image, (1, 3, Hs, Ws) or (3, Hs, Ws) RGB in [0, 1].
        content_labels: (h, w) region ids of the photo; resized nearest-neighbour to H×W.
        style_labels: (hs, ws) region ids of the style image; resized nearest-neighbour to Hs×Ws.
        min_share: labels covering less than this share of either image are ignored.

    Returns the distance in CIELAB units (lower is better), or NaN when no label covers
    ``min_share`` of both images (the pair has no comparable region).
    """
    regions = region_distances(output, style, content_labels, style_labels, min_share)
    weight = sum(share for share, _ in regions.values())
    return sum(share * d for share, d in regions.values()) / weight if weight > 0 else float("nan")
