"""Inference: a trained style applied to photos (``Stylizer``), and the file runner behind scripts/infer.py."""

from hrstyle.checkpoint import load_generator, save_generator
from hrstyle.image.color import apply_strength, preserve_color
from hrstyle.inference.files import Job, plan_jobs, plan_many, stylize_files
from hrstyle.inference.stylizer import Look, Runtime, Stylizer
from hrstyle.inference.tiling import stylize_tiled

__all__ = [
    "Job",
    "Look",
    "Runtime",
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
