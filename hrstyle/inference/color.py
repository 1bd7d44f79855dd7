"""Cheap post-controls: style strength and colour preservation (both per pixel)."""

from __future__ import annotations

import torch

# Full-range BT.601 luma/chroma (JPEG's YCbCr): Y = 0.299 R + 0.587 G + 0.114 B.
_RGB_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) RGB in [0, 1] → YCbCr with Y in [0, 1] and Cb, Cr in [-0.5, 0.5]."""
    return torch.einsum("ij,...jhw->...ihw", _RGB_TO_YCBCR.to(image), image)


def ycbcr_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_ycbcr`` (not clamped)."""
    return torch.einsum("ij,...jhw->...ihw", _YCBCR_TO_RGB.to(image), image)


def preserve_color(stylized: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Keep the photo's colours: luminance (Y) of ``stylized``, chroma (CbCr) of ``original``.

    Both are (…, 3, H, W) RGB in [0, 1]; the result is clamped to [0, 1].
    """
    y = rgb_to_ycbcr(stylized)[..., :1, :, :]
    cbcr = rgb_to_ycbcr(original)[..., 1:, :, :]
    return ycbcr_to_rgb(torch.cat((y, cbcr), dim=-3)).clamp_(0, 1)


def apply_strength(stylized: torch.Tensor, original: torch.Tensor, strength: float) -> torch.Tensor:
    """Blend: ``strength`` 1 is the full style, 0 returns ``original`` exactly.

    Overwrites and returns ``stylized`` (pass a copy to keep it)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 1.0:
        return stylized
    if strength == 0.0:
        return original.clone()
    return stylized.sub_(original).mul_(strength).add_(original)  # in place: no extra full-size copy
