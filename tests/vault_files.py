"""Where a vault keeps a segment's key file, for tests that reach into the files: ``<n>.<d>.keys``,
``<d>`` from its digest (keys/vault.py), so tests find it by segment number."""

from __future__ import annotations

import re
from pathlib import Path


def key_file(directory: Path, number: int) -> Path:
    """The one key file of segment ``number`` in a camera's key directory (``VAULT/keys/<camera>``)."""
    (path,) = Path(directory).glob(f"{number:08d}.*.keys")
    return path


def key_object(names: list[str], camera: str, number: int) -> str:
    """The one key file object of a camera's segment ``number`` among object ``names``."""
    pattern = re.compile(rf"keys/{camera}/{number:08d}\.[0-9a-f]{{16}}\.keys")
    (name,) = [n for n in names if pattern.fullmatch(n)]
    return name
