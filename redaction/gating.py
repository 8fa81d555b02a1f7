"""Motion-gated detection: look where things changed, sweep the whole frame slowly, keep still masks.

On each detection frame of a live stream (``detection.motion`` enabled):

1. :class:`~redaction.motion.MotionGate` gives the boxes that changed since the previous
   detection frame. When there is no reference (the stream's first frame, a size change), the
   whole frame is detected at full quality instead (:meth:`Analyzer.detect`). When the changed
   boxes cover more than ``motion.max_area`` of the frame (a moving camera, a crowd, a cut,
   a lighting change), the changed box is the whole frame, and each class reads it at the
   cheaper of its two scales (faces at whole-frame scale, plates at ``roi_scale``): a
   full-quality pass five times a second would not keep up (about 0.6 s on a 720p frame).
2. The detectors run on the changed boxes only, at full resolution (faces at ``roi_scale``,
   upscaled, so that the small faces of a wide scene are found without upscaling the frame).
3. One slice of each class's **sweep** (a tile of the frame at whole-frame scale) runs too, so
   that every ``sweep.face`` / ``sweep.plate`` seconds the whole frame has been looked at:
   faces and parked cars that never move are found, however they got there. A tile none of
   whose pixels changed since the class last read it at that scale (in a whole-frame detection
   or an earlier slice) is not read again: the same pixels give the same answer. "Changed" here
   is far finer than the motion gate's test: any pixel of the unblurred quarter-resolution grey
   by more than 8 grey levels. Any change and the whole tile is read, not just the changed
   part: a detector's answer on a still sign or a faint face depends on the scene around it
   (reading only the changed parts lost signs beside the walkway's path, opencv_vtest live:
   confident text covered 79 -> 52 of 212, and 1.5 points of its low-score faces). A still 720p
   scene costs 3 ms of CPU a detection instead of 25; on the walkway, where people cross every
   tile within the sweep's period, the sweep reads what it read before. A class whose changed
   boxes are read at least as closely as its whole-frame scale (faces) counts their pixels as
   read: its sweep reads a tile again only for change outside them (walkway at 720p, 20 s: 27
   face tiles instead of 36).
4. **Still masks stay**: a track whose box is not (mostly) inside the changed boxes, so whose
   pixels have not changed, is carried on at its box as if detected again; it is released
   only when its region changed and the detection that then looked there found nothing.
   Where step 2 looks less closely than a whole-frame pass (plates: the fine pass upscales a
   720p frame 1.25x, a changed region is read at native size), a known region whose pixels
   changed is also looked at again at whole-frame scale, a crop of three times its size
   (:attr:`Plan.recheck`): a plate or sign is not released because someone walked over it.
   For such a class, a miss in a changed box is no evidence that the region is gone, so what
   decides is the region's own pixels, not the changed boxes (padded, merged with their
   neighbours) around it: while they are those it had when last found, it keeps its mask even
   if its looks miss it. Judged by the changed boxes, opencv_vtest's "Fire assembly point" sign
   beside the path was released each time someone walked by and a look missed it (offline:
   masked on 16 of the first 280 frames; 27 now). Faces are read more closely in a changed box
   than in the whole frame: a face not found there is taken as gone (keeping those too kept
   low-score false positives on bodies and walls: the walkway's face masks grew by half).
   "Its pixels stay the same" means the same as when a detection last found it, not merely
   little change since the previous detection frame: a slow pan or zoom moves a face out from
   under its mask a pixel at a time. A kept mask whose pixels drifted is looked at again (and
   its track follows the face, or is released if nothing is found), in a crop around it, even
   inside changed boxes that read its class as closely: the crop finds low-score faces the changed
   box does not (opencv_vtest offline without that look: low-score faces covered 0.883 -> 0.860,
   for 4 % of the detection's time).

Steps 1 and 3 (and choosing what to look at again) run in order on the stream's thread (:meth:`GatedDetection.plan`); step 2 and
the sweep slices may run on a worker (:meth:`GatedDetection.run`); step 4 is the tracker's
side (:func:`still`), in frame order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .detector import Parts
from .motion import Box, MotionGate, area, inside, merge
from .regions import Region, overlap_of_smaller

#: sweep tiles, in frame pixels (faces at native scale; plates' fine pass upscales these to
#: about 640x400, the tile a plate detector handles best), and their overlap: an object up to
#: that size is whole in one tile (at 720p the plate tiles overlap by 128 px across and 187 px down)
_SWEEP_TILES = {"face": ((640, 384), 64), "plate": ((512, 320), 128)}
#: how much larger than its nominal size a sweep tile may grow to save a row or column of tiles:
#: face tiles by a quarter (720p in four tiles, not nine). Plate tiles not at all: spread at full
#: size they overlap by more than their nominal 128 px (187 px down a 720p frame), and text wider
#: than that was found whole: in tiles grown to save a row, the sweep found 81 % less of the text
#: on opencv_Megamind (masked pixels, first 300 frames)
_TILE_SLACK = {"face": 1.25, "plate": 1.0}
#: a track at least this much inside the changed boxes was looked at again; less, and it is kept
_LOOKED_AT = 0.8
#: a detection covering this share of a kept track (or the track of it) is that track: not kept twice
_SAME = 0.3
#: a sweep tile is read again only if a pixel of its unblurred quarter-resolution grey (each the mean
#: of 16 frame pixels) moved by more than this many grey levels since its class last read it at
#: whole-frame scale: far finer than the motion gate's test (blurred, 16 levels), so what slips under
#: that (a small face arriving slowly, a parked car's plate in shade) is still read within the period
_SEEN_THRESHOLD = 8
#: a known region looked at again is sought from this factor smaller to this factor larger than it
#: was (a car coming closer, a crop that cut it): what decides which of a detector's passes run
_RESIZE = 1.5


@dataclass
class Plan:
    """What one detection frame looks at: the changed boxes (or the whole frame), sweep slices, and
    the known regions whose pixels changed, looked at again at whole-frame scale."""

    whole: bool  # no reference: the whole frame at full quality (Analyzer.detect)
    changed: list[Box]  # analysed boxes (the whole frame when ``whole`` or too much changed)
    sweep: dict[str, list[Box]] = field(default_factory=dict)  # class -> slices at whole-frame scale
    #: class -> known regions looked at again, at the finer of the class's two scales
    recheck: dict[str, list[Box]] = field(default_factory=dict)
    #: class -> (low, high) frame-pixel heights of the regions in ``recheck`` (see :data:`_RESIZE`)
    heights: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: classes whose changed boxes are read at whole-frame scale (too much changed, and that is
    #: the cheaper of their two scales)
    coarse: tuple[str, ...] = ()
    #: tracks whose pixels drifted since they were last found (looked at again, in ``recheck``)
    drifted: frozenset[int] = frozenset()
    #: the boxes whose pixels changed (``changed`` also holds the known regions they reach into);
    #: None: the same as ``changed``
    moved: list[Box] | None = None
    #: tracks of the classes looked at again (``recheck``) whose pixels are those they had when last
    #: found: kept, wherever the changed boxes are
    unchanged: frozenset[int] = frozenset()


def tiles(width: int, height: int, size: tuple[int, int], overlap: int, slack: float = 1.0) -> list[Box]:
    """The fewest tiles of ``size``, or up to ``slack`` times it on each side, that cover ``width`` x
    ``height`` with neighbours overlapping by at least ``overlap`` pixels (anything up to
    ``overlap`` pixels across is whole in one of them), spread evenly. Tiles of at most 640x384
    cover 1280x720 in nine tiles (2.4 times its pixels); grown to 672x392, four do (1.1 times)."""

    def spans(total: int, tile: int) -> list[tuple[int, int]]:
        if total <= tile * slack:
            return [(0, total)]
        count = math.ceil((total - overlap) / (tile * slack - overlap))
        length = max(tile, math.ceil((total - overlap) / count) + overlap)
        step = (total - length) / (count - 1)
        return [(round(i * step), length) for i in range(count)]

    return [(x, y, w, h) for y, h in spans(height, size[1]) for x, w in spans(width, size[0])]


class _Sweep:
    """One class's slow sweep: a round of tiles every ``period`` seconds, spread evenly over it
    (tile k of a round is due ``k * period / len(tiles)`` after the round starts), at most one
    per detection frame, so the sweep adds the same small cost to every detection frame instead
    of a burst. A round always finishes before the next starts."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._slices: list[Box] = []
        self._done = 0
        self._started: float | None = None

    def next(self, time: float, slices: list[Box]) -> list[Box]:
        if self._done >= len(self._slices) and (self._started is None or time - self._started >= self.period):
            self._started, self._slices, self._done = time, slices, 0
        due = min(len(self._slices), 1 + int((time - self._started) * len(self._slices) / self.period))
        if self._done >= due:
            return []
        self._done += 1
        return [self._slices[self._done - 1]]

    def restart(self, time: float) -> None:
        """The whole frame was just detected: this round is done."""
        self._started, self._done = time, len(self._slices)


