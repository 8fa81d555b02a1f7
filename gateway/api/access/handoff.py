"""The login an RTSP redirect hands a client on with, in a cluster.

A VMS that asks one node for a camera another node runs is answered ``302`` with the owner's
address (:mod:`gateway.egress.rtsp.server`). FFmpeg from libavformat 62.12.103 on no longer sends
the credentials of the URL it was given to the host a redirect names, so the ``Location`` carries a
login of its own: a token issued for the client's token (its child) that may view only that camera.
It expires no later than its parent and dies with it (revoking the parent ends its sessions on
every node), and it is kept in the shared state like any token, so the owner knows it. One is made
per client token and camera on each node and handed on again while it lives; its issue is written to
the change log first, as every token's is (issued by ``rtsp-redirect``, for its client's identity).

The child's secret travels in the clear in the 302, as the media does in RTSP: whoever can read
that connection can watch that camera, for as long as the client's own token could.

The owner may be asked before the shared state's notice of a new token reached it: :meth:`look_up`
reads a token the node does not know from the shared state, at most once per user name every
:data:`LOOK_UP_EVERY` seconds and :data:`LOOK_UPS_PER_SECOND` times a second in all, so that unknown
names cannot make every request a database query.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import replace

from ...egress import RtspUser
from .authn import Access
from .principals import Principal
from .tokens import MAX_TOKEN_TTL, TOKEN_PREFIX

log = logging.getLogger(__name__)

#: who issued a token a redirect hands on (``TokenRecord.issued_by``), and why (in its change log entry)
REDIRECT = "rtsp-redirect"
#: seconds before the same unknown user name is looked up in the shared state again
LOOK_UP_EVERY = 5.0
#: the most look-ups of unknown user names in any one second, all names together
LOOK_UPS_PER_SECOND = 20
_LOOKED_UP = 4096  # user names whose last look-up time is remembered
_TOKEN_ID = re.compile(r"[A-Za-z0-9]{16}")


class HandOn:
    """RTSP users whose redirects carry a login for the camera's node (:attr:`RtspUser.hand_on`)."""

    def __init__(self, access: Access, record: Callable[[Principal, str, dict], Awaitable[None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``record(principal, action, details)``: the change log (raises to refuse the change)."""
        self.access = access
        self._record = record
        self._clock = clock
        self._lock = asyncio.Lock()
        self._logins: dict[tuple[str, str], tuple[str, str]] = {}  # (client token, camera) -> (id, secret)
        self._looked_up: OrderedDict[str, float] = OrderedDict()
        self._recent: deque[float] = deque()  # when the look-ups of the last second were made

    def rtsp_user(self, username: str) -> RtspUser | None:
        """:meth:`Access.rtsp_user`, whose redirects hand on a login for the camera."""
        user = self.access.rtsp_user(username)
        return None if user is None else replace(user, hand_on=lambda camera: self.login(username, camera))

    async def login(self, token_id: str, camera: str) -> tuple[str, str]:
        """The RTSP login (token id, secret) of a child of the client's token ``token_id`` for
        ``camera``: the one made before while it lives, else a new one. A client that logged in with
        a login a redirect handed it (sent on again: the camera moved, or two nodes briefly disagree
        on where it runs) is handed that of its own token: one per client token and camera on each
        node, however often it bounces."""
        async with self._lock:
            own = self.access.store.live(token_id)
            while own is not None and own.issued_by == REDIRECT and own.parent is not None:
                up = self.access.store.live(own.parent)
                if up is None or up.identity != own.identity:  # never another identity's token
                    break
                own = up
            identity = None if own is None else self.access.identities().get(own.identity)
            if identity is None:
                raise LookupError(f"token {token_id} is no longer live")
            kept = self._logins.get((own.id, camera))
            if kept is not None and self.access.store.live(kept[0]) is not None:
                return kept
            principal = self.access.principal_of(identity, own.cameras, own.id)
            await self._record(principal, "issue-token", {"identity": own.identity, "cameras": [camera],
                                                          "ttl": MAX_TOKEN_TTL, "for": REDIRECT})
            token, record = await asyncio.to_thread(self.access.store.issue, own.identity, [camera],
                                                    MAX_TOKEN_TTL, REDIRECT, own.id)
            log.info("token %s issued to %s for its token %s, for an RTSP redirect (camera %s)",
                     record.id, own.identity, own.id, camera)
            login = self._logins[own.id, camera] = tuple(token.removeprefix(f"{TOKEN_PREFIX}_").split("_"))
            self._logins = {key: value for key, value in self._logins.items()
                            if self.access.store.live(value[0]) is not None}
            return login

    async def look_up(self, username: str | None) -> None:
        """Take in token ``username`` from the shared state if this node does not know it yet."""
        if username is None or not _TOKEN_ID.fullmatch(username):
            return
        now = self._clock()
        last = self._looked_up.get(username)
        if last is not None and now - last < LOOK_UP_EVERY:
            return
        while self._recent and now - self._recent[0] >= 1.0:
            self._recent.popleft()
        if len(self._recent) >= LOOK_UPS_PER_SECOND:  # a spray of names from many addresses: not every one
            return
        self._recent.append(now)
        self._looked_up[username] = now
        self._looked_up.move_to_end(username)
        while len(self._looked_up) > _LOOKED_UP:
            self._looked_up.popitem(last=False)
        try:
            await asyncio.to_thread(self.access.store.refresh_token, username)
        except Exception as exc:  # the login is refused as unknown, as it would be without the look-up
            log.warning("looking up RTSP user %s in the shared state failed: %s", username, exc)
