"""Shared fixtures: small photos on disk, a tiny checkpoint, one thread; the rest is in ``helpers.py``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers import random_photo  # noqa: E402 - fixtures below use it


@pytest.fixture(autouse=True)
def _fresh_process_budget():
    """Each test starts without a process memory budget (a memory_gb of one test must not plan the next's)."""
    yield
    from hrstyle.inference.onnx import memory

    memory._process_budget = None


def pytest_configure(config: pytest.Config) -> None:
    warnings.filterwarnings("ignore", message="VGG loss network with random weights")


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


@pytest.fixture
def one_thread():
    """Tiny images: one thread is as fast, and much faster when the CPU is shared (``pytestmark``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
