"""Rate limiting of failed authentication: past :data:`FAILURE_LIMIT` failures a minute from one
address, that address is answered 429 until the minute has passed.

In a cluster (``shared``: :class:`gateway.state.FailureTable`) an address's failures on the other
nodes count too: a thread of the limiter's own records this node's failures in the database and
reads the others' every :data:`SHARE_PERIOD` seconds, so an address that spreads its guesses over
the nodes is stopped as it would be on one (within that period), and no request ever waits for
the database. Without the database each node limits on its own failures, as a single gateway does."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from ...state import FailureTable, StateUnavailable

log = logging.getLogger(__name__)

FAILURE_WINDOW = 60.0
FAILURE_LIMIT = 10
#: seconds between two exchanges of failures with the other nodes (a cluster's)
SHARE_PERIOD = 0.5


class FailureLimiter:
    """Failed authentications per peer address within a sliding window."""

    def __init__(self, limit: int = FAILURE_LIMIT, window: float = FAILURE_WINDOW,
                 clock: Callable[[], float] = time.monotonic, shared: FailureTable | None = None) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()  # reason -> failures, for /metrics
        #: the other nodes' failures per address: (how many, when the oldest leaves the window, on our clock)
        self._others: dict[str, tuple[int, float]] = {}
        self._unshared: list[str] = []  # this node's failures not yet recorded in the database
        self._shared, self._stop = shared, threading.Event()
        self._thread: threading.Thread | None = None
        if shared is not None:
            self._thread = threading.Thread(target=self._share, name="auth-failures", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._shared is not None:
            self._shared.database.close()

    def _share(self) -> None:
        """Put this node's failures in the database, take the others' (the limiter's thread)."""
        assert self._shared is not None
        logged = -FAILURE_WINDOW
        while not self._stop.wait(SHARE_PERIOD):
            with self._lock:
                mine, self._unshared = self._unshared, []
            try:
                if mine:
                    self._shared.add(mine)
                others = self._shared.others(self.window)
            except StateUnavailable as exc:
                with self._lock:  # kept for the next try (bounded: the newest only)
                    self._unshared = (mine + self._unshared)[-10_000:]
                if time.monotonic() - logged >= FAILURE_WINDOW:
                    logged = time.monotonic()
                    log.warning("failed logins: the other nodes' cannot be read (%s); limiting on this node's "
                                "alone meanwhile", exc)
                continue
            now = self._clock()
            with self._lock:
                self._others = {peer: (count, now + left) for peer, (count, left) in others.items()}

    def _recent(self, peer: str, now: float) -> collections.deque[float]:
        times = self._failures.setdefault(peer, collections.deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def retry_after(self, peer: str) -> float:
        """Seconds until ``peer`` may try again; 0 when it may now (its failures here and, in a
        cluster, on the other nodes counted together)."""
        now = self._clock()
        with self._lock:
            times = self._recent(peer, now)
            if not times:
                self._failures.pop(peer, None)
            others, until = self._others.get(peer, (0, now))
            if until <= now:
                others = 0
            if len(times) + others < self.limit:
                return 0.0
            here = self.window - (now - times[0]) if times else 0.0
            # at most a window: until the older of the two counts' oldest failure leaves it
            return max(here, until - now) if len(times) < self.limit else here

    def failed(self, peer: str, who: str | None, why: str, channel: str = "http") -> None:
        with self._lock:
            self._recent(peer, self._clock()).append(self._clock())
            if self._shared is not None:
                self._unshared.append(peer)
            if len(self._failures) > 10_000:  # bounded under a spray of addresses: forget the quietest
                for quiet in sorted(self._failures, key=lambda p: self._failures[p][-1] if self._failures[p] else 0)[:1000]:
                    del self._failures[quiet]
            self.counts[why] += 1
        log.warning("%s authentication failed from %s%s: %s", channel, peer, f" as {who!r}" if who else "", why)
