"""The evaluation's metrics react to what they claim to measure, and only to that."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import OFFLINE_VGG16, SHARED_CONTENT, SHARED_STYLES, needs_shared
from kornia.filters import gaussian_blur2d

from hrstyle.evaluation import METRIC_KEYS, StyleMetrics, edge_ssim, photorealism_residual, ssim
from hrstyle.image.guided import guided_filter
from hrstyle.image.io import load_image


def _photo(size: int = 96, seed: int = 0) -> torch.Tensor:
    """A photo-like (1, 3, size, size) image: smooth shapes with edges and mild noise."""
    if SHARED_CONTENT.is_dir():
        return load_image(SHARED_CONTENT / "fps_in81.png", size)[None][..., :size, :size]
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([xx, yy, (xx + yy) / 2])
    for _ in range(6):  # a few rectangles: edges
        x0, y0 = torch.randint(0, size - 20, (2,), generator=g)
        img[:, y0 : y0 + 20, x0 : x0 + 20] = torch.rand(3, 1, 1, generator=g)
    return (img + 0.02 * torch.randn(img.shape, generator=g)).clamp(0, 1)[None]


def _gain_offset(x: torch.Tensor) -> torch.Tensor:
    gain, offset = torch.tensor([0.8, 1.1, 0.6]).view(1, 3, 1, 1), torch.tensor([0.1, -0.05, 0.2]).view(1, 3, 1, 1)
    return (x * gain + offset).clamp(0, 1)


def test_identical_images_are_perfect() -> None:
    x = _photo()
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert edge_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert photorealism_residual(x, x).item() < 0.01


def test_blur_lowers_edge_ssim_more_than_a_colour_shift() -> None:
    x = _photo()
    blurred = gaussian_blur2d(x, (9, 9), (2.0, 2.0))
    shifted = _gain_offset(x)
    assert edge_ssim(blurred, x).item() < edge_ssim(shifted, x).item() - 0.15
    assert edge_ssim(shifted, x).item() > 0.9
    # A darker exposure keeps every edge where it was: not an edge change.
    assert edge_ssim(x * 0.4, x).item() > 0.98


def test_photorealism_residual_accepts_recolouring_and_rejects_invented_texture() -> None:
    x = _photo()
    recoloured = _gain_offset(x)
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    stripes = (x + 0.08 * torch.sin(torch.arange(x.shape[-1]) * 2.0)).clamp(0, 1)
    base = photorealism_residual(recoloured, x).item()
    assert base < 0.02
    assert photorealism_residual(noisy, x).item() > base + 0.1
    assert photorealism_residual(stripes, x).item() > base + 0.1
    # A flat field is an affine transform too (A = 0): not penalised here (edge-SSIM catches it).
    flat = x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    assert photorealism_residual(flat, x).item() < 0.01


def test_local_recolouring_is_photorealistic() -> None:
    """A colour transform that varies slowly across the image is still ~0."""
    x = _photo()
    ramp = torch.linspace(0.5, 1.0, x.shape[-1]).view(1, 1, 1, -1)
    local = (x * ramp * torch.tensor([1.0, 0.7, 0.9]).view(1, 3, 1, 1)).clamp(0, 1)
    assert photorealism_residual(local, x).item() < 0.02


def test_guided_filter_removes_invented_stripes_and_is_exact_in_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _photo()
    stripes = (_gain_offset(x) + 0.08 * torch.sin(torch.arange(x.shape[-1]) * 2.0)).clamp(0, 1)
    filtered = guided_filter(stripes, x, radius=4, eps=1e-3)
    assert photorealism_residual(filtered, x).item() < photorealism_residual(stripes, x).item() / 3
    assert edge_ssim(filtered, x).item() > edge_ssim(stripes, x).item()
    assert guided_filter(stripes, x, radius=0) is stripes
    import hrstyle.image.guided as photoreal

    monkeypatch.setattr(photoreal, "STRIP_PIXELS", x.shape[-1] * 10)  # force strips of ~17 rows
    strips = photoreal.guided_filter(stripes, x, radius=4, eps=1e-3)
    assert torch.allclose(strips, filtered, atol=1e-5)


def _metrics(weights: str = "random") -> StyleMetrics:
    return StyleMetrics(arch="vgg16", weights=weights)


def test_style_metrics_keys_shapes_and_identity() -> None:
    x = torch.cat([_photo(64), _photo(64).flip(-1)])
    metrics = _metrics()
    with pytest.raises(RuntimeError, match="set_style"):
        metrics(x, x)
    metrics.set_style(_photo(64, seed=3))
    result = metrics(x, x)
    assert set(result) == set(METRIC_KEYS)
    assert all(v.shape == (2,) and torch.isfinite(v).all() for v in result.values())
    assert torch.allclose(result["content"], torch.zeros(2), atol=1e-6)
    metrics.set_style(x[:1])
    assert metrics(x[:1], x[:1])["gram"].item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        metrics(x, x[:1])


def _texture(size: int) -> torch.Tensor:
    """A stationary texture: a periodic pattern with a 16 px period, any size."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    r = 0.5 + 0.4 * torch.sin(2 * math.pi * xx / 16)
    g = 0.5 + 0.4 * torch.sin(2 * math.pi * (xx + yy) / 16)
    b = 0.5 + 0.4 * torch.cos(2 * math.pi * yy / 16)
    return torch.stack([r, g, b])[None]


@needs_shared
def test_gram_distance_is_size_independent_for_a_stationary_texture() -> None:
    metrics = _metrics(str(OFFLINE_VGG16))
    metrics.set_style(_texture(128))
    with torch.no_grad():
        bigger = metrics.gram_distance(metrics.encoder(_texture(192))).item()
        other = metrics.gram_distance(metrics.encoder(_photo(128))).item()
    assert bigger < 0.1  # the same texture over a larger area: nearly the same Gram matrices
    assert other > 5 * bigger


@needs_shared
def test_style_metrics_on_real_photos_rank_a_stylization() -> None:
    """The style image itself is close in Gram distance, far in content; the photo the reverse."""
    metrics = _metrics(str(OFFLINE_VGG16))
    photo = load_image(SHARED_CONTENT / "fps_in81.png", 128)[None]
    style = F.interpolate(load_image(SHARED_STYLES / "fps_style1.png", 128)[None], size=photo.shape[-2:], mode="bilinear")
    metrics.set_style(style)
    as_photo, as_style = metrics(photo, photo), metrics(style, photo)
    assert as_style["gram"] < as_photo["gram"] / 5
    assert as_style["content"] > as_photo["content"] + 0.3
    assert as_style["photorealism"] > 0.3 > as_photo["photorealism"]
