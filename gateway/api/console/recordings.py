"""The console's unmask pages: recordings by camera and time, where an investigator marks a subject on
a redacted frame and files an unmask request; and the requests, where approvers approve or refuse.

Both read what the API reads (:class:`~..recordings.Recordings`, :class:`~..unmask_requests.
UnmaskRequestRoutes`) and every action on them is a call to ``/api``: the frame and the subject
under a click (``/api/cameras/<c>/recordings/<r>/frame``, ``/subjects``), filing, uploading an
approval, refusing, withdrawing (``/api/unmask-requests``). Which buttons a page shows follows the
API's rules, which decide anyway.
"""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request

from keys import EscrowError

from ...live import Runtime
from ..access import Denied, Principal
from ..recordings import Recordings
from ..unmask_requests import UnmaskRequestRoutes

PAGE_SIZE = 200  # newest recordings listed (narrow the time to see older ones)


def _when(text: str, name: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Denied(400, f"{name}: use an ISO 8601 time (2026-12-01 or 2026-12-01T08:30), UTC unless it says "
                          "otherwise") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


class RecordingPages:
    def __init__(self, runtime: Runtime, recordings: Recordings, requests: UnmaskRequestRoutes) -> None:
        self.runtime, self._recordings, self._requests = runtime, recordings, requests

    def recordings(self, request: Request, who: Principal) -> dict:
        """``?camera=`` (default: the first one may unmask), ``from``/``to`` (wall clock), ``recording``."""
        query = request.query_params
        cameras = who.cameras("unmask*", list(self.runtime.cameras))
        camera = query.get("camera") or (cameras[0] if cameras else "")
        if camera not in cameras:
            raise Denied(404, f"no camera {camera!r} you may unmask")
        wanted = {k: query.get(k, "").strip() for k in ("from", "to", "recording")}
        since, until = _when(wanted["from"], "from"), _when(wanted["to"], "to")
        listed = []
        for item in self._recordings.listed(camera):
            started, ended = dt.datetime.fromisoformat(item["started"]), dt.datetime.fromisoformat(item["ended"])
            listed.append({**item, "seconds": max(0.0, (ended - started).total_seconds()),
                           "shown": (since is None or ended >= since) and (until is None or started <= until)})
        shown = [r for r in listed if r["shown"]][::-1]  # newest first
        chosen = next((r for r in listed if r["recording"] == wanted["recording"]), None)
        values = {"cameras": cameras, "camera": camera, "wanted": wanted, "recordings": shown[:PAGE_SIZE],
                  "matched": len(shown), "chosen": chosen,
                  "tracks": [], "grants": {}, "people": [], "watermark_optional": False, "error": ""}
        if chosen is None:
            if wanted["recording"]:
                values["error"] = f"camera {camera} has no sealed recording {wanted['recording']!r}"
            return values
        try:
            values["tracks"] = self._recordings.tracks(camera, chosen["recording"])
            grants = self._recordings.grants(camera, chosen["recording"])
            values["watermark_optional"] = self._recordings.watermark_optional(camera, chosen["recording"])
        except EscrowError as exc:
            values["error"] = str(exc)
            return values
        roles = {role for grant in grants.values() for role in grant.roles}
        values["grants"] = grants
        values["people"] = [{"name": i.name, "roles": sorted(i.roles)} for i in self.runtime.store.identities
                            if i.name != who.name and set(i.roles) & roles]
        return values

    def requests(self, request: Request, who: Principal) -> dict:
        """The requests ``who`` sees; ``?id=``: one of them in full, with what ``who`` may do with it."""
        listing = self._requests.listing(who)
        wanted = request.query_params.get("id", "")
        chosen = next((r for r in listing if r["id"] == wanted), None)
        if wanted and chosen is None:
            raise Denied(404, "no such unmask request")
        actions = {}
        if chosen is not None:
            live = chosen["status"] in ("pending", "approved")
            mine = who.name == chosen["requester"]
            actions = {
                "approve": live and who.name in chosen["waiting"],
                "refuse": live and who.name in chosen["members"],
                "withdraw": live and mine,
                "run": mine and chosen["status"] in ("pending", "approved"),
            }
        return {"requests": listing, "chosen": chosen, "actions": actions}
