"""Inference: stylize images with a trained checkpoint, tiled when large; export."""

from hrstyle.checkpoint import load_generator, save_generator
from hrstyle.image.color import apply_strength, preserve_color
from hrstyle.inference.files import Job, plan_jobs, plan_many, stylize_files
from hrstyle.inference.stylizer import Stylizer
from hrstyle.inference.tiling import stylize_tiled

__all__ = [
    "Job",
    "Stylizer",
    "apply_strength",
    "load_generator",
    "plan_jobs",
    "plan_many",
    "preserve_color",
    "save_generator",
    "stylize_files",
    "stylize_tiled",
]
