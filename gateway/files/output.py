"""Output files appear whole or not at all, and fail early when they cannot be written.

Everything the command line writes goes to a temporary file beside its target and is renamed
into place only when complete, so a failure never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from keys import atomic_path


class MediaError(Exception):
    """An input that cannot be read or an output that cannot be written; the message says which."""


def check_writable(path: Path) -> None:
    """Fail early, before any work, when ``path`` cannot be created."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise MediaError(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise MediaError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise MediaError(f"cannot write {path}: directory {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise MediaError(f"cannot write {path}: permission denied")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix), renamed onto it durably on success, removed on
    failure. Readable by the owner only: an unmasked output holds what the redaction hid."""
    check_writable(path)
    with atomic_path(path, mode=0o600) as tmp:
        yield tmp
