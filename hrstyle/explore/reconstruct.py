"""Reconstructions: what the activations of a layer (content) or the Gram matrices of a set of
layers (style) keep of a photo.

Starting from seeded noise, the pixels are optimized until the image's activations (or
Gram matrices) on the chosen layers match the photo's. The optimizer is the Gatys baseline's
(``hrstyle.optimization.optimize_image``: LBFGS or Adam on the logits of the image), the network
is the training loss network (``VGGFeatures``, cut after the deepest layer needed), the Gram
matrix is ``hrstyle.losses.gram_matrix``, and each term is normalized the way
``ContentStyleLoss(normalize=True)`` normalizes it, so every layer's loss starts of order 1
(0.5-8 for the offline VGG16) and one set of optimizer settings serves them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hrstyle.errors import UserError
from hrstyle.explore.layers import truncated
from hrstyle.losses.perceptual import gram_matrix
from hrstyle.losses.vgg import VGGFeatures
from hrstyle.optimization.gatys import OptimizationResult, optimize_image


def normalized_mse(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mse(value, target) / mean(target²)``: ``ContentStyleLoss``'s normalization (0 = equal,
    1 = as far as an all-zero answer)."""
    return F.mse_loss(value.float(), target) / target.pow(2).mean().clamp_min(1e-12)


