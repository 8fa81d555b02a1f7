"""Fused redaction drivers: every box of a frame, any mix of methods, in one call.

Semantics are those of applying the boxes one after another in the given order. The
serial driver does exactly that. The parallel driver runs the boxes in *layers* (see
`_geometry._layers`): boxes within a layer are disjoint and spread over the threads,
layers run in order, so every pixel sees its boxes in the original order.

Originals for ``copy_out`` are copied during each box's first read of the frame, except
for boxes that overlap an earlier box (layer > 0): an earlier box may already have
changed their pixels, so those are copied before anything is written.
"""

from __future__ import annotations

import math

import numpy as np

from ._blur import _blur_box, _box_radii, _scratch_size
from ._fill import _fill_box
from ._geometry import MAX_ELLIPSE_SIDE, _clip_boxes, _layers, _row_spans
from ._jit import exact_kernel, kernel, parallel_kernel, prange
from ._pixelate import _pixelate_box
from ._rows import _copy_row

METHOD_BLUR = 0
METHOD_PIXELATE = 1
METHOD_SOLID = 2


# Error codes of `_plan`, turned into messages by the wrappers.
OK, BAD_COORD, BAD_METHOD, BAD_SIGMA, BAD_BLOCK, BAD_ELLIPSE = range(6)
COORD_LIMIT = 2**31


@exact_kernel
def _validate(boxes, methods, strengths, ellipse, radii, blocks):
    """Check the per-box inputs, filling ``radii`` (blur) and ``blocks`` (pixelate).

    Returns ``(error, i, k)``: one of the codes above, the offending box and column.
    """
    for i in range(boxes.shape[0]):
        for k in range(4):
            if boxes[i, k] <= -COORD_LIMIT or boxes[i, k] >= COORD_LIMIT:
                return BAD_COORD, i, k
        method = methods[i]
        s = strengths[i]
        if method == METHOD_BLUR:
            if not (s > 0.0 and s < np.inf):
                return BAD_SIGMA, i, 0
            _box_radii(s, radii[i])
        elif method == METHOD_PIXELATE:
            if not (s >= 1.0 and s < np.inf):
                return BAD_BLOCK, i, 0
            blocks[i] = np.int64(math.floor(s + 0.5))
        elif method != METHOD_SOLID:
            return BAD_METHOD, i, 0
        if ellipse[i] and (boxes[i, 2] > MAX_ELLIPSE_SIDE or boxes[i, 3] > MAX_ELLIPSE_SIDE):
            return BAD_ELLIPSE, i, 0
    return OK, 0, 0


@exact_kernel
def _plan(height, width, boxes, methods, strengths, ellipse, want_copy):
    """Validate, clip the boxes and size everything the drivers need; touches no pixel.

    Returns ``(error, i, k, clip, layer, n_layers, radii, blocks, copy_buf, copy_off,
    sizes, area)``; see `_validate` for the first three. ``sizes`` are the float32, int32
    and uint8 scratch elements per thread, ``area`` the box pixels inside the frame.
    """
    n = boxes.shape[0]
    radii = np.zeros((n, 3), np.int64)
    blocks = np.ones(n, np.int64)
    copy_off = np.zeros(n + 1, np.int64)
    sizes = np.zeros(3, np.int64)
    error, ei, ek = _validate(boxes, methods, strengths, ellipse, radii, blocks)
    if error != OK:
        return (error, ei, ek, np.zeros((0, 4), np.int64), np.zeros(0, np.int64), 0, radii, blocks,
                np.zeros(0, np.uint8), copy_off, sizes, 0)
    clip = _clip_boxes(boxes, height, width)
    layer, n_layers = _layers(clip)
    area = 0
    for j in range(n):
        h = clip[j, 3] - clip[j, 1]
        w = clip[j, 2] - clip[j, 0]
        area += h * w
        copy_off[j + 1] = copy_off[j] + (h * w * 3 if want_copy else 0)
        if layer[j] < 0:
            continue
        if methods[j] == METHOD_BLUR:
            sizes[0] = max(sizes[0], _scratch_size(h, w))
        sizes[1] = max(sizes[1], 2 * h + 3 * w)
        sizes[2] = max(sizes[2], 3 * w)
    copy_buf = np.empty(copy_off[n], np.uint8)
    return OK, 0, 0, clip, layer, n_layers, radii, blocks, copy_buf, copy_off, sizes, area