class GatedDetection:
    """The plan of each detection frame of one stream (see the module docstring)."""

    def __init__(self, analyzer, motion, sweep) -> None:
        """``analyzer``: an :class:`~redaction.engine.Analyzer`; ``motion``, ``sweep``: the policy's
        ``detection.motion`` and ``detection.sweep``."""
        self.analyzer = analyzer
        self.max_area = motion.max_area
        self._gate = MotionGate(motion.scale, motion.threshold, motion.pad)
        self._sweeps = {cls: _Sweep(getattr(sweep, cls)) for cls in analyzer.classes}
        self._tiles: dict[str, list[Box]] = {}
        self._shape: tuple[int, int] | None = None
        #: classes whose changed boxes are looked into less closely than the whole frame: a known
        #: region of theirs that changed is looked at again at whole-frame scale (else a plate
        #: found by the sweep is released as soon as someone walks past it)
        self._recheck: set[str] = set()
        #: per track: its low-resolution pixels when a detection last found it (a still mask is
        #: kept while its pixels stay those, not merely while they change little between frames)
        self._found: dict[int, np.ndarray] = {}
        self._carried: set[int] = set()  # the tracks carried on unchanged at the last detection frame
        #: per class: the low-resolution grey (MotionGate.sharp) of each pixel when the class last
        #: read it at whole-frame scale: a sweep tile whose pixels are still those is not read again
        self._seen: dict[str, np.ndarray] = {}

    def plan(self, image: np.ndarray, time: float, tracks: list[Region] = ()) -> Plan:
        """What to look at on this detection frame (call in frame order); ``tracks``: the regions
        masked at the last detection frame."""
        height, width = image.shape[:2]
        if self._shape != (height, width):
            self._shape = (height, width)
            self._tiles = {cls: tiles(width, height, *_SWEEP_TILES[cls], _TILE_SLACK[cls]) for cls in self._sweeps}
            self._recheck = {cls for cls in self._sweeps if not self.analyzer.roi_finest(cls, width, height)}
        changed = self._gate.changed(image)
        if changed is None:
            for sweep in self._sweeps.values():
                sweep.restart(time)
            self._found.clear()
            self._seen = {cls: self._gate.sharp.copy() for cls in self._sweeps}
            return Plan(True, [(0, 0, width, height)])
        drifted = self._drifted(tracks)
        # a class its changed boxes read less closely than the whole frame: a miss there is no evidence
        unchanged = frozenset(t.track for t in tracks if t.cls in self._recheck and t.track in self._found) - drifted
        moved = changed
        # a known region a changed box reaches into is read whole: a crop that cuts a face in two
        # finds half a face, and the track would follow that half off the face
        pad = self._gate.pad
        touched = [_grown(t.box, pad, width, height) for t in tracks if _touches(t.box, moved)]
        changed = merge(moved + touched) if touched else moved
        coarse: tuple[str, ...] = ()
        if area(changed) > self.max_area * width * height:
            # a moving camera, a cut, a light switched on: every pixel is looked at, each class at
            # the cheaper of its two scales (a full-quality pass on every detection frame would
            # not keep up); a class read at whole-frame scale has had its sweep
            changed = moved = [(0, 0, width, height)]
            coarse = tuple(self._sweeps.keys() - self._recheck)
            for cls in coarse:
                self._sweeps[cls].restart(time)
        recheck: dict[str, list[Box]] = {}
        heights: dict[str, tuple[float, float]] = {}
        for track in tracks:
            if track.track in drifted or (track.cls in self._recheck and inside(track.box, moved) >= _LOOKED_AT):
                recheck.setdefault(track.cls, []).append(_around(track.box, width, height))
                low, high = heights.get(track.cls, (math.inf, 0.0))
                heights[track.cls] = (min(low, track.h / _RESIZE), max(high, track.h * _RESIZE))
        for cls in self._sweeps.keys() - self._recheck:  # read here at least as closely as by the sweep
            self._gate.mark(self._seen[cls], changed)
        sweep = {cls: [tile for tile in s.next(time, self._tiles[cls])
                       if self._gate.moved_since(self._seen[cls], tile, _SEEN_THRESHOLD)]
                 for cls, s in self._sweeps.items() if cls not in coarse}
        for cls, tiles_read in sweep.items():
            self._gate.mark(self._seen[cls], tiles_read)
        return Plan(False, changed, sweep, recheck={cls: merge(boxes) for cls, boxes in recheck.items()},
                    heights=heights, coarse=coarse, drifted=drifted, moved=moved, unchanged=unchanged)

    def _drifted(self, tracks: list[Region]) -> frozenset[int]:
        """The tracks whose pixels are no longer those they had when last found (call after the
        motion gate has taken this frame: its previous frame is the last detection frame)."""
        previous, current = self._gate.previous, self._gate.current
        found: dict[int, np.ndarray] = {}
        drifted = set()
        for track in tracks:
            if track.track is None:
                continue
            if track.track in self._carried and track.track in self._found:
                found[track.track] = self._found[track.track]  # carried on: keeps its reference
            else:
                found[track.track] = self._gate.patch(previous, track.box).copy()  # found there
            if self._gate.differs(found[track.track], self._gate.patch(current, track.box)):
                drifted.add(track.track)
        self._found = found
        return frozenset(drifted)

    def keep(self, tracks: list[Region], detections: list[Region], plan: Plan) -> list[Region]:
        """The tracks to carry on unchanged on this detection frame (:func:`still`), remembered so
        that their pixels keep being compared with those they had when last found."""
        kept = still(tracks, detections, plan.changed if plan.moved is None else plan.moved, plan.drifted,
                     plan.unchanged)
        self._carried = {t.track for t in kept if t.track is not None}
        return kept

    def run(self, image: np.ndarray, plan: Plan) -> list[Region]:
        """The raw detections of the plan (any thread). When the analyzer's models run side by side
        (:meth:`Analyzer.together`), its threads share the model calls of the plan's looks out, the
        largest first (:meth:`Analyzer.run_parts`); the regions come in the same order either way."""
        if plan.whole:
            return self.analyzer.detect(image)
        return [region for regions in self.analyzer.run_parts(self.looks(image, plan)) for region in regions]

    def looks(self, image: np.ndarray, plan: Plan) -> list[Parts]:
        """The plan's looks, as model calls, in the order their regions are given: the changed boxes
        of every class read closely, then those read coarsely, then the sweep slices, then the known
        regions looked at again (each class's at the finer of its two scales)."""
        analyzer = self.analyzer
        looks = []

        def look(cls: str, boxes: list[Box], sweep: bool, heights: tuple[float, float] | None = None) -> None:
            looks.append(analyzer.box_parts(image, boxes, sweep=sweep, classes=(cls,), heights=heights))

        for coarse in (False, True):
            for cls in analyzer.classes:
                if plan.changed and (cls in plan.coarse) == coarse:
                    look(cls, plan.changed, coarse)
        for cls, slices in plan.sweep.items():
            if slices and cls in analyzer.classes:
                look(cls, slices, True)
        for cls, boxes in plan.recheck.items():  # a track's class the analyzer no longer detects is not looked for
            if boxes and cls in analyzer.classes:
                look(cls, boxes, cls in self._recheck, plan.heights.get(cls))
        return looks


