"""Size and cost of a generator: parameter count and multiply-accumulates per pixel."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_macs_per_pixel(model: nn.Module, size: int = 256) -> float:
    """Convolution multiply-accumulates per input pixel, measured on a size×size input.

    Only convolutions are counted (norms, ReLU and interpolation add a few per pixel).
    """
    macs = 0

    def hook(module: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = module.kernel_size
        macs += out.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        model(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return macs / (size * size)
