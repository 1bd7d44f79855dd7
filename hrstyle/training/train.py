"""Fit one style from a composed Hydra config (see configs/train.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from hrstyle.errors import UserError
from hrstyle.training.module import StyleTransferModule


def fetch_style_image(image: str, url: str | None) -> Path:
    """Path of the style image, downloading it from ``url`` first if it is missing."""
    path = Path(image).expanduser()
    if path.is_file():
        return path
    if not url:
        raise UserError(f"style image not found: {path} (set style.image=/path/to/style.jpg)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.download")
    print(f"Downloading the style image {url} -> {path}")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=False)
        tmp.replace(path)
    except Exception as exc:  # noqa: BLE001 - offline, 404, ...: same advice
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"style image {path} is missing and could not be downloaded from {url} ({exc}). "
            "Pass a local file: style.image=/path/to/style.jpg"
        ) from exc
    return path


def build(cfg: DictConfig) -> tuple[StyleTransferModule, pl.LightningDataModule, pl.Trainer]:
    """Instantiate module, datamodule and trainer from a composed config."""
    style_image = fetch_style_image(cfg.style.image, cfg.style.get("url"))
    datamodule = instantiate(cfg.data)
    module = StyleTransferModule(
        generator=instantiate(cfg.model),
        loss=instantiate(cfg.loss, _convert_="all"),
        style_image=str(style_image),
        style_size=cfg.style.size,
        style_name=cfg.style.name,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        preview_every=cfg.preview_every,
        val_metrics=cfg.get("val_metrics", True),
        guided_radius=cfg.style.get("guided_radius", 0),
    )
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    return module, datamodule, trainer


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, then return where the results are and the final logged metrics."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise UserError(f"checkpoint to resume from not found: {ckpt_path}")
    module, datamodule, trainer = build(cfg)
    datamodule.setup("fit")  # fail fast (missing/empty content folder) before the trainer starts
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    callback = trainer.checkpoint_callback
    return {
        "last_checkpoint": getattr(callback, "last_model_path", None) or None,
        "log_dir": trainer.logger.log_dir if trainer.logger else None,
        "global_step": trainer.global_step,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }
