"""Faults of one part of a camera's path: counted, logged once per burst, retried with backoff.

A part that fails (the sealer, the pipeline's worker, the recorder) must neither die silently
nor flood the log: :class:`Faults` counts every error, logs the first of a burst and then at
most one summary every :data:`LOG_INTERVAL` seconds, says when the next attempt to recover is
due (1 s after the first failure, doubling up to :data:`MAX_BACKOFF`), and keeps the reason
``/health`` reports until the part works again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0  # seconds to the first retry after a failure
MAX_BACKOFF = 30.0  # the longest wait between two retries
LOG_INTERVAL = 10.0  # seconds between two log lines of one burst of failures


class Faults:
    """One part's failures (thread-safe): ``reason`` is None while it works."""

    def __init__(self, part: str, consequence: str = "its frames are blanked",
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``part``: what fails, as the log and ``/health`` say it (``camera lobby: sealing``);
        ``consequence``: what its failure costs, for the log."""
        self.part, self.consequence, self._clock = part, consequence, clock
        self._lock = threading.Lock()
        self.errors = 0  # every failure, retries included
        self.recoveries = 0  # times the part worked again after failing
        self.reason: str | None = None
        self._since = 0.0  # when the fault in force began
        self._delay = FIRST_BACKOFF
        self._retry_at = 0.0
        self._logged = -LOG_INTERVAL
        self._unlogged = 0  # failures since the last log line

    def failed(self, error: BaseException | str) -> None:
        """Count a failure and schedule the next retry; log it if it starts a burst, or sums one up."""
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        now = self._clock()
        with self._lock:
            self.errors += 1
            first = self.reason is None
            if first:
                self._since, self._delay = now, FIRST_BACKOFF
            else:
                self._delay = min(2 * self._delay, MAX_BACKOFF)
            self.reason = reason
            self._retry_at = now + self._delay
            self._unlogged += 1
            if not first and now - self._logged < LOG_INTERVAL:
                return
            count, self._unlogged, self._logged = self._unlogged, 0, now
            delay = self._delay
        if first:
            log.error("%s failed: %s; %s, retrying in %.0f s", self.part, reason, self.consequence, delay)
        else:
            log.error("%s still failing (%d more failures; last: %s); next retry in %.0f s", self.part, count,
                      reason, delay)

    def due(self) -> bool:
        """Whether a retry is due now (always, while the part works)."""
        with self._lock:
            return self.reason is None or self._clock() >= self._retry_at

    def retrying(self) -> None:
        """A retry has begun: the next one is due a backoff from now, whatever becomes of this one."""
        with self._lock:
            if self.reason is not None:
                self._retry_at = self._clock() + self._delay

    def recovered(self) -> None:
        """The part works again (a no-op if it never stopped)."""
        with self._lock:
            if self.reason is None:
                return
            down, errors = self._clock() - self._since, self._unlogged
            self.reason, self._unlogged = None, 0
            self.recoveries += 1
        log.warning("%s works again after %.1f s (%d failures unlogged)", self.part, down, errors)

    def wait(self) -> float:
        """Seconds until the next retry is due (0 while the part works)."""
        with self._lock:
            return 0.0 if self.reason is None else max(0.0, self._retry_at - self._clock())
