"""Rate limiting of failed authentication: past :data:`FAILURE_LIMIT` failures a minute from one
address, that address is answered 429 until the minute has passed."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

FAILURE_WINDOW = 60.0
FAILURE_LIMIT = 10


class FailureLimiter:
    """Failed authentications per peer address within a sliding window."""

    def __init__(self, limit: int = FAILURE_LIMIT, window: float = FAILURE_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()  # reason -> failures, for /metrics

    def _recent(self, peer: str, now: float) -> collections.deque[float]:
        times = self._failures.setdefault(peer, collections.deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def retry_after(self, peer: str) -> float:
        """Seconds until ``peer`` may try again; 0 when it may now."""
        now = self._clock()
        with self._lock:
            times = self._recent(peer, now)
            if not times:
                self._failures.pop(peer, None)
            return 0.0 if len(times) < self.limit else self.window - (now - times[0])

    def failed(self, peer: str, who: str | None, why: str, channel: str = "http") -> None:
        with self._lock:
            self._recent(peer, self._clock()).append(self._clock())
            if len(self._failures) > 10_000:  # bounded under a spray of addresses: forget the quietest
                for quiet in sorted(self._failures, key=lambda p: self._failures[p][-1] if self._failures[p] else 0)[:1000]:
                    del self._failures[quiet]
            self.counts[why] += 1
        log.warning("%s authentication failed from %s%s: %s", channel, peer, f" as {who!r}" if who else "", why)
