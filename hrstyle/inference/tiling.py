"""Tiled inference: any image size in bounded memory, without seams.

Two things make tiles disagree, and each has its fix:

1. **Instance-norm statistics.** Every StatsInstanceNorm2d normalizes with the mean and
   variance of the *whole* feature map. A tile alone would use its own statistics (a sky
   tile and a forest tile would be normalized differently: visible blocks). We record
   the statistics of every norm layer once, on a reference view of the whole image, and
   freeze them for all tiles (``frozen_norm_stats``). The reference is the image itself
   when it has at most ``stats_pixels`` pixels (then tiled = untiled up to float error);
   otherwise a batch of full-resolution crops spread over the image, whose statistics
   are pooled. This estimate is the only approximation of the method;
   ``scripts/benchmark_infer.py --tiling`` measures it. (A downscaled thumbnail, as in
   "thumbnail instance normalization", is much worse for this network: its features
   are scale dependent.)
2. **Context at tile borders.** The generator's receptive field reaches 13 px (measured:
   a one-pixel change moves outputs at most 13 px away), so each tile is run with a
   ``margin`` of real image context around its core. Neighbouring tiles are blended with
   complementary linear ramps over the part of the overlap that is at least
   ``RECEPTIVE_RADIUS`` px from both crop edges: no hard seam even where statistics
   differ slightly, and no pixel altered by a crop's zero padding ever gets weight.

Tile origins are multiples of 4, so the strided half/quarter-resolution grids of every
tile line up with those of the whole image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hrstyle.models.norm import frozen_norm_stats

ALIGN = 4
#: Pixels near a crop edge whose output zero padding can change (measured 13, kept safe).
RECEPTIVE_RADIUS = 16


def stats_reference(image: torch.Tensor, max_pixels: int, crop: int = 256) -> torch.Tensor:
    """What the instance-norm statistics of a (1, 3, H, W) image are estimated from.

    The image itself when it has at most ``max_pixels`` pixels (exact statistics);
    otherwise an (n, 3, crop, crop) batch of full-resolution crops on an even grid over
    the image, about ``max_pixels`` in all, whose pooled statistics estimate the whole
    image's. Full resolution matters: VGG-trained features are scale dependent, and the
    statistics of a downscaled thumbnail differ a lot (tested: mean abs error 0.05 at a
    2× thumbnail, against 0.00x for crops; see ``benchmark_infer.py --tiling``).
    """
    _, _, h, w = image.shape
    if h * w <= max_pixels or min(h, w) < crop:
        return image
    count = max(1, max_pixels // (crop * crop))
    rows = max(1, min(round((count * h / w) ** 0.5), h // crop))
    cols = max(1, min(count // rows, w // crop))

    def starts(size: int, n: int) -> list[int]:
        if n == 1:
            return [(size - crop) // 2 // ALIGN * ALIGN]
        return [round(i * (size - crop) / (n - 1)) // ALIGN * ALIGN for i in range(n)]

    crops = [image[..., y : y + crop, x : x + crop] for y in starts(h, rows) for x in starts(w, cols)]
    return torch.cat(crops)


def _blend_weights(start: int, stop: int, lo: int, hi: int, size: int, half: int) -> torch.Tensor:
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


def tile_starts(size: int, core: int) -> list[int]:
    """Start offsets of tile cores of length ``core`` covering ``[0, size)``."""
    return list(range(0, size, core))


@torch.inference_mode()
def stylize_tiled(
    model: nn.Module,
    image: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor],
    tile_size: int = 1024,
    margin: int = 32,
    stats_pixels: int = 1024 * 1024,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Stylize a (1, 3, H, W) image in [0, 1] tile by tile.

    Args:
        model: the generator (its norm layers get frozen statistics).
        image: the whole image, on the CPU (only tiles are moved to ``device``).
        forward: runs the generator on a (1, 3, h, w) tile on ``device`` (may add autocast,
            channels_last, a compiled model, ...).
        tile_size: side of the square crop fed to the network, margins included.
        margin: context pixels on each side of a tile's core (>= the receptive field).
        stats_pixels: pixel budget of the view that instance-norm statistics are
            estimated from (see ``stats_reference``).

    Returns the stylized (1, 3, H, W) float32 image on the CPU.
    """
    if image.shape[0] != 1:
        raise ValueError("stylize_tiled takes one image at a time")
    margin = -(-margin // ALIGN) * ALIGN
    if margin < RECEPTIVE_RADIUS + 4:
        raise ValueError(f"tile margin must be at least {RECEPTIVE_RADIUS + 4}px, got {margin}")
    half = margin - RECEPTIVE_RADIUS  # half-width of the blending band around each boundary
    core = (tile_size - 2 * margin) // ALIGN * ALIGN
    if core < ALIGN:
        raise ValueError(f"tile_size {tile_size} leaves no room inside margins of {margin}px")
    _, _, h, w = image.shape
    out = torch.zeros(1, 3, h, w)
    total = torch.zeros(1, 1, h, w)
    reference = stats_reference(image, stats_pixels).to(device)
    with frozen_norm_stats(model, reference, forward):
        for y0 in tile_starts(h, core):
            for x0 in tile_starts(w, core):
                y1, x1 = min(y0 + core, h), min(x0 + core, w)
                cy0, cx0 = max(0, y0 - margin), max(0, x0 - margin)
                cy1, cx1 = min(h, y1 + margin), min(w, x1 + margin)
                tile = forward(image[..., cy0:cy1, cx0:cx1].to(device)).float().cpu()
                wy = _blend_weights(cy0, cy1, y0, y1, h, half)
                wx = _blend_weights(cx0, cx1, x0, x1, w, half)
                weight = wy[:, None] * wx[None, :]
                out[..., cy0:cy1, cx0:cx1] += tile * weight
                total[..., cy0:cy1, cx0:cx1] += weight
    return out.div_(total)
