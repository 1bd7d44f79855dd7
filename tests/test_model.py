import pytest
import torch

from hrstyle.models import HRNet, count_macs_per_pixel, count_parameters, frozen_norm_stats
from hrstyle.models.hrnet import Bottleneck


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (2, 3, 33, 47), (3, 3, 17, 9), (1, 3, 1, 5), (2, 3, 64, 30)])
def test_output_has_input_shape_and_range(shape):
    torch.manual_seed(0)
    model = HRNet()
    x = torch.rand(shape)
    y = model(x)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1
    assert torch.isfinite(y).all()


def test_gradients_reach_every_parameter():
    model = HRNet()
    x = torch.rand(2, 3, 29, 35)
    (model(x) - x).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def test_batch_items_are_independent():
    # Instance norm: an image's output must not depend on the other images of its batch.
    torch.manual_seed(0)
    model = HRNet().eval()
    a, b = torch.rand(1, 3, 36, 36), torch.rand(1, 3, 36, 36)
    together = model(torch.cat([a, b]))
    torch.testing.assert_close(together[:1], model(a), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate"])
@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_width_and_padding_mode(width, padding_mode):
    model = HRNet(width=width, padding_mode=padding_mode)
    assert model.config == {"width": width, "padding_mode": padding_mode, "output": "image", "color_branch": False,
                            "color_learned": True}
    assert model(torch.rand(1, 3, 21, 26)).shape == (1, 3, 21, 26)
    assert HRNet(**model.config).state_dict().keys() == model.state_dict().keys()


def test_wider_network_has_more_parameters():
    assert count_parameters(HRNet(width=0.5)) < count_parameters(HRNet()) < count_parameters(HRNet(width=2))


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="padding_mode"):
        HRNet(padding_mode="circularish")
    with pytest.raises(ValueError, match="width"):
        HRNet(width=0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        HRNet()(torch.rand(1, 4, 16, 16))


def test_documented_size_and_cost():
    model = HRNet()
    assert count_parameters(model) == 65_791
    assert count_macs_per_pixel(model) == pytest.approx(20_060, rel=0.01)
    import hrstyle.models.hrnet as hrnet

    assert "65,791 parameters" in hrnet.__doc__ and "35.4 kMAC per pixel" in hrnet.__doc__
    assert "20.1 kMAC" in hrnet.__doc__


def test_fused_head_equals_concatenate_then_convolve():
    # FusionBottleneck must compute exactly Bottleneck(cat(full, up(half), up(quarter))).
    torch.manual_seed(0)
    model = HRNet().eval()
    fused = model.head[0]
    plain = Bottleneck(192, 64)
    plain.load_state_dict(fused.state_dict())
    full, half, quarter = torch.randn(2, 64, 24, 20), torch.randn(2, 64, 12, 10), torch.randn(2, 64, 6, 5)
    up = lambda t: torch.nn.functional.interpolate(t, size=(24, 20), mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(fused(full, half, quarter), plain(torch.cat((full, up(half), up(quarter)), 1)),
                               atol=1e-5, rtol=1e-4)


def test_frozen_norm_stats_reproduce_live_output():
    torch.manual_seed(0)
    model = HRNet().eval()
    x = torch.rand(1, 3, 40, 44)
    with torch.no_grad():
        live = model(x)
        with frozen_norm_stats(model, x):
            frozen = model(x)
            # With frozen statistics a crop is normalized like the whole image.
            crop = model(x[..., :20, :24])
        after = model(x)
    torch.testing.assert_close(frozen, live, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after, live)
    assert not torch.allclose(crop, model(x[..., :20, :24]), atol=1e-3)


def test_residual_output_starts_as_the_identity_and_learns_a_change():
    torch.manual_seed(0)
    model = HRNet(width=0.5, output="residual")
    x = torch.rand(2, 3, 21, 30)
    y = model(x)
    assert y.shape == x.shape
    # sigmoid(logit(x)) with the photo clamped to [1e-3, 1 - 1e-3]: the photo itself.
    assert torch.allclose(y, x.clamp(1e-3, 1 - 1e-3), atol=1e-5)
    assert model.config["output"] == "residual" and HRNet(**model.config).residual
    # Zero-initialised last conv: gradients still reach it, so training moves away from identity.
    y.mean().backward()
    assert model.head[3].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="output"):
        HRNet(output="rgb")


def test_old_checkpoints_without_output_key_build_the_paper_network():
    model = HRNet(**{"width": 1.0, "padding_mode": "zeros"})
    assert model.config["output"] == "image" and not model.residual


def test_newton_schulz_square_roots_match_the_eigendecomposition():
    from hrstyle.image.color import sqrtm_psd
    from hrstyle.models.color import sqrtm_newton_schulz

    g = torch.Generator().manual_seed(0)
    for ratio in (1.0, 1e-2, 1e-4):  # well conditioned to nearly flat (a grey photo plus the ridge)
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
        cov = q @ torch.diag(torch.tensor([0.05, 0.05 * ratio ** 0.5, 0.05 * ratio], dtype=torch.float64)) @ q.T
        root, inv_root = sqrtm_newton_schulz(cov[None])
        torch.testing.assert_close(root[0], sqrtm_psd(cov), atol=1e-6 * 0.05 ** 0.5, rtol=1e-4)
        torch.testing.assert_close(root[0] @ inv_root[0], torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_color_branch_starts_as_the_global_colour_transfer():
    """At step 0 (zero last conv) the colour-branch network is exactly the evaluation's global colour
    transfer (``match_color`` at strength 1) of each photo onto the style's statistics."""
    from hrstyle.image.color import color_statistics, match_color

    g = torch.Generator().manual_seed(1)
    photos = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 40, 56, generator=g), 5, 1, 2) * 0.6 + 0.1
    style = torch.rand(1, 3, 32, 32, generator=g) * torch.tensor([0.3, 0.4, 0.5]).view(1, 3, 1, 1) + 0.4
    model = HRNet(width=0.25, output="residual", color_branch=True).eval()
    target = color_statistics(style)
    model.color.set_target(*target)
    with torch.no_grad():
        out = model(photos)
    for i in range(2):  # each photo from its own statistics, as a batch of one would be
        expected = match_color(photos[i:i + 1], target, 1.0).clamp(1e-3, 1 - 1e-3)
        torch.testing.assert_close(out[i:i + 1], expected, atol=1e-3, rtol=0)  # float32 vs float64: < 1/4 level
    assert HRNet(**model.config).color_branch
    with pytest.raises(ValueError, match="residual"):
        HRNet(output="image", color_branch=True)
    # The branch's targets are parameters: training can move them.
    names = {n for n, _ in model.named_parameters()}
    assert {"color.target_mean", "color.target_root"} <= names
