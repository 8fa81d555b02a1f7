"""The unit of redaction: a box in pixel coordinates with its class, score, shape and track."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np

RegionClass = Literal["face", "plate"]
Shape = Literal["box", "ellipse"]
CLASSES: tuple[str, ...] = ("face", "plate")


@dataclass(frozen=True, slots=True)
class Region:
    """An axis-aligned box ``(x, y, w, h)`` in pixels, top-left origin, floats allowed."""

    cls: str
    x: float
    y: float
    w: float
    h: float
    score: float
    shape: Shape = "box"
    track: int | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)

    def with_margin(self, margin: float) -> Region:
        """Grow by ``margin`` times the width (height) on each side."""
        dx, dy = self.w * margin, self.h * margin
        return replace(self, x=self.x - dx, y=self.y - dy, w=self.w + 2 * dx, h=self.h + 2 * dy)

    def clipped(self, width: int, height: int) -> Region | None:
        """The integer box covering this region inside a ``width`` x ``height`` frame, or None.

        Coordinates are rounded outwards so the pixel box always covers the float box.
        """
        x0 = max(0, int(np.floor(self.x)))
        y0 = max(0, int(np.floor(self.y)))
        x1 = min(width, int(np.ceil(self.x + self.w)))
        y1 = min(height, int(np.ceil(self.y + self.h)))
        if x1 <= x0 or y1 <= y0:
            return None
        return replace(self, x=x0, y=y0, w=x1 - x0, h=y1 - y0)

    def to_json(self) -> dict:
        return {
            "class": self.cls,
            "box": [int(self.x), int(self.y), int(self.w), int(self.h)],
            "score": round(float(self.score), 4),
            "shape": self.shape,
            "track": self.track,
        }


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` arrays of ``x, y, w, h`` boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    ax0, ay0 = a[:, 0:1], a[:, 1:2]
    ax1, ay1 = ax0 + a[:, 2:3], ay0 + a[:, 3:4]
    bx0, by0 = b[:, 0], b[:, 1]
    bx1, by1 = bx0 + b[:, 2], by0 + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection of ``(N, 4)`` and ``(M, 4)`` ``x, y, w, h`` boxes over the smaller box's area."""
    iw = np.clip(np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
                 - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
                 - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    smaller = np.minimum(a[:, None, 2] * a[:, None, 3], b[None, :, 2] * b[None, :, 3])
    return iw * ih / np.maximum(smaller, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of ``x, y, w, h`` boxes; kept indices, best score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    keep = cv2.dnn.NMSBoxes(
        np.asarray(boxes, dtype=np.float64).tolist(),
        (scores - scores.min() + 1.0).tolist(),  # shifted: OpenCV wants scores above a threshold >= 0
        score_threshold=0.0,
        nms_threshold=float(iou_threshold),
    )
    return np.asarray(keep, dtype=np.int64).reshape(-1)


#: two boxes of one class cover the same object when their centres are at most this share of the
#: smaller box's side apart, plus :data:`SAME_JITTER` pixels (a detector's jitter is a few pixels
#: whatever the size: two boxes of an 8 px face found by two passes, or the face and its chin found
#: apart, overlap little, two of a 90 px face nearly wholly, so a 90 px face half behind another one
#: is a second face, not a duplicate of the first) ...
SAME_CENTRE = 0.4
SAME_JITTER = 6.0
#: ... and they overlap: by IoU above this, or by this share of the smaller box ...
SAME_IOU = 0.2
SAME_OVERLAP = 0.3
#: ... or, wherever their centres are, when this share of the smaller lies inside the larger (a part
#: found as a whole)
SAME_CONTAINED = 0.8


def same_object(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise: whether ``(N, 4)`` and ``(M, 4)`` ``x, y, w, h`` boxes (of one class) cover the same
    object: overlapping with centres close for their size, or one mostly inside the other.

    Measured on the detections of the bundled walkway clip (heads of 8-15 px, found as boxes of 5-20
    px, often twice: the face, and beside or under it a 6 px part of it), boxes 4-9 px apart overlapping
    by 30-65 % of the smaller were kept as two regions and two tracks by an overlap rule alone, and
    masked twice between detection frames; on the synthetic crossing of ``tests/identity_support.py``
    two 90 px faces, one a third behind the other, overlap by IoU 0.2 (a third of the smaller) with
    centres 55 px (0.64 of a side) apart. Two visible neighbouring faces overlap by less than a
    third of the smaller."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=bool)
    centre_a = a[:, None, :2] + a[:, None, 2:] / 2
    centre_b = b[None, :, :2] + b[None, :, 2:] / 2
    apart = np.linalg.norm(centre_a - centre_b, axis=2)
    smaller = np.minimum(a[:, None, 2:].max(axis=2), b[None, :, 2:].max(axis=2))
    close = apart <= SAME_CENTRE * smaller + SAME_JITTER
    inside = overlap_of_smaller(a, b)
    return (close & ((iou_matrix(a, b) > SAME_IOU) | (inside > SAME_OVERLAP))) | (inside > SAME_CONTAINED)


def merge_duplicates(regions: list[Region]) -> list[Region]:
    """Boxes of one class that cover the same object, merged into one region per object.

    Detections of one frame come from several passes (scales, tiles, the crops of changed
    areas, a sweep tile, masks carried on), each with its own non-maximum suppression, so one
    face can arrive as several boxes a few pixels apart: masked, sealed and tracked several
    times. Greedily, best score first, each box joins the first kept box it covers the same
    object as (:func:`same_object`), and the kept box grows to the union of its members, so the
    merged region covers everything each covered. Boxes only join a kept box, never each other
    through a chain, so two neighbouring faces stay two, and so does a face passing in front of
    another (their boxes overlap, their centres are apart). The merged region keeps the best box's
    class, score, shape and track.
    """
    if len(regions) < 2:
        return list(regions)
    out: list[Region] = []
    for cls in dict.fromkeys(r.cls for r in regions):
        own = sorted((r for r in regions if r.cls == cls), key=lambda r: -r.score)
        boxes = np.array([r.box for r in own], dtype=np.float64)
        same = same_object(boxes, boxes)
        x0, y0 = boxes[:, 0], boxes[:, 1]
        x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
        anchors: list[int] = []
        bounds: list[list[float]] = []
        for i in range(len(own)):
            for k, anchor in enumerate(anchors):
                if same[i, anchor]:
                    b = bounds[k]
                    b[0], b[1] = min(b[0], x0[i]), min(b[1], y0[i])
                    b[2], b[3] = max(b[2], x1[i]), max(b[3], y1[i])
                    break
            else:
                anchors.append(i)
                bounds.append([x0[i], y0[i], x1[i], y1[i]])
        for anchor, (bx0, by0, bx1, by1) in zip(anchors, bounds):
            out.append(replace(own[anchor], x=float(bx0), y=float(by0), w=float(bx1 - bx0), h=float(by1 - by0)))
    return out


def coverage_mask(regions: list[Region], width: int, height: int) -> np.ndarray:
    """Boolean ``(height, width)`` mask of the pixels the regions redact (ellipses honoured).

    Uses the same pixel rule as the kernels: a pixel is covered when its centre lies inside
    the box, or inside the ellipse inscribed in the box for ``shape == "ellipse"``.
    """
    mask = np.zeros((height, width), dtype=bool)
    for region in regions:
        clipped = region.clipped(width, height)
        if clipped is None:
            continue
        x0, y0, w, h = (int(v) for v in clipped.box)
        if region.shape != "ellipse":
            mask[y0 : y0 + h, x0 : x0 + w] = True
            continue
        cx = region.x + region.w / 2
        cy = region.y + region.h / 2
        xs = (np.arange(x0, x0 + w) + 0.5 - cx) / (region.w / 2)
        ys = (np.arange(y0, y0 + h) + 0.5 - cy) / (region.h / 2)
        mask[y0 : y0 + h, x0 : x0 + w] |= (ys[:, None] ** 2 + xs[None, :] ** 2) <= 1.0
    return mask
