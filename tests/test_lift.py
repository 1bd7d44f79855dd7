"""The lift (a working-resolution stylization carried to full resolution) and ``work_size``."""

import math

import pytest
import torch
import torch.nn.functional as F

from hrstyle.checkpoint import style_color_entry
from hrstyle.errors import UserError
from hrstyle.image import lift as lift_module
from hrstyle.image.color import color_statistics, match_color
from hrstyle.image.guided import affine_field, apply_affine, box_mean, guided_filter
from hrstyle.image.lift import _field_rows, downscale, lift, upsample, working_shape
from hrstyle.inference import Stylizer, save_generator
from hrstyle.models import HRNet

#: A ridge so small that every window's fit is exact where the photo has texture (noise everywhere).
EXACT_EPS = 1e-6


def noise_photo(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, h, w): per-pixel noise around mid-grey, not correlated with position (a local linear
    fit of a field that varies over the image is then unbiased)."""
    return 0.25 + 0.5 * torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def textured_photo(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, h, w) in [0, 1]: a colour gradient plus per-pixel noise (texture in every window and at
    every scale, so no window's covariance is singular and the high frequencies are the photo's own)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])[None] * 0.5 + 0.2
    return (base + 0.3 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


def smooth_field(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A known per-pixel affine colour field, sampled at pixel centres of an (h, w) grid over the same
    scene: A(x) (1, 3, 3, h, w) near a colour-mixing matrix, b(x) (1, 3, h, w); varies over the image."""
    y = (torch.arange(h) + 0.5) / h
    x = (torch.arange(w) + 0.5) / w
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    mix = torch.tensor([[0.6, 0.2, 0.0], [0.1, 0.5, 0.2], [0.0, 0.3, 0.5]])
    wave = torch.sin(math.pi * xx) * torch.cos(math.pi * yy)
    a = mix[:, :, None, None] * (1 + 0.2 * wave) + 0.1 * torch.eye(3)[:, :, None, None] * xx
    b = torch.stack([0.1 * yy, 0.05 * wave, 0.1 - 0.05 * xx])
    return a[None], b[None]


def apply_field(a: torch.Tensor, b: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nijhw,njhw->nihw", a, photo) + b


def high_frequency_energy(image: torch.Tensor) -> float:
    """Energy of what a 3×3 box blur removes: the finest detail."""
    return (image - F.avg_pool2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), 3, 1)).pow(2).mean().item()


def test_lift_reproduces_a_known_affine_field():
    photo = noise_photo(96, 128)
    small = downscale(photo, (48, 64))
    a_small, b_small = smooth_field(48, 64)
    a_full, b_full = smooth_field(96, 128)
    out = lift(photo, small, apply_field(a_small, b_small, small), radius=3, eps=EXACT_EPS)
    expected = apply_field(a_full, b_full, photo)
    assert 0.05 < expected.min() and expected.max() < 0.95  # no clamping in the comparison
    err = (out - expected).abs()
    # The field is recovered up to its own variation within a window (radius 3 at 48×64).
    assert err.mean() < 5e-3 and err.max() < 0.05, (err.mean().item(), err.max().item())
    # ... far closer than the working-resolution result upsampled (which has none of the fine detail).
    assert (upsample(apply_field(a_small, b_small, small), (96, 128)) - expected).abs().mean() > 10 * err.mean()
    # A field that is the same everywhere is recovered exactly.
    g, c = a_small[..., :1, :1], b_small[..., :1, :1]
    out = lift(photo, small, apply_field(g, c, small), radius=3, eps=EXACT_EPS)
    torch.testing.assert_close(out, apply_field(g, c, photo), atol=1e-3, rtol=0)


def test_lift_never_blurs_the_photo():
    """Identity network (output == downscaled photo): the result is the full-resolution photo itself,
    fine texture included, where a plain upsample of the working-resolution result loses it."""
    photo = textured_photo(120, 90, seed=1)
    small = downscale(photo, (40, 30))
    out = lift(photo, small, small.clone(), radius=4, eps=EXACT_EPS)
    torch.testing.assert_close(out, photo, atol=1e-3, rtol=0)
    assert high_frequency_energy(out) == pytest.approx(high_frequency_energy(photo), rel=0.01)
    assert high_frequency_energy(upsample(small, (120, 90))) < 0.2 * high_frequency_energy(photo)
    # The default ridge (He's, eps 1e-3) dims texture that is faint at the working resolution (this
    # noise, 3× downscaled, is below eps there), as the full-resolution filter dims texture below eps;
    # the global prior pulls towards the image's transform (here the identity) and keeps all of it.
    he = lift(photo, small, small.clone(), radius=4, eps=1e-3)
    assert high_frequency_energy(he) < 0.5 * high_frequency_energy(photo)
    out = lift(photo, small, small.clone(), radius=4, eps=1e-3, prior="global")
    torch.testing.assert_close(out, photo, atol=1e-3, rtol=0)


