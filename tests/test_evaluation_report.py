"""The evaluation: methods, report files, contact sheet, multirun sweep grid, script."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from helpers import ROOT, random_photo
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from hrstyle.errors import UserError
from hrstyle.evaluation.methods import (
    ColorOptions,
    GatysOptions,
    GuidedOptions,
    MethodOptions,
    PaperOptions,
    build_methods,
    differing_overrides,
)
from hrstyle.evaluation.metrics import METRIC_KEYS
from hrstyle.evaluation.report import PAD, STYLE_KEYS, EvaluationSettings, evaluate
from hrstyle.inference import load_generator, save_generator
from hrstyle.losses import ContentStyleLoss
from hrstyle.models import HRNet
from hrstyle.optimization.paper import fit_generator

THUMB = 48
# A small random loss network: the tests check plumbing, not what the features mean.
FAST_LOSS = ["loss.weights=random", "loss.content_layer=relu2_1", "loss.style_layers=[relu1_1,relu2_1]",
             "loss.style_layer_weights=[1,1]"]
LOSS = {**OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "loss" / "vgg19.yaml")), "weights": "random",
        "content_layer": "relu2_1", "style_layers": ["relu1_1", "relu2_1"], "style_layer_weights": [1, 1]}


def tiny_checkpoint(path: Path, style_image: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = HRNet(width=0.25)
    meta = {"generator_class": "hrstyle.models.hrnet.HRNet", "generator_config": model.config,
            "style_name": "tiny", "style_image": style_image}
    return save_generator(path, model, meta)


def compose_config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("evaluate", overrides=[f"output={tmp_path / 'report'}", *overrides])


def settings(tmp_path: Path, **changes) -> EvaluationSettings:
    """Small, fast settings; ``changes`` replace fields of ``EvaluationSettings`` or ``MethodOptions``."""
    option_names = {f.name for f in fields(MethodOptions)}
    options = MethodOptions(loss=LOSS, progress=False, **{k: v for k, v in changes.items() if k in option_names})
    return EvaluationSettings(output=tmp_path / "report", thumb=THUMB, size=40, style_size=48, method_options=options,
                              **{k: v for k, v in changes.items() if k not in option_names})


# Tiny images gain nothing from a second thread, and with the CPU shared a second thread waiting at
# every op's barrier made these tests up to 15x slower.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    contents = [random_photo(tmp_path / "photos" / "a.png", (40, 32), seed=1),
                random_photo(tmp_path / "photos" / "b.jpg", (32, 40), seed=2)]
    return contents, [random_photo(tmp_path / "styles" / "s1.png", (48, 48), seed=3)]


@pytest.mark.slow
def test_report_files_and_checkpoint_pairing(tmp_path: Path, inputs) -> None:
    contents, styles = inputs
    own_style = random_photo(tmp_path / "own_style.png", (40, 40), seed=4)
    foreign = tiny_checkpoint(tmp_path / "ckpts" / "foreign.pt", "/nonexistent/style.jpg", seed=1)
    own = tiny_checkpoint(tmp_path / "run7" / "checkpoints" / "last.ckpt", str(own_style), seed=2)
    assert load_generator(own)[1]["style_image"] == str(own_style)
    cfg = settings(tmp_path)
    report = evaluate(contents, styles, ["identity", str(foreign), str(own)], cfg)

    out = tmp_path / "report"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    assert list(report) == ["identity", "foreign", "run7"]  # top level: exactly the method names
    for entry in report.values():
        assert set(entry) == {"mean", "images"}
        assert set(entry["mean"]) == {*METRIC_KEYS, *STYLE_KEYS, "seconds"}
        for record in entry["images"]:
            assert set(record) == {"photo", "style", *METRIC_KEYS, *STYLE_KEYS, "seconds"}
            assert all(math.isfinite(record[k]) for k in (*METRIC_KEYS, "lightness", "seconds"))
            assert record["regional"] is None  # no masks given
    # identity runs on every style (given + checkpoints' own); a checkpoint on its own style
    # when that file exists, else on the given ones.
    pairs = {name: {(r["photo"], r["style"]) for r in e["images"]} for name, e in report.items()}
    assert pairs["identity"] == {(c, s) for c in ("a", "b") for s in ("s1", "own_style")}
    assert pairs["foreign"] == {("a", "s1"), ("b", "s1")}
    assert pairs["run7"] == {("a", "own_style"), ("b", "own_style")}
    identity = report["identity"]["mean"]
    assert identity["ssim"] == pytest.approx(1.0, abs=1e-4) and identity["edge_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert identity["content"] == pytest.approx(0.0, abs=1e-6) and identity["gram"] > 0

    markdown = (out / "report.md").read_text()
    assert "| identity |" in markdown and "| run7 |" in markdown and "SSIM ↑" in markdown and "Gram ↓" in markdown
    assert "### s1" in markdown and "### own_style" in markdown
    assert (out / "config.yaml").is_file()
    assert (out / "images" / "foreign" / "a__s1.png").is_file()
    assert Image.open(out / "images" / "run7" / "b__own_style.png").size == (32, 40)
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width == 5 * (THUMB + 2 * PAD)  # content | style | 3 methods
    assert sheet.height > 4 * THUMB  # 4 (photo, style) rows


def test_masks_give_the_regional_distance_and_color_at_strength(tmp_path: Path, inputs) -> None:
    contents, styles = inputs
    masks = {"content": tmp_path / "masks_c", "style": tmp_path / "masks_s"}
    for folder in masks.values():
        folder.mkdir()
    halves = torch.zeros(64, 64, dtype=torch.uint8)
    halves[32:] = 1
    Image.fromarray(halves.numpy(), mode="L").save(masks["content"] / "a.png")  # b has no mask
    Image.fromarray(halves.numpy(), mode="L").save(masks["style"] / "s1.png")
    cfg = settings(tmp_path, content_masks=masks["content"], style_masks=masks["style"])
    report = evaluate(contents, styles, ["identity", "identity+color@1", "identity+color"], cfg)
    assert list(report) == ["identity", "identity+color@1", "identity+color"]
    regional = {name: {r["photo"]: r["regional"] for r in e["images"]} for name, e in report.items()}
    assert all(v["b"] is None and v["a"] > 0 for v in regional.values())
    # The full colour transfer is closer to the style's colours than the half one, which is closer than the photo.
    assert regional["identity+color@1"]["a"] < regional["identity+color"]["a"] < regional["identity"]["a"]
    assert report["identity"]["mean"]["regional"] == regional["identity"]["a"]  # the mean skips unmasked pairs
    assert "regional colour ↓" in (tmp_path / "report" / "report.md").read_text()
    written = OmegaConf.load(tmp_path / "report" / "config.yaml")  # the settings as configs/evaluate.yaml lays them out
    assert written.size == 40 and written.thumb == THUMB and written.loss.weights == "random"
    assert written.content_masks == str(masks["content"]) and written.color.strength == 0.5
    assert written.gatys.steps == 300 and written.methods == list(report)
    assert written.evaluated.methods["identity+color@1"] == {"kind": "identity", "source": "identity+color@1",
                                                             "styles": ["s1"]}
    with pytest.raises(UserError, match="strength"):
        evaluate(contents, styles, ["identity+color@strong"], cfg)


def test_default_suffix_is_the_checkpoints_own_inference(tmp_path: Path, inputs) -> None:
    contents, styles = inputs
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", "/nonexistent/style.jpg", seed=3)
    model, meta = load_generator(ckpt)
    save_generator(ckpt, model, {**meta, "guided_radius": 3})  # the checkpoint recommends the guided filter
    cfg = settings(tmp_path, guided=GuidedOptions(radius=3))
    report = evaluate(contents[:1], styles, [str(ckpt), f"{ckpt}+default", f"{ckpt}+guided"], cfg)
    assert list(report) == ["tiny", "tiny+default", "tiny+guided"]
    images = {m: torch.from_numpy(__import__("numpy").asarray(Image.open(
        tmp_path / "report" / "images" / m / "a__s1.png"))).float() for m in report}
    assert torch.equal(images["tiny+default"], images["tiny+guided"])
    assert not torch.equal(images["tiny"], images["tiny+default"])  # the network alone has no filter
    with pytest.raises(UserError, match="default"):
        evaluate(contents[:1], styles, ["identity+default"], cfg)


@pytest.mark.slow
def test_multirun_folder_gatys_and_paper(tmp_path: Path, inputs) -> None:
    contents, styles = inputs
    sweep = tmp_path / "multirun" / "starry" / "2024-01-01_00-00-00"
    for job, weight in enumerate((1, 5)):
        tiny_checkpoint(sweep / str(job) / "checkpoints" / "last.ckpt", "/nonexistent/style.jpg", seed=job)
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(
            f"- experiment=cpu_quick\n- loss.style_weight={weight}\n")
    cfg = settings(tmp_path, gatys=GatysOptions(steps=2),
                   paper=PaperOptions(steps=2, generator={"width": 0.25, "padding_mode": "zeros"}))
    report = evaluate(contents[:1], styles, [str(sweep), "gatys", "paper"], cfg)
    assert list(report) == ["style_weight=1", "style_weight=5", "gatys", "paper"]
    for entry in report.values():
        assert len(entry["images"]) == 1
        assert all(math.isfinite(entry["mean"][k]) for k in (*METRIC_KEYS, "seconds"))
    grid = Image.open(tmp_path / "report" / "sweep_grid.png")
    assert grid.width == 2 * (THUMB + 2 * PAD)  # one column per run
    assert "| style_weight=5 |" in (tmp_path / "report" / "report.md").read_text()


def test_differing_overrides() -> None:
    runs = [["experiment=cpu_quick", "loss.style_weight=1", "model.width=1"],
            ["experiment=cpu_quick", "loss.style_weight=5", "model.width=1"]]
    assert differing_overrides(runs) == [{"style_weight": "1"}, {"style_weight": "5"}]
    assert differing_overrides([["a.w=1", "b.w=2"], ["a.w=3", "b.w=4"]]) == [{"a.w": "1", "b.w": "2"},
                                                                             {"a.w": "3", "b.w": "4"}]


def test_color_suffix_matches_the_pair_style_colours(tmp_path: Path) -> None:
    from hrstyle.image.color import color_statistics

    options = settings(tmp_path).method_options
    (plain,), (matched,), (both,) = (build_methods([m], options, torch.device("cpu"))
                                     for m in ("identity", "identity+color", "identity+guided+color"))
    assert matched.name == "identity+color" and both.name == "identity+guided+color"
    torch.manual_seed(0)
    photo, style = torch.rand(1, 3, 24, 30) * 0.5 + 0.25, torch.rand(1, 3, 16, 16) * 0.3
    assert torch.equal(plain.fn(photo, style), photo)
    # default strength 0.5 (as inference's default for photo styles): halfway to the style's mean colour
    halfway = (color_statistics(photo)[0] + color_statistics(style)[0]) / 2
    assert torch.allclose(color_statistics(matched.fn(photo, style))[0], halfway, atol=1e-3)
    (full,) = build_methods(["identity+color"], replace(options, color=ColorOptions(strength=1)), torch.device("cpu"))
    assert torch.allclose(color_statistics(full.fn(photo, style))[0], color_statistics(style)[0], atol=1e-3)
    with pytest.raises(UserError, match="color.strength"):
        build_methods(["identity+color"], replace(options, color=ColorOptions(strength=2)), torch.device("cpu"))


def test_graded_suffix_is_the_graduated_transfer_onto_the_pair_style(tmp_path: Path) -> None:
    from hrstyle.image.color import aligned_band_statistics, find_horizon, match_color_banded, strip_color_statistics

    options = settings(tmp_path).method_options
    (graded,), (half,) = (build_methods([m], options, torch.device("cpu")) for m in ("identity+graded@1", "identity+graded"))
    assert graded.name == "identity+graded@1" and half.name == "identity+graded"
    torch.manual_seed(0)
    photo, style = torch.rand(1, 3, 24, 30) * 0.5 + 0.25, torch.rand(1, 3, 16, 16) * 0.3
    target = aligned_band_statistics(strip_color_statistics(style, 16), find_horizon(style), photo)  # horizons aligned
    assert torch.equal(graded.fn(photo, style), match_color_banded(photo, target))
    assert torch.allclose(half.fn(photo, style), match_color_banded(photo, target, 0.5))
    with pytest.raises(UserError, match="graded@S"):
        build_methods(["identity+graded@x"], options, torch.device("cpu"))


def test_unknown_method_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown method 'bogus'.*identity, gatys, paper"):
        build_methods(["identity", "bogus"], MethodOptions(), torch.device("cpu"))


def test_settings_defaults_equal_the_yaml() -> None:
    """The library's defaults (the dataclasses') are configs/evaluate.yaml's, key for key."""
    yaml = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "evaluate.yaml"), resolve=False)
    for key in ("defaults", "hydra", "content", "styles", "methods", "output"):  # inputs, not settings
        del yaml[key]
    defaults = EvaluationSettings(output=Path("unused")).to_config()
    assert defaults.pop("output") == "unused" and defaults.pop("loss") is None  # loss: the yaml's defaults list
    assert defaults == yaml


