"""Where a configuration keeps its vault and recordings: files under ``<data_dir>``, or an S3 bucket.

Either way the node-local part stays in ``<data_dir>/vault``: the audit log (``audit.log``) and,
under ``segments/``, the segment being sealed and each camera's lock. With ``storage.objects.s3``
the finished segments, key files, policies and the anchor go to the bucket, each as a whole
object when it is finished (keys.S3Objects), and so does a copy of the audit log, one object per
entry (keys.AuditMirror), and every finished recording (:class:`Recordings`). ``serve`` seals
through :func:`open_vault` with the co-signer; the commands that read a vault (``vault verify``,
``unmask``, ...) open the same one from the same configuration. The bucket's secret key is read
here and handed to the store, never logged.

Nodes of a cluster share the bucket, each under a prefix of its own, ``<prefix><node>/``: each node
is a vault of its own there (anchor, vault id, per-camera chains, audit log), so two nodes never
write one object name, and any node can verify and unmask another's part with ``node=`` (the
other node's audit log rebuilt from its copy in the bucket, under ``<data_dir>/vault/nodes/<node>``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from keys import (
    AuditError,
    AuditLog,
    AuditMirror,
    CoSigner,
    KeyDirectory,
    LocalObjects,
    ObjectLock,
    ObjectMissing,
    ObjectStore,
    S3Objects,
    StorageUnavailable,
    VaultStore,
)

from .config import GatewayConfig, s3_secret

#: recordings in the object store: ``recordings/<camera>/<file>``
RECORDINGS_PREFIX = "recordings/"


def vault_dir(config: GatewayConfig) -> Path:
    """The node's own vault directory: the audit log, unfinished segments (and, locally, the rest)."""
    return config.storage.data_dir / "vault"


def node_prefix(config: GatewayConfig, node: str | None = None) -> str:
    """The bucket prefix of ``node``'s objects (default: this node's): ``<prefix><node>/`` in a cluster."""
    s3 = config.storage.objects.s3 if config.storage.objects is not None else None
    if s3 is None:
        raise ValueError("no storage.objects.s3: nothing is kept in a bucket")
    if config.cluster is None:
        if node is not None:
            raise ValueError(f"node {node!r}: this configuration has no cluster section (one vault, no nodes)")
        return s3.prefix
    node = config.cluster.node if node is None else node
    if not node or node.startswith(".") or not all(c.isalnum() or c in "._-" for c in node):
        raise ValueError(f"node {node!r}: not a node name")
    return f"{s3.prefix}{node}/"


def vault_objects(config: GatewayConfig, node: str | None = None) -> ObjectStore:
    """The configured object store (of ``node``'s part, in a cluster), reached and checked (a bucket:
    raises :class:`keys.StorageUnavailable`)."""
    settings = config.storage.objects
    if settings is None:
        if node is not None:
            raise ValueError(f"node {node!r}: the vault is on this node's disk (no storage.objects.s3)")
        return LocalObjects(vault_dir(config))
    s3 = settings.s3
    lock = None if s3.object_lock is None else ObjectLock(s3.object_lock.mode, s3.object_lock.days)
    objects = S3Objects(s3.bucket, endpoint=s3.endpoint, region=s3.region, access_key_id=s3.access_key_id,
                        secret_access_key=s3_secret(s3), prefix=node_prefix(config, node), lock=lock, ca=s3.ca)
    try:
        objects.check()
    except OSError as exc:
        raise StorageUnavailable(f"storage.objects.s3: {exc}") from None
    return objects


def open_vault(config: GatewayConfig, directory: KeyDirectory | None = None, *, cosigner: CoSigner | None = None,
               manages_access: bool = False, node: str | None = None) -> VaultStore:
    """The configuration's vault: for sealing with ``cosigner`` (``directory`` required), else to read;
    ``node``: another node's part of a shared bucket (read, or unmask: its log gains the entry)."""
    root = vault_dir(config)
    if config.storage.objects is None:
        if node is not None:
            raise ValueError(f"node {node!r}: the vault is on this node's disk (no storage.objects.s3)")
        if cosigner is not None:
            assert directory is not None
            return VaultStore.for_sealing(root, directory, cosigner, manages_access=manages_access)
        return VaultStore.open(root, directory)
    own = node is None or (config.cluster is not None and node == config.cluster.node)
    objects = vault_objects(config, None if own else node)
    if not own:
        assert cosigner is None, "a node seals only its own part of the bucket"
        try:
            known = objects.exists("vault.json")
        except OSError as exc:
            raise StorageUnavailable(f"storage.objects.s3: {exc}") from None
        if not known:  # said before anything is made for it under data_dir
            raise ValueError(f"node {node!r}: no vault in {objects} (no node of that name has sealed into this "
                             "bucket)")
        root = root / "nodes" / node  # type: ignore[operator]
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    audit = AuditLog(root / "audit.log")
    audit.mirror = mirror = AuditMirror(objects)
    try:
        mirror.sync(audit)  # a replaced disk, an entry another machine appended, a copy left behind
    except OSError as exc:
        raise StorageUnavailable(f"storage.objects.s3: {exc}") from None
    except AuditError as exc:
        raise StorageUnavailable(f"the audit log and its copy in {objects} disagree: {exc}") from None
    return VaultStore.from_objects(objects, root / "segments", audit, directory,
                                   create=cosigner is not None, cosigner=cosigner, manages_access=manages_access)


