"""Block-mean pixelation (mosaic) of one box.

Pixelation: blocks of ``block x block`` pixels anchored at the clipped box's top-left;
partial blocks at the right and bottom edges are averaged over the pixels they have.
Each band of ``block`` rows is summed column-wise (a vectorised integer add per row),
then per block; means are rounded to nearest in integers: ``(sum + n // 2) // n``.
With an ellipse the block means still use every pixel of the block inside the box;
only the writes are limited to the ellipse.
"""

from __future__ import annotations

import numpy as np

from ._jit import kernel
from ._rows import _copy_row


@kernel
def _pixelate_box(f2, x0, y0, x1, y1, block, spans, copy, do_copy, colsum, line):
    """Pixelate the clipped box ``[x0, x1) x [y0, y1)`` of ``f2`` (the frame as ``H x 3W``).

    ``colsum`` (int32) and ``line`` (uint8) are scratch rows of at least ``3 * w`` entries.
    """
    w = x1 - x0
    h = y1 - y0
    row_len = 3 * w
    block = min(block, max(w, h))  # a larger block is one block; keeps sums small
    sums = colsum[:row_len]
    out = line[:row_len]
    for band in range(0, h, block):
        band_h = min(block, h - band)
        for k in range(row_len):
            sums[k] = 0
        for y in range(band, band + band_h):
            row = f2[y0 + y, 3 * x0:3 * x1]
            if do_copy:
                _copy_row(copy[y * row_len:(y + 1) * row_len], row)
            for k in range(row_len):
                sums[k] += row[k]
        for bx in range(0, w, block):
            bx1 = min(bx + block, w)
            n = (bx1 - bx) * band_h
            half = n // 2
            s0 = np.int64(0)
            s1 = np.int64(0)
            s2 = np.int64(0)
            for x in range(bx, bx1):
                s0 += sums[3 * x]
                s1 += sums[3 * x + 1]
                s2 += sums[3 * x + 2]
            v0 = np.uint8((s0 + half) // n)
            v1 = np.uint8((s1 + half) // n)
            v2 = np.uint8((s2 + half) // n)
            for x in range(bx, bx1):
                out[3 * x] = v0
                out[3 * x + 1] = v1
                out[3 * x + 2] = v2
        for y in range(band, band + band_h):
            s = 3 * spans[2 * y]
            e = 3 * spans[2 * y + 1]
            _copy_row(f2[y0 + y, 3 * x0 + s:3 * x0 + e], out[s:e])
