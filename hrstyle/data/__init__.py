"""Content data: a folder of photos, one photo, or the built-in samples, as training crops."""

__all__ = ["ContentDataModule"]


def __getattr__(name: str):
    # The data module needs Lightning; importing the package must not (inference never needs it).
    if name == "ContentDataModule":
        from hrstyle.data.datamodule import ContentDataModule

        return ContentDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
