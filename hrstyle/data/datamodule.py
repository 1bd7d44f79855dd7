"""Content photos for training: a folder (recursive), one photo, or the built-in samples."""

from __future__ import annotations

import math
import random
import signal
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset, Sampler

from hrstyle.data.samples import sample_images
from hrstyle.errors import UserError
from hrstyle.image.io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, find_images, open_rgb, pil_to_tensor
from hrstyle.paths import user_path

ImageSource = Path | Image.Image
MAX_CROP = 4096  # a batch of 4096² crops already needs ~100 GB of activations in the loss network


def _load(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    return source.copy() if isinstance(source, Image.Image) else open_rgb(source, max_pixels)


def _resize_short_side(img: Image.Image, short: int) -> Image.Image:
    w, h = img.size
    scale = short / min(w, h)
    return img.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.Resampling.BILINEAR)


def jitter_colour(img: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    """Scale brightness, contrast and saturation, each by a factor log-uniform in [1/(1+s), 1+s].

    Why: a few dozen training photos span few palettes; a style network that never saw a
    saturated or washed-out photo passes one through almost unchanged at inference.
    """
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(math.exp(rng.uniform(-1.0, 1.0) * math.log1p(strength)))
    return img


class RandomCrops(Dataset):
    """Training crops, indexed by *draw*: draw ``d`` is a pure function of ``(seed, d)``.

    Photos are visited in a fresh seeded permutation every ``len(sources)`` draws; each
    photo is rescaled so its short side is a random length in [size, max_scale·size]
    (a photo smaller than the crop is upscaled to it), randomly cropped to size×size and
    randomly flipped, and with ``color_jitter`` > 0 recoloured (:func:`jitter_colour`).
    Because nothing depends on global random state or on which worker loads it, a run
    resumed at step k sees exactly the crops of an uninterrupted run.
    An unreadable photo is skipped with a warning (the next photo of the permutation
    is used). Items are (3, size, size) tensors in [0, 1].
    """

    def __init__(
        self, sources: list[ImageSource], size: int, max_scale: float = 2.0, seed: int = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS, color_jitter: float = 0.0,
    ) -> None:
        self.sources, self.size, self.max_scale, self.seed, self.max_pixels = sources, size, max_scale, seed, max_pixels
        self.color_jitter = color_jitter
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.sources)

    def photo_of_draw(self, draw: int) -> int:
        """Index of the photo that draw ``d`` crops (epoch-wise seeded permutations)."""
        n = len(self.sources)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + draw // n))
        return int(order[draw % n])

    def __getitem__(self, draw: int) -> torch.Tensor:
        rng = random.Random(self.seed * 1_000_000_007 + draw)
        n = len(self.sources)
        first = self.photo_of_draw(draw)
        for offset in range(n):
            index = (first + offset) % n
            if index in self._bad:
                continue
            try:
                img = _load(self.sources[index], self.max_pixels)
                break
            except UserError as exc:  # one unreadable file must not kill a long run
                self._bad.add(index)
                warnings.warn(f"skipping unreadable training image: {exc}", stacklevel=2)
        else:
            raise UserError(f"none of the {n} training images can be read")
        if min(img.size) < self.size:
            warnings.warn(f"training image {self.sources[index]} ({img.width}x{img.height}) is smaller than the "
                          f"{self.size} px crop: it is upscaled", stacklevel=2)
        lo = self.size
        hi = max(lo, min(min(img.size), int(self.max_scale * self.size)))
        img = _resize_short_side(img, rng.randint(lo, hi))
        x0, y0 = rng.randint(0, img.width - self.size), rng.randint(0, img.height - self.size)
        img = img.crop((x0, y0, x0 + self.size, y0 + self.size))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.color_jitter > 0:
            img = jitter_colour(img, rng, self.color_jitter)
        return pil_to_tensor(img)


