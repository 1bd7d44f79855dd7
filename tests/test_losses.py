import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import OFFLINE_VGG16, needs_shared
from torch import nn
from torchvision import models

from hrstyle.errors import UserError
from hrstyle.losses import ContentStyleLoss, VGGFeatures, WeightsUnavailableError, gram_matrix, layer_names


def test_gram_matrix_equals_explicit_per_sample_loop():
    feats = torch.randn(3, 5, 7, 6)
    gram = gram_matrix(feats)
    assert gram.shape == (3, 5, 5)
    for i in range(3):
        f = feats[i].reshape(5, -1)
        torch.testing.assert_close(gram[i], f @ f.T / (5 * 7 * 6))


def test_gram_matrix_is_batch_independent():
    a, b = torch.randn(1, 4, 9, 9), torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(gram_matrix(torch.cat([a, b]))[1:], gram_matrix(b))


def test_gram_matrix_scale_does_not_depend_on_image_size():
    # A tiled (repeated) feature map has the same statistics, hence the same Gram matrix.
    feats = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(gram_matrix(feats.repeat(1, 1, 3, 2)), gram_matrix(feats))


def test_layer_names_follow_the_vgg_blocks():
    names16 = layer_names(models.vgg16().features)
    names19 = layer_names(models.vgg19().features)
    # The classic index tables: conv4_2 is features[21] in VGG19 and features[19] in VGG16.
    assert names19.index("conv4_2") == 21 and names19.index("conv5_1") == 28 and names19.index("pool3") == 18
    assert names16.index("conv4_2") == 19 and names16.index("conv5_1") == 24 and names16.index("relu3_1") == 11
    assert len(names19) == 37 and len(names16) == 31


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_named_features_equal_a_manual_forward(arch):
    torch.manual_seed(0)
    enc = VGGFeatures(["conv1_1", "relu2_1", "conv3_1", "conv4_2", "pool3"], arch=arch, weights="random")
    # Rebuild the same network from torchvision and walk it by hand, with enc's weights.
    ref = models.get_model(arch, weights=None).features
    ref.load_state_dict({k: v for k, v in enc.body.state_dict(keep_vars=True).items()} | {}, strict=False)
    for i, m in enumerate(enc.body):
        if isinstance(m, nn.Conv2d):
            ref[i].weight.data.copy_(m.weight)
            ref[i].bias.data.copy_(m.bias)
    x = torch.rand(2, 3, 40, 36)
    h = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    manual = {}
    index = {"vgg19": {"conv1_1": 0, "relu2_1": 6, "pool3": 18, "conv3_1": 10, "conv4_2": 21},
             "vgg16": {"conv1_1": 0, "relu2_1": 6, "pool3": 16, "conv3_1": 10, "conv4_2": 19}}[arch]
    for i, m in enumerate(ref[: max(index.values()) + 1]):
        h = m(h)
        for name, j in index.items():
            if i == j:
                manual[name] = h.clone()  # clone: torchvision's ReLUs are in-place
    out = enc(x)
    assert set(out) == set(index)
    for name in index:
        torch.testing.assert_close(out[name], manual[name], atol=1e-5, rtol=1e-5)


def test_truncated_after_deepest_layer_and_no_inplace_relu():
    enc = VGGFeatures(["conv1_1", "conv3_1"], arch="vgg19", weights="random")
    assert enc.names[-1] == "conv3_1" and len(enc.body) == 11
    assert not any(getattr(m, "inplace", False) for m in enc.body)
    # The conv output is stored before the ReLU that follows it: it keeps its negatives.
    enc2 = VGGFeatures(["conv1_1", "relu1_1"], weights="random")
    out = enc2(torch.rand(1, 3, 16, 16))
    assert (out["conv1_1"] < 0).any() and torch.equal(out["relu1_1"], out["conv1_1"].clamp_min(0))


def test_loss_network_is_frozen_and_not_in_the_state_dict():
    enc = VGGFeatures(["conv2_1"], weights="random")
    assert list(enc.parameters()) == [] and enc.state_dict() == {}
    enc.train()
    assert not enc.training


def test_unknown_layer_is_an_error():
    with pytest.raises(UserError, match="no layer"):
        VGGFeatures(["conv4_5"], arch="vgg19", weights="random")
    with pytest.raises(UserError, match="conv5_4"):
        VGGFeatures(["conv5_4"], arch="vgg16", weights="random")
    with pytest.raises(UserError, match="arch"):
        VGGFeatures(["conv1_1"], arch="resnet50", weights="random")


