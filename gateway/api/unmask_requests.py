"""``/api/unmask-requests``: unmask requests an investigator files and a quorum approves or refuses.

The flow (docs/escrow.md, "Unmask requests in the console"):

1. An investigator (``unmask`` on the camera) files a request: camera, recording, the subject
   (class and track, or a point on a frame at a time, resolved against the sealed record
   headers), case, reason and the other members of the quorum. The gateway writes the request
   file ``privacy-gateway unmask --request-out`` would write (:meth:`keys.UnmaskRequest.planned`):
   the details the audit entry will hold and, per segment and class, the wrap sealed to the
   quorum with the requester innermost. It needs no private key for that, and holds none.
2. Each member downloads the file, runs ``privacy-gateway unmask approve FILE --identity ...`` on
   their own machine (it signs the details and peels their layer) and uploads the result (or
   ``unmask approve --gateway URL ID`` does the three steps, with requests signed by their key). The
   gateway takes it only if every new approval verifies against the key directory and the
   layers are peeled by exactly the members who approved (:meth:`keys.UnmaskRequest.accept`).
   A member may refuse instead: the request is closed, and the gateway will not log an unmask of
   those details.
3. The requester downloads the approved file and runs ``privacy-gateway unmask --gateway URL
   --request FILE --identity ...`` on their machine: the data keys come out of the layers there,
   the shares from OpenBao with their own login, after the gateway logged the unmask.

Who sees a request: its requester, its members, and holders of a role its grant names, each
with ``unmask`` on its camera. Every change is in the audit log before it is made
(``unmask-request``, ``unmask-request-approved``, ``-refused``, ``-withdrawn``).
"""

from __future__ import annotations

import asyncio
import math
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keys import (
    EscrowError,
    Selection,
    UnmaskError,
    UnmaskRequest,
    VaultError,
    canonical,
)

from ..live import Runtime
from .access import Access, Denied, Principal, require
from .recordings import Recordings
from .requests import ChangeLog, guarded, json_object
from .unmask_store import FiledRequest, UnmaskRequests, now, unmask_details

_RECORDING = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")
#: the output the requester's unmask writes, in the directory they run it in: a video, or a new directory of PNGs
_OUTPUT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}(\.mp4)?")
MAX_CASE, MAX_REASON = 200, 2000


