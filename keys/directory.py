"""The key directory: the gateway's signing key and a signed roster of public identities.

Layout of ``DIR``::

    gateway.key    the gateway's Ed25519 signing key (PKCS#8 PEM, mode 0600). It signs the
                   roster and, later, vault segments; it cannot unmask anything.
    roster.json    {"roster": {...}, "signature": ...}: every identity's public keys and roles,
                   and the revoked keys (``"revoked"``), signed with the gateway key over the
                   roster's canonical JSON.

The roster is verified on every open against the key in ``gateway.key``, so a roster edited
by hand, or re-signed with another key, is refused. Every change bumps ``serial``.

The gateway key can be rotated (:meth:`KeyDirectory.rotate`): the old key signs the new one, the
record goes under ``"rotations"`` in the roster, and the roster is signed by the new key. Vaults
sealed under the old key keep verifying: their anchor, followed along the chain of rotations,
reaches the current key (:meth:`KeyDirectory.gateway_chain`).

Each cluster node's own signing key is certified under ``"nodes"`` (:meth:`KeyDirectory.certify_node`,
:meth:`KeyDirectory.revoke_node`; keys/nodes.py says what a node key may sign and how revocation cuts
its signatures by time). Records there are never dropped.

An identity leaves the roster in one of two ways: :meth:`KeyDirectory.remove` drops it, and
:meth:`KeyDirectory.revoke` drops it and lists its keys (name, fingerprint, public keys, time)
under ``"revoked"``, where every reader of the roster sees them, and :meth:`KeyDirectory.add`
refuses them for good. Ending the identity's OpenBao access is the caller's part
(``keys.revoke_access``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from .durable import fsync_dir, make_dirs, write_durably
from .errors import DirectoryError
from .identity import PublicIdentity, canonical, check_name, fingerprint
from .nodes import NodeKey, NodeKeys, check_node_name, node_keys, now

_FORMAT = "privacy-gateway-roster"
_VERSION = 1  # "revoked" came later, as an optional field: a roster without it has revoked nobody


@dataclass(frozen=True)
class Revoked:
    """A revoked identity's keys, as the signed roster lists them: never added again."""

    name: str
    fingerprint: str  # of the signing key, :func:`keys.identity.fingerprint`
    signing: bytes  # Ed25519 public key, raw 32 bytes
    hpke: bytes  # X25519 public key, raw 32 bytes
    time: str  # UTC ISO time of the revocation

    def to_json(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "signing": _b64(self.signing),
                "hpke": _b64(self.hpke), "time": self.time}

    @classmethod
    def from_json(cls, data: dict) -> Revoked:
        signing, hpke = _unb64(data["signing"]), _unb64(data["hpke"])
        if len(signing) != 32 or len(hpke) != 32 or data["fingerprint"] != fingerprint(signing):
            raise ValueError(f"revoked identity {data['name']!r}: malformed keys or fingerprint")
        return cls(str(data["name"]), str(data["fingerprint"]), signing, hpke, str(data["time"]))

    def matches(self, identity: PublicIdentity) -> bool:
        """Whether ``identity`` reuses one of these keys (signing or X25519)."""
        return identity.signing == self.signing or identity.hpke == self.hpke


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def rotation_chain(records: list[dict]) -> list[bytes]:
    """The gateway keys a list of rotations leads through, first to last (raw public keys; empty
    for none), each record checked: the key it replaces signed the new one. ValueError if not."""
    chain: list[bytes] = []
    for record in records:
        try:
            old, new = base64.b64decode(record["old"], validate=True), base64.b64decode(record["new"], validate=True)
            body = canonical({"old": record["old"], "new": record["new"], "time": record["time"]})
            Ed25519PublicKey.from_public_bytes(old).verify(bytes.fromhex(record["signature"]), body)
        except (KeyError, TypeError, ValueError, InvalidSignature):
            raise ValueError("a gateway key rotation does not verify") from None
        if chain and chain[-1] != old:
            raise ValueError("the gateway key rotations do not form a chain")
        chain = [*(chain or [old]), new]
    return chain


