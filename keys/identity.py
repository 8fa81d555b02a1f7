"""People's keys: an X25519 key for HPKE (unwrapping data keys) and an Ed25519 key (signing).

An identity may also be post-quantum: it then holds an ML-KEM-768 key as well, and everything
sealed to it uses the hybrid HPKE KEM ML-KEM-768+X25519 (X-Wing, :data:`SUITE_MLKEM768_X25519`)
over its ML-KEM key and its X25519 key, never plain DHKEM(X25519). Classic identities, their
files and their roster entries are exactly as before.

The private half lives only in a file the person keeps, encrypted at rest: scrypt derives
an AES-256-GCM key from the passphrase (at least :data:`MIN_PASSPHRASE` characters for a new
file), and the file's header (format, version, name, scrypt parameters) is bound as
associated data, so a header edited by hand does not open. New files use scrypt with
n = 2**17; files written with the earlier n = 2**15 still open, while parameters weaker than
that, or costly enough to be a denial of service, are refused before any derivation.
Every failure to open reads the same (:class:`IdentityError`): wrong passphrase, damaged or
edited file, refused parameters, or not an identity file at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .durable import write_durably
from .errors import IdentityError

ROLES = ("privacy-officer", "investigator", "auditor", "viewer", "publisher")
#: roles that may be named in a policy's unmask grants (a publisher is a camera or encoder, never a person)
UNMASK_ROLES = ROLES[:4]
_FORMAT = "privacy-gateway-identity"
_VERSION = 1
# scrypt cost of new files: 2**17 * 8 * 128 B = 128 MiB and ~0.3 s per attempt on a 2-core
# build host (files written before used 2**15, RFC 7914's interactive tier; they still open)
_SCRYPT = {"n": 2**17, "r": 8, "p": 1}
_SCRYPT_MIN_N = 2**15  # and n * r >= 2**15 * 8: nothing weaker than the first files this format wrote
_SCRYPT_MAX_MEMORY = 2**30  # bytes (128 * n * r): a file asking more is refused, not derived
_SCRYPT_MAX_N, _SCRYPT_MAX_P = 2**20, 4
#: the shortest passphrase a new identity file accepts (opening older files is not restricted)
MIN_PASSPHRASE = 12
RESERVED_NAMES = ("gateway",)  # the gateway's own name in the audit log (compared case-insensitively)
_MLKEM_PUBLIC_BYTES = 1184  # ML-KEM-768 encapsulation key (FIPS 203)

SUITE_X25519 = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
SUITE_MLKEM768_X25519 = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def canonical(obj: object) -> bytes:
    """The one byte encoding of a JSON value that signatures and associated data cover."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def fingerprint(public_key: bytes) -> str:
    """The one fingerprint format of a raw public key: SHA-256, first 16 hex digits."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def check_name(name: str) -> str:
    """A name for a new identity: its characters, and not a reserved name."""
    _check_characters(name)
    if name.lower() in RESERVED_NAMES:
        raise ValueError(f"identity name {name!r} is reserved (the gateway signs the audit log as "
                         f"{name.lower()!r}); choose another")
    return name


def _check_characters(name: str) -> str:
    """The characters alone: what a roster entry written before names were reserved is held to."""
    if not isinstance(name, str) or not name or len(name) > 64 or not all(c.isalnum() or c in "-_.@" for c in name):
        raise ValueError(f"identity name {name!r}: use 1-64 letters, digits and - _ . @")
    return name


def _check_scrypt(kdf: dict) -> dict[str, int]:
    """The scrypt parameters of a file header, refused (:class:`IdentityError`) when weaker than the
    oldest files or so costly that deriving them would be a denial of service."""
    params = {k: kdf[k] for k in ("n", "r", "p")}
    if not all(type(v) is int for v in params.values()):
        raise IdentityError
    n, r, p = params["n"], params["r"], params["p"]
    if not (_SCRYPT_MIN_N <= n <= _SCRYPT_MAX_N and 1 <= r and 1 <= p <= _SCRYPT_MAX_P):
        raise IdentityError
    if n * r < _SCRYPT_MIN_N * 8 or 128 * n * r > _SCRYPT_MAX_MEMORY:
        raise IdentityError
    return params


def check_roles(roles: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role {unknown[0]!r}: roles are {', '.join(ROLES)}")
    if not roles:
        raise ValueError("an identity needs at least one role")
    return tuple(sorted(set(roles)))


@dataclass(frozen=True)
class PublicIdentity:
    """What the key directory knows of a person: name, roles and public keys."""

    name: str
    roles: tuple[str, ...]
    hpke: bytes  # X25519 public key, raw 32 bytes
    signing: bytes  # Ed25519 public key, raw 32 bytes
    mlkem: bytes | None = None  # ML-KEM-768 public key, raw 1184 bytes; only post-quantum identities

    @property
    def post_quantum(self) -> bool:
        return self.mlkem is not None

    @property
    def fingerprint(self) -> str:
        """The identity's fingerprint: :func:`fingerprint` of its Ed25519 (signing) key."""
        return fingerprint(self.signing)

    def to_json(self) -> dict:
        data = {"name": self.name, "roles": list(self.roles), "hpke": _b64(self.hpke), "signing": _b64(self.signing)}
        if self.mlkem is not None:
            data["mlkem"] = _b64(self.mlkem)
        return data

    @classmethod
    def from_json(cls, data: dict) -> PublicIdentity:
        name = _check_characters(data["name"])
        mlkem = None
        if "mlkem" in data:
            mlkem = _check_mlkem(name, data["mlkem"])
        return cls(name, check_roles(data["roles"]), _unb64(data["hpke"]), _unb64(data["signing"]), mlkem)

    def hpke_key(self) -> X25519PublicKey:
        """The X25519 key alone; to seal to this person use :meth:`hpke_recipient`."""
        return X25519PublicKey.from_public_bytes(self.hpke)

    def hpke_recipient(self) -> tuple[hpke.Suite, X25519PublicKey | hpke.MLKEM768X25519PublicKey]:
        """The HPKE suite and public key to seal to this person: hybrid if post-quantum, else X25519."""
        if self.mlkem is None:
            return SUITE_X25519, self.hpke_key()
        # The hybrid reuses the identity's X25519 key. Safe here: a post-quantum identity is
        # only ever sealed to with the hybrid suite (this method is the one place choosing), so
        # the key serves one KEM; and even across KEMs the outputs are domain-separated, since
        # X-Wing hashes the raw DH value with its own label, ct_X and pk_X under SHA3-256,
        # while DHKEM(X25519) feeds it to HKDF under the "KEM" suite_id.
        return SUITE_MLKEM768_X25519, hpke.MLKEM768X25519PublicKey(
            MLKEM768PublicKey.from_public_bytes(self.mlkem), self.hpke_key()
        )

    def signing_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.signing)


