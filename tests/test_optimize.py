"""The Gatys pixel-optimization baseline: hrstyle.optimization and scripts/optimize.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import (
    OFFLINE_VGG16,
    ROOT,
    SHARED_CONTENT,
    SHARED_STYLES,
    compose_config,
    image,
    load_script,
    needs_shared,
    random_photo,
)
from PIL import Image

from hrstyle.errors import UserError
from hrstyle.image.io import load_image
from hrstyle.losses import ContentStyleLoss
from hrstyle.optimization import OptimizationResult, optimize_image

KEYS = {"loss", "content_loss", "style_loss", "tv_loss"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny images: one thread is as fast, and much faster when the CPU is shared


@pytest.fixture(scope="module")
def loss() -> ContentStyleLoss:
    torch.manual_seed(0)
    fn = ContentStyleLoss(arch="vgg16", weights="random", tv_weight=0.1)
    fn.set_style(image(9, (48, 48)))
    return fn


@pytest.fixture(scope="module")
def content() -> torch.Tensor:
    return image(1)


@pytest.mark.parametrize("method", ["adam", "lbfgs"])
def test_a_few_steps_lower_the_loss(loss, content, method):
    result = optimize_image(content, loss, steps=6, method=method, log_every=2, progress=False,
                            lr=0.1 if method == "adam" else None)
    assert isinstance(result, OptimizationResult) and result.seconds > 0
    assert [step for step, _ in result.history] == [0, 2, 4, 6]
    assert all(set(v) == KEYS and all(isinstance(x, float) for x in v.values()) for _, v in result.history)
    assert result.history[-1][1]["loss"] < 0.9 * result.history[0][1]["loss"]
    img = result.image
    assert img.shape == content.shape and not img.requires_grad
    assert img.min() >= 0 and img.max() <= 1


def test_content_init_starts_at_the_content(loss, content):
    result = optimize_image(content, loss, steps=1, log_every=0, progress=False)
    assert [step for step, _ in result.history] == [0, 1]
    assert result.history[0][1]["content_loss"] < 1e-4
    # a step-0 image is the photo to within half an 8-bit level
    start = optimize_image(content, loss, steps=1, lr=1e-12, method="adam", progress=False).image
    assert (start - content).abs().max() <= 0.5 / 255 + 1e-6


def test_noise_init_is_seeded_and_optimizes(loss, content):
    runs = [optimize_image(content, loss, steps=steps, method="lbfgs", init="noise", seed=seed, log_every=0,
                           progress=False) for seed, steps in [(3, 4), (3, 1), (4, 1)]]
    first = [r.history[0][1]["content_loss"] for r in runs]
    assert first[0] > 0.1 and first[0] == first[1] != first[2]
    assert runs[0].history[-1][1]["loss"] < 0.9 * runs[0].history[0][1]["loss"]
    for r in runs:
        assert r.image.shape == content.shape and 0 <= r.image.min() and r.image.max() <= 1


def test_callback_and_progress_line(loss, content, capsys):
    seen = []
    optimize_image(content, loss, steps=3, method="adam", log_every=2, callback=lambda s, v: seen.append((s, v)))
    assert [s for s, _ in seen] == [0, 2, 3] and set(seen[0][1]) == KEYS
    err = capsys.readouterr().err
    assert "step 0/3" in err and "step 3/3" in err and "loss" in err


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "sgd"}, "unknown optimization method"),
    ({"init": "zeros"}, "unknown init"),
    ({"steps": 0}, "steps must be"),
    ({"lr": -1.0}, "lr must be"),
])
def test_bad_arguments_are_user_errors(loss, content, kwargs, message):
    with pytest.raises(UserError, match=message):
        optimize_image(content, loss, progress=False, **kwargs)


def test_bad_shape_and_non_finite_loss_are_user_errors(loss, content):
    with pytest.raises(UserError, match="content image"):
        optimize_image(content[0], loss, progress=False)
    broken = content.clone()
    broken[..., 0, 0] = float("nan")
    with pytest.raises(UserError, match="loss became nan at step 0"):
        optimize_image(broken, loss, steps=2, progress=False)


@needs_shared
def test_real_offline_vgg16_lbfgs(tmp_path):
    fn = ContentStyleLoss(arch="vgg16", weights=str(OFFLINE_VGG16), style_weight=10.0)
    fn.set_style(load_image(SHARED_STYLES / "fps_style1.png", 64).unsqueeze(0))
    photo = load_image(SHARED_CONTENT / "fps_in81.png", 64).unsqueeze(0)
    result = optimize_image(photo, fn, steps=10, method="lbfgs", log_every=5, progress=False)
    start, end = result.history[0][1], result.history[-1][1]
    assert start["content_loss"] < 1e-4
    assert end["style_loss"] < 0.5 * start["style_loss"] and end["loss"] < 0.5 * start["loss"]
    assert result.image.shape == photo.shape


# --- scripts/optimize.py -------------------------------------------------------------------

def compose_optimize(overrides: list[str]):
    return compose_config("optimize", overrides)


def test_config_composes_with_the_training_loss_group():
    cfg = compose_optimize(["loss=vgg16", "loss.weights=random", "content=c.png", "style_image=s.png"])
    assert cfg.loss._target_ == "hrstyle.losses.ContentStyleLoss" and cfg.loss.arch == "vgg16"
    assert (cfg.size, cfg.style_size, cfg.steps, cfg.method, cfg.init, cfg.lr) == (512, 512, 300, "lbfgs", "content", None)
    script = load_script("optimize")
    assert script.style_alias(["style=a.jpg", "style_size=64", "content=style=x.jpg"]) == [
        "style_image=a.jpg", "style_size=64", "content=style=x.jpg"]


def test_script_run_errors(tmp_path):
    script = load_script("optimize")
    photo = random_photo(tmp_path / "c.png")
    with pytest.raises(UserError, match="give both images"):
        script.run(compose_optimize([f"content={photo}"]))
    with pytest.raises(UserError, match="style image not found"):
        script.run(compose_optimize([f"content={photo}", f"style_image={tmp_path}/nope.jpg"]))
    with pytest.raises(UserError, match="overwrite the input"):
        script.run(compose_optimize([f"content={photo}", f"style_image={photo}", f"output={photo}",
                                     "loss=vgg16", "loss.weights=random", "steps=1", "size=32", "style_size=32"]))


def test_script_end_to_end(tmp_path):
    content = random_photo(tmp_path / "photo.png", (48, 40), seed=1)
    style = random_photo(tmp_path / "art.png", (64, 64), seed=9)
    weights = str(OFFLINE_VGG16) if OFFLINE_VGG16.is_file() else "random"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "optimize.py"), f"content={content}", f"style={style}",
         "loss=vgg16", f"loss.weights={weights}", "steps=3", "log_every=1", "method=lbfgs", "size=32",
         "style_size=48", f"hydra.run.dir={tmp_path}/hydra"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "outputs" / "optimize" / "photo_art.png"
    assert f"Result: {out.relative_to(tmp_path)}" in proc.stdout and "Loss " in proc.stdout
    assert "step 3/3" in proc.stderr
    assert Image.open(out).size == (32, 27)
