"""Loss network (frozen VGG) and the content/style/TV losses computed on it."""

from hrstyle.losses.perceptual import (
    DEFAULT_STYLE_LAYERS,
    PAPER_STYLE_LAYERS,
    ContentStyleLoss,
    gram_matrix,
    total_variation,
)
from hrstyle.losses.photoreal import photorealism_residual
from hrstyle.losses.vgg import VGGFeatures, WeightsUnavailableError, layer_names

__all__ = [
    "DEFAULT_STYLE_LAYERS",
    "PAPER_STYLE_LAYERS",
    "ContentStyleLoss",
    "VGGFeatures",
    "WeightsUnavailableError",
    "gram_matrix",
    "layer_names",
    "photorealism_residual",
    "total_variation",
]
