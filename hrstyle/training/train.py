"""Fit one style from a composed Hydra config (see configs/train.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities.exceptions import SIGTERMException

from hrstyle.checkpoint import CHECKPOINT_KEY
from hrstyle.errors import UserError
from hrstyle.image.io import DEFAULT_MAX_PIXELS
from hrstyle.paths import user_path
from hrstyle.training.checkpoint_io import AtomicCheckpointIO
from hrstyle.training.module import StyleTransferModule
from hrstyle.training.preemption import RESUME_LATEST, Interrupted, SaveOnPreemption, find_latest


def check_devices(trainer_cfg: DictConfig) -> None:
    """A GPU asked for on a machine without one: say so in one line (Lightning's error is long)."""
    if str(trainer_cfg.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            "the trainer asks for a GPU (trainer.accelerator=gpu) but torch sees none "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
            "Train on the CPU with trainer=cpu (or experiment=cpu_quick), or install a CUDA build of torch."
        )


def fetch_style_image(image: str, url: str | None) -> Path:
    """Path of the style image, downloading it from ``url`` first if it is missing."""
    path = user_path(image)
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


def check_resume_compatible(ckpt_path: str, model_cfg: DictConfig) -> None:
    """Resuming with other generator settings would die deep in Lightning: say which differ."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read checkpoint {ckpt_path}: {exc}") from exc
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "optimizer_states" not in ckpt:
        raise UserError(f"{ckpt_path} is not a training checkpoint of scripts/train.py (a .ckpt with optimizer state)")
    saved = dict(meta.get("generator_config", {}))
    wanted = {k: v for k, v in OmegaConf.to_container(model_cfg, resolve=True).items() if k != "_target_"}
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differ:
        raise UserError(
            f"{ckpt_path} was trained with other generator settings: "
            + ", ".join(f"model.{k}={saved.get(k)!r} (this run: {wanted.get(k)!r})" for k in differ)
            + ". Resume with the checkpoint's settings (or the same style=/experiment= as its run)."
        )


def build(cfg: DictConfig) -> tuple[StyleTransferModule, pl.LightningDataModule, pl.Trainer]:
    """Instantiate module, datamodule and trainer from a composed config."""
    style_image = fetch_style_image(cfg.style.image, cfg.style.get("url"))
    max_pixels = cfg.get("max_pixels", DEFAULT_MAX_PIXELS)
    datamodule = instantiate(cfg.data, seed=cfg.get("seed"), max_pixels=max_pixels)
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
        color_match=cfg.style.get("color_match", 0.0),
        color_bands=cfg.style.get("color_bands", 1),
        max_pixels=max_pixels,
        regional=OmegaConf.to_container(cfg.regional, resolve=True) if cfg.get("regional") else None,
    )
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not logger:  # nothing to log the learning rate to: train without the monitor
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(SaveOnPreemption())
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])
    return module, datamodule, trainer


def resolve_resume(ckpt_path: str | None, run_dir: str | None) -> str | None:
    """``ckpt_path`` as given, or for ``last``/``auto`` the run folder's ``last.ckpt`` (``find_latest``),
    None when there is none yet (a new run)."""
    if not ckpt_path:
        return None
    if str(ckpt_path) in RESUME_LATEST:
        found = find_latest(run_dir) if run_dir else None
        if found is None:
            print(f"ckpt_path={ckpt_path}: no checkpoints/last.ckpt in {run_dir} yet: starting a new run.")
            return None
        print(f"Resuming from {found}")
        return str(found)
    if not user_path(ckpt_path).is_file():
        raise UserError(f"checkpoint to resume from not found: {ckpt_path}")
    return str(user_path(ckpt_path))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, then return where the results are and the final logged metrics.

    Raises ``Interrupted`` (after saving ``last.ckpt``) when SIGTERM or SIGUSR1 stopped the run.
    """
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    check_devices(cfg.trainer)
    ckpt_path = resolve_resume(cfg.get("ckpt_path"), OmegaConf.select(cfg, "paths.output_dir", default=None))
    if ckpt_path:
        check_resume_compatible(ckpt_path, cfg.model)
    module, datamodule, trainer = build(cfg)
    datamodule.setup("fit")  # fail fast (missing/empty content folder) before the trainer starts
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        saver = next((c for c in trainer.callbacks if isinstance(c, SaveOnPreemption)), None)
        raise Interrupted(trainer.global_step, saver.saved if saver else None) from None
    callback = trainer.checkpoint_callback
    return {
        "last_checkpoint": getattr(callback, "last_model_path", None) or None,
        "log_dir": trainer.logger.log_dir if trainer.logger else None,
        "global_step": trainer.global_step,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }
