"""The loss-network explorer: hrstyle.explore and scripts/explore.py (tiny images, random VGG)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, compose_config, image, load_script, random_photo
from PIL import Image, ImageFont
from torch import nn
from torchvision import models

from hrstyle.errors import UserError
from hrstyle.explore import (
    FeatureMatchLoss,
    Tile,
    check_layers,
    feature_map_tiles,
    format_table,
    full_network,
    growing_sets,
    labelled_grid,
    layer_table,
    loss_usage,
    normalize_map,
    receptive_fields,
    reconstruct,
    reconstruction_tile,
    steps_for,
    strongest_channels,
    truncated,
)
from hrstyle.explore.figures import wrap_text
from hrstyle.losses import ContentStyleLoss, VGGFeatures, layer_names
from hrstyle.optimization import optimize_image

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny images: one thread


@pytest.fixture(scope="module")
def network() -> VGGFeatures:
    torch.manual_seed(0)
    return full_network("vgg16", "random")


# --- the table -------------------------------------------------------------------------------

def test_receptive_fields_are_the_standard_vgg_values(network):
    rows = {r.name: r for r in layer_table(network, image(0))}
    expected = {"conv1_1": 3, "relu1_1": 3, "conv1_2": 5, "pool1": 6, "conv2_1": 10, "conv2_2": 14, "pool2": 16,
                "conv3_1": 24, "pool3": 44, "conv4_1": 60, "conv4_2": 76, "conv5_1": 132, "conv5_3": 196, "pool5": 212}
    assert {name: rows[name].receptive_field for name in expected} == expected
    assert [rows[n].jump for n in ("conv1_1", "pool1", "conv2_1", "pool2", "pool3", "pool4", "conv5_1", "pool5")] == [
        1, 2, 2, 4, 8, 16, 16, 32]
    with torch.device("meta"):  # the modules only
        features19 = models.vgg19().features
    fields19 = dict(zip(layer_names(features19), receptive_fields(features19)))
    assert fields19["conv3_4"] == (48, 4) and fields19["conv5_4"] == (252, 16) and fields19["pool5"] == (268, 32)


def test_receptive_fields_follow_the_modules_not_a_table():
    stack = [nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 3), nn.Conv2d(4, 4, 3, dilation=2)]
    assert receptive_fields(stack) == [(5, 1), (5, 1), (7, 3), (19, 3)]


@pytest.mark.parametrize("size", [(40, 48), (37, 51)])
def test_table_matches_the_network_and_a_forward_pass(network, size):
    photo = image(1, size)
    rows = layer_table(network, photo, {"conv4_2": "content"})
    with torch.device("meta"):  # shapes only: an independent walk of torchvision's modules
        features = models.vgg16().features
        x, shapes = photo.to("meta"), []
        for module in features:
            x = module(x)
            shapes.append(tuple(x.shape[1:]))
    assert [r.name for r in rows] == layer_names(features) == network.names
    assert [r.index for r in rows] == list(range(len(features)))
    assert [r.shape for r in rows] == shapes
    assert rows[0].shape == (64, *size) and rows[-1].shape[0] == 512
    assert [r.use for r in rows if r.use] == ["content"] and rows[19].name == "conv4_2" and rows[19].use == "content"
    text = format_table(rows)
    assert len(text.splitlines()) == len(rows) + 2
    assert "conv4_2     19" in text and "76 px" in text and "content" in text


def test_usage_of_each_layer():
    # (content_layer, style_layers) as ContentStyleLoss holds them: a name and a {layer: weight} mapping
    usage = loss_usage("conv4_2", {"conv1_1": 0.1, "conv4_2": 0.8})
    assert usage == {"conv4_2": "content, style ×0.8", "conv1_1": "style ×0.1"}
    assert loss_usage(["conv3_1"], ["relu1_1"]) == {"conv3_1": "content", "relu1_1": "style"}


def test_truncated_shares_the_modules_and_leaves_the_network_alone(network):
    part = truncated(network, ["conv2_1", "relu1_2"])
    assert len(part.body) == 6 and part.names == network.names[:6] and part.layers == ["conv2_1", "relu1_2"]
    assert all(a is b for a, b in zip(part.body, network.body))
    assert len(network.body) == len(network.names) == 31 and network.layers == network.names
    x = image(2)
    out = part(x)
    assert set(out) == {"conv2_1", "relu1_2"}
    torch.testing.assert_close(out["conv2_1"], network(x)["conv2_1"])


def test_unknown_layer_is_a_one_line_user_error(network):
    with pytest.raises(UserError, match=r"^unknown content layer conv9_9, relu: vgg16 has conv1_1, relu1_1") as err:
        check_layers(network, ["conv4_2", "conv9_9", "relu"], "content layer")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown layer conv6_1"):
        truncated(network, ["conv6_1"])


# --- reconstructions -------------------------------------------------------------------------

def test_feature_match_loss_has_the_training_loss_terms():
    torch.manual_seed(0)
    target, x = image(3), image(4)
    train = ContentStyleLoss(arch="vgg16", weights="random", content_layer="conv2_1",
                             style_layers=["conv1_1", "conv2_1"], style_layer_weights=[0.5, 0.5],
                             tv_weight=0.0, photoreal_weight=0.0)
    train.set_style(target)
    terms = train(x, target)
    content = FeatureMatchLoss(train.encoder, target, content_layers=["conv2_1"])(x)
    style = FeatureMatchLoss(train.encoder, target, style_layers=["conv1_1", "conv2_1"])(x)
    torch.testing.assert_close(content["content_loss"], terms["content_loss"])
    torch.testing.assert_close(style["style_loss"], terms["style_loss"])
    assert float(content["style_loss"]) == 0 and float(style["content_loss"]) == 0
    torch.testing.assert_close(content["loss"], content["content_loss"])
    assert float(FeatureMatchLoss(train.encoder, target, ["conv2_1"], ["conv1_1"])(target)["loss"]) < 1e-10
    with pytest.raises(UserError, match="at least one"):
        FeatureMatchLoss(train.encoder, target)


@pytest.mark.parametrize("kind", ["content", "style"])
def test_reconstruction_loss_decreases(network, kind):
    photo = image(5)
    layers = {"content_layers": ["conv2_1"]} if kind == "content" else {"style_layers": ["conv1_1", "conv2_1"]}
    rec = reconstruct(photo, network, steps=8, log_every=2, **layers)  # from white noise
    assert rec.kind == kind and rec.steps == 8 and rec.image.shape == photo.shape
    assert 0 <= float(rec.image.min()) and float(rec.image.max()) <= 1
    losses = [values["loss"] for _, values in rec.result.history]
    assert len(losses) == 5 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert rec.final_loss < 0.5 * rec.first_loss
    # from gray + a little noise (the content default); a Gram loss starts slowly there, but it starts
    quiet = reconstruct(photo, network, steps=8, noise=0.2, **layers)
    assert quiet.final_loss < (0.5 if kind == "content" else 1.0) * quiet.first_loss
    # seeded noise start: the same start loss again, another for another seed
    again = reconstruct(photo, network, steps=1, log_every=0, **layers)
    other = reconstruct(photo, network, steps=1, log_every=0, seed=1, **layers)
    assert again.first_loss == rec.first_loss != other.first_loss
    with pytest.raises(UserError, match="noise must be in"):
        reconstruct(photo, network, steps=1, noise=0, **layers)


def test_optimize_image_starts_from_a_given_image(network):
    photo, start = image(8), image(9)
    loss = FeatureMatchLoss(network, photo, content_layers=["conv1_1"])
    result = optimize_image(photo, loss, steps=1, method="adam", lr=1e-12, init=start, progress=False)
    assert (result.image - start).abs().max() <= 0.5 / 255 + 1e-6
    assert result.history[0][1]["loss"] > 0.01
    with pytest.raises(UserError, match="start image has shape"):
        optimize_image(photo, loss, steps=1, init=start[..., :-1], progress=False)


def test_growing_sets_and_deep_steps(network):
    assert growing_sets(["a", "b", "c"]) == [["a"], ["a", "b"], ["a", "b", "c"]]
    assert steps_for(network, ["conv3_1"], 100, 40, "conv4_1") == 100
    assert steps_for(network, ["conv1_1", "conv4_1"], 100, 40, "conv4_1") == 40
    assert steps_for(network, ["conv5_1"], 100, None, "conv4_1") == 100


# --- figures ---------------------------------------------------------------------------------

def test_strongest_channels_and_normalized_maps():
    act = torch.zeros(4, 3, 3)
    act[1] = 2.0
    act[2] = -5.0  # large but negative: nothing passes the ReLU
    act[3, 0, 0] = 9.0
    channels, scores = strongest_channels(act, 2)
    assert channels.tolist() == [1, 3] and scores.tolist() == pytest.approx([2.0, 1.0])
    fmap = normalize_map(torch.tensor([[1.0, 3.0], [2.0, 5.0]]))
    assert fmap.min() == 0 and fmap.max() == 1 and float(fmap[0, 1]) == pytest.approx(0.5)
    assert float(normalize_map(torch.full((2, 2), 7.0)).abs().max()) == 0


def test_feature_map_tiles(network):
    photo = image(6, (32, 48))
    table = layer_table(network, photo)
    tiles = feature_map_tiles(network, photo, ["conv1_1", "relu3_1"], top_k=3, table=table, width=24)
    assert len(tiles) == 8 and all(t.image.size == (24, 16) for t in tiles)
    assert tiles[0].label == "conv1_1: 64 x 48x32\nred: RF 3 px"
    assert tiles[4].label == "relu3_1: 256 x 12x8\nred: RF 24 px"
    assert tiles[1].label.startswith("conv1_1 #") and tiles[5].label.startswith("relu3_1 #")
    gray = torch.tensor(list(tiles[5].image.getdata()))
    assert (gray[:, 0] == gray[:, 1]).all() and gray.min() == 0 and gray.max() == 255  # each map spans [0, 1]
    assert (255, 40, 40) in set(tiles[4].image.getdata())  # the receptive field square


def test_labels_are_wrapped_to_the_tile():
    font = ImageFont.load_default(size=13)
    lines = wrap_text("conv5_1: 512 maps of 16x11\nred: receptive field 132 px averyveryverylongword", font, 60)
    assert all(font.getlength(line) <= 60 for line in lines) and len(lines) >= 5
    assert " ".join(lines).replace(" ", "") == "conv5_1:512mapsof16x11red:receptivefield132pxaveryveryverylongword"
    assert wrap_text("a b", font, 1000) == ["a b"] and wrap_text("", font, 10) == [""]


def test_labelled_grid_layout(network):
    tiles = [Tile(Image.new("RGB", (20, 10), (0, 0, 255)), f"tile {i}\nline two") for i in range(5)]
    grid = labelled_grid(tiles, title="A title")
    assert grid.mode == "RGB" and grid.width == 3 * 20 + 4 * 6  # 5 tiles: two rows of three
    assert grid.height > 2 * 10 + 2 * 2 * 12
    assert len(labelled_grid(tiles, columns=5).getcolors(100000)) > 1
    rec = reconstruct(image(7), network, content_layers=["conv1_2"], steps=2)
    tile = reconstruction_tile(rec, {"conv1_2": "style ×0.2"})
    assert tile.label.startswith("conv1_2 [style x0.2]\nloss ") and tile.label.endswith(", 2 steps")
    assert tile.image.size == (40, 32)


# --- the script ------------------------------------------------------------------------------

def compose_explore(overrides: list[str]):
    return compose_config("explore", overrides)


def test_config_defaults_and_the_loss_group():
    cfg = compose_explore(["image=p.jpg", "loss=vgg16"])
    assert cfg.loss.arch == "vgg16" and cfg.loss.content_layer == "conv4_2" and cfg.size == 256
    assert cfg.tensorboard is False and cfg.palette is False and cfg.output is None
    assert (cfg.steps, cfg.deep_steps, cfg.deep_from, cfg.content_noise, cfg.style_noise) == (80, 40, "conv4_1", 0.2, 1)
    assert list(cfg.content_layers) == ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv4_2", "conv5_1"]
    script = load_script("explore")
    assert script.configured_style_layers(cfg.loss) == {"relu1_1": 0.1, "relu2_1": 0.2, "relu3_1": 0.4,
                                                        "relu4_1": 0.8, "relu5_1": 1.6}
    cfg = compose_explore(["loss.style_layers=[conv1_1,conv2_1]", "loss.style_layer_weights=null"])
    assert script.configured_style_layers(cfg.loss) == {"conv1_1": 1.0, "conv2_1": 1.0}


def test_script_errors_are_one_line(tmp_path):
    script = load_script("explore")
    photo = random_photo(tmp_path / "p.png", (40, 32))
    random_photo(tmp_path / "small.png", (40, 32))
    base = ["loss=vgg16", "loss.weights=random", "size=32"]
    with pytest.raises(UserError, match="give a photo"):
        script.run(compose_explore(base))
    with pytest.raises(UserError, match="image not found"):
        script.run(compose_explore([*base, f"image={tmp_path}/nope.jpg"]))
    with pytest.raises(UserError, match="unknown figure pictures"):
        script.run(compose_explore([*base, f"image={photo}", "figures=[content,pictures]"]))
    with pytest.raises(UserError, match="unknown style layer conv6_1: vgg16 has"):
        script.run(compose_explore([*base, f"image={photo}", "style_layers=[conv1_1,conv6_1]"]))
    with pytest.raises(UserError, match="the image is 32x26 px, too small for vgg16 down to pool5: .* 32 px"):
        script.run(compose_explore([*base, f"image={tmp_path}/small.png"]))


def test_script_run_in_process(tmp_path):
    script = load_script("explore")
    photo = random_photo(tmp_path / "p.png", (32, 40))
    out = tmp_path / "figs"
    written = script.run(compose_explore([
        "loss=vgg16", "loss.weights=random", "size=40", f"image={photo}", f"output={out}", "steps=2", "deep_steps=1",
        "top_k=3", "feature_layers=[conv1_2,conv3_1]", "loss.content_layer=conv3_1"]))
    assert {name: path.name for name, path in written.items()} == {
        "content_reconstructions": "content_reconstructions.png", "style_reconstructions": "style_reconstructions.png",
        "feature_maps": "feature_maps.png"}
    assert all(path.parent == out and path.is_file() for path in written.values())
    assert all(Image.open(path).mode == "RGB" for path in written.values())
    # the photo + 6 content reconstructions: 4 + 3 tiles of 32 px; 5 style sets: 3 + 3; features: 2 rows of 1 + 3
    assert Image.open(written["content_reconstructions"]).width == 4 * 32 + 5 * 6
    assert Image.open(written["style_reconstructions"]).width == 3 * 32 + 4 * 6
    assert Image.open(written["feature_maps"]).width == 4 * 32 + 5 * 6
    table = (out / "layers.txt").read_text(encoding="utf-8").splitlines()
    assert "uses conv3_1 for content and relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 for style" in table[0]
    assert table[1].split()[:3] == ["layer", "index", "output"] and len(table) == 3 + 31
    assert [line.split()[0] for line in table[3:] if line.rstrip().endswith(("content", "×0.4"))] == ["conv3_1", "relu3_1"]
    assert not (out / "tensorboard").exists()


@pytest.mark.slow
def test_script_end_to_end(tmp_path):
    photo = random_photo(tmp_path / "photo.png", (48, 40), seed=1)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "explore.py"), f"image={photo}", "loss=vgg16", "loss.weights=random",
         "size=40", "steps=3", "deep_steps=2", "top_k=2", "log_every=1", "tensorboard=true", "palette=true",
         "content_layers=[conv1_1,conv4_2]", "style_layers=[conv1_1,conv2_1,conv4_1]",
         "feature_layers=[conv2_1,pool4]", f"hydra.run.dir={tmp_path}/hydra"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "outputs" / "explore" / "photo"
    for name in ("content_reconstructions", "style_reconstructions", "feature_maps"):
        assert f"Wrote {out.relative_to(tmp_path)}/{name}.png" in proc.stdout
        assert Image.open(out / f"{name}.png").mode == "P"  # palette=true
    table = (out / "layers.txt").read_text(encoding="utf-8")
    assert table.startswith("vgg16 (random) on photo.png at 40x33 px: 31 layers") and "conv4_2     19" in table
    assert "conv4_2     19  512×4×5" in proc.stdout
    assert "content conv4_2: loss" in proc.stdout and "style conv1_1 + conv2_1 + conv4_1: loss" in proc.stdout
    assert "[content 2/2] conv4_2: 2 lbfgs steps" in proc.stderr and "step 2/2" in proc.stderr
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # the content figure: the photo + 2 reconstructions in one row of 40-px tiles
    assert Image.open(out / "content_reconstructions.png").width == 3 * 40 + 4 * 6
