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

For the console, where an investigator marks the subject of an unmask request, the same
permission also gives one redacted frame of a recording (``/frame?at=``, decoded here off the
event loop) and the sealed regions of the frame nearest a time (``/subjects?at=``: class, track
and box from the record headers, which are not encrypted; nothing is decrypted for either).
:class:`Recordings` is what both read: the log's ``seal`` entries, the recorder's files and the
records' headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
from cryptography.exceptions import InvalidSignature
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from keys import (
    GATEWAY_ACTOR,
    NODE_PREFIX,
    AuditError,
    EscrowError,
    Grant,
    SealedRegion,
    TrackSummary,
    VaultError,
    VaultRef,
    actor_of,
    canonical,
    grants_of,
    recording_tracks,
    regions_at,
)
from redaction import parse_policy

from ..files import MediaError, VideoFrame, frame_at, video_comment
from ..live import Runtime
from .access import Access, Denied, Principal, require
from .requests import ChangeLog, guarded, json_object

_RECORDING = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")
#: frames decoded at once for the console (each from the keyframe before it)
FRAME_DECODES = 2


class Recordings:
    """A camera's sealed recordings as the log, the recorder and the vault keep them.

    Blocking (the log, the vault's objects and the video files are read): call it off the event loop."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime, self.store = runtime, runtime.store
        # a seal entry, and the span of the segments it names, never change once written
        self._seals: dict[tuple[str, str], dict] = {}
        self._spans: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def listed(self, camera: str) -> list[dict]:
        """The camera's recordings the log records as sealed, with their wall-clock span."""
        seals = [e["details"] for e in self.store.audit.entries()
                 if e.get("action") == "seal" and e["details"].get("camera") == camera]
        out = []
        files = self.runtime.archive.files(camera) if seals else set()
        for details in seals:
            key = (camera, details["recording"])
            first, last = details["segments"]
            with self._lock:
                self._seals[key] = details
                span = self._spans.get(key)
            if span is None:
                span = self.store.segment(camera, first).header.started, self.store.segment(camera, last).ended
                with self._lock:
                    self._spans[key] = span
            out.append({"recording": details["recording"], "started": span[0], "ended": span[1],
                        "segments": [first, last], "video": f"{details['recording']}.mp4" in files})
        return out

    def seal(self, camera: str, recording: str) -> dict:
        """The log's ``seal`` entry of the recording; :class:`VaultError` if it has none (yet)."""
        with self._lock:
            found = self._seals.get((camera, recording))
        if found is None:
            seals = [e["details"] for e in self.store.audit.entries() if e.get("action") == "seal"
                     and e["details"].get("camera") == camera and e["details"].get("recording") == recording]
            if not seals:
                raise VaultError(f"no sealed recording {recording!r} of camera {camera!r} (unknown, or still being "
                                 "recorded)")
            found = seals[-1]
            with self._lock:
                self._seals[(camera, recording)] = found
        return found

    def numbers(self, camera: str, recording: str) -> range:
        first, last = self.seal(camera, recording)["segments"]
        return range(first, last + 1)

    def video(self, camera: str, recording: str) -> tuple[Path, bool] | None:
        """The recording's file (a temporary download when it is in the bucket: True, remove it after),
        or None if the gateway no longer has it."""
        archive, file = self.runtime.archive, f"{recording}.mp4"
        path = archive.directory / camera / file
        if path.is_file():
            return path, False
        if archive.objects is None:
            return None
        try:
            return archive.download(camera, file), True
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _video(self, camera: str, recording: str) -> Iterator[Path]:
        try:
            with self.runtime.archive.local(camera, f"{recording}.mp4") as path:
                yield path
        except FileNotFoundError:
            raise VaultError(f"recording {recording}: the gateway no longer has its video") from None

    def ref(self, camera: str, recording: str) -> VaultRef:
        """Where the redacted recording starts in its sealed records (carried in the file's metadata)."""
        self.seal(camera, recording)
        try:
            with self._video(camera, recording) as path:
                ref = VaultRef.decode(video_comment(path))
        except MediaError as exc:
            raise VaultError(str(exc)) from None
        if ref is None or (ref.camera, ref.recording) != (camera, recording):
            raise VaultError(f"recording {recording}: its video carries no reference to its sealed records")
        return ref

    def tracks(self, camera: str, recording: str) -> list[TrackSummary]:
        return recording_tracks(self.store, self.ref(camera, recording), self.numbers(camera, recording))

    def regions(self, camera: str, recording: str, at: float) -> tuple[float, list[SealedRegion]]:
        return regions_at(self.store, self.ref(camera, recording), at, self.numbers(camera, recording))

    def policies(self, camera: str, recording: str) -> dict[str, dict]:
        """The policies that sealed the recording, by version."""
        versions = {self.store.segment(camera, n).header.policy_sha256 for n in self.numbers(camera, recording)}
        return {version: self.store.load_policy(version) for version in sorted(versions)}

    def watermark_optional(self, camera: str, recording: str) -> bool:
        """Whether every policy that sealed it lets an unmask leave the watermark out."""
        return all(p.get("unmask", {}).get("watermark", "required") == "optional"
                   for p in self.policies(camera, recording).values())

    def grants(self, camera: str, recording: str) -> dict[str, Grant]:
        """Who may unmask each class of the recording: the grants of the policies that sealed it."""
        grants: dict[str, Grant] = {}
        for version, policy in self.policies(camera, recording).items():
            for cls, grant in grants_of(parse_policy(policy, f"policy {version[:12]}")).items():
                known = grants.get(cls)
                grants[cls] = grant if known is None else Grant(tuple(sorted({*known.roles, *grant.roles})),
                                                                max(known.quorum, grant.quorum))
        return grants

    def frame(self, camera: str, recording: str, at: float) -> VideoFrame:
        """The redacted frame shown at media time ``at`` (the nearest one; the last past the end)."""
        self.seal(camera, recording)
        with self._video(camera, recording) as path:
            return frame_at(path, at)


