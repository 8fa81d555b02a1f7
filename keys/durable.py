"""Durable file writes: after a crash a file holds its old bytes or its new ones, never a mix.

The one recipe, used by everything in keys/ that writes a file whole (and meant for the
gateway's own small state files too):

1. write a temporary file beside the target (same directory, so same file system), named
   ``.<stem>.<random><suffix>``: hidden, and with the target's suffix for tools that look at it;
2. fsync it;
3. rename it onto the target (``os.replace``, atomic), or link it there if the target must
   not exist yet (``exclusive``);
4. fsync the directory, so the rename itself survives a power cut.

On any failure before the rename the temporary file is removed and the target is untouched.
A crash can leave a hidden temporary file behind; it is never mistaken for the target.
:func:`remove_durably` and :func:`make_dirs` are the same care for unlink and mkdir, and
:func:`atomic_dir` the same recipe for a whole directory of files: filled under a hidden
temporary name beside the target, every file and directory in it fsynced, renamed into place
(over an empty directory at most), the parent fsynced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path", "fsync_dir", "make_dirs", "remove_durably", "write_durably"]

# link(2) fails with these where the file system has no hard links (FAT on a USB stick, some
# network shares); an exclusive write then claims the name with O_EXCL first
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = 0o700) -> None:
    """``mkdir -p`` whose new directories survive a crash (each new one's parent is fsynced);
    new directories are ``mode`` (private by default: what the vault and keys keep is sealed or secret)."""
    path = Path(path)
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue
        fsync_dir(directory.parent)


@contextlib.contextmanager
def atomic_path(path: Path, mode: int = 0o644, *, exclusive: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it becomes ``path`` durably.

    The temporary file exists (empty, with ``mode``) when the block starts; write it by path
    and close it. When the block ends without an exception the file is fsynced, renamed onto
    ``path`` and the directory fsynced; on an exception it is removed and ``path`` is left as
    it was. With ``exclusive`` an existing ``path`` is not replaced: :class:`FileExistsError`.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        yield tmp
        _fsync_file(tmp)
        if exclusive:
            _link_exclusive(tmp, path, mode)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a rename; after a link or a failure, the leftover


def write_durably(path: Path, data: bytes, mode: int = 0o644, *, exclusive: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see :func:`atomic_path`)."""
    with atomic_path(path, mode, exclusive=exclusive) as tmp, open(tmp, "wb") as out:
        out.write(data)


@contextlib.contextmanager
def atomic_dir(path: Path, mode: int = 0o755) -> Iterator[Path]:
    """A temporary directory beside ``path`` to fill; on success it becomes ``path`` durably.

    The directory exists (empty, with ``mode``) when the block starts. When the block ends
    without an exception every file and directory in it is fsynced, it is renamed onto
    ``path`` (which must not exist, or be an empty directory: rename(2) replaces that one
    atomically) and the parent fsynced; on an exception, or if the rename fails, it is removed
    with all it holds and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, mode)
        yield tmp
        for directory, _, files in os.walk(tmp, topdown=False):  # a directory after what it holds
            for name in files:
                if not os.path.islink(os.path.join(directory, name)):
                    _fsync_file(Path(directory, name))
            fsync_dir(Path(directory))
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_durably(path: Path, *, missing_ok: bool = False) -> None:
    """Unlink ``path`` and fsync its directory, so the removal survives a crash."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        if not missing_ok:
            raise
        return
    fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_exclusive(tmp: Path, path: Path, mode: int) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        # no hard links here: claim the name exclusively, then rename the finished file onto it
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        os.replace(tmp, path)
