"""Compare stylization methods on photos and write a report:

    python scripts/evaluate.py content=photos/ style=starry.jpg methods=[identity,gatys,checkpoints/starry.pt]

Writes report.json, report.md, contact_sheet.png (and sweep_grid.png for a multirun folder)
and the stylized images to output=. See configs/evaluate.yaml and hrstyle/evaluation/report.py.
"""

import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from hrstyle.cli import prepare_argv, run_or_exit
from hrstyle.errors import UserError
from hrstyle.evaluation.methods import ColorOptions, GatysOptions, GuidedOptions, MethodOptions, PaperOptions
from hrstyle.evaluation.report import EvaluationSettings, evaluate
from hrstyle.image.io import find_images


def images(spec: object) -> list:
    """The images of a file, a folder, or a list of files and folders (``[a.jpg,b.png]``)."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    found = [path for item in specs for path in find_images(str(item))]
    if not found:
        raise UserError(f"no images found in {spec}")
    return found


def _section(cls: type, data: dict[str, Any], name: str) -> Any:
    """The dataclass ``cls`` from the config section ``name`` (every key it holds is passed)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown option {name}.{unknown[0]}: {name} takes {', '.join(sorted(known))}")
    return cls(**data)


def settings_from_config(cfg: DictConfig) -> EvaluationSettings:
    """``configs/evaluate.yaml`` (resolved) as the library's typed settings: every value the config
    holds is passed, so the yaml decides (the dataclass defaults equal it, for library callers)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)

    def path(value: Any) -> Path | None:
        return None if value is None else Path(str(value))

    options = MethodOptions(
        loss=data.get("loss"),
        seed=data["seed"],
        progress=bool(data["progress"]),
        gatys=_section(GatysOptions, data["gatys"], "gatys"),
        paper=_section(PaperOptions, data["paper"], "paper"),
        guided=_section(GuidedOptions, data["guided"], "guided"),
        color=_section(ColorOptions, data["color"], "color"),
    )
    return EvaluationSettings(
        output=Path(str(data["output"])), size=data["size"], style_size=data["style_size"], thumb=data["thumb"],
        device=str(data["device"]), limit=data["limit"], content_masks=path(data["content_masks"]),
        style_masks=path(data["style_masks"]), method_options=options,
    )


def run(cfg: DictConfig) -> int:
    if cfg.content is None:
        raise UserError("give the photos to evaluate on: content=<photo or folder>")
    contents = images(cfg.content)
    styles = images(cfg.styles) if cfg.styles is not None else []
    methods = cfg.methods if isinstance(cfg.methods, str) else [str(m) for m in cfg.methods or []]
    evaluate(contents, styles, methods, settings_from_config(cfg))
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
