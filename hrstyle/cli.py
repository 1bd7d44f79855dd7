"""Shared plumbing of the scripts: user errors become one clear line, not a traceback."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import TypeVar

from hrstyle.errors import UserError, exception_chain

T = TypeVar("T")


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError behind ``exc`` (Hydra wraps errors raised during instantiation)."""
    return next((e for e in exception_chain(exc) if isinstance(e, UserError)), None)


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


# Hydra's command-line flags that take a value (the next argument is not an override).
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun"}
# Characters Hydra's override grammar takes in an unquoted value (plus its list/sweep syntax).
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_\-+./\\:%*@?|$,\[\]{}()=]*")
# ...of which these are its syntax (lists, dicts, sweeps, calls): quoted in a path (see ``_is_path_key``).
_GRAMMAR = re.compile(r"[\[\]{}(),=]")
# Keys whose values are file or folder paths (the last part of the dotted key): there a ``[``, ``{``, ``=``
# or ``,`` is part of a file name, unless the whole value is a list ``[a,b]`` or holds an interpolation.
_PATH_KEYS = {"input", "output", "checkpoint", "checkpoints", "ckpt_path", "image", "content", "styles",
              "content_masks", "style_masks", "content_mask", "style_mask", "output_dir", "cache_dir",
              "weights", "data_dir", "photos", "dir"}
# Config groups that `group=null` should remove from the defaults list (Hydra only knows `~group`).
_OPTIONAL_GROUPS = ("logger",)


def hydra_quote(value: str, literal: bool = False) -> str:
    """``value`` as one Hydra single-quoted string (for paths with spaces, accents, quotes, brackets).
    ``literal``: also escape ``${`` (an existing file's name, not an interpolation)."""
    if literal:
        value = value.replace("${", "\\${")  # OmegaConf reads \${ as a literal ${
    # Hydra: inside quotes a backslash is literal unless it precedes a quote.
    value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    value = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, value)
    return f"'{value}'"


def hydra_argv(argv: list[str], positional_key: str | None = None) -> list[str]:
    """Command-line arguments as people type them → arguments Hydra parses.

    * ``key=value`` whose value Hydra's grammar would reject (spaces, non-ASCII letters,
      quotes, ``&``, ...: the shell has already removed the user's quotes) is quoted:
      ``input=/photos/My Photo ü.jpg`` → ``input='/photos/My Photo ü.jpg'``.
    * A value that names an existing file or folder is quoted literally, whatever its characters
      (``[]{}=,``, ``${``, a leading ``~`` or ``-``); so is a value of a path key (``input``,
      ``output``, ``style.image``, ``data.content``, ``checkpoint``, ``ckpt_path``, ...) with
      ``[]{}(),=`` in it, unless it is a list ``[a,b]`` or holds an interpolation ``${...}``.
    * Arguments that are not ``key=value`` (or that name an existing file) become
      ``positional_key=[...]`` when ``positional_key`` is given: ``infer.py a.jpg "b c.jpg"``.
    * ``logger=null`` → ``~logger`` (remove an optional config group).
    Hydra's own flags (``--multirun``, ``--cfg job``, ...) pass through untouched.
    """
    out: list[str] = []
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        if os.path.exists(arg):  # an existing file is taken literally: `~x.jpg`, `-x.jpg`, `a=b.jpg`
            positional.append(arg)
            continue
        if arg.startswith("-"):
            out.append(arg)
            if arg in _FLAGS_WITH_VALUE:
                value = next(args, None)
                if value is not None:
                    out.append(value)
            continue
        if arg.startswith("~") and "=" not in arg:  # ~group: delete from the config
            out.append(arg)
            continue
        if "=" not in arg or arg.startswith("="):
            positional.append(arg)
            continue
        key, value = arg.split("=", 1)
        if key.lstrip("+~") in _OPTIONAL_GROUPS and value in ("null", "none", "None"):
            out.append(f"~{key.lstrip('+~')}")
        elif value and value[0] not in "'\"" and os.path.exists(os.path.expanduser(value)) \
                and (not _PLAIN_VALUE.fullmatch(value) or _GRAMMAR.search(value) or "$" in value):
            out.append(f"{key}={hydra_quote(value, literal=True)}")  # an existing path: always literally
        elif value and value[0] not in "'\"" and (not _PLAIN_VALUE.fullmatch(value) or _is_path_name(key, value)):
            out.append(f"{key}={hydra_quote(value)}")
        else:
            out.append(arg)
    if positional:
        if positional_key is None:
            raise UserError(f"unexpected argument {positional[0]!r}: settings are key=value (e.g. size=512)")
        items = ",".join(hydra_quote(p, literal=True) for p in positional)
        out.append(f"{positional_key}=[{items}]")
    return out


def _is_path_name(key: str, value: str) -> bool:
    """A path-valued key whose value has Hydra syntax characters that belong to a file name."""
    if key.lstrip("+~").rsplit(".", 1)[-1] not in _PATH_KEYS or not _GRAMMAR.search(value) or "${" in value:
        return False
    return not (value.startswith("[") and value.endswith("]"))  # a list of paths: Hydra's syntax


def prepare_argv(positional_key: str | None = None) -> None:
    """Rewrite ``sys.argv`` with ``hydra_argv`` before ``@hydra.main`` reads it (one-line error if impossible)."""
    try:
        sys.argv[1:] = hydra_argv(sys.argv[1:], positional_key)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
