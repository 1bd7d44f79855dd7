"""Labelled image grids: the reconstructions, the feature maps, and their TensorBoard copies."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from hrstyle.explore.layers import LayerInfo, truncated
from hrstyle.explore.reconstruct import Reconstruction
from hrstyle.image.io import tensor_to_pil
from hrstyle.losses.vgg import VGGFeatures

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MARK = (255, 40, 40)
PAD = 6


@dataclass
class Tile:
    """One picture of a grid and the text under it (``\\n`` separates lines; ASCII only)."""

    image: Image.Image
    label: str


def _font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except (TypeError, OSError):  # pragma: no cover - older Pillow / no FreeType
        return ImageFont.load_default()


def _line_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    left, top, right, bottom = font.getbbox("Ag|")
    return int(bottom - top) + 4


def wrap_text(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels in ``font``: at spaces, inside a
    word only when the word alone is too wide; ``\n`` starts a new line."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:  # hard break of an over-long word
                cut = max((i for i in range(1, len(word)) if font.getlength(word[:i]) <= width), default=1)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def labelled_grid(tiles: Sequence[Tile], columns: int | None = None, title: str | None = None) -> Image.Image:
    """Tiles in a grid (row-major), each with its label below, and a title on top.

    Tiles are pasted at their own size in cells of the largest tile's size; labels and title
    are wrapped to the cell and figure widths. ``columns`` None: at most 4 per row, rows as
    full as possible. Returns an RGB image.
    """
    if not tiles:
        raise ValueError("no tiles to draw")
    if columns is None:
        rows = math.ceil(len(tiles) / 4)
        columns = math.ceil(len(tiles) / rows)
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    font, title_font = _font(13), _font(15)
    cell_w = max(t.image.width for t in tiles)
    cell_h = max(t.image.height for t in tiles)
    line_h = _line_height(font)
    labels = [wrap_text(t.label, font, cell_w) for t in tiles]
    label_h = max(len(lines) for lines in labels) * line_h + PAD
    width = columns * cell_w + (columns + 1) * PAD

    title_lines = wrap_text(title, title_font, width - 2 * PAD) if title else []
    title_h = len(title_lines) * _line_height(title_font) + (PAD if title_lines else 0)

    height = title_h + rows * (cell_h + label_h) + (rows + 1) * PAD
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = PAD
    for line in title_lines:
        draw.text((PAD, y), line, fill=TEXT, font=title_font)
        y += _line_height(title_font)
    top = title_h + PAD
    for i, (tile, lines) in enumerate(zip(tiles, labels)):
        row, col = divmod(i, columns)
        x0 = PAD + col * (cell_w + PAD)
        y0 = top + row * (cell_h + label_h + PAD)
        canvas.paste(tile.image.convert("RGB"), (x0, y0))
        for j, line in enumerate(lines):
            draw.text((x0, y0 + tile.image.height + 2 + j * line_h), line, fill=TEXT, font=font)
    return canvas


def photo_tile(image: torch.Tensor, label: str = "the photo (target)") -> Tile:
    """The (1, 3, H, W) photo in [0, 1] as a tile labelled with its size."""
    h, w = image.shape[-2:]
    return Tile(tensor_to_pil(image[0]), f"{label}\n{w}x{h} px")


def reconstruction_tile(rec: Reconstruction, usage: Mapping[str, str] | None = None) -> Tile:
    """A reconstruction labelled with its layers, how the loss config uses them, and its loss.

    A content tile reads e.g. ``conv4_2 [content]`` / ``loss 0.94 -> 0.031, 100 steps``; a
    style tile ``conv1_1 ... conv3_1 (3 Grams)``.
    """
    usage = usage or {}
    if rec.kind == "content":
        layer = rec.layers[0]
        used = usage.get(layer, "")
        head = f"{layer} [{_ascii(used)}]" if used else layer
    else:
        first, last, n = rec.layers[0], rec.layers[-1], len(rec.layers)
        head = first if n == 1 else f"{first} ... {last} ({n} Grams)"
    return Tile(tensor_to_pil(rec.image[0]), f"{head}\nloss {rec.first_loss:.3g} -> {rec.final_loss:.3g}, "
                                            f"{rec.steps} steps")


def _ascii(text: str) -> str:
    return text.replace("×", "x").replace("…", "...")


def strongest_channels(activation: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` channels of a (C, H, W) activation with the largest mean after a ReLU.

    For a ReLU or pool layer that is the plain mean activation; for a conv layer it is the
    mean of its positive part, i.e. what the next layer receives (a conv channel's raw mean
    mostly reflects its bias). Returns ``(channels, scores)``, both (min(k, C),), strongest first.
    """
    if activation.dim() != 3:
        raise ValueError(f"expected a (C, H, W) activation, got {tuple(activation.shape)}")
    scores = activation.float().clamp_min(0).mean(dim=(1, 2))
    top = torch.topk(scores, min(k, scores.numel()))
    return top.indices, top.values


