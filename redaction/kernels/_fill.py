"""Solid fill of one box (inside each row's span, i.e. the ellipse when asked)."""

from __future__ import annotations

from ._jit import kernel
from ._rows import _copy_row


@kernel
def _fill_box(f2, x0, y0, x1, y1, color, spans, copy, do_copy, line):
    """Fill the clipped box with ``color`` (3 uint8, BGR) inside each row's span."""
    w = x1 - x0
    h = y1 - y0
    row_len = 3 * w
    out = line[:row_len]
    for x in range(w):
        out[3 * x] = color[0]
        out[3 * x + 1] = color[1]
        out[3 * x + 2] = color[2]
    for y in range(h):
        if do_copy:
            _copy_row(copy[y * row_len:(y + 1) * row_len], f2[y0 + y, 3 * x0:3 * x1])
        s = 3 * spans[2 * y]
        e = 3 * spans[2 * y + 1]
        _copy_row(f2[y0 + y, 3 * x0 + s:3 * x0 + e], out[s:e])
