"""How good is a stylized photo? Structure kept, edges kept, photorealism, style reached.

Every metric compares an output with the content photo it was made from (and, for the
Gram distance, with the style image). Images are (N, 3, H, W) RGB tensors in [0, 1]; each
metric returns one value per image, shape (N,).

* ``ssim``: SSIM of the luminance (torchmetrics, 11×11 Gaussian window, data range 1).
  1 = the photo's light and shade exactly; a recolouring that keeps luminance keeps it high.
* ``edge_ssim``: SSIM of Sobel gradient-magnitude maps of the luminance, each divided by its
  own mean. Sobel rather than Canny: a continuous edge strength (no thresholds, no
  hysteresis) that moves smoothly with the image, so SSIM can weigh a weakened edge less
  than a lost one. Luminance, so a change of hue or white balance barely moves it; divided
  by the mean, so a global change of exposure or contrast (a darker, moodier style) does not
  either — raw gradient maps of a photo darkened to 40% score only 0.70. Blur (lost edges),
  invented texture, ripples and stripes (new edges) lower it.
* ``photorealism``: Luan et al.'s criterion (Deep Photo Style Transfer): in every 7×7
  window, a photorealistic output is an affine colour transform of the photo. The output
  is fitted as ``A·photo + b`` per window by ridge least squares (3×3 ``A``, computed with
  box filters as in the guided filter) and the share of the output's local variance that
  the fit leaves unexplained is reported: ≈0 for any local recolouring of the photo,
  higher for invented texture, ripples and stripes.
* ``gram``: relative Gram distance to the style image, mean over relu1_1 … relu5_1 of
  ‖G − Gs‖² / ‖Gs‖² (the same ``gram_matrix`` as training; 0 = the style's statistics).
* ``content``: relative content distance at the content layer, ‖F − Fc‖² / ‖Fc‖².
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from kornia.color import rgb_to_grayscale, rgb_to_lab
from kornia.filters import sobel
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from hrstyle.losses import VGGFeatures, gram_matrix, photorealism_residual

#: Metric names, in report order. Higher is better for the first two, lower for the rest.
METRIC_KEYS = ("ssim", "edge_ssim", "photorealism", "gram", "content")
HIGHER_IS_BETTER = {"ssim": True, "edge_ssim": True, "photorealism": False, "gram": False, "content": False}
METRIC_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def luminance(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] → (N, 1, H, W) luma (Rec. 601) in [0, 1]."""
    return rgb_to_grayscale(image.float())


def lightness_gap(output: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Mean CIELAB lightness L* (0–100) of each (N, 3, H, W) output in [0, 1] minus that of the
    (1, 3, Hs, Ws) style image → (N,): negative = darker than the style."""
    def mean_l(image: torch.Tensor) -> torch.Tensor:
        return rgb_to_lab(image.float().clamp(0, 1))[:, 0].mean(dim=(1, 2))

    return mean_l(output) - mean_l(style.to(output.device))


def edge_map(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] → (N, 1, H, W) Sobel gradient magnitude of the luminance,
    divided by its mean over the image (mean 1: invariant to a global exposure/contrast gain;
    a flat image stays 0)."""
    edges = sobel(luminance(image), normalized=True)
    return edges / edges.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-4)


