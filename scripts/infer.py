"""Stylize photos with a trained style:  python scripts/infer.py photo.jpg "My Photo.jpg" photos/ [key=value ...]

Inputs (plain arguments, or input=...): files, folders (recursive, mirrored under output) or
globs. See configs/infer.yaml.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from hrstyle.cli import prepare_argv, run_or_exit
from hrstyle.data.samples import sample_image
from hrstyle.image.io import save_image_atomic
from hrstyle.inference import Look, Runtime, Stylizer, plan_many, stylize_files


def run(cfg: DictConfig) -> int:
    look = Look(work_size=cfg.work_size, strength=cfg.strength, preserve_color=cfg.preserve_color,
                guided_radius=cfg.guided_radius, guided_eps=cfg.guided_eps, color_match=cfg.color_match,
                color_bands=cfg.color_bands, layout_guard=cfg.layout_guard, align_horizon=cfg.align_horizon,
                color_max_gain=cfg.color_max_gain)
    runtime = Runtime(device=cfg.device, precision=cfg.precision, backend=cfg.backend, compile=cfg.compile,
                      channels_last=cfg.channels_last, tile_size=cfg.tile_size, tile_margin=cfg.tile_margin,
                      tile_cache_mb=cfg.tile_cache_mb, memory_gb=cfg.memory_gb, cache_dir=cfg.cache_dir)
    stylizer = Stylizer(cfg.checkpoint, look, runtime)
    sources = list(cfg.input) if isinstance(cfg.input, ListConfig) else [cfg.input]
    if sources == [None]:  # nothing given: show what the tool does on a built-in sample
        sources = [str(save_image_atomic(sample_image(0, 512), Path("outputs/stylized/sample_content.png")))]
        print(f"No input given: stylizing the built-in sample {sources[0]} with the '{stylizer.style_name}' style.")
    jobs, skipped, existing = plan_many(sources, cfg.output, cfg.format, stylizer.style_name, cfg.overwrite)
    for path in skipped:
        print(f"warning: skipping {path} (not an image file)", file=sys.stderr)
    if existing:
        print(f"Skipping {len(existing)} image(s) whose output already exists (overwrite=true to redo them).")
    if not jobs:
        if existing:
            return 0
        print(f"error: no images found in {', '.join(map(str, sources))}", file=sys.stderr)
        return 2
    summary = stylize_files(stylizer, jobs, cfg.quality, cfg.max_size, cfg.batch_size, cfg.workers,
                            max_pixels=cfg.max_pixels)
    mps = summary.megapixels / summary.seconds if summary.seconds else 0.0
    print(f"Done: {summary.done} image(s), {summary.megapixels:.1f} MP in {summary.seconds:.1f} s ({mps:.2f} MP/s) "
          f"on {stylizer.device}; {len(summary.failed)} failed, {len(skipped)} non-image file(s) skipped.")
    if summary.done and cfg.input is None:
        print(f"Result: {jobs[0].dst}")
    return 1 if summary.failed else 0


@hydra.main(config_path="../configs", config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sys.exit(run_or_exit(lambda: run(cfg)))


if __name__ == "__main__":
    prepare_argv("input")
    main()