class KeyDirectory:
    def __init__(self, path: Path, signer: Ed25519PrivateKey, roster: dict) -> None:
        self.path = path
        self._signer = signer
        self._roster = roster

    @property
    def gateway_public(self) -> bytes:
        return self._signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def signer(self) -> Ed25519PrivateKey:
        """The gateway's signing key: signs segments, key files and the gateway's log entries."""
        return self._signer

    @property
    def fingerprint(self) -> str:
        """The gateway key's fingerprint (:func:`keys.identity.fingerprint`), to compare out of band."""
        return fingerprint(self.gateway_public)

    def gateway_chain(self) -> list[bytes]:
        """Every gateway key this directory has had, first to current (raw public keys), each
        rotation checked: signed by the key it replaced. Raises :class:`DirectoryError` if one is not."""
        try:
            chain = rotation_chain(self._roster.get("rotations", []))
        except ValueError as exc:
            raise DirectoryError(f"{self.path}: roster.json: {exc}") from None
        if chain and chain[-1] != self.gateway_public:
            raise DirectoryError(f"{self.path}: the last gateway key rotation is not to gateway.key")
        return chain or [self.gateway_public]

    @property
    def rotations(self) -> list[dict]:
        return list(self._roster.get("rotations", []))

    def rotate(self) -> bytes:
        """Replace the gateway's signing key: the old key signs the new one (kept under
        ``"rotations"``), the roster is signed by the new key, the old private key is gone.
        Returns the new raw public key. Crash-safe: the new key is written beside the old one
        first (``gateway.key.next``); :meth:`open` finishes a rotation a crash interrupted."""
        new = Ed25519PrivateKey.generate()
        old_public = base64.b64encode(self.gateway_public).decode("ascii")
        new_public = base64.b64encode(new.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")
        time = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        record = {"old": old_public, "new": new_public, "time": time,
                  "signature": self._signer.sign(canonical({"old": old_public, "new": new_public, "time": time})).hex()}
        pem = new.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        write_durably(self.path / "gateway.key.next", pem, 0o600)
        self._signer = new
        self._change(gateway=new_public, rotations=[*self._roster.get("rotations", []), record])
        os.replace(self.path / "gateway.key.next", self.path / "gateway.key")
        fsync_dir(self.path)
        return base64.b64decode(new_public)

    @property
    def serial(self) -> int:
        return int(self._roster["serial"])

    @property
    def revoked(self) -> list[Revoked]:
        """The revoked identities' keys, oldest first (a roster without ``"revoked"`` has none)."""
        return [Revoked.from_json(item) for item in self._roster.get("revoked", [])]

    @property
    def departed(self) -> list[Revoked]:
        """Everyone who left the roster, removed or revoked, in the order they left: whose past
        signatures (audit entries, approvals) must still verify."""
        removed = [Revoked.from_json(item) for item in self._roster.get("removed", [])]
        return sorted([*removed, *self.revoked], key=lambda r: r.time)

    @property
    def nodes(self) -> list[NodeKey]:
        """Every node key ever certified, revoked ones included, in the order certified."""
        return [NodeKey.from_json(item) for item in self._roster.get("nodes", [])]

    def node_keys(self) -> dict[str, NodeKeys]:
        """:attr:`nodes` by actor (``node:<name>``): what verification looks a node's signature up in."""
        return node_keys(self._roster.get("nodes", []))

    def certify_node(self, name: str, signing: bytes, time: str | None = None) -> NodeKey:
        """Certify ``signing`` (raw Ed25519 public key) as node ``name``'s key; returns its record.

        Nothing changes if it is that node's key already. A node's earlier key is retired
        (``reason: replaced``, at ``time``). Refused (:class:`DirectoryError`): a revoked key, or a
        key that is another node's or a person's."""
        try:
            check_node_name(name)
            Ed25519PublicKey.from_public_bytes(signing)
        except ValueError as exc:
            raise DirectoryError(f"{self.path}: {exc}") from None
        nodes = self.nodes
        for key in nodes:
            if key.signing != signing:
                continue
            if key.revoked is not None:
                raise DirectoryError(f"{self.path}: the key of node {key.name!r} (fingerprint {key.fingerprint}) was "
                                     f"{key.reason or 'revoked'} at {key.revoked}; a revoked node key is never "
                                     "certified again (remove the node's key file to have it make a new one)")
            if key.name != name:
                raise DirectoryError(f"{self.path}: that key is already the key of node {key.name!r}")
            return key
        if any(i.signing == signing for i in self.identities) or any(d.signing == signing for d in self.departed):
            raise DirectoryError(f"{self.path}: that key is a person's")
        time = time or now()
        kept = [key.to_json() if key.name != name or key.revoked is not None
                else NodeKey(key.name, key.signing, key.certified, time, "replaced").to_json() for key in nodes]
        record = NodeKey(name, signing, time)
        self._change(nodes=[*kept, record.to_json()])
        return record

    def revoke_node(self, name: str, time: str | None = None) -> NodeKey:
        """Revoke node ``name``'s current key from ``time`` (default now): what it signed dated from
        then on no longer verifies, what it signed before still does. Returns the revoked record."""
        nodes = self.nodes
        current = [i for i, key in enumerate(nodes) if key.name == name and key.revoked is None]
        if not current:
            raise DirectoryError(f"{self.path}: node {name!r} has no certified key that is not revoked already")
        time = time or now()
        key = nodes[current[0]]
        record = NodeKey(key.name, key.signing, key.certified, time, "revoked")
        nodes[current[0]] = record
        self._change(nodes=[key.to_json() for key in nodes])
        return record

    @property
    def identities(self) -> list[PublicIdentity]:
        return [PublicIdentity.from_json(item) for item in self._roster["identities"]]

    def identity(self, name: str) -> PublicIdentity:
        for identity in self.identities:
            if identity.name == name:
                return identity
        raise KeyError(name)

    def with_role(self, role: str) -> list[PublicIdentity]:
        return [i for i in self.identities if role in i.roles]

    @classmethod
    def init(cls, path: Path) -> KeyDirectory:
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise DirectoryError(f"{path}: not empty; refusing to replace an existing key directory")
        make_dirs(path)
        signer = Ed25519PrivateKey.generate()
        pem = signer.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        write_durably(path / "gateway.key", pem, 0o600, exclusive=True)
        public = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        directory = cls(path, signer, {"format": _FORMAT, "version": _VERSION, "serial": 0,
                                       "gateway": base64.b64encode(public).decode("ascii"), "identities": []})
        directory._write()
        return directory

    @staticmethod
    def exists(path: Path) -> bool:
        """Whether ``path`` holds a key directory (its roster), without opening or checking it."""
        return (Path(path) / "roster.json").is_file()

    @staticmethod
    def revision(path: Path) -> int | None:
        """A number that changes whenever the directory's roster is rewritten (None: no directory), so a
        reader can cache what it opened and re-open only after a change."""
        try:
            return (Path(path) / "roster.json").stat().st_mtime_ns
        except OSError:
            return None

    @classmethod
    def open(cls, path: Path) -> KeyDirectory:
        path = Path(path)
        try:
            signer = load_pem_private_key((path / "gateway.key").read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise DirectoryError(f"{path}: no usable gateway.key ({getattr(exc, 'strerror', None) or exc})") from None
        if not isinstance(signer, Ed25519PrivateKey):
            raise DirectoryError(f"{path}: gateway.key is not an Ed25519 key")
        try:
            document = json.loads((path / "roster.json").read_text(encoding="ascii"))
            roster, signature = document["roster"], base64.b64decode(document["signature"], validate=True)
        except (OSError, ValueError, KeyError, TypeError):
            raise DirectoryError(f"{path}: roster.json is missing or malformed") from None
        try:
            signer.public_key().verify(signature, canonical(roster))
        except InvalidSignature:
            signer = cls._finish_rotation(path, signature, roster)
            if signer is None:
                raise DirectoryError(f"{path}: roster.json fails its signature check (edited outside privacy-gateway?)") from None
        if roster.get("format") != _FORMAT or roster.get("version") != _VERSION:
            raise DirectoryError(f"{path}: unsupported roster format {roster.get('format')!r} {roster.get('version')!r}")
        directory = cls(path, signer, roster)
        try:
            directory.identities  # noqa: B018 (validates every entry)
            directory.departed  # noqa: B018
            directory.nodes  # noqa: B018
        except (ValueError, KeyError, TypeError) as exc:
            raise DirectoryError(f"{path}: roster.json holds a malformed entry ({exc})") from None
        return directory

    @staticmethod
    def _finish_rotation(path: Path, signature: bytes, roster: dict) -> Ed25519PrivateKey | None:
        """The new key of a rotation a crash cut short (roster already signed by it), now in place."""
        try:
            signer = load_pem_private_key((path / "gateway.key.next").read_bytes(), password=None)
            if not isinstance(signer, Ed25519PrivateKey):
                return None
            signer.public_key().verify(signature, canonical(roster))
        except (OSError, ValueError, InvalidSignature):
            return None
        os.replace(path / "gateway.key.next", path / "gateway.key")
        fsync_dir(path)
        return signer

    def add(self, identity: PublicIdentity) -> None:
        """Add a new identity: refused for a reserved or taken name, a key already in the roster,
        or a revoked key (:meth:`check_new`)."""
        self.check_new(identity)
        self._change(identities=[*self._roster["identities"], identity.to_json()])

    def check_new(self, identity: PublicIdentity) -> None:
        """Raise :class:`DirectoryError` if :meth:`add` would refuse ``identity``, changing nothing: so
        that a caller can log the change it is about to make, then make it."""
        try:
            check_name(identity.name)
        except ValueError as exc:
            raise DirectoryError(f"{self.path}: {exc}") from None
        if any(i.name == identity.name for i in self.identities):
            raise DirectoryError(f"{self.path}: an identity named {identity.name!r} already exists")
        for revoked in self.revoked:
            if revoked.matches(identity):
                raise DirectoryError(f"{self.path}: the keys of {identity.name!r} were revoked (as {revoked.name!r}, "
                                     f"fingerprint {revoked.fingerprint}, {revoked.time}); a revoked key is never "
                                     "added again")
        for other in self.identities:
            if other.signing == identity.signing or other.hpke == identity.hpke:
                raise DirectoryError(f"{self.path}: the keys of {identity.name!r} are already {other.name!r}'s")
        for node in self.nodes:
            if node.signing == identity.signing:
                raise DirectoryError(f"{self.path}: the signing key of {identity.name!r} is the key of node {node.name!r}")

    def remove(self, name: str) -> PublicIdentity:
        """Drop the identity ``name`` from the roster (it could be added again); returns it. Its
        public keys stay listed under ``"removed"``, so that what it signed still verifies."""
        identity = self._named(name)
        record = Revoked(identity.name, identity.fingerprint, identity.signing, identity.hpke,
                         dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        self._change(identities=[i for i in self._roster["identities"] if i["name"] != name],
                     removed=[*self._roster.get("removed", []), record.to_json()])
        return identity

    def revoke(self, identity: PublicIdentity, time: str | None = None) -> Revoked:
        """Revoke ``identity``'s keys: drop it from the roster if it is there, and list its keys under
        ``"revoked"`` (once), so they are never added again. Returns the roster's record of it."""
        for revoked in self.revoked:
            if revoked.signing == identity.signing:
                return revoked  # already revoked (and so not in the roster: add refuses it)
        time = time or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        record = Revoked(identity.name, identity.fingerprint, identity.signing, identity.hpke, time)
        self._change(identities=[i for i in self._roster["identities"] if _unb64(i["signing"]) != identity.signing],
                     revoked=[*self._roster.get("revoked", []), record.to_json()])
        return record

    @classmethod
    def adopt(cls, path: Path, document: bytes, *, newer: bool = True) -> KeyDirectory:
        """Replace the roster of the directory at ``path`` with ``document`` (``roster.json`` as another
        copy of this directory wrote it: a cluster's nodes share one), once it verifies against this
        directory's gateway key; ``newer``: refuse it unless its serial is above the one here.
        Raises :class:`DirectoryError` (nothing written) if it does not verify or is not newer."""
        path = Path(path)
        here = cls.open(path)
        try:
            data = json.loads(document.decode("ascii"))
            roster, signature = data["roster"], base64.b64decode(data["signature"], validate=True)
            here.signer.public_key().verify(signature, canonical(roster))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise DirectoryError(f"{path}: the roster offered is malformed") from None
        except InvalidSignature:
            raise DirectoryError(f"{path}: the roster offered is not signed by this directory's gateway key "
                                 f"({here.fingerprint}): every copy of a key directory needs the same gateway.key") from None
        if roster.get("format") != _FORMAT or roster.get("version") != _VERSION:
            raise DirectoryError(f"{path}: the roster offered has an unsupported format")
        if newer and int(roster.get("serial", -1)) <= here.serial:
            raise DirectoryError(f"{path}: the roster offered (serial {roster.get('serial')}) is not newer than this "
                                 f"one ({here.serial})")
        adopted = cls(path, here.signer, roster)
        try:
            adopted.identities  # noqa: B018 (validates every entry)
            adopted.departed  # noqa: B018
            adopted.nodes  # noqa: B018
        except (ValueError, KeyError, TypeError) as exc:
            raise DirectoryError(f"{path}: the roster offered holds a malformed entry ({exc})") from None
        write_durably(path / "roster.json", document, 0o600)
        return adopted

    def _named(self, name: str) -> PublicIdentity:
        try:
            return self.identity(name)
        except KeyError:
            raise DirectoryError(f"{self.path}: no identity named {name!r}") from None

    def _change(self, **fields: object) -> None:
        """One change of the roster: the new fields, the serial bumped, signed and written."""
        self._roster = {**self._roster, **fields, "serial": self.serial + 1}
        self._write()

    def signed_roster(self) -> bytes:
        """``roster.json`` as it is on disk: the signed roster a vault keeps a copy of."""
        return (self.path / "roster.json").read_bytes()

    def _write(self) -> None:
        signature = self._signer.sign(canonical(self._roster))
        document = {"roster": self._roster, "signature": base64.b64encode(signature).decode("ascii")}
        # 0600 as before (the roster is public, but the directory beside gateway.key stays private)
        write_durably(self.path / "roster.json", (json.dumps(document, indent=2) + "\n").encode("ascii"), 0o600)
