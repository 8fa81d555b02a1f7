"""WHIP ingest: cameras and browsers publish video to the gateway over WebRTC (RFC 9725, no trickle ICE).

A :class:`WhipSource` is the :class:`~gateway.sources.Source` of a camera configured with
``protocol: whip``: it produces frames only while a publisher is connected, and its frames go
through the same pipeline as those of an RTSP camera. :class:`WhipServer` answers the
publishers' offers (``POST /whip/{camera}``) and ends their sessions
(``DELETE /whip/{camera}/{session}``); each accepted offer becomes one aiortc peer connection
whose video track feeds the camera's source.

aiortc decodes on a thread of its own (one per receiver) and hands decoded ``av.VideoFrame``
objects to the event loop. The source stamps and numbers them there (cheap) and queues them,
still in YUV, for its emitter thread, which converts them to BGR and calls ``emit``: the event
loop never converts a frame nor waits for the pipeline. When the queue is full the oldest
frame is dropped and counted in ``stats.dropped``.

One publisher per camera at a time: a second offer while a session is open (connecting or
connected) is answered 409. A session ends on ``DELETE``, when the publisher closes its peer
connection (DTLS close), when the connection fails, when it has not connected within
``connect_timeout`` seconds of the answer, or when a connected publisher sends no frame for the
source's ``read_timeout`` seconds; all but the first two count in ``stats.errors``.

Only video is taken. An offer must have exactly one video section that sends (``sendonly`` or
``sendrecv``) VP8 or H.264 (constrained baseline, packetization-mode 1: what aiortc's answerer
negotiates); audio sections are answered ``inactive`` so that publishers which always offer
audio (browsers, OBS) can connect, and no audio reaches the gateway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription, sdp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from .sources import Source, SourceFrame, SourceStats, _Timeline
from .whep import (
    _CODEC_NAMES,
    _MAX_OFFER_BYTES,
    _NEGOTIATION_ERRORS,
    _SDP_PARSE_ERRORS,
    _error,
    _is_baseline_h264,
    _read_body,
)

__all__ = ["WhipServer", "WhipSource"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 15.0  # seconds from answer to a connected peer before the session is dropped


class _Received(NamedTuple):
    index: int
    time: float
    frame: av.VideoFrame
    arrived: float


class WhipSource(Source):
    """The frames of whichever publisher is connected to one camera, on one timeline.

    ``index`` and ``time`` carry on across publishers: a new publisher's first frame comes one
    frame after the last one and no earlier than the seconds elapsed since ``start()``, so a
    gap between publishers shows as a gap in time. Within a session, time follows the RTP
    timestamps (aiortc's frame ``pts``), not the arrival times, so network jitter does not
    distort it.
    """

    def __init__(self, camera: str, *, queue_size: int = 8, read_timeout: float = 10.0) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        if not read_timeout > 0:
            raise ValueError(f"read_timeout must be positive, not {read_timeout!r}")
        self.camera = camera
        self.stats = SourceStats()
        self.read_timeout = read_timeout
        self._queue: deque[_Received] = deque()
        self._queue_size = queue_size
        self._wakeup = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._emit: Callable[[SourceFrame], None] | None = None
        self._emit_failed = False
        self._timeline = _Timeline()
        self._index = 0
        self._started_at = 0.0
        self._session: _Publisher | None = None  # the publisher holding the camera
        self._segment: _Publisher | None = None  # the publisher whose frames the timeline follows

    def start(self, emit: Callable[[SourceFrame], None]) -> None:
        if self._thread is not None:
            raise RuntimeError(f"source {self.camera!r} was already started")
        self._emit = emit
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._emitter, name=f"WhipSource[{self.camera}].emit", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the publisher's session (if any), refuse new ones, and join the emitter thread."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        with self._wakeup:
            session, self._session = self._session, None
            self.stats.connected = False
            self._queue.clear()
            self._wakeup.notify_all()
        if session is not None:
            session.close_from_any_thread(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.warning("camera %s: emit still busy after %.1f s; left to finish", self.camera, timeout)

    # -- called by WhipServer on its event loop ------------------------------------------------

    def _claim(self, session: _Publisher) -> str | None:
        """Make ``session`` this camera's publisher; why not (``"busy"``, ``"not running"``) if it cannot be."""
        with self._wakeup:
            if self._emit is None or self._stopping.is_set():
                return "not running"
            if self._session is not None:
                return "busy"
            self._session = session
            return None

    def _detach(self, session: _Publisher, error: str | None) -> None:
        """``session`` has ended, on ``error`` if it broke; the camera is free for another publisher."""
        with self._wakeup:
            if self._session is not session:
                return
            self._session = None
            self.stats.connected = False
            if error is not None:
                self.stats.errors += 1
                self.stats.last_error = error

    def _deliver(self, session: _Publisher, frame: av.VideoFrame) -> None:
        """Stamp, number and queue one decoded frame; never blocks (the oldest queued frame makes room)."""
        arrived = time.monotonic()
        with self._wakeup:
            if self._session is not session or self._stopping.is_set():
                return
            if self._segment is not session:
                if self._segment is not None:
                    self.stats.reconnects += 1
                self._segment = session
                self._timeline.begin(None, floor=arrived - self._started_at)
            item = _Received(self._index, self._timeline.place(frame.time), frame, arrived)
            self._index += 1
            self.stats.frames += 1
            self.stats.connected = True
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(item)
            self._wakeup.notify_all()

    # -- emitter thread ---------------------------------------------------------------------------

    def _emitter(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._stopping.is_set():
                    self._wakeup.wait()
                if self._stopping.is_set():
                    return
                item = self._queue.popleft()
            try:
                image = np.ascontiguousarray(item.frame.to_ndarray(format="bgr24"))
                self._emit(SourceFrame(index=item.index, time=item.time, image=image, arrived=item.arrived))
            except Exception as exc:
                with self._wakeup:
                    self.stats.errors += 1
                    self.stats.last_error = f"emit: {exc!r}"
                if not self._emit_failed:  # once: a broken consumer would otherwise log every frame
                    self._emit_failed = True
                    log.exception("camera %s: emit failed (further failures are only counted)", self.camera)


@dataclass(eq=False)
class _Publisher:
    """One WHIP session: a publisher's peer connection feeding a camera's source."""

    id: str
    camera: str
    source: WhipSource
    server: WhipServer
    loop: asyncio.AbstractEventLoop
    pc: RTCPeerConnection | None = None
    task: asyncio.Task | None = None
    timeout: asyncio.TimerHandle | None = None
    heard: float = 0.0  # monotonic time of the last frame (or of the connection)
    ended: bool = False
    allowed: Callable[[], bool] | None = None  # left by authorize in request.state.still_allowed
    _tasks: set[asyncio.Task] = field(default_factory=set)

    def close_from_any_thread(self, timeout: float) -> None:
        """End the session from a thread that may or may not run its event loop (``WhipSource.stop``)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:  # cannot wait for the loop from inside it: close soon
            task = self.loop.create_task(self.server._end(self, None))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self.server._end(self, None), self.loop)
        except RuntimeError:  # the loop is closed: its peer connections went with it
            return
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            log.warning("camera %s: publisher session %s still closing after %.1f s", self.camera, self.id, timeout)


class WhipServer:
    """WHIP endpoints feeding the sources looked up by ``source_for(camera)`` (``None``: no such WHIP camera).

    ``authorize(request, camera)`` runs first in every handler, before anything else is looked
    at (not even whether the camera exists, nor the body): it returns a response to send (401,
    403, ...) or ``None`` to go on.
    """

    def __init__(
        self,
        source_for: Callable[[str], WhipSource | None],
        authorize: Callable[[Request, str], Awaitable[Response | None]],
        ice_servers: list[str] | None = None,
        *,
        connect_timeout: float = _CONNECT_TIMEOUT,
    ) -> None:
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, not {connect_timeout!r}")
        self._source_for = source_for
        self._authorize = authorize
        # No servers unless the operator names some: aiortc would otherwise add a public STUN server.
        self._ice_servers = [RTCIceServer(urls=url) for url in ice_servers or []]
        self._connect_timeout = connect_timeout
        self._sessions: dict[str, _Publisher] = {}
        self._tasks: set[asyncio.Task] = set()
        self.routes: list[BaseRoute] = [
            Route("/whip/{camera}", self._endpoint, methods=["POST", "OPTIONS"]),
            Route("/whip/{camera}/{session}", self._delete, methods=["DELETE"]),
        ]

    def publishers(self, camera: str) -> int:
        """Open sessions for ``camera`` (0 or 1), connected or still connecting."""
        return sum(1 for session in list(self._sessions.values()) if session.camera == camera)

    async def close(self) -> None:
        """End every session."""
        await asyncio.gather(*(self._end(session, None) for session in list(self._sessions.values())))

    async def recheck(self) -> int:
        """End every session whose publisher may no longer publish (see ``authorize``); how many ended."""
        ended = [s for s in list(self._sessions.values()) if s.allowed is not None and not s.allowed()]
        await asyncio.gather(*(self._end(session, "access revoked") for session in ended))
        return len(ended)

    # -- handlers -----------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        camera = request.path_params["camera"]
        denied = await self._authorize(request, camera)
        if denied is not None:
            return denied
        source = self._source_for(camera)
        if not isinstance(source, WhipSource):
            return _error(404, f"no such camera: {camera}")
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": "OPTIONS, POST", "Accept-Post": "application/sdp"})
        return await self._offer(request, camera, source)

    async def _offer(self, request: Request, camera: str, source: WhipSource) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/sdp":
            return _error(415, "Content-Type must be application/sdp")
        body = await _read_body(request, _MAX_OFFER_BYTES)
        if body is None:
            return _error(413, f"SDP offer larger than {_MAX_OFFER_BYTES} bytes")
        try:
            offer = body.decode("utf-8")
            _check_offer(offer)
        except UnicodeDecodeError:
            return _error(400, "malformed SDP offer: not UTF-8 text")
        except ValueError as exc:
            return _error(400, f"malformed SDP offer: {exc}")

        session = _Publisher(secrets.token_urlsafe(12), camera, source, self, asyncio.get_running_loop(),
                             allowed=getattr(request.state, "still_allowed", None))
        refused = source._claim(session)
        if refused == "busy":
            return _error(409, f"camera {camera} already has a publisher")
        if refused is not None:
            return _error(503, f"camera {camera} is not running", {"Retry-After": "5"})
        self._sessions[session.id] = session
        pc = session.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice_servers)))

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState == "connected":
                if session.timeout is not None:
                    session.timeout.cancel()
                    session.timeout = None
                session.heard = time.monotonic()
                log.info("camera %s: publisher %s connected", camera, session.id)
            elif pc.connectionState == "failed":
                await self._end(session, "publisher connection failed")
            elif pc.connectionState == "closed":
                await self._end(session, None)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            video = None
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video" and video is None:
                    video = transceiver
                else:  # audio (and nothing else: _check_offer allows one video section) is not taken
                    transceiver.direction = "inactive"
            await pc.setLocalDescription(await pc.createAnswer())
        except _NEGOTIATION_ERRORS as exc:
            await self._end(session, None)
            return _error(400, f"cannot answer the offer: {exc}")
        except BaseException:  # a bug (or cancellation): never leave the camera claimed by a dead session
            await self._end(session, None)
            raise
        if session.ended:  # the source stopped (or the server closed) while negotiating
            return _error(503, f"camera {camera} is not running", {"Retry-After": "5"})
        if video is None or video.receiver.track is None:  # checked by _check_offer; aiortc must agree
            await self._end(session, None)
            return _error(400, "cannot answer the offer: no video to receive")

        session.task = asyncio.create_task(self._receive(session, video.receiver.track))
        if pc.connectionState != "connected":
            session.timeout = session.loop.call_later(self._connect_timeout, self._expire, session)
        location = f"{request.scope.get('root_path', '')}/whip/{quote(camera, safe='')}/{session.id}"
        return Response(
            pc.localDescription.sdp, status_code=201, media_type="application/sdp", headers={"Location": location}
        )

    async def _delete(self, request: Request) -> Response:
        camera = request.path_params["camera"]
        denied = await self._authorize(request, camera)
        if denied is not None:
            return denied
        session = self._sessions.get(request.path_params["session"])
        if session is None or session.camera != camera:
            return _error(404, "no such session")
        await self._end(session, None)
        return PlainTextResponse("session ended\n")

    # -- sessions -----------------------------------------------------------------------------

    async def _receive(self, session: _Publisher, track: MediaStreamTrack) -> None:
        """Pass the publisher's decoded frames to the source until the track ends or falls silent."""
        silence = session.source.read_timeout
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(track.recv(), silence)
                except TimeoutError:
                    if session.pc.connectionState == "connected" and time.monotonic() - session.heard >= silence:
                        await self._end(session, f"no video for {silence:g} s")
                        return
                    continue  # still connecting (the connect timeout governs), or connected only lately
                session.heard = time.monotonic()
                session.source._deliver(session, frame)
        except MediaStreamError:  # the track ended: the connection closed
            await self._end(session, None)

    def _expire(self, session: _Publisher) -> None:
        session.timeout = None
        if session.pc is not None and session.pc.connectionState != "connected":
            task = asyncio.ensure_future(self._end(session, f"did not connect within {self._connect_timeout:g} s"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _end(self, session: _Publisher, error: str | None) -> None:
        """End ``session`` (idempotent); ``error`` says how it broke, ``None`` for an orderly end."""
        if session.ended:
            return
        session.ended = True
        self._sessions.pop(session.id, None)
        if session.timeout is not None:
            session.timeout.cancel()
            session.timeout = None
        session.source._detach(session, error)
        if error is not None:
            log.warning("camera %s: publisher session %s ended: %s", session.camera, session.id, error)
        else:
            log.info("camera %s: publisher session %s ended", session.camera, session.id)
        if session.task is not None and session.task is not asyncio.current_task():
            session.task.cancel()
        if session.pc is not None:
            try:
                await session.pc.close()
            except Exception:  # aiortc failing half-way must not break DELETE, close() or shutdown
                log.exception("camera %s: closing publisher session %s failed", session.camera, session.id)


def _check_offer(offer: str) -> None:
    """Raise ``ValueError`` saying why ``offer`` is not a WHIP publisher's offer of video the gateway can take."""
    if not offer.lstrip().startswith("v=0"):
        raise ValueError("it does not start with v=0")
    try:
        description = sdp.SessionDescription.parse(offer)
        for media in description.media:  # what aiortc reads only when it makes the publisher's tracks
            description.webrtc_track_id(media)
    except _SDP_PARSE_ERRORS as exc:
        raise ValueError(f"cannot parse it ({type(exc).__name__})") from None
    videos = [media for media in description.media if media.kind == "video"]
    if not videos:
        raise ValueError("no video media section")
    if len(videos) > 1:
        raise ValueError(f"{len(videos)} video media sections, a publisher sends one")
    others = {media.kind for media in description.media} - {"audio", "video"}
    if others:
        raise ValueError(f"unexpected {', '.join(sorted(others))} media section")
    video = videos[0]
    if video.direction not in (None, "sendonly", "sendrecv"):
        raise ValueError(f"the video section is {video.direction}, a publisher must send")
    mids = [media.rtp.muxId for media in description.media]
    if not all(mids) or len(set(mids)) != len(mids):
        raise ValueError("every media section needs a mid of its own")
    for group in description.group:
        if group.semantic == "BUNDLE" and not set(group.items) <= set(mids):
            raise ValueError("the BUNDLE group names a mid no media section has")
    for media in description.media:  # aiortc takes what is missing for granted
        if not media.ice.usernameFragment or not media.ice.password:
            raise ValueError("ICE username fragment or password is missing")
        if not media.dtls or not media.dtls.fingerprints:
            raise ValueError("DTLS fingerprint is missing")
        if not media.rtcp_mux:
            raise ValueError("rtcp-mux is required")
    for codec in video.rtp.codecs:
        mime = codec.mimeType.lower()
        if mime == "video/vp8" or (mime == "video/h264" and _is_baseline_h264(codec.parameters)):
            return
    raise ValueError(f"the video section offers neither {_CODEC_NAMES['vp8']} nor {_CODEC_NAMES['h264']}")
