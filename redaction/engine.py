"""Detect → track → decide: what to redact on every frame of a stream or on one image.

:class:`Analyzer` runs the policy's detectors and turns detections into final regions
(margin, shape, frame clipping). :class:`StreamRedactor` holds frames back between detection
frames (``detection.stride``) so the tracker can interpolate and back-fill before a frame is
released. Pixels are changed in :mod:`redaction.redact`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .detector import Detector
from .policy import Policy
from .regions import Region
from .tracker import Tracker


def build_detectors(policy: Policy) -> dict[str, Detector]:
    """One warmed detector per enabled class, configured from the policy."""
    detectors: dict[str, Detector] = {}
    enabled = policy.classes.enabled()
    threads = policy.detection.threads
    if "face" in enabled:
        from .faces import CenterFaceDetector

        face = policy.detection.face
        detectors["face"] = CenterFaceDetector(
            threshold=enabled["face"].threshold,
            scales=face.scales,
            tile=face.tile,
            max_side=face.max_side,
            threads=threads,
        )
    if "plate" in enabled:
        from .plates import PlateDetector

        detectors["plate"] = PlateDetector(
            threshold=enabled["plate"].threshold,
            input_side=policy.detection.plate.input_side,
            coarse_side=policy.detection.plate.coarse_side,
            threads=threads,
        )
    return detectors


class Analyzer:
    """Runs the detectors a policy asks for and finishes their regions for redaction."""

    def __init__(self, policy: Policy, detectors: dict[str, Detector] | None = None) -> None:
        self.policy = policy
        self.detectors = build_detectors(policy) if detectors is None else detectors
        self._classes = policy.classes.enabled()
        missing = set(self._classes) - {c for d in self.detectors.values() for c in d.classes}
        if missing:
            raise ValueError(f"no detector for enabled classes: {sorted(missing)}")

    def detect(self, image: np.ndarray) -> list[Region]:
        """Raw detections (no margin) of every enabled class above its threshold."""
        found: list[Region] = []
        for detector in self.detectors.values():
            for region in detector.detect(image):
                cls = self._classes.get(region.cls)
                if cls is not None and region.score >= cls.threshold:
                    found.append(replace(region, shape=cls.shape))
        return found

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

    Detection runs on every ``stride``-th frame; frames between are held back until the next
    detection frame so the tracker can interpolate and back-fill them. ``flush`` runs a last
    detection on the final held-back frame so the tail of a stream is covered too.
    """

    def __init__(self, analyzer: Analyzer, stride: int | None = None, persist: float | None = None) -> None:
        detection = analyzer.policy.detection
        self.analyzer = analyzer
        self.stride = stride if stride is not None else detection.stride
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        self.tracker = Tracker(persist if persist is not None else detection.persist)
        self._held: list[Frame] = []
        self._count = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def push(self, frame: Frame) -> list[Decision]:
        """Take one frame; return the frames whose regions are now decided, in order."""
        detect_now = self._count % self.stride == 0
        self._count += 1
        if not detect_now:
            self._held.append(frame)
            return []
        return self._decide(frame)

    def flush(self) -> list[Decision]:
        """Decide every held-back frame (end of stream)."""
        if not self._held:
            return []
        last = self._held.pop()
        return self._decide(last)

    def _decide(self, frame: Frame) -> list[Decision]:
        step = self.tracker.update(frame.time, self.analyzer.detect(frame.image))
        out = []
        for held in [*self._held, frame]:
            height, width = held.image.shape[:2]
            out.append(Decision(held, self.analyzer.finish(step.at(held.time), width, height)))
        self._held = []
        return out