def _ssim(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    size = min(a.shape[-2:])
    kernel = 11 if size >= 11 else (size if size % 2 else size - 1)
    if kernel < 3:
        raise ValueError(f"images of {tuple(a.shape[-2:])} px are too small for SSIM (need at least 3×3)")
    values = structural_similarity_index_measure(
        a, b, data_range=data_range, kernel_size=kernel, sigma=1.5 * kernel / 11, reduction="none"
    )
    return values.reshape(a.shape[0])


def ssim(output: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """SSIM of the luminance of two (N, 3, H, W) batches in [0, 1] → (N,), 1 = identical."""
    return _ssim(luminance(output), luminance(content), data_range=1.0)


def edge_ssim(output: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """SSIM of the normalized Sobel edge maps of two (N, 3, H, W) batches in [0, 1] → (N,).

    1 = the same edges in the same places with the same relative strength; blur, lost
    structure or invented edges lower it. SSIM's data range is the content edge map's
    maximum (per image), as for any SSIM of unbounded maps.
    """
    reference = edge_map(content)
    out = edge_map(output)
    values = [
        _ssim(out[i : i + 1], reference[i : i + 1], data_range=float(reference[i].amax().clamp_min(1e-3)))
        for i in range(reference.shape[0])
    ]
    return torch.cat(values)


class StyleMetrics(nn.Module):
    """All metrics of this module for a batch of outputs against their photos and one style.

    Args:
        arch, weights: the metric network (see ``VGGFeatures``); choose it like training's
            loss network, e.g. ``arch="vgg16", weights="/path/to/vgg16_features.pth"``.
        content_layer: layer of the content distance (conv4_2, as training's content loss).
        style_layers: layers of the Gram distance (relu1_1 … relu5_1).

    Call ``set_style`` once, then ``forward(output, content)`` with (N, 3, H, W) batches in
    [0, 1]; it returns ``{key: (N,) float32 tensor}`` for every key of ``METRIC_KEYS``.
    """

    def __init__(
        self,
        arch: str = "vgg19",
        weights: str = "imagenet",
        content_layer: str = "conv4_2",
        style_layers: Sequence[str] = METRIC_STYLE_LAYERS,
    ) -> None:
        super().__init__()
        self.content_layer, self.style_layers = content_layer, list(style_layers)
        self.encoder = VGGFeatures([content_layer, *self.style_layers], arch=arch, weights=weights)
        self.style_grams: dict[str, torch.Tensor] = {}

    @classmethod
    def from_loss_config(cls, loss_cfg: Mapping[str, Any]) -> StyleMetrics:
        """The metric network of a ``configs/loss/*`` node (same arch, weights, content layer)."""
        return cls(
            arch=loss_cfg.get("arch", "vgg19"),
            weights=loss_cfg.get("weights", "imagenet"),
            content_layer=loss_cfg.get("content_layer", "conv4_2"),
        )

    @torch.no_grad()
    def set_style(self, style: torch.Tensor) -> None:
        """Gram targets of one (1, 3, H, W) style image in [0, 1]."""
        if style.dim() != 4 or style.shape[0] != 1:
            raise ValueError(f"expected one (1, 3, H, W) style image, got {tuple(style.shape)}")
        feats = self.encoder(style.to(self.encoder.mean.device).float())
        self.style_grams = {name: gram_matrix(feats[name]) for name in self.style_layers}

    @torch.no_grad()
    def gram_distance(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean over style layers of ‖G − Gs‖² / ‖Gs‖², from VGG features → (N,)."""
        if not self.style_grams:
            raise RuntimeError("StyleMetrics.set_style() must be called first")
        per_layer = []
        for name in self.style_layers:
            target = self.style_grams[name].to(feats[name].device)
            diff = gram_matrix(feats[name]) - target
            per_layer.append(diff.pow(2).sum(dim=(1, 2)) / target.pow(2).sum().clamp_min(1e-20))
        return torch.stack(per_layer, 0).mean(0)

    @torch.no_grad()
    def forward(self, output: torch.Tensor, content: torch.Tensor) -> dict[str, torch.Tensor]:
        if output.shape != content.shape or output.dim() != 4 or output.shape[1] != 3:
            raise ValueError(
                f"output and content must be (N, 3, H, W) batches of one shape, got "
                f"{tuple(output.shape)} and {tuple(content.shape)}"
            )
        device = self.encoder.mean.device
        output, content = output.to(device).float().clamp(0, 1), content.to(device).float().clamp(0, 1)
        out_feats = self.encoder(output)
        content_feats = self.encoder(content)[self.content_layer]
        diff = (out_feats[self.content_layer] - content_feats).pow(2).flatten(1).sum(1)
        return {
            "ssim": ssim(output, content),
            "edge_ssim": edge_ssim(output, content),
            "photorealism": photorealism_residual(output, content),
            "gram": self.gram_distance(out_feats),
            "content": diff / content_feats.pow(2).flatten(1).sum(1).clamp_min(1e-20),
        }