def normalize_map(fmap: torch.Tensor) -> torch.Tensor:
    """An (H, W) map scaled to [0, 1] (its minimum to 0, its maximum to 1; a constant map to 0)."""
    fmap = fmap.float()
    low, high = fmap.min(), fmap.max()
    return (fmap - low) / (high - low) if high > low else torch.zeros_like(fmap)


@torch.no_grad()
def feature_map_tiles(network: VGGFeatures, image: torch.Tensor, layers: Sequence[str], top_k: int,
                      table: Sequence[LayerInfo] = (), width: int | None = None) -> list[Tile]:
    """For each layer: the photo with the layer's receptive field drawn, then its ``top_k``
    strongest channels (``strongest_channels``), each normalized to [0, 1] (``normalize_map``)
    and shown in gray at the photo's size, blown up without interpolation (one block per unit:
    the shrinking resolution stays visible).

    Args:
        network: the loss network; image: the (1, 3, H, W) photo in [0, 1].
        layers: layer names, one grid row each; top_k: channels per layer.
        table: ``layer_table(...)`` rows, for the receptive fields (none drawn without it).
        width: tile width in pixels (None: the photo's width); the height keeps the aspect.

    Returns:
        ``len(layers) * (top_k + 1)`` tiles, row-major: use ``columns=top_k + 1``.
    """
    h, w = image.shape[-2:]
    width = width or w
    size = (max(1, round(h * width / w)), width)
    scale = width / w
    info = {row.name: row for row in table}
    feats = truncated(network, layers)(image.to(network.mean.device))
    photo = tensor_to_pil(image[0]).resize((size[1], size[0]), Image.Resampling.LANCZOS)
    tiles = []
    for layer in layers:
        act = feats[layer][0]
        c, fh, fw = act.shape
        marked = photo.copy()
        row = info.get(layer)
        if row is not None:
            side = row.receptive_field * scale
            cx, cy = size[1] / 2, size[0] / 2
            ImageDraw.Draw(marked).rectangle([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2],
                                             outline=MARK, width=2)
            label = f"{layer}: {c} x {fw}x{fh}\nred: RF {row.receptive_field} px"
        else:
            label = f"{layer}: {c} x {fw}x{fh}"
        tiles.append(Tile(marked, label))
        channels, scores = strongest_channels(act, top_k)
        for channel, score in zip(channels.tolist(), scores.tolist()):
            fmap = F.interpolate(normalize_map(act[channel])[None, None], size=size, mode="nearest")[0, 0]
            gray = (fmap.clamp(0, 1) * 255).round().byte().cpu().numpy()
            picture = Image.fromarray(np.stack([gray] * 3, -1), "RGB")
            tiles.append(Tile(picture, f"{layer} #{channel}\nmean {score:.3g}"))
    return tiles


def write_tensorboard(folder: str | Path, figures: Mapping[str, Image.Image], table_text: str | None = None) -> Path:
    """Write the figures (as images) and the layer table (as text) to a TensorBoard log in ``folder``."""
    from torch.utils.tensorboard import SummaryWriter  # tensorboard is a dependency, but a slow import

    folder = Path(folder)
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for name, figure in figures.items():
            writer.add_image(f"explore/{name}", np.asarray(figure.convert("RGB")), 0, dataformats="HWC")
        if table_text:
            writer.add_text("explore/layers", "    " + table_text.replace("\n", "\n    "), 0)  # markdown code block
    finally:
        writer.close()
    return folder
