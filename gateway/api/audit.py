"""``/api/audit``: the audit log, read (whole for auditors and officers, one's own entries for
investigators) and verified, always off the event loop: the log grows without bound.

In a cluster each node keeps its own log (its chain, checkpointed at the co-signer) and copies it
to the shared state (:class:`gateway.state.AuditCopy`); :class:`AuditView` shows every node's, this
node's from its file and the others' from their copies, each entry naming its ``node``
(``?node=NAME`` for one), and verifies each node's chain and signatures."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keys import AuditError, EscrowError, VaultStore, check_handovers, verify_lines

from ..state import AuditCopy, StateUnavailable
from .access import Access, Denied, Principal, require
from .requests import guarded


class AuditView:
    """The audit log as the API and the console show it (see the module docstring). Blocking."""

    def __init__(self, store: VaultStore, copy: AuditCopy | None = None) -> None:
        self.store, self.copy = store, copy

    @property
    def node(self) -> str | None:
        """This node's name in a cluster (None: a single gateway, entries name no node)."""
        return None if self.copy is None else self.copy.node

    def nodes(self) -> list[str]:
        if self.copy is None:
            return []
        return sorted({self.copy.node, *self.copy.table.nodes()})

    def entries(self, node: str | None = None) -> list[dict]:
        """Every entry (of ``node`` only, if given), each node's in its order, the nodes' merged by time."""
        if self.copy is None:
            if node is not None:
                raise Denied(400, "node: this gateway is not part of a cluster")
            return self.store.audit.entries()
        merged = []
        for name in [node] if node is not None else self.nodes():
            if name == self.copy.node:
                entries = self.store.audit.entries()
            else:
                entries = [_entry(line) for line in self._lines(name)]
            merged += [{**e, "node": name} for e in entries]
        return sorted(merged, key=lambda e: str(e.get("time", ""))) if node is None else merged

    def verify(self) -> dict:
        """``{"entries": n}`` (and per node in a cluster); raises :class:`keys.EscrowError` at the first
        broken entry, naming the node."""
        count = self.store.audit.verify(self.store.key_of)
        if self.copy is None:
            return {"entries": count}
        counts = {self.copy.node: count}
        logs = {self.copy.node: self.store.audit.lines()}
        for name in self.nodes():
            if name != self.copy.node:
                logs[name] = self._lines(name)
                counts[name] = verify_lines(logs[name], self.store.key_of,
                                            log=f"node {name}'s audit log (its copy in the shared state)")
        # every chain holds: now the links between them, where a node took a camera over (keys/handover.py)
        return {"entries": sum(counts.values()), "nodes": counts, "handovers": check_handovers(logs)}

    def _lines(self, node: str) -> list[bytes]:
        try:
            return self.copy.table.lines(node)  # type: ignore[union-attr]
        except StateUnavailable as exc:
            raise Denied(503, f"other nodes' audit logs cannot be read now: {exc}") from None


def _entry(line: bytes) -> dict:
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    return entry if isinstance(entry, dict) else {"malformed": line.decode("utf-8", "replace")[:200]}


class AuditRoutes:
    def __init__(self, view: AuditView, access: Access) -> None:
        self.view = view
        self.routes = [
            Route("/api/audit", guarded(access, self.audit), methods=["GET"]),
            Route("/api/audit/verify", guarded(access, self.verify), methods=["GET"]),
        ]

    async def audit(self, request: Request, who: Principal, body: bytes) -> Response:
        if not who.may("audit"):
            require(who, "audit:own")
        node = request.query_params.get("node") or None
        try:
            entries = await asyncio.to_thread(self.view.entries, node)
        except AuditError as exc:
            raise Denied(503, str(exc)) from None
        if not who.may("audit"):
            entries = [e for e in entries if acted_in(e, who.name)]
        return JSONResponse({"entries": entries})

    async def verify(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "audit")
        try:
            verified = await asyncio.to_thread(self.view.verify)
        except EscrowError as exc:
            return JSONResponse({"valid": False, "error": str(exc)}, status_code=409)
        return JSONResponse({"valid": True, **verified})


def acted_in(entry: dict, name: str) -> bool:
    """Whether ``name`` acted in ``entry``: as its signer, as the person a gateway entry names, or as
    one of the people of an unmask or unmask request (``identities``: the requester and the quorum)."""
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    people = details.get("identities")
    return (entry.get("actor") == name or details.get("by") == name
            or (isinstance(people, list) and name in people))
