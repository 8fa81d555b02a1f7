"""Box geometry shared by the kernels: clipping, ellipse row spans and the overlap schedule.

A box is ``x, y, w, h`` (int64, top-left origin). Clipped boxes are ``x0, y0, x1, y1``
with exclusive ends; a box that misses the frame clips to ``x1 <= x0`` or ``y1 <= y0``.

Ellipse test, exact in integers: pixel ``(px, py)`` (centre ``(px + .5, py + .5)``)
is inside the ellipse inscribed in the *unclipped* box when

    ((cx - x - w/2) / (w/2))**2 + ((cy - y - h/2) / (h/2))**2 <= 1
    <=>  a*a*h*h + b*b*w*w <= w*w*h*h,  a = 2*(px - x) + 1 - w,  b = 2*(py - y) + 1 - h

which fits int64 for w, h <= ``MAX_ELLIPSE_SIDE`` (checked by the wrappers).
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import kernel

MAX_ELLIPSE_SIDE = 32768


@kernel
def _clip_boxes(boxes, height, width):
    """Clip ``(N, 4)`` boxes ``x, y, w, h`` to the frame as ``x0, y0, x1, y1``; empty -> zeros."""
    n = boxes.shape[0]
    clip = np.zeros((n, 4), np.int64)
    for i in range(n):
        x, y, w, h = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        x0 = max(x, 0)
        y0 = max(y, 0)
        x1 = min(x + w, width)
        y1 = min(y + h, height)
        if x1 > x0 and y1 > y0:
            clip[i, 0] = x0
            clip[i, 1] = y0
            clip[i, 2] = x1
            clip[i, 3] = y1
    return clip


@kernel
def _ellipse_first_col(bw, bh, j):
    """First column offset ``k0`` inside the ellipse on row offset ``j`` of a ``bw x bh`` box.

    The inside columns of that row are ``k0 <= k < bw - k0`` (empty when ``2*k0 >= bw``).
    """
    b = 2 * j + 1 - bh
    bw2 = bw * bw
    bh2 = bh * bh
    rhs = bw2 * (bh2 - b * b)  # need a*a*bh2 <= rhs
    if rhs < 0:
        return bw
    # Largest a >= 0 with a*a*bh2 <= rhs: float estimate, then exact integer correction.
    amax = np.int64(math.sqrt(rhs / bh2))
    while amax > 0 and amax * amax * bh2 > rhs:
        amax -= 1
    while (amax + 1) * (amax + 1) * bh2 <= rhs:
        amax += 1
    # Column offsets k map to a = 2k + 1 - bw, so a has the parity of bw + 1.
    if (amax + bw + 1) & 1:
        amax -= 1
    if amax < 0:
        return bw
    return (bw - 1 - amax) // 2


@kernel
def _row_spans(spans, clip_row, box_row, ellipse):
    """Fill ``spans[y]`` with the ``[start, end)`` columns (relative to the clipped x0) to write.

    ``spans`` is an int32 buffer of at least ``2 * h`` entries, laid out start, end, ...
    Without ellipse every row spans the whole clipped box.
    """
    x0, y0, x1, y1 = clip_row[0], clip_row[1], clip_row[2], clip_row[3]
    h = y1 - y0
    w = x1 - x0
    if not ellipse:
        for y in range(h):
            spans[2 * y] = 0
            spans[2 * y + 1] = w
        return
    bx, by, bw, bh = box_row[0], box_row[1], box_row[2], box_row[3]
    for y in range(h):
        k0 = _ellipse_first_col(bw, bh, y0 + y - by)
        s = max(bx + k0, x0) - x0
        e = min(bx + bw - k0, x1) - x0
        if e <= s:
            s = 0
            e = 0
        spans[2 * y] = s
        spans[2 * y + 1] = e


@kernel
def _layers(clip):
    """Sequential layer of every box: 1 + the highest layer of an earlier box it overlaps.

    Boxes in one layer are mutually disjoint, so they may run concurrently, and running
    layers in order reproduces applying the boxes one after another. Empty boxes get -1.
    Returns ``(layer, n_layers)``.
    """
    n = clip.shape[0]
    layer = np.full(n, -1, np.int64)
    n_layers = 0
    for j in range(n):
        if clip[j, 2] <= clip[j, 0]:
            continue
        lj = 0
        for i in range(j):
            if layer[i] < lj:  # empty (-1), or cannot raise lj
                continue
            if (clip[i, 0] < clip[j, 2] and clip[j, 0] < clip[i, 2]
                    and clip[i, 1] < clip[j, 3] and clip[j, 1] < clip[i, 3]):
                lj = max(lj, layer[i] + 1)
        layer[j] = lj
        n_layers = max(n_layers, lj + 1)
    return layer, n_layers


@kernel
def _schedule(clip, layer, n_layers, n_slots):
    """Spread each layer's boxes over ``n_slots`` threads, largest first onto the least loaded.

    Returns ``(order, starts)``: slot ``s`` of layer ``l`` runs boxes
    ``order[starts[l * n_slots + s]:starts[l * n_slots + s + 1]]``.
    """
    n = clip.shape[0]
    area = (clip[:, 2] - clip[:, 0]) * (clip[:, 3] - clip[:, 1])
    slot = np.zeros(n, np.int64)
    load = np.zeros(n_slots, np.int64)
    counts = np.zeros(n_layers * n_slots + 1, np.int64)
    for lay in range(n_layers):
        members = np.nonzero(layer == lay)[0]
        by_size = members[np.argsort(-area[members], kind="mergesort")]
        load[:] = 0
        for j in by_size:
            s = np.argmin(load)
            slot[j] = s
            load[s] += area[j] + 64  # + a per-box overhead
            counts[lay * n_slots + s + 1] += 1
    starts = np.cumsum(counts)
    fill = starts[:-1].copy()
    order = np.empty(starts[-1], np.int64)
    for j in range(n):
        if layer[j] >= 0:
            k = layer[j] * n_slots + slot[j]
            order[fill[k]] = j
            fill[k] += 1
    return order, starts
