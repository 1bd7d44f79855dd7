"""Frozen VGG feature extractor addressed by layer names (``conv4_2``, ``relu3_1``, ...).

Layers are named by walking torchvision's ``features`` Sequential: block ``b`` starts at
1 and advances after each max-pool, conv/relu index ``i`` restarts in each block. Asking
for a name that the network does not have is an error, so a layer can never be silently
skipped or mis-indexed (the classic bug of hard-coded index tables).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from hrstyle.errors import UserError
from hrstyle.paths import user_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = ("vgg16", "vgg19")


class WeightsUnavailableError(UserError):
    """The ImageNet VGG weights could not be downloaded."""


def layer_names(features: nn.Sequential) -> list[str]:
    """Names of the modules of a torchvision VGG ``features`` Sequential, in order."""
    names, block, conv = [], 1, 0
    for module in features:
        if isinstance(module, nn.Conv2d):
            conv += 1
            names.append(f"conv{block}_{conv}")
        elif isinstance(module, nn.ReLU):
            names.append(f"relu{block}_{conv}")
        elif isinstance(module, nn.MaxPool2d):
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:  # pragma: no cover - torchvision's VGG has nothing else
            raise TypeError(f"unexpected module in VGG features: {module}")
    return names


def _imagenet_features(arch: str) -> nn.Sequential:
    weights = models.get_model_weights(arch).IMAGENET1K_V1
    try:
        return models.get_model(arch, weights=weights).features
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
        raise WeightsUnavailableError(
            f"Could not download the ImageNet weights of {arch} from {weights.url} "
            f"({type(exc).__name__}: {exc}). The loss network needs them once; torchvision "
            f"caches them under {torch.hub.get_dir()}/checkpoints. Without internet, pass a "
            f"local state_dict instead: `loss.weights=/path/to/{arch}_features.pth` (torchvision "
            f"layout, `features.0.weight` ... or bare `0.weight` ...; a full torchvision "
            f"checkpoint such as {Path(weights.url).name} works too), with the matching "
            f"`loss.arch`. For example: loss=vgg16 loss.weights=/path/to/vgg16-397923af.pth"
        ) from exc


def _load_local(features: nn.Sequential, path: str | os.PathLike, arch: str, n_layers: int) -> None:
    path = user_path(path)
    if not path.is_file():
        raise UserError(f"VGG weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"could not read VGG weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a state_dict")
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    needed = {k: v for k, v in features.state_dict().items() if int(k.split(".")[0]) < n_layers}
    missing = sorted(set(needed) - set(state), key=lambda k: int(k.split(".")[0]))
    if missing:
        raise UserError(f"{path} lacks {missing[:4]}{'...' if len(missing) > 4 else ''}: is it a {arch} state_dict?")
    for key, ref in needed.items():
        if state[key].shape != ref.shape:
            raise UserError(f"{path}: {key} has shape {tuple(state[key].shape)}, {arch} needs {tuple(ref.shape)}")
    features.load_state_dict({k: state[k] for k in needed}, strict=False)


class VGGFeatures(nn.Module):
    """Frozen VGG16/19 that returns the activations of named layers.

    Args:
        layers: layer names to return, e.g. ``["conv1_1", "conv4_2"]``.
        arch: "vgg19" (default) or "vgg16".
        weights: "imagenet" (torchvision download), a path to a local state_dict, or
            "random" (tests only).

    ``forward`` takes an (N, 3, H, W) RGB batch in [0, 1] (ImageNet normalization is
    applied inside) and returns ``{name: (N, C, H', W') tensor}``.
    """

    def __init__(self, layers: Iterable[str], arch: str = "vgg19", weights: str = "imagenet") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"loss network arch must be one of {ARCHS}, got {arch!r}")
        self.layers = list(dict.fromkeys(layers))
        self.arch, self.weights = arch, str(weights)  # to build another extractor on the same network
        features = models.get_model(arch, weights=None).features
        names = layer_names(features)
        unknown = [n for n in self.layers if n not in names]
        if unknown:
            raise UserError(f"{arch} has no layer {unknown}; it has: {', '.join(names)}")
        if not self.layers:
            raise UserError("no VGG layer requested")
        n_layers = max(names.index(n) for n in self.layers) + 1  # truncate after the deepest one

        if weights == "imagenet":
            features = _imagenet_features(arch)
        elif weights == "random":
            warnings.warn("VGG loss network with random weights: only useful for tests", stacklevel=2)
        else:
            _load_local(features, weights, arch, n_layers)

        self.names = names[:n_layers]
        self.body = features[:n_layers]
        for module in self.body:
            if isinstance(module, nn.ReLU):
                module.inplace = False  # an in-place ReLU would overwrite the stored conv output
        self._freeze()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def _freeze(self) -> None:
        # The weights become non-persistent buffers: they follow .to(device) but never
        # enter a checkpoint (a trained style must not carry 80 MB of VGG) nor an optimizer.
        for module in self.body:
            for name, param in list(module.named_parameters(recurse=False)):
                delattr(module, name)
                module.register_buffer(name, param.detach(), persistent=False)

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # always frozen

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        out = {}
        for name, module in zip(self.names, self.body):
            x = module(x)
            if name in self.layers:
                out[name] = x
        return out
