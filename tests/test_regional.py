"""The regional colour distance (hrstyle.evaluation.regional): Gaussian W2 in CIELAB per matching region."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from hrstyle.evaluation.regional import (
    find_label_map,
    gaussian_w2,
    load_label_map,
    region_distances,
    regional_color_distance,
)


def two_regions(h: int = 64, w: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 3, h, w) image with a noisy bluish top (label 1) and a noisy greenish bottom (label 2)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.empty(1, 3, h, w)
    image[:, :, : h // 2] = torch.tensor([0.3, 0.5, 0.8])[:, None, None]
    image[:, :, h // 2 :] = torch.tensor([0.3, 0.6, 0.2])[:, None, None]
    image += 0.05 * torch.randn(image.shape, generator=g)
    labels = torch.ones(h, w, dtype=torch.long)
    labels[h // 2 :] = 2
    return image.clamp(0, 1), labels


def test_gaussian_w2_of_identical_and_shifted_gaussians():
    cov = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]], dtype=torch.float64)
    mean = torch.tensor([50.0, 3.0, -4.0], dtype=torch.float64)
    assert gaussian_w2((mean, cov), (mean, cov)) == pytest.approx(0.0, abs=1e-6)
    # Same covariance: the distance is the distance between the means.
    assert gaussian_w2((mean, cov), (mean + torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64), cov)) == pytest.approx(5.0)
    # 1-D scale: W2 between N(0, 1) and N(0, 4) along one axis is |1 - 2| = 1.
    a = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    b = torch.diag(torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64))
    assert gaussian_w2((torch.zeros(3, dtype=torch.float64), a), (torch.zeros(3, dtype=torch.float64), b)) == pytest.approx(1.0, abs=1e-4)


def test_identical_regions_give_zero():
    image, labels = two_regions()
    assert regional_color_distance(image, image, labels, labels) == pytest.approx(0.0, abs=1e-3)
    # The same region statistics in a differently arranged style image: still 0.
    flipped = image.flip(-2)
    assert regional_color_distance(image, flipped, labels, labels.flip(-2)) == pytest.approx(0.0, abs=1e-3)
    # A different photo gives a clearly positive distance.
    assert regional_color_distance(image.flip(-2), image, labels, labels) > 20


def test_a_shift_onto_one_regions_colours_lowers_that_region():
    photo, labels = two_regions(seed=1)
    style = photo.clone()
    style[:, :, :32] += torch.tensor([0.2, 0.1, -0.2])[:, None, None]  # the style's sky is warmer
    style = style.clamp(0, 1)
    before = region_distances(photo, style, labels, labels)
    shifted = (photo + torch.tensor([0.2, 0.1, -0.2])[:, None, None]).clamp(0, 1)  # a global grade
    after = region_distances(shifted, style, labels, labels)
    assert after[1][1] < before[1][1] / 5  # the matched region moved onto the style's
    assert after[2][1] > before[2][1]  # the other region moved away: a global grade cannot do both
    assert before[1][0] == pytest.approx(0.5)


def test_labels_under_two_percent_are_ignored():
    photo, labels = two_regions(h=100, w=100, seed=2)
    style, style_labels = two_regions(h=100, w=100, seed=3)
    base = regional_color_distance(photo, style, labels, style_labels)
    odd_photo, odd_labels = photo.clone(), labels.clone()
    odd_photo[:, :, :1, :] = torch.tensor([1.0, 0.0, 1.0])[:, None, None]  # 1% of the photo, magenta, label 9
    odd_labels[:1, :] = 9
    odd_style_labels = style_labels.clone()
    odd_style_labels[:50] = 9  # label 9 is half of the style
    regions = region_distances(odd_photo, style, odd_labels, odd_style_labels)
    assert 9 not in regions
    # At 3% of the photo the same label counts, and moves the mean.
    odd_labels[:3, :] = 9
    odd_photo[:, :, :3, :] = torch.tensor([1.0, 0.0, 1.0])[:, None, None]
    assert 9 in region_distances(odd_photo, style, odd_labels, odd_style_labels)
    assert math.isfinite(base)


def test_no_common_region_gives_nan():
    photo, labels = two_regions()
    assert math.isnan(regional_color_distance(photo, photo, labels, labels + 10))


def test_masks_of_other_sizes_are_resized_nearest_neighbour():
    photo, labels = two_regions(h=64, w=96, seed=4)
    style, style_labels = two_regions(h=80, w=40, seed=5)
    full = regional_color_distance(photo, style, labels, style_labels)
    small = regional_color_distance(photo, style, labels[::4, ::4], style_labels[::2, ::2])
    assert small == pytest.approx(full, rel=1e-6)
    # Nearest neighbour: no label in between is invented (a blend of 1 and 2 would be a new region 1.5 → 1 or 2).
    big = torch.nn.functional.interpolate(labels[None, None].double(), size=(127, 190), mode="nearest-exact")
    assert set(torch.unique(big).tolist()) == {1.0, 2.0}
    assert regional_color_distance(photo, style, big[0, 0].long(), style_labels) == pytest.approx(full, rel=0.05)


def test_label_maps_load_and_match_by_file_name(tmp_path):
    ids = np.zeros((8, 10), np.uint8)
    ids[4:] = 7
    Image.fromarray(ids, mode="L").save(tmp_path / "photo.png")
    Image.fromarray(np.stack([ids * 30] * 3, -1), mode="RGB").save(tmp_path / "other.png")
    loaded = load_label_map(tmp_path / "photo.png")
    assert loaded.shape == (8, 10) and set(torch.unique(loaded).tolist()) == {0, 7}
    assert len(torch.unique(load_label_map(tmp_path / "other.png"))) == 2  # an RGB map: one id per colour
    assert find_label_map(tmp_path, "/elsewhere/photo.jpg") == tmp_path / "photo.png"
    assert find_label_map(tmp_path, "missing.jpg") is None
