"""Where the vault keeps what must survive the node: a store of whole, named objects.

The seam an S3 bucket (or any object store) implements. Five operations, all on whole
objects: :meth:`~ObjectStore.put` (durable when it returns, replaces), :meth:`~ObjectStore.get`,
:meth:`~ObjectStore.exists`, :meth:`~ObjectStore.list` and :meth:`~ObjectStore.delete`
(durable). No rename, no append, no partial read or write: what is still growing (the
segment being sealed, the audit log) stays on the node's own disk. :meth:`~ObjectStore.put_file`
is ``put`` of a local file's contents; it has a default, and exists so that an
implementation can avoid holding a large finished segment in memory (S3: a multipart
upload from the file; :class:`LocalObjects`: a hard link, so a local vault never copies).

Names are ``/``-separated relative paths, as S3 keys are: ``vault.json``,
``segments/lobby/00000001.pgv``. :func:`check_name` refuses the empty name, a leading
``/``, empty components, components starting with ``.`` (so ``.`` and ``..``; hidden names
are reserved for an implementation's own temporary files), backslashes and control
characters. Implementations raise :class:`~keys.errors.ObjectMissing` for a missing object
and :class:`OSError` when the storage itself fails.

:class:`LocalObjects` is the implementation on a local directory: object ``a/b`` is the
file ``ROOT/a/b``, written with :func:`keys.durable.write_durably`, so the vault directory
layout of docs/vault-format.md is exactly the object names.
"""

from __future__ import annotations

import abc
import datetime as dt
import errno
import os
import shutil
from pathlib import Path

from .durable import atomic_path, make_dirs, remove_durably, write_durably
from .errors import ObjectMissing

__all__ = ["LocalObjects", "ObjectStore", "check_name", "check_prefix"]

# link(2) cannot: another file system (the scratch directory elsewhere), or none at all (FAT)
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def check_name(name: str) -> str:
    """``name`` if it is a valid object name, else :class:`ValueError` saying why."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"object name {name!r}: empty")
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"object name {name!r}: backslash or control character")
    if name.startswith("/"):
        raise ValueError(f"object name {name!r}: absolute")
    for part in name.split("/"):
        if not part or part.startswith("."):
            raise ValueError(f"object name {name!r}: empty component, '.', '..' or a hidden name")
    return name


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can start object names (its directory part a valid name), else :class:`ValueError`."""
    directory, _, _ = prefix.rpartition("/")
    if directory:
        check_name(directory)
    if "\\" in prefix or "\0" in prefix:
        raise ValueError(f"object prefix {prefix!r}: backslash or NUL")
    return prefix


class ObjectStore(abc.ABC):
    """Whole named objects; see the module docstring for names and errors."""

    @abc.abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name``, replacing any object of that name; durable when it returns."""

    def put_file(self, name: str, path: Path) -> None:
        """:meth:`put` the contents of the local file ``path`` (left in place; the caller removes it)."""
        self.put(name, Path(path).read_bytes())

    @abc.abstractmethod
    def get(self, name: str) -> bytes:
        """The object's bytes; :class:`~keys.errors.ObjectMissing` if there is none."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Whether an object of that name is stored."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """The names starting with ``prefix`` (a plain string prefix, as in S3), sorted."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove the object, durably; removing a missing object is not an error."""

    def describe(self, prefix: str = "") -> list[tuple[str, int, dt.datetime]]:
        """(name, size in bytes, when stored) of every object :meth:`list` names; the default reads them."""
        now = dt.datetime.now(dt.UTC)
        return [(name, len(self.get(name)), now) for name in self.list(prefix)]

    def __str__(self) -> str:
        """Where the objects are, for messages (a directory, a bucket URL)."""
        return type(self).__name__


class LocalObjects(ObjectStore):
    """Objects as files under a local directory (created by the first :meth:`put`)."""

    def __init__(self, root: Path, mode: int = 0o600) -> None:
        self.root = Path(root)
        self._mode = mode

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"LocalObjects({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*check_name(name).split("/"))

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        make_dirs(path.parent)
        write_durably(path, bytes(data), self._mode)

    def put_file(self, name: str, path: Path) -> None:
        """As :meth:`put`, by hard-linking ``path`` (same file system) or else copying it in chunks."""
        target = self._path(name)
        make_dirs(target.parent)
        with atomic_path(target, self._mode) as tmp:
            try:
                os.unlink(tmp)
                os.link(path, tmp)  # the finished file's data is already fsynced by its writer
                os.chmod(tmp, self._mode)
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                with open(path, "rb") as source, open(tmp, "wb") as copy:
                    shutil.copyfileobj(source, copy, 1 << 20)

    def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectMissing(f"{name}: no such object in {self.root}") from None

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> list[str]:
        directory, _, _ = check_prefix(prefix).rpartition("/")
        base = self.root.joinpath(*directory.split("/")) if directory else self.root
        names = []
        for top, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            relative = Path(top).relative_to(self.root).as_posix()
            for file in files:
                name = file if relative == "." else f"{relative}/{file}"
                if not file.startswith(".") and name.startswith(prefix):
                    names.append(name)
        return sorted(names)

    def delete(self, name: str) -> None:
        remove_durably(self._path(name), missing_ok=True)


class MemoryObjects(ObjectStore):
    """Objects in memory: a part of a vault as a remote unmask receives it (never durable)."""

    def __init__(self, objects: dict[str, bytes] | None = None, label: str = "memory") -> None:
        self._objects = {check_name(name): bytes(data) for name, data in (objects or {}).items()}
        self._label = label

    def __str__(self) -> str:
        return self._label

    def put(self, name: str, data: bytes) -> None:
        self._objects[check_name(name)] = bytes(data)

    def get(self, name: str) -> bytes:
        try:
            return self._objects[check_name(name)]
        except KeyError:
            raise ObjectMissing(f"{name}: no such object in {self._label}") from None

    def exists(self, name: str) -> bool:
        return check_name(name) in self._objects

    def list(self, prefix: str = "") -> list[str]:
        return sorted(name for name in self._objects if name.startswith(prefix))

    def delete(self, name: str) -> None:
        self._objects.pop(check_name(name), None)
