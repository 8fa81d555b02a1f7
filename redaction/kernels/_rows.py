"""Row primitives shared by the kernels: copies and pixel (de)interleaving transposes.

Explicit loops rather than slice assignment: Numba's ``a[i:j] = b`` checks for overlap
and broadcasting on every call, which made row copies about 6x slower than this loop.
"""

from __future__ import annotations

import numpy as np

from ._jit import kernel


@kernel
def _copy_row(dst, src):
    """``dst[k] = src[k]`` for every ``k`` of ``dst`` (``src`` at least as long)."""
    for k in range(dst.shape[0]):
        dst[k] = src[k]


@kernel
def _scatter_pixels(row, col, n, stride):
    """``col[x * stride + c] = row[3 * x + c]`` for ``n`` pixels of 3 channels.

    Unsigned offsets: they spare Numba's negative-index wraparound test on every access
    (about 20-40% of this loop's time).
    """
    step = np.uint64(stride)
    three = np.uint64(3)
    one = np.uint64(1)
    two = np.uint64(2)
    o = np.uint64(0)
    q = np.uint64(0)
    for _ in range(n):
        col[o] = row[q]
        col[o + one] = row[q + one]
        col[o + two] = row[q + two]
        o += step
        q += three


@kernel
def _gather_pixels(col, row, n, stride):
    """``row[3 * x + c] = col[x * stride + c]`` for ``n`` pixels of 3 channels."""
    step = np.uint64(stride)
    three = np.uint64(3)
    one = np.uint64(1)
    two = np.uint64(2)
    o = np.uint64(0)
    q = np.uint64(0)
    for _ in range(n):
        row[q] = col[o]
        row[q + one] = col[o + one]
        row[q + two] = col[o + two]
        o += step
        q += three
