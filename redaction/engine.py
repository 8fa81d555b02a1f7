"""Detect → track → decide: what to redact on every frame of a stream or on one image.

:class:`Analyzer` runs the policy's detectors and turns detections into final regions
(margin, shape, frame clipping). :class:`StreamRedactor` holds frames back between detection
frames (``detection.stride``) so the tracker can interpolate and back-fill before a frame is
released; with ``detection.motion`` it detects where the picture changed and keeps the masks
of what did not (:mod:`redaction.gating`). Pixels are changed in :mod:`redaction.redact`.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import numpy as np

from .cuts import CutDetector
from .detector import Detector, Parts, combined, default_threads
from .gating import GatedDetection, Plan
from .policy import WORKERS_GATED, Policy
from .regions import Region, merge_duplicates, overlap_of_smaller
from .tracker import Tracker

T = TypeVar("T")


def _parts(detector: Detector, image: np.ndarray, boxes: list[tuple[int, int, int, int]] | None = None,
           sweep: bool = False, heights: tuple[float, float] | None = None) -> Parts:
    """:meth:`Detector.parts`, of duck-typed detectors too (one call each)."""
    parts = getattr(detector, "parts", None) or partial(Detector.parts, detector)
    return parts(image, boxes, sweep, heights)


def detector_settings(policy: Policy) -> tuple:
    """What :func:`build_detectors` makes of ``policy``: two policies with equal settings can share
    detectors (a policy switch that changes only zones, methods or grants loads no model)."""
    enabled = policy.classes.enabled()
    detection = policy.detection
    return (tuple(sorted((name, cls.threshold) for name, cls in enabled.items())), detection.face, detection.plate,
            detection.threads, detection.workers)


def detection_threads(policy: Policy, cores: int | None = None) -> tuple[int | None, bool]:
    """onnxruntime threads per model for a stream that may use ``cores`` (None: every core, each
    model in turn), and whether the models of a detection frame run side by side.

    A stream with a core per model or more (a camera alone on two cores, faces and plates) gives
    each model its share of them and runs the models side by side, each on its own thread,
    rather than one after the other on every core: onnxruntime's threads on one small crop wait
    for each other. The live walkway at 720p (20 s, 100 detection frames, the same regions):
    23.2-24.6 s of CPU instead of 28.5-31.9 s in the same wall time. Fewer cores than models (two cameras on two
    cores: a core each) keep one thread per model, in turn, as do ``detection.threads`` and
    ``detection.workers`` above 1 (each worker has its share of the cores)."""
    detection = policy.detection
    models = len(policy.classes.enabled())  # one detector per enabled class
    if detection.threads is None and cores is not None and detection.workers == 1 and 1 < models <= cores:
        return cores // models, True
    if detection.threads is None and (cores is not None or detection.workers > 1):
        return max(1, (cores or default_threads()) // detection.workers), False
    return detection.threads, False


def build_detectors(policy: Policy, cores: int | None = None) -> dict[str, Detector]:
    """One warmed detector per enabled class, configured from the policy. ``cores``: the cores this
    stream may use (a gateway with several cameras gives each its share; default: all of them),
    shared out among the policy's workers or models (:func:`detection_threads`);
    ``detection.threads`` overrides."""
    detectors: dict[str, Detector] = {}
    enabled = policy.classes.enabled()
    threads, _ = detection_threads(policy, cores)
    if "face" in enabled:
        from .faces import CenterFaceDetector

        face = policy.detection.face
        detectors["face"] = CenterFaceDetector(
            threshold=enabled["face"].threshold,
            scales=face.scales,
            tile=face.tile,
            max_side=face.max_side,
            threads=threads,
            precision=face.precision,
            roi_scale=face.roi_scale,
        )
    if "plate" in enabled:
        from .plates import PlateDetector

        detectors["plate"] = PlateDetector(
            threshold=enabled["plate"].threshold,
            input_side=policy.detection.plate.input_side,
            coarse_side=policy.detection.plate.coarse_side,
            threads=threads,
            roi_scale=policy.detection.plate.roi_scale,
        )
    return detectors


class Analyzer:
    """Runs the detectors a policy asks for and finishes their regions for redaction."""

    def __init__(self, policy: Policy, detectors: dict[str, Detector] | None = None, cores: int | None = None,
                 side_by_side: bool = False) -> None:
        """``cores``: see :func:`build_detectors`. With ``detectors`` (built for another analyzer),
        ``cores`` is ignored and ``side_by_side`` says whether they were built to run side by side
        (:func:`detection_threads`)."""
        self.policy = policy
        if detectors is None:
            self.detectors = build_detectors(policy, cores)
            self.side_by_side = detection_threads(policy, cores)[1]
        else:
            self.detectors, self.side_by_side = detectors, side_by_side
        self._side: ThreadPoolExecutor | None = None  # the threads of the models after the first, side by side
        self._classes = policy.classes.enabled()
        missing = set(self._classes) - {c for d in self.detectors.values() for c in d.classes}
        if missing:
            raise ValueError(f"no detector for enabled classes: {sorted(missing)}")

    @property
    def classes(self) -> tuple[str, ...]:
        """The enabled classes."""
        return tuple(self._classes)

    def together(self, looks: list[Callable[[], T]]) -> list[T]:
        """The results of ``looks`` (model calls), in their order: one after the other, or, when the
        models were given a core each (:attr:`side_by_side`), on as many threads as there are models
        (the calling thread one of them), each taking the next look not yet taken as soon as it is
        free. A thread is not tied to a model: when one class has more to read than the other
        (plates over a moving camera's whole frame, 109 ms of one core a detection, against the
        faces' 73), the thread the faces are done with reads the plates' other looks. Give the
        looks largest first. Never two detections of one stream at once: after a look fails, no
        further look starts, and the call raises once those running are done."""
        helpers = min(len(self.detectors), len(looks)) - 1  # threads besides the calling one
        if not self.side_by_side or helpers < 1:
            return [look() for look in looks]
        if self._side is None:  # its threads are named after the stream's (a camera's analysis)
            self._side = ThreadPoolExecutor(len(self.detectors) - 1,
                                            thread_name_prefix=f"{threading.current_thread().name}-side")
        results: list[Any] = [None] * len(looks)
        failures: list[BaseException] = []
        taken = iter(range(len(looks)))
        lock = threading.Lock()

        def drain() -> None:
            while True:
                with lock:
                    index = None if failures else next(taken, None)
                if index is None:
                    return
                try:
                    results[index] = looks[index]()
                except BaseException as error:  # noqa: BLE001 - raised again by the calling thread
                    with lock:
                        failures.append(error)
                    return

        futures = [self._side.submit(drain) for _ in range(helpers)]
        try:
            drain()
        finally:
            wait(futures)
        if failures:
            raise failures[0]
        return results

    def detect(self, image: np.ndarray) -> list[Region]:
        """Raw detections (no margin) of every enabled class above its threshold."""
        found = self.run_parts([_parts(detector, image) for detector in self.detectors.values()])
        return self._kept(region for regions in found for region in regions)

    def detect_boxes(self, image: np.ndarray, boxes: list[tuple[int, int, int, int]], sweep: bool = False,
                     classes: tuple[str, ...] | None = None, heights: tuple[float, float] | None = None) -> list[Region]:
        """Raw detections inside ``boxes`` (see :meth:`Detector.detect_boxes`), of ``classes`` (default: all)."""
        return self.box_parts(image, boxes, sweep, classes, heights).run()

    def box_parts(self, image: np.ndarray, boxes: list[tuple[int, int, int, int]], sweep: bool = False,
                  classes: tuple[str, ...] | None = None, heights: tuple[float, float] | None = None) -> Parts:
        """:meth:`detect_boxes` cut into model calls (:meth:`Detector.parts`), for :meth:`run_parts`."""
        wanted = self.classes if classes is None else classes
        pieces = [_parts(detector, image, boxes, sweep, heights) for detector in self.detectors.values()
                  if set(detector.classes) & set(wanted)]

        def combine(results: list) -> list[Region]:
            return self._kept(r for regions in combined(pieces, results) for r in regions if r.cls in wanted)

        return Parts([call for piece in pieces for call in piece.calls], combine)

    def run_parts(self, looks: list[Parts]) -> list[list[Region]]:
        """The regions of each of ``looks``: their model calls all shared out by :meth:`together`,
        the largest first, so that the threads of a detection share out the crops of one large look
        too (the faces in a walkway's changed regions, 95 ms of a detection's 130, took one thread
        while the other had done the rest)."""
        calls = [call for look in looks for call in look.calls]
        order = sorted(range(len(calls)), key=lambda i: -calls[i][1])  # stable: equal sizes keep their order
        results: list = [None] * len(calls)
        for i, result in zip(order, self.together([calls[i][0] for i in order]), strict=True):
            results[i] = result
        return combined(looks, results)

    def roi_finest(self, cls: str, width: int, height: int) -> bool:
        """See :meth:`Detector.roi_finest`, for the detector of ``cls``."""
        return self._detector(cls).roi_finest(width, height)

    def _detector(self, cls: str) -> Detector:
        return next(d for d in self.detectors.values() if cls in d.classes)

    def _kept(self, regions) -> list[Region]:
        found: list[Region] = []
        for region in regions:
            cls = self._classes.get(region.cls)
            if cls is not None and region.score >= cls.threshold:
                found.append(replace(region, shape=cls.shape))
        return merge_duplicates(found)  # one object found by two passes is one region

    def finish(self, regions: list[Region], width: int, height: int) -> list[Region]:
        """Final regions: margin added, rounded outwards to whole pixels, clipped to the frame.

        A region cut by the frame border becomes a box: an ellipse inscribed in the clipped
        part would leave the visible part of the face partly unmasked.
        """
        out = []
        for region in regions:
            grown = region.with_margin(self._classes[region.cls].margin)
            x0, y0 = math.floor(grown.x), math.floor(grown.y)
            x1, y1 = math.ceil(grown.x + grown.w), math.ceil(grown.y + grown.h)
            inside = x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
            if x1 <= x0 or y1 <= y0:
                continue
            shape = grown.shape if inside else "box"
            out.append(replace(grown, x=x0, y=y0, w=x1 - x0, h=y1 - y0, shape=shape))
        return out

    def regions(self, image: np.ndarray) -> list[Region]:
        """Final regions for a single image (no tracking)."""
        height, width = image.shape[:2]
        return self.finish(self.detect(image), width, height)


@dataclass
class Frame:
    """A decoded frame on its way through the engine; ``payload`` travels untouched."""

    index: int
    time: float  # seconds from the start of the stream
    image: np.ndarray
    pts: float | None = None
    payload: Any = None


@dataclass
class Decision:
    """A frame released with the final regions to redact on it."""

    frame: Frame
    regions: list[Region] = field(default_factory=list)


class StreamRedactor:
    """Decides the regions of every frame of one stream, in order.

    Detection runs on every ``stride``-th frame (``detection.stride``, or ``detection.interval``
    seconds at the stream's frame rate); frames between are held back until the next
    detection frame so the tracker can interpolate and back-fill them. ``flush`` runs a last
    detection on the final held-back frame so the tail of a stream is covered too.

    With ``workers`` > 1, up to that many detection frames are analysed at once in a thread
    pool (onnxruntime runs concurrent calls on one session; two single-threaded inferences
    use two cores better than one two-threaded inference). Results are still taken, and the
    tracker updated, strictly in frame order; ``push`` blocks once ``workers`` detections are
    in flight, so memory stays bounded.

    A stream that knows nothing yet looks twice before it releases: its first two detection frames
    are read whole, at full quality (the second besides its gated pass, which alone the tracks
    follow), and the frames decided by the first look wait for the second, whose regions they get
    too. One look misses a face now and then; with motion gating, a face that one
    look missed and that does not move would stay bare until the sweep reached it, and a
    stream that starts has no track to carry it through the miss (one start in ninety on the
    tests' camera clip: three raw frames).
    """

    def __init__(
        self,
        analyzer: Analyzer,
        stride: int | None = None,
        persist: float | None = None,
        workers: int | None = None,
        by_index: bool = False,
        rate: float | None = None,
    ) -> None:
        """``stride``: default the policy's, at ``rate`` frames per second (``detection.interval``);
        ``by_index``: detect on the frames whose index is a multiple of the stride (a live
        stream that may lose frames keeps its cadence), instead of on every stride-th frame
        pushed; the first frame pushed must then be one of them."""
        detection = analyzer.policy.detection
        self.by_index = by_index
        self.analyzer = analyzer
        self.stride = stride if stride is not None else detection.stride_at(rate)
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        self.workers = workers if workers is not None else detection.workers
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.workers > 1 and detection.motion.enabled:
            raise ValueError(WORKERS_GATED)
        self.tracker = Tracker(persist if persist is not None else detection.persist, detection.link)
        self._gating = GatedDetection(analyzer, detection.motion, detection.sweep) if detection.motion.enabled else None
        self._held: list[Frame] = []
        self._cuts = CutDetector()  # no track goes on across a scene cut
        #: (frames, plan, detection, which look, scene cut before them: None, or the time of its first frame,
        #: -inf where that is not clear)
        self._pending: deque[tuple[list[Frame], Plan | None, Future, int, float | None]] = deque()
        self._pool = ThreadPoolExecutor(self.workers, "detect") if self.workers > 1 else None
        self._count = 0
        self._looks = 0  # detection frames submitted since the stream knew nothing (counts to 2)
        self._first: list[Decision] | None = None  # the first look's frames, waiting for the second

    @property
    def held(self) -> int:
        """Frames taken but not yet released."""
        return len(self._held) + sum(len(group) for group, *_ in self._pending) + len(self._first or ())

    @property
    def settled(self) -> bool:
        """Past the stream's first two looks (the second reads the whole frame twice): from here on a
        detection frame costs what the next ones will."""
        return self._looks > 2

    def push(self, frame: Frame) -> list[Decision]:
        """Take one frame; return the frames whose regions are now decided, in order."""
        detect_now = (frame.index if self.by_index else self._count) % self.stride == 0
        if self._count == 0 and not detect_now:
            raise ValueError(f"frame {frame.index}: a stream starts with a detection frame (index divisible by {self.stride})")
        self._count += 1
        if not detect_now:
            self._held.append(frame)
            return self._collect(wait=False)
        self._submit(frame)
        return self._collect(wait=True)

    def flush(self) -> list[Decision]:
        """Decide every frame still held (end of stream)."""
        if self._held:
            self._submit(self._held.pop())
        out = self._collect(wait=True, everything=True)
        if self._first is not None:  # the stream ended before a second look: what the first found
            out, self._first = self._first + out, None
        return out

    def skip(self) -> None:
        """The next detection frame will not come (it was lost): give up the frames held for it.

        They are never released (the caller blanks them). The tracks and the motion reference
        stay: the next detection frame's plan looks at everything that changed since the last
        one analysed, and what it does not look at keeps its mask. Frames of the first look still
        waiting for the second keep waiting (the second is the next look that is not lost)."""
        self._held = []

    def close(self) -> None:
        """Stop the detection threads (frames still pending are dropped, never released)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, frame: Frame) -> None:
        group = [*self._held, frame]
        self._held = []
        plan = (self._gating.plan(frame.image, frame.time, self.tracker.tracks(current=True))
                if self._gating is not None else None)  # in frame order
        found = self._cuts.check(frame.image, [f.image for f in group[:-1]])
        cut = None if found is None else -math.inf if found.first is None else group[found.first].time
        self._looks += 1
        if plan is None or plan.whole:
            work, args = self.analyzer.detect, (frame.image,)
        elif self._looks == 2:  # the second look also reads the whole frame (for the masks, not the tracks)
            work, args = self._both, (frame.image, plan)
        else:
            work, args = self._gating.run, (frame.image, plan)
        if self._pool is None:
            future: Future = Future()
            try:
                future.set_result(work(*args))
            except Exception as exc:  # re-raised, in order, by _collect
                future.set_exception(exc)
        else:
            future = self._pool.submit(work, *args)
        self._pending.append((group, plan, future, self._looks, cut))

    def _both(self, image: np.ndarray, plan: Plan) -> tuple[list[Region], list[Region]]:
        return self._gating.run(image, plan), self.analyzer.detect(image)

    def _collect(self, wait: bool, everything: bool = False) -> list[Decision]:
        """Release groups whose detection is done; with ``wait``, block while too many are in flight."""
        out: list[Decision] = []
        while self._pending:
            group, plan, future, look, cut = self._pending[0]
            must = everything or (wait and len(self._pending) >= self.workers)
            if not (future.done() or must):
                break
            try:
                detections = future.result()
            except Exception:
                if out:  # release what is decided; the failure surfaces on the next call
                    return out
                raise
            self._pending.popleft()
            out.extend(self._decide(group, plan, detections, look, cut))
        return out

    def _decide(self, group: list[Frame], plan: Plan | None, detections, look: int,
                cut: float | None) -> list[Decision]:
        whole: list[Region] = []  # the second look's whole-frame pass (when it is not whole anyway)
        if isinstance(detections, tuple):
            detections, whole = detections
        if plan is not None and not plan.whole:  # what was not looked at again keeps its mask
            # the plan's passes (changed areas, sweep tile, known regions again) each found their
            # own boxes: one object seen by two of them is one region
            detections = merge_duplicates(detections)
            detections = merge_duplicates(detections + self._gating.keep(self.tracker.tracks(current=True),
                                                                         detections, plan))
        step = self.tracker.update(group[-1].time, detections, cut is not None,
                                   None if cut is None or cut == -math.inf else cut)
        out = []
        for held in group:
            height, width = held.image.shape[:2]
            out.append(Decision(held, self.analyzer.finish(step.at(held.time), width, height)))
        if look == 1:  # the first look: its frames wait for the second
            self._first = out
            return []
        if look > 2 or (self._first is None and not whole):
            return out
        # the second look: what its whole-frame pass found (and what the first look's frames did not
        # have, what it tracked) was there a stride ago too, where a margin covers the motion; the
        # tracks follow its gated pass alone, as on every later look
        shape = out[-1].frame.image.shape
        height, width = shape[:2]
        found = self.analyzer.finish(whole, width, height)
        first, self._first = self._first or [], None
        return [_with(d, [*found, *out[-1].regions], shape) for d in first] + [_with(d, found, shape) for d in out]


def _with(decision: Decision, regions: list[Region], shape: tuple[int, ...]) -> Decision:
    """``decision`` with those of ``regions`` it does not hold already (a frame of the same size only);
    one that covers a region there only in part is merged with it into one region covering both."""
    if decision.frame.image.shape != shape:
        return decision
    added = [r for r in regions if not _covered(r, decision.regions)]
    return Decision(decision.frame, merge_duplicates(decision.regions + added) if added else decision.regions)


def _covered(region: Region, regions: list[Region]) -> bool:
    """Whether ``regions`` already hold ``region`` (one of its class covering most of the smaller)."""
    same = [r.box for r in regions if r.cls == region.cls]
    if not same:
        return False
    return bool((overlap_of_smaller(np.array([region.box], float), np.array(same, float)) > 0.5).any())
