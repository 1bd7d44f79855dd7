"""Preemption-safe training: on SIGTERM or SIGUSR1, save ``last.ckpt`` at the current step and exit
with a status that says "interrupted, resumable".

Spot instances, Kubernetes and SLURM send SIGTERM (SLURM's ``--signal`` sends SIGUSR1) some seconds
before they take the machine. Lightning notices SIGTERM, finishes the running step and stops with
``SIGTERMException`` (a ``SystemExit`` whose status is 0): a scheduler would see a finished job and the
steps since the last periodic checkpoint would be lost. ``SaveOnPreemption`` writes ``last.ckpt``
then (through the trainer's atomic checkpoint IO), and ``train`` turns the exception into
``Interrupted`` so that the script prints the resume command and exits with ``EXIT_INTERRUPTED``.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

#: Exit status of an interrupted, resumable run: sysexits.h's EX_TEMPFAIL ("temporary failure; the user
#: is invited to retry"). Non-zero, so schedulers and shells see that the job did not finish.
EXIT_INTERRUPTED = 75
#: ``ckpt_path`` values that mean "the newest last.ckpt of this run folder, if any" (requeue-friendly).
RESUME_LATEST = ("last", "auto")


class Interrupted(Exception):
    """Training stopped on a preemption signal after saving ``checkpoint`` (None: nothing to save)."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint = step, checkpoint


class SaveOnPreemption(pl.Callback):
    """Save ``last.ckpt`` when a preemption signal stopped training, and forward SIGUSR1 to Lightning's
    SIGTERM handling (unless SLURM's auto-requeue already handles SIGUSR1)."""

    def __init__(self) -> None:
        self.saved: str | None = None
        self._previous_usr1: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning installs its SIGTERM handler when fit starts (before this hook) and a SIGUSR1 handler
        # only for SLURM auto-requeue; an unhandled SIGUSR1 would kill the process without a checkpoint.
        if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            self._previous_usr1 = signal.signal(signal.SIGUSR1, _forward_to_sigterm)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        path = last_checkpoint_path(trainer)
        if path is None:
            return
        trainer.save_checkpoint(path)  # every rank calls it; the strategy writes once, atomically
        self.saved = path
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint):
            callback.last_model_path = path

    def _restore(self) -> None:
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None


def _forward_to_sigterm(signum: int, frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def last_checkpoint_path(trainer: pl.Trainer) -> str | None:
    """Where the run's ``last.ckpt`` goes (its ModelCheckpoint folder), or None without one."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or not callback.dirpath:
        return None
    return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """The run folder's ``checkpoints/last.ckpt`` if it exists. Only this run's own folder: the default
    folders are time-stamped, so a job that is requeued must fix its folder (``hydra.run.dir=...``, as
    the printed resume command does); a sibling run may be another style with the same name."""
    own = Path(run_dir) / "checkpoints" / "last.ckpt"
    return own if own.is_file() else None


def resume_command(run_dir: str | os.PathLike, argv: list[str] | None = None) -> str:
    """The command that resumes this run in its own folder: the script and its arguments, with
    ``ckpt_path=last`` and ``hydra.run.dir=<run_dir>`` in place of any given ones."""
    argv = list(sys.argv if argv is None else argv)
    keep = [a for a in argv[1:] if a.split("=", 1)[0].lstrip("+") not in ("ckpt_path", "hydra.run.dir")]
    words = ["python", argv[0], *keep, "ckpt_path=last", f"hydra.run.dir={run_dir}"]
    return " ".join(shlex.quote(w) for w in words)
