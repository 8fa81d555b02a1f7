"""Camera sources: a camera stream or a file decoded into BGR frames on threads of their own.

A source reads and decodes on a daemon thread and hands every frame to ``emit``. Live
sources (RTSP, a file played in real time) put decoded frames in a small queue
(``queue_size``, 8 by default: a third of a second at 25 fps) that a second daemon thread
converts to BGR and hands to ``emit``, so a slow ``emit`` never holds up the network
read: when the queue is full the oldest frame is dropped and counted in
``stats.dropped``. A file read as fast as possible calls ``emit`` straight from its
reader thread instead, so a slow consumer slows the reading down and no frame is lost.
Either way ``emit`` is called from one thread at a time, in frame order.

``SourceFrame.time`` is one strictly increasing timeline for the whole life of a source:
within a connection (or one pass over a file) it follows the stream's own timestamps; a
reconnected camera starts again no earlier than the seconds elapsed since ``start()``, so
an outage shows as a gap; a looped file carries on one frame after its last frame.

Frames the decoder marks corrupt (damage it concealed) are skipped, as are packets it
cannot decode, and both are counted in ``stats.errors``: a damaged frame may show a face
smeared where the detector cannot find it. Packets the demuxer marks corrupt are counted
too, but still decoded; the decoder judges what can be used.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

__all__ = ["FileSource", "RtspSource", "Source", "SourceFrame", "SourceStats", "create_source"]

log = logging.getLogger(__name__)

#: a jump in a stream's own timestamps larger than this (or any step back) restarts the timeline from the previous frame
_MAX_JUMP = 10.0
#: a file source this far behind its schedule skips ahead instead of bursting to catch up
_MAX_LAG = 1.0
_DEFAULT_STEP = 1 / 25


@dataclass(frozen=True)
class SourceFrame:
    index: int  # 0, 1, 2 ... for the whole life of the source, continuing across reconnects and loops
    time: float  # media seconds since the source started; strictly increasing, also across reconnects/loops
    image: np.ndarray  # BGR uint8, (h, w, 3), C-contiguous
    arrived: float  # time.monotonic() when the frame was decoded


@dataclass
class SourceStats:
    """Counters read by the metrics exporter from another thread; plain ints/floats/str."""

    frames: int = 0
    reconnects: int = 0  # successful re-opens after a loss
    errors: int = 0  # decode errors / corrupt packets and frames skipped, failed opens, lost connections
    dropped: int = 0  # decoded frames dropped because emit fell behind (oldest first)
    connected: bool = False
    last_error: str = ""


class Source(ABC):
    """A camera or file that produces frames on threads of its own."""

    camera: str
    stats: SourceStats

    @abstractmethod
    def start(self, emit: Callable[[SourceFrame], None]) -> None:
        """Start the source's daemon thread(s); ``emit`` is called from them with every frame."""

    @abstractmethod
    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join, returning within about ``timeout`` even if the camera is stalled mid-read."""


class _Timeline:
    """Maps the timestamps of successive segments (connections, passes over a file) onto one increasing time."""

    def __init__(self) -> None:
        self.last: float | None = None
        self._origin: float | None = None  # time minus stream timestamp within the current segment
        self._fresh = True
        self._floor = 0.0
        self.step = _DEFAULT_STEP  # seconds from one frame to the next, as the stream declares it

    def begin(self, step: float | None, floor: float = 0.0) -> None:
        """A new segment: its first frame comes one ``step`` after the last frame and no earlier than ``floor``."""
        self._origin = None
        self._fresh = True
        self._floor = floor
        self.step = step if step and step > 0 else _DEFAULT_STEP

    def place(self, stamp: float | None) -> float:
        """The time of the next frame, whose stream timestamp (seconds) is ``stamp`` if it has one."""
        followed = False
        if self.last is None:
            t = 0.0
        elif self._fresh:
            t = max(self.last + self.step, self._floor)
        elif stamp is not None and self._origin is not None and 0 < self._origin + stamp - self.last <= _MAX_JUMP:
            t = self._origin + stamp
            followed = True
        else:  # no timestamp, or one that steps back or leaps: one frame on, and follow the stream from here
            t = self.last + self.step
        if stamp is not None and not followed:
            self._origin = t - stamp
        self._fresh = False
        self.last = t
        return t


class _Decoded(NamedTuple):
    index: int
    time: float
    frame: av.VideoFrame
    arrived: float


class _Lost(Exception):
    """The stream ended or went silent; the message says how."""


class _ThreadedSource(Source):
    """A reader thread that decodes, and for live sources an emitter thread behind a drop-oldest queue."""

    def __init__(self, camera: str, *, live: bool, queue_size: int):
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        self.camera = camera
        self.stats = SourceStats()
        self._live = live
        self._queue: deque[_Decoded] = deque()
        self._queue_size = queue_size
        self._wakeup = threading.Condition()
        self._stopping = threading.Event()
        self._reading = False
        self._threads: list[threading.Thread] = []
        self._emit: Callable[[SourceFrame], None] | None = None
        self._emit_failed = False
        self._errors_lock = threading.Lock()
        self._timeline = _Timeline()
        self._index = 0
        self._started_at = 0.0
        self._schedule = 0.0  # monotonic time at which media time 0 is due (paced sources)

    def start(self, emit: Callable[[SourceFrame], None]) -> None:
        if self._threads:
            raise RuntimeError(f"source {self.camera!r} was already started")
        self._emit = emit
        self._started_at = self._schedule = time.monotonic()
        self._reading = True
        kind = type(self).__name__
        self._threads.append(threading.Thread(target=self._reader, name=f"{kind}[{self.camera}]", daemon=True))
        if self._live:
            self._threads.append(
                threading.Thread(target=self._emitter, name=f"{kind}[{self.camera}].emit", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._wakeup:
            self._wakeup.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads if thread is not threading.current_thread()):
            # Blocked inside FFmpeg: it gives up at its own read timeout and then exits without emitting.
            log.warning("camera %s: still blocked in a read after %.1f s; left to time out", self.camera, timeout)
        self.stats.connected = False

    # -- for subclasses ------------------------------------------------------------------

    @abstractmethod
    def _read(self) -> None:
        """Read until ``self._stopping`` is set (or the input ends), passing each decoded frame to ``_decode``."""

    def _decode(self, packet: av.Packet, pace: bool = False) -> int:
        """Decode one packet and pass its frames on; the number passed on."""
        if packet.is_corrupt:  # decoded all the same: the decoder judges what it can use
            self._error("corrupt packet")
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            self._error(f"decode: {exc}")
            return 0
        passed = 0
        for frame in frames:
            if frame.is_corrupt:
                self._error("corrupt frame")
                continue
            self._push(frame, pace)
            passed += 1
        return passed

    def _error(self, message: str) -> None:
        with self._errors_lock:
            self.stats.errors += 1
            self.stats.last_error = message

    # -- internals -----------------------------------------------------------------------

    def _push(self, frame: av.VideoFrame, pace: bool) -> None:
        if self._stopping.is_set():
            return
        t = self._timeline.place(frame.time)
        if pace and not self._wait_until(t):
            return
        item = _Decoded(self._index, t, frame, time.monotonic())
        self._index += 1
        self.stats.frames += 1
        if not self._live:
            self._call_emit(item)
            return
        with self._wakeup:  # queued as decoded (YUV): half the memory of BGR, and no conversion for drops
            if len(self._queue) >= self._queue_size:
                # A burst (the probed frames right after a connect) outruns the emit thread for
                # a moment, BGR conversion being slower than decoding: up to half a frame's
                # time lets it catch up instead of dropping, and leaves the reader in step.
                grace = min(max(self._timeline.step / 2, 0.002), 0.05)
                self._wakeup.wait_for(lambda: len(self._queue) < self._queue_size or self._stopping.is_set(), grace)
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(item)
            self._wakeup.notify_all()

    def _wait_until(self, t: float) -> bool:
        """Sleep until media time ``t`` is due on the monotonic clock; False if stopped meanwhile."""
        delay = self._schedule + t - time.monotonic()
        if delay < -_MAX_LAG:
            self._schedule -= delay  # fell far behind (a stalled machine, a slow emit): resume from now
        elif delay > 0:
            return not self._stopping.wait(delay)
        return not self._stopping.is_set()

    def _reader(self) -> None:
        try:
            self._read()
        except Exception as exc:  # a bug, not a camera fault: say so loudly, keep the process alive
            log.exception("camera %s: source failed", self.camera)
            self._error(f"source failed: {exc!r}")
        finally:
            self.stats.connected = False
            with self._wakeup:
                self._reading = False
                self._wakeup.notify_all()

    def _emitter(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and self._reading and not self._stopping.is_set():
                    self._wakeup.wait()
                if self._stopping.is_set() or not self._queue:
                    return
                item = self._queue.popleft()
                self._wakeup.notify_all()  # room again, for a reader waiting out its grace
            self._call_emit(item)

    def _call_emit(self, item: _Decoded) -> None:
        image = np.ascontiguousarray(item.frame.to_ndarray(format="bgr24"))
        try:
            self._emit(SourceFrame(index=item.index, time=item.time, image=image, arrived=item.arrived))
        except Exception as exc:
            self._error(f"emit: {exc!r}")
            if not self._emit_failed:  # once: a broken consumer would otherwise log every frame
                self._emit_failed = True
                log.exception("camera %s: emit failed (further failures are only counted)", self.camera)


def _frame_step(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / rate) if rate else None


class FileSource(_ThreadedSource):
    """A video file, played at its own rate on the monotonic clock (``realtime``) or as fast as ``emit`` takes it."""

    def __init__(self, camera: str, path: str | Path, loop: bool = True, realtime: bool = True, *, queue_size: int = 8):
        super().__init__(camera, live=realtime, queue_size=queue_size)
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"camera {camera}: no such file {self.path}")
        self.loop = loop
        self.realtime = realtime

    def _read(self) -> None:
        first = True
        while not self._stopping.is_set():
            passed = 0
            try:
                with av.open(str(self.path)) as container:
                    stream = container.streams.video[0]
                    self.stats.connected = True
                    if first:
                        log.info("camera %s: playing %s", self.camera, self.path)
                    self._timeline.begin(_frame_step(stream))
                    for packet in container.demux(stream):
                        if self._stopping.is_set():
                            return
                        passed += self._decode(packet, pace=self.realtime)
            except (av.FFmpegError, IndexError) as exc:
                message = "no video stream" if isinstance(exc, IndexError) else str(exc)
                self._error(f"read: {message}")
                log.warning("camera %s: %s: %s", self.camera, self.path, message)
            finally:
                self.stats.connected = False
            first = False
            if not self.loop:
                log.info("camera %s: end of %s", self.camera, self.path)
                return
            if passed == 0:  # nothing decodable: do not spin on it
                self._stopping.wait(1.0)


class RtspSource(_ThreadedSource):
    """An RTSP camera pulled through PyAV, reconnecting with exponential backoff and jitter until stopped.

    ``open_timeout`` bounds connecting and probing, ``read_timeout`` the silence allowed
    while streaming; PyAV's interrupt callback (``av.open(timeout=(open, read))``) enforces
    both, over TCP and UDP alike, and FFmpeg's RTSP socket ``timeout`` stands behind it. A
    stalled camera is noticed ``read_timeout`` after its last packet and retried after
    ``backoff_initial`` seconds, doubling up to ``backoff_max``, each wait drawn at random
    from its upper half; a connection that delivered frames resets the backoff.
    ``stop()`` cannot cut a read short (PyAV has no cancel), so while the camera is stalled
    it returns at its own ``timeout`` and the reader exits at its read timeout, silently.
    """

    def __init__(
        self,
        camera: str,
        url: str,
        transport: str = "tcp",
        open_timeout: float = 5.0,
        read_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        *,
        queue_size: int = 8,
    ):
        super().__init__(camera, live=True, queue_size=queue_size)
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be tcp or udp, not {transport!r}")
        for name, value in (("open_timeout", open_timeout), ("read_timeout", read_timeout),
                            ("backoff_initial", backoff_initial), ("backoff_max", backoff_max)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self.url = url
        self.transport = transport
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = max(backoff_max, backoff_initial)
        self._options = {
            "rtsp_transport": transport,
            "allowed_media_types": "video",
            # Fast start: ~0.5 s of probing instead of FFmpeg's 5 s. Not fflags=nobuffer: it
            # throws the probed packets away, first keyframe included, so the first frame
            # would wait a whole GOP (10 s with some encoders' defaults).
            "probesize": "500000",
            "analyzeduration": "500000",
            # FFmpeg's own socket I/O timeout (microseconds): a backstop behind PyAV's, which
            # is the one that acts (the interrupt callback, polled every 0.1 s in FFmpeg's reads).
            "timeout": str(int(max(open_timeout, read_timeout) * 1_000_000)),
        }

    def _read(self) -> None:
        delay = self.backoff_initial
        opened_before = False
        while not self._stopping.is_set():
            try:
                container = av.open(self.url, options=self._options, timeout=(self.open_timeout, self.read_timeout))
            except av.FFmpegError as exc:
                self._error(f"open: {exc}")
                log.warning("camera %s: cannot open %s: %s", self.camera, self.url, exc)
            else:
                if self._stopping.is_set():
                    container.close()
                    return
                if opened_before:
                    self.stats.reconnects += 1
                opened_before = True
                self.stats.connected = True
                log.info("camera %s: connected to %s over %s", self.camera, self.url, self.transport)
                passed = 0
                try:
                    passed = self._stream(container)
                except (_Lost, av.FFmpegError, IndexError) as exc:
                    if not self._stopping.is_set():
                        message = "no video stream" if isinstance(exc, IndexError) else str(exc) or type(exc).__name__
                        self._error(f"lost: {message}")
                        log.warning("camera %s: connection lost: %s", self.camera, message)
                finally:
                    self.stats.connected = False
                    container.close()
                if passed:
                    delay = self.backoff_initial
            wait = delay * random.uniform(0.5, 1.0)
            delay = min(delay * 2, self.backoff_max)
            if self._stopping.wait(wait):
                return

    def _stream(self, container: av.container.InputContainer) -> int:
        """Decode until stopped (the number of frames passed on) or until the stream is lost (raises)."""
        stream = container.streams.video[0]
        stream.codec_context.flags |= av.codec.context.Flags.low_delay
        self._timeline.begin(_frame_step(stream), floor=time.monotonic() - self._started_at)
        passed = 0
        last = time.monotonic()
        for packet in container.demux(stream):
            if self._stopping.is_set():
                return passed
            now = time.monotonic()
            # An interrupted read makes FFmpeg first flush the frame its parser held back,
            # and only fail on the next read: judge the silence by the gap, not the error.
            silent = now - last >= self.read_timeout
            last = now
            passed += self._decode(packet)
            if silent:
                raise _Lost(f"no data for {self.read_timeout:g} s")
        raise _Lost("end of stream")


def create_source(camera: str, url: str, **options) -> Source:
    """``rtsp://`` and ``rtsps://`` give an :class:`RtspSource`; ``file://`` or a plain path a :class:`FileSource`."""
    lowered = url.lower()
    if lowered.startswith(("rtsp://", "rtsps://")):
        return RtspSource(camera, url, **options)
    if lowered.startswith("file://"):
        # As the config reads it: everything after file:// is the path (file:///abs, file://relative).
        return FileSource(camera, url[len("file://"):], **options)
    if "://" in url:
        raise ValueError(f"camera {camera}: unsupported source {url!r} (expected rtsp://, file:// or a path)")
    return FileSource(camera, url, **options)
