"""Authentication of every network entry point: a request's credentials → a :class:`Principal`.

A request proves who it comes from in one of two ways:

* ``Authorization: Bearer pgw_<id>_<secret>``: a token (:mod:`.tokens`);
* ``Authorization: Signature ...``: the identity's own signature (:mod:`.signing`).

Identities and roles come from the key directory, re-read when its roster changes (a roster
that fails its checks denies everyone). Failed authentication is logged, counted and rate
limited per address (:mod:`.limiter`). RTSP digest logins use the same tokens (:meth:`Access.rtsp_user`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from keys import DirectoryError, KeyDirectory, PublicIdentity

from ...egress import RtspUser
from ...state import SeenSignatures
from .limiter import FailureLimiter
from .principals import ALL_CAMERAS_ROLES, Denied, Principal
from .signing import SignatureChecker
from .tokens import TokenStore

log = logging.getLogger(__name__)


class Access:
    """Authentication and authorisation for every network entry point of one gateway."""

    def __init__(self, keys_dir: Path, store: TokenStore, limiter: FailureLimiter | None = None,
                 clock: Callable[[], float] = time.time, seen: SeenSignatures | None = None) -> None:
        """``seen``: where the signatures already used are kept (default: beside the tokens' files)."""
        self.keys_dir, self.store = Path(keys_dir), store
        self.limiter = limiter or FailureLimiter()
        self._clock = clock
        self._directory: tuple[int, dict[str, PublicIdentity]] | None = None
        self._signatures = SignatureChecker(clock, store.directory / "signatures-seen.json", seen)
        self._lock = threading.Lock()

    # -- identities --------------------------------------------------------------------------------

    def identities(self) -> dict[str, PublicIdentity]:
        """The key directory as it is now (re-read when its roster changes; a tampered roster denies everyone)."""
        revision = KeyDirectory.revision(self.keys_dir)
        if revision is None:
            return {}
        with self._lock:
            if self._directory is None or self._directory[0] != revision:
                try:
                    people = {i.name: i for i in KeyDirectory.open(self.keys_dir).identities}
                except DirectoryError:
                    log.error("key directory %s failed its checks: every request is denied", self.keys_dir)
                    people = {}
                self._directory = (revision, people)
            return self._directory[1]

    def principal_of(self, identity: PublicIdentity, scope: tuple[str, ...] | None, token: str | None) -> Principal:
        roles = frozenset(identity.roles)
        granted = None if roles & ALL_CAMERAS_ROLES else self.store.granted(identity.name)
        return Principal(identity.name, roles, granted, None if scope is None else frozenset(scope), token)

    # -- authentication ------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """The gateway key's fingerprint: what signed requests name (``GET /api/gateway``)."""
        try:
            return KeyDirectory.open(self.keys_dir).fingerprint
        except DirectoryError:
            return ""

    def authenticate(self, peer: str, authorization: str | None, method: str, target: str, body: bytes,
                     host: str = "") -> Principal:
        """The principal behind a request's Authorization header; raises :class:`Denied` (401/429).

        Valid credentials always pass: an address past its failure limit gets 429 for failures
        only, so nobody else's failures (behind the same proxy or NAT) lock out a valid token."""
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
                return self.principal_of(self._signatures.check(value, method, target, body, self.identities(),
                                                                host, self.fingerprint), None, None)
            raise Denied(401, "unsupported authorization scheme (use Bearer or Signature)")
        except Denied as denied:
            wait = self.limiter.retry_after(peer)
            self.limiter.failed(peer, None, denied.message)
            if wait > 0:
                raise Denied(429, "too many failed authentications; try again later",
                             {"Retry-After": str(max(1, round(wait)))}) from None
            denied.headers.setdefault("WWW-Authenticate", 'Bearer realm="privacy-gateway"')
            raise

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

    def rtsp_user(self, username: str) -> RtspUser | None:
        """The RTSP egress's view of a token (digest username: token id, password: the token's secret)."""
        record = self.store.live(username)
        identity = None if record is None else self.identities().get(record.identity)
        if identity is None:
            return None
        principal = self.principal_of(identity, record.cameras, record.id)
        # asked again for every request and, while a session plays, every second (revocation ends it)
        return RtspUser(f"{record.identity} (token {record.id})", record.rtsp_ha1,
                        lambda camera: self.still_allowed(principal, "feeds*", camera)(), principal=record.identity)
