"""The high-resolution generator of Li, Ye & Li, "High-Resolution Network for
Photorealistic Style Transfer" (arXiv 1904.11617, Fig. 2).

A full-resolution stream is kept from input to output; half- and quarter-resolution
streams are made by strided 3x3 convolutions and fused back by bilinear upsampling
and channel concatenation (inception-style), so the output is generated at full
resolution and keeps the photo's structure::

    x ─ B(3→16) ─ B(16→32) ──────── B(32→32) ─┬─ B(64→64) ──────┐
                     │        └─ ↑2 ─ d2(16→32)┘                 │ cat 192
                     │   half:  d(32→32) ┬ B(32→32)  = 64 ─ ↑2 ──┤
                     │   quarter: d4(32→32) ┬ d(32→32) = 64 ─ ↑4 ┘
                                      → B(192→64) → B(64→32) → B(32→16) → conv(16→3) → sigmoid

(B: bottleneck residual block, d: strided 3x3 conv, ↑: bilinear upsampling.) With
``output="residual"`` the result is ``sigmoid(logit(base) + conv(16→3))``, where ``base`` is the
photo, or with ``color_branch`` the photo's global colour transfer onto learned statistics
(``hrstyle.models.color``): the streams then learn only the regional change.

Fixes over the reference code: no in-place op on a tensor autograd saved, any H×W
(edge-padded to a multiple of 4 internally and cropped back), an output in [0, 1]
(sigmoid), upsampling to the exact size of the full-resolution stream.

At ``width=1`` the network has 65,791 parameters and costs 35.4 kMAC per pixel as
drawn (≈71 kFLOP/pixel, convolutions only); computing the fusion of the head's first
block per stream (``FusionBottleneck``, the same function) brings that to 20.1 kMAC, measured with ``hrstyle.models.count_macs_per_pixel``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hrstyle.models.color import GlobalColorTransfer
from hrstyle.models.norm import StatsInstanceNorm2d

PADDING_MODES = ("zeros", "reflect", "replicate")
OUTPUT_MODES = ("image", "residual")


def _conv(cin: int, cout: int, kernel: int, stride: int, padding_mode: str) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, padding_mode=padding_mode)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 → 3x3 → 1x1 convs with instance norm and ReLU.

    The shortcut is the identity when channels match, otherwise a 1x1 projection
    followed by instance norm. Shapes: (N, cin, H, W) → (N, cout, H, W).
    """

    def __init__(self, cin: int, cout: int, padding_mode: str = "zeros") -> None:
        super().__init__()
        mid = max(cout // 4, 1)
        self.body = nn.Sequential(
            _conv(cin, mid, 1, 1, padding_mode),
            StatsInstanceNorm2d(mid),
            nn.ReLU(),
            _conv(mid, mid, 3, 1, padding_mode),
            StatsInstanceNorm2d(mid),
            nn.ReLU(),
            _conv(mid, cout, 1, 1, padding_mode),
            StatsInstanceNorm2d(cout),
        )
        self.shortcut: nn.Module
        if cin == cout:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(_conv(cin, cout, 1, 1, padding_mode), StatsInstanceNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Out-of-place add: the reference's `out += residual` overwrote a tensor that
        # ReLU's backward needs. The shortcut runs first so that its norm and the body's
        # first norm (both fed by x alone) are reached before anything depending on them:
        # exact tiled inference measures both in one pass.
        shortcut = self.shortcut(x)
        return F.relu(self.body(x) + shortcut)


class FusionBottleneck(Bottleneck):
    """The first head block, applied to ``cat(full, up(half), up(quarter))`` without ever
    building that 3·C-channel full-resolution map.

    Its first layers are 1x1 convolutions (body and projection shortcut), and a 1x1
    convolution commutes with bilinear upsampling (both linear, and the bilinear weights
    sum to 1, so the bias passes through). So each stream is projected at its own
    resolution and only the projected channels are upsampled: the same function, with
    25% fewer MACs and much less memory traffic than concatenate-then-convolve.
    Parameters (names and shapes) are exactly those of a ``Bottleneck``.
    """

    def forward(self, full: torch.Tensor, half: torch.Tensor, quarter: torch.Tensor) -> torch.Tensor:
        conv_body, conv_short = self.body[0], self.shortcut[0]
        bias_body, bias_short = conv_body.bias, conv_short.bias
        assert bias_body is not None and bias_short is not None  # refines Optional for TorchScript
        weight = torch.cat((conv_body.weight, conv_short.weight), 0)
        bias = torch.cat((bias_body, bias_short), 0)
        c = full.shape[1]
        size = (full.shape[-2], full.shape[-1])
        y = F.conv2d(full, weight[:, :c], bias)
        y = y + _up(F.conv2d(half, weight[:, c : 2 * c]), size)
        y = y + _up(F.conv2d(quarter, weight[:, 2 * c :]), size)
        split = bias_body.shape[0]
        body, short = y[:, :split], y[:, split:]
        del y  # the views keep it until both halves have been consumed
        short = self.shortcut[1](short)  # shortcut first, as in Bottleneck
        for i, layer in enumerate(self.body):
            if i > 0:
                body = layer(body)
        return F.relu(body + short)


class HRNet(nn.Module):
    """Photorealistic style-transfer generator.

    Args:
        width: channel multiplier (1.0 = the paper's 16/32/64 channels).
        padding_mode: padding of every convolution: "zeros" (the paper), "reflect" or
            "replicate" (fewer border artifacts).
        output: "image" (the paper: the last convolution makes the picture, through a
            sigmoid) or "residual" (a global residual in logit space,
            ``sigmoid(logit(photo) + last conv)``, with the last convolution initialised
            to zero: training starts from the photo itself and learns the change, instead
            of first having to learn to reproduce the photo from a random network, which
            on few photos and steps collapses to flat colour fields).
        color_branch: with ``output="residual"``, the residual is added to the photo after a
            global colour transfer onto learned statistics (``hrstyle.models.color``):
            ``sigmoid(logit(transfer(photo)) + last conv)``. The transfer, per photo, does the
            global colour change; the convolutional streams learn the regional one.
        color_learned: whether training moves the branch's target statistics (False: they stay
            the style image's).

    ``forward`` maps an (N, 3, H, W) RGB image in [0, 1], any H, W >= 1, to an
    (N, 3, H, W) RGB image in [0, 1].
    """

    #: The input is padded to a multiple of this (two stride-2 levels).
    multiple = 4
    # A TorchScript constant: scripting does not see plain class attributes.
    __constants__ = ["multiple"]

    def __init__(self, width: float = 1.0, padding_mode: str = "zeros", output: str = "image",
                 color_branch: bool = False, color_learned: bool = True) -> None:
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {OUTPUT_MODES}, got {output!r}")
        if color_branch and output != "residual":
            raise ValueError("color_branch needs output='residual' (the branch gives the picture the residual is added to)")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        self.width = float(width)
        self.padding_mode = padding_mode
        self.output = output
        self.residual = output == "residual"  # a bool attribute: a TorchScript-friendly branch
        self.color_branch = bool(color_branch)
        self.color_learned = bool(color_learned)
        self.color: nn.Module = GlobalColorTransfer(learned=color_learned) if color_branch else nn.Identity()
        c16, c32, c64 = (max(int(round(c * width)), 4) for c in (16, 32, 64))
        pm = padding_mode

        self.layer1 = Bottleneck(3, c16, pm)
        self.layer2_full = Bottleneck(c16, c32, pm)
        self.down2_half = _conv(c16, c32, 3, 2, pm)
        self.layer3_full = Bottleneck(c32, c32, pm)
        self.layer3_half = Bottleneck(c32, c32, pm)
        self.down3_full_to_half = _conv(c32, c32, 3, 2, pm)
        self.down3_full_to_quarter = _conv(c32, c32, 3, 4, pm)
        self.down3_half_to_quarter = _conv(c32, c32, 3, 2, pm)
        self.layer4_full = Bottleneck(2 * c32, c64, pm)
        # A ModuleList, not a Sequential: head[0] takes the three streams.
        self.head = nn.ModuleList([
            FusionBottleneck(3 * c64, c64, pm),
            Bottleneck(c64, c32, pm),
            Bottleneck(c32, c16, pm),
            _conv(c16, 3, 3, 1, pm),
        ])
        if self.residual:
            nn.init.zeros_(self.head[3].weight)
            nn.init.zeros_(self.head[3].bias)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments; stored in checkpoints to rebuild the network."""
        return {"width": self.width, "padding_mode": self.padding_mode, "output": self.output,
                "color_branch": self.color_branch, "color_learned": self.color_learned}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) image batch, got shape {list(x.shape)}")
        h, w = x.shape[-2], x.shape[-1]
        # Pad bottom/right to a multiple of 4 (cropped off again at the end). Always padding,
        # possibly by 0, keeps the graph free of shape-dependent branches for export, and
        # replicate works for any size, even 1 pixel.
        photo = x
        m = self.multiple
        # Round up with floor division: torch.compile(dynamic=True) fails on a symbolic `%`.
        x = F.pad(x, (0, (w + m - 1) // m * m - w, 0, (h + m - 1) // m * m - h), mode="replicate")
        full_size = (x.shape[-2], x.shape[-1])

        # `del` drops each full-resolution map as soon as it is dead: peak memory is what
        # limits the image size (untiled) or the tile size.
        f1 = self.layer1(x)
        del x
        f2 = self.layer2_full(f1)
        h2 = self.down2_half(f1)
        del f1
        f3 = torch.cat((self.layer3_full(f2), _up(h2, full_size)), 1)
        h3 = torch.cat((self.down3_full_to_half(f2), self.layer3_half(h2)), 1)
        q3 = torch.cat((self.down3_full_to_quarter(f2), self.down3_half_to_quarter(h2)), 1)
        del f2, h2
        f4 = self.layer4_full(f3)
        del f3
        # head[0] fuses cat(f4, up(h3), up(q3)) (the 192-channel map of the paper).
        y = self.head[0](f4, h3, q3)
        del f4, h3, q3
        y = self.head[3](self.head[2](self.head[1](y)))[..., :h, :w]
        if self.residual:
            # logit written out (log/log1p), clamped so 0 and 255 stay finite: exports to ONNX as is.
            p = self.color(photo).clamp(1e-3, 1 - 1e-3)
            y = y + (torch.log(p) - torch.log1p(-p))
        return torch.sigmoid(y)


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
