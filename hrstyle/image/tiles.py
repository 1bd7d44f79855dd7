"""Tile geometry shared by both exact tilers (eager ``inference.tiling`` and ``inference.onnx.tiling``):
where the tiles go, how much context each needs, and the ramps that blend neighbours without a seam."""

from __future__ import annotations

from dataclasses import dataclass

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
