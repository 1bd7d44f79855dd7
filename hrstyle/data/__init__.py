"""Content data (folder, single photo, built-in samples) and image I/O."""

from hrstyle.data.images import IMAGE_EXTENSIONS, find_images, load_image, open_rgb, save_image_atomic

__all__ = ["IMAGE_EXTENSIONS", "ContentDataModule", "find_images", "load_image", "open_rgb", "save_image_atomic"]


def __getattr__(name: str):
    # The data module needs Lightning; image I/O must not (inference imports it, and never Lightning).
    if name == "ContentDataModule":
        from hrstyle.data.datamodule import ContentDataModule

        return ContentDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
