"""The latest frame a camera released, for officers drawing zones on it (``GET /api/cameras/<id>/snapshot``).

:class:`LatestFrame` is a sink like any other: it sees only :class:`~gateway.frames.Released`
frames, redacted or blanked, so a snapshot can never hold a raw pixel. On the release path it
only keeps a reference to the newest frame with pixels (O(1)); :func:`encode_snapshot` turns it into a
JPEG or PNG, called off the event loop by whoever serves it.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from ..frames import Released

Format = Literal["jpeg", "png"]
MEDIA_TYPES: dict[str, str] = {"jpeg": "image/jpeg", "png": "image/png"}
_JPEG_QUALITY = 90


class LatestFrame:
    """A sink keeping the newest released frame that has pixels (redacted or blanked, never dropped)."""

    def __init__(self) -> None:
        self.latest: Released | None = None

    def __call__(self, item: Released) -> None:
        if item.image is not None:
            self.latest = item


def encode_snapshot(image: np.ndarray, fmt: Format) -> bytes:
    """``image`` (BGR) as a JPEG (quality 90) or a PNG (lossless); CPU work, off the event loop."""
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"format must be one of {', '.join(MEDIA_TYPES)}, got {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, data = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", image, params)
    if not ok:
        raise ValueError(f"the frame could not be encoded as {fmt}")
    return data.tobytes()
