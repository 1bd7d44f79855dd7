"""Robustness: bad inputs give one clear line (or a warning and a skip), paths work as
people type them, training survives a SIGKILL and a NaN, and a resumed run is a true
continuation. The README table "Bad input: what you see" is covered row by row here."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST, ROOT, compose_train, random_photo, run_script
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image

from hrstyle.cli import hydra_argv
from hrstyle.data.datamodule import ContentDataModule, RandomCrops
from hrstyle.errors import UserError
from hrstyle.image.io import load_image, open_rgb, save_image_atomic
from hrstyle.inference import Stylizer, plan_many, stylize_files
from hrstyle.inference.files import Job
from hrstyle.losses import ContentStyleLoss
from hrstyle.training.preemption import EXIT_INTERRUPTED, resume_command
from hrstyle.training.train import train

# --------------------------------------------------------------------------- bad image files


def _jpeg_bytes(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _write(path: Path, case: str) -> Path:
    """Write the bad (or odd) input ``case`` at ``path``; returns the path to give the tool."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if case == "missing":
        return path
    if case == "not_an_image":
        path.write_text("this is a text file with a .jpg name")
    elif case == "truncated_jpeg":
        path.write_bytes(_jpeg_bytes((64, 48))[:400])
    elif case == "zero_bytes":
        path.write_bytes(b"")
    elif case == "bomb":  # 20000x20000 1-bit PNG: ~48 KB on disk, 400 MP once decoded
        Image.new("1", (20000, 20000)).save(path)
    elif case == "one_pixel":
        Image.new("RGB", (1, 1), (10, 200, 30)).save(path)
    elif case in ("grayscale", "rgba", "palette", "cmyk"):
        mode = {"grayscale": "L", "rgba": "RGBA", "palette": "P", "cmyk": "CMYK"}[case]
        random_photo(path, (40, 30), mode=mode)
    elif case == "16_bit":
        arr = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
        Image.fromarray(arr).save(path)  # uint16 → mode I;16
    elif case == "exif_rotated":
        img = Image.new("RGB", (40, 20), (255, 0, 0))
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° on display
        img.save(path, exif=exif)
    elif case in ("animated_gif", "animated_webp"):
        frames = [Image.new("RGB", (30, 20), c) for c in [(250, 0, 0), (0, 250, 0), (0, 0, 250)]]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    elif case == "spaces_and_accents":
        random_photo(path, (40, 30))
    else:  # pragma: no cover
        raise ValueError(case)
    return path


