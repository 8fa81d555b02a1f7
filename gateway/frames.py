"""The frames that cross stage boundaries: one type per boundary.

    ingest ──SourceFrame──▶ live (decide, redact, seal) ──Released──▶ egress

A :class:`SourceFrame` is a decoded camera frame with its place on the camera's timeline. A
:class:`Released` frame has left the pipeline in one of three states (see
:mod:`gateway.live.pipeline`): ``redacted`` (its regions redacted and sealed), ``blanked``
(replaced by a solid frame of :data:`BLANK_LEVEL`), or ``dropped`` (no pixels at all). Nothing
else ever reaches a sink, so egress cannot hold an unredacted pixel.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from keys import VaultRef

State = Literal["redacted", "blanked", "dropped"]
BLANK_LEVEL = 48  # the grey of a blanked frame
#: bounds of a frame rate measured from two frames' spacing: a one-frame-per-second camera is
#: still a stream, and anything faster than 60 fps is taken for a timestamp glitch
MIN_RATE, MAX_RATE = 1.0, 60.0


@dataclass(frozen=True)
class SourceFrame:
    """A decoded frame as a source hands it on (ingest → live)."""

    index: int  # 0, 1, 2 ... for the whole life of the source, continuing across reconnects and loops
    time: float  # media seconds since the source started; strictly increasing, also across reconnects/loops
    image: np.ndarray  # BGR uint8, (h, w, 3), C-contiguous
    arrived: float  # time.monotonic() when the frame was decoded


@dataclass(frozen=True)
class Released:
    """A frame leaving the pipeline (live → egress); ``image`` is None for a dropped frame."""

    camera: str
    index: int
    time: float
    state: State
    image: np.ndarray | None
    shape: tuple[int, int, int]
    ref: VaultRef | None = None  # the recording (and its sealed records) this frame belongs to
    at: float = field(default_factory=time.monotonic)  # when it was released

    def without_pixels(self) -> Released:
        """The same frame given up by a consumer too far behind: its slot stays, its pixels go."""
        return replace(self, state="dropped", image=None)

    def pixels(self) -> np.ndarray:
        """The frame's pixels; a dropped frame is blank (what a recorder writes in its slot)."""
        return self.image if self.image is not None else blank(self.shape)


@functools.lru_cache(maxsize=16)
def blank(shape: tuple[int, int, int]) -> np.ndarray:
    """A solid frame of :data:`BLANK_LEVEL`: what a frame without a decision becomes. One read-only
    array per shape, shared: a 720p frame filled anew for every blanked frame cost the watchdog
    thread, which blanks them, about a core's percent when a camera is behind."""
    image = np.full(shape, BLANK_LEVEL, dtype=np.uint8)
    image.flags.writeable = False
    return image


def frame_rate(first: float, second: float) -> float:
    """Frames per second from the media times of two consecutive frames (encoders need a rate
    for their GOP length and rate control; cameras declare theirs unreliably)."""
    if second <= first:
        raise ValueError(f"frame times must increase, got {first} then {second}")
    return min(MAX_RATE, max(MIN_RATE, 1.0 / (second - first)))
