"""Load a trained generator from a Lightning checkpoint or a compact exported one."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hrstyle.errors import UserError
from hrstyle.paths import user_path, write_atomic

#: Key under which checkpoints store what inference needs to rebuild the generator. Defined here,
#: not in the training module, so that inference never imports Lightning.
CHECKPOINT_KEY = "hrstyle"

#: Long side at which a style image's colour statistics are taken (training's default style size).
STYLE_COLOR_SIZE = 512

#: The repository root (checkpoints/ lives there in a source checkout / editable install).
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` as given, or relative to the project root (for the shipped checkpoints/)."""
    candidate = user_path(path)
    if candidate.is_file():
        return candidate
    if not candidate.is_absolute() and (PROJECT_ROOT / candidate).is_file():
        return PROJECT_ROOT / candidate
    raise UserError(f"checkpoint not found: {path} (train one with scripts/train.py, or use checkpoints/starry.pt)")


def load_generator(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the generator stored in a checkpoint; returns ``(model in eval mode, metadata)``.

    Works with Lightning's ``.ckpt`` files written by ``scripts/train.py`` and with the
    compact files of ``save_generator`` (same layout, generator weights only).
    """
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path} is not an hrstyle checkpoint (no '{CHECKPOINT_KEY}' entry)")
    meta = dict(ckpt[CHECKPOINT_KEY])
    module_name, _, class_name = meta["generator_class"].rpartition(".")
    if not module_name.startswith("hrstyle."):
        raise UserError(f"{path}: refusing to build generator class {meta['generator_class']!r}")
    state = {k.removeprefix("generator."): v for k, v in ckpt["state_dict"].items() if k.startswith("generator.")}
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        model = cls(**meta["generator_config"])
        model.load_state_dict(state)
    except (ImportError, AttributeError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path}: its weights do not fit its generator {meta['generator_class']}"
            f"({meta.get('generator_config')}) — a damaged or hand-edited checkpoint? ({first})"
        ) from exc
    meta["global_step"] = ckpt.get("global_step")
    return model.eval(), meta


def style_color_entry(style: torch.Tensor) -> dict[str, Any]:
    """The checkpoint entry ``style_color`` for a (1, 3, H, W) style image in [0, 1]: its RGB mean and
    covariance (the global colour match), the same per horizontal band (the graduated match), and per
    equal-height strip with the height of its horizon (the graduated match with the horizons aligned)."""
    from hrstyle.image.color import BAND_WIDTH, BANDS, banded_color_statistics, color_statistics, style_strips

    mean, cov = color_statistics(style)
    band_mean, band_cov = banded_color_statistics(style, BANDS, BAND_WIDTH)
    (strip_mean, strip_cov), horizon = style_strips(style)
    return {"mean": mean.tolist(), "cov": cov.tolist(),
            "bands": {"width": BAND_WIDTH, "mean": band_mean.tolist(), "cov": band_cov.tolist()},
            "strips": {"horizon": horizon, "mean": strip_mean.tolist(), "cov": strip_cov.tolist()}}


def style_color_statistics(meta: dict[str, Any], checkpoint: str | os.PathLike = "",
                           bands: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The style image's colour statistics for ``color_match``: with ``bands`` 1 its RGB mean (3,) and
    covariance (3, 3), else per horizontal band (K, 3) and (K, 3, 3) (float64).

    Stored in checkpoints as ``style_color`` (the bands of ``hrstyle.image.color.BANDS``; another band
    count is re-made from its strips); for checkpoints written before that, taken from their style image
    when the file still exists. Raises ``UserError`` otherwise.
    """
    from hrstyle.image.color import BAND_WIDTH

    stats = meta.get("style_color")
    stored = (stats or {}).get("bands")
    if stats and bands == 1:
        return (torch.tensor(stats["mean"], dtype=torch.float64), torch.tensor(stats["cov"], dtype=torch.float64))
    if stored and len(stored["mean"]) == bands and stored.get("width") == BAND_WIDTH:
        return (torch.tensor(stored["mean"], dtype=torch.float64), torch.tensor(stored["cov"], dtype=torch.float64))
    if bands > 1 and (stats or {}).get("strips"):  # another band count: re-made from the stored strips
        from hrstyle.image.color import bands_from_strips

        return bands_from_strips(style_strip_statistics(meta)[0], bands)
    image = meta.get("style_image")
    if image and user_path(image).is_file():
        from hrstyle.image.color import banded_color_statistics, color_statistics
        from hrstyle.image.io import load_image

        style = load_image(user_path(image), max_size=STYLE_COLOR_SIZE)
        return color_statistics(style) if bands == 1 else banded_color_statistics(style, bands)
    what = "colour statistics" if bands == 1 else f"colour statistics in {bands} bands"
    raise UserError(
        f"{checkpoint or 'this checkpoint'} stores no {what} of its style and its style image "
        f"({image}) is not here: use color_match=0{'' if bands == 1 else ' or color_bands=1'}, "
        "or retrain it with this version"
    )


def style_strip_statistics(meta: dict[str, Any]) -> tuple[tuple[torch.Tensor, torch.Tensor], float] | None:
    """The style's strip colour statistics, means (S, 3) and covariances (S, 3, 3) (float64), and the height
    of its horizon (a fraction), for the graduated match with the horizons aligned: stored in checkpoints as
    ``style_color["strips"]``; for checkpoints written before that, taken from their style image when the
    file still exists; else None (the graduated match then pairs rows by height alone)."""
    from hrstyle.image.color import style_strips

    stored = (meta.get("style_color") or {}).get("strips")
    if stored:
        strips = (torch.tensor(stored["mean"], dtype=torch.float64), torch.tensor(stored["cov"], dtype=torch.float64))
        return strips, float(stored["horizon"])
    image = meta.get("style_image")
    if image and user_path(image).is_file():
        from hrstyle.image.io import load_image

        return style_strips(load_image(user_path(image), max_size=STYLE_COLOR_SIZE))
    return None


def save_generator(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write a compact checkpoint (generator weights + metadata, no optimizer state)."""
    payload = {
        CHECKPOINT_KEY: {k: v for k, v in meta.items() if k != "global_step"},
        "state_dict": {f"generator.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "global_step": meta.get("global_step"),
    }
    return write_atomic(path, lambda f: torch.save(payload, f), "checkpoint", fsync=True)
