"""Scene cuts between two detection frames: where no track may go on.

A track is one subject; across a cut (an edited clip, a switched camera, a multiplexed feed) the
face at the same place is somebody else's, and a track carried over would unmask that other
person with the subject selected. :class:`CutDetector` compares each detection frame with the
previous one on a 64 x 36 grey thumbnail, with two measures that must both say "another picture":

``shifted``  the best normalised correlation of the two thumbnails over shifts of up to 8 x 4
             thumbnail pixels (12 % x 11 % of the frame): a pan, a walking camera or a person
             moving keeps much of the picture, at most shifted;
``histogram`` half the L1 distance of their 16-bin grey histograms: a face moving close to the
             camera changes the layout, not the picture's tones.

Measured between detection frames 0.2 s apart (the clips of ``../shared/data/videos``): the cuts
of the Hamilton clip and of the bikes montage had shifted correlation -0.06 to 0.36 and histogram
distance 0.19-0.71; a head turning close to the camera (Hamilton 1.6 s) 0.29 and 0.11; a camera on
a moving bus (MOT17-13) at least 0.70 and at most 0.14; the fixed cameras (vtest, MOT20, carphone)
at least 0.82 and at most 0.11. A cut missed carries a track across it; a cut seen where there is
none only starts new track ids (every mask stays), so the thresholds lean towards seeing one.
Cost: about 0.4 ms per detection frame at 720p, and at a cut 0.1 ms per frame held back before it
(its thumbnails place the cut among them, so that something at the same place on both sides is
masked by the old track up to it and by the new one from it on, not twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import cv2
import numpy as np

THUMB = (64, 36)  # width, height
_SHIFT = (8, 4)  # largest shift tried, in thumbnail pixels (x, y)
#: both must hold for a cut: the best shifted correlation below this ...
CUT_CORRELATION = 0.5
#: ... and the grey histograms this far apart (half their L1 distance, 0-1)
CUT_HISTOGRAM = 0.15
_BINS = 16


def thumbnail(image: np.ndarray) -> np.ndarray:
    """``image`` (BGR or grey) as a float32 grey thumbnail of :data:`THUMB`."""
    # every fourth pixel of a 4x thumbnail first: an area average over the whole frame costs 0.7 ms at 720p
    larger = cv2.resize(image, (4 * THUMB[0], 4 * THUMB[1]), interpolation=cv2.INTER_NEAREST)
    small = cv2.resize(larger, THUMB, interpolation=cv2.INTER_AREA)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    return small.astype(np.float32)


def shifted_correlation(before: np.ndarray, after: np.ndarray) -> float:
    """The best normalised correlation of ``after`` with the middle of ``before`` over the shifts tried."""
    sx, sy = _SHIFT
    middle = before[sy:-sy, sx:-sx]
    if float(middle.std()) < 1e-3 or float(after.std()) < 1e-3:  # a flat picture: no layout to compare
        return 1.0 if abs(float(middle.mean()) - float(after.mean())) < 8 else 0.0
    return float(cv2.matchTemplate(after, middle, cv2.TM_CCOEFF_NORMED).max())


def histogram_distance(before: np.ndarray, after: np.ndarray) -> float:
    """Half the L1 distance of the two thumbnails' grey histograms (0: the same tones, 1: disjoint)."""
    a = np.histogram(before, _BINS, (0, 256))[0] / before.size
    b = np.histogram(after, _BINS, (0, 256))[0] / after.size
    return float(0.5 * np.abs(a - b).sum())


#: a cut is placed between two frames held back when their thumbnails differ by at least this
#: many times as much as any other two consecutive ones do (Hamilton: a cut 28-31 grey levels on
#: average, the most within a shot 14); otherwise where it lies is not clear (a dissolve, a flash)
_LOCATE = 2.0


class CutDetector:
    """Whether each frame given (in order: the detection frames of one stream) follows a cut, and
    between which of the frames held back before it the cut lies."""

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None

    def check(self, image: np.ndarray, held: Sequence[np.ndarray] = ()) -> Cut | None:
        """Whether ``image`` shows another scene than the detection frame given before it (the first:
        never): None if not; else the :class:`Cut`, placed among ``held`` (the frames between the two,
        in order) when that is clear."""
        current = thumbnail(image)
        previous, self._previous = self._previous, current
        if previous is None:
            return None
        if not (histogram_distance(previous, current) > CUT_HISTOGRAM
                and shifted_correlation(previous, current) < CUT_CORRELATION):
            return None
        if not held:
            return Cut(0)
        thumbs = [previous, *(thumbnail(h) for h in held), current]
        steps = np.array([float(np.abs(b - a).mean()) for a, b in pairwise(thumbs)])
        k = int(steps.argmax())
        clear = bool((np.delete(steps, k) * _LOCATE <= steps[k]).all())
        return Cut(k if clear else None)


@dataclass(frozen=True)
class Cut:
    """A cut before a detection frame: ``first`` is the index, among the frames held back before it
    and the detection frame itself (in order), of the first frame of the new scene; None when the
    cut's place among them is not clear."""

    first: int | None