def test_imagenet_download_failure_explains_how_to_pass_a_local_file(monkeypatch):
    # What torchvision's download raises on a machine without internet (also when cached
    # weights exist on this machine, the download function is what fails here).
    def offline(url, *args, **kwargs):
        raise OSError(f"<urlopen error [Errno -2] Name or service not known> ({url})")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        VGGFeatures(["conv4_2"], arch="vgg19", weights="imagenet")
    message = str(info.value)
    assert "loss.weights=" in message and "vgg19-dcbb9e9d.pth" in message and "Name or service" in message


def test_local_weights_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        VGGFeatures(["conv1_1"], weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not read"):
        VGGFeatures(["conv1_1"], weights=str(bad))
    partial = tmp_path / "partial.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}, partial)
    VGGFeatures(["conv1_1"], weights=str(partial))  # enough for conv1_1
    with pytest.raises(UserError, match="lacks"):
        VGGFeatures(["conv2_1"], weights=str(partial))


def test_local_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    ref = models.vgg16().features
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in ref.state_dict().items()}, path)
    enc = VGGFeatures(["conv3_1"], arch="vgg16", weights=str(path))
    torch.testing.assert_close(enc.body[10].weight, ref[10].weight)


@needs_shared
def test_offline_vgg16_loads_and_gives_meaningful_features():
    enc = VGGFeatures(["conv4_2"], arch="vgg16", weights=str(OFFLINE_VGG16))
    x = torch.rand(1, 3, 64, 64)
    assert enc(x)["conv4_2"].abs().mean() > 0
    with pytest.raises(UserError, match="lacks|shape"):
        VGGFeatures(["conv5_4"], arch="vgg19", weights=str(OFFLINE_VGG16))


def test_content_style_loss_terms():
    torch.manual_seed(0)
    loss = ContentStyleLoss(arch="vgg16", weights="random", tv_weight=0.5)
    style = torch.rand(1, 3, 48, 48)
    loss.set_style(style)
    content = torch.rand(2, 3, 48, 48)
    same = loss(content, content)
    assert same["content_loss"] == 0 and same["style_loss"] > 0
    # The style image itself has (up to float error) zero style loss.
    on_style = loss(style, torch.rand(1, 3, 48, 48))
    assert on_style["style_loss"] < 1e-6
    total = loss.content_weight * same["content_loss"] + loss.style_weight * same["style_loss"] + 0.5 * same["tv_loss"]
    torch.testing.assert_close(same["loss"], total)


def test_loss_is_per_sample():
    torch.manual_seed(0)
    loss = ContentStyleLoss(arch="vgg16", weights="random", style_layers={"conv1_1": 1.0, "conv2_1": 1.0})
    loss.set_style(torch.rand(1, 3, 32, 32))
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    ca, cb = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    both = loss(torch.cat([a, b]), torch.cat([ca, cb]))
    mean = {k: (loss(a, ca)[k] + loss(b, cb)[k]) / 2 for k in ("content_loss", "style_loss")}
    torch.testing.assert_close(both["style_loss"], mean["style_loss"], rtol=1e-4, atol=1e-6)


def test_unnormalized_losses_are_the_raw_paper_terms():
    torch.manual_seed(0)
    loss = ContentStyleLoss(weights="random", arch="vgg16", style_layers={"conv1_1": 0.5}, normalize=False)
    style = torch.rand(1, 3, 32, 32)
    loss.set_style(style)
    out, content = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    terms = loss(out, content)
    f_out, f_c, f_s = loss.encoder(out), loss.encoder(content), loss.encoder(style)
    torch.testing.assert_close(terms["content_loss"], F.mse_loss(f_out["conv4_2"], f_c["conv4_2"]))
    torch.testing.assert_close(
        terms["style_loss"], 0.5 * F.mse_loss(gram_matrix(f_out["conv1_1"]), gram_matrix(f_s["conv1_1"]))
    )


