"""Stylize photos with a trained style:  python scripts/infer.py input=photo.jpg [key=value ...]

Input: a file, a folder (recursive, mirrored under output) or a glob. See configs/infer.yaml.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hrstyle.cli import run_or_exit
from hrstyle.data.images import save_image_atomic
from hrstyle.data.samples import sample_image
from hrstyle.inference import Stylizer, plan_jobs, stylize_files


def run(cfg: DictConfig) -> int:
    stylizer = Stylizer(
        cfg.checkpoint, device=cfg.device, precision=cfg.precision, tile_size=cfg.tile_size,
        tile_margin=cfg.tile_margin, strength=cfg.strength, preserve_color=cfg.preserve_color,
        channels_last=cfg.channels_last, compile=cfg.compile,
        guided_radius=cfg.guided_radius, guided_eps=cfg.guided_eps,
    )
    source = cfg.input
    if source is None:  # nothing given: show what the tool does on a built-in sample
        source = str(save_image_atomic(sample_image(0, 512), Path("outputs/stylized/sample_content.png")))
        print(f"No input given: stylizing the built-in sample {source} with the '{stylizer.style_name}' style.")
    jobs, skipped = plan_jobs(source, cfg.output, cfg.format, stylizer.style_name)
    for path in skipped:
        print(f"warning: skipping {path} (not an image file)", file=sys.stderr)
    if not jobs:
        print(f"error: no images found in {source}", file=sys.stderr)
        return 2
    summary = stylize_files(stylizer, jobs, cfg.quality, cfg.max_size, cfg.batch_size, cfg.workers)
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
    main()
