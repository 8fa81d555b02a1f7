"""Who may do what over the network: identities and roles from the key directory, tokens, signed requests.

Everything is denied unless a role grants it. A request proves who it comes from in one of
two ways:

* ``Authorization: Bearer pgw_<id>_<secret>``: a token bound to one identity, random, stored
  only as a SHA-256 hash, expiring, optionally scoped to some cameras, revocable;
* ``Authorization: Signature keyId="<identity>",created="<unix seconds>",nonce="<random>",signature="<base64>"``:
  the identity's Ed25519 signature over the method, path and query, the time and the body's
  SHA-256 (see :func:`signing_string`); accepted within :data:`SIGNATURE_SKEW` seconds, once.
  This is how an identity gets its first token without any shared secret.

What a principal may do is :data:`ROLE_PERMISSIONS` of its roles (read from the key directory on
every request, so a role taken away is gone at once); camera-scoped permissions are further
limited to the cameras granted to the identity (officers: all) and, for a token, to its scope.
Failed authentication is logged, counted and, past :data:`FAILURE_LIMIT` failures a minute from
one address, answered 429 until the minute has passed.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from keys.directory import DirectoryError, KeyDirectory
from keys.identity import PublicIdentity

log = logging.getLogger(__name__)

#: permission -> what it covers; ``*`` marks the camera-scoped ones
PERMISSIONS = {
    "feeds*": "watch a camera's redacted feed (WHEP, RTSP) and see the camera listed",
    "ingest*": "publish a camera's video (WHIP)",
    "cameras": "every camera's status and active policy",
    "policies": "create, validate, diff and activate policy versions",
    "identities": "read the key directory; grant cameras to identities",
    "tokens": "issue tokens to any identity, list and revoke any token",
    "audit": "read and verify the whole audit log",
    "audit:own": "read the audit entries of one's own actions",
    "metrics": "read /metrics and the detailed /health",
}
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "privacy-officer": frozenset({"feeds*", "cameras", "policies", "identities", "tokens", "audit", "metrics"}),
    "viewer": frozenset({"feeds*"}),
    "investigator": frozenset({"audit:own"}),
    "auditor": frozenset({"audit", "metrics"}),
    "publisher": frozenset({"ingest*"}),
}
#: roles whose camera-scoped permissions cover every camera without a grant
ALL_CAMERAS_ROLES = frozenset({"privacy-officer"})

TOKEN_PREFIX = "pgw"
DEFAULT_TOKEN_TTL = 8 * 3600.0
MAX_TOKEN_TTL = 90 * 24 * 3600.0
SIGNATURE_SKEW = 300.0  # seconds a signed request may be early or late
FAILURE_WINDOW = 60.0
FAILURE_LIMIT = 10
RTSP_REALM = "privacy-gateway"
# the secret is hex: no "_" to confuse the split into id and secret, nothing to escape in an RTSP URL
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}_([A-Za-z0-9]{{16}})_([0-9a-f]{{64}})$")
_SIGNATURE_PARAM = re.compile(r'\s*([a-zA-Z]+)="([^"]*)"\s*(?:,|$)')


class Denied(Exception):
    """An answer other than success: ``status`` (401, 403, 404, 429 ...) with a one-line reason."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra


