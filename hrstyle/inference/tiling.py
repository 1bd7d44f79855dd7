"""Tiled inference: any image size in bounded memory, equal to the untiled result.

Two things make tiles disagree, and each has its fix:

1. **Instance-norm statistics** (and the colour branch's, ``hrstyle.models.color``: the whole
   photo's colour moments, computed directly from the image before anything else). Every instance norm normalizes with the mean and
   variance of the *whole* feature map. A tile alone would use its own statistics (a sky
   tile and a forest tile would be normalized differently: visible blocks). Estimates do
   not work for this network: statistics from a 2× thumbnail, or pooled over crops that
   cover a quarter of the image, change the output by 0.05–0.1 on average (measured on
   a trained style), because its features are scale dependent and content dependent.
   So the statistics are computed **exactly**, streamed tile by tile: a norm layer's
   mean and variance are accumulated (per-tile statistics over each tile's core, merged
   in float64; the cores partition the image) in a pass that runs every tile up to that layer, with all
   layers before it already frozen to their exact values; layers that do not depend on
   each other share a pass. Then the image is stylized tile by tile with all statistics
   frozen. Memory stays that of one tile; compute is that of several forward passes
   (``benchmark_infer.py`` measures it), so tiling only starts above ``tile_size``, and
   ``tile_size`` should be as large as memory allows.
2. **Context at tile borders.** The generator's receptive field reaches 13 px (measured:
   a one-pixel change moves outputs at most 13 px away), so each tile is run with a
   ``margin`` of real image context around its core. Neighbouring tiles are blended with
   complementary linear ramps over the part of the overlap that is at least
   ``RECEPTIVE_RADIUS`` px from both crop edges: no pixel altered by a crop's zero
   padding ever gets weight, and there is no hard seam.

Tile origins are multiples of 4, so the strided half/quarter-resolution grids of every
tile line up with those of the whole image. Result: tiled = untiled up to float
rounding (tests check 1e-4; ``scripts/benchmark_infer.py --tiling`` reports it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hrstyle.image.tiles import ALIGN, RECEPTIVE_RADIUS, RunningMoments, Tile, add_tile, make_tiles, min_tile_size
from hrstyle.models.color import freeze_color_statistics
from hrstyle.models.norm import StatsInstanceNorm2d, set_norm_mode

Forward = Callable[[torch.Tensor], torch.Tensor]


class _StopForward(Exception):
    """Raised by the accumulation hook: nothing after the layer being measured is needed."""


def norm_layers_in_order(model: nn.Module) -> list[StatsInstanceNorm2d]:
    """The model's instance norms in the order a forward pass reaches them."""
    order: list[StatsInstanceNorm2d] = []
    norms = [m for m in model.modules() if isinstance(m, StatsInstanceNorm2d)]
    handles = [m.register_forward_pre_hook(lambda mod, _inp: order.append(mod)) for m in norms]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, 8, 8, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return order


def _is_poisoned(x: torch.Tensor) -> bool:
    # One pixel's channel vector: a NaN-derived channel is NaN everywhere (convolutions,
    # upsampling and ReLU spread NaN), and a concatenation keeps its channels.
    return bool(torch.isnan(x[0, :, 0, 0]).any())


