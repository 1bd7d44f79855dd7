"""The CPU preset learns a style that survives photos it never saw (slow: trains for real)."""

from __future__ import annotations

import pytest
import torch
from helpers import OFFLINE_VGG16, SHARED, SHARED_CONTENT, SHARED_STYLES, compose_train, needs_shared

from hrstyle.evaluation import StyleMetrics
from hrstyle.image.io import load_image
from hrstyle.inference import Stylizer, load_generator
from hrstyle.training.train import train

TRAIN_PHOTOS = SHARED / "data" / "train"


@pytest.fixture(scope="module")
def winter_run(tmp_path_factory):
    """The CPU preset of the photo recipe, stopped at half its 600 steps (about 5 minutes on 2 cores; the
    learning-rate schedule does not depend on the length, so this is the preset's own step-300 state), on the
    training photos with the snowy-valley style: one run for both tests. At step 300 the regional distance is
    17.3 against the transfer's 20.9 (16.9 at step 600), every other score within 0.02 of step 600's."""
    tmp_path = tmp_path_factory.mktemp("recipe")
    cfg = compose_train([
        "experiment=cpu_quick", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "trainer.max_steps=300", "trainer.val_check_interval=300",
        "data.num_workers=0",
        "loss=vgg16", f"loss.weights={OFFLINE_VGG16}", f"data.content={TRAIN_PHOTOS}",
        "style=custom", f"style.image={SHARED_STYLES / 'fps_in81.png'}",
    ], tmp_path / "run")
    return train(cfg)["last_checkpoint"], tmp_path


@pytest.mark.slow
@needs_shared
def test_cpu_preset_keeps_structure_and_takes_the_style_on_unseen_photos(winter_run):
    """The CPU-preset network scored on three photos of the evaluation set: the edges must survive (a
    collapsed output — flat colour fields, stripes — scores far below the floor: the paper's generator
    under an old recipe scored 0.26 edge-SSIM) and the Gram distance must fall well below the photos'.
    Both on the mean of the three: one photo's Gram distance can rise under any style (a photo already
    close to the style's statistics), the mean over varied photos does not. The guided filter alone keeps
    more of the photo's structure than the network; the checkpoint's inference defaults (the guided filter,
    then the graduated colour match, which moves whole bands onto the style's and so costs some edge
    contrast) keep structure above the floor, stay well below the photos' Gram distance and are a
    photograph (photorealism residual near 0)."""
    checkpoint, tmp_path = winter_run
    generator, meta = load_generator(checkpoint)
    assert meta["generator_config"]["output"] == "residual" and meta["generator_config"]["color_branch"]
    assert meta["guided_radius"] == 8 and meta["color_match"] == 1.0 and meta["color_bands"] == 8
    assert len(meta["style_color"]["mean"]) == 3 and len(meta["style_color"]["bands"]["mean"]) == 8
    # What a user gets: the checkpoint's own inference defaults (the guided filter, the graduated match).
    stylizer = Stylizer(checkpoint, device="cpu", tile_size=0, cache_dir=tmp_path / "cache")
    guided_only = Stylizer(checkpoint, device="cpu", tile_size=0, cache_dir=tmp_path / "cache", color_match=0.0)

    metrics = StyleMetrics(arch="vgg16", weights=str(OFFLINE_VGG16))
    metrics.set_style(load_image(SHARED_STYLES / "fps_in81.png", 256)[None])
    edge, gram, gram_photo, edge_default, gram_default, real_default, edge_guided = [], [], [], [], [], [], []
    for name in ("capvst_02.jpg", "fps_in90.png", "fps_in87.png"):  # never trained on
        photo = load_image(SHARED_CONTENT / name, 192)[None]
        with torch.no_grad():
            stylized = generator(photo)
        scores, reference = metrics(stylized, photo), metrics(photo, photo)
        edge.append(scores["edge_ssim"].item())
        gram.append(scores["gram"].item())
        gram_photo.append(reference["gram"].item())
        default = metrics(stylizer(photo), photo)
        edge_guided.append(metrics(guided_only(photo), photo)["edge_ssim"].item())
        edge_default.append(default["edge_ssim"].item())
        gram_default.append(default["gram"].item())
        real_default.append(default["photorealism"].item())
    assert sum(edge) / 3 > 0.45, edge
    assert sum(gram) < 0.7 * sum(gram_photo), (gram, gram_photo)
    # The guided filter keeps more of the photo than the network alone; the defaults keep it above the floor.
    assert sum(edge_guided) / 3 > max(0.6, sum(edge) / 3), (edge_guided, edge)
    assert sum(edge_default) / 3 > 0.6, edge_default
    assert sum(gram_default) < 0.7 * sum(gram_photo), (gram_default, gram_photo)
    assert max(real_default) < 0.05, real_default


@pytest.mark.slow
@needs_shared
def test_photo_recipe_moves_each_region_towards_the_style_without_darkening(winter_run):
    """Scored on the unseen segmented photo of the snowy-valley pair (a green valley): the network alone must
    move each region closer to the style's than the global colour transfer of the photo does (the transfer:
    20.9; this recipe: 17.3 at step 300; the Gram recipe moved the regions away from the style, 42.7 against the photo's
    34.5), without darkening (the Gram recipe: 31.7 L* darker than the style), and so must what a user gets
    (the defaults)."""
    from hrstyle.evaluation.metrics import lightness_gap
    from hrstyle.evaluation.regional import load_label_map, regional_color_distance
    from hrstyle.image.color import color_statistics, match_color

    checkpoint, tmp_path = winter_run
    generator, _ = load_generator(checkpoint)
    photo = load_image(SHARED_CONTENT / "fps_in81.png", 384)[None]
    style = load_image(SHARED_STYLES / "fps_in81.png", 512)[None]
    labels = (load_label_map(SHARED / "data" / "segmentation" / "content" / "fps_in81.png"),
              load_label_map(SHARED / "data" / "segmentation" / "styles" / "fps_in81.png"))

    def regional(image: torch.Tensor) -> float:
        return regional_color_distance(image, style, *labels)

    with torch.no_grad():
        network = generator(photo).clamp(0, 1)
    default = Stylizer(checkpoint, device="cpu", tile_size=0, cache_dir=tmp_path / "cache")(photo)
    transfer = match_color(photo, color_statistics(style), 1.0)
    assert regional(network) < regional(transfer) < regional(photo), (regional(network), regional(transfer))
    assert abs(lightness_gap(network, style).item()) < 3
    # The defaults end with the graduated colour match: at most 0.7x the transfer (9.3 against 20.9 for the shipped winter).
    assert regional(default) < 0.7 * regional(transfer), (regional(default), regional(transfer))
