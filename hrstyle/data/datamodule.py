"""Content photos for training: a folder (recursive), one photo, or the built-in samples."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from hrstyle.data.images import IMAGE_EXTENSIONS, find_images, open_rgb, pil_to_tensor
from hrstyle.data.samples import sample_images
from hrstyle.errors import UserError

ImageSource = Path | Image.Image


def _load(source: ImageSource) -> Image.Image:
    return source.copy() if isinstance(source, Image.Image) else open_rgb(source)


def _resize_short_side(img: Image.Image, short: int) -> Image.Image:
    w, h = img.size
    scale = short / min(w, h)
    return img.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.Resampling.BILINEAR)


class RandomCrops(Dataset):
    """Training crops: each photo is rescaled so its short side is a random length in
    [size, max_scale·size] (never upscaled beyond that), randomly cropped to size×size and
    randomly flipped. Items are (3, size, size) tensors in [0, 1].
    """

    def __init__(self, sources: list[ImageSource], size: int, max_scale: float = 2.0) -> None:
        self.sources, self.size, self.max_scale = sources, size, max_scale

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            img = _load(self.sources[index])
        except UserError as exc:  # one unreadable file must not kill a long run
            warnings.warn(f"skipping unreadable training image: {exc}", stacklevel=2)
            return self[random.randrange(len(self))]
        lo = self.size
        hi = max(lo, min(min(img.size), int(self.max_scale * self.size)))
        img = _resize_short_side(img, random.randint(lo, hi))
        x0, y0 = random.randint(0, img.width - self.size), random.randint(0, img.height - self.size)
        img = img.crop((x0, y0, x0 + self.size, y0 + self.size))
        if random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pil_to_tensor(img)


class FixedViews(Dataset):
    """Deterministic views for previews and validation: short side resized to ``size``,
    centre-cropped to size×size. With ``crop=False`` the image is only resized (long side
    = size), for single-image training. Items are (3, H, W) tensors in [0, 1]."""

    def __init__(self, sources: list[ImageSource], size: int, crop: bool = True) -> None:
        self.sources, self.size, self.crop = sources, size, crop

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = _load(self.sources[index])
        if not self.crop:
            scale = self.size / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
            return pil_to_tensor(img)
        img = _resize_short_side(img, self.size)
        x0, y0 = (img.width - self.size) // 2, (img.height - self.size) // 2
        return pil_to_tensor(img.crop((x0, y0, x0 + self.size, y0 + self.size)))


class ContentDataModule(pl.LightningDataModule):
    """Content images for style training.

    Args:
        content: a folder of photos (searched recursively for jpg/png/webp/bmp/tiff), a
            single photo (the paper's recipe: fit that one image, uncropped, at
            ``image_size`` on its long side), or ``None`` for the built-in samples.
        image_size: training crop size (single-image mode: long side).
        batch_size: training batch size (single-image mode: always 1).
        val_count: how many fixed images are used for validation losses and previews; they
            are the first ones of the sorted folder and are also trained on.
        val_size: size of the validation/preview views.
        num_workers: data-loading worker processes.
        max_scale: training photos are rescaled so their short side is in
            [image_size, max_scale·image_size] before cropping.
    """

    def __init__(
        self,
        content: str | None = None,
        image_size: int = 256,
        batch_size: int = 4,
        val_count: int = 4,
        val_size: int = 256,
        num_workers: int = 2,
        max_scale: float = 2.0,
    ) -> None:
        super().__init__()
        if image_size < 16:
            raise UserError(f"data.image_size must be at least 16, got {image_size}")
        if batch_size < 1 or val_count < 1:
            raise UserError("data.batch_size and data.val_count must be at least 1")
        self.content, self.image_size, self.batch_size = content, image_size, batch_size
        self.val_count, self.val_size, self.num_workers, self.max_scale = val_count, val_size, num_workers, max_scale
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def single_image(self) -> bool:
        return self.content is not None and Path(self.content).expanduser().is_file()

    def sources(self) -> list[ImageSource]:
        """The training images (paths, or PIL images for the built-in samples)."""
        if self.content is None:
            return list(sample_images())
        root = Path(self.content).expanduser()
        if not root.exists():
            raise UserError(f"content folder not found: {root} (set data.content=/path/to/photos)")
        files = find_images(root)
        if not files:
            raise UserError(
                f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found under {root} "
                "(set data.content=/path/to/photos, or data.content=null for the built-in samples)"
            )
        return files

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        sources = self.sources()
        if self.single_image:
            view = FixedViews(sources, self.image_size, crop=False)
            self.train_set, self.val_set = view, view
            self.batch_size = 1
        else:
            self.train_set = RandomCrops(sources, self.image_size, self.max_scale)
            self.val_set = FixedViews(sources[: self.val_count], self.val_size)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self.train_set) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_count, num_workers=0)
