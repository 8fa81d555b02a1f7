"""What every camera source is: a :class:`Source` that hands decoded frames to ``emit``.

A source reads and decodes on threads of its own and calls ``emit`` with every frame, from
one thread at a time, in frame order. Live sources (an RTSP camera, a file played in real
time, a WHIP publisher) put decoded frames in a small :class:`Emitter` queue whose own thread
converts them to BGR and calls ``emit``, so a slow ``emit`` never holds up the network read:
when the queue is full the oldest frame is dropped and counted in ``stats.dropped``.

:class:`Timeline` gives a source one strictly increasing time for its whole life: within a
connection (or one pass over a file) it follows the stream's own timestamps; a new segment (a
reconnect, a new publisher, the next loop of a file) starts one frame after the last frame and
no earlier than a floor (the seconds elapsed since the source started), so an outage shows as a
gap; a timestamp that steps back or leaps restarts the timeline from the previous frame.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import av

from ..files import BgrConverter
from ..frames import SourceFrame

log = logging.getLogger(__name__)

#: a jump in a stream's own timestamps larger than this (or any step back) restarts the timeline from the previous frame
MAX_JUMP = 10.0
#: the frame spacing assumed until a stream declares its own
DEFAULT_STEP = 1 / 25


@dataclass
class SourceStats:
    """Counters read by the metrics exporter from another thread; plain ints/floats/str."""

    frames: int = 0
    reconnects: int = 0  # successful re-opens after a loss (or a new publisher)
    errors: int = 0  # decode errors / corrupt packets and frames skipped, failed opens, lost connections
    dropped: int = 0  # decoded frames dropped because emit fell behind (oldest first)
    connected: bool = False
    last_error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def error(self, message: str) -> None:
        """Count one error and remember its message (thread-safe)."""
        with self._lock:
            self.errors += 1
            self.last_error = message


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


class Timeline:
    """Maps the timestamps of successive segments (connections, passes over a file) onto one increasing time."""

    def __init__(self) -> None:
        self.last: float | None = None
        self._origin: float | None = None  # time minus stream timestamp within the current segment
        self._fresh = True
        self._floor = 0.0
        self.step = DEFAULT_STEP  # seconds from one frame to the next, as the stream declares it

    def begin(self, step: float | None, floor: float = 0.0) -> None:
        """A new segment: its first frame comes one ``step`` after the last frame and no earlier than ``floor``."""
        self._origin = None
        self._fresh = True
        self._floor = floor
        self.step = step if step and step > 0 else DEFAULT_STEP

    def place(self, stamp: float | None) -> float:
        """The time of the next frame, whose stream timestamp (seconds) is ``stamp`` if it has one."""
        followed = False
        if self.last is None:
            t = 0.0
        elif self._fresh:
            t = max(self.last + self.step, self._floor)
        elif stamp is not None and self._origin is not None and 0 < self._origin + stamp - self.last <= MAX_JUMP:
            t = self._origin + stamp
            followed = True
        else:  # no timestamp, or one that steps back or leaps: one frame on, and follow the stream from here
            t = self.last + self.step
        if stamp is not None and not followed:
            self._origin = t - stamp
        self._fresh = False
        self.last = t
        return t


class Decoded(NamedTuple):
    """A decoded frame waiting for ``emit``: still YUV (half the memory of BGR, and no conversion if dropped)."""

    index: int
    time: float
    frame: av.VideoFrame
    arrived: float


class Emitter:
    """A drop-oldest queue of decoded frames and the thread that converts them to BGR and calls ``emit``."""

    def __init__(self, camera: str, stats: SourceStats, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"queue_size must be at least 1, not {size}")
        self.camera, self.stats, self.size, self.name = camera, stats, size, name
        self._queue: deque[Decoded] = deque()
        self._cond = threading.Condition()
        self._open = True  # more frames may come; once False the thread drains the queue and ends
        self._stopping = False
        self._emit: Callable[[SourceFrame], None] | None = None
        self._failed = False
        self._thread: threading.Thread | None = None
        self._bgr = BgrConverter()  # one thread converts at a time: the emitter's, or the caller's of emit_now

    def start(self, emit: Callable[[SourceFrame], None], threaded: bool = True) -> None:
        """Hand frames to ``emit`` from a thread of the emitter's own (or, not ``threaded``, only
        through :meth:`emit_now` on the caller's thread: a file read as fast as ``emit`` takes it)."""
        self._emit = emit
        if threaded:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def put(self, item: Decoded, grace: float = 0.0) -> None:
        """Queue ``item``; when the queue is full, wait up to ``grace`` seconds for room, then drop the oldest."""
        with self._cond:
            if len(self._queue) >= self.size and grace > 0:
                self._cond.wait_for(lambda: len(self._queue) < self.size or self._stopping, grace)
            if len(self._queue) >= self.size:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(item)
            self._cond.notify_all()

    def close(self) -> None:
        """No more frames will come: the thread passes on what is queued, then ends."""
        with self._cond:
            self._open = False
            self._cond.notify_all()

    def stop(self) -> None:
        """End now: queued frames are discarded (joined by the caller via :meth:`join`)."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait for the thread; True if it ended."""
        if self._thread is None or self._thread is threading.current_thread():
            return True
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._open and not self._stopping:
                    self._cond.wait()
                if self._stopping or not self._queue:
                    return
                item = self._queue.popleft()
                self._cond.notify_all()  # room again, for a reader waiting out its grace
            self.emit_now(item)

    def emit_now(self, item: Decoded) -> None:
        """Convert and hand on one frame on the calling thread (sources that need no queue)."""
        try:
            image = self._bgr(item.frame)
            self._emit(SourceFrame(index=item.index, time=item.time, image=image, arrived=item.arrived))
        except Exception as exc:
            self.stats.error(f"emit: {exc!r}")
            if not self._failed:  # once: a broken consumer would otherwise log every frame
                self._failed = True
                log.exception("camera %s: emit failed (further failures are only counted)", self.camera)
