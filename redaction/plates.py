"""Licence plates: the PP-OCRv4 text detector (shipped inside ``rapidocr-onnxruntime``) on onnxruntime.

The network predicts, per pixel, the probability of lying in the shrunk core of a text line.
DB (differentiable binarization) post-processing turns that map into lines: binarise, take
the connected contours, score each by its mean probability, and expand ("unclip") the shrunk
core back to the whole line. A plate's characters form one such line; the plate box is the
line grown by the plate's border.

Two passes over each frame: a fine one (frame scaled up, 1600 px on its long side by default,
and sharpened) finds the small and blurred plates of dashcam and surveillance frames, but at
that scale it also takes large blurred structure (rows of windows, parked cars) for big text;
so it keeps only lines up to ``max_line`` input pixels tall, and a coarse pass (960 px), which
sees large text well and does not hallucinate it, supplies the lines from ``coarse_min_line``
up. Lines both passes find are joined like fragments of one line.

At the defaults, ``perf/_recall.py`` measures (margin 0; margin 0.05 in brackets):
``plates_openalpr_us`` recall 222/222, over-mask 1.55 % (1.96 %); ``plates_romania_dashcam``
recall 67/68, over-mask 1.47 % (1.90 %). The missed plate is a blurred night plate where the
network sees no text at 960, 1280 or 1600 px. Both passes cost about 1.3 s per 1280x720 frame
on one core, 0.8 s on two.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from functools import partial

import cv2
import numpy as np

from . import fusion
from .detector import Detector, Parts, check_frame, create_session
from .regions import Region

log = logging.getLogger(__name__)

_INPUT = "x"
# PP-OCR's detector was trained on BGR frames normalised with the ImageNet statistics, listed
# in RGB order but applied channel by channel to the BGR array. (rapidocr's config uses 0.5 /
# 0.5 instead; on the plate sets that loses plates the ImageNet statistics find.)
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
#: the network input is ``(x - _OFFSET) * _SCALE`` per channel of the 0..255 frame, float32 NCHW
_OFFSET = 255.0 * _MEAN
_SCALE = 1.0 / (255.0 * _STD)
_ALIGN = 32  # the network downsamples by 32: input sides must be multiples of it
_SHARPEN_SIGMA = 2.0  # unsharp-mask radius in input pixels
_DIRECTED = 1.5  # a line at least this many times as long as high has a reliable direction


@functools.cache
def det_model() -> bytes:
    """PP-OCRv4's detector as onnxruntime runs it fastest (:func:`redaction.fusion.fuse`).

    Built once, by ``python -m redaction.fusion``, into ``redaction/models/`` (building it imports
    onnx, a second of every start-up); built here instead, from the installed model, if that is
    not the one the shipped file was built from, or the shipped file is not the one built."""
    source = fusion.source_model()
    if hashlib.sha256(source).hexdigest() != fusion.FUSED_FROM:
        log.warning("rapidocr's text detector is not the one %s was built from: rewriting it", fusion.FUSED_MODEL.name)
    else:
        try:
            fused = fusion.FUSED_MODEL.read_bytes()
        except OSError:
            fused = b""
        if hashlib.sha256(fused).hexdigest() == fusion.FUSED_SHA256:
            return fused
        log.warning("%s is missing or damaged: rewriting rapidocr's text detector instead", fusion.FUSED_MODEL)
    return fusion.fuse(source)


def input_size(width: int, height: int, side: int) -> tuple[int, int]:
    """Network input ``(w, h)``: the frame scaled so its long side is ``side``, rounded to 32."""
    scale = side / max(width, height)
    w = max(_ALIGN, int(round(width * scale / _ALIGN)) * _ALIGN)
    h = max(_ALIGN, int(round(height * scale / _ALIGN)) * _ALIGN)
    return w, h


def _blob(frame: np.ndarray, size: tuple[int, int], sharpen: float) -> np.ndarray:
    """``(1, 3, h, w)`` float32 network input from a BGR frame, resized and normalised."""
    width, height = frame.shape[1], frame.shape[0]
    if (width, height) != size:
        shrink = size[0] < width or size[1] < height
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if sharpen > 0:
        blurred = cv2.GaussianBlur(frame, (0, 0), _SHARPEN_SIGMA)
        frame = cv2.addWeighted(frame, 1.0 + sharpen, blurred, -sharpen, 0.0)
    # (x / 255 - mean) / std, float32 NCHW, a channel at a time: 1.2 ms on a 960x544 input, where
    # cv2.dnn.blobFromImageWithParams took 10 ms for the same floats (a tenth of the network's time)
    out = np.empty((1, 3, frame.shape[0], frame.shape[1]), np.float32)
    for channel in range(3):
        plane = out[0, channel]
        np.subtract(frame[:, :, channel], _OFFSET[channel], out=plane, dtype=np.float32)
        plane *= _SCALE[channel]
    return out


def db_boxes(
    prob: np.ndarray,
    binarize: float,
    box_threshold: float,
    unclip_ratio: float,
    min_side: float = 3.0,
) -> np.ndarray:
    """Text lines from a DB probability map, as rotated rectangles in map pixels.

    Returns an ``(N, 7)`` float array ``cx, cy, w, h, angle, score, fill``. Each row stands for
    one connected region of ``prob > binarize`` whose mean probability inside its contour is
    at least ``box_threshold``: its min-area rectangle, expanded on every side by
    ``area * unclip_ratio / perimeter`` of that rectangle, with ``w >= h``; ``angle`` is the
    direction of the long side in degrees, in ``[-90, 90)`` with y pointing down; ``fill`` is
    the share of the rectangle (before expansion) that the region's pixels fill. Regions whose
    rectangle is thinner than ``min_side`` pixels before expansion are dropped.
    """
    if prob.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {prob.shape}")
    bitmap = (prob > binarize).astype(np.uint8)
    contours, _ = cv2.findContours(bitmap, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out: list[tuple[float, ...]] = []
    for contour in contours:
        (cx, cy), (w, h), angle = cv2.minAreaRect(contour)
        # The rectangle runs through pixel centres; the region reaches half a pixel further.
        w, h = w + 1.0, h + 1.0
        if min(w, h) < min_side:
            continue
        score, kernel = _contour_stats(prob, bitmap, contour)
        if score < box_threshold:
            continue
        fill = kernel / (w * h)
        # Offsetting a rectangle outwards by d (round joins, as DB's unclip does) gives a shape
        # whose min-area rectangle is the same rectangle grown by d on every side.
        d = w * h * unclip_ratio / (2.0 * (w + h))
        w, h = w + 2 * d, h + 2 * d
        if w < h:
            w, h, angle = h, w, angle + 90.0
        angle = (angle + 90.0) % 180.0 - 90.0
        out.append((cx, cy, w, h, angle, score, fill))
    return np.asarray(out, dtype=np.float64).reshape(-1, 7)


def _contour_stats(prob: np.ndarray, bitmap: np.ndarray, contour: np.ndarray) -> tuple[float, int]:
    """Mean probability inside the filled contour, and how many kernel pixels it holds.

    The outer contour also encloses any holes in the region; those are not kernel pixels.
    """
    x, y, w, h = cv2.boundingRect(contour)
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(mask, [contour - np.array([x, y], dtype=contour.dtype)], 1)
    kernel = int(np.count_nonzero(mask & bitmap[y : y + h, x : x + w]))
    return float(cv2.mean(prob[y : y + h, x : x + w], mask)[0]), kernel


def rect_bounds(rects: np.ndarray) -> np.ndarray:
    """Axis-aligned ``x, y, w, h`` bounds of ``cx, cy, w, h, angle`` rotated rectangles."""
    cx, cy, w, h, angle = (rects[:, i] for i in range(5))
    c, s = np.abs(np.cos(np.radians(angle))), np.abs(np.sin(np.radians(angle)))
    bw = w * c + h * s
    bh = w * s + h * c
    return np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1)


def merge_lines(boxes: np.ndarray, scores: np.ndarray, max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Join text boxes that continue one another along one line into their union.

    Two ``x, y, w, h`` boxes are on one line when their heights differ by at most a factor
    of two, they overlap vertically by at least half the smaller height, and the horizontal
    gap between them is at most ``max_gap`` times the larger height (boxes that overlap have
    a negative gap). Joining is transitive; a joined box keeps the highest score of its parts.
    """
    n = len(boxes)
    if n < 2:
        return boxes, scores
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    h = boxes[:, 3]
    hmin = np.minimum(h[:, None], h[None, :])
    hmax = np.maximum(h[:, None], h[None, :])
    overlap_y = np.minimum(y1[:, None], y1[None, :]) - np.maximum(y0[:, None], y0[None, :])
    gap_x = np.maximum(x0[:, None], x0[None, :]) - np.minimum(x1[:, None], x1[None, :])
    linked = (hmax <= 2 * hmin) & (overlap_y >= 0.5 * hmin) & (gap_x <= max_gap * hmax)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(linked, 1))):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    if len(groups) == n:
        return boxes, scores
    out_boxes = np.empty((len(groups), 4))
    out_scores = np.empty(len(groups))
    for k, members in enumerate(groups.values()):
        gx0, gy0 = x0[members].min(), y0[members].min()
        out_boxes[k] = (gx0, gy0, x1[members].max() - gx0, y1[members].max() - gy0)
        out_scores[k] = scores[members].max()
    return out_boxes, out_scores