class RecordingRoutes:
    def __init__(self, runtime: Runtime, access: Access, changes: ChangeLog, recordings: Recordings,
                 closed: Callable[[dict], str | None] = lambda details: None) -> None:
        """``closed(details)``: why an unmask of these details may not be logged (a request of the
        same details was refused or withdrawn), or None."""
        self.runtime, self.store, self.changes, self.recordings = runtime, runtime.store, changes, recordings
        self._closed = closed
        self._decoding = asyncio.Semaphore(FRAME_DECODES)
        base = "/api/cameras/{camera}/recordings"
        self.routes = [
            Route(base, guarded(access, self.list), methods=["GET"]),
            Route(base + "/{recording}/video", guarded(access, self.video), methods=["GET"]),
            Route(base + "/{recording}/frame", guarded(access, self.frame), methods=["GET"]),
            Route(base + "/{recording}/subjects", guarded(access, self.subjects), methods=["GET"]),
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
            recordings = await asyncio.to_thread(self.recordings.listed, camera)
        except ValueError as exc:
            raise Denied(400, str(exc)) from None
        except EscrowError as exc:
            raise Denied(409, str(exc)) from None
        chosen = [r for r in recordings if (since is None or _time(r["ended"]) >= since)
                  and (until is None or _time(r["started"]) <= until)]
        return JSONResponse({"camera": camera, "recordings": chosen})

    async def video(self, request: Request, who: Principal, body: bytes) -> Response:
        camera, recording = self._camera(request, who), self._recording(request)
        found = await asyncio.to_thread(self.recordings.video, camera, recording)
        if found is None:
            raise Denied(404, "no such recording")
        path, temporary = found
        return FileResponse(path, media_type="video/mp4",
                            background=BackgroundTask(path.unlink, missing_ok=True) if temporary else None)

    async def frame(self, request: Request, who: Principal, body: bytes) -> Response:
        """One redacted frame (JPEG); ``X-Frame-Time``: its media time, which ``/subjects`` takes."""
        camera, recording = self._camera(request, who), self._recording(request)
        at = _seconds(request.query_params.get("at", "0"), "at")
        async with self._decoding:
            try:
                frame = await asyncio.to_thread(self.recordings.frame, camera, recording, at)
                ok, data = await asyncio.to_thread(cv2.imencode, ".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            except (VaultError, MediaError) as exc:
                raise Denied(404, str(exc)) from None
        if not ok:
            raise Denied(500, "the frame could not be encoded")
        return Response(data.tobytes(), media_type="image/jpeg",
                        headers={"X-Frame-Time": f"{frame.time:.6f}", "Cache-Control": "no-store"})

    async def subjects(self, request: Request, who: Principal, body: bytes) -> Response:
        """The sealed regions of the frame nearest ``at`` (with ``x`` and ``y``: those covering that
        pixel), from the record headers: what a click on a frame marks."""
        camera, recording = self._camera(request, who), self._recording(request)
        query = request.query_params
        at = _seconds(query.get("at", ""), "at")
        point = None
        if "x" in query or "y" in query:
            point = (_seconds(query.get("x", ""), "x"), _seconds(query.get("y", ""), "y"))
        try:
            when, regions = await asyncio.to_thread(self.recordings.regions, camera, recording, at)
        except EscrowError as exc:
            raise Denied(404, str(exc)) from None
        if point is not None:
            regions = [r for r in regions if r.covers(*point)]
        return JSONResponse({"camera": camera, "recording": recording, "at": when,
                             "regions": [{"class": r.cls, "track": r.track, "box": list(r.box)} for r in regions]})

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
        closed = await asyncio.to_thread(self._closed, details) if action == "unmask" else None
        if closed is not None:
            raise Denied(409, closed)
        try:
            await asyncio.to_thread(self._check, who, action, details)
        except (ValueError, KeyError, TypeError, InvalidSignature) as exc:
            raise Denied(403, f"the request is not signed by the people it names ({exc})") from None
        except EscrowError as exc:
            raise Denied(403, str(exc)) from None
        try:
            entry = await asyncio.to_thread(self.store.audit.append, actor_of(self.runtime.signer), self.runtime.signer, action,
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
            if key is None or name == GATEWAY_ACTOR or name.startswith(NODE_PREFIX):
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


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Denied(400, f"{name}: expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise Denied(400, f"{name}: expected a number >= 0, got {text!r}")
    return value


def _time(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"time {text!r}: use ISO 8601 (YYYY-MM-DDTHH:MM:SS, UTC unless it says otherwise)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
