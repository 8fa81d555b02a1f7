"""The source of a camera configured with ``protocol: whip``: whichever publisher is connected.

A :class:`WhipSource` produces frames only while a publisher session (see
:mod:`gateway.ingest.whip_server`) holds the camera; its frames go through the same pipeline as
those of an RTSP camera. aiortc decodes on a thread of its own and hands decoded frames to the
event loop; :meth:`WhipSource.deliver` stamps and numbers them there (cheap) and queues them,
still in YUV, for the :class:`~gateway.ingest.source.Emitter` thread, which converts them to BGR
and calls ``emit``: the event loop never converts a frame nor waits for the pipeline. When the
queue is full the oldest frame is dropped and counted in ``stats.dropped``.

``index`` and ``time`` carry on across publishers: a new publisher's first frame comes one frame
after the last one and no earlier than the seconds elapsed since ``start()``, so a gap between
publishers shows as a gap in time. Within a session, time follows the RTP timestamps (aiortc's
frame ``pts``), not the arrival times, so network jitter does not distort it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import av

from ..frames import SourceFrame
from .source import Decoded, Emitter, Source, SourceStats, Timeline

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """A publisher session as its source sees it."""

    def close_from_any_thread(self, timeout: float) -> None:
        """End the session, from any thread (the source is stopping)."""


class WhipSource(Source):
    """The frames of whichever publisher is connected to one camera, on one timeline; one publisher at a time."""

    def __init__(self, camera: str, *, queue_size: int = 8, read_timeout: float = 10.0) -> None:
        if not read_timeout > 0:
            raise ValueError(f"read_timeout must be positive, not {read_timeout!r}")
        self.camera = camera
        self.stats = SourceStats()
        self.read_timeout = read_timeout
        self._emitter = Emitter(camera, self.stats, queue_size, f"WhipSource[{camera}].emit")
        self._lock = threading.Lock()
        self._running = False
        self._stopping = False
        self._timeline = Timeline()
        self._index = 0
        self._started_at = 0.0
        self._session: Publisher | None = None  # the publisher holding the camera
        self._segment: Publisher | None = None  # the publisher whose frames the timeline follows

    def start(self, emit: Callable[[SourceFrame], None]) -> None:
        with self._lock:
            if self._running:
                raise RuntimeError(f"source {self.camera!r} was already started")
            self._running = True
            self._started_at = time.monotonic()
        self._emitter.start(emit)

    def stop(self, timeout: float = 5.0) -> None:
        """End the publisher's session (if any), refuse new ones, and join the emitter thread."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping = True
            session, self._session = self._session, None
            self.stats.connected = False
        self._emitter.stop()
        if session is not None:
            session.close_from_any_thread(timeout)
        if not self._emitter.join(deadline - time.monotonic()):
            log.warning("camera %s: emit still busy after %.1f s; left to finish", self.camera, timeout)

    # -- called by the WHIP server on its event loop --------------------------------------------

    def claim(self, session: Publisher) -> str | None:
        """Make ``session`` this camera's publisher; why not (``"busy"``, ``"not running"``) if it cannot be."""
        with self._lock:
            if not self._running or self._stopping:
                return "not running"
            if self._session is not None:
                return "busy"
            self._session = session
            return None

    def detach(self, session: Publisher, error: str | None) -> None:
        """``session`` has ended, on ``error`` if it broke; the camera is free for another publisher."""
        with self._lock:
            if self._session is not session:
                return
            self._session = None
            self.stats.connected = False
        if error is not None:
            self.stats.error(error)

    def deliver(self, session: Publisher, frame: av.VideoFrame) -> None:
        """Stamp, number and queue one decoded frame; never blocks (the oldest queued frame makes room)."""
        arrived = time.monotonic()
        with self._lock:
            if self._session is not session or self._stopping:
                return
            if self._segment is not session:
                if self._segment is not None:
                    self.stats.reconnects += 1
                self._segment = session
                self._timeline.begin(None, floor=arrived - self._started_at)
            item = Decoded(self._index, self._timeline.place(frame.time), frame, arrived)
            self._index += 1
            self.stats.frames += 1
            self.stats.connected = True
            self._emitter.put(item)  # under the lock, so frames are queued in index order
