"""What both exact tilers (eager ``inference.tiling`` and ``inference.onnx.tiling``) share: where the
tiles go, how much context each needs, the ramps that blend neighbours without a seam (``add_tile``), and
the float64 merge of the per-tile norm statistics (``RunningMoments``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ALIGN = 4
#: Pixels near a crop edge whose output zero padding can change (measured 13, kept safe).
RECEPTIVE_RADIUS = 16


@dataclass(frozen=True)
class Tile:
    """One tile: its core (which the cores of all tiles partition) and its crop (core +
    margin, clipped to the image), as [start, stop) rows and columns of the image."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int


def min_tile_size(margin: int) -> int:
    """Smallest tile side for a margin: the core must hold a whole blending band."""
    margin = -(-margin // ALIGN) * ALIGN
    return 2 * margin + 2 * (margin - RECEPTIVE_RADIUS)


def make_tiles(height: int, width: int, tile_size: int, margin: int) -> list[Tile]:
    """Tiles whose crops are at most tile_size² and whose cores cover the image."""
    core = (tile_size - 2 * margin) // ALIGN * ALIGN
    if core < ALIGN:
        raise ValueError(f"tile_size {tile_size} leaves no room inside margins of {margin}px")
    tiles = []
    for y0 in range(0, height, core):
        for x0 in range(0, width, core):
            y1, x1 = min(y0 + core, height), min(x0 + core, width)
            tiles.append(Tile(y0, y1, x0, x1, max(0, y0 - margin), min(height, y1 + margin),
                              max(0, x0 - margin), min(width, x1 + margin)))
    return tiles


def blend_weights(start: int, stop: int, lo: int, hi: int, size: int, half: int) -> torch.Tensor:
    """1-D weights over a tile's crop [start, stop) for its core [lo, hi).

    Across each boundary with a neighbour the weight goes linearly from 1 to 0 over the
    band [boundary - half, boundary + half), and the neighbour's goes from 0 to 1 over the
    same band, so the two always sum to 1. Outside the band, in the outer part of the
    margin (within the receptive field of the crop edge, where zero padding has altered
    the output), the weight is 0: only trustworthy pixels are blended.
    """
    p = torch.arange(start, stop, dtype=torch.float32) + 0.5
    weight = torch.ones(stop - start)
    if lo > 0:
        weight *= ((p - lo + half) / (2 * half)).clamp(0, 1)
    if hi < size:
        weight *= ((hi + half - p) / (2 * half)).clamp(0, 1)
    return weight


def tile_weight(tile: Tile, height: int, width: int, half: int) -> torch.Tensor:
    """(crop h, crop w) blending weights of ``tile`` in an image of ``height`` x ``width``: the product of
    its row and column ramps (``blend_weights``). The weights of all tiles sum to 1 at every pixel."""
    return (blend_weights(tile.cy0, tile.cy1, tile.y0, tile.y1, height, half)[:, None]
            * blend_weights(tile.cx0, tile.cx1, tile.x0, tile.x1, width, half)[None, :])


def add_tile(out: torch.Tensor, result: torch.Tensor, tile: Tile, half: int) -> None:
    """Accumulate a tile's (1, C, crop h, crop w) ``result`` into the (1, C, H, W) ``out``, weighted by
    ``tile_weight``. ``result`` is scaled in place (callers pass a fresh tensor: no copy)."""
    height, width = out.shape[-2:]
    out[..., tile.cy0 : tile.cy1, tile.cx0 : tile.cx1] += result.mul_(tile_weight(tile, height, width, half))


def _float64(x: Any) -> Any:
    return x.double() if isinstance(x, torch.Tensor) else x.astype("float64")  # a NumPy array


class RunningMoments:
    """Per-channel mean and M2 (sum of squared deviations) over many disjoint parts, merged part by
    part in float64 with Chan et al.'s parallel formula: exact where a float32 sum over a whole
    feature map would drift. Works on torch tensors and NumPy arrays alike (the eager and the ONNX
    Runtime tiler); ``mean`` and ``m2`` keep the kind given."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Any = None
        self.m2: Any = None

    def add(self, mean: Any, m2: Any, count: int) -> None:
        """Merge one part's per-channel ``mean`` and ``m2`` over ``count`` values (converted to float64)."""
        mean, m2 = _float64(mean), _float64(m2)
        if self.mean is None:
            self.mean, self.m2 = mean, m2
        else:
            n_a, n_b = self.count, count
            delta = mean - self.mean
            self.mean = self.mean + delta * (n_b / (n_a + n_b))
            self.m2 = self.m2 + m2 + delta * delta * (n_a * n_b / (n_a + n_b))
        self.count += count

    @property
    def variance(self) -> Any:
        """The population variance (``correction=0``, as instance norm uses), float64."""
        return self.m2 / self.count
