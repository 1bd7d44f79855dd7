import numpy as np
import pytest
import torch
from helpers import random_photo
from PIL import Image

from hrstyle.data import ContentDataModule
from hrstyle.data.samples import sample_images
from hrstyle.errors import UserError
from hrstyle.image.io import find_images, load_image, open_rgb, read_size, resize_long_side, save_image_atomic


def test_find_images_is_recursive_and_skips_non_images(photo_dir):
    names = [p.name for p in find_images(photo_dir)]
    assert sorted(names) == ["a.jpg", "b.png", "c.webp", "d.bmp", "e.tiff"]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_any_mode_loads_as_rgb(tmp_path, mode):
    ext = ".tiff" if mode in ("CMYK",) else ".png"
    path = random_photo(tmp_path / f"img{ext}", (20, 12), mode=mode)
    x = load_image(path)
    assert x.shape == (3, 12, 20) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr = np.linspace(0, 65535, 64 * 8).reshape(8, 64).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    x = load_image(path)
    assert x.max() > 0.99 and 0.45 < x.mean() < 0.55


def test_transparency_composited_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert torch.allclose(load_image(path), torch.ones(3, 8, 8))


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    shown = open_rgb(path)
    assert shown.size == (10, 30)
    assert np.asarray(shown)[:10].mean() > 200  # the white block is now on top


def test_read_size_matches_the_decoded_image_without_decoding(tmp_path):
    """The file runner plans its read-ahead from the header: the size must be what decoding gives."""
    img = Image.new("RGB", (300, 100), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    img.save(rotated, exif=exif.tobytes(), quality=95)
    plain = tmp_path / "plain.png"
    img.save(plain)
    assert read_size(plain) == open_rgb(plain).size == (300, 100)
    assert read_size(rotated) == open_rgb(rotated).size == (100, 300)
    assert read_size(rotated, max_size=150) == resize_long_side(open_rgb(rotated), 150).size == (50, 150)
    assert read_size(plain, max_size=1000) == (300, 100)  # never enlarged
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    assert read_size(broken) is None and read_size(tmp_path / "missing.png") is None


def test_unreadable_image_is_a_user_error(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(path)


def test_load_image_max_size_keeps_aspect(tmp_path):
    path = random_photo(tmp_path / "wide.png", (100, 40))
    assert load_image(path, max_size=50).shape == (3, 20, 50)


def test_save_is_atomic_and_never_overwrites_an_input(tmp_path):
    src = random_photo(tmp_path / "in.png", (16, 16))
    before = src.read_bytes()
    with pytest.raises(UserError, match="overwrite"):
        save_image_atomic(Image.new("RGB", (4, 4)), src, protect=[src])
    assert src.read_bytes() == before
    out = save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "sub" / "out.jpg", quality=90)
    assert out.is_file() and not list(out.parent.glob("*.tmp"))
    with pytest.raises(UserError, match="format"):
        save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "out.xyz")


def test_datamodule_folder_crops_and_validation(photo_dir):
    dm = ContentDataModule(str(photo_dir), image_size=32, batch_size=2, val_count=2, val_size=24, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (2, 3, 32, 32) and 0 <= batch.min() and batch.max() <= 1
    val1 = next(iter(dm.val_dataloader()))
    val2 = next(iter(dm.val_dataloader()))
    assert val1.shape == (2, 3, 24, 24) and torch.equal(val1, val2)  # fixed previews


def test_datamodule_single_image_mode(tmp_path):
    photo = random_photo(tmp_path / "one.jpg", (90, 60))
    dm = ContentDataModule(str(photo), image_size=45, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert dm.single_image and dm.batch_size == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (1, 3, 30, 45)  # whole photo, aspect kept, long side = image_size


def test_datamodule_builtin_samples():
    dm = ContentDataModule(None, image_size=64, batch_size=3, num_workers=0)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader())).shape == (3, 3, 64, 64)
    a, b = sample_images(2, 32), sample_images(2, 32)
    assert np.array_equal(np.asarray(a[1]), np.asarray(b[1]))  # deterministic
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))


def test_missing_and_empty_content_folders_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="content folder not found"):
        ContentDataModule(str(tmp_path / "nope")).setup("fit")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no images"):
        ContentDataModule(str(empty)).setup("fit")


def test_unreadable_training_image_is_skipped(photo_dir):
    (photo_dir / "zz_broken.png").write_bytes(b"garbage")
    dm = ContentDataModule(str(photo_dir), image_size=16, batch_size=6, num_workers=0)
    dm.setup("fit")
    with pytest.warns(UserWarning, match="skipping unreadable"):
        batches = list(dm.train_dataloader())
    assert sum(b.shape[0] for b in batches) == 6


def test_colour_jitter_recolours_crops_reproducibly_and_leaves_validation_alone(photo_dir):
    plain = ContentDataModule(str(photo_dir), image_size=32, val_count=2, val_size=24, num_workers=0)
    jittered = ContentDataModule(str(photo_dir), image_size=32, val_count=2, val_size=24, num_workers=0,
                                 color_jitter=0.5)
    plain.setup("fit"), jittered.setup("fit")
    a = torch.stack([plain.train_set[d] for d in range(8)])
    b = torch.stack([jittered.train_set[d] for d in range(8)])
    assert torch.equal(b, torch.stack([jittered.train_set[d] for d in range(8)]))  # a pure function of the draw
    # same photo, crop and flip; only the colours differ, by a bounded factor
    assert not torch.equal(a, b)
    assert (a.mean((1, 2, 3)) - b.mean((1, 2, 3))).abs().max() > 0.01
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.7
    assert torch.equal(plain.val_set[0], jittered.val_set[0])


def test_negative_colour_jitter_is_a_clear_error(photo_dir):
    with pytest.raises(UserError, match="color_jitter"):
        ContentDataModule(str(photo_dir), color_jitter=-0.1)
