"""Compare stylization methods on photos and write a report:

    python scripts/evaluate.py content=photos/ style=starry.jpg methods=[identity,gatys,checkpoints/starry.pt]

Writes report.json, report.md, contact_sheet.png (and sweep_grid.png for a multirun folder)
and the stylized images to output=. See configs/evaluate.yaml and hrstyle/evaluation/report.py.
"""

import sys

import hydra
from omegaconf import DictConfig

from hrstyle.cli import prepare_argv, run_or_exit
from hrstyle.errors import UserError
from hrstyle.evaluation.report import evaluate
from hrstyle.image.io import find_images


def images(spec: object) -> list:
    """The images of a file, a folder, or a list of files and folders (``[a.jpg,b.png]``)."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    found = [path for item in specs for path in find_images(str(item))]
    if not found:
        raise UserError(f"no images found in {spec}")
    return found


def run(cfg: DictConfig) -> int:
    if cfg.content is None:
        raise UserError("give the photos to evaluate on: content=<photo or folder>")
    contents = images(cfg.content)
    styles = images(cfg.styles) if cfg.styles is not None else []
    evaluate(contents, styles, cfg.methods, cfg)
    return 0


def style_alias(argv: list[str]) -> list[str]:
    """``style=x`` → ``styles=x``: `style` is a config group of training (configs/style/), so
    Hydra would take ``style=x`` for a choice in that group."""
    return [f"styles={a[len('style='):]}" if a.startswith("style=") else a for a in argv]


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sys.exit(run_or_exit(lambda: run(cfg)))


if __name__ == "__main__":
    prepare_argv()
    sys.argv[1:] = style_alias(sys.argv[1:])
    main()
