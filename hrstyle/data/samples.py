"""A small built-in set of content images, generated procedurally (no files, no download).

They are synthetic landscapes (sky gradient, sun, layered ridges with texture, water,
buildings): enough edges, flat areas and fine texture for a smoke run or a demo when no
photo folder is at hand. Real training wants real photos.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _smooth_noise(rng: np.random.Generator, n: int, scale: int) -> np.ndarray:
    coarse = rng.standard_normal(n // scale + 2)
    return np.interp(np.arange(n) / scale, np.arange(coarse.size), coarse)


def sample_image(index: int, size: int = 256) -> Image.Image:
    """Deterministic synthetic landscape number ``index`` as a size×size RGB image."""
    rng = np.random.default_rng(1000 + index)
    h = w = size
    y = np.linspace(0, 1, h)[:, None, None]
    top, bottom = rng.uniform(0, 1, 3) * [0.3, 0.5, 1.0], rng.uniform(0.6, 1.0, 3)
    img = np.broadcast_to(top * (1 - y) + bottom * y, (h, w, 3)).copy()

    horizon = int(h * rng.uniform(0.45, 0.65))
    sun_x, sun_y, sun_r = rng.uniform(0.2, 0.8) * w, rng.uniform(0.1, 0.35) * h, rng.uniform(0.04, 0.09) * w
    yy, xx = np.mgrid[0:h, 0:w]
    sun = np.exp(-(((xx - sun_x) ** 2 + (yy - sun_y) ** 2) / (2 * sun_r**2)))[..., None]
    img = img * (1 - sun) + sun * np.array([1.0, 0.9, 0.6])

    for layer in range(3):  # ridges, far to near: darker and more textured
        ridge = horizon - h * (0.05 + 0.1 * (2 - layer)) + h * 0.06 * _smooth_noise(rng, w, max(w // 8, 2))
        mask = yy > ridge[None, :]
        colour = rng.uniform(0.1, 0.5, 3) * (0.6 + 0.2 * layer)
        texture = 0.08 * rng.standard_normal((h, w, 1)) * layer
        img = np.where(mask[..., None], colour + texture, img)

    water = yy > horizon
    reflection = img[np.clip(2 * horizon - yy, 0, h - 1), xx] * 0.6 + np.array([0.05, 0.1, 0.2])
    ripples = 0.04 * np.sin(yy * 0.9 + 3 * _smooth_noise(rng, w, 4)[None, :])[..., None]
    img = np.where(water[..., None], reflection + ripples, img)

    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(2, 6)):  # buildings with windows: sharp straight edges
        bw, bh = rng.integers(w // 16, w // 6), rng.integers(h // 8, h // 3)
        x0 = int(rng.integers(0, w - bw))
        y0 = horizon - bh
        shade = tuple(int(c) for c in rng.integers(40, 200, 3))
        draw.rectangle([x0, y0, x0 + bw, horizon], fill=shade)
        for wy in range(y0 + 4, horizon - 4, 8):
            for wx in range(x0 + 3, x0 + bw - 3, 6):
                if rng.random() < 0.6:
                    draw.rectangle([wx, wy, wx + 2, wy + 3], fill=(250, 230, 150))
    return pil.filter(ImageFilter.GaussianBlur(0.6))


def sample_images(count: int = 8, size: int = 256) -> list[Image.Image]:
    """The first ``count`` built-in sample images."""
    return [sample_image(i, size) for i in range(count)]
