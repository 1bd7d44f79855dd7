"""Reading and writing images: any mode in, RGB [0, 1] tensors out, atomic writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from hrstyle.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root`` (recursive, sorted); ``root`` may also be one file."""
    root = Path(root).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(f"no such file or folder: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB with its EXIF orientation applied.

    Grayscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images are
    converted; a file that is not a readable image raises ``UserError``.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (transparency composited on white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: PIL's convert("L") clips instead of scaling.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image → (3, H, W) float32 tensor in [0, 1]."""
    arr = np.array(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [0, 1] → RGB PIL image (values clamped, rounded)."""
    # One float temporary, then uint8 (for a 24 MP image each float copy is 288 MB).
    arr = image.detach().float().clamp(0, 1).mul_(255.0).round_().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def load_image(path: str | os.PathLike, max_size: int | None = None) -> torch.Tensor:
    """Load an image as a (3, H, W) tensor in [0, 1], downscaled so max(H, W) <= max_size."""
    img = open_rgb(path)
    if max_size is not None and max(img.size) > max_size:
        img = resize_long_side(img, max_size)
    return pil_to_tensor(img)


def resize_long_side(img: Image.Image, size: int) -> Image.Image:
    """Resize (antialiased) so the longer side is ``size`` pixels, keeping the aspect ratio."""
    w, h = img.size
    scale = size / max(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def save_image_atomic(img: Image.Image, path: str | os.PathLike, protect: Iterable[Path] = (), **save_kwargs) -> Path:
    """Write ``img`` to ``path`` through a temporary file and a rename.

    A crash never leaves a half-written file, and a path in ``protect`` (the inputs)
    is never overwritten.
    """
    path = Path(path)
    resolved = path.resolve()
    if any(resolved == Path(p).resolve() for p in protect):
        raise UserError(f"refusing to overwrite the input image {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"unknown output image format {path.suffix!r} (use .png, .jpg or .webp)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format=fmt, **save_kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
