"""Instance normalization whose statistics can be recorded once and reused.

Plain instance norm normalizes every image with the mean and variance of its own
feature maps. That is what training does, but it breaks tiled inference: each tile
would be normalized with its own statistics and the tiles would no longer agree.
``StatsInstanceNorm2d`` therefore has three modes:

* ``"live"`` (default): ordinary instance norm, statistics from the input itself.
* ``"record"``: ordinary instance norm that also stores the statistics it used.
* ``"frozen"``: normalize with the stored statistics (e.g. those of a thumbnail of the
  whole image), so that every tile of one image is normalized identically.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class StatsInstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (affine, no running stats) with recordable statistics."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)
        self.mode = "live"
        self.recorded: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "live":
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        if self.mode == "record":
            var, mean = torch.var_mean(x.float(), dim=(2, 3), correction=0, keepdim=True)
            self.recorded = (mean, var)
        elif self.recorded is None:
            raise RuntimeError("frozen instance norm used before any statistics were recorded")
        mean, var = self.recorded
        # Affine folded into one scale and shift: a single pass over the big tensor.
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        shift = self.bias.view(1, -1, 1, 1) - mean * scale
        return x * scale.to(x.dtype) + shift.to(x.dtype)


def set_norm_mode(model: nn.Module, mode: str) -> None:
    """Switch every ``StatsInstanceNorm2d`` in ``model`` to ``mode`` (live/record/frozen)."""
    if mode not in ("live", "record", "frozen"):
        raise ValueError(f"unknown instance-norm mode {mode!r}")
    for module in model.modules():
        if isinstance(module, StatsInstanceNorm2d):
            module.mode = mode
            if mode == "live":
                module.recorded = None


@contextmanager
def frozen_norm_stats(model: nn.Module, reference: torch.Tensor) -> Iterator[None]:
    """Within the block, normalize with the instance-norm statistics of ``reference``.

    ``reference`` is a (1, 3, h, w) image in [0, 1], typically a downscaled copy of the
    whole picture; every forward inside the block (e.g. one per tile) then uses its
    statistics, so tiles are normalized consistently.
    """
    set_norm_mode(model, "record")
    try:
        model(reference)
        set_norm_mode(model, "frozen")
        yield
    finally:
        set_norm_mode(model, "live")