@torch.inference_mode()
def freeze_exact_norm_stats(
    model: nn.Module, image: torch.Tensor, forward: Forward, tiles: list[Tile], device: torch.device | str
) -> int:
    """Set every norm of ``model`` to "frozen" with the statistics it would compute in an
    untiled forward of the (1, 3, H, W) ``image`` (on the CPU), using only tile-sized
    forwards. Undo with ``set_norm_mode(model, "live")``. Returns the number of passes.

    Each pass runs every tile until the first norm whose input depends on a norm not yet
    measured. Every norm reached before that is measured in the pass: its input's sums
    over the tile cores are accumulated, and its output is replaced by NaN so that what
    depends on it is recognised (a NaN input) and the pass stops there.
    """
    _, _, h, w = image.shape
    padded_h, padded_w = h + (-h) % ALIGN, w + (-w) % ALIGN
    set_norm_mode(model, "live")
    freeze_color_statistics(model, image)  # the colour branch, if any: the whole photo's colours
    pending = norm_layers_in_order(model)
    passes = 0
    while pending:
        moments: dict[nn.Module, RunningMoments] = {}
        tile = tiles[0]

        def measure(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]
            if _is_poisoned(x):
                raise _StopForward
            # The untiled forward pads the image to a multiple of 4 and normalizes over
            # that; the last tiles' cores reach into the same padding.
            crop_h = tile.cy1 - tile.cy0 + (-(tile.cy1 - tile.cy0)) % ALIGN
            f = crop_h // x.shape[-2]  # 1, 2 or 4: this layer's stride
            y_end = padded_h if tile.y1 == h else tile.y1
            x_end = padded_w if tile.x1 == w else tile.x1
            core = x[..., (tile.y0 - tile.cy0) // f : (y_end - tile.cy0) // f,
                     (tile.x0 - tile.cx0) // f : (x_end - tile.cx0) // f]
            # Per-tile mean/variance in the activation's precision (no float64 copy of a
            # whole feature map: that was a 1 GB spike per 1024² tile), merged across tiles
            # in float64 with Chan's parallel formula.
            var, mean = torch.var_mean(core.float(), dim=(0, 2, 3), correction=0)
            n_b = core.shape[-2] * core.shape[-1]
            moments.setdefault(module, RunningMoments()).add(mean, var.double() * n_b, n_b)

        def poison(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return torch.full_like(output, float("nan"))

        handles = [n.register_forward_pre_hook(measure) for n in pending]
        handles += [n.register_forward_hook(poison) for n in pending]
        try:
            for tile in tiles:
                try:
                    forward(image[..., tile.cy0 : tile.cy1, tile.cx0 : tile.cx1].to(device))
                except _StopForward:
                    pass
        finally:
            for handle in handles:
                handle.remove()
        passes += 1
        for norm in [n for n in pending if n in moments]:
            mean, var = moments[norm].mean, moments[norm].variance
            norm.recorded = (mean.float().view(1, -1, 1, 1), var.float().view(1, -1, 1, 1))
            norm.mode = "frozen"
        if not moments:  # cannot happen with a well-formed model; never loop forever
            raise RuntimeError("exact tiled statistics made no progress")
        pending = [n for n in pending if n not in moments]
    return passes


@torch.inference_mode()
def stylize_tiled(
    model: nn.Module,
    image: torch.Tensor,
    forward: Forward,
    tile_size: int = 1024,
    margin: int = 32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Stylize a (1, 3, H, W) image in [0, 1] tile by tile, equal to the untiled result.

    Args:
        model: the generator (its norm layers are frozen to exact statistics, then reset).
        image: the whole image, on the CPU (only tiles are moved to ``device``).
        forward: runs the generator on a (1, 3, h, w) tile on ``device`` (may add autocast,
            channels_last, a compiled model, ...).
        tile_size: side of the square crop fed to the network, margins included.
        margin: context pixels on each side of a tile's core (>= RECEPTIVE_RADIUS + 4).

    Returns the stylized (1, 3, H, W) float32 image on the CPU.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError("stylize_tiled takes one (1, 3, H, W) image")
    margin = -(-margin // ALIGN) * ALIGN
    if margin < RECEPTIVE_RADIUS + 4:
        raise ValueError(f"tile margin must be at least {RECEPTIVE_RADIUS + 4}px, got {margin}")
    half = margin - RECEPTIVE_RADIUS  # half-width of the blending band around each boundary
    if tile_size < min_tile_size(margin):
        # Smaller cores would let the bands of a tile's two sides overlap, and the weights
        # would no longer sum to 1.
        raise ValueError(f"tile_size must be at least {min_tile_size(margin)} for a {margin}px margin, got {tile_size}")
    _, _, h, w = image.shape
    tiles = make_tiles(h, w, tile_size, margin)
    # The weights of overlapping tiles sum to 1 everywhere (complementary ramps, and
    # products of them at corners), so no weight buffer and no division are needed.
    out = torch.zeros(1, 3, h, w)
    try:
        freeze_exact_norm_stats(model, image, forward, tiles, device)
        for t in tiles:
            add_tile(out, forward(image[..., t.cy0 : t.cy1, t.cx0 : t.cx1].to(device)).float().cpu(), t, half)
    finally:
        set_norm_mode(model, "live")
    return out
