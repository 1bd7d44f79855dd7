"""Shared plumbing of the scripts: user errors become one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from hrstyle.errors import UserError

T = TypeVar("T")


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError behind ``exc`` (Hydra wraps errors raised during instantiation)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def run_or_exit(fn: Callable[[], T]) -> T:
    """Run ``fn``; on a UserError print ``error: ...`` and exit with status 2."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        err = user_error_in(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
