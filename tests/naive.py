"""Plain NumPy reference implementations of the redaction kernels (slow and obvious).

Written independently of ``redaction.kernels``: each box is handled on its own, in
float64, with explicit clamped index windows, then rounded to nearest.
"""

from __future__ import annotations

import math

import numpy as np

BLUR, PIXELATE, SOLID = 0, 1, 2
MAX_SIGMA = 1.0e5


def clip_box(box, height, width):
    """``(x0, y0, x1, y1)`` of the box inside the frame, or None when nothing is left."""
    x, y, w, h = (int(v) for v in box)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def ellipse_mask(box, clipped):
    """Bool mask over the clipped box: pixel centre inside the ellipse of the unclipped box."""
    x, y, w, h = (int(v) for v in box)
    x0, y0, x1, y1 = clipped
    px = np.arange(x0, x1)
    py = np.arange(y0, y1)
    cx = (px + 0.5 - x - w / 2) / (w / 2)
    cy = (py + 0.5 - y - h / 2) / (h / 2)
    return cy[:, None] ** 2 + cx[None, :] ** 2 <= 1.0


def ellipse_mask_exact(box, clipped):
    """The same test in exact integer arithmetic (Python ints)."""
    x, y, w, h = (int(v) for v in box)
    x0, y0, x1, y1 = clipped
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for j in range(y0, y1):
        b = 2 * (j - y) + 1 - h
        for i in range(x0, x1):
            a = 2 * (i - x) + 1 - w
            mask[j - y0, i - x0] = a * a * h * h + b * b * w * w <= w * w * h * h
    return mask


def box_radii(sigma):
    """Radii of three box filters whose variances ((width^2 - 1) / 12 each) sum to sigma^2."""
    s = min(float(sigma), MAX_SIGMA)
    ideal = math.sqrt(12 * s * s / 3 + 1)
    lo = math.floor(ideal)
    if lo % 2 == 0:
        lo -= 1
    hi = lo + 2
    # Solve n_lo (lo^2 - 1) + (3 - n_lo) (hi^2 - 1) = 12 s^2 for the number of narrow boxes.
    n_lo = math.floor((3 * (hi * hi - 1) - 12 * s * s) / (hi * hi - lo * lo) + 0.5)
    n_lo = min(max(n_lo, 0), 3)
    widths = [lo] * n_lo + [hi] * (3 - n_lo)
    return [(wd - 1) // 2 for wd in widths]


def box_filter(a, r, axis):
    """Mean over the window ``i - r .. i + r`` along ``axis``, indices clamped to the array."""
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0]
    out = np.empty_like(a)
    for i in range(n):
        idx = np.clip(np.arange(i - r, i + r + 1), 0, n - 1)
        out[i] = a[idx].mean(axis=0)
    return np.moveaxis(out, 0, axis)


def round_u8(v):
    return np.floor(v + 0.5).clip(0, 255).astype(np.uint8)


def _write(frame, clipped, box, values, ellipse):
    x0, y0, x1, y1 = clipped
    region = frame[y0:y1, x0:x1]
    if ellipse:
        m = ellipse_mask_exact(box, clipped)
        region[m] = values[m]
    else:
        region[...] = values


def blur_box(frame, box, sigma, ellipse=False):
    c = clip_box(box, *frame.shape[:2])
    if c is None:
        return
    x0, y0, x1, y1 = c
    v = frame[y0:y1, x0:x1].astype(np.float64)
    radii = box_radii(sigma)
    for r in radii:
        v = box_filter(v, r, axis=1)
    for r in radii:
        v = box_filter(v, r, axis=0)
    _write(frame, c, box, round_u8(v), ellipse)


def pixelate_box(frame, box, block, ellipse=False):
    c = clip_box(box, *frame.shape[:2])
    if c is None:
        return
    x0, y0, x1, y1 = c
    block = int(block)
    src = frame[y0:y1, x0:x1].astype(np.float64)
    out = np.empty(src.shape, np.uint8)
    for by in range(0, y1 - y0, block):
        for bx in range(0, x1 - x0, block):
            cell = src[by:by + block, bx:bx + block]
            out[by:by + block, bx:bx + block] = round_u8(cell.reshape(-1, 3).mean(axis=0))
    _write(frame, c, box, out, ellipse)


def fill_box(frame, box, color, ellipse=False):
    c = clip_box(box, *frame.shape[:2])
    if c is None:
        return
    x0, y0, x1, y1 = c
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    out[...] = np.asarray(color, np.uint8)
    _write(frame, c, box, out, ellipse)


def copy_out(frame, boxes):
    out = []
    for box in boxes:
        c = clip_box(box, *frame.shape[:2])
        if c is None:
            out.append(np.zeros((0, 0, 3), np.uint8))
        else:
            x0, y0, x1, y1 = c
            out.append(frame[y0:y1, x0:x1].copy())
    return out


def redact(frame, boxes, methods, strengths, ellipse=None, color=(0, 0, 0)):
    """Apply the boxes one after another; returns the originals as ``copy_out`` would."""
    originals = copy_out(frame, boxes)
    n = len(boxes)
    strengths = np.broadcast_to(np.asarray(strengths, float), (n,))
    ellipse = np.zeros(n, bool) if ellipse is None else np.broadcast_to(np.asarray(ellipse, bool), (n,))
    for box, m, s, e in zip(boxes, methods, strengths, ellipse):
        if m == BLUR:
            blur_box(frame, box, s, e)
        elif m == PIXELATE:
            pixelate_box(frame, box, math.floor(s + 0.5), e)
        else:
            fill_box(frame, box, color, e)
    return originals
