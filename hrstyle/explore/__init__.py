"""Explain the loss network with pictures: the layer table (shapes, receptive fields, which
layers the loss uses), content and style reconstructions from noise, and feature maps.

``scripts/explore.py`` runs it all for one photo; everything uses the training loss network
(``hrstyle.losses.VGGFeatures``), ``gram_matrix`` and the Gatys optimizer (``optimize_image``).
"""

from hrstyle.explore.figures import (
    Tile,
    feature_map_tiles,
    labelled_grid,
    normalize_map,
    photo_tile,
    reconstruction_tile,
    strongest_channels,
    write_tensorboard,
)
from hrstyle.explore.layers import (
    LayerInfo,
    all_layer_names,
    check_layers,
    format_table,
    full_network,
    layer_table,
    loss_usage,
    receptive_fields,
    truncated,
)
from hrstyle.explore.reconstruct import FeatureMatchLoss, Reconstruction, growing_sets, reconstruct, steps_for

__all__ = [
    "FeatureMatchLoss",
    "LayerInfo",
    "Reconstruction",
    "Tile",
    "all_layer_names",
    "check_layers",
    "feature_map_tiles",
    "format_table",
    "full_network",
    "growing_sets",
    "labelled_grid",
    "layer_table",
    "loss_usage",
    "normalize_map",
    "photo_tile",
    "receptive_fields",
    "reconstruct",
    "reconstruction_tile",
    "steps_for",
    "strongest_channels",
    "truncated",
    "write_tensorboard",
]
