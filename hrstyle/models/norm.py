"""Instance normalization whose statistics can be recorded once and reused.

Plain instance norm normalizes every image with the mean and variance of its own
feature maps. That is what training does, but it breaks tiled inference: each tile
would be normalized with its own statistics and the tiles would no longer agree.
``StatsInstanceNorm2d`` therefore has three modes:

* ``"live"`` (default): ordinary instance norm, statistics from the input itself.
* ``"record"``: normalize with, and store, statistics pooled over the whole batch
  (for a batch of one image: exactly instance norm).
* ``"frozen"``: normalize with the stored statistics (recorded, or set from outside as
  ``hrstyle.inference.tiling`` does), so that every tile of one image is normalized
  identically.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from hrstyle.models.color import GlobalColorTransfer


class StatsInstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (affine, no running stats) with recordable statistics."""

    # Declared for TorchScript, which otherwise types the attribute from its first value (None).
    recorded: tuple[torch.Tensor, torch.Tensor] | None

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)
        self.mode = "live"
        self.recorded = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "live":
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        if self.mode == "record":
            var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0, keepdim=True)
            self.recorded = (mean, var)
        recorded = self.recorded
        if recorded is None:
            raise RuntimeError("frozen instance norm used before any statistics were recorded")
        mean, var = recorded
        # Affine folded into one scale and shift: a single pass over the big tensor.
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        shift = self.bias.view(1, -1, 1, 1) - mean * scale
        return x * scale.to(x.dtype) + shift.to(x.dtype)


def set_norm_mode(model: nn.Module, mode: str) -> None:
    """Switch every ``StatsInstanceNorm2d`` (and the colour branch, ``GlobalColorTransfer``, whose
    statistics are the photo's colours) in ``model`` to ``mode`` (live/record/frozen)."""
    if mode not in ("live", "record", "frozen"):
        raise ValueError(f"unknown instance-norm mode {mode!r}")
    for module in model.modules():
        if isinstance(module, (StatsInstanceNorm2d, GlobalColorTransfer)):
            module.mode = mode
            if mode == "live":
                module.recorded = None


@contextmanager
def frozen_norm_stats(
    model: nn.Module,
    reference: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[None]:
    """Within the block, normalize with the instance-norm statistics of ``reference``.

    ``reference`` is an (N, 3, h, w) batch in [0, 1], usually one whole image (with
    N > 1 the statistics are pooled over the batch). Every forward inside the block
    (e.g. one per tile) then uses these statistics, so tiles are normalized consistently.
    ``forward`` (default: ``model``) runs the recording pass, e.g. under the same autocast
    as the tiles.
    """
    set_norm_mode(model, "record")
    try:
        (forward or model)(reference)
        set_norm_mode(model, "frozen")
        yield
    finally:
        set_norm_mode(model, "live")
