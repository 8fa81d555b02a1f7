"""Apply a policy's redaction methods to the final regions of a frame, in place."""

from __future__ import annotations

import numpy as np

from . import kernels
from .policy import ClassPolicy, Policy
from .regions import Region

_METHODS = {"blur": kernels.METHOD_BLUR, "pixelate": kernels.METHOD_PIXELATE, "solid": kernels.METHOD_SOLID}
# Floors in pixels so tiny regions still change visibly (a 6 px face still gets a 2 px mosaic).
_MIN_SIGMA = 1.5
_MIN_BLOCK = 2


def _strength(cls: ClassPolicy, region: Region) -> float:
    side = min(region.w, region.h)
    if cls.method == "blur":
        return max(_MIN_SIGMA, cls.strength * side)
    if cls.method == "pixelate":
        return float(max(_MIN_BLOCK, round(cls.strength * side)))
    return 0.0


def redact_frame(
    image: np.ndarray, regions: list[Region], policy: Policy, copy_out: bool = False
) -> list[np.ndarray] | None:
    """Redact ``regions`` (final, integer boxes) in ``image`` in place.

    With ``copy_out`` returns the original pixels of every region, in the order given,
    taken before any of them was redacted (the sealing step encrypts these).
    """
    originals: list[np.ndarray | None] = [None] * len(regions)
    by_class: dict[str, list[int]] = {}
    for i, region in enumerate(regions):
        by_class.setdefault(region.cls, []).append(i)
    if copy_out and len(by_class) > 1:
        # classes are redacted in separate passes; take every original before the first
        for i, crop in enumerate(kernels.copy_out(image, _boxes(regions))):
            originals[i] = crop
        copy_out = False
    for name, indices in by_class.items():
        cls: ClassPolicy = getattr(policy.classes, name)
        chosen = [regions[i] for i in indices]
        crops = kernels.redact(
            image,
            _boxes(chosen),
            np.full(len(chosen), _METHODS[cls.method], dtype=np.int64),
            np.array([_strength(cls, r) for r in chosen], dtype=np.float64),
            ellipse=np.array([r.shape == "ellipse" for r in chosen], dtype=bool),
            color=cls.color,
            copy_out=copy_out,
        )
        if crops is not None:
            for i, crop in zip(indices, crops):
                originals[i] = crop
    if not (copy_out or any(o is not None for o in originals)):
        return None
    return originals  # type: ignore[return-value]


def _boxes(regions: list[Region]) -> np.ndarray:
    return np.array([[r.x, r.y, r.w, r.h] for r in regions], dtype=np.int64).reshape(-1, 4)
