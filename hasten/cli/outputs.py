"""Output paths of the commands, checked before any work starts.

Each command declares its output options with :func:`add_output` (a file or a folder); ``hasten``'s
``main`` calls :func:`check_outputs` right after parsing, so that an unwritable ``--out`` /
``--json`` / ``--markdown`` / ``--plot`` / ``--benchmarks-md`` or run folder fails in one line
before a model is loaded, not after the sampling it would have written.
"""

from __future__ import annotations

import argparse
import os

from hasten.errors import HastenError

OUTPUTS = "_outputs"  # the parser default that lists (dest, flag, kind) of a command's outputs
KINDS = ("file", "folder", "existing folder")


def add_output(parser: argparse.ArgumentParser, flag: str, kind: str = "file", **kwargs) -> argparse.Action:
    """``parser.add_argument(flag, **kwargs)`` for a path the command writes: a ``file``, a ``folder``
    (created if missing) or an ``existing folder`` (a run folder to continue)."""
    if kind not in KINDS:
        raise ValueError(f"add_output: kind={kind!r}, expected one of {KINDS}")
    action = parser.add_argument(flag, **kwargs)
    parser.set_defaults(**{OUTPUTS: [*(parser.get_default(OUTPUTS) or []), (action.dest, flag, kind)]})
    return action


def check_outputs(args: argparse.Namespace) -> None:
    """Raise a one-line :class:`HastenError` for the first output path of ``args`` that cannot be written."""
    for dest, flag, kind in getattr(args, OUTPUTS, None) or []:
        path = getattr(args, dest, None)
        if path and path != "-":  # "-": standard output
            check_output(path, kind, flag)


def check_output(path: str, kind: str = "file", flag: str = "") -> None:
    """Whether ``path`` can be written as a ``kind`` (:data:`KINDS`); the error names ``flag`` and the path."""
    where = f"{flag} {path}" if flag else path
    if os.path.isdir(path):
        if kind == "file":
            raise HastenError(f"{where}: is a folder; expected a file path to write")
        if not os.access(path, os.W_OK | os.X_OK):
            raise HastenError(f"{where}: folder is not writable")
        return
    if os.path.exists(path):
        if kind != "file":
            raise HastenError(f"{where}: is a file; expected a folder")
        if not os.access(path, os.W_OK):
            raise HastenError(f"{where}: file exists and is not writable")
    elif kind == "existing folder":
        raise HastenError(f"{where}: folder not found")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # the first existing ancestor must be a writable folder
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise HastenError(f"{where}: cannot be written, {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HastenError(f"{where}: cannot be written, folder {parent} is not writable")