#: case → (file name, None if it must load, else the one-line error it must give)
BAD_INPUTS = {
    "missing": ("missing.jpg", "not found"),
    "not_an_image": ("text.jpg", "cannot read image"),
    "truncated_jpeg": ("truncated.jpg", "cannot read image"),
    "zero_bytes": ("empty.png", "the file is empty"),
    "bomb": ("bomb.png", "max_pixels"),
    "one_pixel": ("dot.png", None),
    "grayscale": ("gray.png", None),
    "rgba": ("rgba.png", None),
    "palette": ("palette.png", None),
    "cmyk": ("cmyk.jpg", None),
    "16_bit": ("deep.png", None),
    "exif_rotated": ("rotated.jpg", None),
    "animated_gif": ("anim.gif", None),
    "animated_webp": ("anim.webp", None),
    "spaces_and_accents": ("My Photo ü é.png", None),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_image_loads_or_gives_one_line(case, tmp_path):
    name, error = BAD_INPUTS[case]
    path = _write(tmp_path / name, case)
    if error is None:
        img = open_rgb(path)
        assert img.mode == "RGB" and min(img.size) >= 1
        if case == "exif_rotated":
            assert img.size == (20, 40)  # the EXIF rotation was applied
        if case.startswith("animated"):
            assert img.getpixel((0, 0))[0] > 200  # the first frame
    else:
        with pytest.raises(UserError, match=error) as info:
            open_rgb(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_inference_skips_bad_files_and_names_them(case, tmp_path, tiny_checkpoint):
    name, error = BAD_INPUTS[case]
    good = random_photo(tmp_path / "in" / "good.png", (40, 30))
    bad = _write(tmp_path / "in" / name, case)
    stylizer = Stylizer(tiny_checkpoint, device="cpu", tile_size=0)
    lines: list[str] = []
    jobs = [Job(bad, tmp_path / "out" / "bad.png"), Job(good, tmp_path / "out" / "good.png")]
    summary = stylize_files(stylizer, jobs, log=lines.append)
    assert (tmp_path / "out" / "good.png").is_file()  # one bad file never stops the others
    if error is None:
        assert summary.done == 2 and not summary.failed
        out = Image.open(tmp_path / "out" / "bad.png")
        assert out.size == open_rgb(bad).size
    else:
        assert summary.done == 1 and len(summary.failed) == 1
        assert any("skipped" in line and error in line and str(bad) in line for line in lines), lines


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_training_skips_bad_photos_with_a_warning(case, tmp_path):
    name, error = BAD_INPUTS[case]
    bad = _write(tmp_path / "photos" / name, case)
    good = random_photo(tmp_path / "photos" / "good.png", (48, 40))
    crops = RandomCrops([bad, good], size=32, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [crops[d] for d in range(4)]
    assert all(x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 for x in items)
    messages = [str(w.message) for w in caught]
    if error is not None:
        assert any("skipping unreadable training image" in m and str(bad) in m for m in messages), messages
    elif case == "one_pixel":  # smaller than the crop: said, and upscaled
        assert any("smaller than the 32 px crop" in m for m in messages), messages


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_style_image_loads_or_gives_one_line(case, tmp_path):
    name, error = BAD_INPUTS[case]
    path = _write(tmp_path / name, case)
    if error is None:
        assert load_image(path, max_size=64).shape[0] == 3
    else:
        with pytest.raises(UserError, match=error):
            load_image(path, max_size=64)


def test_a_folder_of_only_bad_photos_is_one_clear_error(tmp_path):
    for case in ("not_an_image", "zero_bytes"):
        _write(tmp_path / "photos" / BAD_INPUTS[case][0], case)
    data = ContentDataModule(str(tmp_path / "photos"), image_size=32, batch_size=1, val_count=1, num_workers=0)
    with pytest.warns(UserWarning), pytest.raises(UserError, match="none of the 2 training images"):
        data.setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        ContentDataModule(str(tmp_path / "empty"), num_workers=0).setup("fit")


def test_max_pixels_refuses_then_allows_when_raised(tmp_path):
    path = random_photo(tmp_path / "pano.png", (300, 100))
    with pytest.raises(UserError, match=r"max_pixels=20000 .*raise the limit"):
        open_rgb(path, max_pixels=20000)
    assert open_rgb(path, max_pixels=30000).size == (300, 100)
    assert open_rgb(path, max_pixels=None).size == (300, 100)
    # Far over Pillow's own limit (it refuses at twice its limit before we see the size).
    bomb = _write(tmp_path / "bomb.png", "bomb")
    with pytest.raises(UserError, match="claims 400.0 megapixels"):
        open_rgb(bomb)
    with pytest.raises(UserError, match="400.0 megapixels"):  # raising the limit a little is not enough
        open_rgb(bomb, max_pixels=300_000_000)


# --------------------------------------------------------------------------- paths as typed


def _parse(argv: list[str]) -> dict:
    return {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(argv)}


def test_paths_as_people_type_them_reach_hydra_intact():
    typed = ["/photos/name with spaces ü.png", "Bob's photo.jpg", "a=b.jpg"]
    assert _parse(hydra_argv([f"input={typed[0]}"])) == {"input": typed[0]}
    assert _parse(hydra_argv([f"style.image={typed[1]}"])) == {"style.image": typed[1]}
    assert _parse(hydra_argv(["x.jpg", typed[0], "quality=90"], "input")) == {"quality": 90, "input": ["x.jpg", typed[0]]}
    assert _parse(hydra_argv([r"output=C:\out dir\\"])) == {"output": "C:\\out dir\\\\"}
    # Hydra's own syntax is left alone: lists, sweeps, deletions, flags with values.
    assert hydra_argv(["methods=[a,b+guided]", "loss.style_weight=1,3", "~logger", "--cfg", "job"]) == [
        "methods=[a,b+guided]", "loss.style_weight=1,3", "~logger", "--cfg", "job"]
    assert hydra_argv(["logger=null"]) == ["~logger"]
    with pytest.raises(UserError, match="unexpected argument"):
        hydra_argv(["stray.jpg"])




def test_infer_takes_plain_paths_with_spaces_and_accents(tmp_path, tiny_checkpoint):
    photo = random_photo(tmp_path / "in" / "My Photo ü.jpg", (40, 30))
    folder = tmp_path / "in" / "Ferien Sommer é"
    random_photo(folder / "strand 1.png", (36, 28))
    out = tmp_path / "out"
    proc = run_script("infer.py", str(photo), str(folder), f"checkpoint={tiny_checkpoint}", f"output={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "My Photo ü.jpg").is_file() and (out / "strand 1.png").is_file()
    # input= with the shell's quotes already removed, as everyone types it.
    proc = run_script("infer.py", f"input={photo}", f"checkpoint={tiny_checkpoint}", f"output={tmp_path}/o2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "o2" / "My Photo ü.jpg").is_file()


#: File names a filesystem allows that Hydra's grammar, the shell or glob would read otherwise.
ODD_NAMES = ["photo[1].jpg", "{x}.png", "a=b,c.jpg", "-lead.png", "~tilde.jpg", "${HOME}.png", "(1) é.jpg"]


@pytest.mark.slow
def test_every_file_name_a_person_can_have(tmp_path, tiny_checkpoint):
    """Files and a folder with []{}=, and a leading - or ~, through input=, positional arguments and output=;
    an existing name is never read as a glob, and a glob that matches nothing says so."""
    src = tmp_path / "in [a] {b}=c,d"
    photos = [random_photo(src / name, (24, 20), seed=i) for i, name in enumerate(ODD_NAMES)]
    ckpt = tmp_path / "ckpt [1]" / "{tiny}=x.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(tiny_checkpoint.read_bytes())
    # Positional, from the photos' folder: names exactly as the shell passes them (a leading - or ~ too).
    out = tmp_path / "out [p]"
    proc = run_script("infer.py", *ODD_NAMES, f"checkpoint={ckpt}", f"output={out}", cwd=src)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(ODD_NAMES)
    # input= one file to one output file whose name is odd too.
    for photo in photos[:3]:
        dst = tmp_path / "single" / f"out {photo.name}"
        proc = run_script("infer.py", f"input={photo}", f"checkpoint={ckpt}", f"output={dst}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert dst.is_file()
    # The folder itself, through input=: mirrored, every name kept.
    proc = run_script("infer.py", f"input={src}", f"checkpoint={ckpt}", f"output={tmp_path}/mirror")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "mirror").iterdir()) == sorted(ODD_NAMES)
    # A real glob still works; one that matches nothing is one line.
    jobs, _, _ = plan_many([str(src / "*.png")], str(tmp_path / "g"))
    assert sorted(j.src.name for j in jobs) == sorted(n for n in ODD_NAMES if n.endswith(".png"))
    proc = run_script("infer.py", f"input={tmp_path}/none*.jpg", f"checkpoint={ckpt}", f"output={tmp_path}/n")
    assert proc.returncode == 2 and "no file matches the pattern" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_training_and_resume_take_odd_paths(tmp_path):
    """style.image=, data.content=, hydra.run.dir= and ckpt_path= with []{}=, in them."""
    photos = tmp_path / "photos [2024] {x}=y,z"
    for i, size in enumerate([(40, 36), (36, 44)]):
        random_photo(photos / f"p[{i}].png", size, seed=i)
    style = random_photo(tmp_path / "styles (1)" / "my [style]=a,b.png", (48, 48), seed=9)
    run = tmp_path / "run [1]"
    common = [*FAST, "style=custom", f"data.content={photos}", f"style.image={style}", "data.num_workers=0"]
    proc = run_script("train.py", *common, "trainer.max_steps=2", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = run / "checkpoints" / "last.ckpt"
    proc = run_script("train.py", *common, "trainer.max_steps=4", f"ckpt_path={last}", f"hydra.run.dir={run} b")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.load(Path(f"{run} b") / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_infer_bomb_is_one_line_and_the_limit_is_named(tmp_path, tiny_checkpoint):
    bomb = _write(tmp_path / "bomb.png", "bomb")
    proc = run_script("infer.py", str(bomb), f"checkpoint={tiny_checkpoint}", f"output={tmp_path}/out")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "max_pixels" in proc.stdout and "HYDRA_FULL_ERROR" not in proc.stderr


def test_folder_inference_resumes_and_overwrite_redoes(tmp_path, tiny_checkpoint):
    for i in range(3):
        random_photo(tmp_path / "in" / f"p{i}.png", (32, 24), seed=i)
    out = tmp_path / "out"
    jobs, _, existing = plan_many([str(tmp_path / "in")], str(out), overwrite=False)
    assert len(jobs) == 3 and not existing
    stylize_files(Stylizer(tiny_checkpoint, device="cpu", tile_size=0), jobs[:2], log=lambda _: None)  # "interrupted"
    jobs, _, existing = plan_many([str(tmp_path / "in")], str(out), overwrite=False)
    assert [j.src.name for j in jobs] == ["p2.png"] and len(existing) == 2
    jobs, _, existing = plan_many([str(tmp_path / "in")], str(out), overwrite=True)
    assert len(jobs) == 3 and not existing
    with pytest.raises(UserError, match="output must be a folder"):
        plan_many([str(tmp_path / "in" / "p0.png"), str(tmp_path / "in" / "p1.png")], str(out / "x.png"))


# --------------------------------------------------------------------------- bad configuration


def test_bad_loss_configuration_is_one_line():
    with pytest.raises(UserError, match="has no layer"):
        ContentStyleLoss(arch="vgg16", weights="random", style_layers=["conv9_9"])
    with pytest.raises(UserError, match="must be >= 0"):
        ContentStyleLoss(arch="vgg16", weights="random", style_weight=-1)
    with pytest.raises(UserError, match="style layer weights must be >= 0"):
        ContentStyleLoss(arch="vgg16", weights="random", style_layers=["conv1_1"], style_layer_weights=[-1])


def test_crop_size_out_of_range_is_one_line():
    for size in (8, 10000):
        with pytest.raises(UserError, match="data.image_size must be between 16 and 4096"):
            ContentDataModule(image_size=size)


def fast(tmp_path, photo_dir, style_path, *extra):
    return compose_train([*FAST, "style=custom", f"data.content={photo_dir}", f"style.image={style_path}", *extra],
                         tmp_path / "run")


def test_gpu_asked_without_one_is_one_line(tmp_path, photo_dir, style_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="asks for a GPU.*trainer=cpu"):
        train(fast(tmp_path, photo_dir, style_path, "trainer=gpu"))
    from hrstyle.inference.stylizer import pick_device

    with pytest.raises(UserError, match="CUDA is not available"):
        pick_device("cuda")


def test_checkpoints_of_another_config_or_not_checkpoints(tmp_path, photo_dir, style_path, tiny_checkpoint):
    cfg = fast(tmp_path, photo_dir, style_path, "trainer.max_steps=2")
    first = train(cfg)["last_checkpoint"]
    with pytest.raises(UserError, match=r"other generator settings: model.width=1.0 \(this run: 0.5\)"):
        train(fast(tmp_path / "b", photo_dir, style_path, "model.width=0.5", f"ckpt_path={first}"))
    with pytest.raises(UserError, match="not a training checkpoint"):
        train(fast(tmp_path / "c", photo_dir, style_path, f"ckpt_path={tiny_checkpoint}"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        train(fast(tmp_path / "d", photo_dir, style_path, f"ckpt_path={junk}"))
    # A checkpoint whose weights do not fit its own generator config (hand-edited).
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["hrstyle"]["generator_config"]["width"] = 1.0
    edited = tmp_path / "edited.pt"
    torch.save(ckpt, edited)
    with pytest.raises(UserError, match="do not fit its generator"):
        Stylizer(edited, device="cpu")


def test_training_without_a_logger_works(tmp_path, photo_dir, style_path):
    for removal in (["~logger"], hydra_argv(["logger=null"])):
        result = train(fast(tmp_path / removal[0].strip("~="), photo_dir, style_path, "trainer.max_steps=2", *removal))
        assert result["global_step"] == 2 and result["log_dir"] is None


# --------------------------------------------------------------------------- numerical safety


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, photo_dir, style_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    cfg = fast(tmp_path, photo_dir, style_path, "trainer.max_steps=6", "trainer.gradient_clip_val=1.0",
               "+callbacks.poison._target_=crash_callbacks.PoisonAtStep", "+callbacks.poison.step=3")
    with pytest.raises(UserError, match=r"training diverged at step 3: the loss is .*nan.*last good checkpoint") as info:
        train(cfg)
    last = Path(str(info.value).split("ckpt_path=")[1].split(" ")[0])
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


# --------------------------------------------------------------------------- disk full


class _FullDisk:
    """A file object whose device fills after ``room`` bytes: the next write raises ENOSPC, as a real one does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Make every file ``write_atomic`` opens fill up after 2 KB, once ``full_disk.on`` is set."""
    import hrstyle.paths

    state = {"on": False}
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        return _FullDisk(f, 2048) if state["on"] else f

    monkeypatch.setattr(hrstyle.paths.os, "fdopen", fdopen)
    return state


def test_disk_full_while_writing_an_output_is_one_line_and_leaves_nothing(tmp_path, tiny_checkpoint, full_disk):
    photo = random_photo(tmp_path / "in" / "p.png", (64, 48))
    out = tmp_path / "out"
    old = random_photo(out / "p.png", (8, 8), seed=3)  # an earlier result that must survive
    before = old.read_bytes()
    full_disk["on"] = True
    with pytest.raises(UserError, match=r"cannot write image .*p.png: the disk is full .*previous one is intact"):
        save_image_atomic(Image.open(photo).convert("RGB"), old)
    lines = []
    summary = stylize_files(Stylizer(tiny_checkpoint, device="cpu"), [Job(photo, old)], log=lines.append)
    assert summary.done == 0 and len(summary.failed) == 1 and "the disk is full" in summary.failed[0]
    assert any("error: cannot write image" in line for line in lines)
    assert old.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["p.png"]  # no temporary file


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_one(tmp_path, photo_dir, style_path, monkeypatch, full_disk):
    """The periodic checkpoint of step 4 hits a full disk: one line naming it, last.ckpt of step 2 intact."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    cfg = fast(tmp_path, photo_dir, style_path, "trainer.max_steps=6")
    import pytorch_lightning as pl

    class FillDiskAfterStep2(pl.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            full_disk["on"] = trainer.global_step >= 2

    import hrstyle.training.train as training

    build = training.build
    monkeypatch.setattr(training, "build", lambda c: _with_callback(build(c), FillDiskAfterStep2()))
    with pytest.raises(UserError, match=r"cannot write checkpoint .*: the disk is full") as info:
        train(cfg)
    assert "Traceback" not in str(info.value)
    folder = tmp_path / "run" / "checkpoints"
    full_disk["on"] = False
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))


def _with_callback(built, callback):
    module, datamodule, trainer = built
    trainer.callbacks.insert(0, callback)
    return module, datamodule, trainer


# --------------------------------------------------------------------------- crash safety, determinism


@pytest.fixture(scope="module")
def crash_runs(tmp_path_factory):
    """Three real training processes: uninterrupted (6 steps), killed with SIGKILL before
    step 3 (checkpoints every 2 steps), and resumed from the killed run's last.ckpt."""
    tmp = tmp_path_factory.mktemp("crash")
    photos = tmp / "photos"
    for i, size in enumerate([(64, 48), (40, 72), (56, 56), (80, 60)]):
        random_photo(photos / f"p{i}.png", size, seed=i)
    style = random_photo(tmp / "style.png", (64, 64), seed=9)
    common = [*FAST, "style=custom", f"data.content={photos}", f"style.image={style}", "trainer.max_steps=6",
              "data.num_workers=1", "+callbacks.record._target_=crash_callbacks.RecordSteps"]
    env = {"PYTHONPATH": str(ROOT / "tests")}
    runs = {}
    for name, extra in [("full", []), ("killed", ["+callbacks.kill._target_=crash_callbacks.KillAtStep",
                                                  "+callbacks.kill.step=3"])]:
        proc = run_script("train.py", *common, f"+callbacks.record.path={tmp}/{name}.jsonl", *extra,
                          f"hydra.run.dir={tmp}/{name}", env=env)
        runs[name] = proc
    last = tmp / "killed" / "checkpoints" / "last.ckpt"
    runs["resumed"] = run_script("train.py", *common, f"+callbacks.record.path={tmp}/killed.jsonl",
                                 f"ckpt_path={last}", f"hydra.run.dir={tmp}/resumed", env=env)
    # Preempted (SIGTERM, then SIGUSR1) before step 3 with no periodic checkpoint due, then the very same
    # command again with ckpt_path=last, as a requeued job runs it.
    for name in ("SIGTERM", "SIGUSR1"):
        same = [*common, "callbacks.model_checkpoint.every_n_train_steps=100", f"+callbacks.record.path={tmp}/{name}.jsonl",
                "ckpt_path=last", f"hydra.run.dir={tmp}/{name}"]
        runs[name] = run_script("train.py", *same, "+callbacks.signal._target_=crash_callbacks.SignalAtStep",
                                "+callbacks.signal.step=3", f"+callbacks.signal.signum={name}", env=env)
        runs[f"{name}-requeued"] = run_script("train.py", *same, env=env)
    return tmp, runs


def _steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_then_resume_is_a_true_continuation(crash_runs):
    tmp, runs = crash_runs
    assert runs["full"].returncode == 0, runs["full"].stderr[-2000:]
    assert runs["killed"].returncode == -signal.SIGKILL
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-2000:]
    full, killed = _steps(tmp / "full.jsonl"), _steps(tmp / "killed.jsonl")
    # killed.jsonl: steps 1-3 before the kill, then 3-6 after resuming from step 2.
    assert [s["step"] for s in killed] == [1, 2, 3, 3, 4, 5, 6]
    resumed = killed[3:]
    for a, b in zip(full[2:], resumed):
        assert a["step"] == b["step"] and a["batch_sum"] == b["batch_sum"]  # the same crops...
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-6, abs_tol=1e-7)  # ...and the same losses
    a = torch.load(tmp / "full" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(tmp / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    assert a["lr_schedulers"] == b["lr_schedulers"]
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6)
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-5, atol=1e-7)
    # Checkpoints are written through a temporary file and a rename: none is left behind.
    assert not list((tmp / "killed" / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGUSR1"])
def test_preemption_saves_the_step_and_the_same_command_resumes(crash_runs, signum):
    """A scheduler's SIGTERM (or SLURM's SIGUSR1) mid-run: the running step finishes, last.ckpt is written
    at that step, the exit status says "interrupted, resumable" (75) with the resume command, and running
    the same command again (ckpt_path=last) continues with the uninterrupted run's losses."""
    tmp, runs = crash_runs
    stopped, requeued = runs[signum], runs[f"{signum}-requeued"]
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr[-2000:]
    last = tmp / signum / "checkpoints" / "last.ckpt"
    line = next(t for t in stopped.stderr.splitlines() if t.startswith("Interrupted at step 4"))
    assert f"saved {last}" in line and "resume with: python" in line and "ckpt_path=last" in line
    assert "Traceback" not in stopped.stderr
    assert "starting a new run" in stopped.stdout  # the first launch found nothing to resume
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4
    assert not list(last.parent.glob("*.tmp"))
    assert requeued.returncode == 0, requeued.stderr[-2000:]
    assert f"Resuming from {last}" in requeued.stdout
    full, steps = _steps(tmp / "full.jsonl"), _steps(tmp / f"{signum}.jsonl")
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, steps):
        assert a["batch_sum"] == b["batch_sum"]
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-6, abs_tol=1e-7)


def test_resume_command_names_the_run_folder_and_keeps_the_other_arguments():
    cmd = resume_command("/runs/a b", ["scripts/train.py", "style=custom", "style.image='/p/x y.jpg'",
                                       "ckpt_path=/old.ckpt", "hydra.run.dir=/elsewhere"])
    assert shlex.split(cmd) == ["python", "scripts/train.py", "style=custom", "style.image='/p/x y.jpg'",
                                "ckpt_path=last", "hydra.run.dir=/runs/a b"]


@pytest.mark.slow
def test_seeded_runs_are_deterministic(crash_runs):
    """Two processes with the same seed (the full run and the killed one) give identical
    losses for their first steps, crop for crop."""
    tmp, _ = crash_runs
    full, killed = _steps(tmp / "full.jsonl"), _steps(tmp / "killed.jsonl")
    assert [(s["loss"], s["batch_sum"]) for s in full[:3]] == [(s["loss"], s["batch_sum"]) for s in killed[:3]]


def test_ranks_draw_different_crops_and_resume_where_they_stopped():
    from hrstyle.data.datamodule import ResumableDraws

    ranks = [list(ResumableDraws(2, 5, lambda: 0, rank=r, world=2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == 10
    assert list(ResumableDraws(2, 5, lambda: 3, rank=1, world=2)) == ranks[1][6:]


# --------------------------------------------------------------------------- fuzzing

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F", "CMYK", "YCbCr", "HSV"]
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF"}


def _fuzz_file(rng: random.Random, path_dir: Path, i: int) -> Path:
    ext = rng.choice(list(FORMATS))
    path = path_dir / f"f{i:03d}.{rng.choice([ext, rng.choice(list(FORMATS))])}"  # sometimes a lying extension
    w, h = rng.choice([1, 2, 3, rng.randint(1, 200)]), rng.choice([1, 2, rng.randint(1, 200)])
    mode = rng.choice(MODES)
    arr = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    try:
        img = img.convert(mode) if mode not in ("I;16", "I", "F") else img.convert("L").convert(mode)
        buf = io.BytesIO()
        img.save(buf, FORMATS[ext])
        data = buf.getvalue()
    except (OSError, ValueError, KeyError):  # this format cannot store this mode: write junk instead
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    damage = rng.random()
    if damage < 0.25:
        data = data[: rng.randint(0, len(data))]  # truncated
    elif damage < 0.45 and data:
        data = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)  # flipped bytes
        data = bytes(data)
    path.write_bytes(data)
    return path


def test_fuzzed_images_work_or_raise_our_error(tmp_path, tiny_checkpoint):
    rng = random.Random(1234)
    files = [_fuzz_file(rng, tmp_path, i) for i in range(300)]
    stylizer = Stylizer(tiny_checkpoint, device="cpu", tile_size=0)
    loaded = failed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                img = open_rgb(path)
            except UserError as exc:
                assert "\n" not in str(exc)
                failed += 1
                continue
            assert img.mode == "RGB"
            loaded += 1
            out = stylizer.stylize_tensor(load_image(path).unsqueeze(0))
            assert torch.isfinite(out).all() and out.shape[-2:] == (img.height, img.width)
        crops = RandomCrops(files, size=16, seed=0)
        for d in range(40):
            assert crops[d].shape == (3, 16, 16)
    assert loaded > 50 and failed > 30  # the generator really produced both kinds


@pytest.mark.slow
def test_a_genuine_400_megapixel_image_opens_when_allowed_and_is_tiled(tmp_path, tiny_checkpoint):
    """The bomb refused above is, with the limit raised, just a big image: it decodes and the
    stylizer takes the exact tiled path for it (stylizing all 400 MP on a CPU takes hours)."""
    big = _write(tmp_path / "big.png", "bomb")
    img = open_rgb(big, max_pixels=None)
    assert img.size == (20000, 20000)
    assert Stylizer(tiny_checkpoint, device="cpu", work_size=None).needs_tiling(20000, 20000)


# --------------------------------------------------------------------------- collections of real size


def test_a_large_messy_training_folder_scans_quickly(tmp_path):
    """The scaled-down benchmark (scripts/benchmark_collections.py): 3,000 entries with non-images,
    truncated JPEGs, symlinks, a symlinked folder, a loop and a broken link: every real image found
    once, the scan small, and the first batch drawn."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from benchmark_collections import make_tree, measure_scan
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    counts = make_tree(tmp_path / "train", 3000)
    scan = measure_scan(tmp_path / "train")
    # JPEGs, truncated ones (skipped when drawn) and links to JPEGs; not the texts, the linked folder or the loop.
    assert scan["images"] == counts["jpeg"] + counts["truncated"] + counts["symlink"]
    assert scan["batch"] == (4, 3, 128, 128)
    assert scan["python_peak_mb"] < 50


def test_folder_inference_streams_when_encoding_is_slower(tmp_path, tiny_checkpoint, monkeypatch):
    """Results wait for a slow encoder in a bounded queue: the number of stylized images not yet written
    stays small whatever the number of photos (memory does not grow with the folder)."""
    import threading
    import time

    import hrstyle.inference.files as files

    for i in range(40):
        random_photo(tmp_path / "in" / f"p{i:02d}.jpg", (32, 24), seed=i)
    jobs, _, _ = plan_many([str(tmp_path / "in")], str(tmp_path / "out"))
    lock, state = threading.Lock(), {"waiting": 0, "most": 0}
    stylizer = Stylizer(tiny_checkpoint, device="cpu")
    real_stylize, real_encode = stylizer.stylize_tensor, files._encode

    def stylize(images):
        with lock:
            state["waiting"] += len(images)
            state["most"] = max(state["most"], state["waiting"])
        return real_stylize(images)

    def encode(*args):
        time.sleep(0.02)
        with lock:
            state["waiting"] -= 1
        return real_encode(*args)

    monkeypatch.setattr(stylizer, "stylize_tensor", stylize)
    monkeypatch.setattr(files, "_encode", encode)
    summary = stylize_files(stylizer, jobs, batch_size=4, workers=2, log=lambda _: None)
    assert summary.done == 40 and not summary.failed
    assert state["most"] <= 2 * 2 + 4 + 4  # the write queue, the batch being stylized, one more batch


# --------------------------------------------------------------------------- one memory budget per process


def test_stylizers_share_one_budget_and_take_turns(tmp_path, tiny_checkpoint):
    """Two styles in one process plan within one budget, and the arena one keeps is given back before
    the other runs: the second does not plan as if it were alone."""
    pytest.importorskip("onnxruntime")
    a = Stylizer(tiny_checkpoint, device="cpu", backend="onnx", memory_gb=3, work_size=None,
                 cache_dir=tmp_path / "cache")
    b = Stylizer(tiny_checkpoint, device="cpu", backend="onnx", work_size=None, cache_dir=tmp_path / "cache")
    assert a.memory_bytes == b.memory_bytes == 3 << 30
    Stylizer(tiny_checkpoint, device="cpu", backend="onnx", memory_gb=2, cache_dir=tmp_path / "cache")
    assert a.memory_bytes == b.memory_bytes == 2 << 30  # the latest explicit budget holds for all
    photo = torch.rand(1, 3, 64, 48)
    a(photo)
    assert a._ort.session is not None  # a keeps its arena for its next photo...
    b(photo)
    assert a._ort.session is None and b._ort.session is not None  # ...until another style takes its turn


@pytest.mark.slow
def test_two_styles_on_a_large_photo_stay_within_the_process_budget(tmp_path):
    """The shipped photo style and the painterly one, each at full resolution (work_size=null) on the same
    1024² photo in one process, alternating: the peak resident memory stays within the one budget. Each
    untiled forward keeps an arena of about the budget; without turns two of them would be alive at once."""
    pytest.importorskip("onnxruntime")
    code = f"""
import resource, sys, torch
from hrstyle.inference import Stylizer
a = Stylizer({str(ROOT / 'checkpoints' / 'winter.pt')!r}, device="cpu", work_size=None, memory_gb=4)
b = Stylizer({str(ROOT / 'checkpoints' / 'starry.pt')!r}, device="cpu", work_size=None)
photo = torch.rand(1, 3, 1024, 1024)
for s in (a, b, a):
    s(photo)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, a.memory_bytes / 2**30, b.memory_bytes / 2**30)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "HRSTYLE_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_gib, budget_a, budget_b = map(float, proc.stdout.split()[-3:])
    assert budget_a == budget_b == 4
    assert peak_gib <= 4, f"peak {peak_gib:.2f} GiB over the 4 GiB budget"


def test_dataloader_workers_leave_a_preemption_signal_to_the_trainer(tmp_path, photo_dir):
    """SLURM signals every process of a job: a DataLoader worker that died of SIGTERM took training down
    ("DataLoader worker is killed by signal: Terminated") before the step could be saved. Workers ignore it."""
    data = ContentDataModule(str(photo_dir), image_size=32, batch_size=1, val_count=1, num_workers=1)
    data.setup("fit")
    batches = iter(data.train_dataloader())
    next(batches)
    for worker in batches._workers:  # the worker processes of this iterator
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGUSR1)
    time.sleep(0.5)
    for _ in range(3):
        assert next(batches).shape == (1, 3, 32, 32)
    assert all(worker.is_alive() for worker in batches._workers)
    del batches


def test_folder_inference_work_per_photo_does_not_grow_with_the_folder(tmp_path, tiny_checkpoint, monkeypatch):
    """Each output is checked against the inputs (never overwrite one) without resolving every input again:
    path resolutions grow linearly with the folder (they were quadratic: 10,000 photos took hours)."""
    for i in range(60):
        random_photo(tmp_path / "in" / f"p{i:02d}.jpg", (24, 20), seed=i)
    jobs, _, _ = plan_many([str(tmp_path / "in")], str(tmp_path / "out"))
    calls = {"n": 0}
    real = Path.resolve

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "resolve", counting)
    summary = stylize_files(Stylizer(tiny_checkpoint, device="cpu"), jobs, log=lambda _: None)
    assert summary.done == 60
    assert calls["n"] <= 5 * 60, f"{calls['n']} path resolutions for 60 photos"


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    """mkstemp's private 0600 must not leak into outputs: a stylized photo is shared like any file."""
    import stat

    from hrstyle import paths

    out = paths.write_atomic(tmp_path / "out.bin", lambda f: f.write(b"x"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~paths._UMASK != 0o600
