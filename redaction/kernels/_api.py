"""Public wrappers: check the inputs, then hand them to the compiled drivers.

Every wrapper modifies ``frame`` in place and raises ``ValueError`` naming the offending
value; nothing is written when a call is refused. Conversions take a fast path for the
arrays the pipeline passes (int64 boxes, float64 strengths) so that a 20-box call costs
tens of microseconds of Python, not hundreds.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numba
import numpy as np

from ._geometry import MAX_ELLIPSE_SIDE, _clip_boxes, _schedule
from ._redact import (
    BAD_BLOCK,
    BAD_COORD,
    BAD_ELLIPSE,
    BAD_METHOD,
    BAD_SIGMA,
    COORD_LIMIT,
    METHOD_BLUR,
    METHOD_PIXELATE,
    METHOD_SOLID,
    OK,
    _copy_boxes,
    _plan,
    _redact_parallel,
    _redact_serial,
)
from ._zones import clear_outside, copy_masked, fill_mask, polygon_mask

# Box pixels per call from which the boxes are spread over Numba's threads; None: never.
# Off by default because on the 2-core target it did not pay (perf/bench_kernels.py and
# a 1080p sweep, 2 threads vs 1): with the other core busy -- as it is in the pipeline,
# decoding and detecting -- every layer's barrier waits for a thread that cannot run,
# and 20 boxes of a 720p frame took 1.9-13 ms instead of 1.3-1.6 ms; 2.1M box pixels
# took 70 ms instead of 33 ms. Set it (e.g. 200_000) on a machine with idle cores, before
# `warmup`, which compiles the parallel driver only when it is set.
PARALLEL_MIN_AREA: int | None = None
# Numba's workqueue threading layer aborts the process when two threads enter a parallel
# region at once; a caller that finds the parallel driver busy runs serially instead.
_parallel_lock = threading.Lock()

_NO_COLOR = np.zeros(3, np.uint8)


def _check_frame(frame) -> None:
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy uint8 array of shape (H, W, 3); got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be a uint8 array of shape (H, W, 3); got dtype={frame.dtype} shape={frame.shape}")
    if not frame.flags.c_contiguous:
        raise ValueError(f"frame must be C-contiguous; got strides={frame.strides} for shape={frame.shape}")
    if not frame.flags.writeable:
        raise ValueError("frame must be writeable; got a read-only array")


def _as_boxes(boxes) -> np.ndarray:
    if (type(boxes) is np.ndarray and boxes.dtype == np.int64 and boxes.ndim == 2
            and boxes.shape[1] == 4 and boxes.flags.c_contiguous):
        return boxes
    b = np.asarray(boxes)
    if b.size == 0 and (b.ndim == 1 or (b.ndim == 2 and b.shape[1] in (0, 4))):
        return np.zeros((0, 4), np.int64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) with rows x, y, w, h; got shape {b.shape}")
    if b.dtype.kind == "f":
        bad = ~np.isfinite(b) | (b != np.round(b))
        if bad.any():
            i, k = np.argwhere(bad)[0]
            raise ValueError(f"boxes must hold whole numbers; got boxes[{i}, {k}]={b[i, k].item()!r}")
    elif b.dtype.kind not in "iu":
        raise ValueError(f"boxes must be an integer array; got dtype {b.dtype}")
    bad = (b <= -COORD_LIMIT) | (b >= COORD_LIMIT)
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise _coord_error(b, i, k)
    return np.ascontiguousarray(b, dtype=np.int64)


def _coord_error(boxes, i: int, k: int) -> ValueError:
    return ValueError(f"box coordinates must lie within +-2**31; got boxes[{i}, {k}]={boxes[i, k].item()!r}")


def _as_vector(value, n: int, name: str, dtype) -> np.ndarray:
    """``value`` as a 1-D ``dtype`` array of ``n`` entries; a scalar is repeated."""
    if type(value) is np.ndarray and value.dtype == dtype and value.ndim == 1 and value.flags.c_contiguous:
        a = value
    else:
        try:
            a = np.asarray(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or one number per box; got {value!r}") from None
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a number or one number per box; got {value!r}")
        if np.dtype(dtype).kind in "iu" and a.dtype.kind == "f":
            if not np.all(a == np.round(a)):
                raise ValueError(f"{name} must be whole numbers; got {value!r}")
        if a.ndim == 0:
            return np.full(n, a, dtype)
        a = np.ascontiguousarray(a, dtype=dtype)
    if a.shape != (n,):
        raise ValueError(f"{name} has shape {a.shape} but boxes has {n} rows; give a scalar or one value per box")
    return a


def _as_color(color) -> np.ndarray:
    if type(color) is tuple and len(color) == 3 and all(type(v) is int and 0 <= v <= 255 for v in color):
        return np.array(color, np.uint8)
    try:
        c = np.asarray(color)
    except (TypeError, ValueError):
        c = None
    if (c is None or c.shape != (3,) or c.dtype.kind not in "iuf" or not np.all(np.isfinite(c))
            or np.any(c != np.round(c)) or np.any((c < 0) | (c > 255))):
        raise ValueError(f"color must be 3 integers in 0..255 (B, G, R); got {color!r}")
    return c.astype(np.uint8)


def _as_ellipse(ellipse, n: int) -> np.ndarray:
    if ellipse is None or ellipse is False:
        return np.zeros(n, np.bool_)
    if ellipse is True:
        return np.ones(n, np.bool_)
    e = np.asarray(ellipse)
    if e.dtype.kind not in "biu":
        raise ValueError(f"ellipse must be None, a bool or one bool per box; got {ellipse!r}")
    if e.ndim == 0:
        return np.full(n, bool(e))
    if e.shape != (n,):
        raise ValueError(f"ellipse has shape {e.shape} but boxes has {n} rows")
    return e.astype(np.bool_)


def _refuse(error: int, i: int, k: int, boxes, strengths, name: str, scalar: bool, methods) -> ValueError:
    """The ``ValueError`` for an error code returned by `_plan`."""
    got = f"{name}={strengths[i].item()!r}" if scalar else f"{name}[{i}]={strengths[i].item()!r}"
    if error == BAD_COORD:
        return _coord_error(boxes, i, k)
    if error == BAD_SIGMA:
        return ValueError(f"blur sigma must be finite and > 0; got {got}")
    if error == BAD_BLOCK:
        return ValueError(f"pixelate block must be finite and >= 1; got {got}")
    if error == BAD_METHOD:
        return ValueError(f"unknown method code {methods[i].item()!r} at methods[{i}]; "
                          "expected 0 (blur), 1 (pixelate) or 2 (solid)")
    assert error == BAD_ELLIPSE, error
    return ValueError(f"ellipse boxes may be at most {MAX_ELLIPSE_SIDE} px wide and high; "
                      f"got boxes[{i}]={boxes[i].tolist()}")


def _apply(frame, boxes, methods, strengths, ellipse, color, want_copy, name, scalar, parallel=None):
    """Plan, then run the serial or the parallel driver; the copies when ``want_copy``.

    ``parallel``: None picks by area (`PARALLEL_MIN_AREA`); True or False forces a driver.
    """
    error, i, k, clip, layer, n_layers, radii, blocks, copy_buf, copy_off, sizes, area = _plan(
        frame.shape[0], frame.shape[1], boxes, methods, strengths, ellipse, want_copy)
    if error != OK:
        raise _refuse(error, i, k, boxes, strengths, name, scalar, methods)
    if parallel is None:
        parallel = PARALLEL_MIN_AREA is not None and area >= PARALLEL_MIN_AREA
    if parallel and _parallel_lock.acquire(blocking=False):
        try:
            n_slots = numba.get_num_threads()
            order, starts = _schedule(clip, layer, n_layers, n_slots)
            _redact_parallel(frame, boxes, methods, radii, blocks, ellipse, color, want_copy,
                             clip, layer, copy_buf, copy_off, sizes, n_layers, n_slots, order, starts)
        finally:
            _parallel_lock.release()
    else:
        _redact_serial(frame, boxes, methods, radii, blocks, ellipse, color, want_copy,
                       clip, layer, copy_buf, copy_off, sizes)
    return _split(copy_buf, copy_off, clip) if want_copy else None


def _split(copy_buf: np.ndarray, copy_off: np.ndarray, clip: np.ndarray) -> list[np.ndarray]:
    off = copy_off.tolist()
    return [copy_buf[off[j]:off[j + 1]].reshape(y1 - y0, x1 - x0, 3)
            for j, (x0, y0, x1, y1) in enumerate(clip.tolist())]


def _single(frame, boxes, method: int, strength, name: str, ellipse, color=_NO_COLOR) -> None:
    _check_frame(frame)
    b = _as_boxes(boxes)
    n = b.shape[0]
    s = _as_vector(strength, n, name, np.float64)
    e = _as_ellipse(ellipse, n)
    _apply(frame, b, np.full(n, method, np.int64), s, e, color, False, name, np.ndim(strength) == 0)


def blur(frame: np.ndarray, boxes, sigma, ellipse=None) -> None:
    """Gaussian-quality blur inside each box, from that box's own pixels only.

    ``sigma``: pixels, a scalar or one per box (finite, > 0).
    """
    _single(frame, boxes, METHOD_BLUR, sigma, "sigma", ellipse)


def pixelate(frame: np.ndarray, boxes, block, ellipse=None) -> None:
    """Block-mean mosaic; ``block`` in pixels (>= 1, rounded to nearest), scalar or per box."""
    _single(frame, boxes, METHOD_PIXELATE, block, "block", ellipse)


def fill(frame: np.ndarray, boxes, color, ellipse=None) -> None:
    """Solid fill with ``color``, a BGR triple, the same for every box."""
    c = _as_color(color)
    _single(frame, boxes, METHOD_SOLID, 0.0, "strength", ellipse, c)


def copy_out(frame: np.ndarray, boxes) -> list[np.ndarray]:
    """A copy of each clipped box's pixels, ``(h, w, 3)``; ``(0, 0, 3)`` for a box outside."""
    _check_frame(frame)
    b = _as_boxes(boxes)
    bad = (b <= -COORD_LIMIT) | (b >= COORD_LIMIT)
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise _coord_error(b, i, k)
    clip = _clip_boxes(b, frame.shape[0], frame.shape[1])
    area = (clip[:, 2] - clip[:, 0]) * (clip[:, 3] - clip[:, 1])
    copy_off = np.zeros(b.shape[0] + 1, np.int64)
    np.cumsum(area * 3, out=copy_off[1:])
    copy_buf = np.empty(int(copy_off[-1]), np.uint8)
    _copy_boxes(frame.reshape(frame.shape[0], -1), clip, area > 0, copy_buf, copy_off)
    return _split(copy_buf, copy_off, clip)