class UnmaskRequestRoutes:
    def __init__(self, runtime: Runtime, access: Access, changes: ChangeLog, recordings: Recordings,
                 book: UnmaskRequests) -> None:
        self.runtime, self.store, self.changes = runtime, runtime.store, changes
        self.recordings, self.book = recordings, book
        self._changing = asyncio.Lock()  # one change at a time: checked, logged, then saved
        base = "/api/unmask-requests"
        self.routes = [
            Route(base, guarded(access, self.list), methods=["GET"]),
            Route(base, guarded(access, self.file), methods=["POST"]),
            Route(base + "/{id}", guarded(access, self.one), methods=["GET"]),
            Route(base + "/{id}", guarded(access, self.withdraw), methods=["DELETE"]),
            Route(base + "/{id}/file", guarded(access, self.download), methods=["GET"]),
            Route(base + "/{id}/file", guarded(access, self.approve), methods=["PUT"]),
            Route(base + "/{id}/refusal", guarded(access, self.refuse), methods=["POST"]),
        ]

    # --- who sees what ----------------------------------------------------------------------

    def _may_unmask(self, who: Principal) -> None:
        if not who.cameras("unmask*", list(self.runtime.cameras)):
            require(who, "unmask*", None)  # 403, naming the permission

    @staticmethod
    def visible(who: Principal, filed: FiledRequest) -> bool:
        """Its requester, its members, holders of a role its grant names; each with ``unmask`` on its camera."""
        if not who.may("unmask*", filed.camera):
            return False
        return (who.name == filed.requester or who.name in filed.members
                or bool(set(who.roles) & set(filed.grant_roles)))

    def _filed(self, request: Request, who: Principal) -> FiledRequest:
        self._may_unmask(who)
        filed = self.book.get(request.path_params["id"])
        if filed is None or not self.visible(who, filed):
            raise Denied(404, "no such unmask request")
        return filed

    def done(self) -> set[bytes]:
        """The details of every unmask the log holds (blocking: reads the log)."""
        return {canonical(unmask_details(e["details"])) for e in self.store.audit.entries() if e.get("action") == "unmask"}

    def view(self, filed: FiledRequest, done: set[bytes]) -> dict:
        request, file = filed.file.request, filed.file
        name = f"request-{filed.id}.json"
        return {
            "id": filed.id, "filed": filed.filed, "status": filed.status(canonical(request) in done),
            "camera": request["camera"], "recording": request["recording"], "case": request["case"],
            "reason": request["reason"], "subject": filed.subject, "tracks": request["tracks"],
            "regions": request["regions"], "selection": request["selection"], "output": request["output"],
            "watermark": request["watermark"], "requester": filed.requester, "members": filed.members,
            "approved": sorted(n for n in file.approvals if n != filed.requester), "waiting": file.waiting_for,
            "next": file.next_turn, "grant_roles": filed.grant_roles, "closed": filed.closed,
            "history": filed.history, "file_name": name,
            "commands": {
                "approve": f"privacy-gateway unmask approve {name} --identity YOUR.identity",
                "approve_here": f"privacy-gateway unmask approve --gateway {file.source['gateway']} {filed.id} "
                                "--identity YOUR.identity",
                "unmask": f"privacy-gateway unmask --gateway {file.source['gateway']} --request {name} "
                          f"--identity {filed.requester}.identity",
            },
        }

    def listing(self, who: Principal) -> list[dict]:
        """The requests ``who`` sees, newest first (blocking)."""
        done = self.done()
        return [self.view(f, done) for f in self.book.all() if self.visible(who, f)]

    def closed_reason(self, details: dict) -> str | None:
        """Why an unmask of ``details`` may not be logged: a request of those very details was closed."""
        wanted = unmask_details(details)
        for filed in self.book.all():
            if filed.state != "open" and filed.file.request == wanted:
                return (f"unmask request {filed.id} was {filed.state} by {filed.closed['by']} "
                        f"({filed.closed['why']}); nothing was logged")
        return None

    # --- reading ------------------------------------------------------------------------------

    async def list(self, request: Request, who: Principal, body: bytes) -> Response:
        self._may_unmask(who)
        return JSONResponse({"requests": await asyncio.to_thread(self.listing, who)})

    async def one(self, request: Request, who: Principal, body: bytes) -> Response:
        filed = self._filed(request, who)
        return JSONResponse(self.view(filed, await asyncio.to_thread(self.done)))

    async def download(self, request: Request, who: Principal, body: bytes) -> Response:
        """The request file, as ``unmask approve`` and ``unmask --request`` read it."""
        filed = self._filed(request, who)
        return Response(filed.file.to_bytes(), media_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="request-{filed.id}.json"', "Cache-Control": "no-store"})

    # --- filing ---------------------------------------------------------------------------------

    async def file(self, request: Request, who: Principal, body: bytes) -> Response:
        data = json_object(body)
        camera = data.get("camera")
        if not isinstance(camera, str) or camera not in self.runtime.cameras:
            raise Denied(404, f"no camera {camera!r}")
        require(who, "unmask*", camera)
        terms = _terms(data)
        source = {"gateway": str(request.base_url).rstrip("/"), "camera": camera, "recording": terms["recording"]}
        async with self._changing:
            filed = await asyncio.to_thread(self._plan, who, camera, terms, source)
            request_ = filed.file.request
            await self.changes.record(who, "unmask-request", {
                "id": filed.id, "camera": camera, "recording": request_["recording"], "case": request_["case"],
                "reason": request_["reason"], "identities": request_["identities"], "tracks": request_["tracks"],
                "selection": request_["selection"]})
            await asyncio.to_thread(self.book.save, filed)
        return JSONResponse(self.view(filed, set()), status_code=201)

    def _plan(self, who: Principal, camera: str, terms: dict, source: dict) -> FiledRequest:
        """The request file for ``terms`` (blocking: reads the vault and the log); 4xx when it cannot be."""
        requester = next((i for i in self.store.identities if i.name == who.name), None)
        if requester is None:
            raise Denied(403, f"{who.name} is not in the vault's roster")
        recording = terms["recording"]
        roster = {i.name for i in self.store.identities}
        unknown = [n for n in terms["with"] if n not in roster]
        if unknown:
            raise _invalid(f"with: {', '.join(unknown)}: not in the key directory")
        try:
            self.recordings.seal(camera, recording)
            if terms["point"] is not None:
                at, x, y = terms["point"]
                when, regions = self.recordings.regions(camera, recording, at)
                found = sorted({(r.cls, r.track) for r in regions if r.covers(x, y)})
                where = f"({x:g}, {y:g}) at {when:.2f} s"
                if not found:
                    raise _invalid(f"subject: no sealed region covers {where}; mark a redacted subject")
                if terms["subject"] is None and len(found) > 1:
                    listed = ", ".join(f"{c} track {t}" for c, t in found)
                    raise _invalid(f"subject: several sealed regions cover {where} ({listed}); choose one in the list")
                if terms["subject"] is not None and terms["subject"] not in found:
                    raise _invalid("subject: the point marked is on another subject than the one chosen")
                subject = terms["subject"] or found[0]
            else:
                subject = terms["subject"]
            cls, track = subject
            selection = Selection(frozenset({track}), frozenset({cls}), terms["from_us"], terms["to_us"])
            ref = self.recordings.ref(camera, recording)
            file = UnmaskRequest.planned(self.store, ref, selection, requester, tuple(terms["with"]),
                                         case=terms["case"], reason=terms["reason"], output=terms["output"],
                                         watermark=terms["watermark"], source=source)
            grant = self.recordings.grants(camera, recording).get(cls)
        except UnmaskError as exc:
            message = str(exc)
            field = ("with" if "may not unmask" in message or "innermost" in message else
                     "watermark" if "watermark" in message else "subject")
            raise _invalid(f"{field}: {message}", status=409) from None
        except VaultError as exc:
            raise Denied(404, str(exc)) from None
        except EscrowError as exc:
            raise Denied(409, str(exc)) from None
        marked = {"class": cls, "track": track}
        if terms["point"] is not None:
            marked.update(zip(("at", "x", "y"), terms["point"]))
        return FiledRequest(self.book.new_id(), now(), file, marked, sorted(grant.roles) if grant else [],
                            history=[{"time": now(), "by": who.name, "action": "filed"}])

    # --- decisions -------------------------------------------------------------------------------

    def _open(self, filed: FiledRequest) -> None:
        if filed.state != "open":
            raise Denied(409, f"the request was {filed.state} by {filed.closed['by']}: it is closed")
        if canonical(filed.file.request) in self.done():
            raise Denied(409, "the request was carried out already (its unmask is in the audit log)")

    async def approve(self, request: Request, who: Principal, body: bytes) -> Response:
        """An approved copy of the request file (``unmask approve`` on a member's machine)."""
        filed = self._filed(request, who)
        if who.name != filed.requester and who.name not in filed.members:
            raise Denied(403, f"{who.name} is not one of the people this request names")
        try:
            other = UnmaskRequest.from_bytes(body)
        except UnmaskError as exc:
            raise Denied(400, str(exc)) from None
        async with self._changing:
            filed = self._filed(request, who).copy()
            await asyncio.to_thread(self._open, filed)
            try:
                new = filed.file.accept(other, self.store.key_of)
            except UnmaskError as exc:
                raise Denied(400, str(exc)) from None
            await self.changes.record(who, "unmask-request-approved", {
                "id": filed.id, "camera": filed.camera, "recording": filed.file.request["recording"],
                "case": filed.file.request["case"], "identities": filed.file.request["identities"], "approved": new,
                "waiting": filed.file.waiting_for})
            filed.history.append({"time": now(), "by": who.name, "action": "approved", "names": new})
            await asyncio.to_thread(self.book.save, filed)
        return JSONResponse(self.view(filed, set()))

    async def refuse(self, request: Request, who: Principal, body: bytes) -> Response:
        filed = self._filed(request, who)
        if who.name == filed.requester:
            raise Denied(403, "the requester withdraws a request (DELETE), others refuse it")
        if who.name not in filed.members:
            raise Denied(403, f"{who.name} is not a member of this request's quorum: its members approve or refuse it")
        why = json_object(body).get("why")
        if not isinstance(why, str) or not why.strip():
            raise _invalid("why: say why the request is refused (it is audited)")
        if len(why) > MAX_REASON:
            raise _invalid(f"why: at most {MAX_REASON} characters")
        return await self._close(request, who, "refused", why.strip())

    async def withdraw(self, request: Request, who: Principal, body: bytes) -> Response:
        filed = self._filed(request, who)
        if who.name != filed.requester:
            raise Denied(403, "only the requester withdraws a request; others refuse it")
        return await self._close(request, who, "withdrawn", "withdrawn by the requester")

    async def _close(self, request: Request, who: Principal, state: str, why: str) -> Response:
        async with self._changing:
            filed = self._filed(request, who).copy()
            await asyncio.to_thread(self._open, filed)
            details = filed.file.request
            await self.changes.record(who, f"unmask-request-{state}", {
                "id": filed.id, "camera": filed.camera, "recording": details["recording"], "case": details["case"],
                "reason": details["reason"], "requester": filed.requester, "identities": details["identities"],
                "why": why})
            filed.state, filed.closed = state, {"by": who.name, "time": now(), "why": why}
            filed.history.append({"time": now(), "by": who.name, "action": state, "why": why})
            await asyncio.to_thread(self.book.save, filed)
        return JSONResponse(self.view(filed, set()))


def _invalid(*errors: str, status: int = 422) -> Denied:
    """A 422 (or ``status``) whose ``errors`` the console shows beside the fields they name."""
    return Denied(status, "; ".join(errors), errors=list(errors))


def _terms(data: dict) -> dict:
    """The filing's fields, checked; every problem at once, each naming its field."""
    errors: list[str] = []

    def text(name: str, limit: int) -> str:
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            errors.append(f"{name}: required")
            return ""
        if len(value) > limit:
            errors.append(f"{name}: at most {limit} characters")
        return value.strip()

    def number(value, name: str) -> float | None:
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            errors.append(f"{name}: expected a number >= 0")
            return None
        return float(value)

    recording = data.get("recording")
    if not isinstance(recording, str) or not _RECORDING.fullmatch(recording):
        errors.append("recording: choose a recording")
    subject = point = None
    given = data.get("subject")
    if isinstance(given, dict) and given.get("class") not in (None, "") and given.get("track") is not None:
        cls, track = given.get("class"), given.get("track")
        if (not isinstance(cls, str) or not re.fullmatch(r"face|plate|zone:[a-z0-9][a-z0-9-]{0,31}", cls)
                or isinstance(track, bool) or not isinstance(track, int) or track < 0):
            errors.append("subject: expected a class (face, plate, zone:NAME) and a track number")
        else:
            subject = (cls, track)
    marked = data.get("point")
    if isinstance(marked, dict) and any(marked.get(k) is not None for k in ("at", "x", "y")):
        values = [number(marked.get(k), f"point.{k}") for k in ("at", "x", "y")]
        if None in values:
            errors.append("point: a time and a pixel (at, x, y)")
        else:
            point = tuple(values)
    if subject is None and point is None:
        errors.append("subject: mark a subject on a frame, or choose one in the list")
    start, end = number(data.get("from_s"), "from_s"), number(data.get("to_s"), "to_s")
    if start is not None and end is not None and end < start:
        errors.append("to_s: before from_s")
    case, reason = text("case", MAX_CASE), text("reason", MAX_REASON)
    members = data.get("with", [])
    if isinstance(members, dict):  # the console's checkboxes: {"name": true, ...}
        members = [name for name, on in members.items() if on is True]
    if not isinstance(members, list) or not all(isinstance(n, str) for n in members):
        errors.append("with: expected a list of names")
        members = []
    output = data.get("output") or ""
    if not isinstance(output, str) or not _OUTPUT.fullmatch(output):
        errors.append("output: a file name ending in .mp4 (or a new directory's name: one PNG per frame), "
                      "letters, digits, - and _")
    watermark = data.get("watermark", True)
    if not isinstance(watermark, bool):
        errors.append("watermark: expected true or false")
    if errors:
        raise _invalid(*errors)
    return {"recording": recording, "subject": subject, "point": point, "case": case, "reason": reason,
            "with": sorted(set(members)), "output": output, "watermark": watermark,
            "from_us": None if start is None else round(start * 1e6), "to_us": None if end is None else round(end * 1e6)}
