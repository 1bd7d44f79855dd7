"""Per-image optimization: Gatys et al.'s pixel optimization and the paper's per-photo HRNet fit,
both against the training loss (the evaluation's quality references)."""

from hrstyle.optimization.gatys import OptimizationResult, optimize_image
from hrstyle.optimization.paper import fit_generator

__all__ = ["OptimizationResult", "fit_generator", "optimize_image"]
