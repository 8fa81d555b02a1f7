"""Gaussian-quality blur of one box as 3 running-sum box filters per axis.

Why boxes: a running sum costs the same for any width, so the blur cost does not grow
with sigma (a direct Gaussian kernel costs O(sigma) per pixel).

Widths (derived here): a box filter of odd width ``w`` over integer offsets has variance
``(w*w - 1) / 12``; variances add under convolution. With ``n`` passes, ``m`` of width
``wl`` and ``n - m`` of width ``wl + 2``::

    m (wl^2 - 1) + (n - m) ((wl + 2)^2 - 1) = 12 sigma^2
    =>  m = (n (wl^2 + 4 wl + 3) - 12 sigma^2) / (4 wl + 4)

where ``wl`` is the largest odd integer <= sqrt(12 sigma^2 / n + 1), the width for which
``n`` equal boxes would give ``sigma`` exactly; ``m`` is rounded and clamped to 0..n.

Edges replicate the box's own border pixels (index clamping), so nothing outside the
box is read. Layout per box, all in one float32 scratch buffer:

1. read the box rows (uint8) into ``t`` *transposed*, ``(w, h, 3)``, copying the original
   rows out on the way when asked;
2. three vertical running-sum passes over ``t`` (= horizontal in the image), each a
   contiguous, vectorised sweep with one accumulator per column;
3. transpose back to ``(h, w, 3)``;
4. three vertical passes, the last one rounding straight into the frame rows, only
   inside each row's span (ellipse).
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import exact_kernel, kernel
from ._rows import _copy_row, _gather_pixels, _scatter_pixels

N_PASSES = 3
MAX_SIGMA = 1.0e5  # beyond this every box filter covers any frame many times over


@exact_kernel
def _box_radii(sigma, out):
    """Write the radii (width = 2r + 1) of the three box passes for ``sigma`` into ``out[:3]``.

    Compiled without fastmath so it agrees bit for bit with a plain Python evaluation.
    """
    s = min(sigma, MAX_SIGMA)
    var12 = 12.0 * s * s
    wl = np.int64(math.floor(math.sqrt(var12 / N_PASSES + 1.0)))
    if wl % 2 == 0:
        wl -= 1
    m = math.floor((N_PASSES * (wl * wl + 4 * wl + 3) - var12) / (4 * wl + 4) + 0.5)
    m = min(max(m, 0), N_PASSES)
    for p in range(N_PASSES):
        out[p] = (wl - 1) // 2 if p < m else (wl + 1) // 2


@kernel
def _scratch_size(h, w):
    """Float32 scratch elements `_blur_box` needs for an ``h x w`` box."""
    return 2 * h * w * 3 + 3 * max(h, w)


@kernel
def _window_init(src, n, length, r, acc):
    """``acc`` = sum of rows ``-r..r`` of ``src`` (n rows of ``length``), indices clamped."""
    first = src[:length]
    w0 = np.float32(r + 1)
    for k in range(length):
        acc[k] = w0 * first[k]
    for j in range(1, min(r, n - 1) + 1):
        row = src[j * length:(j + 1) * length]
        for k in range(length):
            acc[k] += row[k]
    if r > n - 1:
        extra = np.float32(r - (n - 1))
        last = src[(n - 1) * length:n * length]
        for k in range(length):
            acc[k] += extra * last[k]


@kernel
def _column_pass(src, dst, n, length, r, acc):
    """Box filter of radius ``r`` down the columns of ``src`` (n rows of ``length``) into ``dst``."""
    _window_init(src, n, length, r, acc)
    inv = np.float32(1.0 / (2 * r + 1))
    for i in range(n):
        out = dst[i * length:(i + 1) * length]
        a = min(i + r + 1, n - 1) * length
        b = max(i - r, 0) * length
        entering = src[a:a + length]
        leaving = src[b:b + length]
        for k in range(length):
            out[k] = acc[k] * inv
            acc[k] += entering[k] - leaving[k]


@kernel
def _column_pass_to_frame(src, f2, x0, y0, n, length, r, acc, spans):
    """Last column pass: round into frame rows ``y0..y0+n``, columns of each row's span."""
    _window_init(src, n, length, r, acc)
    inv = np.float32(1.0 / (2 * r + 1))
    half = np.float32(0.5)
    for i in range(n):
        s = 3 * spans[2 * i]
        e = 3 * spans[2 * i + 1]
        out = f2[y0 + i, 3 * x0:3 * x0 + length]
        a = min(i + r + 1, n - 1) * length
        b = max(i - r, 0) * length
        entering = src[a:a + length]
        leaving = src[b:b + length]
        if s == 0 and e == length:  # whole row: one fused sweep
            for k in range(length):
                out[k] = np.uint8(acc[k] * inv + half)
                acc[k] += entering[k] - leaving[k]
        else:
            part = out[s:e]
            acc_part = acc[s:e]
            for k in range(e - s):
                part[k] = np.uint8(acc_part[k] * inv + half)
            for k in range(length):
                acc[k] += entering[k] - leaving[k]


@kernel
def _blur_box(f2, x0, y0, x1, y1, radii, spans, copy, do_copy, buf):
    """Blur the clipped box ``[x0, x1) x [y0, y1)`` of ``f2`` (the frame as ``H x 3W``).

    ``radii``: the 3 pass radii; ``spans``: per-row write spans; ``copy``: flat uint8
    destination for the original pixels when ``do_copy``; ``buf``: float32 scratch of at
    least ``_scratch_size(h, w)`` elements.
    """
    w = x1 - x0
    h = y1 - y0
    row_len = 3 * w  # row-major layout (h, w, 3)
    col_len = 3 * h  # transposed layout (w, h, 3)
    size = h * row_len
    t = buf[:size]
    u = buf[size:2 * size]
    acc = buf[2 * size:2 * size + max(row_len, col_len)]
    for y in range(h):
        row = f2[y0 + y, 3 * x0:3 * x1]
        if do_copy:
            _copy_row(copy[y * row_len:(y + 1) * row_len], row)
        _scatter_pixels(row, t[3 * y:], w, col_len)
    # Horizontal passes, run down the columns of the transposed box.
    _column_pass(t, u, w, col_len, radii[0], acc)
    _column_pass(u, t, w, col_len, radii[1], acc)
    _column_pass(t, u, w, col_len, radii[2], acc)
    for y in range(h):
        _gather_pixels(u[3 * y:], t[y * row_len:(y + 1) * row_len], w, col_len)
    # Vertical passes; the last one writes the frame.
    _column_pass(t, u, h, row_len, radii[0], acc)
    _column_pass(u, t, h, row_len, radii[1], acc)
    _column_pass_to_frame(t, f2, x0, y0, h, row_len, radii[2], acc, spans)
