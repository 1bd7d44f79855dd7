"""Paths as people give them, and files written so that a failure never leaves a partial one."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from hrstyle.errors import UserError, exception_chain


def user_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``: literally when a file or folder has that name (``~notes.jpg``), else with
    ``~``/``~user`` expanded where that names a home folder (``os.path.expanduser`` leaves unknown users
    alone; ``Path.expanduser`` would raise)."""
    literal = Path(path)
    return literal if literal.exists() else Path(os.path.expanduser(str(path)))


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None], what: str = "file",
                 fsync: bool = False) -> Path:
    """Write ``path`` through a temporary file in the same folder and a rename (atomic on POSIX and
    Windows): the previous file stays intact until the new one is complete, and on any failure the
    temporary file is removed. A failed write (disk full, no permission, ...) raises one ``UserError``
    that names the file and the reason; ``what`` says what it was ("checkpoint", "image")."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp creates the file 0600; give the result the permissions a plain open() would (0666 less
        # the umask), so that a stylized photo or checkpoint can be shared like any other file.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = _write_failure(exc)
        if reason is None:
            raise
        kept = " (the previous one is intact)" if path.exists() else ""
        raise UserError(f"cannot write {what} {path}: {reason}{kept}") from exc
    return path


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return mask


#: Read once at import: setting the umask to read it is not safe while writer threads create files.
_UMASK = _read_umask()


def _write_failure(exc: BaseException) -> str | None:
    """Why a write failed, in a few words, or None for errors that are not about the write. The
    ``OSError`` may be hidden behind another one (torch.save's zip writer fails again while closing)."""
    chain = exception_chain(exc)
    for err in chain:
        if isinstance(err, OSError):
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                return "the disk is full (no space left on the device)"
            return err.strerror or str(err)
    # torch.save reports a failed write of its zip archive as a RuntimeError.
    if isinstance(chain[0], RuntimeError) and "write" in str(chain[0]).lower():
        return f"the write failed ({str(chain[0]).splitlines()[0]}); is the disk full?"
    return None
