"""The loss network's layers: names, receptive fields, output shapes, and which ones the loss uses.

Everything here is read from the very modules of ``hrstyle.losses.VGGFeatures`` (the training
loss network): receptive fields from each Conv2d/MaxPool2d's kernel, stride, padding and
dilation, output shapes from a forward pass of the image. Nothing is a hard-coded table.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models

from hrstyle.errors import UserError
from hrstyle.losses.vgg import VGGFeatures, layer_names


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table.

    Attributes:
        name: ``conv4_2``, ``relu4_2``, ``pool4``, ...
        index: the module's index in torchvision's ``vgg.features`` Sequential.
        shape: output shape ``(C, H, W)`` for the image the table was made for.
        receptive_field: side, in input pixels, of the square that one output unit sees
            (padding included: near the border part of it lies outside the image).
        jump: input pixels between two neighbouring output units (the product of the strides
            so far: 2 after pool1, 16 after pool4).
        use: how the loss config uses the layer: ``"content"``, ``"style ×0.4"``, both, or ``""``.
    """

    name: str
    index: int
    shape: tuple[int, int, int]
    receptive_field: int
    jump: int
    use: str


def _square(value: int | tuple[int, ...], what: str, module: nn.Module) -> int:
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        raise ValueError(f"non-square {what} {values} in {module}: receptive fields assume square ones")
    return int(values[0])


def receptive_fields(features: Iterable[nn.Module]) -> list[tuple[int, int]]:
    """``(receptive_field, jump)`` after each module of a VGG ``features`` stack, in input pixels.

    The usual recursion over the layers, with k the kernel size, s the stride, d the dilation:
    ``rf_out = rf_in + (k - 1) * d * jump_in`` and ``jump_out = jump_in * s`` (padding moves
    the field, it does not change its size); ReLUs change nothing. For VGG: conv1_1 sees 3×3
    pixels, conv1_2 5, pool1 6, conv2_1 10, and the field doubles its growth after each pool.
    """
    rf, jump, out = 1, 1, []
    for module in features:
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            k = _square(module.kernel_size, "kernel", module)
            s = _square(module.stride, "stride", module)
            d = _square(module.dilation, "dilation", module)
            rf, jump = rf + (k - 1) * d * jump, jump * s
        elif not isinstance(module, (nn.ReLU, nn.Identity, nn.Dropout)):
            raise TypeError(f"no receptive-field rule for {type(module).__name__}")
        out.append((rf, jump))
    return out


def all_layer_names(arch: str) -> list[str]:
    """Every named layer of torchvision's ``arch`` ("vgg16" | "vgg19"), in order (no weights)."""
    if arch not in ("vgg16", "vgg19"):
        raise UserError(f"loss network arch must be vgg16 or vgg19, got {arch!r}")
    with torch.device("meta"):  # the architecture only: no 500 MB random initialisation
        features = models.get_model(arch, weights=None).features
    return layer_names(features)


def full_network(arch: str = "vgg19", weights: str = "imagenet") -> VGGFeatures:
    """The loss network with every layer (conv1_1 … pool5): one ``VGGFeatures``, loaded once.

    ``truncated(network, layers)`` then hands out the shorter networks each step needs.
    """
    return VGGFeatures(all_layer_names(arch), arch=arch, weights=weights)


def check_layers(network: VGGFeatures, layers: Iterable[str], what: str = "layer") -> list[str]:
    """``layers`` as a list; ``UserError`` (one line, listing the valid names) for a name the
    network lacks."""
    layers = [str(layer) for layer in layers]
    unknown = [layer for layer in layers if layer not in network.names]
    if unknown:
        raise UserError(f"unknown {what} {', '.join(unknown)}: {network.arch} has {', '.join(network.names)}")
    return layers


def truncated(network: VGGFeatures, layers: Sequence[str]) -> VGGFeatures:
    """A ``VGGFeatures`` that returns ``layers`` and stops after the deepest of them.

    It shares ``network``'s frozen modules (no copy, no reload; ``network`` is left as it was), so
    it computes exactly what ``VGGFeatures(layers, arch, weights)`` would, without building and
    loading another VGG: an optimization step on conv1_1 costs conv1_1, not the whole network.
    """
    layers = check_layers(network, dict.fromkeys(layers))
    if not layers:
        raise UserError("no VGG layer requested")
    depth = max(network.names.index(layer) for layer in layers) + 1
    part = copy.copy(network)
    # Its own registries, so that assigning (or moving) its parts leaves ``network`` as it was.
    part._modules, part._buffers, part._parameters = (dict(network._modules), dict(network._buffers),
                                                      dict(network._parameters))
    part.body = network.body[:depth]  # a Sequential of the same module objects
    part.names, part.layers = network.names[:depth], layers
    return part


def loss_usage(content_layer: str | Sequence[str] | None,
               style_layers: Mapping[str, float] | Sequence[str] | None) -> dict[str, str]:
    """``{layer: "content" | "style ×w" | "content, style ×w"}`` for the layers a loss config uses.

    ``style_layers`` is a ``{layer: weight}`` mapping (``ContentStyleLoss.style_layers``) or a list.
    """
    content = [content_layer] if isinstance(content_layer, str) else list(content_layer or [])
    style = dict(style_layers) if isinstance(style_layers, Mapping) else dict.fromkeys(style_layers or [], None)
    usage: dict[str, list[str]] = {}
    for layer in content:
        usage.setdefault(layer, []).append("content")
    for layer, weight in style.items():
        usage.setdefault(layer, []).append("style" if weight is None else f"style ×{weight:g}")
    return {layer: ", ".join(uses) for layer, uses in usage.items()}


@torch.no_grad()
def layer_table(network: VGGFeatures, image: torch.Tensor, usage: Mapping[str, str] | None = None) -> list[LayerInfo]:
    """One ``LayerInfo`` per named layer of ``network`` for a (1, 3, H, W) image in [0, 1].

    Output shapes come from a forward pass of ``image`` through ``network`` (so they hold for
    any image size, odd ones included); ``usage`` is ``loss_usage(...)``. An image smaller than
    the network's total stride (32 px for the whole VGG) is a ``UserError``.
    """
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"expected one (1, 3, H, W) image, got {tuple(image.shape)}")
    usage = dict(usage or {})
    fields = receptive_fields(network.body)
    h, w = image.shape[-2:]
    if min(h, w) < fields[-1][1]:
        raise UserError(f"the image is {w}x{h} px, too small for {network.arch} down to {network.names[-1]}: its "
                        f"max-pools need at least {fields[-1][1]} px per side (use a larger size=)")
    feats = truncated(network, network.names)(image.to(network.mean.device))
    rows = []
    for index, (name, (rf, jump)) in enumerate(zip(network.names, fields)):
        c, h, w = feats[name].shape[1:]
        rows.append(LayerInfo(name, index, (c, h, w), rf, jump, usage.get(name, "")))
    return rows


def format_table(rows: Sequence[LayerInfo]) -> str:
    """The table as aligned text, one layer per line."""
    header = ("layer", "index", "output C×H×W", "receptive field", "jump", "used by the loss")
    lines = [(r.name, str(r.index), "×".join(map(str, r.shape)), f"{r.receptive_field} px", f"{r.jump} px", r.use)
             for r in rows]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    right = {1, 3, 4}  # numbers

    def fmt(row: Sequence[str]) -> str:
        cells = [cell.rjust(width) if i in right else cell.ljust(width) for i, (cell, width) in
                 enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])
