"""Where a frame changed since the last analysed one: the boxes a live detection must look into.

Surveillance scenes are mostly still. :class:`MotionGate` compares each analysed frame with the
previous analysed frame at low resolution (grey, ``scale`` of the frame, lightly blurred so
sensor noise does not count), keeps the pixels whose difference exceeds ``threshold`` grey
levels, dilates them, and returns the bounding boxes of the changed components, scaled back to
the frame, padded by ``pad`` pixels and merged until no two overlap. Measured on a fixed camera
over a walkway at 720p (OpenCV's vtest): about 1.4 % of the pixels change between frames, the
padded boxes cover a median 11 % of the frame, at 1.4 ms per frame on one core. On a moving
camera nearly everything changes and the boxes cover the whole frame.

The first frame has no reference: everything changed (:meth:`MotionGate.changed` returns None).
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h in frame pixels

_BLUR = (5, 5)  # sensor noise and compression ringing do not count as change
_DILATE = 2  # iterations of a 3x3 dilation: nearby changed pixels join one component
_MIN_PIXELS = 3  # components smaller than this (in low-resolution pixels) are noise
#: a box whose pixels changed this much since a reference has moved under its mask (a slow pan or
#: zoom never changes enough between two detection frames to count as motion, but adds up)
_DRIFT = 0.2


class MotionGate:
    """Changed boxes of successive analysed frames of one stream (not thread-safe: one stream, in order)."""

    def __init__(self, scale: float = 0.25, threshold: int = 16, pad: int = 24) -> None:
        if not 0 < scale <= 1:
            raise ValueError(f"motion scale must be in (0, 1], got {scale}")
        if not 0 < threshold < 256:
            raise ValueError(f"motion threshold must be 1..255 grey levels, got {threshold}")
        if pad < 0:
            raise ValueError(f"motion pad must be >= 0 pixels, got {pad}")
        self.scale, self.threshold, self.pad = scale, threshold, pad
        self._reference: np.ndarray | None = None
        self._shape: tuple[int, int] | None = None
        #: the low-resolution grey of the frame before the last one given (None: none), and the
        #: last one's (what :meth:`patch` reads)
        self.previous: np.ndarray | None = None
        #: the low-resolution grey of the last frame given, not blurred (each pixel the mean of
        #: 1 / scale^2 frame pixels): what comparisons finer than the gate's own read
        self.sharp: np.ndarray | None = None

    def patch(self, grey: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """The low-resolution pixels of ``grey`` (:attr:`previous`, :attr:`current` or :attr:`sharp`)
        under a frame box (a view: writing to it writes to ``grey``)."""
        x, y, w, h = box
        x0, y0 = int(x * self.scale), int(y * self.scale)
        x1, y1 = max(x0 + 1, int(np.ceil((x + w) * self.scale))), max(y0 + 1, int(np.ceil((y + h) * self.scale)))
        return grey[y0:y1, x0:x1]

    def moved_since(self, seen: np.ndarray, box: Box, threshold: int) -> bool:
        """Whether any pixel of frame box ``box`` (:attr:`sharp`) differs from ``seen`` (an earlier
        :attr:`sharp`) by more than ``threshold`` grey levels."""
        return bool((cv2.absdiff(self.patch(self.sharp, box), self.patch(seen, box)) > threshold).any())

    def mark(self, seen: np.ndarray, boxes: list[Box]) -> None:
        """Take :attr:`sharp` into ``seen`` under frame ``boxes``: they were looked at."""
        for box in boxes:
            self.patch(seen, box)[...] = self.patch(self.sharp, box)

    @property
    def current(self) -> np.ndarray | None:
        """The low-resolution grey of the last frame given."""
        return self._reference

    def differs(self, before: np.ndarray, after: np.ndarray) -> bool:
        """Whether two patches of one box differ: a share of their pixels changed by more than the threshold."""
        if before.shape != after.shape or before.size == 0:
            return True
        return float((cv2.absdiff(before, after) > self.threshold).mean()) > _DRIFT

    def reset(self) -> None:
        """Forget the reference: the next frame counts as all changed."""
        self._reference = None

    def changed(self, image: np.ndarray) -> list[Box] | None:
        """The changed boxes of ``image`` (BGR) against the last frame given; None if there is none to
        compare with (the first frame, or one of another size): then everything changed."""
        height, width = image.shape[:2]
        small = cv2.resize(image, (max(1, round(width * self.scale)), max(1, round(height * self.scale))),
                           interpolation=cv2.INTER_AREA)
        self.sharp = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        grey = cv2.GaussianBlur(self.sharp, _BLUR, 0)
        reference, self._reference = self._reference, grey
        self.previous = reference
        shape, self._shape = self._shape, (height, width)
        if reference is None or shape != (height, width):
            return None
        mask = (cv2.absdiff(grey, reference) > self.threshold).astype(np.uint8)
        if not mask.any():
            return []
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=_DILATE)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        fx, fy = width / grey.shape[1], height / grey.shape[0]
        boxes = []
        for x, y, w, h, area in stats[1:count]:
            if area < _MIN_PIXELS:
                continue
            x0, y0 = max(0, int(x * fx) - self.pad), max(0, int(y * fy) - self.pad)
            x1, y1 = min(width, int(np.ceil((x + w) * fx)) + self.pad), min(height, int(np.ceil((y + h) * fy)) + self.pad)
            boxes.append((x0, y0, x1 - x0, y1 - y0))
        return merge(boxes)


def merge(boxes: list[Box]) -> list[Box]:
    """Overlapping boxes joined into their bounding boxes, repeatedly, until none overlap."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        out: list[Box] = []
        for box in boxes:
            for i, other in enumerate(out):
                if _overlap(box, other):
                    out[i] = _union(box, other)
                    merged = True
                    break
            else:
                out.append(box)
        boxes = out
    return sorted(boxes)


def area(boxes: list[Box]) -> int:
    """Pixels covered by non-overlapping boxes (what :func:`merge` returns)."""
    return sum(w * h for _, _, w, h in boxes)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _union(a: Box, b: Box) -> Box:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return (x0, y0, x1 - x0, y1 - y0)


def inside(box: tuple[float, float, float, float], boxes: list[Box]) -> float:
    """The share of ``box``'s area inside the union of ``boxes`` (which must not overlap)."""
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return 1.0
    covered = 0.0
    for bx, by, bw, bh in boxes:
        iw = min(x + w, bx + bw) - max(x, bx)
        ih = min(y + h, by + bh) - max(y, by)
        if iw > 0 and ih > 0:
            covered += iw * ih
    return min(1.0, covered / (w * h))