def test_style_layers_as_lists_or_mapping():
    as_lists = ContentStyleLoss(weights="random", arch="vgg16", style_layers=["conv1_1", "relu2_1"],
                                style_layer_weights=[0.5, 2])
    assert as_lists.style_layers == {"conv1_1": 0.5, "relu2_1": 2.0}
    assert ContentStyleLoss(weights="random", arch="vgg16", style_layers=["conv1_1"]).style_layers == {"conv1_1": 1.0}
    with pytest.raises(UserError, match="2 entries"):
        ContentStyleLoss(weights="random", arch="vgg16", style_layers=["conv1_1", "conv2_1"], style_layer_weights=[1])
    with pytest.raises(UserError, match="empty"):
        ContentStyleLoss(weights="random", arch="vgg16", style_layers=[])


def test_loss_requires_a_style_and_valid_weights():
    loss = ContentStyleLoss(weights="random", arch="vgg16", style_layers={"conv1_1": 1.0})
    with pytest.raises(RuntimeError, match="set_style"):
        loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(UserError, match="style_weight"):
        ContentStyleLoss(weights="random", arch="vgg16", style_weight=-1)


def test_photoreal_term_penalizes_invented_texture_and_trains():
    loss = ContentStyleLoss(arch="vgg16", weights="random", content_layer="conv2_2",
                            style_layers=["conv1_1"], photoreal_weight=2.0)
    loss.set_style(torch.rand(1, 3, 32, 32))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    photo = torch.stack([xx, yy, (xx * yy)]).unsqueeze(0)
    recoloured = loss(photo * 0.7 + 0.1, photo)
    noisy = (photo + 0.1 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    textured = loss(noisy, photo)
    assert recoloured["photoreal_loss"] < 0.02 < 0.3 < textured["photoreal_loss"]
    # Only there when its weight is > 0; it has a gradient.
    no_term = ContentStyleLoss(arch="vgg16", weights="random", content_layer="conv2_2", style_layers=["conv1_1"])
    no_term.set_style(torch.rand(1, 3, 32, 32))
    assert "photoreal_loss" not in no_term(noisy, photo)
    image = noisy.clone().requires_grad_(True)
    loss(image, photo)["photoreal_loss"].backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    with pytest.raises(UserError, match="photoreal_weight"):
        ContentStyleLoss(arch="vgg16", weights="random", photoreal_weight=-1)


def test_sliced_wasserstein_sees_the_whole_distribution():
    from hrstyle.losses.distributions import mean_std, mean_std_distance, random_directions, sliced_wasserstein

    g = torch.Generator().manual_seed(0)
    target = torch.randn(4, 2000, generator=g)
    directions = random_directions(4, 8, torch.Generator().manual_seed(1))
    # The same samples in another order (and at another count): the same distribution, distance ~0.
    same = target[:, torch.randperm(2000, generator=g)][:, :1000].reshape(1, 4, 40, 25)
    assert sliced_wasserstein(same, target, directions).item() < 0.01
    # Same mean and std per channel, another shape (two points at ±1): mean/std see nothing, SW does.
    two_points = (torch.randint(0, 2, (1, 4, 1000), generator=g).float() * 2 - 1)
    assert mean_std_distance(two_points, mean_std(target[None])).item() < 0.01
    assert sliced_wasserstein(two_points, target, directions).item() > 0.05
    # Per sample: the batch dimension is kept.
    batch = torch.cat([same.reshape(1, 4, -1), two_points])
    values = sliced_wasserstein(batch, target, directions)
    assert values.shape == (2,) and values[0] < values[1]


@pytest.mark.parametrize("statistic", ["gram", "mean_std", "sliced_wasserstein"])
def test_style_statistics_are_zero_at_the_style_and_train(statistic):
    torch.manual_seed(0)
    loss = ContentStyleLoss(weights="random", arch="vgg16", style_layers=["relu1_1", "relu2_1"],
                            content_layer="relu2_1", style_statistic=statistic, color_distribution_weight=1.0)
    style = torch.rand(1, 3, 32, 32)
    loss.set_style(style)
    at_style = loss(style, style, seed=0)
    assert at_style["style_loss"].item() < 1e-3 and at_style["color_distribution_loss"].item() < 1e-3
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    first = loss(x, x.detach(), seed=0)
    assert loss(x, x.detach(), seed=0)["loss"].item() == first["loss"].item()  # the seed fixes the projections
    first["loss"].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(UserError, match="style_statistic"):
        ContentStyleLoss(weights="random", arch="vgg16", style_statistic="histogram")


@needs_shared
def test_darkening_a_photo_darker_than_the_style_raises_the_colour_distribution_term():
    """Why the colour-distribution term: whatever the feature statistics reward (a darker picture has
    less texture, which a smooth style photo also lacks), the style's colours are a target that a
    darker picture only moves away from when the photo is already darker than the style."""
    from hrstyle.image.io import load_image

    photo = load_image(str(OFFLINE_VGG16.parent.parent / "data" / "content" / "fps_in81.png"), max_size=128)[None]
    style = load_image(str(OFFLINE_VGG16.parent.parent / "data" / "styles" / "fps_in81.png"), max_size=128)[None]
    loss = ContentStyleLoss(weights=str(OFFLINE_VGG16), arch="vgg16", style_statistic="sliced_wasserstein",
                            color_distribution_weight=1.0)
    loss.set_style(style)
    terms = [loss(photo * gain, photo, seed=0)["color_distribution_loss"].item() for gain in (1.0, 0.8, 0.6)]
    assert terms[0] < terms[1] < terms[2]


def _photo_128():
    from hrstyle.image.io import load_image

    return load_image(str(OFFLINE_VGG16.parent.parent / "data" / "content" / "fps_in81.png"), max_size=128)[None]


@needs_shared
def test_correspondence_targets_give_each_cell_of_the_style_its_own_colour():
    """Matched against itself, every cell of a photo finds cells that look like it: the targets are the photo's
    own regional colours, far closer to them than the photo's mean colour."""
    from hrstyle.losses.perceptual import _cell_features, _lab, correspondence_targets
    from hrstyle.losses.vgg import VGGFeatures

    photo = _photo_128()
    features = VGGFeatures(["relu4_1"], arch="vgg16", weights=str(OFFLINE_VGG16))(photo)["relu4_1"]
    cell_lab = _lab(F.adaptive_avg_pool2d(photo, features.shape[-2:]))
    targets = correspondence_targets(features, _cell_features(features), cell_lab)
    assert targets.shape == cell_lab.shape
    error = (targets - cell_lab).abs().mean()
    global_error = (cell_lab.mean(dim=2, keepdim=True) - cell_lab).abs().mean()
    assert error < 0.4 * global_error


@needs_shared
def test_correspondence_colour_term_rewards_the_regional_change_over_a_global_one():
    """A style whose sky is red and whose ground is green: the photo recoloured region by region scores lower
    than the photo moved globally onto the style's colour statistics (what a colour grade can do); at weight 0
    the term is off."""
    from hrstyle.image.color import color_statistics, match_color

    photo = _photo_128()
    top = torch.zeros_like(photo[:, :1])
    top[..., : photo.shape[-2] // 2, :] = 1.0
    regional = (photo * (top * torch.tensor([1.0, 0.5, 0.5]).view(1, 3, 1, 1)
                         + (1 - top) * torch.tensor([0.5, 1.0, 0.5]).view(1, 3, 1, 1))).clamp(0, 1)
    loss = ContentStyleLoss(weights=str(OFFLINE_VGG16), arch="vgg16", correspondence_color_weight=1.0)
    loss.set_style(regional)
    graded = match_color(photo.clone(), color_statistics(regional), 1.0)
    scores = {name: loss(x, photo, seed=0)["correspondence_color_loss"].item()
              for name, x in (("regional", regional), ("graded", graded), ("photo", photo))}
    assert scores["regional"] < 0.5 * scores["graded"] < scores["photo"]
    off = ContentStyleLoss(weights=str(OFFLINE_VGG16), arch="vgg16")
    off.set_style(regional)
    assert "correspondence_color_loss" not in off(photo, photo, seed=0)


def _two_colour(top: list[float], bottom: list[float], top_rows: int, seed: int) -> torch.Tensor:
    """A 64 px image of two flat colours (with a little noise), ``top`` on the first ``top_rows`` rows."""
    image = torch.empty(1, 3, 64, 64)
    image[..., :top_rows, :] = torch.tensor(top).view(1, 3, 1, 1)
    image[..., top_rows:, :] = torch.tensor(bottom).view(1, 3, 1, 1)
    return (image + 0.01 * torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def test_palette_targets_give_each_region_a_style_colour_whatever_the_proportions():
    """A red-and-blue style in equal parts, a photo of orange sky over three times as much cyan sea: the global
    transfer (one linear map onto the style's mean and covariance) cannot give both regions a style colour when
    the proportions differ; the palette targets give each region the style colour nearest to its transfer."""
    from hrstyle.image.color import banded_color_statistics, color_statistics, match_color
    from hrstyle.losses.distributions import target_samples
    from hrstyle.losses.perceptual import _lab, palette_targets

    style = _two_colour([0.8, 0.3, 0.2], [0.2, 0.3, 0.7], 32, seed=0)
    photo = _two_colour([0.9, 0.6, 0.3], [0.3, 0.7, 0.7], 16, seed=1)
    targets = palette_targets(photo, banded_color_statistics(style, 1), target_samples(_lab(style)[..., None]))
    assert targets.shape == (1, 3, 16 * 16)  # 4 px cells
    cells = targets.reshape(1, 3, 16, 16)
    red, blue = _lab(style[..., :32, :]).mean(-1), _lab(style[..., 32:, :]).mean(-1)
    transfer = match_color(photo, color_statistics(style), 1.0).clamp(0, 1)
    for rows, colour in ((slice(0, 4), red), (slice(4, 16), blue)):  # CIELAB / 100: 0.02 = 2 units
        assert (cells[..., rows, :].mean(dim=(2, 3)) - colour).norm() < 0.02
    assert (_lab(transfer[..., :16, :]).mean(-1) - red).norm() > 0.2  # the transfer's sky: 30 units off


@needs_shared
def test_palette_term_is_low_at_its_targets_and_prefers_them_to_the_global_transfer():
    """The photo's two regions in the style's two colours score near 0; the global transfer (which gives the
    smaller region a colour the style does not have) far more, the photo itself most; weight 0 is off."""
    from hrstyle.image.color import color_statistics, match_color

    style = _two_colour([0.8, 0.3, 0.2], [0.2, 0.3, 0.7], 32, seed=0)
    photo = _two_colour([0.9, 0.6, 0.3], [0.3, 0.7, 0.7], 16, seed=1)
    loss = ContentStyleLoss(weights=str(OFFLINE_VGG16), arch="vgg16", palette_weight=1.0)
    loss.set_style(style)
    palette = photo.clone()  # the photo's regions in the style's colours, with the photo's noise
    for region, style_region in ((slice(0, 16), slice(0, 32)), (slice(16, 64), slice(32, 64))):
        pixels = photo[..., region, :]
        palette[..., region, :] = pixels - pixels.mean(dim=(2, 3), keepdim=True) + style[..., style_region, :].mean(dim=(2, 3), keepdim=True)
    transfer = match_color(photo, color_statistics(style), 1.0).clamp(0, 1)
    scores = {name: loss(x, photo, seed=0)["palette_loss"].item()
              for name, x in (("palette", palette.clamp(0, 1)), ("transfer", transfer), ("photo", photo))}
    assert scores["palette"] < 0.05 * scores["transfer"] < scores["photo"]
    off = ContentStyleLoss(weights=str(OFFLINE_VGG16), arch="vgg16")
    off.set_style(style)
    assert "palette_loss" not in off(photo, photo, seed=0)


def test_palette_bands_look_each_band_up_in_the_same_band_of_the_style():
    """``palette_bands`` > 1: the targets come from the graduated transfer (the photo's top matched to the style's
    top), so a photo whose bright half is below gets the style's bright colour below, which the global transfer
    (which keeps the photo's order) cannot give."""
    from hrstyle.image.color import banded_color_statistics
    from hrstyle.losses.distributions import target_samples
    from hrstyle.losses.perceptual import _lab, palette_targets

    style = _two_colour([0.15, 0.2, 0.35], [0.9, 0.9, 0.95], 32, seed=0)  # dark sky over snow
    photo = _two_colour([0.5, 0.6, 0.8], [0.2, 0.45, 0.15], 32, seed=1)  # bright sky over dark grass
    samples = target_samples(_lab(style)[..., None])
    snow = _lab(style[..., 32:, :]).mean(-1)
    ground = {name: palette_targets(photo, stats, samples).reshape(1, 3, 16, 16)[..., 10:, :].mean(dim=(2, 3))
              for name, stats in (("graded", banded_color_statistics(style, 8)), ("global", banded_color_statistics(style, 1)))}
    assert (ground["graded"] - snow).norm() < 0.05 < (ground["global"] - snow).norm()
    loss = ContentStyleLoss(weights="random", arch="vgg16", palette_weight=1.0, palette_bands=8)
    loss.set_style(style)
    assert loss.style_palette_statistics[0].shape == (8, 3)
    with pytest.raises(UserError, match="palette_bands"):
        ContentStyleLoss(weights="random", arch="vgg16", palette_bands=0)