def _touches(box: tuple[float, float, float, float], boxes: list[Box]) -> bool:
    x, y, w, h = box
    return any(x < bx + bw and bx < x + w and y < by + bh and by < y + h for bx, by, bw, bh in boxes)


def _grown(box: tuple[float, float, float, float], pad: int, width: int, height: int) -> Box:
    """``box`` padded by ``pad`` pixels on every side, in whole pixels within the frame."""
    x, y, w, h = box
    x0, y0 = max(0, int(x) - pad), max(0, int(y) - pad)
    x1, y1 = min(width, int(np.ceil(x + w)) + pad), min(height, int(np.ceil(y + h)) + pad)
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))


def _around(box: tuple[float, float, float, float], width: int, height: int) -> Box:
    """``box`` grown by its own size on every side (it may have moved), within the frame. Not less:
    grown by half, the text detector lost plates and signs it had found (opencv_Megamind, 12 % of
    their masked pixels) and CenterFace a face on the frame's edge (short_hamilton_clip)."""
    x, y, w, h = box
    x0, y0 = max(0, int(x - w)), max(0, int(y - h))
    x1, y1 = min(width, int(np.ceil(x + 2 * w))), min(height, int(np.ceil(y + 2 * h)))
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))


def still(tracks: list[Region], detections: list[Region], looked_at: list[Box],
          drifted: frozenset[int] = frozenset(), unchanged: frozenset[int] = frozenset()) -> list[Region]:
    """The tracks to carry on unchanged: those whose pixels did not change and that this frame's
    detections did not find again. ``tracks``: those found or carried on at the previous detection
    frame (a track that was looked at and not found there stays released); ``drifted``: tracks
    looked at again because their pixels changed since they were found, never kept;
    ``unchanged``: tracks whose pixels are those they had when found, kept even where
    ``looked_at`` takes them in; any other track is kept when it is mostly outside ``looked_at``."""
    kept = [t for t in tracks if t.track not in drifted
            and (t.track in unchanged or inside(t.box, looked_at) < _LOOKED_AT)]
    if not kept or not detections:
        return kept
    a = np.array([t.box for t in kept], np.float64)
    b = np.array([d.box for d in detections], np.float64)
    # overlap as a share of the smaller box: a face that moved a little, or grew as it came
    # closer, is the same face (IoU would keep its old box as a second, stale mask)
    overlap = overlap_of_smaller(a, b)
    same_class = np.array([[t.cls == d.cls for d in detections] for t in kept])
    return [t for t, row, cls in zip(kept, overlap, same_class) if not (row[cls] > _SAME).any()]
