"""Evaluation: metrics of stylized photos, reports and contact sheets comparing methods."""

from hrstyle.evaluation.metrics import (
    HIGHER_IS_BETTER,
    METRIC_KEYS,
    StyleMetrics,
    edge_map,
    edge_ssim,
    luminance,
    photorealism_residual,
    ssim,
)

__all__ = [
    "HIGHER_IS_BETTER",
    "METRIC_KEYS",
    "StyleMetrics",
    "edge_map",
    "edge_ssim",
    "luminance",
    "photorealism_residual",
    "ssim",
]