def _check_mlkem(name: str, text: object) -> bytes:
    raw = _unb64(text) if isinstance(text, str) else b""
    if len(raw) != _MLKEM_PUBLIC_BYTES:
        raise ValueError(f"identity {name!r}: mlkem must be a {_MLKEM_PUBLIC_BYTES}-byte ML-KEM-768 public key")
    try:
        MLKEM768PublicKey.from_public_bytes(raw)  # FIPS 203 modulus check: every coefficient < q
    except ValueError:
        raise ValueError(f"identity {name!r}: mlkem is not a valid ML-KEM-768 public key") from None
    return raw


@dataclass(frozen=True)
class PrivateIdentity:
    """A person's private keys, held by that person's tools only, never by the gateway."""

    public: PublicIdentity
    hpke: X25519PrivateKey
    signing: Ed25519PrivateKey
    mlkem: MLKEM768PrivateKey | None = None  # present exactly when ``public.mlkem`` is

    @classmethod
    def generate(
        cls, name: str, roles: list[str] | tuple[str, ...], *, post_quantum: bool = False
    ) -> PrivateIdentity:
        """New keys; ``post_quantum`` adds an ML-KEM-768 key, so wraps to this person are hybrid."""
        x25519, signing = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        mlkem = MLKEM768PrivateKey.generate() if post_quantum else None
        public = PublicIdentity(
            check_name(name),
            check_roles(roles),
            x25519.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            mlkem.public_key().public_bytes_raw() if mlkem else None,
        )
        return cls(public, x25519, signing, mlkem)

    def hpke_opener(self) -> tuple[hpke.Suite, X25519PrivateKey | hpke.MLKEM768X25519PrivateKey]:
        """The HPKE suite and private key that open what :meth:`PublicIdentity.hpke_recipient` sealed."""
        if self.mlkem is None:
            return SUITE_X25519, self.hpke
        return SUITE_MLKEM768_X25519, hpke.MLKEM768X25519PrivateKey(self.mlkem, self.hpke)

    def save(self, path: Path, passphrase: str, *, salt: bytes | None = None, nonce: bytes | None = None) -> None:
        """Write the private keys encrypted under ``passphrase`` (``salt``/``nonce`` fixed only by tests)."""
        if len(passphrase) < MIN_PASSPHRASE:
            raise ValueError(f"a passphrase must be at least {MIN_PASSPHRASE} characters "
                             f"(this one has {len(passphrase)})")
        salt = salt or os.urandom(16)
        nonce = nonce or os.urandom(12)
        header = {"format": _FORMAT, "version": _VERSION, "name": self.public.name,
                  "kdf": {"name": "scrypt", **_SCRYPT, "salt": _b64(salt)}}
        inner = {
            "public": self.public.to_json(),
            "hpke": _b64(self.hpke.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())),
            "signing": _b64(self.signing.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())),
        }
        if self.mlkem is not None:
            inner["mlkem"] = _b64(self.mlkem.private_bytes_raw())  # the 64-byte FIPS 203 seed (d || z)
        secret = canonical(inner)
        sealed = AESGCM(_derive(passphrase, salt, _SCRYPT)).encrypt(nonce, secret, canonical(header))
        document = {**header, "nonce": _b64(nonce), "ciphertext": _b64(sealed)}
        # never replaces a file: an existing one raises FileExistsError
        write_durably(path, (json.dumps(document, indent=2) + "\n").encode("ascii"), 0o600, exclusive=True)

    @staticmethod
    def name_in(path: Path) -> str | None:
        """The name an identity file's header gives, or None if it does not read as one. Not yet
        authenticated (the header is bound to the ciphertext): only a hint, e.g. for which
        passphrase to ask."""
        try:
            name = json.loads(Path(path).read_text(encoding="ascii"))["name"]
            return _check_characters(name)
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    @classmethod
    def load(cls, path: Path, passphrase: str) -> PrivateIdentity:
        """Open an identity file (any passphrase length: older files may have shorter ones)."""
        try:
            document = json.loads(Path(path).read_text(encoding="ascii"))
            header = {k: document[k] for k in ("format", "version", "name", "kdf")}
            kdf = header["kdf"]
            if header["format"] != _FORMAT or header["version"] != _VERSION or kdf.get("name") != "scrypt":
                raise IdentityError
            params = _check_scrypt(kdf)  # before deriving anything
            key = _derive(passphrase, _unb64(kdf["salt"]), params)
            secret = AESGCM(key).decrypt(_unb64(document["nonce"]), _unb64(document["ciphertext"]), canonical(header))
            inner = json.loads(secret)
            public = PublicIdentity.from_json(inner["public"])
            hpke = X25519PrivateKey.from_private_bytes(_unb64(inner["hpke"]))
            signing = Ed25519PrivateKey.from_private_bytes(_unb64(inner["signing"]))
            mlkem = MLKEM768PrivateKey.from_seed_bytes(_unb64(inner["mlkem"])) if "mlkem" in inner else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, InvalidTag, UnicodeDecodeError, IdentityError):
            raise IdentityError(f"cannot open identity {path}: wrong passphrase or not a valid identity file") from None
        if (
            hpke.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != public.hpke
            or (mlkem.public_key().public_bytes_raw() if mlkem else None) != public.mlkem
        ):
            raise IdentityError(f"cannot open identity {path}: wrong passphrase or not a valid identity file")
        return cls(public, hpke, signing, mlkem)


def _derive(passphrase: str, salt: bytes, params: dict[str, int]) -> bytes:
    return Scrypt(salt=salt, length=32, **params).derive(passphrase.encode("utf-8"))
