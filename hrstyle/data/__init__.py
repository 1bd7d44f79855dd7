"""Content data (folder, single photo, built-in samples) and image I/O."""

from hrstyle.data.datamodule import ContentDataModule
from hrstyle.data.images import IMAGE_EXTENSIONS, find_images, load_image, open_rgb, save_image_atomic

__all__ = ["IMAGE_EXTENSIONS", "ContentDataModule", "find_images", "load_image", "open_rgb", "save_image_atomic"]
