"""Digest authentication for RTSP (RFC 2617, MD5, with or without ``qop="auth"``).

Nonces are stateless: the server keeps nothing per client, and a nonce is bound to the TCP
connection it was issued on (address and port) and accepted for ``_NONCE_TTL`` seconds, so a
captured Authorization header does not replay on another connection. With ``qop=auth`` the
nonce count (``nc``) of every nonce in use is remembered, and a request whose count is not above
the last one accepted for its nonce is a replay: refused with a fresh challenge (``stale=true``)
and reported as a failed login. Only nonces that carried a valid response are remembered, at most
:data:`_COUNTED_NONCES` of them and none past its lifetime; a nonce whose count was forgotten
early is stale (fail closed: its client simply logs in again). The RFC 2069 form (no ``qop``, what
GStreamer sends) has no count: the same request gives the same response, so within its own
connection and nonce lifetime it can still be replayed by someone able to inject into that
connection. The HA1 the token store keeps (``MD5(id:realm:secret)``) is a password equivalent for
RTSP: it is kept 0600 and never shown.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .protocol import Request, path_of


@dataclass(frozen=True)
class RtspUser:
    """Who may log in, as the digest check needs them: a name for logs, the RFC 2617 HA1, what they may
    view, the principal their sessions count against (an identity, across all its tokens), and the
    login a redirect to another node hands them for a camera (``hand_on(camera)``: user and password;
    None: the redirect carries no credentials and the client logs in there with its own)."""

    name: str  # shown in logs
    ha1: str  # hex MD5(username ":" realm ":" password), RFC 2617
    may_view: Callable[[str], bool]  # camera -> allowed
    principal: str | None = None  # whom the per-principal session cap counts (None: ``name``)
    hand_on: Callable[[str], Awaitable[tuple[str, str]]] | None = None


_NONCE_TTL = 300.0  # seconds a digest nonce is accepted; then 401 with stale=true
_COUNTED_NONCES = 65_536  # nonces whose last nonce count is remembered (qop=auth); then the oldest are stale
_AUTH_PARAM = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,|$)')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324  (RFC 2617 digest, not a password store)


class Digest:
    """Stateless nonces: ``hex(issue time)`` + HMAC over it and the client's address, per-process key."""

    def __init__(self, realm: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.realm = realm
        self._key = secrets.token_bytes(32)
        self._clock = clock
        self._decoy = secrets.token_hex(16)  # HA1 for unknown users, so they take the same path
        self._counts: dict[str, int] = {}  # nonce -> highest nc accepted with it, in order of first use
        self._forgotten = -1  # issue time: nonces issued then or before whose count is not kept are stale

    def _mac(self, stamp: str, peer: str) -> str:
        return hmac.new(self._key, f"{stamp}:{peer}".encode(), hashlib.sha256).hexdigest()[:32]

    def nonce(self, peer: str) -> str:
        stamp = f"{int(self._clock()):012x}"
        return stamp + self._mac(stamp, peer)

    def challenge(self, peer: str, stale: bool = False) -> str:
        value = f'Digest realm="{self.realm}", nonce="{self.nonce(peer)}", algorithm=MD5, qop="auth"'
        return value + (", stale=true" if stale else "")

    def check(self, request: Request, peer: str, users: Callable[[str], RtspUser | None]) -> RtspUser:
        """The user the request's Authorization header proves; ``AuthFailure`` otherwise.

        The response is checked before the nonce, so a right password with an expired nonce, or
        one this process did not issue (a restart, another address), is a new challenge with
        ``stale=true`` rather than a failed login.
        """
        header = request.header("authorization")
        if header is None:
            raise AuthFailure(None, None)
        scheme, _, rest = header.partition(" ")
        if scheme.lower() != "digest":
            raise AuthFailure(None, "not digest credentials")
        params = _auth_params(rest)
        username = params.get("username") if params else None
        if (
            params is None
            or not all(k in params for k in ("username", "realm", "nonce", "uri", "response"))
            or not re.fullmatch(r"[0-9a-fA-F]{32}", params["response"])
        ):
            raise AuthFailure(username, "malformed credentials")
        if params["realm"] != self.realm:
            raise AuthFailure(username, "wrong realm")
        if params.get("algorithm", "MD5").upper() != "MD5":
            raise AuthFailure(username, "unsupported algorithm")
        try:
            same = params["uri"] == "*" if request.uri == "*" else path_of(params["uri"]) == path_of(request.uri)
        except ValueError:
            same = False
        if not same:
            raise AuthFailure(username, "credentials for another URI")
        nonce, qop = params["nonce"], params.get("qop")
        ha2 = _md5(f"{request.method}:{params['uri']}")
        user = users(username)
        ha1 = user.ha1.lower() if user is not None else self._decoy
        if qop is None:  # RFC 2069 form: what GStreamer sends
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        elif qop == "auth" and re.fullmatch(r"[0-9a-fA-F]{8}", params.get("nc", "")) and params.get("cnonce"):
            expected = _md5(f"{ha1}:{nonce}:{params['nc']}:{params['cnonce']}:auth:{ha2}")
        else:
            raise AuthFailure(username, "unsupported qop")
        if not hmac.compare_digest(expected, params["response"].lower()) or user is None:
            raise AuthFailure(username, "unknown user" if user is None else "wrong password")
        if not re.fullmatch(r"[0-9a-f]{44}", nonce) or not hmac.compare_digest(nonce[12:], self._mac(nonce[:12], peer)):
            raise AuthFailure(username, None, stale=True)
        if self._clock() - int(nonce[:12], 16) > _NONCE_TTL:
            raise AuthFailure(username, None, stale=True)
        if qop is not None:
            self._count(nonce, int(params["nc"], 16), username)
        return user

    def _count(self, nonce: str, count: int, username: str) -> None:
        """Accept nonce count ``count`` for ``nonce`` only if it is above the last one accepted."""
        last = self._counts.get(nonce)
        if last is None and int(nonce[:12], 16) <= self._forgotten:
            raise AuthFailure(username, None, stale=True)  # its count was dropped: start again with a new nonce
        if count <= (last or 0):
            raise AuthFailure(username, "replayed nonce count", stale=True)
        self._counts[nonce] = count
        now = self._clock()
        while self._counts:
            oldest = next(iter(self._counts))
            issued = int(oldest[:12], 16)
            if len(self._counts) <= _COUNTED_NONCES and now - issued <= _NONCE_TTL:
                break
            del self._counts[oldest]
            self._forgotten = max(self._forgotten, issued)


class AuthFailure(Exception):
    """``why`` None: no credentials (or a stale nonce): a challenge, not a failed login."""

    def __init__(self, user: str | None, why: str | None, stale: bool = False) -> None:
        super().__init__(why)
        self.user, self.why, self.stale = user, why, stale


def _auth_params(text: str) -> dict[str, str] | None:
    params: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _AUTH_PARAM.match(text, pos)
        if match is None or match.end() == pos or len(params) >= 16:
            return None
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name in params:
            return None
        params[name] = value
        pos = match.end()
    return params
