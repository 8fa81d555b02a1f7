"""WHEP egress: redacted video to browsers over WebRTC, encoded once per camera and codec.

A :class:`Rendition` owns one encoder for a (camera, codec) pair. The pipeline pushes redacted
BGR frames into it from its worker thread; the rendition's own encoder thread turns them into
``av.Packet`` objects and hands every packet to every viewer. Each viewer is an aiortc track whose
``recv()`` returns those packets: aiortc's ``RTCRtpSender`` sees a packet rather than a frame and
only packetizes it (``Encoder.pack``), so adding a viewer adds RTP/SRTP work, never an encode.

:class:`WhepServer` answers WHEP offers (``POST /whep/{camera}``, RFC 9725 without trickle ICE),
ends sessions (``DELETE /whep/{camera}/{session}``) and serves a small viewer page
(``GET /view/{camera}``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import secrets
import threading
import time as _clock
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal
from urllib.parse import quote

import av
import cv2
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    sdp,
)
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = ["Codec", "Rendition", "WhepServer"]

logger = logging.getLogger(__name__)

Codec = Literal["h264", "vp8"]
CODECS: tuple[Codec, ...] = ("h264", "vp8")  # order of preference when the offer allows both
RTP_CLOCK = 90_000
_TIME_BASE = Fraction(1, RTP_CLOCK)

# frames waiting for the encoder; older ones are dropped (and counted). The pipeline releases a
# detection group at once (up to the policy's stride, at most 30 frames), and a viewer should
# get all of them: RTP timestamps carry the frames' own spacing, so the burst plays evenly.
_PENDING_FRAMES = 32
_VIEWER_BACKLOG = 15  # packets queued for one viewer before it is declared slow
_KEYFRAME_MIN_INTERVAL = 1.0  # seconds between keyframes requested by viewers (PLI/FIR, slow viewers)
_GOP_SECONDS = 2.0  # a keyframe at least this often, whatever viewers ask for
_CODEC_NAMES = {"h264": "H.264 (constrained baseline, packetization-mode 1)", "vp8": "VP8"}
_MAX_OFFER_BYTES = 64 * 1024
_CONNECT_TIMEOUT = 30.0  # seconds from answer to a connected peer before the session is dropped

# aiortc's SDP parser reports malformed input with whichever of these its code hits first
# (measured by mutating a valid offer); anything else is a bug and propagates.
_SDP_PARSE_ERRORS = (ValueError, KeyError, IndexError, AttributeError, AssertionError, StopIteration, TypeError)
_NEGOTIATION_ERRORS = (ValueError, InternalError, InvalidAccessError, InvalidStateError, OperationError)


class Rendition:
    """One encoder per (camera, codec); frames are pushed from a worker thread, packets fan out to all viewers.

    Nothing is encoded while nobody watches. A new viewer starts at a keyframe forced for it;
    a viewer that falls ``_VIEWER_BACKLOG`` packets behind loses its backlog and resumes at the
    next keyframe, so one slow viewer never holds back the encoder or the others.
    """

    def __init__(
        self, camera: str, codec: Codec, width: int, height: int, fps: float, bitrate: int = 1_500_000
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"codec: {codec!r} is not one of {', '.join(CODECS)}")
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or value <= 0 or value % 2:
                raise ValueError(f"{name}: {value!r} is not a positive even number of pixels")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps: {fps!r} is not a positive number")
        if not isinstance(bitrate, int) or bitrate <= 0:
            raise ValueError(f"bitrate: {bitrate!r} is not a positive number of bits per second")
        self.camera = camera
        self.codec = codec
        self.width = width
        self.height = height
        self.fps = float(fps)
        self.bitrate = bitrate
        # statistics, plain ints
        self.frames_encoded = 0
        self.frames_dropped = 0  # pushed while the encoder was still busy with older frames
        self.packets_sent = 0  # packets handed to viewers' senders, summed over viewers
        self.packets_dropped = 0  # packets a viewer skipped (joining before a keyframe, or too slow)
        self.keyframes = 0

        self._cond = threading.Condition()
        self._pending: collections.deque[tuple[np.ndarray, int]] = collections.deque(maxlen=_PENDING_FRAMES)
        self._viewers: set[_ViewerTrack] = set()
        self._keyframe_wanted = False
        self._last_keyframe_request = -math.inf
        self._pts_offset = 0
        self._last_pts: int | None = None
        self._closed = False
        self._encoder: av.VideoCodecContext | None = None
        self._thread = threading.Thread(target=self._run, name=f"whep-{camera}-{codec}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Rendition({self.camera!r}, {self.codec!r}, {self.width}x{self.height}@{self.fps:g})"

    @property
    def viewers(self) -> int:
        with self._cond:
            return len(self._viewers)

    def push(self, image: np.ndarray, time: float) -> None:
        """Queue a redacted BGR ``uint8`` frame taken at media time ``time`` (seconds) for encoding.

        Thread-safe and never blocks on viewers. The pixels are converted (and copied) before
        this returns, so the caller may reuse ``image`` at once.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"image: expected a BGR uint8 array of shape (h, w, 3), got {dtype} {shape}")
        if not math.isfinite(time):
            raise ValueError(f"time: {time!r} is not a finite number of seconds")
        with self._cond:
            if self._closed or not self._viewers:
                return
        if image.shape[:2] != (self.height, self.width):
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        # BT.601 limited range, what browsers assume for VP8 and for H.264 without colour VUI.
        yuv = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        with self._cond:
            pts = round(time * RTP_CLOCK) + self._pts_offset
            if self._last_pts is not None and pts <= self._last_pts:
                # Media time went backwards (a source restarted): keep the RTP clock moving on.
                step = max(1, round(RTP_CLOCK / self.fps))
                self._pts_offset += self._last_pts + step - pts
                pts = self._last_pts + step
            self._last_pts = pts
            if len(self._pending) == self._pending.maxlen:
                self.frames_dropped += 1
            self._pending.append((yuv, pts))
            self._cond.notify()

    def subscribe(self) -> MediaStreamTrack:
        """A new viewer track for the running event loop.

        Its ``recv()`` returns this rendition's encoded ``av.Packet`` objects (shared with every
        other viewer, never modified) starting at a keyframe. It counts as a viewer from its first
        ``recv()`` until ``stop()``.
        """
        return _ViewerTrack(self, asyncio.get_running_loop())

    def request_keyframe(self) -> None:
        """Ask for a keyframe soon (PLI/FIR from a viewer); rate-limited, as it costs every viewer bandwidth."""
        with self._cond:
            now = _clock.monotonic()
            if now - self._last_keyframe_request >= _KEYFRAME_MIN_INTERVAL:
                self._last_keyframe_request = now
                self._keyframe_wanted = True

    def close(self) -> None:
        """Stop the encoder thread and end every viewer track. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._pending.clear()
            viewers = list(self._viewers)
            self._viewers.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        for viewer in viewers:
            viewer._stop_threadsafe()

    # -- viewers (called on their event loop) -----------------------------------------------

    def _subscribe(self, viewer: _ViewerTrack) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._viewers.add(viewer)
            self._keyframe_wanted = True  # the newcomer must not wait a whole GOP
            return True

    def _unsubscribe(self, viewer: _ViewerTrack) -> None:
        with self._cond:
            self._viewers.discard(viewer)

    # -- encoder thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    break
                yuv, pts = self._pending.popleft()
                keyframe = self._keyframe_wanted
                self._keyframe_wanted = False
                viewers = list(self._viewers)
            if not viewers:
                continue
            try:
                packets = self._encode(yuv, pts, keyframe)
            except (av.FFmpegError, ValueError):
                logger.exception("%r: encoding failed; the encoder restarts at the next frame", self)
                self._encoder = None
                continue
            for packet in packets:
                self._fan_out(packet, viewers)
        self._encoder = None

    def _open_encoder(self) -> av.VideoCodecContext:
        gop = max(1, round(self.fps * _GOP_SECONDS))
        if self.codec == "h264":
            encoder = av.CodecContext.create("libx264", "w")
            kbit = max(1, self.bitrate // 1000)
            encoder.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                # Constrained baseline: what every WebRTC H.264 decoder takes (profile-level-id 42e0xx).
                "profile": "baseline",
                # A forced keyframe must be an IDR a newcomer can start from.
                "forced-idr": "1",
                # Annex B with SPS/PPS repeated before every IDR (x264 does this without a global
                # header), which is what aiortc's H264 pack() splits on.
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:vbv-maxrate={kbit}:vbv-bufsize={kbit}",
            }
        else:
            encoder = av.CodecContext.create("libvpx", "w")
            encoder.options = {
                "deadline": "realtime",
                "cpu-used": "10",
                "lag-in-frames": "0",
                "error-resilient": "1",
                "static-thresh": "1",
                "undershoot-pct": "100",
                "overshoot-pct": "15",
                "minrate": str(self.bitrate),
                "maxrate": str(self.bitrate),
                "bufsize": str(self.bitrate),
            }
            encoder.qmin = 2
            encoder.qmax = 56
        encoder.width = self.width
        encoder.height = self.height
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = _TIME_BASE
        encoder.framerate = Fraction(self.fps).limit_denominator(1001)
        encoder.bit_rate = self.bitrate
        encoder.gop_size = gop
        encoder.max_b_frames = 0
        # One thread per rendition: renditions run in parallel with each other and with detection.
        encoder.thread_count = 1
        encoder.open()
        return encoder

    def _encode(self, yuv: np.ndarray, pts: int, keyframe: bool) -> list[av.Packet]:
        if self._encoder is None:
            self._encoder = self._open_encoder()
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = pts
        frame.time_base = _TIME_BASE
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        packets = self._encoder.encode(frame)
        self.frames_encoded += 1
        for packet in packets:
            # aiortc maps pts from the packet's time base to the 90 kHz RTP clock.
            packet.time_base = _TIME_BASE
            if packet.is_keyframe:
                self.keyframes += 1
        return packets

    def _fan_out(self, packet: av.Packet, viewers: list[_ViewerTrack]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_ViewerTrack]] = collections.defaultdict(list)
        for viewer in viewers:
            by_loop[viewer.loop].append(viewer)
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, group, packet)
            except RuntimeError:  # the viewers' event loop is closed: they are gone
                for viewer in group:
                    self._unsubscribe(viewer)


def _deliver(viewers: list[_ViewerTrack], packet: av.Packet) -> None:
    for viewer in viewers:
        viewer._deliver(packet)


class _ViewerTrack(MediaStreamTrack):
    """A video track whose ``recv()`` yields the rendition's encoded packets (see ``Rendition.subscribe``)."""

    kind = "video"

    def __init__(self, rendition: Rendition, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.rendition = rendition
        self.loop = loop
        self._queue: collections.deque[av.Packet] = collections.deque()
        self._ready = asyncio.Event()
        self._subscribed = False
        self._want_keyframe = True

    async def recv(self) -> av.Packet:  # type: ignore[override]  # aiortc packetizes packets as they are
        if not self._subscribed and self.readyState == "live":
            self._subscribed = True
            if not self.rendition._subscribe(self):
                self.stop()
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        self.rendition.packets_sent += 1
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self.rendition._unsubscribe(self)
        self._queue.clear()
        self._ready.set()

    def _stop_threadsafe(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.stop)
        except RuntimeError:  # loop closed; nobody is left to wake
            pass

    def _deliver(self, packet: av.Packet) -> None:
        if self.readyState != "live":
            return
        if len(self._queue) >= _VIEWER_BACKLOG:
            # Too slow for the stream: drop the backlog and resume at a keyframe.
            self.rendition.packets_dropped += len(self._queue)
            self._queue.clear()
            self._want_keyframe = True
            self.rendition.request_keyframe()
        if self._want_keyframe:
            if not packet.is_keyframe:
                self.rendition.packets_dropped += 1
                return
            self._want_keyframe = False
        self._queue.append(packet)
        self._ready.set()


@dataclass(eq=False)
class _Session:
    id: str
    camera: str
    pc: RTCPeerConnection
    track: _ViewerTrack
    timeout: asyncio.TimerHandle | None = None
    allowed: Callable[[], bool] | None = None  # left by authorize in request.state.still_allowed


class WhepServer:
    """WHEP endpoints over renditions looked up by ``rendition_for(camera, codec)`` (``None``: no such camera)."""

    def __init__(
        self,
        rendition_for: Callable[[str, str], Rendition | None],
        authorize: Callable[[Request, str], Awaitable[Response | None]],
        ice_servers: list[str] | None = None,
        camera_known: Callable[[str], bool] | None = None,
    ) -> None:
        """``authorize(request, camera)``: an error response to send (401, 403, 429 ...), or
        None to go on; asked first, before anything reveals whether the camera exists. It may
        leave ``request.state.still_allowed``, a callable that :meth:`recheck` asks while the
        session lives.
        ``camera_known(camera)``: a configured camera whose renditions do not exist yet (no
        frame released so far) is answered 503 with Retry-After instead of 404."""
        self._rendition_for = rendition_for
        self._authorize = authorize
        self._camera_known = camera_known or (lambda camera: False)
        # No servers unless the operator names some: aiortc would otherwise add a public STUN server.
        self._ice_servers = [RTCIceServer(urls=url) for url in ice_servers or []]
        self._sessions: dict[str, _Session] = {}
        self.routes: list[BaseRoute] = [
            Route("/whep/{camera}", self._offer, methods=["POST"]),
            Route("/whep/{camera}/{session}", self._delete, methods=["DELETE"]),
            Route("/view/{camera}", self._view, methods=["GET"]),
        ]

    def viewers(self, camera: str) -> int:
        """Open sessions for ``camera``, connected or still connecting."""
        return sum(1 for session in self._sessions.values() if session.camera == camera)

    async def close(self) -> None:
        """Close every peer connection."""
        await asyncio.gather(*(self._end(session_id) for session_id in list(self._sessions)))

    async def recheck(self) -> int:
        """End every session whose viewer may no longer watch (see ``authorize``); how many ended."""
        ended = [s.id for s in list(self._sessions.values()) if s.allowed is not None and not s.allowed()]
        for session_id in ended:
            logger.info("WHEP session %s ended: access revoked", session_id)
        await asyncio.gather(*(self._end(session_id) for session_id in ended))
        return len(ended)

    # -- handlers -----------------------------------------------------------------------------

    async def _offer(self, request: Request) -> Response:
        camera = request.path_params["camera"]
        refused = await self._authorize(request, camera)
        if refused is not None:
            return refused
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/sdp":
            return _error(415, "Content-Type must be application/sdp")
        forced = request.query_params.get("codec")
        if forced is not None and forced not in CODECS:
            return _error(400, f"codec must be one of {', '.join(CODECS)}")
        body = await _read_body(request, _MAX_OFFER_BYTES)
        if body is None:
            return _error(413, f"SDP offer larger than {_MAX_OFFER_BYTES} bytes")
        try:
            offer = body.decode("utf-8")
            offered = _offered_codecs(offer)
        except UnicodeDecodeError:
            return _error(400, "malformed SDP offer: not UTF-8 text")
        except ValueError as exc:
            return _error(400, f"malformed SDP offer: {exc}")

        wanted = [forced] if forced else list(CODECS)
        rendition = None
        for codec in (c for c in wanted if c in offered):
            rendition = self._rendition_for(camera, codec)
            if rendition is not None:
                break
        if rendition is None:
            if not any(c in offered for c in wanted) and any(self._rendition_for(camera, c) for c in CODECS):
                names = " or ".join(_CODEC_NAMES[c] for c in wanted)
                return _error(400, f"the offer cannot receive {names}")
            if self._camera_known(camera):
                return _error(503, f"camera {camera} has no frame yet; retry", {"Retry-After": "1"})
            return _error(404, f"no such camera: {camera}")

        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice_servers)))
        session = _Session(secrets.token_urlsafe(12), camera, pc, rendition.subscribe(),
                           allowed=getattr(request.state, "still_allowed", None))

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState == "connected" and session.timeout is not None:
                session.timeout.cancel()
                session.timeout = None
            elif pc.connectionState in ("failed", "closed"):
                await self._end(session.id)

        try:
            transceiver = pc.addTransceiver(session.track, direction="sendonly")
            transceiver.setCodecPreferences(_capabilities(rendition.codec))
            _route_keyframe_requests(transceiver.sender, rendition)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except _NEGOTIATION_ERRORS as exc:
            session.track.stop()
            await pc.close()
            return _error(400, f"cannot answer the offer: {exc}")

        self._sessions[session.id] = session
        if pc.connectionState != "connected":
            session.timeout = asyncio.get_running_loop().call_later(_CONNECT_TIMEOUT, self._expire, session)
        location = f"{request.scope.get('root_path', '')}/whep/{quote(camera, safe='')}/{session.id}"
        return Response(
            pc.localDescription.sdp, status_code=201, media_type="application/sdp", headers={"Location": location}
        )

    async def _delete(self, request: Request) -> Response:
        refused = await self._authorize(request, request.path_params["camera"])
        if refused is not None:
            return refused
        session = self._sessions.get(request.path_params["session"])
        if session is None or session.camera != request.path_params["camera"]:
            return _error(404, "no such session")
        await self._end(session.id)
        return PlainTextResponse("session ended\n")

    async def _view(self, request: Request) -> Response:
        # the page holds no data and is the same for every camera name: whether the camera
        # exists, and whether the token may watch it, is for the WHEP request to say
        return _page(_VIEWER_PAGE)

    # -- sessions -----------------------------------------------------------------------------

    def _expire(self, session: _Session) -> None:
        session.timeout = None
        if session.pc.connectionState != "connected":
            asyncio.ensure_future(self._end(session.id))

    async def _end(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        if session.timeout is not None:
            session.timeout.cancel()
        session.track.stop()
        await session.pc.close()


# The viewer token comes in the URL fragment (#token=...), which browsers never send to a server;
# it is kept for this tab only and taken out of the address bar.
_TOKEN_SCRIPT = """const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem("privacy-gateway-token", fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem("privacy-gateway-token");
  const auth = token ? { Authorization: "Bearer " + token } : {};"""


def _page(template: str) -> HTMLResponse:
    """A static page whose inline script and style may run (a fresh nonce), and nothing else."""
    nonce = secrets.token_urlsafe(16)
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; media-src 'self' blob: mediastream:; frame-ancestors 'none'"
    )
    return HTMLResponse(
        template.replace("{token_script}", _TOKEN_SCRIPT).replace("{nonce}", nonce),
        headers={"Content-Security-Policy": policy, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def viewer_index() -> HTMLResponse:
    """The camera list: only the cameras the viewer's token grants (asked of ``/api/cameras`` with it)."""
    return _page(_INDEX_PAGE)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or ``None`` when it exceeds ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _offered_codecs(offer: str) -> set[Codec]:
    """The codecs the offer's first video section can receive from us; ``ValueError`` if it is no viewer's offer."""
    if not offer.lstrip().startswith("v=0"):
        raise ValueError("it does not start with v=0")
    try:
        description = sdp.SessionDescription.parse(offer)
    except _SDP_PARSE_ERRORS as exc:
        raise ValueError(f"cannot parse it ({type(exc).__name__})") from None
    video = next((media for media in description.media if media.kind == "video"), None)
    if video is None:
        raise ValueError("no video media section")
    if video.direction not in (None, "recvonly", "sendrecv"):
        raise ValueError(f"the video section is {video.direction}, a viewer must receive")
    if not video.ice.usernameFragment or not video.ice.password:
        raise ValueError("ICE username fragment or password is missing")
    if not video.dtls or not video.dtls.fingerprints:
        raise ValueError("DTLS fingerprint is missing")
    if not video.rtcp_mux:
        raise ValueError("rtcp-mux is required")
    offered: set[Codec] = set()
    for codec in video.rtp.codecs:
        mime = codec.mimeType.lower()
        if mime == "video/vp8":
            offered.add("vp8")
        elif mime == "video/h264" and _is_baseline_h264(codec.parameters):
            offered.add("h264")
    return offered


def _is_baseline_h264(parameters: dict) -> bool:
    if str(parameters.get("packetization-mode", "0")) != "1":
        return False
    try:
        profile, _ = sdp.parse_h264_profile_level_id(str(parameters.get("profile-level-id", "42e01f")))
    except ValueError:
        return False
    return profile in (sdp.H264Profile.PROFILE_CONSTRAINED_BASELINE, sdp.H264Profile.PROFILE_BASELINE)


def _capabilities(codec: Codec) -> list:
    mime = {"h264": "video/h264", "vp8": "video/vp8"}[codec]
    return [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in (mime, "video/rtx")]


def _route_keyframe_requests(sender: RTCRtpSender, rendition: Rendition) -> None:
    # aiortc turns a viewer's PLI/FIR into sender._send_keyframe(), which only affects frames it
    # encodes itself; with pre-encoded packets the request must reach the shared encoder instead.
    sender._send_keyframe = rendition.request_keyframe  # type: ignore[method-assign]


_VIEWER_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Camera</title>
<style nonce="{nonce}">
html, body { margin: 0; height: 100%; background: #111; color: #ccc; font: 14px system-ui, sans-serif; }
video { display: block; width: 100%; height: calc(100% - 2em); background: #000; object-fit: contain; }
#status { height: 2em; line-height: 2em; padding: 0 .5em; }
</style>
</head>
<body>
<video id="video" autoplay muted playsinline></video>
<div id="status">connecting</div>
<script nonce="{nonce}">
"use strict";
(() => {
  const video = document.getElementById("video");
  const status = document.getElementById("status");
  const camera = decodeURIComponent(location.pathname.split("/").pop());
  const endpoint = location.pathname.replace(/\\/view\\/([^/]+)$/, "/whep/$1") + location.search;
  document.title = camera;
  const show = (text) => { status.textContent = camera + ": " + text; };
  {token_script}

  function iceGathered(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(resolve, 2000);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  async function start() {
    const pc = new RTCPeerConnection();
    const session = { pc, location: null };
    window.whepSession = session;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      video.srcObject = event.streams[0] || new MediaStream([event.track]);
    });
    pc.addEventListener("connectionstatechange", () => show(pc.connectionState));
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    const response = await fetch(endpoint, {
      method: "POST", headers: { "Content-Type": "application/sdp", ...auth }, body: pc.localDescription.sdp,
    });
    if (response.status === 503) {  // the camera has no frame yet: try again shortly
      pc.close();
      show("waiting for the camera");
      setTimeout(() => start().catch((error) => show("error: " + error)), 1000);
      return;
    }
    if (response.status !== 201) {
      show("refused (" + response.status + "): " + (await response.text()).trim());
      pc.close();
      return;
    }
    session.location = new URL(response.headers.get("Location"), location.href).href;
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    window.addEventListener("pagehide", () => {
      fetch(session.location, { method: "DELETE", headers: auth, keepalive: true });
      pc.close();
    });
  }

  start().catch((error) => show("error: " + error));
})();
</script>
</body>
</html>
"""

_INDEX_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>privacy-gateway</title>
<style nonce="{nonce}">
body { margin: 2em; background: #111; color: #ccc; font: 15px system-ui, sans-serif; }
a { color: #8cf; } input { width: 30em; }
</style>
</head>
<body>
<h1>Cameras</h1>
<ul id="cameras"></ul>
<p id="status"></p>
<form id="form" hidden><label>Viewer token <input id="token" autocomplete="off"></label> <button>Show</button></form>
<script nonce="{nonce}">
"use strict";
(() => {
  {token_script}
  const list = document.getElementById("cameras"), status = document.getElementById("status");
  const form = document.getElementById("form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = "token=" + encodeURIComponent(document.getElementById("token").value.trim());
    location.reload();
  });
  if (!token) { status.textContent = "A viewer token is needed."; form.hidden = false; return; }
  fetch("/api/cameras", { headers: auth }).then(async (response) => {
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      status.textContent = "refused (" + response.status + "): " + (answer.error || "");
      sessionStorage.removeItem("privacy-gateway-token");
      form.hidden = false;
      return;
    }
    const { cameras } = await response.json();
    for (const camera of cameras) {
      const item = document.createElement("li"), link = document.createElement("a");
      link.href = "/view/" + encodeURIComponent(camera.id);
      link.textContent = camera.id;
      item.append(link);
      list.append(item);
    }
    if (!cameras.length) status.textContent = "This token grants no camera.";
  });
})();
</script>
</body>
</html>
"""
