"""Reading and writing images: any mode in, RGB [0, 1] tensors out, atomic writes."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from hrstyle.errors import UserError
from hrstyle.paths import user_path, write_atomic

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: Largest image (width × height) opened unless the caller raises it: Pillow's own limit
#: against decompression bombs (a 48 KB PNG can claim 20000×20000 pixels and take 1.2 GB).
DEFAULT_MAX_PIXELS = 89_478_485

# hrstyle checks every image against ``max_pixels`` itself (see ``open_rgb``), before it
# is decoded; Pillow's warning for sizes between its limit and twice that would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root`` (recursive, sorted); ``root`` may also be one file."""
    root = user_path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(f"no such file or folder: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def open_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as 8-bit RGB with its EXIF orientation applied.

    Grayscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images are
    converted; an animated GIF/WebP gives its first frame. A file that is not a readable
    image, or has more than ``max_pixels`` pixels (None: no limit), raises ``UserError``
    before it is decoded.
    """
    path = Path(path)
    if max_pixels is not None and max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow refuses at twice its limit: let ours decide
    elif max_pixels is None:
        Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            check_pixels(path, img.width, img.height, max_pixels)
            img.seek(0)
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except UserError:
        raise
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: refused before we see the size
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)) / 1e6:.1f} megapixels" if claimed else "too many pixels"
        raise UserError(
            f"{path} claims {size}, more than max_pixels={max_pixels} (a guard against decompression bombs). {_RAISE_LIMIT}"
        ) from exc
    except MemoryError as exc:
        raise UserError(f"not enough memory to decode {path}; lower max_pixels or free memory") from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt file can fail anywhere in a decoder
        if isinstance(exc, FileNotFoundError):
            raise UserError(f"image not found: {path}") from exc
        if isinstance(exc, IsADirectoryError):
            raise UserError(f"{path} is a folder, not an image") from exc
        if path.is_file() and path.stat().st_size == 0:
            raise UserError(f"cannot read image {path}: the file is empty (0 bytes)") from exc
        reason = str(exc) if isinstance(exc, (UnidentifiedImageError, OSError)) else f"{type(exc).__name__}: {exc}"
        raise UserError(f"cannot read image {path}: {reason}") from exc


_RAISE_LIMIT = "If the image is genuine, raise the limit, e.g. max_pixels=300000000 (null: no limit)."


def check_pixels(path: str | os.PathLike, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse an image of more than ``max_pixels`` pixels (a decompression bomb, or a
    panorama the user must allow explicitly) with a one-line ``UserError``."""
    if max_pixels is not None and width * height > max_pixels:
        raise UserError(
            f"{path} is {width}x{height} ({width * height / 1e6:.1f} megapixels), more than "
            f"max_pixels={max_pixels} (a guard against decompression bombs). {_RAISE_LIMIT}"
        )


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


def load_image(
    path: str | os.PathLike, max_size: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Load an image as a (3, H, W) tensor in [0, 1], downscaled so max(H, W) <= max_size
    (see ``open_rgb`` for ``max_pixels``)."""
    img = open_rgb(path, max_pixels)
    if max_size is not None and max(img.size) > max_size:
        img = resize_long_side(img, max_size)
    return pil_to_tensor(img)


def read_size(path: str | os.PathLike, max_size: int | None = None) -> tuple[int, int] | None:
    """``(width, height)`` the image will have after ``open_rgb`` (EXIF orientation applied) and
    ``resize_long_side(max_size)``, read from the file's header without decoding it; None when the
    header cannot be read (``open_rgb`` then reports why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                w, h = img.size
                if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated a quarter turn
                    w, h = h, w
    except Exception:  # noqa: BLE001 - any unreadable header: let the decoder say why
        return None
    return long_side_size(w, h, max_size) if max_size and max(w, h) > max_size else (w, h)


def long_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is ``size``, keeping the aspect ratio."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_long_side(img: Image.Image, size: int) -> Image.Image:
    """Resize (antialiased) so the longer side is ``size`` pixels, keeping the aspect ratio."""
    return img.resize(long_side_size(*img.size, size), Image.Resampling.LANCZOS)


def save_image_atomic(img: Image.Image, path: str | os.PathLike, protect: Iterable[Path] | frozenset[Path] = (),
                      **save_kwargs) -> Path:
    """Write ``img`` to ``path`` through a temporary file and a rename.

    A crash never leaves a half-written file, and a path in ``protect`` (the inputs)
    is never overwritten. A ``frozenset`` ``protect`` must hold resolved paths (a folder run
    resolves its inputs once: resolving every input for every output is quadratic in the folder's size).
    """
    path = Path(path)
    resolved = path.resolve()
    protected = protect if isinstance(protect, frozenset) else {Path(p).resolve() for p in protect}
    if resolved in protected:
        raise UserError(f"refusing to overwrite the input image {path}")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"unknown output image format {path.suffix!r} (use .png, .jpg or .webp)")
    return write_atomic(path, lambda f: img.save(f, format=fmt, **save_kwargs), "image")
