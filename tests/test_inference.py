"""Inference API, tiling, colour controls and the infer script."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, random_photo
from PIL import Image

from hrstyle.errors import UserError
from hrstyle.image.color import rgb_to_ycbcr, ycbcr_to_rgb
from hrstyle.image.tiles import make_tiles
from hrstyle.inference import Stylizer, apply_strength, plan_jobs, preserve_color, save_generator, stylize_files
from hrstyle.inference.tiling import stylize_tiled
from hrstyle.models import HRNet

SHIPPED = ROOT / "checkpoints" / "starry.pt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = HRNet()
    # Make the random network less trivial: non-zero norm affine parameters.
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data.uniform_(-0.5, 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "style.pt"
    meta = {"generator_class": "hrstyle.models.hrnet.HRNet", "generator_config": model.config, "style_name": "test"}
    return save_generator(path, model, meta)


@pytest.fixture
def stylizer(checkpoint):
    return Stylizer(checkpoint, device="cpu", tile_size=0, channels_last=False)


@pytest.mark.parametrize("shape", [(3, 31, 45), (2, 3, 17, 64), (1, 3, 5, 3)])
def test_stylizer_keeps_shape_and_range(stylizer, shape):
    x = torch.rand(shape)
    y = stylizer(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and 0 <= y.min() and y.max() <= 1


def test_stylizer_accepts_pil_images(stylizer):
    img = Image.new("RGB", (33, 21), (120, 40, 200))
    out = stylizer(img)
    assert isinstance(out, Image.Image) and out.size == (33, 21) and out.mode == "RGB"


@pytest.mark.parametrize("size,tile", [((150, 203), 96), ((97, 130), 100), ((64, 300), 120), ((301, 97), 200)])
def test_tiled_equals_untiled(stylizer, size, tile):
    torch.manual_seed(1)
    x = torch.rand(1, 3, *size)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some spatial structure
    untiled = stylizer(x)
    tiled = stylize_tiled(stylizer.model, x, stylizer._forward, tile_size=tile, margin=32)
    assert len(make_tiles(*size, tile, 32)) > 1
    assert (tiled - untiled).abs().max() < 1e-4
    # And the norms are back to per-image statistics afterwards.
    torch.testing.assert_close(stylizer(x), untiled)


def test_color_branch_tiles_exactly_on_both_backends(tmp_path):
    """The colour branch needs the whole photo's colours: tiled runs (the eager tiler, and the ONNX tiler,
    whose tiles' graph takes the whole image's colour moments as inputs) equal the untiled network."""
    torch.manual_seed(0)
    model = HRNet(width=0.25, output="residual", color_branch=True)
    torch.nn.init.normal_(model.head[3].weight, std=0.1)
    model.color.set_target(torch.tensor([0.6, 0.5, 0.35]), torch.diag(torch.tensor([0.02, 0.015, 0.01])))
    meta = {"generator_class": "hrstyle.models.hrnet.HRNet", "generator_config": model.config, "style_name": "cb"}
    ckpt = save_generator(tmp_path / "cb.pt", model, meta)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 150, 203), 3, 1, 1)
    x[..., :60, :] *= 0.3  # a dark band: per-tile colour statistics would differ from the photo's
    reference = Stylizer(ckpt, backend="eager", tile_size=0)(x)
    for backend in ("eager", "onnx"):
        tiled = Stylizer(ckpt, backend=backend, tile_size=96, cache_dir=tmp_path / "cache")
        assert tiled.needs_tiling(150, 203)
        assert (tiled(x) - reference).abs().max() < 1e-4, backend
    assert tiled._ort._tiler.color_moments is not None  # the ONNX tiler itself ran (no eager fallback)


def test_blend_weights_sum_to_one():
    from hrstyle.image.tiles import add_tile

    h, w, margin, half = 150, 203, 32, 16
    total = torch.zeros(1, 3, h, w)
    for t in make_tiles(h, w, 96, margin):
        add_tile(total, torch.ones(1, 3, t.cy1 - t.cy0, t.cx1 - t.cx0), t, half)
    torch.testing.assert_close(total, torch.ones(1, 3, h, w))


def test_running_moments_equal_var_mean_of_the_concatenation():
    from hrstyle.image.tiles import RunningMoments

    torch.manual_seed(0)
    parts = [torch.randn(5, n) * 3 + 7 for n in (17, 1, 64, 230)]  # 5 channels, parts of unequal size
    expected_var, expected_mean = torch.var_mean(torch.cat(parts, 1).double(), dim=1, correction=0)
    for as_numpy in (False, True):  # the eager tiler merges tensors, the ONNX Runtime one arrays
        moments = RunningMoments()
        for part in parts:
            var, mean = torch.var_mean(part, dim=1, correction=0)
            mean, m2 = (mean, var * part.shape[1]) if not as_numpy else (mean.numpy(), (var * part.shape[1]).numpy())
            moments.add(mean, m2, part.shape[1])
        assert moments.count == sum(p.shape[1] for p in parts)
        mean, var = torch.as_tensor(moments.mean), torch.as_tensor(moments.variance)
        assert mean.dtype == var.dtype == torch.float64
        torch.testing.assert_close(mean, expected_mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(var, expected_var, rtol=1e-5, atol=0)


def test_too_small_tiles_are_refused(stylizer, checkpoint):
    with pytest.raises(ValueError, match="at least 96"):
        stylize_tiled(stylizer.model, torch.rand(1, 3, 100, 100), stylizer._forward, tile_size=80, margin=32)
    with pytest.raises(UserError, match="too small"):
        Stylizer(checkpoint, tile_size=80)
    with pytest.raises(UserError, match="tile_margin"):
        Stylizer(checkpoint, tile_margin=8)


def test_stylizer_tiles_large_images(checkpoint):
    tiled = Stylizer(checkpoint, device="cpu", tile_size=96, channels_last=False)
    plain = Stylizer(checkpoint, device="cpu", tile_size=0, channels_last=False)
    x = torch.rand(1, 3, 130, 110)
    assert tiled.needs_tiling(130, 110) and not plain.needs_tiling(130, 110)
    assert (tiled(x) - plain(x)).abs().max() < 1e-4


def test_strength_zero_returns_the_input_and_blends_linearly(checkpoint):
    x = torch.rand(1, 3, 24, 40)
    assert torch.equal(Stylizer(checkpoint, device="cpu", strength=0.0)(x), x)
    full = Stylizer(checkpoint, device="cpu", strength=1.0)(x)
    half = Stylizer(checkpoint, device="cpu", strength=0.5)(x)
    torch.testing.assert_close(half, (x + full) / 2)
    with pytest.raises(UserError, match="strength"):
        Stylizer(checkpoint, strength=1.5)
    with pytest.raises(ValueError):
        apply_strength(full, x, -0.1)


def test_preserve_color_keeps_chroma_and_takes_stylized_luminance(checkpoint):
    x = torch.rand(1, 3, 32, 32) * 0.5 + 0.25  # away from the clamp limits
    stylized = Stylizer(checkpoint, device="cpu")(x)
    kept = Stylizer(checkpoint, device="cpu", preserve_color=True)(x)
    ycc_in, ycc_out, ycc_sty = rgb_to_ycbcr(x), rgb_to_ycbcr(kept), rgb_to_ycbcr(stylized)
    # Where stylized luminance + photo chroma is a displayable colour (no clamping), the
    # result has exactly the photo's chroma and the stylized luminance.
    unclamped = ycbcr_to_rgb(torch.cat((ycc_sty[:, :1], ycc_in[:, 1:]), 1))
    inside = ((unclamped >= 0) & (unclamped <= 1)).all(1, keepdim=True)
    assert inside.float().mean() > 0.5
    assert (ycc_out[:, 1:] - ycc_in[:, 1:]).abs()[inside.expand(1, 2, 32, 32)].max() < 1e-4
    assert (ycc_out[:, :1] - ycc_sty[:, :1]).abs()[inside].max() < 1e-4
    # Direct call on constant images: grey luminance + red chroma.
    red, grey = torch.tensor([0.8, 0.2, 0.2]).view(1, 3, 1, 1), torch.full((1, 3, 1, 1), 0.5)
    out = preserve_color(grey, red)
    torch.testing.assert_close(rgb_to_ycbcr(out)[:, 1:], rgb_to_ycbcr(red)[:, 1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode,ext", [("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("I;16", ".png"),
                                      ("RGB", ".jpg"), ("CMYK", ".jpg"), ("RGB", ".webp")])
def test_any_input_mode_through_the_file_runner(stylizer, tmp_path, mode, ext):
    src = random_photo(tmp_path / f"in{ext}", (37, 29), mode=mode)
    jobs, skipped = plan_jobs(str(src), str(tmp_path / "out"), None, "test")
    summary = stylize_files(stylizer, jobs, log=lambda _: None)
    assert summary.done == 1 and not summary.failed and not skipped
    with Image.open(jobs[0].dst) as out:
        assert out.size == (37, 29) and out.mode == "RGB"


def test_folder_is_mirrored_and_bad_files_are_skipped(stylizer, photo_dir, tmp_path):
    (photo_dir / "nested" / "broken.jpg").write_bytes(b"not a jpeg")
    before = {p: p.read_bytes() for p in photo_dir.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    jobs, skipped = plan_jobs(str(photo_dir), str(out), "webp")
    assert [p.name for p in skipped] == ["notes.txt"]
    lines = []
    summary = stylize_files(stylizer, jobs, batch_size=2, log=lines.append)
    assert summary.done == 5 and len(summary.failed) == 1 and "broken.jpg" in summary.failed[0]
    assert (out / "nested" / "deeper" / "d.webp").is_file() and (out / "a.webp").is_file()
    assert {p: p.read_bytes() for p in photo_dir.rglob("*") if p.is_file()} == before  # inputs untouched
    assert not list(out.rglob("*.tmp"))


def test_output_never_overwrites_an_input(stylizer, photo_dir):
    src = photo_dir / "a.jpg"
    before = src.read_bytes()
    with pytest.raises(UserError, match="overwrite"):
        stylize_files(stylizer, plan_jobs(str(src), str(src))[0], log=lambda _: None)
    # Output folder == input folder with the same format: every target is an input.
    with pytest.raises(UserError, match="overwrite"):
        stylize_files(stylizer, plan_jobs(str(photo_dir), str(photo_dir))[0], log=lambda _: None)
    assert src.read_bytes() == before


def test_glob_and_output_naming(photo_dir, tmp_path):
    jobs, _ = plan_jobs(f"{photo_dir}/**/*.png", str(tmp_path / "o"), "jpg")
    assert [j.dst.relative_to(tmp_path / "o").as_posix() for j in jobs] == ["b.jpg"]
    jobs, _ = plan_jobs(str(photo_dir / "a.jpg"), None, None, "starry")
    assert jobs[0].dst.as_posix() == "outputs/stylized/a_starry.jpg"
    with pytest.raises(UserError, match="not found"):
        plan_jobs(str(photo_dir / "missing.jpg"), None)
    with pytest.raises(UserError, match="format"):
        plan_jobs(str(photo_dir / "a.jpg"), None, "gif")


def test_max_size_downscales(stylizer, tmp_path):
    src = random_photo(tmp_path / "big.png", (120, 60))
    jobs, _ = plan_jobs(str(src), str(tmp_path / "small.png"))
    stylize_files(stylizer, jobs, max_size=40, log=lambda _: None)
    assert Image.open(tmp_path / "small.png").size == (40, 20)


def run_infer(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "infer.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_infer_script_with_no_input_stylizes_a_sample(checkpoint, tmp_path):
    proc = run_infer(f"checkpoint={checkpoint}", f"hydra.run.dir={tmp_path}/h", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "No input given" in proc.stdout and "Result:" in proc.stdout
    assert (tmp_path / "outputs" / "stylized" / "sample_content_test.png").is_file()


def test_infer_script_errors_are_clear(checkpoint, tmp_path):
    proc = run_infer(f"checkpoint={tmp_path}/nope.ckpt", f"hydra.run.dir={tmp_path}/h")
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"junk")
    proc = run_infer(f"checkpoint={bad}", f"hydra.run.dir={tmp_path}/h")
    assert proc.returncode == 2 and "cannot read checkpoint" in proc.stderr
    proc = run_infer(f"checkpoint={checkpoint}", f"input={tmp_path}/missing.jpg", f"hydra.run.dir={tmp_path}/h")
    assert proc.returncode == 2 and "input not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_infer(f"checkpoint={checkpoint}", "memory_gb=-1", f"hydra.run.dir={tmp_path}/h")
    assert proc.returncode == 2 and "memory_gb must be > 0" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped checkpoint")
def test_shipped_starry_checkpoint_is_small_and_works():
    assert SHIPPED.stat().st_size < 1_000_000
    stylizer = Stylizer(SHIPPED, device="cpu")
    assert stylizer.style_name == "starry"
    x = torch.rand(1, 3, 40, 52)
    y = stylizer(x)
    assert y.shape == x.shape and (y - x).abs().mean() > 0.05  # it really restyles


PHOTO_STYLES = sorted(p for p in (ROOT / "checkpoints").glob("*.pt") if p.stem != "starry")


@pytest.mark.parametrize("path", PHOTO_STYLES, ids=[p.stem for p in PHOTO_STYLES])
def test_shipped_photo_styles_carry_their_recommendations(path, monkeypatch, tmp_path):
    from hrstyle.inference import load_generator

    assert path.stat().st_size < 1_000_000
    _, meta = load_generator(path)
    assert meta["style_name"] == path.stem and meta["guided_radius"] == 8
    bands = meta["color_bands"]
    assert (meta["color_match"], bands) in ((1.0, 8), (0.0, 1))
    # The colour statistics travel in the checkpoint: it works without its style image (moved or never fetched).
    assert not Path(meta["style_image"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    stylizer = Stylizer(path, device="cpu", backend="eager")
    assert stylizer.color_bands == bands
    sky_over_field = torch.cat([torch.rand(1, 3, 24, 48) * 0.1 + 0.7, torch.rand(1, 3, 24, 48) * 0.1 + 0.2], dim=2)
    y = stylizer(sky_over_field)
    assert y.shape == sky_over_field.shape and torch.isfinite(y).all() and 0 <= y.min() and y.max() <= 1
    assert (y - sky_over_field).abs().mean() > 0.02  # it restyles


def test_guided_filter_control_follows_the_checkpoint_unless_set(checkpoint, tmp_path):
    from hrstyle.evaluation import photorealism_residual
    from hrstyle.inference import load_generator

    model, meta = load_generator(checkpoint)
    recommended = save_generator(tmp_path / "photo_style.pt", model, {**meta, "guided_radius": 3})
    x = torch.rand(1, 3, 40, 52)
    plain = Stylizer(checkpoint, device="cpu", tile_size=0)
    assert plain.guided_radius == 0  # old checkpoints: no recommendation, no filter
    filtered = Stylizer(recommended, device="cpu", tile_size=0)
    assert filtered.guided_radius == 3
    assert Stylizer(recommended, device="cpu", tile_size=0, guided_radius=0).guided_radius == 0
    raw, out = plain(x), filtered(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    # The filtered output is a local affine colour transform of the photo: far more photorealistic.
    assert photorealism_residual(out, x).item() < photorealism_residual(raw, x).item() / 2
    with pytest.raises(UserError, match="guided"):
        Stylizer(checkpoint, device="cpu", guided_radius=-1)


def test_match_color_moves_the_colour_distribution_and_nothing_else():
    from hrstyle.evaluation.metrics import edge_ssim
    from hrstyle.image.color import color_statistics, match_color

    torch.manual_seed(0)
    photo = torch.rand(1, 3, 48, 64) * 0.4 + 0.3  # a mid-tone photo: the mapped colours stay in [0, 1]
    style = torch.stack([torch.rand(32, 32) * 0.2 + 0.1, torch.rand(32, 32) * 0.1 + 0.2,
                         torch.rand(32, 32) * 0.3 + 0.5])[None]  # a dark blue palette
    target = color_statistics(style)
    out = match_color(photo, target)
    mean, cov = color_statistics(out)
    assert torch.allclose(mean, target[0], atol=1e-4) and torch.allclose(cov, target[1], atol=1e-4)
    assert edge_ssim(out, photo).item() > 0.6  # one global affine colour map: the edges stay where they were
    assert torch.equal(match_color(photo, target, strength=0.0), photo)
    half = color_statistics(match_color(photo, target, strength=0.5))[0]
    assert torch.allclose(half, (color_statistics(photo)[0] + target[0]) / 2, atol=1e-4)
    # chunked statistics (huge images) equal the direct ones
    pixels = photo.reshape(3, -1).double()
    assert torch.allclose(color_statistics(photo)[1], torch.cov(pixels), atol=1e-10)
    with pytest.raises(ValueError, match="strength"):
        match_color(photo, target, strength=1.5)


def test_colour_map_gain_cap_keeps_flat_regions_from_being_stretched():
    from hrstyle.image.color import color_statistics, color_transfer_map, match_color, match_color_banded

    torch.manual_seed(0)
    # A nearly flat photo (a calm sea) under a style of strong colour spread: the exact map stretches it ~10x.
    photo = torch.rand(1, 3, 40, 40) * 0.04 + 0.45
    style = torch.rand(1, 3, 40, 40) * 0.6 + 0.2
    source, target = color_statistics(photo), color_statistics(style)
    exact, _ = color_transfer_map(source, target)
    capped, shift = color_transfer_map(source, target, max_gain=2.0)
    assert torch.linalg.eigvalsh(exact).max() > 8
    assert torch.linalg.eigvalsh((capped + capped.T) / 2).max() <= 2.0 + 1e-9
    assert torch.allclose(capped @ source[0].double() + shift, target[0].double(), atol=1e-9)  # the means still map
    out = match_color(photo, target, max_gain=2.0)
    assert torch.allclose(color_statistics(out)[0], target[0], atol=1e-4)
    assert out.std(dim=(2, 3)).max() <= 2.0 * photo.std(dim=(2, 3)).max() + 1e-4  # spread at most doubled
    # A cap above every gain changes nothing; the graduated match takes the same cap per band.
    mild = torch.rand(1, 3, 40, 40) * 0.3 + 0.3
    assert torch.allclose(match_color(style, color_statistics(mild), max_gain=2.0),
                          match_color(style, color_statistics(mild)), atol=1e-6)
    graded = match_color_banded(photo, (target[0][None], target[1][None]), max_gain=2.0)
    assert torch.allclose(graded, out, atol=1e-6)
    with pytest.raises(ValueError, match="gain"):
        color_transfer_map(source, target, max_gain=0.5)


def test_graduated_transfer_gives_each_band_the_style_band_colours():
    from hrstyle.image.color import (
        band_weights,
        banded_color_statistics,
        color_statistics,
        match_color,
        match_color_banded,
    )

    weights = band_weights(50, 4, 0.1)
    assert weights.shape == (50, 4) and torch.allclose(weights.sum(1), torch.ones(50, dtype=torch.float64))
    assert weights[0].argmax() == 0 and weights[-1].argmax() == 3  # top rows in the first band
    assert torch.equal(band_weights(50, 1), torch.ones(50, 1, dtype=torch.float64))
    torch.manual_seed(0)
    # A photo whose sky (top) is darker than its ground (bottom); the style has a dark sky over white snow:
    # the global transfer keeps the photo's order, the graduated one gives each half its counterpart's colour.
    photo = torch.cat([torch.rand(1, 3, 32, 48) * 0.1 + torch.tensor([0.2, 0.3, 0.6]).view(1, 3, 1, 1),
                       torch.rand(1, 3, 32, 48) * 0.1 + torch.tensor([0.3, 0.6, 0.2]).view(1, 3, 1, 1)], dim=2)
    style = torch.cat([torch.rand(1, 3, 20, 30) * 0.1 + 0.3, torch.rand(1, 3, 20, 30) * 0.05 + 0.9], dim=2)
    graded = match_color_banded(photo, banded_color_statistics(style, 4, 0.1), width=0.1)
    glob = match_color(photo, color_statistics(style))
    ground_target = style[..., 20:, :].mean(dim=(0, 2, 3))
    error = {name: (out[..., 40:, :].mean(dim=(0, 2, 3)) - ground_target).abs().max().item()
             for name, out in (("graded", graded), ("global", glob))}
    assert error["graded"] < 0.05 < error["global"]
    # one band is the global transfer; statistics equal a direct weighted computation
    stats = banded_color_statistics(photo, 1)
    assert torch.allclose(match_color_banded(photo, stats, bands=1), match_color(photo, color_statistics(photo)), atol=1e-6)
    assert torch.allclose(stats[1][0], color_statistics(photo)[1], atol=1e-10)
    means, covs = banded_color_statistics(photo, 4, 0.1)
    w = band_weights(64, 4, 0.1)[:, 2, None].expand(64, 48).reshape(-1)
    pixels = photo.reshape(3, -1).double()
    direct = (pixels * w).sum(1) / w.sum()
    assert torch.allclose(means[2], direct, atol=1e-10)
    assert torch.equal(match_color_banded(photo, (means, covs), strength=0.0), photo.clamp(0, 1))
    with pytest.raises(ValueError, match="band statistics"):
        match_color_banded(photo, (means, covs), bands=3)


def test_styles_with_a_layout_get_the_graduated_match():
    from hrstyle.image.color import BANDS, layout_share, layout_weight, recommended_color_match

    torch.manual_seed(0)
    landscape = torch.cat([torch.rand(1, 3, 30, 40) * 0.1 + torch.tensor([0.5, 0.7, 0.9]).view(1, 3, 1, 1),
                           torch.rand(1, 3, 30, 40) * 0.1 + torch.tensor([0.2, 0.5, 0.1]).view(1, 3, 1, 1)], dim=2)
    close_up = landscape.transpose(-1, -2)  # the same colours side by side: no row explains them
    assert layout_share(landscape) > 0.9 and layout_share(close_up) < 0.1
    assert layout_share(torch.full((3, 8, 8), 0.5)) == 0.0  # a flat image: no variance, no layout
    assert recommended_color_match(landscape) == (1.0, BANDS)
    assert recommended_color_match(close_up) == (0.0, 1)
    # A photo's share of the graduated match: full for a landscape, none for a close-up, at any size.
    assert layout_weight(landscape) == 1.0 and layout_weight(close_up) == 0.0
    big = torch.nn.functional.interpolate(landscape, size=(600, 800), mode="nearest")
    assert layout_weight(big) == 1.0


def _sky_over_ground(height: int, width: int, horizon: float, sky: float, ground: float) -> torch.Tensor:
    """A (1, 3, H, W) image: a smooth grey sky of value ``sky`` over textured ground around ``ground``."""
    torch.manual_seed(0)
    split = round(horizon * height)
    top = torch.full((1, 3, split, width), sky) + 0.01 * torch.rand(1, 1, split, 1)
    bottom = (ground + 0.15 * (torch.rand(1, 1, height - split, width) - 0.5)).expand(1, 3, -1, -1)
    return torch.cat([top, bottom], dim=2).clamp(0, 1)


def test_horizons_are_found_and_aligned():
    from hrstyle.image.color import (
        banded_color_statistics,
        bands_from_strips,
        find_horizon,
        horizon_positions,
        move_horizon,
        strip_color_statistics,
    )

    for horizon in (0.3, 0.6):
        assert abs(find_horizon(_sky_over_ground(100, 80, horizon, 0.8, 0.3)) - horizon) <= 0.02
    # A smooth sky over textured ground of the same mean colour: the texture alone shows the horizon.
    assert abs(find_horizon(_sky_over_ground(100, 80, 0.4, 0.5, 0.5)) - 0.4) <= 0.02
    # Large photos are measured on a thumbnail: the same height.
    big = torch.nn.functional.interpolate(_sky_over_ground(100, 80, 0.3, 0.8, 0.3), size=(1200, 960), mode="nearest")
    assert abs(find_horizon(big) - 0.3) <= 0.02

    # Re-spacing: unchanged when the horizons agree; the style's horizon lands on the photo's; monotone.
    u = horizon_positions(10, 0.5, 0.5)
    assert torch.allclose(u, (torch.arange(10, dtype=torch.float64) + 0.5) / 10)
    moved = horizon_positions(100, 0.6, 0.3)
    assert torch.all(moved[1:] > moved[:-1]) and (moved[59] < 0.3 < moved[60])
    with pytest.raises(ValueError, match="horizons"):
        horizon_positions(10, 0.0, 0.5)
    # How far the horizon moves: not at weight 0, all the way at 1, never more than a stretch of 2.
    assert move_horizon(0.6, 0.4, 0.0) == 0.6 and move_horizon(0.6, 0.4) == pytest.approx(0.4)
    assert move_horizon(0.6, 0.4, 0.5) == pytest.approx(0.5)
    assert move_horizon(0.6, 0.1) == pytest.approx(0.3) and move_horizon(0.2, 0.9) == pytest.approx(0.4)

    # The style: dark sky over white snow, horizon at 60%; the photo's horizon is at 30%.
    style = _sky_over_ground(100, 60, 0.6, 0.2, 0.9)
    strips = strip_color_statistics(style, 50)
    assert strips[0].shape == (50, 3) and strips[1].shape == (50, 3, 3)
    plain = bands_from_strips(strips)
    reference = banded_color_statistics(style)
    assert torch.allclose(plain[0], reference[0], atol=0.01) and torch.allclose(plain[1], reference[1], atol=2e-3)
    aligned = bands_from_strips(strips, horizons=(0.6, 0.3))
    band = 3  # centred at 44% of the height: below the photo's horizon, above the style's
    assert plain[0][band].mean() < 0.3 and aligned[0][band].mean() > 0.8  # sky by height; snow once aligned
    assert aligned[0][0].mean() < 0.3 and aligned[0][-1].mean() > 0.8  # the top stays sky, the bottom snow


def test_graduated_color_match_follows_the_checkpoint(checkpoint, tmp_path):
    from hrstyle.checkpoint import style_color_entry
    from hrstyle.inference import load_generator

    model, meta = load_generator(checkpoint)
    style = torch.cat([torch.rand(1, 3, 20, 30) * 0.1 + 0.2, torch.rand(1, 3, 20, 30) * 0.05 + 0.9], dim=2)  # dark over white
    graded = save_generator(tmp_path / "graded.pt", model, {**meta, "color_match": 1.0, "color_bands": 8,
                                                             "style_color": style_color_entry(style)})
    x = torch.rand(1, 3, 48, 40)
    settings = {"device": "cpu", "tile_size": 0, "backend": "eager"}
    stylizer = Stylizer(graded, **settings)
    assert stylizer.color_bands == 8 and stylizer.style_color[0].shape == (8, 3)
    bottom = {bands: (Stylizer(graded, color_bands=bands, layout_guard=False, **settings)(x)[..., 36:, :].mean()
                      - 0.925).abs().item() for bands in (8, 1)}
    assert bottom[8] < 0.05 < bottom[1]  # the graduated match gives the bottom the style's white; one global map cannot
    # The noise photo has no layout of its own: with the guard (the default) the graduated match fades out.
    unmatched = Stylizer(graded, color_match=0, **settings)(x)
    assert torch.allclose(stylizer(x), unmatched, atol=1e-6)
    sky_over_field = torch.cat([torch.rand(1, 3, 24, 40) * 0.1 + 0.7, torch.rand(1, 3, 24, 40) * 0.1 + 0.2], dim=2)
    assert torch.allclose(stylizer(sky_over_field), Stylizer(graded, layout_guard=False, **settings)(sky_over_field))
    for bad in (0, 2.5, True):
        with pytest.raises(UserError, match="color_bands"):
            Stylizer(graded, color_bands=bad, **settings)
    # The gain cap (default 2) reaches the match: the result is the unmatched output under the capped map.
    from hrstyle.image.color import color_statistics, match_color

    flat = torch.rand(1, 3, 48, 40) * 0.02 + 0.5
    plain = Stylizer(graded, color_match=0, **settings)(flat)
    capped = Stylizer(graded, color_bands=1, **settings)(flat)
    assert torch.allclose(capped, match_color(plain, color_statistics(style), max_gain=2.0), atol=1e-5)
    assert not torch.allclose(capped, Stylizer(graded, color_bands=1, color_max_gain=None, **settings)(flat), atol=1e-3)
    for bad in (0.5, "x", True):
        with pytest.raises(UserError, match="color_max_gain"):
            Stylizer(graded, color_max_gain=bad, **settings)
    # The horizons aligned: a style with its horizon at 60% (dark sky over white snow) and a photo with its
    # horizon at 35%: rows between the two take the style's snow, where rows paired by height take its sky.
    snow = _sky_over_ground(60, 40, 0.6, 0.15, 0.9)
    aligned_style = save_generator(tmp_path / "aligned.pt", model, {**meta, "color_match": 1.0, "color_bands": 8,
                                                                    "style_color": style_color_entry(snow)})
    photo = _sky_over_ground(80, 60, 0.35, 0.8, 0.3)
    middle = {align: Stylizer(aligned_style, align_horizon=align, **settings)(photo)[..., 36:42, :].mean().item()
              for align in (True, False)}
    assert middle[True] > 0.7 and middle[False] < 0.45
    assert Stylizer(aligned_style, **settings).style_strips is not None
    assert Stylizer(aligned_style, align_horizon=False, **settings).style_strips is None
    # A checkpoint written before the strips (and its style image gone) pairs rows by height, as it did.
    old_entry = {k: v for k, v in style_color_entry(snow).items() if k != "strips"}
    older = save_generator(tmp_path / "older.pt", model, {**meta, "color_match": 1.0, "color_bands": 8,
                                                          "style_color": old_entry})
    assert Stylizer(older, **settings).style_strips is None
    assert torch.allclose(Stylizer(older, **settings)(photo), Stylizer(aligned_style, align_horizon=False,
                                                                       **settings)(photo))
    # Another band count than the stored one is re-made from the strips (no style image needed); a checkpoint
    # without strips needs its style image for it: a clear error when it is gone.
    from hrstyle.image.color import banded_color_statistics

    gone = {"color_match": 1.0, "color_bands": 4, "style_image": str(tmp_path / "gone.jpg")}
    four = Stylizer(save_generator(tmp_path / "four.pt", model, {**meta, **gone, "style_color": style_color_entry(style)}),
                    **settings)
    assert all(torch.allclose(a, b, atol=0.02) for a, b in zip(four.style_color, banded_color_statistics(style, 4)))
    orphan = save_generator(tmp_path / "orphan.pt", model, {**meta, **gone, "style_color": old_entry})
    with pytest.raises(UserError, match="color_bands=1"):
        Stylizer(orphan, **settings)


@pytest.mark.slow
def test_color_match_follows_the_checkpoint_and_needs_the_style_statistics(checkpoint, tmp_path):
    from hrstyle.checkpoint import style_color_entry
    from hrstyle.image.color import color_statistics
    from hrstyle.inference import load_generator

    model, meta = load_generator(checkpoint)
    style = torch.rand(1, 3, 20, 20) * 0.3
    stats = color_statistics(style)
    photo_style = save_generator(tmp_path / "photo_style.pt", model,
                                 {**meta, "color_match": 1.0, "style_color": style_color_entry(style)})
    x = torch.rand(1, 3, 40, 52)
    matched = Stylizer(photo_style, device="cpu", tile_size=0)
    assert matched.color_match == 1.0
    assert torch.allclose(color_statistics(matched(x))[0], stats[0], atol=2e-3)
    assert Stylizer(photo_style, device="cpu", tile_size=0, color_match=0).style_color is None
    assert Stylizer(checkpoint, device="cpu", tile_size=0).color_match == 0  # no recommendation: off
    # An old checkpoint whose style image is gone cannot be matched: a clear error, not a silent no-op.
    orphan = save_generator(tmp_path / "orphan.pt", model, {**meta, "style_image": str(tmp_path / "gone.jpg")})
    with pytest.raises(UserError, match="color_match=0"):
        Stylizer(orphan, device="cpu", color_match=1.0)
    # ... and one whose style image still exists takes the statistics from it.
    Image.fromarray((np.asarray(style[0].permute(1, 2, 0)) * 255).astype(np.uint8)).save(tmp_path / "style.png")
    legacy = save_generator(tmp_path / "legacy.pt", model, {**meta, "style_image": str(tmp_path / "style.png")})
    assert torch.allclose(Stylizer(legacy, device="cpu", color_match=1.0).style_color[0], stats[0], atol=3e-3)
    with pytest.raises(UserError, match="color_match"):
        Stylizer(checkpoint, device="cpu", color_match=2.0)


def test_inference_does_not_import_the_training_stack():
    """Start-up time: stylizing needs neither Lightning, torchvision, the loss network nor the
    training code (importing Lightning alone took ~2 s)."""
    code = (
        "import sys, hrstyle.inference, hrstyle.data.samples\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'torchvision')\n"
        "               or m.startswith(('hrstyle.training', 'hrstyle.losses', 'hrstyle.evaluation')))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
