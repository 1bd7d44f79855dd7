"""ONNX Runtime sessions as the backend runs them: threads, arena, no spinning."""

from __future__ import annotations

import os
from typing import Any

import torch


class BackendUnavailable(RuntimeError):
    """The ONNX Runtime backend cannot be used here (the message says why)."""


def default_threads() -> int:
    """Intra-op threads: as many as torch uses (the machine's cores, or OMP_NUM_THREADS / set_num_threads)."""
    return max(1, torch.get_num_threads())


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from exc
    return onnxruntime


def session_options(threads: int | None = None, arena: bool = False) -> Any:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    # No memory pattern: with dynamic H and W it is planned after the first run of each shape
    # and allocated next to the arena, which doubled the peak at 1024² (5.1 against 2.7 GB)
    # and made the second image pay the page faults again (7 s instead of 3 s).
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # errors only: the NCHWc notices are not for users
    # Idle pool threads sleep instead of spinning: the ops here are milliseconds long, and spinning
    # threads steal the cores from PyTorch's own threads (pre/post-processing, another model in the
    # same process) and from other processes.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def make_session(model: str | os.PathLike | bytes, threads: int | None = None, arena: bool = False) -> Any:
    ort = import_onnxruntime()
    source = model if isinstance(model, bytes) else str(model)
    # The arena grows by what is requested, not by the next power of two: the untouched rest of a
    # doubled chunk costs nothing, but a doubled chunk that is later touched does.
    provider = ("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})
    return ort.InferenceSession(source, session_options(threads, arena), providers=[provider])
