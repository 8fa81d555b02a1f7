"""The console's audit page: the log filtered (actor, action, camera, time), the chain's verification
state, and each unmask's case, reason and participants."""

from __future__ import annotations

from starlette.requests import Request

from keys import EscrowError

from ..access import Principal
from ..audit import AuditView, acted_in

PAGE_SIZE = 200  # newest entries shown per page of the filtered log


class AuditPages:
    def __init__(self, view: AuditView) -> None:
        self.view = view

    def data(self, request: Request, who: Principal) -> dict:
        query = request.query_params
        wanted = {k: query.get(k, "").strip() for k in ("actor", "action", "camera", "from", "to", "node")}
        entries = self.view.entries(wanted["node"] or None)
        if not who.may("audit"):
            entries = [e for e in entries if acted_in(e, who.name)]
        actions = sorted({e["action"] for e in entries})
        actors = sorted({e["actor"] for e in entries})

        def keep(entry: dict) -> bool:
            details = entry.get("details") or {}
            return ((not wanted["actor"] or entry["actor"] == wanted["actor"] or details.get("by") == wanted["actor"])
                    and (not wanted["action"] or entry["action"] == wanted["action"])
                    and (not wanted["camera"] or details.get("camera") == wanted["camera"])
                    and (not wanted["from"] or entry["time"] >= wanted["from"])
                    and (not wanted["to"] or entry["time"][: len(wanted["to"])] <= wanted["to"]))

        shown = [e for e in entries if keep(e)]
        verified: dict = {"checked": False}
        if who.may("audit"):
            try:
                verified = {"checked": True, "valid": True, **self.view.verify()}
            except EscrowError as exc:
                verified = {"checked": True, "valid": False, "error": str(exc)}
        return {"entries": shown[-PAGE_SIZE:][::-1], "matched": len(shown), "total": len(entries), "wanted": wanted,
                "actions": actions, "actors": actors, "nodes": self.view.nodes(), "verified": verified}
