"""What the tests share that is not a fixture: paths, small images, config composition, subprocess runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OFFLINE_VGG16 = SHARED / "weights" / "vgg16_features_offline.pth"
SHARED_CONTENT = SHARED / "data" / "content"
SHARED_STYLES = SHARED / "data" / "styles"

needs_shared = pytest.mark.skipif(not OFFLINE_VGG16.is_file(), reason="../shared (offline VGG16, photos) not present")
CONFIGS = ROOT / "configs"

#: Overrides that make a training run take seconds on the CPU (tiny crops, random VGG16, a few steps).
FAST = [
    "trainer=cpu", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "data.image_size=32", "data.batch_size=2", "data.val_count=2", "data.val_size=32", "data.num_workers=0",
    "loss.arch=vgg16", "loss.weights=random", "loss.content_layer=conv2_2",
    "loss.style_layers=[conv1_1,conv2_1]", "loss.style_layer_weights=[1.0,0.5]", "style.size=48",
    "preview_every=2", "callbacks.model_checkpoint.every_n_train_steps=2",
]


def random_photo(path: Path, size: tuple[int, int] = (48, 40), mode: str = "RGB", seed: int = 0) -> Path:
    """Write a smooth random image (gradients + noise) of PIL ``mode`` to ``path``."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 200 + rng.uniform(0, 55, (h, w, 3))
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def image(seed: int, size: tuple[int, int] = (32, 40)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    ramp = torch.linspace(0, 1, w).expand(3, h, w)
    return (0.6 * ramp + 0.4 * torch.rand(3, h, w, generator=gen)).unsqueeze(0)


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (its ``run(cfg)`` is tested in process)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_config(name: str, overrides: list[str]):
    """The script config ``configs/<name>.yaml`` composed with command-line style overrides."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(name, overrides=overrides)


def compose_train(overrides: list[str], output_dir: Path | None = None):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir or "outputs/test")
        return cfg


def run_script(script: str, *args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)