@dataclass(frozen=True)
class Principal:
    """An authenticated identity as one request sees it."""

    name: str
    roles: frozenset[str]
    granted: frozenset[str] | None  # cameras granted to the identity; None: every camera
    scope: frozenset[str] | None  # the token's cameras; None: no limit beyond the grant
    token: str | None  # the token's id, None for a signed request

    @property
    def permissions(self) -> frozenset[str]:
        return frozenset().union(*(ROLE_PERMISSIONS.get(role, ()) for role in self.roles))

    def cameras(self, permission: str, known: list[str]) -> list[str]:
        """The cameras among ``known`` on which this principal holds the camera-scoped ``permission``."""
        if permission not in self.permissions:
            return []
        return [c for c in known if (self.granted is None or c in self.granted) and (self.scope is None or c in self.scope)]

    def may(self, permission: str, camera: str | None = None) -> bool:
        if permission not in self.permissions:
            return False
        if permission.endswith("*"):
            return camera is not None and bool(self.cameras(permission, [camera]))
        return True


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

    def public(self) -> dict:
        """What may be shown about a token: never its digests."""
        return {"id": self.id, "identity": self.identity, "cameras": None if self.cameras is None else list(self.cameras),
                "issued": _iso(self.issued), "expires": _iso(self.expires), "issued_by": self.issued_by,
                "revoked": None if self.revoked is None else _iso(self.revoked)}


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_private_json(path: Path, data) -> None:
    """Atomically, readable by the owner only (the token file holds hashes that open RTSP feeds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


class TokenStore:
    """Tokens and camera grants under ``<data_dir>/access/`` (``tokens.json``, ``grants.json``)."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenRecord] = {}
        self._grants: dict[str, tuple[str, ...]] = {}
        try:
            tokens = json.loads((self.directory / "tokens.json").read_text("utf-8")) if (self.directory / "tokens.json").exists() else []
            self._tokens = {t["id"]: TokenRecord(**{**t, "cameras": None if t["cameras"] is None else tuple(t["cameras"])})
                            for t in tokens}
            grants = json.loads((self.directory / "grants.json").read_text("utf-8")) if (self.directory / "grants.json").exists() else {}
            self._grants = {name: tuple(cameras) for name, cameras in grants.items()}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{self.directory}: unreadable access files ({exc})") from None

    # -- tokens ----------------------------------------------------------------------------------

    def issue(self, identity: str, cameras: list[str] | None, ttl: float, issued_by: str) -> tuple[str, TokenRecord]:
        """A new token: its string (shown once, never stored) and its record."""
        if not 0 < ttl <= MAX_TOKEN_TTL:
            raise ValueError(f"ttl: {ttl:g} s is not between 0 and {MAX_TOKEN_TTL:g} s")
        token_id = "".join(secrets.choice("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(16))
        secret = secrets.token_hex(32)
        now = self._clock()
        record = TokenRecord(token_id, identity, hashlib.sha256(secret.encode()).hexdigest(),
                             hashlib.md5(f"{token_id}:{RTSP_REALM}:{secret}".encode()).hexdigest(),
                             None if cameras is None else tuple(sorted(set(cameras))), now, now + ttl, issued_by)
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
        if record.revoked is not None:
            raise Denied(401, "token revoked")
        if self._clock() >= record.expires:
            raise Denied(401, "token expired")
        return record

    def live(self, token_id: str) -> TokenRecord | None:
        """The record of an unexpired, unrevoked token by id (RTSP digest usernames are token ids)."""
        record = self._tokens.get(token_id)
        if record is None or record.revoked is not None or self._clock() >= record.expires:
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
        write_private_json(self.directory / "tokens.json",
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
            write_private_json(self.directory / "grants.json", {k: list(v) for k, v in sorted(self._grants.items())})

    def grants(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in sorted(self._grants.items())}


def signing_string(method: str, target: str, created: int, nonce: str, body: bytes) -> bytes:
    """What a signed request's signature covers: ``target`` is the path with its query string; the
    nonce makes two otherwise identical requests in the same second differ (Ed25519 is deterministic)."""
    return (f"privacy-gateway-request-v1\n{method.upper()}\n{target}\n{created}\n{nonce}\n"
            f"{hashlib.sha256(body).hexdigest()}").encode()


def sign_request(identity, method: str, target: str, body: bytes = b"", created: int | None = None) -> str:
    """The Authorization header value for a request signed by ``identity`` (a PrivateIdentity)."""
    created = int(time.time()) if created is None else created
    nonce = secrets.token_urlsafe(12)
    signature = identity.signing.sign(signing_string(method, target, created, nonce, body))
    return (f'Signature keyId="{identity.public.name}",created="{created}",nonce="{nonce}",'
            f'signature="{base64.b64encode(signature).decode("ascii")}"')


class FailureLimiter:
    """Failed authentications per peer address within a sliding window."""

    def __init__(self, limit: int = FAILURE_LIMIT, window: float = FAILURE_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()  # reason -> failures, for /metrics

    def _recent(self, peer: str, now: float) -> collections.deque[float]:
        times = self._failures.setdefault(peer, collections.deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def retry_after(self, peer: str) -> float:
        """Seconds until ``peer`` may try again; 0 when it may now."""
        now = self._clock()
        with self._lock:
            times = self._recent(peer, now)
            if not times:
                self._failures.pop(peer, None)
            return 0.0 if len(times) < self.limit else self.window - (now - times[0])

    def failed(self, peer: str, who: str | None, why: str, channel: str = "http") -> None:
        with self._lock:
            self._recent(peer, self._clock()).append(self._clock())
            if len(self._failures) > 10_000:  # bounded under a spray of addresses: forget the quietest
                for quiet in sorted(self._failures, key=lambda p: self._failures[p][-1] if self._failures[p] else 0)[:1000]:
                    del self._failures[quiet]
            self.counts[why] += 1
        log.warning("%s authentication failed from %s%s: %s", channel, peer, f" as {who!r}" if who else "", why)


class Access:
    """Authentication and authorisation for every network entry point of one gateway."""

    def __init__(self, keys_dir: Path, store: TokenStore, limiter: FailureLimiter | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys_dir, self.store = Path(keys_dir), store
        self.limiter = limiter or FailureLimiter()
        self._clock = clock
        self._directory: tuple[float, dict[str, PublicIdentity]] | None = None
        self._seen: dict[bytes, float] = {}  # signatures already used -> when they stop mattering
        self._lock = threading.Lock()

    # -- identities --------------------------------------------------------------------------------

    def identities(self) -> dict[str, PublicIdentity]:
        """The key directory as it is now (re-read when its roster changes; a tampered roster denies everyone)."""
        roster = self.keys_dir / "roster.json"
        try:
            mtime = roster.stat().st_mtime_ns
        except OSError:
            return {}
        with self._lock:
            if self._directory is None or self._directory[0] != mtime:
                try:
                    people = {i.name: i for i in KeyDirectory.open(self.keys_dir).identities}
                except DirectoryError:
                    log.error("key directory %s failed its checks: every request is denied", self.keys_dir)
                    people = {}
                self._directory = (mtime, people)
            return self._directory[1]

    def principal_of(self, identity: PublicIdentity, scope: tuple[str, ...] | None, token: str | None) -> Principal:
        roles = frozenset(identity.roles)
        granted = None if roles & ALL_CAMERAS_ROLES else self.store.granted(identity.name)
        return Principal(identity.name, roles, granted, None if scope is None else frozenset(scope), token)

    # -- authentication ------------------------------------------------------------------------------

    def authenticate(self, peer: str, authorization: str | None, method: str, target: str, body: bytes) -> Principal:
        """The principal behind a request's Authorization header; raises :class:`Denied` (401/429)."""
        wait = self.limiter.retry_after(peer)
        if wait > 0:
            raise Denied(429, "too many failed authentications; try again later", {"Retry-After": str(max(1, round(wait)))})
        if not authorization:  # not a failure: how every client first learns that it must authenticate
            raise Denied(401, "authentication required: a bearer token or a signed request",
                         {"WWW-Authenticate": 'Bearer realm="privacy-gateway"'})
        try:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                record = self.store.check(value.strip())
                identity = self.identities().get(record.identity)
                if identity is None:
                    raise Denied(401, "the token's identity is no longer in the key directory")
                return self.principal_of(identity, record.cameras, record.id)
            if scheme.lower() == "signature":
                return self._signed(value, method, target, body)
            raise Denied(401, "unsupported authorization scheme (use Bearer or Signature)")
        except Denied as denied:
            self.limiter.failed(peer, None, denied.message)
            denied.headers.setdefault("WWW-Authenticate", 'Bearer realm="privacy-gateway"')
            raise

    def _signed(self, value: str, method: str, target: str, body: bytes) -> Principal:
        params = dict(_SIGNATURE_PARAM.findall(value))
        try:
            name, created, nonce = params["keyId"], int(params["created"]), params["nonce"]
            signature = base64.b64decode(params["signature"], validate=True)
        except (KeyError, ValueError, binascii.Error):
            raise Denied(401, "malformed signature header") from None
        now = self._clock()
        if abs(now - created) > SIGNATURE_SKEW:
            raise Denied(401, "signed request outside its time window (check the clock)")
        identity = self.identities().get(name)
        if identity is None:
            raise Denied(401, "invalid signature")
        try:
            identity.signing_key().verify(signature, signing_string(method, target, created, nonce, body))
        except InvalidSignature:
            raise Denied(401, "invalid signature") from None
        with self._lock:
            self._seen = {s: until for s, until in self._seen.items() if until > now}
            if signature in self._seen:
                raise Denied(401, "signed request replayed")
            self._seen[signature] = created + SIGNATURE_SKEW + 1
        return self.principal_of(identity, None, None)

    def still_allowed(self, principal: Principal, permission: str, camera: str) -> Callable[[], bool]:
        """For a session that outlives its request: does ``principal`` still hold ``permission`` on
        ``camera`` (token unexpired and unrevoked, identity and role still in the directory, grant kept)?"""

        def check() -> bool:
            if principal.token is not None and self.store.live(principal.token) is None:
                return False
            identity = self.identities().get(principal.name)
            if identity is None:
                return False
            scope = None if principal.scope is None else tuple(principal.scope)
            return self.principal_of(identity, scope, principal.token).may(permission, camera)

        return check

    # -- RTSP ----------------------------------------------------------------------------------------

    def rtsp_user(self, username: str):
        """The RTSP egress's view of a token (digest username: token id, password: the token's secret)."""
        from .rtsp_egress import RtspUser

        record = self.store.live(username)
        identity = None if record is None else self.identities().get(record.identity)
        if identity is None:
            return None
        principal = self.principal_of(identity, record.cameras, record.id)
        # asked again for every request and, while a session plays, every second (revocation ends it)
        return RtspUser(f"{record.identity} (token {record.id})", record.rtsp_ha1,
                        lambda camera: self.still_allowed(principal, "feeds*", camera)())


def require(principal: Principal, permission: str, camera: str | None = None) -> None:
    """Raise 403 unless ``principal`` holds ``permission`` (on ``camera``, for the camera-scoped ones)."""
    if not principal.may(permission, camera):
        where = f" on camera {camera}" if camera is not None else ""
        raise Denied(403, f"{principal.name} lacks the {permission.rstrip('*')} permission{where} ({PERMISSIONS[permission]})")
