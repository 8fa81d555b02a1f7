"""Live pacing: frames leave at the camera's own rhythm, not in the bursts the pipeline releases.

The pipeline releases a detection group at once, so frames come in bursts; sent that way, a
browser's jitter buffer would grow to the burst length. :class:`Pacer` holds each frame until
its media time plus the largest release delay (release time minus media time) of the last
:data:`WINDOW` seconds: a steady delay, bounded by the hold-back, that also follows a camera
clock running a little fast or slow. A frame already past its turn (the live thread fell
behind) goes at once, so a backlog drains.
"""

from __future__ import annotations

import collections
import time

WINDOW = 2.0  # seconds of release delays the schedule follows
MAX_WAIT = 1.0  # seconds a frame may wait for its turn; more means the media clock jumped (a reconnect)


class Pacer:
    """When each frame of one camera is due on the live path (one caller thread)."""

    def __init__(self, clock=time.monotonic, sleep=time.sleep) -> None:
        self._clock, self._sleep = clock, sleep
        self._delays: collections.deque[tuple[float, float]] = collections.deque()  # (released, delay)

    def due(self, media_time: float, released: float) -> float:
        """The monotonic time at which the frame of ``media_time``, released at ``released``, should go."""
        delays = self._delays
        delays.append((released, released - media_time))
        while delays[0][0] < released - WINDOW:
            delays.popleft()
        due = media_time + max(delay for _, delay in delays)
        if due - self._clock() > MAX_WAIT:  # the media clock jumped ahead: start afresh
            delays.clear()
            delays.append((released, released - media_time))
            return self._clock()
        return due

    def wait(self, media_time: float, released: float) -> None:
        """Sleep until the frame's turn (at once if it is already due)."""
        delay = self.due(media_time, released) - self._clock()
        if delay > 0:
            self._sleep(delay)
