"""Style statistics beyond the Gram matrix: feature moments and sliced-Wasserstein distributions.

The Gram matrix is an uncentred second moment: a smooth, low-contrast style photo has far less
energy in the shallow layers than a detailed content photo, and the cheapest way to lower the
distance to it is to darken the whole picture (``docs/recipes.md``). A centred statistic or the whole
distribution is not lowered by a uniform darkening as such (a darker photo still has less texture, which they
do see); applied to CIELAB colours, the distribution is a target that darkening a photo already darker
than the style only moves away from:

* ``mean_std_distance``: per-channel mean and standard deviation of the features (Huang & Belongie's
  AdaIN statistics);
* ``sliced_wasserstein``: the distance between the distributions of feature vectors, along random
  1-D projections, each sorted (Heitz et al., CVPR 2021). It sees every quantile, so a sky cannot
  pass for snow by having the right average, and the same function applied to CIELAB colours gives
  the colour-distribution term of ``ContentStyleLoss``.

Features are (N, C, H, W) or (N, C, P) tensors; targets are one image's (C, Q) samples.
"""

from __future__ import annotations

import torch

#: Style samples kept per layer for the sliced-Wasserstein target: a 512 px style image has 150k
#: relu1_1 vectors; 4096 random ones give its quantiles to ~2% and keep each step cheap (sorting the
#: style's projections dominated the step with 16k: 2.4 s against 1.8 s on one core, 128 px crops).
MAX_TARGET_SAMPLES = 4096


def flatten_features(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) or (N, C, P) → (N, C, P) float32."""
    return features.reshape(features.shape[0], features.shape[1], -1).float()


def mean_std(features: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and standard deviation: (N, C, …) → two (N, C) tensors."""
    flat = flatten_features(features)
    return flat.mean(-1), (flat.var(-1, unbiased=False) + eps).sqrt()


def mean_std_distance(features: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Squared distance of the per-channel mean and std to ``target`` = (mean (1, C), std (1, C)),
    averaged over channels → (N,)."""
    mean, std = mean_std(features)
    return (mean - target[0]).pow(2).mean(-1) + (std - target[1]).pow(2).mean(-1)


def target_samples(features: torch.Tensor, max_samples: int = MAX_TARGET_SAMPLES, seed: int = 0) -> torch.Tensor:
    """At most ``max_samples`` feature vectors of one image, (1, C, H, W) → (C, Q), drawn without
    replacement by a fixed seed (the same style always gives the same target)."""
    flat = flatten_features(features)[0]
    if flat.shape[1] <= max_samples:
        return flat.clone()
    keep = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed))[:max_samples]
    return flat[:, keep.to(flat.device)].clone()


def random_directions(dim: int, count: int, generator: torch.Generator | None = None,
                      device: torch.device | None = None) -> torch.Tensor:
    """``count`` random unit vectors in ``dim`` dimensions, as the columns of a (dim, count) matrix."""
    directions = torch.randn(dim, count, generator=generator)
    return (directions / directions.norm(dim=0, keepdim=True)).to(device)


def sliced_wasserstein(features: torch.Tensor, target: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Sliced 2-Wasserstein distance (squared) between each sample's feature distribution and a target's.

    Args:
        features: (N, C, H, W) or (N, C, P), the P vectors of each sample.
        target: (C, Q) samples of the target distribution (``target_samples``).
        directions: (C, K) unit projection directions (``random_directions``; draw new ones every step).

    Returns (N,): over the K projections, the mean squared difference between the sorted projected
    features and the target's quantiles at the same ranks (Q resampled to P by nearest rank).
    """
    flat = flatten_features(features)
    proj = torch.einsum("ck,ncp->nkp", directions, flat).sort(dim=-1).values
    ref = (directions.T @ target.float()).sort(dim=-1).values  # (K, Q)
    p, q = proj.shape[-1], ref.shape[-1]
    ranks = ((torch.arange(p, device=ref.device) + 0.5) * (q / p)).long().clamp_max(q - 1)
    return (proj - ref[:, ranks]).pow(2).mean(dim=(1, 2))