class ResumableDraws(Sampler[int]):
    """The draw indices one rank consumes, starting where training stands.

    Batch ``b`` (counted over the whole run) of rank ``r`` among ``world`` ranks holds draws
    ``(b·world + r)·batch_size … + batch_size − 1``: ranks never share a crop, and the
    sequence is fixed by the seed. Each ``iter()`` starts at the batch given by
    ``batches_done()`` (the trainer's restored step after a resume) and runs to the end of
    that epoch of ``batches_per_epoch`` batches.
    """

    def __init__(
        self, batch_size: int, batches_per_epoch: int, batches_done: Callable[[], int] = lambda: 0,
        rank: int = 0, world: int = 1,
    ) -> None:
        self.batch_size, self.batches_per_epoch, self.batches_done = batch_size, batches_per_epoch, batches_done
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def __iter__(self) -> Iterator[int]:
        done = self.batches_done()
        end = (done // self.batches_per_epoch + 1) * self.batches_per_epoch
        for b in range(done, end):
            first = (b * self.world + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)


class FixedViews(Dataset):
    """Deterministic views for previews and validation: short side resized to ``size``,
    centre-cropped to size×size. With ``crop=False`` the image is only resized (long side
    = size), for single-image training. Items are (3, H, W) tensors in [0, 1]."""

    def __init__(
        self, sources: list[ImageSource], size: int, crop: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS
    ) -> None:
        self.sources, self.size, self.crop, self.max_pixels = sources, size, crop, max_pixels

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = _load(self.sources[index % len(self.sources)], self.max_pixels)  # any draw index (single-image training)
        if not self.crop:
            scale = self.size / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
            return pil_to_tensor(img)
        img = _resize_short_side(img, self.size)
        x0, y0 = (img.width - self.size) // 2, (img.height - self.size) // 2
        return pil_to_tensor(img.crop((x0, y0, x0 + self.size, y0 + self.size)))


def leave_preemption_to_the_trainer(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGUSR1. SLURM signals every process of a job, and a worker that
    died of it took the training process down with "DataLoader worker killed" before the step could finish
    and be saved; the main process handles the signal (``training.preemption``) and shuts its workers down."""
    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


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
        color_jitter: strength of the random brightness/contrast/saturation change of each
            training crop (:func:`jitter_colour`; 0 = off). Validation views are never jittered.
        seed: fixes the sequence of training crops (``RandomCrops``); None picks one. It is
            stored in checkpoints, so a resumed run continues the same sequence.
        max_pixels: larger images are refused (skipped with a warning), see ``open_rgb``.

    With several devices each rank draws its own crops (``ResumableDraws``): the trainer
    must not add a DistributedSampler (``use_distributed_sampler: false``, the default in
    configs/trainer/). ``data.batch_size`` is per device.
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
        seed: int | None = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        color_jitter: float = 0.0,
    ) -> None:
        super().__init__()
        if not 16 <= image_size <= MAX_CROP:
            raise UserError(
                f"data.image_size must be between 16 and {MAX_CROP} pixels, got {image_size} "
                "(the crop is square; a larger one would not fit the memory of one GPU step)"
            )
        if batch_size < 1 or val_count < 1:
            raise UserError("data.batch_size and data.val_count must be at least 1")
        if color_jitter < 0:
            raise UserError(f"data.color_jitter must be >= 0 (0 = off), got {color_jitter}")
        self.content, self.image_size, self.batch_size = content, image_size, batch_size
        self.val_count, self.val_size, self.num_workers, self.max_scale = val_count, val_size, num_workers, max_scale
        self.seed = random.randrange(2**31) if seed is None else int(seed)
        self.max_pixels, self.color_jitter = max_pixels, color_jitter
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def single_image(self) -> bool:
        return self.content is not None and user_path(self.content).is_file()

    def sources(self) -> list[ImageSource]:
        """The training images (paths, or PIL images for the built-in samples)."""
        if self.content is None:
            return list(sample_images())
        root = user_path(self.content)
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
            view = FixedViews(sources, self.image_size, crop=False, max_pixels=self.max_pixels)
            view[0]  # fail now, not after the trainer started, if the one photo is unreadable
            self.train_set, self.val_set = view, view
            self.batch_size = 1
        else:
            self.train_set = RandomCrops(
                sources, self.image_size, self.max_scale, self.seed, self.max_pixels, self.color_jitter
            )
            self.val_set = FixedViews(self._readable(sources, self.val_count), self.val_size, max_pixels=self.max_pixels)

    def _readable(self, sources: list[ImageSource], count: int) -> list[ImageSource]:
        """The first ``count`` sources that open (previews must not die on a bad file)."""
        found = []
        for source in sources:
            try:
                _load(source, self.max_pixels)
            except UserError as exc:
                warnings.warn(f"skipping unreadable training image: {exc}", stacklevel=2)
                continue
            found.append(source)
            if len(found) == count:
                break
        if not found:
            raise UserError(f"none of the {len(sources)} training images under {self.content} can be read")
        return found

    def _batches_done(self) -> int:
        trainer = self.trainer
        return 0 if trainer is None else trainer.global_step * trainer.accumulate_grad_batches

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if trainer is not None and trainer.max_steps > 0:
            per_epoch = trainer.max_steps * trainer.accumulate_grad_batches  # one "epoch" = the whole run
        else:
            per_epoch = max(1, len(self.train_set) // (self.batch_size * world))
        sampler = ResumableDraws(self.batch_size, per_epoch, self._batches_done, rank, world)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=leave_preemption_to_the_trainer if self.num_workers > 0 else None,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=len(self.val_set), num_workers=0)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resuming: continue the checkpoint's crop sequence (its seed wins over the config's)."""
        if "seed" in state_dict:
            self.seed = int(state_dict["seed"])
            if isinstance(self.train_set, RandomCrops):
                self.train_set.seed = self.seed
