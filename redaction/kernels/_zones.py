"""Polygon masks (privacy zones): rasterised once per frame size, applied to every frame.

A pixel ``(px, py)`` belongs to a polygon when its centre ``(px + .5, py + .5)`` is inside
by the even-odd rule, an edge counting for the rows whose centre ``yc`` satisfies
``min(y1, y2) <= yc < max(y1, y2)``: a row's crossings ``x`` (at ``yc``) are sorted and the
pixels whose centre lies in ``[x[2k], x[2k+1])`` are inside. The scanline rasteriser is an
exact kernel (no fastmath), so it matches the crossing-number reference in the tests bit for
bit. The mask covers only the polygon's tight bounding box inside the frame.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import exact_kernel, kernel


@exact_kernel
def _rasterise(points, x0, y0, mask):
    """Fill ``mask`` (h, w uint8, zeroed) with 1 where a pixel of the box at ``(x0, y0)`` is inside."""
    n = points.shape[0]
    h, w = mask.shape
    xs = np.empty(n, np.float64)
    for r in range(h):
        yc = y0 + r + 0.5
        k = 0
        for i in range(n):
            j = i + 1 if i + 1 < n else 0
            x1, y1, x2, y2 = points[i, 0], points[i, 1], points[j, 0], points[j, 1]
            if (y1 <= yc < y2) or (y2 <= yc < y1):
                xs[k] = x1 + (yc - y1) * (x2 - x1) / (y2 - y1)
                k += 1
        row = np.sort(xs[:k])
        for p in range(0, k - 1, 2):
            a = max(math.ceil(row[p] - 0.5) - x0, 0)
            b = min(math.ceil(row[p + 1] - 0.5) - x0, w)
            for c in range(a, b):
                mask[r, c] = 1


@kernel
def _masked_fill(frame, x0, y0, mask, color):
    h, w = mask.shape
    for r in range(h):
        for c in range(w):
            if mask[r, c]:
                frame[y0 + r, x0 + c, 0] = color[0]
                frame[y0 + r, x0 + c, 1] = color[1]
                frame[y0 + r, x0 + c, 2] = color[2]


@kernel
def _masked_copy(frame, x0, y0, mask, source):
    """Pixels of ``source`` (h, w, 3) into ``frame`` at ``(x0, y0)`` where ``mask`` is set."""
    h, w = mask.shape
    for r in range(h):
        for c in range(w):
            if mask[r, c]:
                frame[y0 + r, x0 + c, 0] = source[r, c, 0]
                frame[y0 + r, x0 + c, 1] = source[r, c, 1]
                frame[y0 + r, x0 + c, 2] = source[r, c, 2]


@kernel
def _clear_outside(crop, mask):
    """Zero the pixels of ``crop`` (h, w, 3) where ``mask`` is not set."""
    h, w = mask.shape
    for r in range(h):
        for c in range(w):
            if not mask[r, c]:
                crop[r, c, 0] = 0
                crop[r, c, 1] = 0
                crop[r, c, 2] = 0


def polygon_mask(points, height: int, width: int) -> tuple[int, int, np.ndarray]:
    """The pixels of a ``height`` x ``width`` frame inside the polygon ``points`` ((N, 2) x, y in
    pixels, N >= 3): ``(x, y, mask)``, the mask (uint8, 0/1) covering the tight bounding box at
    ``(x, y)``; an empty (0, 0) mask when no pixel centre is inside."""
    p = np.ascontiguousarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 3 or p.shape[1] != 2 or not np.isfinite(p).all():
        raise ValueError(f"points must be finite, with shape (N >= 3, 2); got shape {p.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive; got {width}x{height}")
    x0, x1 = max(0, math.floor(p[:, 0].min())), min(width, math.ceil(p[:, 0].max()))
    y0, y1 = max(0, math.floor(p[:, 1].min())), min(height, math.ceil(p[:, 1].max()))
    if x1 <= x0 or y1 <= y0:
        return 0, 0, np.zeros((0, 0), np.uint8)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _rasterise(p, x0, y0, mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, np.zeros((0, 0), np.uint8)
    tight = np.ascontiguousarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    return x0 + int(cols[0]), y0 + int(rows[0]), tight


def _check_placement(frame: np.ndarray, x: int, y: int, mask: np.ndarray) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or not frame.flags.c_contiguous:
        raise ValueError(f"frame must be a C-contiguous uint8 array of shape (H, W, 3); got {frame.dtype} {frame.shape}")
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D uint8 array; got {mask.dtype} {mask.shape}")
    h, w = mask.shape
    if x < 0 or y < 0 or y + h > frame.shape[0] or x + w > frame.shape[1]:
        raise ValueError(f"mask {w}x{h} at ({x}, {y}) does not fit the {frame.shape[1]}x{frame.shape[0]} frame")


def fill_mask(frame: np.ndarray, x: int, y: int, mask: np.ndarray, color) -> None:
    """Set the pixels of ``frame`` under ``mask`` (placed at ``(x, y)``) to ``color`` (B, G, R), in place."""
    _check_placement(frame, x, y, mask)
    _masked_fill(frame, x, y, mask, np.asarray(color, np.uint8).reshape(3))


def copy_masked(frame: np.ndarray, x: int, y: int, mask: np.ndarray, source: np.ndarray) -> None:
    """Copy the pixels of ``source`` (mask-sized, (h, w, 3) uint8) under ``mask`` into ``frame`` at ``(x, y)``."""
    _check_placement(frame, x, y, mask)
    if source.dtype != np.uint8 or source.shape != (*mask.shape, 3):
        raise ValueError(f"source must be uint8 of shape {(*mask.shape, 3)}; got {source.dtype} {source.shape}")
    _masked_copy(frame, x, y, mask, np.ascontiguousarray(source))


def clear_outside(crop: np.ndarray, mask: np.ndarray) -> None:
    """Zero the pixels of ``crop`` (mask-sized, (h, w, 3) uint8) outside ``mask``, in place."""
    if crop.dtype != np.uint8 or crop.shape != (*mask.shape, 3) or not crop.flags.c_contiguous:
        raise ValueError(f"crop must be C-contiguous uint8 of shape {(*mask.shape, 3)}; got {crop.dtype} {crop.shape}")
    _clear_outside(crop, mask)
