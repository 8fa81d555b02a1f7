"""``/api/cameras/<camera>/recordings``: what an unmask on another machine fetches, and where it logs.

An investigator (or officer) holding the ``unmask`` permission on a camera (a camera removed at
run time too: its recordings and sealed data stay) lists its finished recordings, downloads one's
redacted video and its sealed records (the recording's segments and key files, the vault's
anchor, co-signer record, roster copy and policies, and the log's entries about it:
:meth:`keys.VaultStore.bundle`), and posts the signed request of its unmask, which the gateway
checks (every approval against the roster, the people against the key files' recipients) and
appends to the audit log before it answers. Decryption happens on the investigator's
machine, with the shares OpenBao gives them: no private key and no restored pixel reaches the
gateway. Fetching sealed records is itself logged (``fetch-sealed``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re

from cryptography.exceptions import InvalidSignature
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from keys import GATEWAY_ACTOR, AuditError, EscrowError, VaultError, canonical

from ..live import Runtime
from .access import Access, Denied, Principal, require
from .requests import ChangeLog, guarded, json_object

_RECORDING = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")


class RecordingRoutes:
    def __init__(self, runtime: Runtime, access: Access, changes: ChangeLog) -> None:
        self.runtime, self.store, self.changes = runtime, runtime.store, changes
        base = "/api/cameras/{camera}/recordings"
        self.routes = [
            Route(base, guarded(access, self.list), methods=["GET"]),
            Route(base + "/{recording}/video", guarded(access, self.video), methods=["GET"]),
            Route(base + "/{recording}/sealed", guarded(access, self.sealed), methods=["GET"]),
            Route(base + "/{recording}/audit", guarded(access, self.log), methods=["POST"]),
        ]

    def _camera(self, request: Request, who: Principal) -> str:
        camera = request.path_params["camera"]
        if camera not in self.runtime.config.cameras and camera not in self.runtime.changes.removed_cameras():
            raise Denied(404, f"no camera {camera!r}")  # a removed camera's recordings stay: it is found
        require(who, "unmask*", camera)
        return camera

    def _recording(self, request: Request) -> str:
        recording = request.path_params["recording"]
        if not _RECORDING.fullmatch(recording):
            raise Denied(404, "no such recording")
        return recording

    async def list(self, request: Request, who: Principal, body: bytes) -> Response:
        camera = self._camera(request, who)
        try:
            since = _time(request.query_params.get("from"))
            until = _time(request.query_params.get("to"))
            recordings = await asyncio.to_thread(self._recordings, camera)
        except ValueError as exc:
            raise Denied(400, str(exc)) from None
        except EscrowError as exc:
            raise Denied(409, str(exc)) from None
        chosen = [r for r in recordings if (since is None or _time(r["ended"]) >= since)
                  and (until is None or _time(r["started"]) <= until)]
        return JSONResponse({"camera": camera, "recordings": chosen})

    def _recordings(self, camera: str) -> list[dict]:
        """The camera's recordings the log records as sealed, with their wall-clock span."""
        seals = [e["details"] for e in self.store.audit.entries()
                 if e.get("action") == "seal" and e["details"].get("camera") == camera]
        out = []
        for details in seals:
            first, last = details["segments"]
            start, end = self.store.segment(camera, first), self.store.segment(camera, last)
            video = self.runtime.recordings / camera / f"{details['recording']}.mp4"
            out.append({"recording": details["recording"], "started": start.header.started, "ended": end.ended,
                        "segments": [first, last], "video": video.is_file()})
        return out

    async def video(self, request: Request, who: Principal, body: bytes) -> Response:
        camera, recording = self._camera(request, who), self._recording(request)
        path = self.runtime.recordings / camera / f"{recording}.mp4"
        if not path.is_file():
            raise Denied(404, "no such recording")
        return FileResponse(path, media_type="video/mp4")

    async def sealed(self, request: Request, who: Principal, body: bytes) -> Response:
        camera, recording = self._camera(request, who), self._recording(request)
        await self.changes.record(who, "fetch-sealed", {"camera": camera, "recording": recording})
        try:
            bundle = await asyncio.to_thread(self._bundle, camera, recording)
        except EscrowError as exc:
            raise Denied(409, str(exc)) from None
        return JSONResponse(bundle)

    def _bundle(self, camera: str, recording: str) -> dict:
        """The recording's sealed part, once the whole chain and the log (with its checkpoints) verify."""
        chain = list(self.store.verify_chain(camera))
        anchors = [(*s.audit, f"segment {s.number}") for s in chain if s.audit]
        if self.store.cosigner is not None:
            anchors += self.store.cosigner_anchors(self.store.cosigner)
        self.store.audit.verify(self.store.key_of, anchors)
        return self.store.bundle(camera, recording, self.store.audit.entries())

    async def log(self, request: Request, who: Principal, body: bytes) -> Response:
        camera, recording = self._camera(request, who), self._recording(request)
        data = json_object(body)
        action, details = data.get("action"), data.get("details")
        if action not in ("unmask", "unmask-refused") or not isinstance(details, dict):
            raise Denied(400, "expected {\"action\": \"unmask\" or \"unmask-refused\", \"details\": {...}}")
        if details.get("camera") != camera or details.get("recording") != recording:
            raise Denied(400, "the request names another camera or recording")
        try:
            await asyncio.to_thread(self._check, who, action, details)
        except (ValueError, KeyError, TypeError, InvalidSignature) as exc:
            raise Denied(403, f"the request is not signed by the people it names ({exc})") from None
        except EscrowError as exc:
            raise Denied(403, str(exc)) from None
        try:
            entry = await asyncio.to_thread(self.store.audit.append, GATEWAY_ACTOR, self.runtime.signer, action,
                                            details)
        except AuditError:
            raise Denied(503, "the audit log cannot be written; nothing was logged") from None
        return JSONResponse(entry, status_code=201)

    def _check(self, who: Principal, action: str, details: dict) -> None:
        """Whoever asks is one of the people the request names; each of them approved it (signed it);
        for an unmask, they meet a grant of every class it restores, by the key files' recipients."""
        people = sorted(details["identities"])
        approvals = details["approvals"]
        if who.name not in people or sorted(approvals) != people:
            raise ValueError("approvals and identities differ, or the caller is not among them")
        request = canonical({k: v for k, v in details.items() if k != "approvals"})
        for name in people:
            key = self.store.key_of(name)
            if key is None or name == GATEWAY_ACTOR:
                raise ValueError(f"{name} is not in the roster")
            key.verify(bytes.fromhex(approvals[name]), request)
        if action != "unmask":
            return
        camera, recording = details["camera"], details["recording"]
        seals = [e["details"] for e in self.store.audit.entries() if e.get("action") == "seal"
                 and e["details"].get("camera") == camera and e["details"].get("recording") == recording]
        if not seals:
            raise VaultError(f"no sealed recording {recording!r} of camera {camera!r}")
        first, last = seals[-1]["segments"]
        classes = {cls for cls, _ in details["tracks"]}
        for number in range(first, last + 1):
            wraps = self.store.wraps(camera, self.store.segment(camera, number))
            for cls in classes:
                if cls in wraps and not any(set(w.names) <= set(people) for w in wraps[cls]):
                    raise VaultError(f"{', '.join(people)} may not unmask {cls} regions of this recording "
                                     "(not a recipient, or the quorum is incomplete)")


def _time(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"time {text!r}: use ISO 8601 (YYYY-MM-DDTHH:MM:SS, UTC unless it says otherwise)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
