"""Apply a policy's redaction methods to the final regions of a frame, and its privacy zones, in place.

Order matters for what is sealed: permanent zones are destroyed first, then the originals of the
regions to seal are copied out (a liftable zone's with everything outside its polygon zeroed),
then detected regions and liftable zones are redacted. So no sealed original ever holds a
permanent zone's pixels, and a zone's sealed pixels are the zone's alone.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .policy import Policy, Zone
from .regions import Region
from .zones import only_inside, zone_mask, zone_name

_METHODS = {"blur": kernels.METHOD_BLUR, "pixelate": kernels.METHOD_PIXELATE, "solid": kernels.METHOD_SOLID}
# Floors in pixels so tiny regions still change visibly (a 6 px face still gets a 2 px mosaic).
_MIN_SIGMA = 1.5
_MIN_BLOCK = 2


def _strength(method: str, strength: float, side: float) -> float:
    """The kernel's strength (sigma, block) of a policy strength relative to a region's shorter side."""
    if method == "blur":
        return max(_MIN_SIGMA, strength * side)
    if method == "pixelate":
        return float(max(_MIN_BLOCK, round(strength * side)))
    return 0.0


def apply_zone(image: np.ndarray, zone: Zone) -> None:
    """Redact ``zone`` in ``image`` in place: filled, or composited from a blurred or pixelated copy
    of its box (strength relative to the box's shorter side, as for detected classes)."""
    x, y, mask = zone_mask(zone, *image.shape[:2])
    if not mask.size:
        return
    if zone.method == "solid":
        kernels.fill_mask(image, x, y, mask, zone.color)
        return
    h, w = mask.shape
    box = np.ascontiguousarray(image[y : y + h, x : x + w])
    kernels.redact(box, np.array([[0, 0, w, h]], np.int64), np.array([_METHODS[zone.method]], np.int64),
                   np.array([_strength(zone.method, zone.strength, min(w, h))]))
    kernels.copy_masked(image, x, y, mask, box)


def redact_frame(
    image: np.ndarray, regions: list[Region], policy: Policy, copy_out: bool = False
) -> list[np.ndarray] | None:
    """Redact ``regions`` (final, integer boxes) and every zone of ``policy`` in ``image`` in place.

    With ``copy_out`` returns the original pixels of every region, in the order given, taken
    after the permanent zones and before anything else was redacted (the sealing step encrypts
    these). Regions of class ``zone:<name>`` (:func:`~redaction.zones.zone_regions`) stand for
    liftable zones: their originals are the zone's pixels only, the rest of their box zeroed.
    """
    height, width = image.shape[:2]
    zones = policy.zones
    for zone in zones.values():
        if zone.mode == "permanent":
            apply_zone(image, zone)
    originals: list[np.ndarray | None] = [None] * len(regions)
    by_class: dict[str, list[int]] = {}
    for i, region in enumerate(regions):
        by_class.setdefault(region.cls, []).append(i)
    if copy_out and (len(by_class) > 1 or any(zone_name(cls) for cls in by_class)):
        # classes and zones are redacted in separate passes; take every original before the first
        for i, crop in enumerate(kernels.copy_out(image, _boxes(regions))):
            name = zone_name(regions[i].cls)
            originals[i] = crop if name is None else only_inside(crop, zones[name], height, width)
        copy_out = False
    for name, indices in by_class.items():
        if zone_name(name) is not None:
            continue
        cls = getattr(policy.classes, name)
        chosen = [regions[i] for i in indices]
        crops = kernels.redact(
            image,
            _boxes(chosen),
            np.full(len(chosen), _METHODS[cls.method], dtype=np.int64),
            np.array([_strength(cls.method, cls.strength, min(r.w, r.h)) for r in chosen], dtype=np.float64),
            ellipse=np.array([r.shape == "ellipse" for r in chosen], dtype=bool),
            color=cls.color,
            copy_out=copy_out,
        )
        if crops is not None:
            for i, crop in zip(indices, crops):
                originals[i] = crop
    for zone in zones.values():
        if zone.mode == "liftable":
            apply_zone(image, zone)
    for zone in zones.values():  # a region redacted over a permanent zone blurred it with its neighbours: again
        if zone.mode == "permanent" and _overlaps(zone_mask(zone, height, width), regions, zones, height, width):
            apply_zone(image, zone)
    if not (copy_out or any(o is not None for o in originals)):
        return None
    return originals  # type: ignore[return-value]


def _overlaps(placed: tuple[int, int, np.ndarray], regions: list[Region], zones: dict[str, Zone], height: int,
              width: int) -> bool:
    """Whether any region, or any liftable zone, touches the box of ``placed`` (a zone's mask)."""
    x, y, mask = placed
    if not mask.size:
        return False
    boxes = [(r.x, r.y, r.w, r.h) for r in regions]
    for zone in zones.values():
        if zone.mode == "liftable":
            zx, zy, zmask = zone_mask(zone, height, width)
            boxes.append((zx, zy, zmask.shape[1], zmask.shape[0]))
    h, w = mask.shape
    return any(bx < x + w and x < bx + bw and by < y + h and y < by + bh for bx, by, bw, bh in boxes)


def _boxes(regions: list[Region]) -> np.ndarray:
    return np.array([[r.x, r.y, r.w, r.h] for r in regions], dtype=np.int64).reshape(-1, 4)