def redact(frame: np.ndarray, boxes, methods, strengths, ellipse=None,
           color: Sequence[int] = (0, 0, 0), copy_out: bool = False) -> list[np.ndarray] | None:
    """Redact every box with its own method in one pass over the frame.

    ``methods``: one code per box (``METHOD_BLUR``, ``METHOD_PIXELATE``, ``METHOD_SOLID``).
    ``strengths``: per box, sigma in px for blur, block size in px for pixelate (rounded to
    nearest), ignored for solid. With ``copy_out=True`` returns the original pixels of every
    clipped box, ``(h, w, 3)`` each (views into one new buffer), as they were before this
    call, even where boxes overlap.
    """
    _check_frame(frame)
    b = _as_boxes(boxes)
    n = b.shape[0]
    m = _as_vector(methods, n, "methods", np.int64)
    s = _as_vector(strengths, n, "strengths", np.float64)
    e = _as_ellipse(ellipse, n)
    c = _as_color(color)
    return _apply(frame, b, m, s, e, c, bool(copy_out), "strengths", False)


def warmup() -> None:
    """Compile (or load from the cache) and run every kernel once on a tiny frame.

    Call at start-up so no live frame pays for JIT compilation. The parallel driver is
    compiled only if `PARALLEL_MIN_AREA` is set by then.
    """
    frame = np.zeros((12, 16, 3), np.uint8)
    boxes = np.array([[1, 1, 6, 5], [4, 3, 9, 8], [-2, 6, 5, 9]], np.int64)
    methods = np.array([METHOD_BLUR, METHOD_PIXELATE, METHOD_SOLID], np.int64)
    strengths = np.array([2.0, 2.0, 0.0])
    ellipse = np.array([True, False, True])
    # the parallel driver only where it can be used: compiling it took 11.5 of a first start's 28 s
    for parallel in (False, True) if PARALLEL_MIN_AREA is not None else (False,):
        for want_copy in (False, True):
            _apply(frame, boxes, methods, strengths, ellipse, _NO_COLOR, want_copy, "strengths", False, parallel)
    copy_out(frame, boxes)
    x, y, mask = polygon_mask(np.array([[1.0, 1.0], [14.5, 2.0], [6.0, 11.0]]), 12, 16)
    fill_mask(frame, x, y, mask, _NO_COLOR)
    crop = np.ascontiguousarray(frame[y : y + mask.shape[0], x : x + mask.shape[1]])
    copy_masked(frame, x, y, mask, crop)
    clear_outside(crop, mask)