class PlateDetector(Detector):
    """Licence plates as text lines, joined along the line and grown by the plate's border.

    ``threshold`` is the least mean text probability of a DB line; ``input_side`` the long
    side, in pixels, that frames are scaled to for the fine pass (a multiple of 32; larger
    finds smaller and blurrier plates at quadratic cost). Keyword-only tuning, defaults
    measured on the two plate sets:

    ``coarse_side``
        long side of the coarse pass, or None for the fine pass alone (which then keeps
        lines of every size);
    ``max_line`` / ``coarse_min_line``
        the tallest line, in input pixels, the fine pass reports and the shortest the coarse
        pass reports (the passes overlap so no size falls between them);
    ``sharpen``
        unsharp-mask amount applied at input size before inference (0 turns it off): it
        recovers motion-blurred night plates;
    ``binarize``
        probability above which a pixel belongs to a text kernel;
    ``unclip_ratio``
        DB's kernel expansion, ``distance = area * unclip_ratio / perimeter``;
    ``max_angle``
        lines tilted further than this many degrees from horizontal are not plates (only
        lines at least 1.5 times as long as high have a reliable direction);
    ``line_aspect``
        a single line longer than this many times its height is a sentence, not a plate
        (plate lines measure up to 5.1 on the EU plates of the data, 4.4 on the US ones);
    ``max_gap``
        fragments on one line closer than this many line heights are joined;
    ``grow``
        ``(pad, factor)`` from the text line to the plate around it: the width grows by
        ``pad`` line heights (a plate's border is as wide as its characters are tall,
        however long its text), the height by ``factor``.
    """

    classes = ("plate",)

    def __init__(
        self,
        threshold: float = 0.5,
        input_side: int = 1600,
        threads: int | None = None,
        *,
        coarse_side: int | None = 960,
        max_line: float = 108.0,
        coarse_min_line: float = 20.0,
        sharpen: float = 1.0,
        binarize: float = 0.3,
        unclip_ratio: float = 1.6,
        max_angle: float = 30.0,
        max_gap: float = 0.5,
        line_aspect: float = 7.0,
        grow: tuple[float, float] = (0.5, 1.8),
        roi_scale: float = 1.0,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"plate threshold must be in (0, 1), got {threshold}")
        if not 0.0 < binarize < 1.0:
            raise ValueError(f"plate binarize must be in (0, 1), got {binarize}")
        for name, side in (("input_side", input_side), ("coarse_side", coarse_side)):
            if side is not None and (side < _ALIGN or side % _ALIGN):
                raise ValueError(f"plate {name} must be a positive multiple of {_ALIGN}, got {side}")
        if grow[0] < 0.0 or grow[1] < 1.0:
            raise ValueError(f"plate grow must be (pad >= 0, factor >= 1), got {grow}")
        self.threshold = threshold
        self.input_side = input_side
        self.coarse_side = coarse_side
        self.max_line = max_line
        self.coarse_min_line = coarse_min_line
        self.sharpen = sharpen
        self.binarize = binarize
        self.unclip_ratio = unclip_ratio
        self.max_angle = max_angle
        self.max_gap = max_gap
        self.line_aspect = line_aspect
        self.grow = grow
        if roi_scale <= 0:
            raise ValueError(f"plate roi_scale must be positive, got {roi_scale}")
        self.roi_scale = roi_scale
        self._session = create_session(det_model(), threads)
        self._session.run(None, {_INPUT: np.zeros((1, 3, _ALIGN, _ALIGN), np.float32)})

    @property
    def sides(self) -> tuple[int, ...]:
        """Input long side of each pass, fine first."""
        return (self.input_side,) if self.coarse_side is None else (self.input_side, self.coarse_side)

    def detect(self, frame: np.ndarray) -> list[Region]:
        return self.parts(frame).run()

    def _ranges(self) -> list[tuple[float, float]]:
        """Text line heights (input pixels) each pass answers for: the fine pass the smaller lines."""
        return [(0.0, np.inf)] if len(self.sides) == 1 else [(0.0, self.max_line), (self.coarse_min_line, np.inf)]

    def roi_finest(self, width: int, height: int) -> bool:
        return self.roi_scale >= max(self.sides) / max(width, height)

    def detect_boxes(self, frame: np.ndarray, boxes: list[tuple[int, int, int, int]], sweep: bool = False,
                     heights: tuple[float, float] | None = None) -> list[Region]:
        """Plates inside ``boxes``, the lines of all crops merged. A sweep slice runs each pass at the
        scale it gives the whole frame (so line sizes mean what they mean there); a changed region
        runs one pass at ``roi_scale`` of native size, every line size kept: at native resolution a
        tile around a plate found 67 of the dashcam set's 68 plates, where the frame scaled to 960
        found 62, at 0.4 the cost (README). With ``heights`` (plates that tall sought again), a
        sweep-scale look skips the pass whose line sizes cannot be theirs: a small plate needs no
        coarse pass, and large text (or a pair of people taken for it, on the walkway) no fine pass,
        which on a crop three times its size costs about three quarters of both."""
        return self.parts(frame, boxes, sweep, heights).run()

    def parts(self, frame: np.ndarray, boxes: list[tuple[int, int, int, int]] | None = None, sweep: bool = False,
              heights: tuple[float, float] | None = None) -> Parts:
        """One call per box (the whole frame for :meth:`detect`) and pass; the lines of all of them
        joined into plates."""
        check_frame(frame)
        height, width = frame.shape[:2]
        if boxes is None:
            looks = [(0, 0, frame, side, lines) for side, lines in zip(self.sides, self._ranges())]
        else:
            passes = self._passes(max(width, height), sweep, heights)
            crops = [(x, y, frame[y : y + h, x : x + w]) for x, y, w, h in boxes]
            looks = [(x, y, crop, max(crop.shape[:2]) * scale, lines)
                     for x, y, crop in crops if crop.size for scale, lines in passes]
        return Parts([(partial(self._lines_in, crop, x, y, side, low, high),
                       float(np.prod(input_size(crop.shape[1], crop.shape[0], side))))
                      for x, y, crop, side, (low, high) in looks], self._joined)

    def _lines_in(self, crop: np.ndarray, x: int, y: int, side: float, low: float,
                  high: float) -> tuple[np.ndarray, np.ndarray]:
        """The text lines ``low``..``high`` map pixels tall in ``crop`` scaled to long side ``side``, in
        the pixels of the frame it was cut from at ``x, y``."""
        height, width = crop.shape[:2]
        size = input_size(width, height, side)
        prob = self._session.run(None, {_INPUT: _blob(crop, size, self.sharpen)})[0][0, 0]
        lines, scores = self._lines(prob, width, height, low, high)
        lines[:, 0] += x
        lines[:, 1] += y
        return lines, scores

    def _joined(self, found: list[tuple[np.ndarray, np.ndarray]]) -> list[Region]:
        if not found:
            return []
        return self._plates(np.concatenate([b for b, _ in found]), np.concatenate([s for _, s in found]))

    def _passes(self, long: int, sweep: bool, heights: tuple[float, float] | None) -> list[tuple[float, tuple[float, float]]]:
        """The passes :meth:`detect_boxes` runs on each box of a frame whose longer side is ``long``:
        (scale, the text line heights in map pixels it answers for)."""
        passes = (list(zip((side / long for side in self.sides), self._ranges())) if sweep
                  else [(self.roi_scale, (0.0, np.inf))])
        if sweep and heights is not None:
            low, high = (height / self.grow[1] for height in heights)  # text line heights in frame pixels
            # a pass answers for lines lo..hi map pixels tall, lo / scale..hi / scale in the frame
            passes = [(scale, (lo, hi)) for scale, (lo, hi) in passes
                      if lo / scale <= high and low <= hi / scale] or passes
        return passes

    def regions_from_maps(self, maps: list[np.ndarray], width: int, height: int) -> list[Region]:
        """Plates in a ``width`` x ``height`` frame from its probability maps, one per pass."""
        if len(maps) != len(self.sides):
            raise ValueError(f"expected {len(self.sides)} probability maps, got {len(maps)}")
        return self._joined([self._lines(prob, width, height, lo, hi) for prob, (lo, hi) in zip(maps, self._ranges())])

    def _plates(self, boxes: np.ndarray, scores: np.ndarray) -> list[Region]:
        """Plates around text lines: fragments of one line joined, then grown by the plate's border."""
        boxes, scores = merge_lines(boxes, scores, self.max_gap)
        pad, factor = self.grow
        ph = boxes[:, 3] * factor
        pw = boxes[:, 2] + boxes[:, 3] * pad
        px = boxes[:, 0] + (boxes[:, 2] - pw) / 2
        py = boxes[:, 1] + (boxes[:, 3] - ph) / 2
        return [
            Region("plate", float(x), float(y), float(w), float(h), float(s), "box")
            for x, y, w, h, s in zip(px, py, pw, ph, scores)
        ]

    def _lines(
        self, prob: np.ndarray, width: int, height: int, min_line: float, max_line: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Near-horizontal text lines ``min_line``..``max_line`` map pixels tall, as frame boxes."""
        rects = db_boxes(prob, self.binarize, self.threshold, self.unclip_ratio)
        directed = rects[:, 2] >= _DIRECTED * rects[:, 3]
        level = ~directed | (np.abs(rects[:, 4]) <= self.max_angle)
        sized = (rects[:, 3] >= min_line) & (rects[:, 3] <= max_line)
        short = rects[:, 2] <= self.line_aspect * rects[:, 3]
        rects = rects[level & sized & short]
        boxes = rect_bounds(rects)
        boxes[:, :2] += 0.5  # from pixel indices to pixel-edge coordinates, which scale linearly
        boxes[:, [0, 2]] *= width / prob.shape[1]
        boxes[:, [1, 3]] *= height / prob.shape[0]
        return boxes, rects[:, 5]