def _script_globals() -> dict:
    return runpy.run_path(str(ROOT / "scripts" / "evaluate.py"))


def test_script_translates_the_config(tmp_path: Path) -> None:
    translate = _script_globals()["settings_from_config"]
    cfg = compose_config(tmp_path, "size=40", "limit=2", "device=cpu", f"content_masks={tmp_path}", "seed=3",
                         "gatys.steps=2", "gatys.method=adam", "paper.generator.width=0.25", "guided.radius=3",
                         "color.strength=1", *FAST_LOSS)
    expected = EvaluationSettings(
        output=tmp_path / "report", size=40, limit=2, device="cpu", content_masks=tmp_path,
        method_options=MethodOptions(loss=LOSS, seed=3, gatys=GatysOptions(steps=2, method="adam"),
                                     paper=PaperOptions(generator={"width": 0.25, "padding_mode": "zeros"}),
                                     guided=GuidedOptions(radius=3), color=ColorOptions(strength=1)))
    assert translate(cfg) == expected
    with pytest.raises(UserError, match="unknown option gatys.bogus"):
        translate(compose_config(tmp_path, "+gatys.bogus=1"))


def test_fit_generator_lowers_the_loss() -> None:
    loss = ContentStyleLoss(weights="random", content_layer="relu2_1", style_layers=["relu1_1", "relu2_1"])
    torch.manual_seed(0)
    loss.set_style(torch.rand(1, 3, 32, 32))
    content = torch.rand(1, 3, 32, 24)
    result = fit_generator(content, loss, steps=6, lr=1e-2, generator_config={"width": 0.25}, log_every=0,
                           progress=False)
    assert result.image.shape == content.shape and 0 <= result.image.min() and result.image.max() <= 1
    assert [step for step, _ in result.history] == [0, 6]
    assert result.history[-1][1]["loss"] < result.history[0][1]["loss"]


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_script_end_to_end(tmp_path: Path, inputs) -> None:
    contents, styles = inputs
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", "/nonexistent/style.jpg")
    out = tmp_path / "out"
    proc = _script(f"content={contents[0].parent}", f"style={styles[0]}", f"methods=[identity,{ckpt}]",
                   f"output={out}", "size=40", f"thumb={THUMB}", "progress=false", *FAST_LOSS)
    assert proc.returncode == 0, proc.stderr
    assert "Report:" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert list(report) == ["identity", "tiny"] and len(report["tiny"]["images"]) == 2
    assert (out / "contact_sheet.png").is_file() and (out / "report.md").is_file()


def test_script_unknown_method_exits_2(tmp_path: Path, monkeypatch, capsys) -> None:
    # The script as __main__ but in-process (the end-to-end test above already pays for one
    # interpreter start): its `style=` alias, Hydra, run_or_exit's message and exit status.
    photo = random_photo(tmp_path / "p.png", (32, 32))
    argv = [f"content={photo}", f"style={photo}", "methods=[identity,bogus]", f"output={tmp_path / 'o'}"]
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / "evaluate.py"), *argv])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "scripts" / "evaluate.py"), run_name="__main__")
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown method 'bogus'")
