"""Privacy zones on frames: each zone's mask made once per frame size, then applied to every frame.

:func:`zone_mask` rasterises a zone's polygon (relative coordinates) for one frame size with the
Numba kernel (:mod:`.kernels`), cached, so a camera pays for it once. :func:`zone_regions` gives
the liftable zones of a frame as regions of class ``zone:<name>`` (track 0, the zone's tight
box), which the sealing step seals like any detected region; :func:`~redaction.redact_frame`
applies every zone of the policy to every frame it redacts, so a zone never depends on
detection: it cannot flicker, lag or be missed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import kernels
from .policy import ZONE_PREFIX, Policy, Zone
from .regions import Region

#: the track every liftable zone is sealed under: 0, no tracked subject (its class names the zone alone)
ZONE_TRACK = 0


@lru_cache(maxsize=256)
def _mask(polygon: tuple[tuple[float, float], ...], height: int, width: int) -> tuple[int, int, np.ndarray]:
    points = np.array(polygon, dtype=np.float64) * np.array([width, height], dtype=np.float64)
    x, y, mask = kernels.polygon_mask(points, height, width)
    mask.flags.writeable = False  # shared by every frame of that size
    return x, y, mask


def zone_mask(zone: Zone, height: int, width: int) -> tuple[int, int, np.ndarray]:
    """``(x, y, mask)``: the pixels of a ``height`` x ``width`` frame inside ``zone`` (a read-only
    uint8 mask over its tight box at ``(x, y)``; empty when the zone covers no pixel centre)."""
    return _mask(zone.polygon, height, width)


def zone_name(cls: str) -> str | None:
    """The zone a region class names (``zone:<name>``), or None for a detected class."""
    return cls[len(ZONE_PREFIX):] if cls.startswith(ZONE_PREFIX) else None


def zone_regions(policy: Policy, height: int, width: int) -> list[Region]:
    """The liftable zones of a frame of this size, as the regions whose originals are sealed."""
    regions = []
    for name, zone in policy.zones.items():
        if zone.mode != "liftable":
            continue
        x, y, mask = zone_mask(zone, height, width)
        if mask.size:
            regions.append(Region(f"{ZONE_PREFIX}{name}", x, y, mask.shape[1], mask.shape[0], 1.0, track=ZONE_TRACK))
    return regions


def only_inside(crop: np.ndarray, zone: Zone, height: int, width: int) -> np.ndarray:
    """``crop`` (the zone's box, copied from a frame of this size) with every pixel outside the
    polygon zeroed: what is sealed of a liftable zone is the zone, nothing of its neighbours
    (a face beside it is sealed under the face's grant, not the zone's)."""
    _, _, mask = zone_mask(zone, height, width)
    crop = np.ascontiguousarray(crop)
    kernels.clear_outside(crop, mask)
    return crop
