"""The visible mark on unmasked output: who unmasked it, for which case, when."""

from __future__ import annotations

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def watermark(image: np.ndarray, text: str) -> None:
    """Draw ``text`` in a dark band across the bottom of ``image`` (in place), and once more,
    smaller, at the top, so cropping one edge off does not remove it."""
    height, width = image.shape[:2]
    for scale_of_height, at_top in ((0.045, False), (0.03, True)):
        scale, thickness = _fit(text, width, max(8, int(height * scale_of_height)))
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
        pad = max(2, th // 3)
        band = th + base + 2 * pad
        y0 = 0 if at_top else height - band
        y0 = max(0, y0)
        region = image[y0 : y0 + band]
        region[:] = (region.astype(np.uint16) * 2 // 7).astype(np.uint8)  # darken to ~30 %
        cv2.putText(image, text, (pad, y0 + pad + th), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def _fit(text: str, width: int, line_height: int) -> tuple[float, int]:
    """Font scale and thickness for a line about ``line_height`` pixels tall that fits ``width``."""
    (tw, th), _ = cv2.getTextSize(text, _FONT, 1.0, 1)
    scale = min(line_height / max(th, 1), (width * 0.96) / max(tw, 1))
    return max(scale, 0.25), max(1, round(scale * 1.5))
