"""Tokens: random bearer secrets bound to one identity, stored only as hashes, expiring, revocable.

A token reads ``pgw_<id>_<secret>``: 16 characters of id, 64 hex digits of secret (hex, so no
``_`` confuses the split and nothing needs escaping in an RTSP URL, where id and secret are the
digest user name and password). The store keeps the SHA-256 of the secret and the RFC 2617 HA1
that RTSP digest authentication needs, never the secret; files are written durably, readable by
the owner only (the HA1 alone opens RTSP feeds). Camera grants of identities live beside them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from keys import write_durably

from ...config import ConfigError
from .principals import Denied

log = logging.getLogger(__name__)

TOKEN_PREFIX = "pgw"
DEFAULT_TOKEN_TTL = 8 * 3600.0
MAX_TOKEN_TTL = 90 * 24 * 3600.0
RTSP_REALM = "privacy-gateway"
# the secret is hex: no "_" to confuse the split into id and secret, nothing to escape in an RTSP URL
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}_([A-Za-z0-9]{{16}})_([0-9a-f]{{64}})$")


@dataclass(frozen=True)
class TokenRecord:
    id: str
    identity: str
    digest: str  # SHA-256 of the secret, hex
    rtsp_ha1: str  # MD5(id:realm:secret), what RTSP digest authentication needs (RFC 2617)
    cameras: tuple[str, ...] | None
    issued: float
    expires: float
    issued_by: str
    revoked: float | None = None
    parent: str | None = None  # the token that issued it (None: a signed request); it dies with it

    def public(self) -> dict:
        """What may be shown about a token: never its digests."""
        return {"id": self.id, "identity": self.identity, "cameras": None if self.cameras is None else list(self.cameras),
                "issued": _iso(self.issued), "expires": _iso(self.expires), "issued_by": self.issued_by,
                "revoked": None if self.revoked is None else _iso(self.revoked)}


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_private_json(path: Path, data) -> None:
    """Durably, readable by the owner only (the token file holds hashes that open RTSP feeds)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_durably(path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=0o600)


def _keep_private(directory: Path) -> None:
    """The access directory 0700 and its files 0600, whatever made them (an older version, a copy, umask)."""
    for path, mode in ((directory, 0o700), *((f, 0o600) for f in sorted(directory.glob("*.json")))):
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & ~mode:
            log.warning("%s was readable by others (mode %o); made it %o", path, stat.S_IMODE(path.stat().st_mode), mode)
            path.chmod(mode)


class TokenStore:
    """Tokens and camera grants under ``<data_dir>/access/`` (``tokens.json``, ``grants.json``)."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenRecord] = {}
        self._grants: dict[str, tuple[str, ...]] = {}
        try:
            _keep_private(self.directory)
            tokens = json.loads((self.directory / "tokens.json").read_text("utf-8")) if (self.directory / "tokens.json").exists() else []
            self._tokens = {t["id"]: TokenRecord(**{**t, "cameras": None if t["cameras"] is None else tuple(t["cameras"])})
                            for t in tokens}
            grants = json.loads((self.directory / "grants.json").read_text("utf-8")) if (self.directory / "grants.json").exists() else {}
            self._grants = {name: tuple(cameras) for name, cameras in grants.items()}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{self.directory}: unreadable access files ({exc})") from None

    # -- tokens ----------------------------------------------------------------------------------

    def issue(self, identity: str, cameras: list[str] | None, ttl: float, issued_by: str,
              parent: str | None = None) -> tuple[str, TokenRecord]:
        """A new token: its string (shown once, never stored) and its record. ``parent``: the id of
        the token that asked for it; the new one expires no later, and is dead once it is."""
        if not 0 < ttl <= MAX_TOKEN_TTL:
            raise ValueError(f"ttl: {ttl:g} s is not between 0 and {MAX_TOKEN_TTL:g} s")
        token_id = "".join(secrets.choice("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(16))
        secret = secrets.token_hex(32)
        now = self._clock()
        expires = now + ttl
        if parent is not None:
            issuer = self._tokens.get(parent)
            if issuer is None:
                raise ValueError(f"no token {parent}")
            expires = min(expires, issuer.expires)
        record = TokenRecord(token_id, identity, hashlib.sha256(secret.encode()).hexdigest(),
                             hashlib.md5(f"{token_id}:{RTSP_REALM}:{secret}".encode()).hexdigest(),
                             None if cameras is None else tuple(sorted(set(cameras))), now, expires, issued_by,
                             parent=parent)
        with self._lock:
            self._tokens[token_id] = record
            self._save_tokens()
        return f"{TOKEN_PREFIX}_{token_id}_{secret}", record

    def check(self, token: str) -> TokenRecord:
        """The live record of ``token``; raises :class:`Denied` (401) naming why not, in general terms."""
        match = _TOKEN.match(token)
        record = self._tokens.get(match.group(1)) if match else None
        if record is None or not hmac.compare_digest(record.digest, hashlib.sha256(match.group(2).encode()).hexdigest()):
            raise Denied(401, "invalid token")
        if record.revoked is not None or self._dead_parent(record):
            raise Denied(401, "token revoked")
        if self._clock() >= record.expires:
            raise Denied(401, "token expired")
        return record

    def _dead_parent(self, record: TokenRecord) -> bool:
        """Whether a token up the chain that issued ``record`` was revoked (or is gone)."""
        seen = 0
        while record.parent is not None and seen < 64:
            parent = self._tokens.get(record.parent)
            if parent is None or parent.revoked is not None:
                return True
            record, seen = parent, seen + 1
        return False

    def live(self, token_id: str) -> TokenRecord | None:
        """The record of an unexpired, unrevoked token by id (RTSP digest usernames are token ids)."""
        record = self._tokens.get(token_id)
        if record is None or record.revoked is not None or self._clock() >= record.expires or self._dead_parent(record):
            return None
        return record

    def revoke(self, token_id: str) -> TokenRecord:
        with self._lock:
            record = self._tokens.get(token_id)
            if record is None:
                raise KeyError(token_id)
            if record.revoked is None:
                record = self._tokens[token_id] = TokenRecord(**{**record.__dict__, "revoked": self._clock()})
                self._save_tokens()
            return record

    def tokens(self, identity: str | None = None) -> list[TokenRecord]:
        return sorted((t for t in self._tokens.values() if identity is None or t.identity == identity),
                      key=lambda t: t.issued)

    def _save_tokens(self) -> None:
        now = self._clock()
        # expired tokens are kept a day, to answer "expired" rather than "invalid", then forgotten
        self._tokens = {k: t for k, t in self._tokens.items() if t.expires > now - 86400}
        _write_private_json(self.directory / "tokens.json",
                    [{**t.__dict__, "cameras": None if t.cameras is None else list(t.cameras)} for t in self._tokens.values()])

    # -- camera grants -----------------------------------------------------------------------------

    def granted(self, identity: str) -> frozenset[str]:
        return frozenset(self._grants.get(identity, ()))

    def grant(self, identity: str, cameras: list[str]) -> None:
        with self._lock:
            if cameras:
                self._grants[identity] = tuple(sorted(set(cameras)))
            else:
                self._grants.pop(identity, None)
            _write_private_json(self.directory / "grants.json", {k: list(v) for k, v in sorted(self._grants.items())})

    def grants(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in sorted(self._grants.items())}
