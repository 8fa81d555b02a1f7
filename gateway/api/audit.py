"""``/api/audit``: the audit log, read (whole for auditors and officers, one's own entries for
investigators) and verified, always off the event loop: the log grows without bound."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keys import AuditError, EscrowError, VaultStore

from .access import Access, Denied, Principal, require
from .requests import guarded


class AuditRoutes:
    def __init__(self, store: VaultStore, access: Access) -> None:
        self.store = store
        self.routes = [
            Route("/api/audit", guarded(access, self.audit), methods=["GET"]),
            Route("/api/audit/verify", guarded(access, self.verify), methods=["GET"]),
        ]

    async def audit(self, request: Request, who: Principal, body: bytes) -> Response:
        if not who.may("audit"):
            require(who, "audit:own")
        try:
            entries = await asyncio.to_thread(self.store.audit.entries)
        except AuditError as exc:
            raise Denied(503, str(exc)) from None
        if not who.may("audit"):
            entries = [e for e in entries if acted_in(e, who.name)]
        return JSONResponse({"entries": entries})

    async def verify(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "audit")
        try:
            count = await asyncio.to_thread(self.store.audit.verify, self.store.key_of)
        except EscrowError as exc:
            return JSONResponse({"valid": False, "error": str(exc)}, status_code=409)
        return JSONResponse({"valid": True, "entries": count})


def acted_in(entry: dict, name: str) -> bool:
    """Whether ``name`` acted in ``entry``: as its signer, as the person a gateway entry names, or as
    one of the people of an unmask or unmask request (``identities``: the requester and the quorum)."""
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    people = details.get("identities")
    return (entry.get("actor") == name or details.get("by") == name
            or (isinstance(people, list) and name in people))
