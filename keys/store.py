"""The vault: what is kept where, behind one object. No path or object name leaves this module.

Objects, in an :class:`~keys.objects.ObjectStore` (for a local vault, files under ``VAULT``)::

    vault.json                 the anchor: format, version and the gateway's public signing key
    escrow.json                the vault's id and its co-signer (OpenBao address and transit
                               mount), signed by the gateway; written when it first seals
    roster.json                a copy of the key directory's signed roster (who may sign the log)
    policies/<sha256>.json     every policy that sealed something, by digest of its canonical JSON
    segments/<camera>/<n>.pgv  finished segments: sealed records (keys/vault.py)
    keys/<camera>/<n>.<d>.keys their wrapped data keys: a separate tree, so it can live on
                               storage that is not backed up (crypto-shredding then reaches
                               backups too); ``<d>`` from the key file's digest, which the
                               segment names (keys/vault.py); ``<n>.keys`` in older vaults

On the node's own disk, in the *scratch* directory (for a local vault ``VAULT/segments``, so
these sit exactly where they always have) and beside it::

    <camera>/<n>.pgv.partial   the segment being sealed, appended record by record
    <camera>/.lock             flock: one sealing process per camera
    VAULT/audit.log            the audit log (keys/audit.py), append-only under its own flock

A segment is an object only once it is finished: its partial is put whole, then removed.
After a crash between the two the object is authoritative and the partial is discarded
(:meth:`VaultStore.recover_partial`); a partial without its object is signed as recovered
if it is the camera's next segment and as far as the gateway's checkpoints in it vouch.

The anchor is written when a gateway first seals into the vault; afterwards only that
gateway's key (any key of its rotation chain) may add to it, or a cluster node's key its roster
certifies (keys/nodes.py; what such a node signs names it, ``"signer"``). A reader given the key directory checks the anchor against it;
without one, the anchor's key fingerprint is what to compare out of band.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .audit import AuditLog
from .cosigner import CoSigner, camera_prefix, grant_access, key_prefix, nodes_of
from .directory import KeyDirectory, rotation_chain
from .durable import make_dirs, remove_durably
from .errors import (
    CoSignerRefused,
    CoSignerUnavailable,
    ObjectMissing,
    StorageUnavailable,
    VaultError,
)
from .identity import UNMASK_ROLES, PublicIdentity, canonical, fingerprint
from .nodes import GATEWAY_ACTOR, NODE_PREFIX, NodeKeys, node_keys
from .objects import LocalObjects, MemoryObjects, ObjectStore
from .vault import (
    GENESIS,
    Segment,
    SegmentHeader,
    SegmentWriter,
    check_chain,
    keys_name,
    partial_name,
    read_segment,
    read_wraps,
    recover_partial,
    segment_name,
)
from .wrap import Grant, Wrap, recipients

__all__ = ["GATEWAY_ACTOR", "VaultStore", "check_camera"]

_FORMAT = "privacy-gateway-vault"
_VERSION = 1
_SEGMENT = re.compile(r"(\d{8})\.pgv")
_PARTIAL = re.compile(r"(\d{8})\.pgv\.partial")
_POLICY = re.compile(r"[0-9a-f]{64}")


def check_camera(name: str) -> str:
    """Camera ids become directory names: 1-64 letters, digits, ``-`` ``_`` ``.``, not starting with ``.``."""
    if not name or len(name) > 64 or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"camera id {name!r}: use 1-64 letters, digits and - _ . (not starting with .)")
    return name


def _unavailable(exc: OSError) -> StorageUnavailable:
    """A failure of the store (its message names it, a local file's error its path): not damage."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return StorageUnavailable(f"cannot read or write the vault: {exc.strerror or exc}{where}")


def _is_camera(name: str) -> bool:
    try:
        check_camera(name)
    except ValueError:
        return False
    return True


def _segments_of(camera: str) -> str:
    return f"segments/{check_camera(camera)}/"


def _keys_object(camera: str, number: int, sha256: str = "") -> str:
    return f"keys/{check_camera(camera)}/{keys_name(number, sha256)}"


def _key_files_prefix(camera: str, number: int) -> str:
    """The prefix of every key file a try at opening segment ``number`` kept (and of its older name)."""
    return f"keys/{check_camera(camera)}/{number:08d}."


class VaultStore:
    """One vault: its objects, the node's scratch directory, the audit log and the anchor's key."""

    def __init__(self, objects: ObjectStore, scratch: Path, audit: AuditLog, gateway: GatewayKeys,
                 identities: list[PublicIdentity]) -> None:
        self._objects, self._scratch = objects, Path(scratch)
        self.audit = audit
        self.gateway = gateway
        self.identities = identities
        #: the vault's id and co-signer as escrow.json records them (empty before the first seal)
        self.vault_id, self.escrow_address, self.escrow_mount = "", "", ""
        #: the gateway's client of the co-signer (sealing only); whether it also maintains people's access
        self.cosigner: CoSigner | None = None
        self.manages_access = False
        #: signing keys of people who left the roster (removed or revoked), by name: their past
        #: audit entries and approvals still verify
        self.departed: dict[str, bytes] = {}
        self._directory: tuple[Path, int | None] | None = None  # sealing: the key directory, its revision
        #: per camera, where its chain starts when this store holds only part of it (a bundle)
        self._chain_start: dict[str, tuple[int, str]] = {}

    @property
    def location(self) -> str:
        """Where the vault's objects are (a directory, a bucket), for messages."""
        return str(self._objects)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the gateway's raw public key, first 16 hex digits: for out-of-band checks."""
        return fingerprint(self.gateway.public_bytes(Encoding.Raw, PublicFormat.Raw))

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def for_sealing(cls, root: Path, directory: KeyDirectory, cosigner: CoSigner | None = None, *,
                    manages_access: bool = False) -> VaultStore:
        """Open (or create) the local vault at ``root`` for the gateway of ``directory``; refreshes the roster copy.

        ``cosigner``: the gateway's client of the vault's co-signer (sealing refuses without
        one); ``manages_access``: its token also keeps people's OpenBao access in step with the
        policies (the embedded default; see docs/escrow.md)."""
        root = Path(root)
        if cosigner is not None:
            cosigner.check()  # before the vault's directory is made
        if not (root / "vault.json").exists():
            if root.exists() and not root.is_dir():
                raise VaultError(f"{root}: not a directory")
            make_dirs(root)
            if any(p.name != "audit.log" for p in root.iterdir()):
                raise VaultError(f"{root}: not empty and not a vault (no vault.json); refusing to use it")
        return cls.from_objects(LocalObjects(root), root / "segments", AuditLog(root / "audit.log"), directory,
                                create=True, cosigner=cosigner, manages_access=manages_access)

    @classmethod
    def open(cls, root: Path, directory: KeyDirectory | None = None) -> VaultStore:
        """Open the existing local vault at ``root``; with ``directory``, its gateway key must be the vault's."""
        root = Path(root)
        return cls.from_objects(LocalObjects(root), root / "segments", AuditLog(root / "audit.log"), directory)

    @classmethod
    def from_objects(cls, objects: ObjectStore, scratch: Path, audit: AuditLog, directory: KeyDirectory | None = None,
                     *, create: bool = False, cosigner: CoSigner | None = None,
                     manages_access: bool = False) -> VaultStore:
        """The vault in ``objects``, sealing through ``scratch`` (a local directory) and logging to ``audit``.

        ``create``: as :meth:`for_sealing` (``directory`` required): write the anchor into an
        empty store, and refresh the roster copy. Otherwise as :meth:`open`. A store that fails
        (a bucket unreachable, credentials refused) is :class:`~keys.errors.StorageUnavailable`.
        """
        try:
            return cls._from_objects(objects, scratch, audit, directory, create, cosigner, manages_access)
        except OSError as exc:
            raise _unavailable(exc) from None

    @classmethod
    def _from_objects(cls, objects: ObjectStore, scratch: Path, audit: AuditLog, directory: KeyDirectory | None,
                      create: bool, cosigner: CoSigner | None, manages_access: bool) -> VaultStore:
        if create:
            if directory is None:
                raise ValueError("sealing needs the key directory")
            if cosigner is not None:
                cosigner.check()  # an unreachable co-signer is said plainly, before anything is written
            if not objects.exists("vault.json"):
                # a local vault keeps audit.log beside its objects; anything else means not ours
                if any(name != "audit.log" for name in objects.list()):
                    raise VaultError(f"{objects}: not empty and not a vault (no vault.json); refusing to use it")
                document = {"format": _FORMAT, "version": _VERSION,
                            "gateway": base64.b64encode(directory.gateway_public).decode()}
                objects.put("vault.json", (json.dumps(document, indent=2) + "\n").encode())
        try:
            document = json.loads(objects.get("vault.json").decode("ascii"))
            if document.get("format") != _FORMAT or document.get("version") != _VERSION:
                raise ValueError
            gateway_raw = base64.b64decode(document["gateway"], validate=True)
            Ed25519PublicKey.from_public_bytes(gateway_raw)
        except ObjectMissing:
            raise VaultError(f"{objects}: not a vault (no vault.json)") from None
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise VaultError(f"{objects}/vault.json: malformed") from None
        keys = _gateway_keys(objects, gateway_raw, directory, create)
        if directory is not None:
            identities, departed = directory.identities, {d.name: d.signing for d in directory.departed}
            keys.nodes = directory.node_keys()
        else:
            identities, departed, keys.nodes = _roster_copy(objects, keys)
        store = cls(objects, scratch, audit, keys, identities)
        store.departed = departed
        if create:
            assert directory is not None
            try:
                current = json.loads(objects.get("roster.json"))
            except ObjectMissing:
                current = None
            if current is None or current["roster"]["serial"] < directory.serial:
                objects.put("roster.json", directory.signed_roster())
            if cosigner is not None:
                store._bind_cosigner(directory, cosigner, manages_access)
            store._directory = (directory.path, KeyDirectory.revision(directory.path))
        store._read_escrow()
        return store

    # --- the co-signer ----------------------------------------------------------------------------

    def _read_escrow(self) -> None:
        try:
            document = json.loads(self._objects.get("escrow.json"))
            self.gateway.verify(bytes.fromhex(document["signature"]), canonical(document["escrow"]))
            escrow = document["escrow"]
            vault, address, mount = str(escrow["vault"]), str(escrow["address"]), str(escrow["mount"])
        except ObjectMissing:
            return
        except (InvalidSignature, OSError, ValueError, KeyError, TypeError):
            raise VaultError(f"{self._objects}/escrow.json: fails its signature check (edited?)") from None
        if not re.fullmatch(r"[0-9a-f]{16}", vault):
            raise VaultError(f"{self._objects}/escrow.json: malformed vault id")
        self.vault_id, self.escrow_address, self.escrow_mount = vault, address, mount

    def _bind_cosigner(self, directory: KeyDirectory, cosigner: CoSigner, manages_access: bool) -> None:
        """Record the co-signer in escrow.json (new vault id on the first seal); refuse another one."""
        self._read_escrow()
        # a cluster is the same co-signer while one of its recorded nodes is still listed (nodes are
        # added and replaced one at a time, as Raft itself has them); the record follows the list, so
        # unmask asks the nodes the gateway uses now
        recorded = set(nodes_of(self.escrow_address)) if self.vault_id else set()
        if self.vault_id and (self.escrow_mount != cosigner.mount or not recorded & set(cosigner.nodes)):
            raise VaultError(f"this vault's co-signer is {self.escrow_address} (mount {self.escrow_mount}), "
                             f"not {cosigner.address} (mount {cosigner.mount}): its keys are there")
        if not self.vault_id or recorded != set(cosigner.nodes):
            escrow = {"vault": self.vault_id or os.urandom(8).hex(), "address": cosigner.address,
                      "mount": cosigner.mount}
            document = {"escrow": escrow, "signature": directory.signer.sign(canonical(escrow)).hex()}
            self._objects.put("escrow.json", (json.dumps(document, indent=2) + "\n").encode())
            self._read_escrow()
        self.cosigner, self.manages_access = cosigner, manages_access
        self.audit.checkpoint = self._checkpoint_audit

    def checkpoint_with(self, cosigner: CoSigner) -> None:
        """Checkpoint this store's audit appends at ``cosigner`` (the gateway's client), as a
        sealing store does: for the gateway's own commands on an opened vault (``vault shred``)."""
        self.cosigner = cosigner
        self.audit.checkpoint = self._checkpoint_audit

    def _checkpoint_audit(self, seq: int, head: str) -> None:
        """Best effort: an entry whose checkpoint did not reach the co-signer is carried by the next
        one (a checkpoint names the log's head, not one entry); unmask checks what arrived."""
        assert self.cosigner is not None
        with contextlib.suppress(CoSignerRefused, CoSignerUnavailable):
            self.cosigner.checkpoint(self.vault_id, seq, head)

    def cosigner_anchors(self, cosigner: CoSigner, token: str | None = None) -> list[tuple[int, str, str]]:
        """The audit log's checkpoints the co-signer keeps, as :meth:`keys.audit.AuditLog.verify` anchors;
        raises :class:`VaultError` if they were rolled back."""
        kept = cosigner.checkpoints(self.vault_id, token)
        for (seq, _, version), (older_seq, _, older) in itertools.pairwise(kept):
            if older_seq > seq:
                raise VaultError(f"the co-signer's checkpoint of the audit log was rolled back (version {older} "
                                 f"records entry {older_seq}, version {version} entry {seq})")
        return [(seq, head, f"the co-signer's checkpoint (version {version})") for seq, head, version in kept]

    def unmask_cosigner(self, address: str | None = None, ca: Path | None = None) -> CoSigner:
        """A client (no token) of this vault's co-signer, or of ``address`` when one overrides it."""
        if not self.vault_id:
            raise VaultError(f"{self.location}: no co-signer recorded (escrow.json is missing)")
        return CoSigner(address or self.escrow_address, mount=self.escrow_mount, ca=ca)

    def grant_access(self, camera: str, grants: dict[str, Grant], identities: list[PublicIdentity],
                     admin: CoSigner | None = None) -> None:
        """Let exactly the identities ``grants`` name decrypt this camera's shares per class, and
        nobody else: through ``admin`` (an officer's client), else only when this gateway
        maintains access."""
        if admin is None:
            if self.cosigner is None or not self.manages_access:
                return
            admin = self.cosigner
        # this camera's prefixes are replaced (every class's: faces, plates, zones), the other
        # cameras' kept (one ACL policy per identity)
        for identity in identities:
            if not set(identity.roles) & set(UNMASK_ROLES):
                continue  # may never be granted an unmask: no login to maintain
            wanted = {key_prefix(self.vault_id, camera, cls) for cls, grant in grants.items()
                      if identity in recipients(grant, identities)}
            try:
                grant_access(admin, identity, wanted,
                             keep=lambda prefix: not camera_prefix(prefix, self.vault_id, camera))
            except CoSignerRefused:
                raise VaultError("the gateway's co-signer token may not maintain people's access "
                                 "(docs/escrow.md: who keeps access in a production layout)") from None

    # --- cameras and their segments -------------------------------------------------------------

    def cameras(self) -> list[str]:
        """Every camera with segments in the vault or a sealing directory on this node."""
        names = {name.split("/")[1] for name in self._objects.list("segments/") if name.count("/") == 2}
        if self._scratch.is_dir():
            names |= {p.name for p in self._scratch.iterdir() if p.is_dir()}
        return sorted(name for name in names if _is_camera(name))

    def _segment_files(self, camera: str) -> list[str]:
        prefix = _segments_of(camera)
        return [name[len(prefix):] for name in self._objects.list(prefix)
                if name.endswith(".pgv") and "/" not in name[len(prefix):]]

    def segment_numbers(self, camera: str) -> list[int]:
        """The numbers of the camera's finished segments, ascending (not checked; see :meth:`verify_chain`)."""
        return sorted(int(m[1]) for name in self._segment_files(camera) if (m := _SEGMENT.fullmatch(name)))

    def _read(self, camera: str, name: str) -> Segment:
        try:
            data = self._objects.get(_segments_of(camera) + name)
        except ObjectMissing:
            raise VaultError(f"{name}: cannot read (missing)") from None
        except OSError as exc:
            raise _unavailable(exc) from None
        return read_segment(data, name, self.gateway)

    def segment(self, camera: str, number: int) -> Segment:
        """One finished segment, its signature and digest verified (not its place in the chain)."""
        return self._read(camera, segment_name(number))

    def verify_chain(self, camera: str) -> Iterator[Segment]:
        """Every segment of the camera in order, checking the chain; raises :class:`VaultError` at the
        first break, and at a segment sealed into another vault (a chain moved here whole)."""
        camera = check_camera(camera)
        start = self._chain_start.get(camera, (1, GENESIS))
        for segment in check_chain(camera, ((name, self._read(camera, name)) for name in self._segment_files(camera)),
                                   start):
            if segment.header.version >= 3 and segment.header.vault != self.vault_id:
                raise VaultError(f"{segment_name(segment.number)}: sealed into another vault "
                                 f"({segment.header.vault}, this is {self.vault_id or 'a vault without an id'})")
            yield segment

    # --- key files ------------------------------------------------------------------------------

    def _key_files(self, camera: str, number: int) -> list[str]:
        prefix = _key_files_prefix(camera, number)
        return [name for name in self._objects.list(prefix) if name.endswith(".keys") and "/" not in name[len(prefix):]]

    def has_key_file(self, camera: str, number: int) -> bool:
        """Whether any key material of segment ``number`` is left: its key file, or one an earlier try
        at opening it kept (the segment was then sealed with another)."""
        return bool(self._key_files(camera, number))

    def _key_file(self, camera: str, number: int, named: str) -> tuple[str, bytes | None]:
        """The name and bytes (None: missing) of the key file of segment ``number`` whose header names
        ``named`` (its ``keys``; "" in segments sealed before headers named their key file)."""
        name = keys_name(number, named)
        try:
            return name, self._objects.get(_keys_object(camera, number, named))
        except ObjectMissing:
            return name, None
        except OSError as exc:
            raise _unavailable(exc) from None

    def wraps(self, camera: str, segment: Segment) -> dict[str, list[Wrap]]:
        """The wraps of a segment's key file; raises :class:`VaultError` if shredded, altered or swapped."""
        name, raw = self._key_file(camera, segment.number, segment.header.keys)
        return read_wraps(raw, name, self.gateway, segment.keys_sha256)

    def audit_anchors(self) -> list[tuple[int, str, str]]:
        """The audit log's checkpoints in segment trailers: ``(seq, line digest, segment)``, every camera.

        Each segment is read and its signature checked (not its place in the chain)."""
        anchors = []
        for camera in self.cameras():
            for number in self.segment_numbers(camera):
                segment = self.segment(camera, number)
                if segment.audit is not None:
                    anchors.append((*segment.audit, f"segment {camera}/{segment_name(number)}"))
        return anchors

    def reload_roster(self) -> list[PublicIdentity] | None:
        """The key directory's identities if its roster changed since it was last read (sealing
        only; the vault's copy is refreshed too), else None."""
        if self._directory is None:
            return None
        path, seen = self._directory
        revision = KeyDirectory.revision(path)
        if revision == seen:
            return None
        directory = KeyDirectory.open(path)
        self._directory = (path, revision)
        self.identities = directory.identities
        self.departed = {d.name: d.signing for d in directory.departed}
        self.gateway.nodes = directory.node_keys()
        self._objects.put("roster.json", directory.signed_roster())
        return self.identities

    # --- a recording's sealed part, for a remote unmask ---------------------------------------------

    def bundle(self, camera: str, recording: str, entries: list[dict]) -> dict:
        """What an unmask elsewhere needs of one recording: the anchor, co-signer record, roster copy,
        policies, the recording's segments and key files, and ``entries`` (the log's ``seal`` entry
        of it and any ``shred`` entry naming its segments, as the caller verified them)."""
        camera = check_camera(camera)
        seals = [e for e in entries if e["action"] == "seal" and e["details"].get("camera") == camera
                 and e["details"].get("recording") == recording]
        if not seals:
            raise VaultError(f"no sealed recording {recording!r} of camera {camera!r} in the audit log "
                             "(unknown, or still being recorded)")
        first, last = seals[-1]["details"]["segments"]
        names = ["vault.json", "escrow.json", _ROTATIONS, "roster.json"]
        for number in range(first, last + 1):
            segment = self.segment(camera, number)
            names += [f"policies/{segment.header.policy_sha256}.json", _segments_of(camera) + segment_name(number),
                      _keys_object(camera, number, segment.header.keys)]  # unless shredded (below)
        objects = {name: base64.b64encode(self._objects.get(name)).decode("ascii")
                   for name in dict.fromkeys(names) if self._objects.exists(name)}
        shreds = [e for e in entries if e["action"] == "shred"
                  and any(c == camera and first <= n <= last for c, n in e["details"]["segments"])]
        recorded = [e for e in entries if e["action"] == "recorded" and e["details"].get("camera") == camera
                    and e["details"].get("recording") == recording]
        return {"format": "privacy-gateway-sealed", "version": 1, "camera": camera, "recording": recording,
                "first": first, "objects": objects, "entries": [seals[-1], *shreds, *recorded[-1:]]}

    @classmethod
    def from_bundle(cls, bundle: dict, directory: KeyDirectory | None = None) -> VaultStore:
        """A store of what :meth:`bundle` gave (in memory; no audit log of its own): its segments
        verify as a chain from the bundle's first one, under the anchor's gateway key (which
        ``directory``, if given, must hold)."""
        try:
            if bundle["format"] != "privacy-gateway-sealed" or bundle["version"] != 1:
                raise ValueError
            objects = MemoryObjects({name: base64.b64decode(data, validate=True)
                                     for name, data in bundle["objects"].items()}, "the gateway's sealed records")
            camera, first = check_camera(bundle["camera"]), int(bundle["first"])
        except (ValueError, KeyError, TypeError):
            raise VaultError("the gateway sent malformed sealed records") from None
        store = cls.from_objects(objects, Path("/nonexistent/privacy-gateway-bundle"), AuditLog(Path("/nonexistent")),
                                 directory)
        head = store.segment(camera, first)
        store._chain_start[camera] = (first, head.header.previous)
        return store

    def check_roster_copy(self) -> None:
        """Check the signature of the vault's roster copy (also when readers were given the key directory)."""
        _roster_copy(self._objects, self.gateway)

    def shred_key_file(self, camera: str, number: int) -> None:
        """Delete a segment's key file, durably, and any an earlier try at opening it kept: nobody can
        unmask the segment afterwards."""
        for name in self._key_files(camera, number):
            self._objects.delete(name)

    # --- sealing: the node-local side -----------------------------------------------------------

    @contextlib.contextmanager
    def camera_lock(self, camera: str) -> Iterator[None]:
        """Exclusive right to append to a camera's chain (one sealing process per camera)."""
        directory = self._scratch / check_camera(camera)
        make_dirs(directory)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VaultError(f"camera {camera!r} is being sealed by another process") from None
            yield
        finally:
            os.close(fd)

    def _partial(self, camera: str, number: int) -> Path:
        return self._scratch / check_camera(camera) / partial_name(number)

    def _publish(self, camera: str, number: int, partial: Path) -> None:
        """Keep a finished partial as the segment's object, then remove it (see the module docstring)."""
        self._objects.put_file(_segments_of(camera) + segment_name(number), partial)
        remove_durably(partial)

    def open_segment(self, header: SegmentHeader, grants: dict[str, Grant], identities: list[PublicIdentity],
                     signer: Ed25519PrivateKey) -> SegmentWriter:
        """A writer for the next segment of ``header.camera`` (hold :meth:`camera_lock`); its key file is kept first."""
        camera, number = check_camera(header.camera), header.segment

        def save_keys(document: bytes) -> None:
            # under a name of its own (its digest): an earlier try at opening this segment whose write
            # failed may yet be completed by the store (an S3 gateway holds writes while SeaweedFS's
            # master is away), and then lands beside this one, not over it
            self._objects.put(_keys_object(camera, number, hashlib.sha256(document).hexdigest()), document)

        return SegmentWriter(self._partial(camera, number), header, grants, identities, signer,
                             save_keys=save_keys, publish=functools.partial(self._publish, camera, number))

    def partial_segments(self, camera: str) -> list[int]:
        """Numbers of the segments left unfinished on this node (by a crash), ascending."""
        directory = self._scratch / check_camera(camera)
        if not directory.is_dir():
            return []
        return sorted(int(m[1]) for p in directory.iterdir() if (m := _PARTIAL.fullmatch(p.name)))

    def recover_partial(self, camera: str, number: int, signer: Ed25519PrivateKey) -> int | None:
        """Finish an unfinished segment (hold :meth:`camera_lock`): the records kept, or None for a stale partial.

        A partial whose segment object exists is what a crash between keeping a finished segment
        and removing its partial leaves: the object is authoritative, the partial is removed.
        Otherwise it must be the camera's next segment, which no ``seal`` entry of the audit log
        covers yet, and only what its signed checkpoints vouch for is kept
        (:func:`keys.vault.recover_partial`); anything else raises :class:`VaultError` and the
        file is left where it is.
        """
        partial = self._partial(camera, number)
        if self._objects.exists(_segments_of(camera) + segment_name(number)):
            remove_durably(partial, missing_ok=True)
            return None
        chain = list(self.verify_chain(camera))
        head = (chain[-1].number, chain[-1].digest) if chain else (0, GENESIS)
        if self.audit.exists():
            for entry in self.audit.entries():
                details = entry["details"]
                if entry["action"] == "seal" and details.get("camera") == camera:
                    first, last = details["segments"]
                    if first <= number <= last:
                        raise VaultError(f"{partial_name(number)}: the audit log records segment {number} as "
                                         f"sealed (entry {entry['seq']}); a partial of it is not recovered")
        kept = recover_partial(partial, lambda header: self._key_file(camera, number, header.keys)[1], signer, head,
                               self.vault_id, self.audit.head(), self.gateway)
        self._publish(camera, number, partial)
        return kept

    # --- policies -------------------------------------------------------------------------------

    def store_policy(self, policy: dict) -> str:
        """Keep the policy a segment was sealed under; returns the version (digest) segments name."""
        data = canonical(policy)
        digest = hashlib.sha256(data).hexdigest()
        name = f"policies/{digest}.json"
        if not self._objects.exists(name):
            self._objects.put(name, data)
        return digest

    def load_policy(self, version: str) -> dict:
        missing = VaultError(f"policy {version[:16]}... is missing from {self.location}/policies")
        if not _POLICY.fullmatch(version):
            raise missing
        try:
            data = self._objects.get(f"policies/{version}.json")
        except (ObjectMissing, OSError):
            raise missing from None
        if hashlib.sha256(data).hexdigest() != version:
            raise VaultError(f"policies/{version}.json: altered (digest mismatch)")
        return json.loads(data)

    def policy_versions(self) -> list[str]:
        """Every stored policy's version, sorted."""
        names = (name.removeprefix("policies/").removesuffix(".json") for name in self._objects.list("policies/"))
        return sorted(name for name in names if _POLICY.fullmatch(name))

    # --- who signs the log ----------------------------------------------------------------------

    def key_of(self, actor: str) -> Ed25519PublicKey | NodeKeys | None:
        """The key ``actor``'s signatures verify with: the gateway's (every key of its rotation chain),
        a person's, a departed person's, or a node's certified keys (:class:`~keys.nodes.NodeKeys`,
        whose revocation :func:`keys.audit.verify_lines` checks against the entry's time); None if
        unknown. A node actor re-reads a changed roster first (sealing: a node certified or revoked
        on another node of the cluster since this store opened)."""
        if actor == GATEWAY_ACTOR:
            return self.gateway
        if actor.startswith(NODE_PREFIX):
            self.reload_roster()
            return self.gateway.node(actor)
        for identity in self.identities:
            if identity.name == actor:
                return identity.signing_key()
        if actor in self.departed:
            return Ed25519PublicKey.from_public_bytes(self.departed[actor])
        return None


class GatewayKeys:
    """The gateway keys a vault accepts signatures of: its anchor (vault.json) and every key the
    anchor was rotated to since, each rotation signed by the key it replaced (keys.directory)."""

    def __init__(self, chain: list[bytes], nodes: dict[str, NodeKeys] | None = None) -> None:
        self.chain = list(chain)
        self._keys = [Ed25519PublicKey.from_public_bytes(raw) for raw in self.chain]
        #: the node keys the roster certifies, by actor (``node:<name>``), each node's oldest first
        self.nodes: dict[str, NodeKeys] = dict(nodes or {})

    def node(self, actor: str) -> NodeKeys | None:
        """The keys the roster certified for the node ``actor`` names, or None if none."""
        return self.nodes.get(actor)

    def verify_as(self, actor: str, signature: bytes, data: bytes, time: str | None) -> None:
        """Verify a signature that names its signer (segments, checkpoints, key files a node wrote):
        ``"gateway"`` as :meth:`verify`; ``node:<name>`` by any key the roster certified for that node,
        which must not have been revoked before ``time`` (None: bound to a signed, dated object
        already; keys/nodes.py). :class:`VaultError` for a signer that no key here vouches for or that
        was revoked, :class:`InvalidSignature` for a signature that does not verify."""
        if actor == GATEWAY_ACTOR:
            self.verify(signature, data)
            return
        keys = self.nodes.get(actor)
        if keys is None:
            raise VaultError(f"signed by {actor!r}, whose key the key directory does not certify")
        try:
            keys.verify_at(signature, data, time)
        except ValueError as exc:
            raise VaultError(str(exc)) from None

    def verify(self, signature: bytes, data: bytes) -> None:
        """As :meth:`Ed25519PublicKey.verify`, by any of the keys (the newest first)."""
        for key in reversed(self._keys):
            try:
                key.verify(signature, data)
                return
            except InvalidSignature:
                continue
        raise InvalidSignature

    def public_bytes(self, encoding: Encoding, format: PublicFormat) -> bytes:
        """The anchor's: what the vault's fingerprint names."""
        return self._keys[0].public_bytes(encoding, format)


_ROTATIONS = "gateway-rotations.json"


def _gateway_keys(objects: ObjectStore, anchor: bytes, directory: KeyDirectory | None, create: bool) -> GatewayKeys:
    """The keys from the vault's anchor to the key directory's (or, without one, to the last
    rotation the vault keeps a copy of); refuses a directory whose chain does not reach the anchor."""
    if directory is not None:
        chain = directory.gateway_chain()
        if anchor not in chain:
            raise VaultError(f"{objects}: sealed by another gateway key than the one in {directory.path}")
        keys = chain[chain.index(anchor):]
        if create and len(keys) > 1:
            records = [r for r in directory.rotations if base64.b64decode(r["old"]) in keys[:-1]]
            objects.put(_ROTATIONS, (json.dumps(records, indent=2) + "\n").encode())
        return GatewayKeys(keys)
    try:
        records = json.loads(objects.get(_ROTATIONS))
        chain = rotation_chain(records)
    except ObjectMissing:
        return GatewayKeys([anchor])
    except (ValueError, TypeError):
        raise VaultError(f"{objects}/{_ROTATIONS}: a gateway key rotation does not verify") from None
    if anchor not in chain:
        raise VaultError(f"{objects}/{_ROTATIONS}: does not start at the vault's anchor")
    return GatewayKeys(chain[chain.index(anchor):])


def _roster_copy(objects: ObjectStore, gateway: GatewayKeys
                 ) -> tuple[list[PublicIdentity], dict[str, bytes], dict[str, NodeKeys]]:
    """The roster copy's identities, the signing keys of those who left it, by name, and the node keys
    it certifies, by actor."""
    try:
        document = json.loads(objects.get("roster.json").decode("ascii"))
        roster = document["roster"]
        gateway.verify(base64.b64decode(document["signature"], validate=True), canonical(roster))
        departed = sorted([*roster.get("removed", []), *roster.get("revoked", [])], key=lambda d: d["time"])
        return ([PublicIdentity.from_json(item) for item in roster["identities"]],
                {str(d["name"]): base64.b64decode(d["signing"], validate=True) for d in departed},
                node_keys(roster.get("nodes", [])))
    except ObjectMissing:
        return [], {}, {}
    except (InvalidSignature, OSError, ValueError, KeyError, TypeError):
        raise VaultError(f"{objects}/roster.json: fails its signature check (edited?)") from None
