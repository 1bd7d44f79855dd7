"""Explain the loss network:  python scripts/explore.py image=photo.jpg [key=value ...]

For one photo and the configured loss network (the `loss` group, as in training): prints every
layer's index, output shape, receptive field and use by the loss, then writes labelled figures
to outputs/explore/<photo>/ (see configs/explore.yaml):
  content_reconstructions.png  noise optimized to match one layer's activations, layer by layer
  style_reconstructions.png    noise optimized to match the Gram matrices of growing layer sets
  feature_maps.png             the strongest channels of chosen layers
"""

import sys
import time
from collections.abc import Mapping
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from hrstyle.cli import prepare_argv, run_or_exit
from hrstyle.errors import UserError
from hrstyle.explore import (
    check_layers,
    feature_map_tiles,
    format_table,
    full_network,
    growing_sets,
    labelled_grid,
    layer_table,
    loss_usage,
    photo_tile,
    reconstruct,
    reconstruction_tile,
    steps_for,
    write_tensorboard,
)
from hrstyle.image.io import load_image, save_image_atomic
from hrstyle.inference.stylizer import pick_device

FIGURES = ("content", "style", "features")


def configured_style_layers(loss: DictConfig) -> dict[str, float]:
    """``{layer: weight}`` of the loss config's style layers (a list plus weights, or a mapping)."""
    layers = OmegaConf.to_container(loss.get("style_layers"), resolve=True) if loss.get("style_layers") else []
    if isinstance(layers, Mapping):
        return {str(k): float(v) for k, v in layers.items()}
    layers = [layers] if isinstance(layers, str) else list(layers)
    weights = loss.get("style_layer_weights")
    weights = [1.0] * len(layers) if weights is None else [float(w) for w in weights]
    if len(weights) != len(layers):
        raise UserError(f"loss.style_layers has {len(layers)} entries but loss.style_layer_weights has {len(weights)}")
    return dict(zip(layers, weights))


def run(cfg: DictConfig) -> dict[str, Path]:
    """Make the table and figures; returns ``{figure name: PNG path}``."""
    if cfg.image is None:
        raise UserError("give a photo: python scripts/explore.py image=photo.jpg")
    path = Path(cfg.image)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    wanted = list(cfg.figures or [])
    unknown = [f for f in wanted if f not in FIGURES]
    if unknown:
        raise UserError(f"unknown figure {', '.join(map(str, unknown))}: choose from {', '.join(FIGURES)}")
    if cfg.top_k < 1:
        raise UserError(f"top_k must be >= 1, got {cfg.top_k}")
    output = Path(cfg.output) if cfg.output else Path("outputs/explore") / path.stem

    start = time.perf_counter()
    device = pick_device(cfg.device)
    image = load_image(path, cfg.size).unsqueeze(0).to(device)
    h, w = image.shape[-2:]
    arch = cfg.loss.arch
    network = full_network(arch, cfg.loss.weights).to(device)
    content_layers = check_layers(network, cfg.content_layers, "content layer")
    style_layers = check_layers(network, cfg.style_layers, "style layer")
    feature_layers = check_layers(network, cfg.feature_layers, "feature layer")
    deep_from = check_layers(network, [cfg.deep_from], "deep_from layer")[0] if cfg.deep_from else None

    style_config = configured_style_layers(cfg.loss)
    usage = loss_usage(cfg.loss.content_layer, style_config)
    table = layer_table(network, image, usage)
    header = (f"{arch} ({cfg.loss.weights}) on {path.name} at {w}x{h} px: {len(table)} layers; the loss config "
              f"uses {cfg.loss.content_layer} for content and {', '.join(style_config)} for style.")
    text = format_table(table)
    print(header, text, sep="\n", flush=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / "layers.txt").write_text(f"{header}\n{text}\n", encoding="utf-8")

    figures, written = {}, {}

    def save(name: str, figure) -> None:
        figures[name] = figure
        if cfg.palette:  # an adaptive 256-colour palette: about a third of the size
            figure = figure.quantize(256, method=Image.Quantize.FASTOCTREE)
        written[name] = save_image_atomic(figure, output / f"{name}.png", protect=[path], optimize=True)
        print(f"Wrote {written[name]}", flush=True)

    def reconstructions(kind: str, sets: list[list[str]]) -> list:
        recs = []
        for i, layers in enumerate(sets, 1):
            steps = steps_for(network, layers, cfg.steps, cfg.deep_steps, deep_from)
            print(f"[{kind} {i}/{len(sets)}] {' + '.join(layers)}: {steps} {cfg.method} steps from noise",
                  file=sys.stderr, flush=True)
            key = {"content_layers" if kind == "content" else "style_layers": layers}
            rec = reconstruct(image, network, steps=steps, method=cfg.method, lr=cfg.lr, seed=cfg.seed,
                              noise=cfg.content_noise if kind == "content" else cfg.style_noise,
                              log_every=cfg.log_every, progress=True, **key)
            print(f"{kind} {layers[-1] if kind == 'content' else ' + '.join(layers)}: loss {rec.first_loss:.3g} -> "
                  f"{rec.final_loss:.3g} in {rec.result.seconds:.1f} s", flush=True)
            recs.append(rec)
        return recs

    how = f"{cfg.method}, {_steps_text(cfg, deep_from)}"
    if "content" in wanted:
        recs = reconstructions("content", [[layer] for layer in content_layers])
        save("content_reconstructions", labelled_grid(
            [photo_tile(image.cpu()), *(reconstruction_tile(r, usage) for r in recs)],
            title=f"Content reconstructions, {arch}: noise optimized until its activations on one layer match the "
                  f"photo's ({how}, start: gray + noise {cfg.content_noise:g}). Loss: normalized MSE, 1 = as far "
                  f"as all zeros. [brackets]: how the loss config uses the layer."))
    if "style" in wanted:
        recs = reconstructions("style", growing_sets(style_layers))
        save("style_reconstructions", labelled_grid(
            [photo_tile(image.cpu()), *(reconstruction_tile(r, usage) for r in recs)],
            title=f"Style reconstructions, {arch}: noise optimized until its Gram matrices on a growing set of "
                  f"layers match the photo's ({how}, start: gray + noise {cfg.style_noise:g}). Loss: mean "
                  f"normalized MSE of the Grams."))
    if "features" in wanted:
        tiles = feature_map_tiles(network, image, feature_layers, cfg.top_k, table, width=min(w, 128))
        save("feature_maps", labelled_grid(
            tiles, columns=cfg.top_k + 1,
            title=f"Feature maps, {arch}: the {cfg.top_k} channels with the largest mean activation (after ReLU) "
                  f"of each layer (C x W x H), each scaled to [0, 1], one block per unit. Red square: what one unit "
                  f"sees (its receptive field, RF)."))
    if cfg.tensorboard:
        log = write_tensorboard(output / "tensorboard", figures, header + "\n" + text)
        print(f"TensorBoard log: {log}")
    print(f"Done in {time.perf_counter() - start:.0f} s. Table: {output / 'layers.txt'}")
    return written


def _steps_text(cfg: DictConfig, deep_from: str | None) -> str:
    if cfg.deep_steps is None or deep_from is None or cfg.deep_steps == cfg.steps:
        return f"{cfg.steps} steps"
    return f"{cfg.steps} steps, {cfg.deep_steps} from {deep_from} on"


@hydra.main(config_path="../configs", config_name="explore", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_or_exit(lambda: run(cfg))


if __name__ == "__main__":
    prepare_argv()
    main()
