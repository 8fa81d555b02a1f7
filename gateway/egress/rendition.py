"""One encoder per (camera, codec), its packets fanned out to every viewer (WHEP and RTSP alike).

A :class:`Rendition` owns one encoder (settings in :mod:`.encoding`). The camera's output pushes
redacted BGR frames into it; the rendition's own encoder thread turns them into ``av.Packet``
objects and hands every packet to every viewer. Each viewer is an aiortc track whose ``recv()``
returns those packets: aiortc's ``RTCRtpSender`` sees a packet rather than a frame and only
packetizes it (``Encoder.pack``), so adding a viewer adds RTP/SRTP work, never an encode. The
RTSP server subscribes the same way.

A camera's H.264 rendition is :class:`~.encoding.Continuous`: it encodes every frame, watched or
not, never drops one (``push`` waits for room instead: the recording must keep every frame's
slot), and hands every packet with its frame's tag to the recorder. Other renditions encode
only while someone watches and drop the oldest waiting frame when the encoder falls behind.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time as _clock

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..frames import Released
from ..webrtc import CODECS, Codec
from .encoding import RTP_CLOCK, TIME_BASE, Continuous, StreamInfo, open_encoder

__all__ = ["RTP_CLOCK", "VIEWER_BACKLOG", "Rendition", "ViewerTrack"]

logger = logging.getLogger(__name__)

# frames waiting for the encoder. The pipeline releases a detection group at once (up to the
# policy's stride, at most 30 frames), and a viewer should get all of them: RTP timestamps carry
# the frames' own spacing, so the burst plays evenly. An on-demand rendition drops the oldest
# beyond this (and counts it); a continuous one makes ``push`` wait.
_PENDING_FRAMES = 32
VIEWER_BACKLOG = 15  # packets queued for one viewer before it is declared slow
_KEYFRAME_MIN_INTERVAL = 1.0  # seconds between keyframes requested by viewers (PLI/FIR, newcomers, slow viewers)


class Rendition:
    """One encoder per (camera, codec); frames are pushed from one thread, packets fan out to all viewers.

    A new viewer starts at a keyframe asked for it (rate-limited, like every keyframe request); a
    viewer that falls ``VIEWER_BACKLOG`` packets behind loses its backlog and resumes at the next
    keyframe, so one slow viewer never holds back the encoder or the others.
    """

    def __init__(self, camera: str, codec: Codec, width: int, height: int, fps: float, bitrate: int = 1_500_000,
                 continuous: Continuous | None = None) -> None:
        if codec not in CODECS:
            raise ValueError(f"codec: {codec!r} is not one of {', '.join(CODECS)}")
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or value <= 0 or value % 2:
                raise ValueError(f"{name}: {value!r} is not a positive even number of pixels")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps: {fps!r} is not a positive number")
        if not isinstance(bitrate, int) or bitrate <= 0:
            raise ValueError(f"bitrate: {bitrate!r} is not a positive number of bits per second")
        if continuous is not None and codec != "h264":
            raise ValueError("a continuous rendition is H.264")
        self.camera = camera
        self.codec = codec
        self.width = width
        self.height = height
        self.fps = float(fps)
        self.bitrate = bitrate
        self.continuous = continuous
        # statistics, plain ints
        self.frames_encoded = 0
        self.frames_dropped = 0  # pushed while the encoder was still busy with older frames (on-demand only)
        self.packets_sent = 0  # packets handed to viewers' senders, summed over viewers
        self.packets_dropped = 0  # packets a viewer skipped (joining before a keyframe, or too slow)
        self.keyframes = 0
        self.errors = 0  # frames the encoder failed on (each restarts it)

        self._cond = threading.Condition()
        self._pending: collections.deque[tuple[np.ndarray, int, Released | None, bool]] = collections.deque()
        self._viewers: set[ViewerTrack] = set()
        self._keyframe_wanted = False
        self._last_keyframe = -math.inf  # monotonic time the last keyframe was asked of the encoder
        self._pts_offset = 0
        self._last_pts: int | None = None
        self._closed = False
        self._encoder: av.VideoCodecContext | None = None
        self._picture: tuple[av.VideoFrame, list[np.ndarray]] | None = None  # see _frame
        self._tags: collections.deque[Released | None] = collections.deque()  # of frames in the encoder, in order
        self._thread = threading.Thread(target=self._run, name=f"whep-{camera}-{codec}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Rendition({self.camera!r}, {self.codec!r}, {self.width}x{self.height}@{self.fps:g})"

    @property
    def viewers(self) -> int:
        with self._cond:
            return len(self._viewers)

    def push(self, image: np.ndarray, time: float, tag: Released | None = None, keyframe: bool = False) -> None:
        """Queue a redacted BGR ``uint8`` frame taken at media time ``time`` (seconds) for encoding.

        ``tag``, the released frame, comes back with its packet (continuous renditions); ``keyframe`` makes the
        frame an IDR (a recording starts there). Thread-safe; never waits for viewers. A continuous
        rendition waits here while its encoder is ``_PENDING_FRAMES`` behind. The pixels are
        converted (and copied) before this returns, so the caller may reuse ``image`` at once.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"image: expected a BGR uint8 array of shape (h, w, 3), got {dtype} {shape}")
        if not math.isfinite(time):
            raise ValueError(f"time: {time!r} is not a finite number of seconds")
        with self._cond:
            if self._closed or (self.continuous is None and not self._viewers):
                return
        if image.shape[:2] != (self.height, self.width):
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        # BT.601 limited range, what browsers assume for VP8 and for H.264 without colour VUI.
        yuv = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        with self._cond:
            if self.continuous is not None:
                self._cond.wait_for(lambda: len(self._pending) < _PENDING_FRAMES or self._closed)
                if self._closed:
                    return
            pts = round(time * RTP_CLOCK) + self._pts_offset
            if self._last_pts is not None and pts <= self._last_pts:
                # Media time went backwards (a source restarted): keep the RTP clock moving on.
                step = max(1, round(RTP_CLOCK / self.fps))
                self._pts_offset += self._last_pts + step - pts
                pts = self._last_pts + step
            self._last_pts = pts
            if len(self._pending) >= _PENDING_FRAMES:
                self._pending.popleft()
                self.frames_dropped += 1
            self._pending.append((yuv, pts, tag, keyframe))
            self._cond.notify_all()

    def subscribe(self) -> MediaStreamTrack:
        """A new viewer track for the running event loop.

        Its ``recv()`` returns this rendition's encoded ``av.Packet`` objects (shared with every
        other viewer, never modified) starting at a keyframe. It counts as a viewer from its first
        ``recv()`` until ``stop()``.
        """
        return ViewerTrack(self, asyncio.get_running_loop())

    def request_keyframe(self) -> None:
        """Ask for a keyframe soon (PLI/FIR from a viewer, a newcomer). Requests are rate-limited,
        not lost: the next frame encoded at least a second after the last keyframe (whatever made
        it) is one, however many asked: each costs every viewer bandwidth, and a continuous
        rendition's recording bytes."""
        with self._cond:
            self._keyframe_wanted = True

    def close(self) -> None:
        """Stop the encoder thread and end every viewer track. Idempotent. A continuous rendition
        encodes what is queued and flushes its encoder first, so the recording loses nothing."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            if self.continuous is None:
                self._pending.clear()
            viewers = list(self._viewers)
            self._viewers.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        for viewer in viewers:
            viewer._stop_threadsafe()

    # -- viewers (called on their event loop) -----------------------------------------------

    def _subscribe(self, viewer: ViewerTrack) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._viewers.add(viewer)
        self.request_keyframe()  # the newcomer should not wait a whole GOP
        return True

    def _unsubscribe(self, viewer: ViewerTrack) -> None:
        with self._cond:
            self._viewers.discard(viewer)

    # -- encoder thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:  # closed, and nothing left to encode
                    break
                yuv, pts, tag, forced = self._pending.popleft()
                self._cond.notify_all()  # room again, for a continuous push waiting
                keyframe = forced or (self._keyframe_wanted
                                      and _clock.monotonic() - self._last_keyframe >= _KEYFRAME_MIN_INTERVAL)
                viewers = list(self._viewers)
            if not viewers and self.continuous is None:
                continue
            self._emit(self._encode_safely(yuv, pts, tag, keyframe), viewers)
        if self.continuous is not None and self._encoder is not None:
            self._emit(self._encoder.encode(None), [])  # what the encoder still holds
        self._encoder = None

    def _encode_safely(self, yuv: np.ndarray, pts: int, tag: Released | None, keyframe: bool) -> list[av.Packet]:
        try:
            return self._encode(yuv, pts, tag, keyframe)
        except (av.FFmpegError, ValueError):
            self.errors += 1
            logger.exception("%r: encoding failed; the encoder restarts", self)
            self._encoder = None
            self._tags.clear()
            if self.continuous is None:
                return []
        # the recording must keep this frame's slot: a fresh encoder, the frame as a keyframe
        try:
            return self._encode(yuv, pts, tag, True)
        except (av.FFmpegError, ValueError):
            logger.exception("%r: encoding failed twice; the frame is lost to the recording", self)
            self._encoder = None
            self._tags.clear()
            return []

    def _encode(self, yuv: np.ndarray, pts: int, tag: Released | None, keyframe: bool) -> list[av.Packet]:
        if self._encoder is None:
            self._encoder = open_encoder(self.codec, self.width, self.height, self.fps, self.bitrate, self.continuous)
            keyframe = True
        frame = self._frame(yuv)
        frame.pts = pts
        frame.time_base = TIME_BASE
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        if keyframe:
            with self._cond:  # its packet may come frames later (lookahead): requests count from now
                self._last_keyframe = _clock.monotonic()
                self._keyframe_wanted = False
        self._tags.append(tag)
        packets = self._encoder.encode(frame)
        self.frames_encoded += 1
        return packets

    def _frame(self, yuv: np.ndarray) -> av.VideoFrame:
        """The encoder's input: one frame for the rendition's life, each I420 picture copied into its
        planes (a frame made and filled per picture, from_ndarray, took 0.6 ms of a 720p frame; x264
        and libvpx have copied a picture into their own buffers by the time encode() returns)."""
        if self._picture is None:
            frame = av.VideoFrame(self.width, self.height, "yuv420p")
            planes = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes]
            self._picture = (frame, planes)
        frame, (y, u, v) = self._picture
        h, w = self.height, self.width
        y[:] = yuv[:h]
        u[:] = yuv[h : h + h // 4].reshape(h // 2, w // 2)
        v[:] = yuv[h + h // 4 :].reshape(h // 2, w // 2)
        return frame

    def _emit(self, packets: list[av.Packet], viewers: list[ViewerTrack]) -> None:
        for packet in packets:
            # aiortc maps pts from the packet's time base to the 90 kHz RTP clock.
            packet.time_base = TIME_BASE
            if packet.is_keyframe:
                self.keyframes += 1
            tag = self._tags.popleft() if self._tags else None  # no B-frames: packets come in frame order
            if self.continuous is not None:
                try:
                    self.continuous.on_packet(packet, tag, self.stream_info)
                except Exception:  # the recorder failing must not stop the live stream
                    logger.exception("%r: the recording failed on a packet", self)
            if viewers:
                self._fan_out(packet, viewers)

    @property
    def stream_info(self) -> StreamInfo:
        extradata = bytes(self._encoder.extradata or b"") if self._encoder is not None else b""
        return StreamInfo(self.width, self.height, self.fps, extradata)

    def _fan_out(self, packet: av.Packet, viewers: list[ViewerTrack]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[ViewerTrack]] = collections.defaultdict(list)
        for viewer in viewers:
            by_loop[viewer.loop].append(viewer)
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, group, packet)
            except RuntimeError:  # the viewers' event loop is closed: they are gone
                for viewer in group:
                    self._unsubscribe(viewer)


def _deliver(viewers: list[ViewerTrack], packet: av.Packet) -> None:
    for viewer in viewers:
        viewer._deliver(packet)


class ViewerTrack(MediaStreamTrack):
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
        if len(self._queue) >= VIEWER_BACKLOG:
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
