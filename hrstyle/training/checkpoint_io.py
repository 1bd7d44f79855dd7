"""Checkpoints written atomically: a crash or a full disk mid-write never leaves a corrupt last.ckpt."""

from __future__ import annotations

from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from hrstyle.paths import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes through ``write_atomic`` (a temporary file in the same folder,
    flushed to disk and renamed over the target), so the previous checkpoint stays valid until the new
    one is complete, and a failed write is one clear ``UserError`` with no temporary file left."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        write_atomic(path, lambda f: torch.save(checkpoint, f), "checkpoint", fsync=True)
