"""Shared fixtures: small images on disk, paths to ../shared when present."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OFFLINE_VGG16 = SHARED / "weights" / "vgg16_features_offline.pth"
SHARED_CONTENT = SHARED / "data" / "content"
SHARED_STYLES = SHARED / "data" / "styles"

needs_shared = pytest.mark.skipif(not OFFLINE_VGG16.is_file(), reason="../shared (offline VGG16, photos) not present")


@pytest.fixture(autouse=True)
def _fresh_process_budget():
    """Each test starts without a process memory budget (a memory_gb of one test must not plan the next's)."""
    yield
    from hrstyle.inference import memory

    memory._process_budget = None


def pytest_configure(config: pytest.Config) -> None:
    warnings.filterwarnings("ignore", message="VGG loss network with random weights")


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


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A nested folder of small photos in several formats, plus a non-image file."""
    root = tmp_path / "photos"
    random_photo(root / "a.jpg", (64, 48), seed=1)
    random_photo(root / "b.png", (40, 72), seed=2)
    random_photo(root / "nested" / "c.webp", (56, 56), seed=3)
    random_photo(root / "nested" / "deeper" / "d.bmp", (80, 60), seed=4)
    random_photo(root / "e.tiff", (50, 50), seed=5)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight quarter-width HRNet saved as a compact ``.pt`` (seeded: the same every run)."""
    import torch

    from hrstyle.inference import save_generator
    from hrstyle.models import HRNet

    torch.manual_seed(0)
    model = HRNet(width=0.25)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_generator(path, model, {"generator_class": "hrstyle.models.hrnet.HRNet",
                                        "generator_config": model.config, "style_name": "tiny"})


@pytest.fixture
def style_path(tmp_path: Path) -> Path:
    return random_photo(tmp_path / "style.png", (64, 64), seed=9)


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
