"""Training: the LightningModule and the Hydra-driven ``train`` entry point."""

from hrstyle.training.module import CHECKPOINT_KEY, StyleTransferModule

__all__ = ["CHECKPOINT_KEY", "StyleTransferModule"]
