"""Sinks: where released frames go, each consumer on a thread of its own.

A sink is any callable taking a :class:`~gateway.frames.Released` frame. :class:`ThreadedSink`
keeps encoders off the pipeline's release path: ``put`` never blocks. A sink that must see every
frame (the recorder) keeps the frame's slot but loses its pixels when too far behind (it then
writes a blank frame), so its files stay aligned with the sealed records; a live sink simply
skips frames it cannot keep up with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from ..frames import Released

log = logging.getLogger(__name__)

Sink = Callable[[Released], None]

_LOG_INTERVAL = 10.0  # seconds between two logged failures of one sink: a broken consumer must not flood the log


class ThreadedSink:
    """Runs ``consume`` on its own thread; at most ``max_images`` frames' pixels wait for it."""

    def __init__(self, name: str, consume: Callable[[Released], None], max_images: int = 60, keep_all: bool = False) -> None:
        self.name, self._consume, self._max, self._keep_all = name, consume, max_images, keep_all
        self._items: deque[Released] = deque()
        self._images = 0
        self._cond = threading.Condition()
        self._closed = False
        self.skipped = 0  # frames (or frames' pixels, with keep_all) given up because the consumer was behind
        self.errors = 0  # frames the consumer raised on (logged once per burst)
        self._logged = -_LOG_INTERVAL
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    def __call__(self, item: Released) -> None:
        with self._cond:
            if self._closed:
                return
            if item.image is not None and self._images >= self._max:
                self.skipped += 1
                if not self._keep_all:
                    return
                item = item.without_pixels()
            self._items.append(item)
            self._images += item.image is not None
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
                self._images -= item.image is not None
            try:
                self._consume(item)
            except Exception:
                self.errors += 1
                if time.monotonic() - self._logged >= _LOG_INTERVAL:
                    self._logged = time.monotonic()
                    log.exception("sink %s failed on frame %d (%d failures so far)", self.name, item.index, self.errors)

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
