"""Training end to end on tiny images: checkpoints, TensorBoard, resume, errors."""

import subprocess
import sys

import pytest
import torch
from helpers import FAST, ROOT, compose_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hrstyle.errors import UserError
from hrstyle.training.train import train


def fast_cfg(tmp_path, photo_dir, style_path, *extra):
    overrides = [*FAST, f"data.content={photo_dir}", f"style.image={style_path}", *extra]
    return compose_train(overrides, tmp_path / "run")


@pytest.fixture
def trained(tmp_path, photo_dir, style_path):
    # style=custom: the photo recipe (residual generator, starts at the identity), so the
    # validation edge-SSIM is well above 0 (the painterly starry recipe starts from noise).
    cfg = fast_cfg(tmp_path, photo_dir, style_path, "style=custom")
    return cfg, train(cfg)


def test_training_writes_checkpoint_and_tensorboard(trained):
    cfg, result = trained
    assert result["global_step"] == 4
    ckpt = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=False)
    # Everything inference needs, nothing of the loss network.
    model_cfg = {k: v for k, v in cfg.model.items() if k != "_target_"}
    assert ckpt["hrstyle"]["generator_config"] == model_cfg
    # The inference controls this style recommends, and the style's colour statistics they need.
    assert ckpt["hrstyle"]["guided_radius"] == cfg.style.guided_radius
    # style=custom: color_match/color_bands auto, resolved from the style image's layout
    from hrstyle.image.color import recommended_color_match
    from hrstyle.image.io import load_image

    assert cfg.style.color_match == cfg.style.color_bands == "auto"
    recommended = recommended_color_match(load_image(cfg.style.image, max_size=cfg.style.size)[None])
    assert (ckpt["hrstyle"]["color_match"], ckpt["hrstyle"]["color_bands"]) == recommended
    assert len(ckpt["hrstyle"]["style_color"]["bands"]["mean"]) == 8
    stats = ckpt["hrstyle"]["style_color"]
    assert len(stats["mean"]) == 3 and all(0 <= m <= 1 for m in stats["mean"]) and len(stats["cov"]) == 3
    assert all(k.startswith("generator.") for k in ckpt["state_dict"])
    events = EventAccumulator(result["log_dir"], size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/content_loss", "train/style_loss", "train/tv_loss", "val/loss"} <= scalars
    # The evaluation's quality metrics, next to the losses: a collapse shows in these.
    assert {"val/edge_ssim", "val/gram", "val/photorealism", "val/ssim"} <= scalars
    edge = [e.value for e in events.Scalars("val/edge_ssim")]
    assert all(0 < v <= 1 for v in edge)
    assert "preview/content_stylized" in events.Tags()["images"]
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) >= 3 and all(v == v and v > 0 for v in losses)
    preview = events.Images("preview/content_stylized")[-1]
    assert preview.width > 32 and preview.height > 32  # a content|stylized grid, not a single image


def test_resume_continues_the_step_count(trained, tmp_path, photo_dir, style_path):
    _, first = trained
    cfg = fast_cfg(tmp_path / "resumed", photo_dir, style_path, "style=custom", "trainer.max_steps=6",
                   f"ckpt_path={first['last_checkpoint']}")
    second = train(cfg)
    assert second["global_step"] == 6
    ckpt = torch.load(second["last_checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    # The scheduler continued too: StepLR state is in the checkpoint.
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 6


def test_training_lowers_the_loss(tmp_path, photo_dir, style_path):
    cfg = fast_cfg(tmp_path, photo_dir, style_path, "trainer.max_steps=30", "data.content=null",
                   "optimizer.lr=0.01", "preview_every=0", "trainer.val_check_interval=30")
    result = train(cfg)
    events = EventAccumulator(result["log_dir"], size_guidance={"scalars": 0})
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_missing_style_image_and_checkpoint_are_user_errors(tmp_path, photo_dir):
    cfg = fast_cfg(tmp_path, photo_dir, tmp_path / "nope.jpg", "style.url=null")
    with pytest.raises(UserError, match="style image not found"):
        train(cfg)
    cfg = fast_cfg(tmp_path, photo_dir, tmp_path / "nope.jpg", f"ckpt_path={tmp_path}/missing.ckpt")
    with pytest.raises(UserError, match="checkpoint"):
        train(cfg)


@pytest.mark.parametrize(("key", "value"), [("color_match", "1.5"), ("color_match", "often"), ("color_bands", "0"),
                                            ("color_bands", "many")])
def test_bad_colour_match_recommendations_are_user_errors(tmp_path, photo_dir, style_path, key, value):
    cfg = fast_cfg(tmp_path, photo_dir, style_path, "style=custom", f"style.{key}={value}")
    with pytest.raises(UserError, match=f"style.{key}"):
        train(cfg)


def run_script(*args):
    return subprocess.run([sys.executable, "scripts/train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing_style", "missing_content", "empty_content", "offline_style_download"])
def test_script_reports_bad_input_without_traceback(case, tmp_path, style_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {
        "missing_style": [f"style.image={tmp_path}/nope.jpg", "style.url=null"],
        "missing_content": [f"style.image={style_path}", f"data.content={tmp_path}/no_such_folder"],
        "empty_content": [f"style.image={style_path}", f"data.content={empty}"],
        "offline_style_download": [f"style.image={tmp_path}/styles/starry.jpg", "style.url=http://127.0.0.1:9/starry.jpg"],
    }[case]
    expected = {"missing_style": "style image not found", "missing_content": "content folder not found",
                "empty_content": "no images", "offline_style_download": "could not be downloaded"}[case]
    proc = run_script("loss.weights=random", f"hydra.run.dir={tmp_path}/out", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_script_end_to_end(tmp_path, photo_dir, style_path):
    proc = run_script(*FAST, f"data.content={photo_dir}", f"style.image={style_path}",
                      f"hydra.run.dir={tmp_path}/out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Checkpoint:" in proc.stdout and (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()