def test_lift_at_the_same_size_is_the_guided_filter():
    photo, stylized = textured_photo(37, 53, seed=2), torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(3))
    assert torch.equal(lift(photo, photo, stylized, radius=8), guided_filter(stylized, photo, 8))
    # The global prior changes only what the windows cannot explain: close to it, not equal.
    near = (lift(photo, photo, stylized, radius=8, prior="global") - guided_filter(stylized, photo, 8)).abs()
    assert 0 < near.max() < 0.1


def test_guided_filter_equals_the_previous_implementation():
    """The shared fitting reproduces kornia's guided_blur (today's filter until this change)."""
    from kornia.filters import guided_blur

    photo = F.avg_pool2d(textured_photo(70, 90, seed=4), 3, 1, 1)
    stylized = (photo.flip(1) * 0.7 + 0.2 * torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(5)))
    reference = guided_blur(photo.double(), stylized.double(), 17, 1e-3).clamp(0, 1).float()
    torch.testing.assert_close(guided_filter(stylized, photo, 8, 1e-3), reference, atol=2e-5, rtol=0)


def test_box_mean_matches_kornia_and_handles_thin_images():
    from kornia.filters import box_blur

    x = torch.rand(2, 5, 31, 45)
    torch.testing.assert_close(box_mean(x, 4), box_blur(x, 9, border_type="reflect"), atol=1e-6, rtol=0)
    thin = torch.rand(1, 3, 1, 20)
    torch.testing.assert_close(box_mean(thin, 8), box_blur(thin.expand(1, 3, 3, 20), (1, 17), "reflect")[..., :1, :],
                               atol=1e-6, rtol=0)


def test_band_rows_equal_the_whole_upsample_and_bands_do_not_matter(monkeypatch):
    field = torch.rand(1, 12, 13, 17)
    rows = torch.cat([_field_rows(field, top, min(top + 7, 101), 101, 59) for top in range(0, 101, 7)], 2)
    torch.testing.assert_close(rows, upsample(field, (101, 59)), atol=1e-5, rtol=0)
    photo = textured_photo(101, 59, seed=6)
    small = downscale(photo, (26, 15))
    stylized = small.flip(1)
    whole = lift(photo, small, stylized, radius=2)
    monkeypatch.setattr(lift_module, "BAND_PIXELS", 3 * 59)  # 3-row bands
    torch.testing.assert_close(lift(photo, small, stylized, radius=2), whole, atol=1e-6, rtol=0)
    # ... and writing into the photo itself gives the same result.
    assert torch.equal(lift(photo.clone(), small, stylized, radius=2, out=photo), whole)


def test_affine_field_shape_and_bad_inputs():
    photo = textured_photo(20, 30)
    assert affine_field(photo, photo, 2, 1e-3).shape == (1, 12, 20, 30)
    assert apply_affine(affine_field(photo, photo, 2, 1e-3), photo).shape == photo.shape
    with pytest.raises(ValueError, match="radius >= 1"):
        lift(photo, photo, photo, radius=0)
    with pytest.raises(ValueError, match="do not match"):
        lift(photo, photo[..., :10, :], photo, radius=2)


@pytest.mark.parametrize("size,work,expected", [((4000, 6000), 512, (341, 512)), ((6000, 4000), 512, (512, 341)),
                                                ((7, 300), 64, (1, 64)), ((300, 300), 512, (300, 300)),
                                                ((100, 50), None, (100, 50)), ((513, 20), 512, (512, 20))])
def test_working_shape_never_upscales(size, work, expected):
    assert working_shape(*size, work) == expected


@pytest.fixture(scope="module")
def photo_style(tmp_path_factory):
    """A random quarter-width HRNet saved as a photo style: guided radius 3, colour match 1."""
    torch.manual_seed(0)
    model = HRNet(width=0.25)
    style = torch.stack([torch.rand(16, 16) * 0.3 + 0.1, torch.rand(16, 16) * 0.2 + 0.3,
                         torch.rand(16, 16) * 0.3 + 0.5])[None]
    meta = {"generator_class": "hrstyle.models.hrnet.HRNet", "generator_config": model.config, "style_name": "p",
            "guided_radius": 3, "color_match": 1.0, "style_color": style_color_entry(style)}
    return save_generator(tmp_path_factory.mktemp("ckpt") / "photo.pt", model, meta)


