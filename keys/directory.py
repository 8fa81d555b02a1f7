"""The key directory: the gateway's signing key and a signed roster of public identities.

Layout of ``DIR``::

    gateway.key    the gateway's Ed25519 signing key (PKCS#8 PEM, mode 0600). It signs the
                   roster and, later, vault segments; it cannot unmask anything.
    roster.json    {"roster": {...}, "signature": ...}: every identity's public keys and roles,
                   signed with the gateway key over the roster's canonical JSON.

The roster is verified on every open against the key in ``gateway.key``, so a roster edited
by hand, or re-signed with another key, is refused. Every change bumps ``serial``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from .durable import make_dirs, write_durably
from .errors import DirectoryError
from .identity import PublicIdentity, canonical

_FORMAT = "privacy-gateway-roster"
_VERSION = 1


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
    def serial(self) -> int:
        return int(self._roster["serial"])

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
            raise DirectoryError(f"{path}: roster.json fails its signature check (edited outside privacy-gateway?)") from None
        if roster.get("format") != _FORMAT or roster.get("version") != _VERSION:
            raise DirectoryError(f"{path}: unsupported roster format {roster.get('format')!r} {roster.get('version')!r}")
        directory = cls(path, signer, roster)
        directory.identities  # validates every entry
        return directory

    def add(self, identity: PublicIdentity) -> None:
        if any(i.name == identity.name for i in self.identities):
            raise DirectoryError(f"{self.path}: an identity named {identity.name!r} already exists")
        self._roster = {**self._roster, "serial": self.serial + 1,
                        "identities": [*self._roster["identities"], identity.to_json()]}
        self._write()

    def signed_roster(self) -> bytes:
        """``roster.json`` as it is on disk: the signed roster a vault keeps a copy of."""
        return (self.path / "roster.json").read_bytes()

    def _write(self) -> None:
        signature = self._signer.sign(canonical(self._roster))
        document = {"roster": self._roster, "signature": base64.b64encode(signature).decode("ascii")}
        # 0600 as before (the roster is public, but the directory beside gateway.key stays private)
        write_durably(self.path / "roster.json", (json.dumps(document, indent=2) + "\n").encode("ascii"), 0o600)
