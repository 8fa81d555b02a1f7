"""The vault on the local file system: where segments, key files, policies and the log live.

Layout of ``VAULT``::

    vault.json                 the anchor: format, version and the gateway's public signing key
    roster.json                a copy of the key directory's signed roster (who may sign the log)
    audit.log                  the audit log (keys/audit.py)
    policies/<sha256>.json     every policy that sealed something, by digest of its canonical JSON
    segments/<camera>/<n>.pgv  sealed records (keys/vault.py)
    keys/<camera>/<n>.keys     their wrapped data keys: a separate tree, so it can live on
                               storage that is not backed up (crypto-shredding then reaches
                               backups too)

The anchor is written when a gateway first seals into the vault; afterwards only that
gateway's key may add to it. A reader given the key directory checks the anchor against it;
without one, the anchor's key fingerprint is what to compare out of band.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .audit import AuditLog
from .directory import KeyDirectory
from .durable import write_durably
from .errors import VaultError
from .identity import PublicIdentity, canonical
from .vault import segment_name

_FORMAT = "privacy-gateway-vault"
_VERSION = 1
GATEWAY_ACTOR = "gateway"


def check_camera(name: str) -> str:
    """Camera ids become directory names: 1-64 letters, digits, ``-`` ``_`` ``.``, not starting with ``.``."""
    if not name or len(name) > 64 or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"camera id {name!r}: use 1-64 letters, digits and - _ . (not starting with .)")
    return name


class VaultStore:
    def __init__(self, root: Path, gateway: Ed25519PublicKey, identities: list[PublicIdentity]) -> None:
        self.root = Path(root)
        self.gateway = gateway
        self.identities = identities
        self.audit = AuditLog(self.root / "audit.log")

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the gateway's raw public key, first 16 hex digits: for out-of-band checks."""
        return hashlib.sha256(_raw(self.gateway)).hexdigest()[:16]

    @classmethod
    def for_sealing(cls, root: Path, directory: KeyDirectory) -> VaultStore:
        """Open (or create) the vault for the gateway of ``directory``; refreshes the roster copy."""
        root = Path(root)
        anchor = root / "vault.json"
        gateway_raw = directory.gateway_public
        if not anchor.exists():
            if root.exists() and not root.is_dir():
                raise VaultError(f"{root}: not a directory")
            root.mkdir(parents=True, exist_ok=True)
            if any(p.name != "audit.log" for p in root.iterdir()):
                raise VaultError(f"{root}: not empty and not a vault (no vault.json); refusing to use it")
            document = {"format": _FORMAT, "version": _VERSION, "gateway": base64.b64encode(gateway_raw).decode()}
            write_durably(anchor, (json.dumps(document, indent=2) + "\n").encode())
        store = cls.open(root, directory)
        copy = root / "roster.json"
        current = json.loads(copy.read_text()) if copy.exists() else None
        if current is None or current["roster"]["serial"] < directory.serial:
            write_durably(copy, (directory.path / "roster.json").read_bytes())
        return store

    @classmethod
    def open(cls, root: Path, directory: KeyDirectory | None = None) -> VaultStore:
        """Open an existing vault; with ``directory``, its gateway key must be the vault's."""
        root = Path(root)
        try:
            document = json.loads((root / "vault.json").read_text(encoding="ascii"))
            if document.get("format") != _FORMAT or document.get("version") != _VERSION:
                raise ValueError
            gateway_raw = base64.b64decode(document["gateway"], validate=True)
            gateway = Ed25519PublicKey.from_public_bytes(gateway_raw)
        except FileNotFoundError:
            raise VaultError(f"{root}: not a vault (no vault.json)") from None
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise VaultError(f"{root}/vault.json: malformed") from None
        if directory is not None:
            if directory.gateway_public != gateway_raw:
                raise VaultError(f"{root}: sealed by another gateway key than the one in {directory.path}")
            identities = directory.identities
        else:
            identities = _roster_copy(root, gateway)
        return cls(root, gateway, identities)

    # --- where things are -----------------------------------------------------------------

    def cameras(self) -> list[str]:
        base = self.root / "segments"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def camera_dir(self, camera: str) -> Path:
        return self.root / "segments" / check_camera(camera)

    def segment_path(self, camera: str, number: int) -> Path:
        return self.camera_dir(camera) / segment_name(number)

    def keys_path(self, camera: str, number: int) -> Path:
        return self.root / "keys" / check_camera(camera) / f"{number:08d}.keys"

    # --- policies -----------------------------------------------------------------------

    def store_policy(self, policy: dict) -> str:
        """Keep the policy a segment was sealed under; returns the digest segments name."""
        data = canonical(policy)
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "policies" / f"{digest}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_durably(path, data)
        return digest

    def load_policy(self, digest: str) -> dict:
        path = self.root / "policies" / f"{digest}.json"
        try:
            data = path.read_bytes()
        except OSError:
            raise VaultError(f"policy {digest[:16]}... is missing from {self.root}/policies") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise VaultError(f"policies/{path.name}: altered (digest mismatch)")
        return json.loads(data)

    # --- who signs the log ------------------------------------------------------------------

    def key_of(self, actor: str) -> Ed25519PublicKey | None:
        if actor == GATEWAY_ACTOR:
            return self.gateway
        for identity in self.identities:
            if identity.name == actor:
                return identity.signing_key()
        return None

    @contextlib.contextmanager
    def camera_lock(self, camera: str) -> Iterator[None]:
        """Exclusive right to append to a camera's chain (one sealing process per camera)."""
        directory = self.camera_dir(camera)
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VaultError(f"camera {camera!r} is being sealed by another process") from None
            yield
        finally:
            os.close(fd)


def _raw(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _roster_copy(root: Path, gateway: Ed25519PublicKey) -> list[PublicIdentity]:
    path = root / "roster.json"
    try:
        document = json.loads(path.read_text(encoding="ascii"))
        roster = document["roster"]
        gateway.verify(base64.b64decode(document["signature"], validate=True), canonical(roster))
        return [PublicIdentity.from_json(item) for item in roster["identities"]]
    except FileNotFoundError:
        return []
    except (InvalidSignature, OSError, ValueError, KeyError, TypeError):
        raise VaultError(f"{path}: fails its signature check (edited?)") from None
