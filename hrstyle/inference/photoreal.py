"""Photorealism control: a guided filter that puts the photo's edges and detail back.

He et al.'s guided filter (ECCV 2010) with the content photo as the guide rewrites the
stylized image, window by window, as an affine colour transform of the photo
(``A·photo + b``, ``A`` 3×3): exactly Luan et al.'s photorealism criterion. The style's
colours and tones survive (they are in ``A`` and ``b``), while anything the network drew
that the photo does not explain — ripples, streaks, checkerboard, smeared edges — is
removed, and the photo's edges come back sharp. ``radius`` sets the window (larger: the
colour transform varies more slowly), ``eps`` how much local contrast the transform may
take from the photo (smaller: more of the photo's detail; variance units, images in [0, 1]).

Large images are filtered in horizontal strips that overlap by twice the radius (the
filter's reach), so the result equals the whole-image filter and memory stays bounded.
"""

from __future__ import annotations

import torch

#: Default window radius (17×17): measured against 4 on unseen photos, +0.04 edge-SSIM for 3% more
#: Gram distance (README "Styles that work on any photo").
DEFAULT_RADIUS = 8

#: Rows per strip, at most (the 3×3 covariances cost ~40 floats per pixel).
STRIP_PIXELS = 2_000_000


def guided_filter(
    stylized: torch.Tensor, photo: torch.Tensor, radius: int = DEFAULT_RADIUS, eps: float = 1e-3
) -> torch.Tensor:
    """Project ``stylized`` onto local affine colour transforms of ``photo``.

    Args:
        stylized: (N, 3, H, W) in [0, 1], the network's output.
        photo: (N, 3, H, W) in [0, 1], the content photo it was made from (the guide).
        radius: window radius in pixels (window 2·radius+1); 0 returns ``stylized``.
        eps: ridge on the photo's local covariance, in variance units.

    Returns an (N, 3, H, W) float32 tensor clamped to [0, 1].
    """
    if radius < 0 or eps <= 0:
        raise ValueError(f"guided filter needs radius >= 0 and eps > 0, got radius={radius}, eps={eps}")
    if stylized.shape != photo.shape:
        raise ValueError(f"stylized {tuple(stylized.shape)} and photo {tuple(photo.shape)} differ in shape")
    if radius == 0:
        return stylized
    from kornia.filters import guided_blur  # imported here: kornia costs ~1 s of start-up

    n, _, h, w = photo.shape
    kernel = 2 * radius + 1
    reach = 2 * radius  # box means of A and b over box means of the statistics
    rows = max(STRIP_PIXELS // max(w, 1), 4 * reach + 1)
    if h <= rows:
        return guided_blur(photo.float(), stylized.float(), kernel, eps).clamp_(0, 1)
    out = torch.empty(n, 3, h, w, dtype=torch.float32, device=stylized.device)
    for top in range(0, h, rows):
        bottom = min(top + rows, h)
        lo, hi = max(top - reach, 0), min(bottom + reach, h)
        strip = guided_blur(photo[..., lo:hi, :].float(), stylized[..., lo:hi, :].float(), kernel, eps)
        out[..., top:bottom, :] = strip[..., top - lo : top - lo + bottom - top, :]
    return out.clamp_(0, 1)
