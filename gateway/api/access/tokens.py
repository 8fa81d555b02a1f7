"""Tokens: random bearer secrets bound to one identity, stored only as hashes, expiring, revocable.

A token reads ``pgw_<id>_<secret>``: 16 characters of id, 64 hex digits of secret (hex, so no
``_`` confuses the split and nothing needs escaping in an RTSP URL, where id and secret are the
digest user name and password). The store keeps the SHA-256 of the secret and the RFC 2617 HA1
that RTSP digest authentication needs, never the secret. Camera grants of identities live beside
them. Where they are written is a :class:`~gateway.state.TokenRows`: this node's files by default
(written durably, readable by the owner only: the HA1 alone opens RTSP feeds), PostgreSQL in a
cluster, where :meth:`TokenStore.refresh_token` and :meth:`TokenStore.refresh_grants` take in what
another node changed. Checking a token reads memory only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...config import ConfigError
from ...state import TokenFiles, TokenRows
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
                "parent": self.parent, "revoked": None if self.revoked is None else _iso(self.revoked)}


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _row(record: TokenRecord) -> dict:
    """A record as :class:`~gateway.state.TokenRows` keep it."""
    return {**record.__dict__, "cameras": None if record.cameras is None else list(record.cameras)}


def _record(row: dict) -> TokenRecord:
    return TokenRecord(**{**row, "cameras": None if row["cameras"] is None else tuple(row["cameras"])})


class TokenStore:
    """Tokens and camera grants, kept in ``rows``: by default ``tokens.json`` and ``grants.json`` under
    ``directory`` (``<data_dir>/access/``)."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time, rows: TokenRows | None = None) -> None:
        self.directory = Path(directory)
        self._clock = clock
        self._lock = threading.Lock()
        self._rows = rows if rows is not None else TokenFiles(self.directory)
        self._tokens: dict[str, TokenRecord] = {}
        self._grants: dict[str, tuple[str, ...]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read every token and grant again; raises :class:`ConfigError` if they cannot be read."""
        try:
            tokens, grants = self._rows.load()
            tokens = {t["id"]: _record(t) for t in tokens}
            grants = {name: tuple(cameras) for name, cameras in grants.items()}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{self._rows.where}: unreadable access files ({exc})") from None
        with self._lock:
            self._tokens, self._grants = tokens, grants

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
            try:
                self._put(record)
            except BaseException:
                self._tokens.pop(token_id, None)  # not kept: nobody may use it
                raise
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
                live = record
                record = self._tokens[token_id] = TokenRecord(**{**record.__dict__, "revoked": self._clock()})
                try:
                    record = self._put(record)
                except BaseException:
                    self._tokens[token_id] = live  # as kept: the caller is told it failed and asks again
                    raise
            return record

    def tokens(self, identity: str | None = None) -> list[TokenRecord]:
        return sorted((t for t in self._tokens.values() if identity is None or t.identity == identity),
                      key=lambda t: t.issued)

    def _put(self, record: TokenRecord) -> TokenRecord:
        """Keep ``record`` (under the lock); returns it as kept (revoked earlier by another node, maybe)."""
        now = self._clock()
        # expired tokens are kept a day, to answer "expired" rather than "invalid", then forgotten
        self._tokens = {k: t for k, t in self._tokens.items() if t.expires > now - 86400}
        kept = _record(self._rows.put_token(_row(record), [_row(t) for t in self._tokens.values()]))
        if record.id in self._tokens:
            self._tokens[record.id] = kept
        return kept

    def refresh_token(self, token_id: str) -> TokenRecord | None:
        """Take in ``token_id`` as kept now (another node issued or revoked it); blocking."""
        row = self._rows.token(token_id)
        with self._lock:
            if row is None:
                self._tokens.pop(token_id, None)
                return None
            record = self._tokens[token_id] = _record(row)
            return record

    # -- camera grants -----------------------------------------------------------------------------

    def granted(self, identity: str) -> frozenset[str]:
        return frozenset(self._grants.get(identity, ()))

    def grant(self, identity: str, cameras: list[str]) -> None:
        with self._lock:
            before = self._grants.get(identity)
            if cameras:
                self._grants[identity] = tuple(sorted(set(cameras)))
            else:
                self._grants.pop(identity, None)
            try:
                self._rows.put_grant(identity, list(self._grants.get(identity, ())),
                                     {k: list(v) for k, v in sorted(self._grants.items())})
            except BaseException:
                if before is None:  # as kept: the caller is told it failed
                    self._grants.pop(identity, None)
                else:
                    self._grants[identity] = before
                raise

    def refresh_grants(self, identity: str) -> frozenset[str]:
        """Take in ``identity``'s grant as kept now (another node changed it); blocking."""
        cameras = tuple(sorted(set(self._rows.grants_of(identity))))
        with self._lock:
            if cameras:
                self._grants[identity] = cameras
            else:
                self._grants.pop(identity, None)
        return frozenset(cameras)

    def grants(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in sorted(self._grants.items())}