def eager(checkpoint, **kwargs):
    return Stylizer(checkpoint, device="cpu", backend="eager", tile_size=0, **kwargs)


def test_a_constant_style_gives_exactly_the_colour_matched_photo(photo_style, monkeypatch):
    """A style that is one colour transform G everywhere (the identity included): lifted from a working
    resolution 4× smaller, the result is the colour match of G(photo) at full resolution, every pixel."""
    photo = textured_photo(128, 96, seed=7)
    stylizer = eager(photo_style, work_size=32, guided_eps=EXACT_EPS)
    target = stylizer.style_color
    for g, c in ((torch.eye(3), torch.zeros(3)),
                 (torch.tensor([[0.6, 0.3, 0.0], [0.1, 0.7, 0.1], [0.0, 0.2, 0.6]]), torch.tensor([0.1, 0.0, 0.05]))):
        calls = []

        def network(x, g=g, c=c):
            calls.append(tuple(x.shape[-2:]))
            return torch.einsum("ij,njhw->nihw", g, x) + c[:, None, None]

        monkeypatch.setattr(stylizer, "_network", network)
        out = stylizer(photo)
        assert calls == [(32, 24)]  # the network ran at the working resolution only
        expected = match_color(torch.einsum("ij,njhw->nihw", g, photo) + c[:, None, None], target, 1.0)
        torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)
        assert torch.allclose(color_statistics(out)[0], target[0], atol=1e-3)


def test_work_size_null_is_the_full_resolution_path(photo_style):
    """work_size=null: the network on the whole photo, then the guided filter there (today's path, whose
    filter was kornia's guided_blur); photos no larger than work_size take the very same path."""
    from kornia.filters import guided_blur

    photo = textured_photo(60, 84, seed=8)
    full = eager(photo_style, work_size=None, color_match=0.0)
    out = full(photo)
    with torch.no_grad():
        network = full.model(photo).clamp(0, 1)
    torch.testing.assert_close(out, guided_blur(photo, network, 7, 1e-3).clamp(0, 1), atol=2e-5, rtol=0)
    assert torch.equal(eager(photo_style, work_size=84, color_match=0.0)(photo), out)  # not larger: same path
    assert torch.equal(eager(photo_style, color_match=0.0)(photo), out)  # the default work_size exceeds 84 px
    lifted = eager(photo_style, work_size=42, color_match=0.0)(photo)
    assert lifted.shape == out.shape and not torch.equal(lifted, out)


@pytest.mark.parametrize("shape", [(1, 3, 7, 300), (1, 3, 300, 7), (1, 3, 101, 67), (2, 3, 45, 70), (1, 3, 1, 90)])
def test_odd_sizes_and_extreme_aspect_ratios(photo_style, shape):
    photo = torch.rand(shape, generator=torch.Generator().manual_seed(9))
    for kwargs in ({}, {"guided_radius": 0}, {"preserve_color": True, "strength": 0.5}):
        out = eager(photo_style, work_size=32, **kwargs)(photo)
        assert out.shape == photo.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def test_painterly_styles_are_upsampled_from_the_working_resolution(photo_style):
    photo = textured_photo(64, 96, seed=10)
    stylizer = eager(photo_style, work_size=48, guided_radius=0, color_match=0.0)
    with torch.no_grad():
        small = stylizer.model(downscale(photo, (32, 48))).clamp(0, 1)
    torch.testing.assert_close(stylizer(photo), upsample(small, (64, 96)), atol=1e-6, rtol=0)


def test_work_size_is_checked_and_limits_batches(photo_style):
    for bad in (8, 15, 0, -1, 512.5, "512", True):
        with pytest.raises(UserError, match="work_size"):
            eager(photo_style, work_size=bad)
    stylizer = eager(photo_style, work_size=512)
    assert stylizer.batch_limit(4000, 6000) == 1 and stylizer.batch_limit(1000, 1000) >= 2
    assert stylizer.plan(4000, 6000).tile_size == 0  # the network runs at 512 px: never tiled


def test_infer_script_takes_work_size(photo_style, tmp_path):
    from conftest import random_photo
    from test_inference import run_infer

    src = random_photo(tmp_path / "in.png", (90, 60))
    proc = run_infer(f"checkpoint={photo_style}", f"input={src}", f"output={tmp_path / 'out.png'}",
                     "work_size=32", "backend=eager", f"hydra.run.dir={tmp_path}/h")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out.png").is_file()
    proc = run_infer(f"checkpoint={photo_style}", f"input={src}", "work_size=4", f"hydra.run.dir={tmp_path}/h")
    assert proc.returncode == 2 and "work_size must be" in proc.stderr and "Traceback" not in proc.stderr
