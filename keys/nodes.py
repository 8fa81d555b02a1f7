"""Signing keys per cluster node: each node signs as ``node:<name>`` with a key the gateway certified.

A single gateway signs its audit entries, segments, checkpoints and key files with the gateway
key (actor ``"gateway"``). A cluster node signs them with a key of its own, made at its first start
and kept on its own disk (``<data_dir>/node-<name>.key``, PKCS#8 PEM, mode 0600: the data
directory is the one thing never copied between nodes, unlike the key directory), as actor
``node:<name>``; the gateway key stays for what only it signs (the roster, a vault's escrow record,
an operator's commands).

A node key counts only once the key directory's signed roster lists it under ``"nodes"``::

    {"name": "gw-1", "signing": <base64 raw Ed25519 public key>, "fingerprint": ...,
     "certified": <UTC ISO time>, "revoked": <UTC ISO time>, "reason": "revoked" | "replaced"}

(``revoked`` and ``reason`` only once it is revoked). The roster is signed by the gateway key,
and after a rotation by the new one, so a node key is certified exactly when a gateway key of the
directory's rotation chain signed a roster listing it; a record added by hand breaks the roster's
signature. Records are never dropped: what a node signed must verify as long as the log does.

**Revocation** is by time. A signature by a revoked node key counts only on what it signed
*before* the revocation: an audit entry whose ``time`` is earlier, a segment whose trailer's
``ended`` (a checkpoint: its ``time``) is earlier. The times are the signer's own, signed with the
entry: a thief holding the key can backdate, which revocation cannot stop; what vouches for the
past is what was checkpointed out of the thief's reach before (the co-signer's checkpoints, the
segments' trailers, the cluster's copy of the log). Revocation stops everything dated after it.
A node whose own key is revoked refuses to start; a node whose key file is gone makes a new key,
and certifying it retires the old one (``reason: replaced``, the same cut by time).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
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

from .durable import write_durably
from .errors import DirectoryError
from .identity import fingerprint

__all__ = ["GATEWAY_ACTOR", "NODE_PREFIX", "NodeKey", "NodeKeys", "NodeSigner", "actor_of", "check_node_name", "node_actor",
           "node_key_path", "node_keys", "now"]

#: the actor of entries signed with the gateway key
GATEWAY_ACTOR = "gateway"
#: node actors are ``node:<name>``; a person's name cannot hold ``:``, so the two never meet
NODE_PREFIX = "node:"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # as the configuration's cluster.node


def check_node_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"node name {name!r}: 1 to 63 letters, digits, '.', '_' or '-', starting with a letter "
                         "or digit")
    return name


def node_actor(name: str) -> str:
    """The actor a node signs as."""
    return NODE_PREFIX + check_node_name(name)


def node_key_path(data_dir: Path, name: str) -> Path:
    """Where a node keeps its signing key: its own data directory (see the module docstring)."""
    return Path(data_dir) / f"node-{check_node_name(name)}.key"


def _time(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def now() -> str:
    """The time a certification or revocation is recorded with (UTC ISO, microseconds, as entries')."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class NodeKey:
    """A node's public signing key as the roster certifies it (and, once revoked, since when not)."""

    name: str
    signing: bytes  # Ed25519 public key, raw 32 bytes
    certified: str  # UTC ISO time
    revoked: str | None = None  # UTC ISO time from which its signatures no longer count
    reason: str | None = None  # "revoked" (keys revoke-node) or "replaced" (the node made a new key)

    @property
    def actor(self) -> str:
        return NODE_PREFIX + self.name

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.signing)

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.signing)

    def verify(self, signature: bytes, data: bytes) -> None:
        """As :meth:`Ed25519PublicKey.verify` (the revocation is :meth:`check`'s)."""
        self.public_key().verify(signature, data)

    def check(self, time: object) -> None:
        """Whether a signature dated ``time`` (the signed UTC ISO time) counts: ValueError saying why not."""
        if self.revoked is None:
            return
        try:
            when = _time(str(time))
        except ValueError:
            raise ValueError(f"signed by node {self.name!r}, whose key is revoked, at an unreadable time "
                             f"{time!r}") from None
        if when >= _time(self.revoked):
            raise ValueError(f"signed by node {self.name!r} at {time}, after its key (fingerprint "
                             f"{self.fingerprint}) was {self.reason or 'revoked'} at {self.revoked}")

    def to_json(self) -> dict:
        data = {"name": self.name, "signing": base64.b64encode(self.signing).decode("ascii"),
                "fingerprint": self.fingerprint, "certified": self.certified}
        if self.revoked is not None:
            data |= {"revoked": self.revoked, "reason": self.reason or "revoked"}
        return data

    @classmethod
    def from_json(cls, data: dict) -> NodeKey:
        signing = base64.b64decode(data["signing"], validate=True)
        if len(signing) != 32 or data["fingerprint"] != fingerprint(signing):
            raise ValueError(f"node {data['name']!r}: malformed key or fingerprint")
        _time(str(data["certified"]))
        revoked = data.get("revoked")
        if revoked is not None:
            _time(str(revoked))
        return cls(check_node_name(data["name"]), signing, str(data["certified"]),
                   None if revoked is None else str(revoked), data.get("reason"))


class NodeKeys:
    """Every key the roster certified for one node, oldest first: what its signatures verify with."""

    def __init__(self, actor: str, keys: list[NodeKey]) -> None:
        self.actor, self.keys = actor, list(keys)

    @property
    def current(self) -> NodeKey:
        return self.keys[-1]

    def verify_at(self, signature: bytes, data: bytes, time: object | None) -> None:
        """By whichever of the node's keys made it, dated ``time``: :class:`InvalidSignature` if none
        did, ValueError if the one that did was revoked before ``time`` (None: no date to check,
        the signed object is bound to a dated one)."""
        for key in reversed(self.keys):
            try:
                key.verify(signature, data)
            except InvalidSignature:
                continue
            if time is not None:
                key.check(time)
            return
        raise InvalidSignature


def node_keys(records: list[dict]) -> dict[str, NodeKeys]:
    """The roster's ``"nodes"`` records by actor (``node:<name>``)."""
    keys: dict[str, list[NodeKey]] = {}
    for record in records:
        key = NodeKey.from_json(record)
        keys.setdefault(key.actor, []).append(key)
    return {actor: NodeKeys(actor, found) for actor, found in keys.items()}


class NodeSigner:
    """A node's private signing key with the actor it signs as: what the sealers, the retention and
    the API are given in a cluster instead of the gateway key (:func:`actor_of` names it)."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        self.name, self.actor, self._key = name, node_actor(name), key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def public(self) -> bytes:
        """The raw public key, as the roster certifies it."""
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def load_or_create(cls, path: Path, name: str) -> NodeSigner:
        """The key kept at ``path``, made there (mode 0600) if there is none yet."""
        path = Path(path)
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            try:
                write_durably(path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), 0o600,
                              exclusive=True)
            except FileExistsError:  # another process of this node made it first: use that one
                pass
        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise DirectoryError(f"{path}: no usable node key ({getattr(exc, 'strerror', None) or exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise DirectoryError(f"{path}: not an Ed25519 key")
        return cls(name, key)


def actor_of(signer: object) -> str:
    """The actor an entry signed with ``signer`` names: a node's, or the gateway's (a bare key)."""
    return signer.actor if isinstance(signer, NodeSigner) else GATEWAY_ACTOR
