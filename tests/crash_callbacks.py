"""Lightning callbacks the robustness tests plug into real training runs (via Hydra
``+callbacks.<name>._target_=crash_callbacks.<Class>``, with ``tests/`` on PYTHONPATH)."""

from __future__ import annotations

import json
import os
import signal

import torch
from pytorch_lightning import Callback


class KillAtStep(Callback):
    """SIGKILL the training process when it is about to run step ``step`` (a hard crash:
    no exception handler, no teardown, no final checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordSteps(Callback):
    """Append ``{"step", "rank", "loss", "batch_sum"}`` of every training step to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(self.path, "a") as f:
            record = {"step": trainer.global_step, "rank": trainer.global_rank, "loss": float(loss),
                      "batch_sum": float(batch.sum())}
            f.write(json.dumps(record) + "\n")


class PoisonAtStep(Callback):
    """Fill the generator's first weight with NaN before step ``step`` (a diverged run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.generator.parameters()).fill_(float("nan"))


class SignalAtStep(Callback):
    """Send ``signum`` (a name: SIGTERM, SIGUSR1) when the run is about to run step ``step``, as a scheduler
    preempting the job would: to every process of the job (the DataLoader workers first, then this one), as
    SLURM does."""

    def __init__(self, step: int, signum: str = "SIGTERM") -> None:
        self.step, self.signum = step, getattr(signal, signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            for pid in _children(os.getpid()):
                os.kill(pid, self.signum)
            os.kill(os.getpid(), self.signum)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc), e.g. DataLoader workers."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return found
