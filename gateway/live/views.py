"""What a camera sees, in a few numbers: the fingerprint of a view, and whether two views differ.

A camera whose policy has privacy zones must keep looking where the zones were drawn: a zone is
a fixed polygon of the picture, so a camera re-aimed, covered or out of focus would have its
zones miss their window silently. :mod:`.moved` watches for that with these measures, taken on
released (redacted) frames, never raw ones:

``thumbnail``  the frame in grey at 64 x 36 (area average, whatever the frame's size or aspect),
               and the median of a few of them taken a second apart: people walking through
               are not part of the view, the median leaves them out;
``shift``      the translation that best aligns the current thumbnail with the reference (every
               shift of up to 8 x 5 thumbnail pixels, 12 % x 14 % of the frame, tried), refined
               to a fraction of a pixel, as a share of the frame's width and height: a re-aim;
``correlation``normalised cross-correlation of the two thumbnails at that best shift: the view
               itself changed (re-aimed further than the search, another scene, a cut);
``contrast``   the standard deviation of the current thumbnail over the reference's: a covered
               or blacked-out lens leaves a nearly uniform picture;
``sharpness``  the mean absolute Laplacian of a 320 x 180 grey copy, divided by its contrast,
               over the reference's: a defocused lens loses detail the 64 x 36 thumbnail cannot show.

Every measure leaves out the policy's zones (their pixels, and one thumbnail pixel around each):
a zone is masked at the same place of the picture whatever the camera sees, so counting it would
make a moved view look like the reference. Thresholds and what they were tuned on: docs/gateway.md
("A moved camera"), ``perf/eval_moved.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from redaction import Policy, zone_mask

from ..config import ViewCheck

#: thumbnail size (width, height): 2 304 pixels, enough for the layout of a scene, too few for a face
THUMB = (64, 36)
#: the sharpness copy's size: detail at this scale is what a defocused lens loses
SHARP = (320, 180)
#: largest shift searched, in thumbnail pixels (x, y): 12.5 % of the width, 14 % of the height
SEARCH = (8, 5)
#: thumbnails whose standard deviation is below this (grey levels) carry no structure to compare
FLAT = 2.0


@dataclass(frozen=True)
class ViewPrint:
    """One view: the median grey thumbnail of a few frames and their median sharpness."""

    grey: np.ndarray  # (36, 64) uint8
    sharpness: float  # mean |Laplacian| of the 320 x 180 copy over its standard deviation


@dataclass(frozen=True)
class Sample:
    """What one released frame contributes (computed off the release path)."""

    grey: np.ndarray  # (36, 64) uint8
    sharpness: float


@dataclass(frozen=True)
class Comparison:
    """The current view against the reference (see the module's docstring)."""

    shift: tuple[float, float]  # share of the frame's width, height
    correlation: float  # at the best shift
    contrast: float  # current over reference
    sharpness: float  # current over reference

    def as_dict(self) -> dict:
        return {"shift": [round(float(self.shift[0]), 4), round(float(self.shift[1]), 4)],
                "correlation": round(float(self.correlation), 3), "contrast": round(float(self.contrast), 3),
                "sharpness": round(float(self.sharpness), 3)}


def sample(image: np.ndarray) -> Sample:
    """A released frame's thumbnail and sharpness (a few hundred microseconds for 720p)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, SHARP, interpolation=cv2.INTER_AREA)
    thumb = cv2.resize(small, THUMB, interpolation=cv2.INTER_AREA)
    detail = float(np.abs(cv2.Laplacian(small, cv2.CV_32F)).mean())
    return Sample(thumb, detail / max(float(small.std()), FLAT))


def valid_mask(policy: Policy) -> np.ndarray:
    """The thumbnail pixels the measures use: outside every zone of ``policy``, by one pixel."""
    covered = np.zeros((THUMB[1], THUMB[0]), np.uint8)
    for zone in policy.zones.values():
        x, y, mask = zone_mask(zone, THUMB[1], THUMB[0])
        covered[y : y + mask.shape[0], x : x + mask.shape[1]] |= mask
        # a zone smaller than a thumbnail pixel centre still blends into its neighbours
        xs, ys = zip(*zone.polygon)
        x0, x1 = int(min(xs) * THUMB[0]), int(np.ceil(max(xs) * THUMB[0]))
        y0, y1 = int(min(ys) * THUMB[1]), int(np.ceil(max(ys) * THUMB[1]))
        if mask.size == 0:
            covered[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)] = 1
    covered = cv2.dilate(covered, np.ones((3, 3), np.uint8))
    return covered == 0


def view_print(samples: list[Sample]) -> ViewPrint:
    """The view a few samples show: their median thumbnail (passers-by left out) and sharpness."""
    if not samples:
        raise ValueError("a view needs at least one sample")
    grey = np.median(np.stack([s.grey for s in samples]), axis=0).astype(np.uint8)
    return ViewPrint(grey, float(np.median([s.sharpness for s in samples])))


def _scores(reference: np.ndarray, current: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Correlation at every shift of the search window over the ``valid`` pixels (of both views);
    ``scores[dy + SY, dx + SX]`` for a reference pixel (x, y) seen at (x + dx, y + dy) in the current
    view; -1 where less than a quarter of the valid pixels overlap.

    Six sums per shift (overlap, sums, squares, cross products), each one ``cv2.matchTemplate``
    over the current view padded with invalid pixels: the whole window costs well under a millisecond."""
    sx, sy = SEARCH
    m = valid.astype(np.float32)
    r = (reference.astype(np.float32) - float(reference[valid].mean())) / 255.0 * m
    c = (current.astype(np.float32) - float(current[valid].mean())) / 255.0 * m

    def pad(a: np.ndarray) -> np.ndarray:
        return cv2.copyMakeBorder(a, sy, sy, sx, sx, cv2.BORDER_CONSTANT, value=0)

    def corr(image: np.ndarray, template: np.ndarray) -> np.ndarray:
        return cv2.matchTemplate(pad(image), template, cv2.TM_CCORR).astype(np.float64)

    n, sr, sc = corr(m, m), corr(m, r), corr(c, m)
    srr, scc, src = corr(m, r * r), corr(c * c, m), corr(c, r)
    with np.errstate(divide="ignore", invalid="ignore"):
        covariance = src - sr * sc / n
        spread = np.sqrt(np.maximum(srr - sr * sr / n, 0) * np.maximum(scc - sc * sc / n, 0))
        scores = np.where(spread > 1e-9, covariance / spread, 0.0)
    scores[n < max(0.25 * float(m.sum()), 16)] = -1.0
    return np.clip(scores, -1.0, 1.0)


def _best(scores: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, correlation) at the peak of ``scores``, refined to a fraction of a pixel."""
    iy, ix = np.unravel_index(int(np.argmax(scores)), scores.shape)
    dx, dy = _refine(scores, int(iy), int(ix))
    return dx, dy, float(scores[iy, ix])


def _refine(scores: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    """The peak at (ix, iy) refined to a fraction of a pixel (a parabola through its neighbours)."""

    def offset(left: float, mid: float, right: float) -> float:
        curve = left - 2 * mid + right
        return 0.0 if curve >= 0 or left < -0.5 or right < -0.5 else 0.5 * (left - right) / curve

    dx = offset(scores[iy, ix - 1], scores[iy, ix], scores[iy, ix + 1]) if 0 < ix < scores.shape[1] - 1 else 0.0
    dy = offset(scores[iy - 1, ix], scores[iy, ix], scores[iy + 1, ix]) if 0 < iy < scores.shape[0] - 1 else 0.0
    return ix - SEARCH[0] + max(-0.5, min(0.5, dx)), iy - SEARCH[1] + max(-0.5, min(0.5, dy))


def compare(reference: ViewPrint, current: ViewPrint, valid: np.ndarray) -> Comparison:
    """How ``current`` differs from ``reference``, over the thumbnail pixels ``valid`` marks."""
    if not valid.any():
        return Comparison((0.0, 0.0), 1.0, 1.0, 1.0)  # zones cover everything: nothing left to compare
    before, now = float(reference.grey[valid].std()), float(current.grey[valid].std())
    contrast = now / max(before, FLAT)
    sharpness = current.sharpness / reference.sharpness if reference.sharpness > 0 else 1.0
    if before < FLAT or now < FLAT:
        # a flat picture has no layout to align: only contrast speaks (a flat reference: nothing does)
        return Comparison((0.0, 0.0), 1.0 if before < FLAT else 0.0, contrast if before >= FLAT else 1.0, sharpness)
    dx, dy, correlation = _best(_scores(reference.grey, current.grey, valid))
    return Comparison((float(dx) / THUMB[0], float(dy) / THUMB[1]), correlation, contrast, sharpness)


def difference(c: Comparison, limits: ViewCheck) -> tuple[str, str] | None:
    """``(kind, words)`` if the comparison shows another view, else None. Kinds, checked in this
    order: ``covered``, ``defocused``, ``changed``, ``shifted``."""
    if c.contrast < limits.min_contrast:
        return "covered", f"covered or dark: contrast {c.contrast:.0%} of the reference's"
    if c.sharpness < limits.min_sharpness:
        return "defocused", f"out of focus: sharpness {c.sharpness:.0%} of the reference's"
    if c.correlation < limits.min_correlation:
        return "changed", f"the view changed: correlation {c.correlation:.2f} with the reference"
    if max(abs(c.shift[0]), abs(c.shift[1])) > limits.max_shift:
        return "shifted", (f"re-aimed: the picture moved by {abs(c.shift[0]):.0%} of its width and "
                           f"{abs(c.shift[1]):.0%} of its height")
    return None
