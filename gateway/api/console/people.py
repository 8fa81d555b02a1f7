"""The console's people page: identities with their roles and cameras, tokens, and what is pending.

Everything shown here is what ``GET /api/identities`` and ``GET /api/tokens`` give the same
principal, plus whose OpenBao access is still to end (an earlier departure OpenBao did not answer).
Every action on the page (enrol, grant, remove, revoke, mint, revoke a token) is a call to those
``/api`` resources, with their checks and their audit entries.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.requests import Request

from keys import ROLES

from ...roster import RosterError, read_pending
from ..access import (
    ALL_CAMERAS_ROLES,
    DEFAULT_TOKEN_TTL,
    MAX_TOKEN_TTL,
    Access,
    Principal,
)

#: the lifetimes the mint form offers (seconds, label); the API takes any up to MAX_TOKEN_TTL
LIFETIMES = ((3600, "1 hour"), (int(DEFAULT_TOKEN_TTL), "8 hours"), (86400, "1 day"), (7 * 86400, "7 days"),
             (30 * 86400, "30 days"), (int(MAX_TOKEN_TTL), "90 days"))


class PeoplePages:
    def __init__(self, access: Access, cameras: Callable[[], list[str]]) -> None:
        self.access, self._cameras = access, cameras

    def data(self, request: Request, who: Principal) -> dict:
        cameras = self._cameras()
        store = self.access.store
        people = [] if not who.may("identities") else [
            {"name": i.name, "roles": list(i.roles), "post_quantum": i.post_quantum, "fingerprint": i.fingerprint,
             "every_camera": bool(set(i.roles) & ALL_CAMERAS_ROLES), "cameras": sorted(store.granted(i.name)),
             "me": i.name == who.name}
            for i in sorted(self.access.identities().values(), key=lambda i: i.name)]
        pending, pending_error = [], None
        if who.may("identities"):
            try:
                pending = [{"name": i.name, "fingerprint": i.fingerprint} for i in read_pending(self.access.keys_dir)]
            except RosterError:
                pending_error = "the list of OpenBao accesses still to end is unreadable (see the gateway's key directory)"
        now = time.time()
        mine = None if who.may("tokens") else who.name
        tokens = []
        for record in reversed(store.tokens(mine)):  # newest first
            live = store.live(record.id) is not None
            state = ("revoked" if record.revoked is not None else "expired" if record.expires <= now
                     else "live" if live else "dead (its issuer was revoked)")
            tokens.append({**record.public(), "state": state, "live": live, "parent": record.parent})
        return {"people": people, "cameras": cameras, "roles": ROLES, "tokens": tokens, "pending": pending,
                "pending_error": pending_error,
                "mint_for": next((p["name"] for p in people if not p["me"]), who.name),
                "lifetimes": LIFETIMES, "default_ttl": int(DEFAULT_TOKEN_TTL)}
