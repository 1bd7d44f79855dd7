"""Luan et al.'s photorealism criterion as a differentiable function: how much of an image is
*not* a local affine colour transform of the photo.

Used twice, as one implementation: as the evaluation's ``photorealism`` metric and as the
optional ``photoreal`` term of ``ContentStyleLoss`` (a training-time photorealism control, in the
spirit of Deep Photo Style Transfer's matting-Laplacian regularizer, whose quadratic form is
this windowed affine-fit residual).
"""

from __future__ import annotations

import torch
from kornia.filters import box_blur


def photorealism_residual(
    output: torch.Tensor, content: torch.Tensor, radius: int = 3, eps: float = 1e-4
) -> torch.Tensor:
    """Share of the output's local variance not explained by a local affine colour transform
    of the photo (Luan et al.'s photorealism criterion) → (N,) in [0, 1], 0 = photorealistic.

    In each (2·radius+1)² window the output ``p`` (3 channels) is fitted as ``A·I + b``
    (``I`` the photo, ``A`` 3×3) by least squares with a ridge ``eps`` on ``A``; the
    window's residual mean square is ``var(p) − 2·tr(A·cov(I, p)) + tr(A·Σ_I·Aᵀ)``.
    Returned: Σ residual / Σ var(p) over all windows and channels (a ratio of sums, so flat
    windows cannot divide by ~0; an output with almost no local variance anywhere, e.g. a
    flat field, counts as explained: a constant is an affine transform too). ``eps`` (variance units, image in [0, 1]) is far below
    the local variance of real texture (1e-3 … 1e-2) but above JPEG noise, so the photo's
    noise cannot "explain" texture the output invented in flat regions.
    """
    p, i = output.double(), content.double()  # variances are differences of close sums
    n, _, h, w = i.shape
    k = 2 * radius + 1

    def mean(x: torch.Tensor) -> torch.Tensor:
        return box_blur(x, (k, k), border_type="reflect")

    mu_i, mu_p = mean(i), mean(p)
    # Σ_I: (N, H, W, 3, 3); cov(I, p): (N, H, W, 3 photo channels, 3 output channels).
    ii = (i.unsqueeze(2) * i.unsqueeze(1)).flatten(1, 2)
    ip = (i.unsqueeze(2) * p.unsqueeze(1)).flatten(1, 2)
    sigma = (mean(ii) - (mu_i.unsqueeze(2) * mu_i.unsqueeze(1)).flatten(1, 2)).reshape(n, 3, 3, h, w)
    cov = (mean(ip) - (mu_i.unsqueeze(2) * mu_p.unsqueeze(1)).flatten(1, 2)).reshape(n, 3, 3, h, w)
    var_p = (mean(p * p) - mu_p * mu_p).clamp_min(0)  # (N, 3, H, W)
    sigma = sigma.permute(0, 3, 4, 1, 2)
    cov = cov.permute(0, 3, 4, 1, 2)
    ridge = eps * torch.eye(3, dtype=torch.float64, device=sigma.device)
    coef = torch.linalg.solve(sigma + ridge, cov)  # (N, H, W, 3, 3): column j fits output channel j
    # Residual per output channel j: var_p − 2 coef_j·cov_j + coef_jᵀ Σ coef_j.
    explained = 2 * (coef * cov).sum(-2) - (coef * (sigma @ coef)).sum(-2)  # (N, H, W, 3)
    residual = (var_p.permute(0, 2, 3, 1) - explained).clamp_min(0)
    # Floor: a local standard deviation of 1e-3 (a quarter of an 8-bit level) per value.
    total = var_p.sum(dim=(1, 2, 3)).clamp_min(1e-6 * var_p[0].numel())
    return (residual.sum(dim=(1, 2, 3)) / total).float()