class FeatureMatchLoss(nn.Module):
    """Loss of an image against one fixed target image, on chosen layers of the loss network.

    ``content_loss`` is the mean over ``content_layers`` of the normalized MSE between the
    activations; ``style_loss`` the mean over ``style_layers`` of the normalized MSE between
    the Gram matrices. With one content layer the content term is exactly
    ``ContentStyleLoss(content_layer=layer)``'s, and the style term is its style term with
    weights ``1 / len(style_layers)``. ``loss`` is their sum.

    Args:
        network: the loss network (``full_network(...)`` or any ``VGGFeatures`` that has the layers);
            only the part up to the deepest layer used is run.
        target: the photo, (1, 3, H, W) in [0, 1]; its activations and Grams are computed once.
        content_layers, style_layers: layer names (at least one in all).

    Called like ``ContentStyleLoss`` (``loss(output, content)``, the second argument ignored:
    the target is fixed), so ``optimize_image`` can optimize it. ``output`` is (1, 3, H, W) in
    [0, 1]; the result is a dict of scalar tensors ``loss``, ``content_loss``, ``style_loss``
    and ``tv_loss`` (always 0: no smoothness prior, the reconstruction shows what the layers keep).
    """

    def __init__(self, network: VGGFeatures, target: torch.Tensor, content_layers: Sequence[str] = (),
                 style_layers: Sequence[str] = ()) -> None:
        super().__init__()
        self.content_layers = list(dict.fromkeys(content_layers))
        self.style_layers = list(dict.fromkeys(style_layers))
        if not self.content_layers and not self.style_layers:
            raise UserError("a reconstruction needs at least one content or style layer")
        self.encoder = truncated(network, [*self.content_layers, *self.style_layers])
        if target.dim() != 4 or target.shape[:2] != (1, 3):
            raise ValueError(f"expected one (1, 3, H, W) target image, got {tuple(target.shape)}")
        with torch.no_grad():
            feats = self.encoder(target.detach().to(self.encoder.mean.device, torch.float32).clamp(0, 1))
        for layer in self.content_layers:
            self.register_buffer(f"content_{layer}", feats[layer].float(), persistent=False)
        for layer in self.style_layers:
            self.register_buffer(f"gram_{layer}", gram_matrix(feats[layer]), persistent=False)

    def forward(self, output: torch.Tensor, content: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feats = self.encoder(output)
        zero = output.new_zeros((), dtype=torch.float32)
        content_loss = sum((normalized_mse(feats[layer], getattr(self, f"content_{layer}"))
                            for layer in self.content_layers), zero) / max(1, len(self.content_layers))
        style_loss = sum((normalized_mse(gram_matrix(feats[layer]), getattr(self, f"gram_{layer}"))
                          for layer in self.style_layers), zero) / max(1, len(self.style_layers))
        return {"loss": content_loss + style_loss, "content_loss": content_loss, "style_loss": style_loss,
                "tv_loss": zero}


@dataclass
class Reconstruction:
    """One reconstructed image and how it was made.

    Attributes:
        kind: "content" (activations matched) or "style" (Gram matrices matched).
        layers: the layers matched.
        result: ``optimize_image``'s result: ``image`` (1, 3, H, W) in [0, 1], ``history`` of the
            losses (step 0: the noise), ``seconds``.
    """

    kind: str
    layers: tuple[str, ...]
    result: OptimizationResult

    @property
    def image(self) -> torch.Tensor:
        return self.result.image

    @property
    def steps(self) -> int:
        return self.result.history[-1][0]

    @property
    def first_loss(self) -> float:
        return self.result.history[0][1]["loss"]

    @property
    def final_loss(self) -> float:
        return self.result.history[-1][1]["loss"]


def reconstruct(
    image: torch.Tensor,
    network: VGGFeatures,
    content_layers: Sequence[str] = (),
    style_layers: Sequence[str] = (),
    steps: int = 100,
    method: str = "lbfgs",
    lr: float | None = None,
    seed: int = 0,
    noise: float = 1.0,
    log_every: int = 0,
    progress: bool = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> Reconstruction:
    """Optimize seeded noise until it matches ``image`` on the given layers.

    Args:
        image: the photo, (1, 3, H, W) in [0, 1]; the reconstruction has its size.
        network: the loss network (see ``FeatureMatchLoss``).
        content_layers: match these layers' activations (a content reconstruction: one layer).
        style_layers: match these layers' Gram matrices (a style reconstruction).
        steps, method, lr, log_every, progress, callback: as ``optimize_image``'s: one step =
            one loss + gradient evaluation.
        seed, noise: the start is ``0.5 + noise * (u - 0.5)``, u uniform in [0, 1] drawn with
            ``seed``; 1: white noise on [0, 1]. What a layer does not constrain keeps its start
            value, so from white noise a deep layer's content reconstruction drowns in it, and
            0.2 shows the layout the layer keeps better. A style (Gram) loss needs contrast to
            start from: at a flat image its gradient only moves the mean colour, so from 0.2
            LBFGS barely moves for tens of steps; use 1 there.

    Returns:
        A ``Reconstruction`` (kind "content" when ``content_layers`` is given, else "style").
    """
    if not 0 < noise <= 1:
        raise UserError(f"noise must be in (0, 1], got {noise}")
    loss = FeatureMatchLoss(network, image, content_layers, style_layers)
    start = 0.5 + noise * (torch.rand(image.shape, generator=torch.Generator().manual_seed(seed)) - 0.5)
    result = optimize_image(image, loss, steps=steps, method=method, lr=lr, init=start, log_every=log_every,
                            progress=progress, callback=callback)
    kind = "content" if loss.content_layers else "style"
    return Reconstruction(kind, tuple(loss.content_layers or loss.style_layers), result)


def growing_sets(layers: Sequence[str]) -> list[list[str]]:
    """``[a, b, c]`` → ``[[a], [a, b], [a, b, c]]``: the style sets of the classic figure."""
    layers = list(layers)
    return [layers[: i + 1] for i in range(len(layers))]


def steps_for(network: VGGFeatures, layers: Sequence[str], steps: int, deep_steps: int | None,
              deep_from: str | None) -> int:
    """``deep_steps`` when the deepest of ``layers`` is ``deep_from`` or deeper in ``network``,
    else ``steps``: deep layers cost up to 20× a conv1 step on the CPU, and a budget in steps
    per tile keeps the whole figure set within minutes."""
    if deep_steps is None or deep_from is None:
        return steps
    depth = max(network.names.index(layer) for layer in layers)
    return deep_steps if depth >= network.names.index(deep_from) else steps
