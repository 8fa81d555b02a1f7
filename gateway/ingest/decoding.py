"""Sources that demux and decode with PyAV on a reader thread of their own (files, RTSP cameras).

The reader thread decodes each packet and places its frames on the source's :class:`Timeline`.
A live source (an RTSP camera, a file played in real time) hands them to an :class:`Emitter`
(drop-oldest queue and BGR conversion on a second thread), so a slow consumer never holds up
the network read; a file read as fast as possible calls ``emit`` straight from the reader
thread, so a slow consumer slows the reading down and no frame is lost.

Frames the decoder marks corrupt (damage it concealed) are skipped, as are packets it cannot
decode, and both are counted in ``stats.errors``: a damaged frame may show a face smeared where
the detector cannot find it. Packets the demuxer marks corrupt are counted too, but still
decoded; the decoder judges what can be used.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Callable

import av

from ..frames import SourceFrame
from .source import Decoded, Emitter, Source, SourceStats, Timeline

log = logging.getLogger(__name__)

#: a source this far behind its schedule skips ahead instead of bursting to catch up
MAX_LAG = 1.0
#: how long a reader waits for room in a full queue: a burst (the probed frames right after a
#: connect) outruns BGR conversion for a moment; half a frame's time, within these bounds,
#: lets the emitter catch up instead of dropping and keeps the reader in step
_GRACE_BOUNDS = (0.002, 0.05)


class Lost(Exception):
    """The stream ended or went silent; the message says how."""


class DecodingSource(Source):
    """A reader thread that decodes, and for live sources an emitter thread behind a drop-oldest queue."""

    def __init__(self, camera: str, *, live: bool, queue_size: int):
        self.camera = camera
        self.stats = SourceStats()
        self._live = live
        self._stopping = threading.Event()
        self._reader_thread: threading.Thread | None = None
        kind = type(self).__name__
        self._emitter = Emitter(camera, self.stats, queue_size, f"{kind}[{camera}].emit")
        self._timeline = Timeline()
        self._index = 0
        self._started_at = 0.0
        self._schedule = 0.0  # monotonic time at which media time 0 is due (paced sources)

    def start(self, emit: Callable[[SourceFrame], None]) -> None:
        if self._reader_thread is not None:
            raise RuntimeError(f"source {self.camera!r} was already started")
        self._started_at = self._schedule = time.monotonic()
        self._emitter.start(emit, threaded=self._live)
        self._reader_thread = threading.Thread(target=self._reader, name=f"{type(self).__name__}[{self.camera}]",
                                               daemon=True)
        self._reader_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._emitter.stop()
        deadline = time.monotonic() + timeout
        reader = self._reader_thread
        if reader is not None and reader is not threading.current_thread():
            reader.join(max(0.0, deadline - time.monotonic()))
        emitter_done = self._emitter.join(deadline - time.monotonic())
        if (reader is not None and reader.is_alive() and reader is not threading.current_thread()) or not emitter_done:
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
            self.stats.error("corrupt packet")
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            self.stats.error(f"decode: {exc}")
            return 0
        passed = 0
        for frame in frames:
            if frame.is_corrupt:
                self.stats.error("corrupt frame")
                continue
            self._push(frame, pace)
            passed += 1
        return passed

    # -- internals -----------------------------------------------------------------------

    def _push(self, frame: av.VideoFrame, pace: bool) -> None:
        if self._stopping.is_set():
            return
        t = self._timeline.place(frame.time)
        if pace and not self._wait_until(t):
            return
        item = Decoded(self._index, t, frame, time.monotonic())
        self._index += 1
        self.stats.frames += 1
        if not self._live:
            self._emitter.emit_now(item)
        else:
            low, high = _GRACE_BOUNDS
            self._emitter.put(item, grace=min(max(self._timeline.step / 2, low), high))

    def _wait_until(self, t: float) -> bool:
        """Sleep until media time ``t`` is due on the monotonic clock; False if stopped meanwhile."""
        delay = self._schedule + t - time.monotonic()
        if delay < -MAX_LAG:
            self._schedule -= delay  # fell far behind (a stalled machine, a slow emit): resume from now
        elif delay > 0:
            return not self._stopping.wait(delay)
        return not self._stopping.is_set()

    def _reader(self) -> None:
        try:
            self._read()
        except Exception as exc:  # a bug, not a camera fault: say so loudly, keep the process alive
            log.exception("camera %s: source failed", self.camera)
            self.stats.error(f"source failed: {exc!r}")
        finally:
            self.stats.connected = False
            self._emitter.close()


def frame_step(stream: av.video.stream.VideoStream) -> float | None:
    """Seconds between frames as the stream declares them, if it does."""
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / rate) if rate else None
