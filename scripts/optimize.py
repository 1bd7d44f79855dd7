"""Gatys baseline:  python scripts/optimize.py content=photo.jpg style=style.jpg [key=value ...]

Optimizes the pixels of one image with the training loss (the `loss` config group); see
configs/optimize.yaml. The result goes to outputs/optimize/<content>_<style>.png by default.
"""

import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from hrstyle.cli import prepare_argv, run_or_exit
from hrstyle.errors import UserError
from hrstyle.image.io import load_image, save_image_atomic, tensor_to_pil
from hrstyle.inference.stylizer import pick_device
from hrstyle.optimization import optimize_image


def run(cfg: DictConfig) -> None:
    if cfg.content is None or cfg.style_image is None:
        raise UserError("give both images: python scripts/optimize.py content=photo.jpg style=style.jpg")
    content_path, style_path = Path(cfg.content), Path(cfg.style_image)
    for what, path in [("content", content_path), ("style", style_path)]:
        if not path.is_file():
            raise UserError(f"{what} image not found: {path}")
    output = Path(cfg.output) if cfg.output else Path("outputs/optimize") / f"{content_path.stem}_{style_path.stem}.png"

    device = pick_device(cfg.device)
    content = load_image(content_path, cfg.size).unsqueeze(0)
    style = load_image(style_path, cfg.style_size).unsqueeze(0)
    loss = instantiate(cfg.loss, _convert_="all").to(device)
    loss.set_style(style.to(device))
    h, w = content.shape[-2:]
    print(f"Optimizing {content_path.name} ({w}x{h}) towards {style_path.name}: {cfg.steps} {cfg.method} steps, "
          f"init={cfg.init}, {cfg.loss.arch} loss network on {device}.", flush=True)
    result = optimize_image(content, loss, steps=cfg.steps, method=cfg.method, lr=cfg.lr, init=cfg.init,
                            log_every=cfg.log_every, seed=cfg.seed)
    save_image_atomic(tensor_to_pil(result.image[0]), output, protect=[content_path, style_path])
    first, last = result.history[0][1], result.history[-1][1]
    print(f"Done in {result.seconds:.1f} s ({result.seconds / cfg.steps:.3f} s/step). Loss {first['loss']:.4g} -> "
          f"{last['loss']:.4g} (content {last['content_loss']:.4g}, style {last['style_loss']:.4g}, "
          f"tv {last['tv_loss']:.4g}).")
    print(f"Result: {output}")


def style_alias(argv: list[str]) -> list[str]:
    """``style=x.jpg`` → ``style_image=x.jpg``: `style` is a config group of training (configs/style/),
    so Hydra would take ``style=x.jpg`` for a choice in that group."""
    return [f"style_image={a[len('style='):]}" if a.startswith("style=") else a for a in argv]


@hydra.main(config_path="../configs", config_name="optimize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_or_exit(lambda: run(cfg))


if __name__ == "__main__":
    prepare_argv()
    sys.argv[1:] = style_alias(sys.argv[1:])
    main()
