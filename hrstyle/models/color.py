"""The generator's global colour branch: each photo's colours moved onto learned target statistics.

A photo style changes first of all the colour distribution of the whole picture (a winter style
makes everything paler and bluer), and a global colour transfer (the photo's RGB mean and covariance
moved onto the style's: Pitié & Kokaram's linear Monge–Kantorovich map, ``hrstyle.image.color``)
already does most of that with 12 numbers per photo. A small convolutional network trained for a
few hundred steps does not learn that per-photo global map from its local view: it drifted darker
or stayed too close to the photo. So the generator computes the map itself, per photo and from the
photo's own statistics, onto a learned target (initialised from the style image's statistics), and
its convolutional streams learn only the *regional* change on top (sky to sky, ground to ground).

Everything is written with matrix products (matrix square roots by Newton–Schulz iteration, no
eigendecomposition), so the branch is differentiable, batched and exports to ONNX. For tiled
inference the statistics must be the whole image's: like ``StatsInstanceNorm2d`` the module has a
``mode`` ("live", "record", "frozen") and ``recorded`` statistics, which ``set_norm_mode`` switches
and ``freeze_color_statistics`` sets from the whole image.
"""

import torch
from torch import nn

from hrstyle.image.color import color_statistics

#: Newton–Schulz iterations: converges for eigenvalue ratios down to ~1e-5 (the ridge bounds it).
NEWTON_SCHULZ_STEPS = 24
#: Added to both covariances: a flat or grey photo has a singular covariance (the same ridge as
#: ``hrstyle.image.color.color_transfer_map``).
RIDGE = 1e-5


def sqrtm_newton_schulz(matrix: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Square root and inverse square root of (N, d, d) symmetric positive definite matrices.

    Coupled Newton–Schulz iteration on the matrix scaled by its trace (eigenvalues in (0, 1]): only
    matrix products, so it is differentiable and exportable.
    """
    n, d, _ = matrix.shape
    scale = matrix.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-12).view(n, 1, 1)
    eye = torch.eye(d, dtype=matrix.dtype, device=matrix.device).expand(n, d, d)
    y, z = matrix / scale, eye
    for _ in range(steps):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    root = scale.sqrt()
    return y * root, z / root


def _moments(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image RGB mean (N, 3) and covariance (N, 3, 3), float32, of an (N, 3, H, W) batch: the batched,
    differentiable form of ``hrstyle.image.color.color_statistics`` (one float64 image, chunked), for the forward."""
    flat = image.float().reshape(image.shape[0], 3, -1)
    mean = flat.mean(-1)
    centred = flat - mean[..., None]
    return mean, centred @ centred.transpose(1, 2) / flat.shape[-1]


class GlobalColorTransfer(nn.Module):
    """``x -> A (x - mean) + target_mean``, with ``A`` the Monge–Kantorovich map from the photo's
    colour covariance to the learned target covariance ``target_root @ target_root.T``.

    Maps (N, 3, H, W) RGB in [0, 1] to (N, 3, H, W) RGB (not clamped). The target starts as
    identity statistics (mean 0.5, covariance 0.04·I) until ``set_target`` gives it a style's;
    ``learned=False`` keeps it there during training (parameters without gradient).
    """

    recorded: tuple[torch.Tensor, torch.Tensor] | None
    __constants__ = ["ridge"]  # TorchScript reads a module constant, not a global

    def __init__(self, learned: bool = True) -> None:
        super().__init__()
        self.ridge = RIDGE
        self.target_mean = nn.Parameter(torch.full((3,), 0.5), requires_grad=learned)
        self.target_root = nn.Parameter(0.2 * torch.eye(3), requires_grad=learned)
        self.mode = "live"
        self.recorded = None

    @torch.no_grad()
    def set_target(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        """Start from a style's RGB statistics: mean (3,), covariance (3, 3)."""
        eye = torch.eye(3, dtype=torch.float64)
        values, vectors = torch.linalg.eigh(cov.double().cpu() + RIDGE * eye)
        root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
        self.target_mean.copy_(mean.reshape(3))
        self.target_root.copy_(root.float())

    def transfer_map(self, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """The (N, 3, 3) linear part for photos with colour covariance ``cov`` (N, 3, 3)."""
        eye = torch.eye(3, dtype=cov.dtype, device=cov.device)
        root_t = self.target_root.to(cov.dtype)
        target = root_t @ root_t.T + self.ridge * eye
        root, inv_root = sqrtm_newton_schulz(cov + self.ridge * eye)
        middle, _ = sqrtm_newton_schulz(root @ target @ root)
        return inv_root @ middle @ inv_root

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "live":
            mean, cov = _moments(x)
        else:
            if self.mode == "record":
                mean, cov = _moments(x.transpose(0, 1).reshape(1, 3, -1, 1))  # pooled over the batch
                self.recorded = (mean, cov)
            recorded = self.recorded
            if recorded is None:
                raise RuntimeError("frozen colour statistics used before any were recorded")
            mean, cov = recorded
            mean, cov = mean.expand(x.shape[0], 3), cov.expand(x.shape[0], 3, 3)
        # The 3x3 algebra in float64 (free at this size): float32 Newton-Schulz differed between
        # PyTorch and ONNX Runtime by 3e-4.
        mean64 = mean.double()
        a = self.transfer_map(mean64, cov.double())
        shift = self.target_mean.double().view(1, 3) - (a @ mean64[..., None])[..., 0]
        y = torch.einsum("nij,njhw->nihw", a.float(), x.float()) + shift.float()[..., None, None]
        return y.to(x.dtype)


def whole_image_moments(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The colour moments the branch computes live (RGB mean (1, 3), population covariance (1, 3, 3),
    float32) of a whole (1, 3, H, W) image, accumulated in float64 chunks (no full-size copy): what
    every tile of that image must use (both exact tilers)."""
    mean, cov = color_statistics(image)
    n = image.shape[-2] * image.shape[-1]
    return mean.float()[None], (cov * ((n - 1) / n)).float()[None]


def freeze_color_statistics(model: nn.Module, image: torch.Tensor) -> None:
    """Set every colour branch of ``model`` to "frozen" with the colour moments of the whole
    (1, 3, H, W) ``image`` (accumulated in float64 chunks: no full-size copy), so that each tile of
    it gets the whole photo's colour transfer. ``set_norm_mode(model, "live")`` undoes it."""
    moments = whole_image_moments(image)
    for module in model.modules():
        if isinstance(module, GlobalColorTransfer):
            device = module.target_mean.device
            module.recorded = (moments[0].to(device), moments[1].to(device))
            module.mode = "frozen"


def has_color_branch(model: nn.Module) -> bool:
    """Whether ``model`` computes statistics of the whole photo's colours (a ``GlobalColorTransfer``)."""
    return any(isinstance(m, GlobalColorTransfer) for m in model.modules())