@dataclass(frozen=True)
class Recording:
    """A finished recording file, where it is."""

    camera: str
    file: str
    size: int
    modified: dt.datetime
    #: on this node's disk (None: in the bucket)
    path: Path | None

    @property
    def name(self) -> str:
        return f"{self.camera}/{self.file}"


class Recordings:
    """A node's recording files: ``<data_dir>/recordings/<camera>/<file>.mp4`` while written (and always,
    without a bucket); with ``storage.objects.s3`` each finished file moves, once logged, to the object
    ``recordings/<camera>/<file>`` of the node's part of the bucket. Blocking: off the event loop."""

    def __init__(self, directory: Path, objects: ObjectStore | None = None) -> None:
        self.directory, self.objects = Path(directory), objects

    @classmethod
    def of(cls, config: GatewayConfig, node: str | None = None) -> Recordings:
        directory = config.storage.data_dir / "recordings"
        return cls(directory, None if config.storage.objects is None else vault_objects(config, node))

    def __str__(self) -> str:
        return str(self.directory) if self.objects is None else f"{self.objects}/{RECORDINGS_PREFIX[:-1]}"

    def archive(self, path: Path) -> None:
        """A finished, logged file: put in the bucket, then removed from the node (raises OSError, and
        the file stays, when the bucket fails; the next start moves it). Without a bucket: nothing."""
        if self.objects is None:
            return
        path = Path(path)
        self.objects.put_file(f"{RECORDINGS_PREFIX}{path.parent.name}/{path.name}", path)
        path.unlink()

    def archive_left(self, before: float) -> int:
        """Move the files an earlier run left on this disk (last written before ``before``, a
        ``time.time()``: finished, or the open one of a node that was killed); how many."""
        if self.objects is None:
            return 0
        moved = 0
        for path in sorted(self.directory.glob("*/*.mp4")):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < before:
                    self.archive(path)
                    moved += 1
        return moved

    def files(self, camera: str) -> set[str]:
        """The camera's recording files, here and in the bucket (one listing)."""
        found = {path.name for path in (self.directory / camera).glob("*.mp4")}
        if self.objects is not None:
            prefix = f"{RECORDINGS_PREFIX}{camera}/"
            found |= {name[len(prefix):] for name in self.objects.list(prefix)}
        return found

    def exists(self, camera: str, file: str) -> bool:
        if (self.directory / camera / file).is_file():
            return True
        return self.objects is not None and self.objects.exists(f"{RECORDINGS_PREFIX}{camera}/{file}")

    @contextlib.contextmanager
    def local(self, camera: str, file: str) -> Iterator[Path]:
        """The file on this machine: where it is, or downloaded from the bucket into a temporary file
        (removed afterwards). Raises :class:`FileNotFoundError` if it is in neither place."""
        path = self.directory / camera / file
        if path.is_file() or self.objects is None:
            if not path.is_file():
                raise FileNotFoundError(f"{camera}/{file}: no such recording in {self}")
            yield path
            return
        temporary = self.download(camera, file)
        try:
            yield temporary
        finally:
            temporary.unlink(missing_ok=True)

    def download(self, camera: str, file: str) -> Path:
        """The bucket's object in a new temporary file the caller removes; FileNotFoundError if missing."""
        assert self.objects is not None
        try:
            data = self.objects.get(f"{RECORDINGS_PREFIX}{camera}/{file}")
        except ObjectMissing:
            raise FileNotFoundError(f"{camera}/{file}: no such recording in {self}") from None
        fd, name = tempfile.mkstemp(prefix="recording-", suffix=Path(file).suffix)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return Path(name)

    def finished(self, open_files: set[Path] = frozenset()) -> list[Recording]:
        """Every finished recording, here and in the bucket, oldest first (``open_files`` left out)."""
        skip = {p.resolve() for p in open_files}
        out = []
        for path in self.directory.glob("*/*.mp4"):
            if path.resolve() in skip:
                continue
            with contextlib.suppress(FileNotFoundError):  # archived meanwhile: listed from the bucket
                stat = path.stat()
                out.append(Recording(path.parent.name, path.name, stat.st_size,
                                     dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC), path))
        if self.objects is not None:
            here = {(r.camera, r.file) for r in out}
            for name, size, modified in self.objects.describe(RECORDINGS_PREFIX):
                parts = name.split("/")
                if len(parts) == 3 and (parts[1], parts[2]) not in here:
                    out.append(Recording(parts[1], parts[2], size, modified, None))
        return sorted(out, key=lambda r: (r.modified, r.name))

    def delete(self, recording: Recording) -> None:
        if recording.path is not None:
            recording.path.unlink(missing_ok=True)
        else:
            assert self.objects is not None
            self.objects.delete(f"{RECORDINGS_PREFIX}{recording.camera}/{recording.file}")