@kernel
def _copy_boxes(f2, clip, select, copy_buf, copy_off):
    """Copy the pixels of every selected clipped box into its slice of ``copy_buf``."""
    for j in range(clip.shape[0]):
        if not select[j]:
            continue
        x0, y0, x1, y1 = clip[j, 0], clip[j, 1], clip[j, 2], clip[j, 3]
        row_len = 3 * (x1 - x0)
        dst = copy_buf[copy_off[j]:copy_off[j + 1]]
        for y in range(y1 - y0):
            _copy_row(dst[y * row_len:(y + 1) * row_len], f2[y0 + y, 3 * x0:3 * x1])


@kernel
def _redact_one(f2, j, clip, boxes, methods, radii, blocks, ellipse, color,
                copy_buf, copy_off, do_copy, fbuf, ibuf, ubuf):
    """Apply box ``j`` with its method, using the given per-thread scratch buffers."""
    x0, y0, x1, y1 = clip[j, 0], clip[j, 1], clip[j, 2], clip[j, 3]
    h = y1 - y0
    spans = ibuf[:2 * h]
    _row_spans(spans, clip[j], boxes[j], ellipse[j])
    copy = copy_buf[copy_off[j]:copy_off[j + 1]]
    method = methods[j]
    if method == METHOD_BLUR:
        _blur_box(f2, x0, y0, x1, y1, radii[j], spans, copy, do_copy, fbuf)
    elif method == METHOD_PIXELATE:
        _pixelate_box(f2, x0, y0, x1, y1, blocks[j], spans, copy, do_copy, ibuf[2 * h:], ubuf)
    else:
        _fill_box(f2, x0, y0, x1, y1, color, spans, copy, do_copy, ubuf)


@kernel
def _redact_serial(frame, boxes, methods, radii, blocks, ellipse, color, want_copy,
                   clip, layer, copy_buf, copy_off, sizes):
    """Apply the boxes one after another on the calling thread."""
    f2 = frame.reshape(frame.shape[0], frame.shape[1] * 3)
    if want_copy:
        _copy_boxes(f2, clip, layer > 0, copy_buf, copy_off)
    fbuf = np.empty(sizes[0], np.float32)
    ibuf = np.empty(sizes[1], np.int32)
    ubuf = np.empty(sizes[2], np.uint8)
    for j in range(boxes.shape[0]):
        if layer[j] >= 0:
            _redact_one(f2, j, clip, boxes, methods, radii, blocks, ellipse, color,
                        copy_buf, copy_off, want_copy and layer[j] == 0, fbuf, ibuf, ubuf)


@parallel_kernel
def _redact_parallel(frame, boxes, methods, radii, blocks, ellipse, color, want_copy,
                     clip, layer, copy_buf, copy_off, sizes, n_layers, n_slots, order, starts):
    """Apply the boxes layer by layer, the disjoint boxes of a layer spread over ``n_slots`` threads.

    ``order`` and ``starts`` come from `_geometry._schedule`.
    """
    f2 = frame.reshape(frame.shape[0], frame.shape[1] * 3)
    if want_copy:
        _copy_boxes(f2, clip, layer > 0, copy_buf, copy_off)
    fbuf = np.empty((n_slots, sizes[0]), np.float32)
    ibuf = np.empty((n_slots, sizes[1]), np.int32)
    ubuf = np.empty((n_slots, sizes[2]), np.uint8)
    for lay in range(n_layers):
        for s in prange(n_slots):
            k = lay * n_slots + s
            for t in range(starts[k], starts[k + 1]):
                j = order[t]
                _redact_one(f2, j, clip, boxes, methods, radii, blocks, ellipse, color,
                            copy_buf, copy_off, want_copy and layer[j] == 0,
                            fbuf[s], ibuf[s], ubuf[s])
