"""The redaction kernels against the plain NumPy references in ``tests/naive.py``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import naive
from redaction.kernels import (
    METHOD_BLUR,
    METHOD_PIXELATE,
    METHOD_SOLID,
    blur,
    copy_out,
    fill,
    pixelate,
    redact,
)
from redaction.kernels import _api
from redaction.kernels._blur import _box_radii
from redaction.kernels._geometry import _ellipse_first_col

H, W = 37, 53  # odd on purpose

# Boxes touching, crossing and missing every border, plus degenerate shapes.
EDGE_BOXES = [
    (10, 8, 20, 15),  # inside
    (-6, 5, 15, 9),  # crosses left
    (45, 12, 20, 7),  # crosses right
    (7, -4, 11, 10),  # crosses top
    (20, 30, 9, 12),  # crosses bottom
    (-5, -5, 12, 11),  # top-left corner
    (47, 31, 10, 10),  # bottom-right corner
    (0, 0, W, H),  # exactly the frame
    (-10, -10, W + 20, H + 20),  # larger than the frame
    (0, 0, 1, 1),  # 1x1 in the corner
    (W - 1, H - 1, 1, 1),  # 1x1 in the opposite corner
    (25, 17, 1, 1),  # 1x1 inside
    (3, 20, 31, 1),  # 1 row
    (40, 2, 1, 29),  # 1 column
    (13, 11, 7, 5),  # odd sizes
    (W, 3, 5, 5),  # just right of the frame
    (-5, 3, 5, 5),  # just left of the frame
    (3, H, 5, 5),  # just below
    (3, -5, 5, 5),  # just above
    (100, 100, 10, 10),  # far outside
    (5, 5, 0, 7),  # zero width
    (5, 5, 7, -3),  # negative height
]
OUTSIDE = {15, 16, 17, 18, 19, 20, 21}


def box_radii(sigma):
    out = np.zeros(3, np.int64)
    _box_radii(float(sigma), out)
    return out


def rand_frame(h=H, w=W, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def max_diff(a, b):
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0))


@contextmanager
def driver(name):
    """Force the serial or the parallel driver for the calls inside the block."""
    saved = _api.PARALLEL_MIN_AREA
    _api.PARALLEL_MIN_AREA = 0 if name == "parallel" else None
    try:
        yield
    finally:
        _api.PARALLEL_MIN_AREA = saved


@pytest.fixture(params=["serial", "parallel"])
def drv(request):
    with driver(request.param):
        yield request.param


def outside_mask(boxes, shape):
    """True where no box (clipped) covers the pixel."""
    free = np.ones(shape[:2], bool)
    for box in boxes:
        c = naive.clip_box(box, *shape[:2])
        if c is not None:
            x0, y0, x1, y1 = c
            free[y0:y1, x0:x1] = False
    return free


# --- blur widths -----------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.3, 4.0, 7.7, 8.0, 16.0, 25.0, 40.0, 123.4])
def test_box_radii_match_reference_and_sigma(sigma):
    radii = box_radii(sigma)
    assert radii.tolist() == naive.box_radii(sigma)
    variance = sum(((2 * r + 1) ** 2 - 1) / 12 for r in radii)
    if sigma >= 0.8:
        # Changing one width by 2 moves the variance by (4 w + 4) / 12: the pick is the nearest.
        w = 2 * int(radii.min()) + 1
        assert abs(variance - sigma**2) <= (4 * w + 4) / 24 + 1e-9
    if sigma >= 4.0:
        assert abs(np.sqrt(variance) - sigma) / sigma < 0.05


def test_box_radii_match_reference_on_a_sweep():
    for sigma in np.concatenate([np.linspace(0.01, 60, 3001), np.geomspace(60, 1e6, 200)]):
        assert box_radii(sigma).tolist() == naive.box_radii(sigma), sigma


def test_box_radii_large_sigma_is_capped():
    r = box_radii(1e300)
    assert (r > 0).all() and (r < 10**6).all()


# --- blur ------------------------------------------------------------------------------

@pytest.mark.parametrize("ellipse", [False, True])
@pytest.mark.parametrize("sigma", [0.5, 1.7, 4.0, 9.0, 300.0])
def test_blur_each_edge_box_matches_reference(drv, sigma, ellipse):
    for i, box in enumerate(EDGE_BOXES):
        frame = rand_frame(seed=i)
        ref = frame.copy()
        blur(frame, [box], sigma, ellipse=ellipse)
        naive.blur_box(ref, box, sigma, ellipse)
        assert max_diff(frame, ref) <= 1, (box, sigma)


@pytest.mark.parametrize("ellipse", [False, True])
def test_blur_many_boxes_per_box_sigma(drv, ellipse):
    frame = rand_frame(seed=3)
    ref = frame.copy()
    sig = np.linspace(0.6, 12.0, len(EDGE_BOXES))
    blur(frame, EDGE_BOXES, sig, ellipse=ellipse)
    for box, s in zip(EDGE_BOXES, sig):
        naive.blur_box(ref, box, s, ellipse)
    assert max_diff(frame, ref) <= 1


def test_blur_reads_only_inside_the_box():
    # Same box contents, different surroundings: the blurred box must be identical.
    a = rand_frame(seed=1)
    b = rand_frame(seed=2)
    b[10:25, 12:40] = a[10:25, 12:40]
    blur(a, [(12, 10, 28, 15)], 6.0)
    blur(b, [(12, 10, 28, 15)], 6.0)
    np.testing.assert_array_equal(a[10:25, 12:40], b[10:25, 12:40])


def test_blur_is_gaussian_like():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:160, 0:180].astype(np.float64)
    smooth = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 0.3 * (xx - yy)
    img = np.clip(smooth[..., None] + rng.normal(0, 20, (160, 180, 3)), 0, 255).astype(np.uint8)
    for sigma in (2.0, 4.0, 8.0):
        ours = img.copy()
        blur(ours, [(0, 0, 180, 160)], sigma)
        ref = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
        m = int(4 * sigma) + 2
        diff = np.abs(ours[m:-m, m:-m].astype(float) - ref[m:-m, m:-m]).mean()
        assert diff < 2.0, (sigma, diff)


def test_strong_blur_removes_high_frequencies():
    img = rand_frame(96, 128, seed=5)
    out = img.copy()
    blur(out, [(0, 0, 128, 96)], 8.0)

    def hf_energy(a):
        a = a.astype(np.float64)
        return (np.diff(a, axis=0) ** 2).mean() + (np.diff(a, axis=1) ** 2).mean()

    assert hf_energy(out) < hf_energy(img) / 100


def test_blur_of_constant_box_is_unchanged():
    frame = np.full((20, 30, 3), (17, 130, 250), np.uint8)
    before = frame.copy()
    blur(frame, [(-3, -3, 40, 40)], 5.0)
    np.testing.assert_array_equal(frame, before)


def test_huge_sigma_gives_a_flat_box():
    # With replicated edges, a window far wider than the box is dominated by the edge
    # pixels: the limit is a flat colour (the mean of the four corners), not the box mean.
    frame = rand_frame(seed=9)
    ref = frame.copy()
    box = (5, 6, 30, 20)
    blur(frame, [box], 1e4)
    naive.blur_box(ref, box, 1e4)
    assert max_diff(frame, ref) <= 1
    region = frame[6:26, 5:35].reshape(-1, 3).astype(int)
    assert (region.max(axis=0) - region.min(axis=0) <= 1).all()
    original = rand_frame(seed=9)[6:26, 5:35]
    corners = original[[0, 0, -1, -1], [0, -1, 0, -1]].astype(float)
    assert np.abs(region.mean(axis=0) - corners.mean(axis=0)).max() < 1.5


# --- pixelate and fill -----------------------------------------------------------------

@pytest.mark.parametrize("ellipse", [False, True])
@pytest.mark.parametrize("block", [1, 2, 3, 5, 8, 1000])
def test_pixelate_each_edge_box_matches_reference(drv, block, ellipse):
    for i, box in enumerate(EDGE_BOXES):
        frame = rand_frame(seed=i)
        ref = frame.copy()
        pixelate(frame, [box], block, ellipse=ellipse)
        naive.pixelate_box(ref, box, block, ellipse)
        np.testing.assert_array_equal(frame, ref, err_msg=str((box, block)))


def test_pixelate_block_one_is_identity():
    frame = rand_frame(seed=4)
    before = frame.copy()
    pixelate(frame, EDGE_BOXES, 1)
    np.testing.assert_array_equal(frame, before)


def test_pixelate_per_box_blocks_and_rounding():
    frame = rand_frame(seed=6)
    ref = frame.copy()
    blocks = np.arange(len(EDGE_BOXES)) % 6 + 1
    pixelate(frame, EDGE_BOXES, blocks)
    for box, b in zip(EDGE_BOXES, blocks):
        naive.pixelate_box(ref, box, b)
    np.testing.assert_array_equal(frame, ref)
    # Rounds to nearest: a 2x1 block of 0 and 1 averages to 0.5 -> 1.
    f = np.zeros((1, 2, 3), np.uint8)
    f[0, 1] = 1
    pixelate(f, [(0, 0, 2, 1)], 2)
    assert f.tolist() == [[[1, 1, 1], [1, 1, 1]]]


def test_pixelate_float_block_rounds_to_nearest():
    a = rand_frame(seed=8)
    b = a.copy()
    pixelate(a, [(3, 3, 30, 20)], 3.6)
    pixelate(b, [(3, 3, 30, 20)], 4)
    np.testing.assert_array_equal(a, b)


def test_fill_accepts_colour_lists_and_arrays():
    a, b, c = rand_frame(seed=23), rand_frame(seed=23), rand_frame(seed=23)
    fill(a, [(1, 2, 9, 9)], (255, 7, 128))
    fill(b, [(1, 2, 9, 9)], [255, 7, 128])
    fill(c, [(1, 2, 9, 9)], np.array([255.0, 7.0, 128.0]))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert a[5, 5].tolist() == [255, 7, 128]


@pytest.mark.parametrize("ellipse", [False, True])
def test_fill_matches_reference(drv, ellipse):
    frame = rand_frame(seed=10)
    ref = frame.copy()
    fill(frame, EDGE_BOXES, (255, 7, 128), ellipse=ellipse)
    for box in EDGE_BOXES:
        naive.fill_box(ref, box, (255, 7, 128), ellipse)
    np.testing.assert_array_equal(frame, ref)


# --- ellipse ---------------------------------------------------------------------------

@pytest.mark.parametrize("w", [1, 2, 3, 4, 5, 7, 8, 16, 33, 64])
@pytest.mark.parametrize("h", [1, 2, 3, 6, 9, 31, 40])
def test_ellipse_integer_test_equals_the_float_definition(w, h):
    box = (0, 0, w, h)
    np.testing.assert_array_equal(naive.ellipse_mask_exact(box, (0, 0, w, h)), naive.ellipse_mask(box, (0, 0, w, h)))


@pytest.mark.parametrize("bw, bh", [(32768, 32768), (32768, 3), (5, 32768), (30001, 29999), (1, 1), (2, 2)])
def test_ellipse_row_start_is_exact_for_large_boxes(bw, bh):
    rows = np.unique(np.r_[0:min(bh, 40), bh - min(bh, 40):bh, np.random.default_rng(0).integers(0, bh, 50)])
    k = np.arange(bw, dtype=np.int64)
    a = 2 * k + 1 - bw
    for j in rows:
        b = 2 * int(j) + 1 - bh
        inside = a * a * (bh * bh) + (b * b) * (bw * bw) <= (bw * bw) * (bh * bh)
        want = int(np.argmax(inside)) if inside.any() else bw
        got = _ellipse_first_col(bw, bh, int(j))
        assert got == want or (want == bw and 2 * got >= bw), (j, got, want)


def test_ellipse_accepts_numpy_bool_scalar():
    a, b = rand_frame(seed=22), rand_frame(seed=22)
    fill(a, [(2, 2, 20, 15)], (0, 0, 0), ellipse=np.True_)
    fill(b, [(2, 2, 20, 15)], (0, 0, 0), ellipse=[True])
    np.testing.assert_array_equal(a, b)


def test_ellipse_uses_the_unclipped_box():
    frame = np.zeros((20, 20, 3), np.uint8)
    box = (-10, -6, 30, 22)  # crosses the top and left border
    fill(frame, [box], (255, 255, 255), ellipse=True)
    expected = naive.ellipse_mask_exact(box, naive.clip_box(box, 20, 20))
    np.testing.assert_array_equal(frame[..., 0] == 255, np.pad(expected, ((0, 4), (0, 0))))
    # Pixels of the box outside the ellipse were left alone.
    assert frame[0, 19].tolist() == [0, 0, 0]


def test_ellipse_per_box_flags():
    frame = rand_frame(seed=11)
    ref = frame.copy()
    flags = [i % 2 == 0 for i in range(len(EDGE_BOXES))]
    fill(frame, EDGE_BOXES, (1, 2, 3), ellipse=flags)
    for box, e in zip(EDGE_BOXES, flags):
        naive.fill_box(ref, box, (1, 2, 3), e)
    np.testing.assert_array_equal(frame, ref)


# --- copy_out, redact, overlaps ----------------------------------------------------------

def test_copy_out_matches_reference():
    frame = rand_frame(seed=12)
    before = frame.copy()
    got = copy_out(frame, EDGE_BOXES)
    want = naive.copy_out(frame, EDGE_BOXES)
    assert len(got) == len(want)
    for g, w_ in zip(got, want):
        assert g.shape == w_.shape and g.dtype == np.uint8
        np.testing.assert_array_equal(g, w_)
    for i in OUTSIDE:
        assert got[i].shape == (0, 0, 3)
    np.testing.assert_array_equal(frame, before)


OVERLAPPING = [
    (5, 5, 30, 20),
    (15, 10, 30, 20),  # overlaps 0
    (10, 0, 10, 37),  # overlaps 0 and 1
    (40, 25, 20, 20),  # crosses the corner, overlaps 1
    (0, 0, W, H),  # covers everything
    (12, 12, 6, 6),  # inside all of the above
    (45, 0, 8, 8),  # overlaps 4 only
]


@pytest.mark.parametrize("method", [METHOD_BLUR, METHOD_PIXELATE, METHOD_SOLID])
@pytest.mark.parametrize("ellipse", [False, True])
def test_overlapping_boxes_apply_in_order(drv, method, ellipse):
    frame = rand_frame(seed=13)
    ref = frame.copy()
    n = len(OVERLAPPING)
    strengths = [3.0, 1.5, 6.0, 2.0, 4.0, 0.8, 2.5] if method == METHOD_BLUR else [3, 2, 5, 4, 7, 2, 3]
    got = redact(frame, OVERLAPPING, [method] * n, strengths, ellipse=ellipse, color=(9, 99, 199), copy_out=True)
    want = naive.redact(ref, OVERLAPPING, [method] * n, strengths, ellipse=ellipse, color=(9, 99, 199))
    assert max_diff(frame, ref) <= (1 if method == METHOD_BLUR else 0)
    for g, w_ in zip(got, want):
        np.testing.assert_array_equal(g, w_)


def test_redact_mixed_methods_with_copy_out(drv):
    frame = rand_frame(seed=14)
    ref = frame.copy()
    n = len(EDGE_BOXES) + len(OVERLAPPING)
    boxes = EDGE_BOXES + OVERLAPPING
    methods = [i % 3 for i in range(n)]
    strengths = [[2.5, 3, 0][i % 3] + (i % 4) for i in range(n)]
    ellipse = [(i // 3) % 2 == 1 for i in range(n)]
    got = redact(frame, boxes, methods, strengths, ellipse=ellipse, color=(0, 255, 0), copy_out=True)
    want = naive.redact(ref, boxes, methods, strengths, ellipse=ellipse, color=(0, 255, 0))
    assert max_diff(frame, ref) <= 1
    assert [g.shape for g in got] == [w_.shape for w_ in want]
    for g, w_ in zip(got, want):
        np.testing.assert_array_equal(g, w_)


def test_redact_without_copy_out_returns_none_and_matches():
    a = rand_frame(seed=15)
    b = a.copy()
    assert redact(a, OVERLAPPING, [1] * 7, 4) is None
    naive.redact(b, OVERLAPPING, [1] * 7, 4)
    np.testing.assert_array_equal(a, b)


def test_serial_and_parallel_drivers_agree_exactly():
    boxes = EDGE_BOXES + OVERLAPPING + [(x, y, 9, 7) for x in range(0, W, 11) for y in range(0, H, 9)]
    n = len(boxes)
    methods = [(i * 7) % 3 for i in range(n)]
    strengths = [2.0 + (i % 5) for i in range(n)]
    ellipse = [i % 4 == 0 for i in range(n)]
    out = {}
    for name in ("serial", "parallel"):
        frame = rand_frame(seed=16)
        with driver(name):
            copies = redact(frame, boxes, methods, strengths, ellipse=ellipse, copy_out=True)
        out[name] = frame, copies
    np.testing.assert_array_equal(out["serial"][0], out["parallel"][0])
    for a, b in zip(out["serial"][1], out["parallel"][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", [METHOD_BLUR, METHOD_PIXELATE, METHOD_SOLID])
def test_pixels_outside_every_box_are_untouched(drv, method):
    frame = rand_frame(64, 96, seed=17)
    before = frame.copy()
    boxes = [(-4, 10, 20, 12), (30, -3, 15, 20), (60, 50, 50, 30), (40, 30, 11, 9), (41, 31, 5, 20)]
    redact(frame, boxes, [method] * len(boxes), 5, ellipse=[True, False, True, False, True])
    free = outside_mask(boxes, frame.shape)
    np.testing.assert_array_equal(frame[free], before[free])


def test_empty_box_list_is_a_no_op():
    frame = rand_frame(seed=18)
    before = frame.copy()
    blur(frame, [], 3.0)
    pixelate(frame, np.zeros((0, 4), int), 3)
    fill(frame, [], (1, 2, 3))
    assert redact(frame, [], [], [], copy_out=True) == []
    assert redact(frame, [], [], []) is None
    assert copy_out(frame, []) == []
    np.testing.assert_array_equal(frame, before)


def test_accepts_integral_float_and_uint_boxes():
    a, b, c = rand_frame(seed=19), rand_frame(seed=19), rand_frame(seed=19)
    blur(a, [(3, 4, 20, 10)], 2.0)
    blur(b, np.array([(3.0, 4.0, 20.0, 10.0)]), 2.0)
    blur(c, np.array([(3, 4, 20, 10)], np.uint16), 2.0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_concurrent_callers_are_safe_and_correct():
    # Several Python threads at once: one may hold the parallel driver, the others run serially.
    frame0 = rand_frame(64, 96, seed=20)
    boxes = [(x, y, 14, 12) for x in range(0, 96, 16) for y in range(0, 64, 13)]
    ref = frame0.copy()
    naive.redact(ref, boxes, [0] * len(boxes), 3.0)
    errors = []

    def work():
        for _ in range(20):
            f = frame0.copy()
            redact(f, boxes, [0] * len(boxes), 3.0)
            if max_diff(f, ref) > 1:
                errors.append("mismatch")

    with driver("parallel"):
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


_WARM_SCRIPT = """
import numba, numpy as np
from numba.core.registry import CPUDispatcher
from redaction import kernels
from redaction.kernels import _api, _blur, _fill, _geometry, _pixelate, _redact, _rows

def compiled():
    return {{f"{{m.__name__}}.{{n}}": len(d.signatures) for m in (_api, _blur, _fill, _geometry, _pixelate, _redact, _rows)
            for n, d in vars(m).items() if isinstance(d, CPUDispatcher)}}

_api.PARALLEL_MIN_AREA = {threshold}  # None: the default; 0: a deployment that turns the parallel driver on
before = compiled()
kernels.warmup()
warm = compiled()
# what a live frame does: a 720p frame, every method, both shapes, originals copied out
frame = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), np.uint8)
boxes = np.array([[100, 80, 60, 70], [1250, 700, 90, 40], [400, 300, 200, 150]], np.int64)
kernels.redact(frame, boxes, [kernels.METHOD_BLUR, kernels.METHOD_PIXELATE, kernels.METHOD_SOLID], [8.0, 6.0, 0.0],
               ellipse=[True, False, True], color=(0, 0, 255), copy_out=True)
kernels.redact(frame, boxes, [kernels.METHOD_BLUR] * 3, [3.0, 40.0, 9.0])
kernels.blur(frame, boxes, 5.0); kernels.pixelate(frame, boxes, 4, ellipse=True); kernels.fill(frame, boxes, (1, 2, 3))
kernels.copy_out(frame, boxes)
kernels.redact(frame, boxes, [kernels.METHOD_PIXELATE] * 3, [4.0] * 3, ellipse=True, copy_out=True)
after = compiled()
print(sum(before.values()), sum(warm.values()), warm["redaction.kernels._redact._redact_parallel"],
      sorted(k for k in after if after[k] != warm[k]))
"""


@pytest.mark.parametrize("threshold", [None, 0])
def test_warmup_compiles_every_kernel_a_live_frame_uses_and_no_other(threshold):
    """After ``warmup()`` a real 720p frame, through every public kernel, compiles nothing more: no live
    frame pays for JIT (run in a fresh interpreter, where nothing is compiled yet). The parallel driver,
    which nothing uses unless ``PARALLEL_MIN_AREA`` is set, is compiled only then: it was 11.5 of the
    28 s a first start spent compiling."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("running without JIT: nothing is compiled")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", _WARM_SCRIPT.format(threshold=threshold)],
                            env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    before, warm, parallel, recompiled = result.stdout.strip().split(" ", 3)
    assert int(before) == 0 and int(warm) > 0, result.stdout  # warmup is what compiled (or loaded) them
    assert int(parallel) == (0 if threshold is None else 1), result.stdout
    assert recompiled == "[]", f"compiled on the first live frame, after warmup: {recompiled}"


# --- property test -----------------------------------------------------------------------

@st.composite
def scenes(draw):
    h = draw(st.integers(1, 24))
    w = draw(st.integers(1, 24))
    n = draw(st.integers(1, 6))
    boxes = [
        (draw(st.integers(-8, w + 2)), draw(st.integers(-8, h + 2)),
         draw(st.integers(-1, 26)), draw(st.integers(-1, 26)))
        for _ in range(n)
    ]
    methods = [draw(st.sampled_from([METHOD_BLUR, METHOD_PIXELATE, METHOD_SOLID])) for _ in range(n)]
    strengths = [
        draw(st.floats(0.3, 15.0)) if m == METHOD_BLUR else float(draw(st.integers(1, 9)))
        for m in methods
    ]
    ellipse = [draw(st.booleans()) for _ in range(n)]
    seed = draw(st.integers(0, 2**16))
    parallel = draw(st.booleans())
    return h, w, boxes, methods, strengths, ellipse, seed, parallel


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_random_scenes_match_reference(scene):
    h, w, boxes, methods, strengths, ellipse, seed, parallel = scene
    frame = rand_frame(h, w, seed)
    ref = frame.copy()
    with driver("parallel" if parallel else "serial"):
        got = redact(frame, boxes, methods, strengths, ellipse=ellipse, color=(5, 6, 7), copy_out=True)
    want = naive.redact(ref, boxes, methods, strengths, ellipse=ellipse, color=(5, 6, 7))
    assert max_diff(frame, ref) <= 1
    free = outside_mask(boxes, frame.shape)
    np.testing.assert_array_equal(frame[free], ref[free])
    for g, w_ in zip(got, want):
        np.testing.assert_array_equal(g, w_)


# --- validation --------------------------------------------------------------------------

GOOD = rand_frame(8, 8)


@pytest.mark.parametrize("call, match", [
    (lambda: blur([[1]], [(0, 0, 2, 2)], 1.0), r"frame must be a numpy uint8 array .* got list"),
    (lambda: blur(GOOD.astype(np.float32), [(0, 0, 2, 2)], 1.0), r"dtype=float32"),
    (lambda: blur(GOOD[..., :2].copy(), [(0, 0, 2, 2)], 1.0), r"shape=\(8, 8, 2\)"),
    (lambda: blur(GOOD[0].copy(), [(0, 0, 2, 2)], 1.0), r"shape=\(8, 3\)"),
    (lambda: blur(GOOD[:, ::2].copy(order="F"), [(0, 0, 2, 2)], 1.0), r"must be C-contiguous"),
    (lambda: blur(GOOD[:, ::2], [(0, 0, 2, 2)], 1.0), r"must be C-contiguous"),
    (lambda: blur(np.frombuffer(bytes(192), np.uint8).reshape(8, 8, 3), [(0, 0, 2, 2)], 1.0), r"read-only"),
    (lambda: blur(GOOD.copy(), [(0, 0, 2)], 1.0), r"boxes must have shape \(N, 4\).*got shape \(1, 3\)"),
    (lambda: blur(GOOD.copy(), [0, 0, 2, 2], 1.0), r"got shape \(4,\)"),
    (lambda: blur(GOOD.copy(), [(0, 0, 2.5, 2)], 1.0), r"whole numbers; got boxes\[0, 2\]=2.5"),
    (lambda: blur(GOOD.copy(), [(0, 0, np.nan, 2)], 1.0), r"boxes\[0, 2\]=nan"),
    (lambda: blur(GOOD.copy(), [("a", 0, 2, 2)], 1.0), r"integer array; got dtype <U"),
    (lambda: blur(GOOD.copy(), [(2**40, 0, 2, 2)], 1.0), r"boxes\[0, 0\]=1099511627776"),
    (lambda: blur(GOOD.copy(), [(0, 0, 2, 2)], 0.0), r"sigma must be finite and > 0; got sigma=0.0"),
    (lambda: blur(GOOD.copy(), [(0, 0, 2, 2)], -1), r"got sigma=-1.0"),
    (lambda: blur(GOOD.copy(), [(0, 0, 2, 2), (1, 1, 2, 2)], [1.0, np.inf]), r"got sigma\[1\]=inf"),
    (lambda: blur(GOOD.copy(), [(0, 0, 2, 2)], [1.0, 2.0]), r"sigma has shape \(2,\) but boxes has 1 rows"),
    (lambda: blur(GOOD.copy(), [(0, 0, 2, 2)], "x"), r"sigma must be a number .* got 'x'"),
    (lambda: pixelate(GOOD.copy(), [(0, 0, 2, 2)], 0), r"block must be finite and >= 1; got block=0.0"),
    (lambda: pixelate(GOOD.copy(), [(0, 0, 2, 2)] * 2, [3, 0.5]), r"got block\[1\]=0.5"),
    (lambda: fill(GOOD.copy(), [(0, 0, 2, 2)], (0, 0)), r"color must be 3 integers in 0..255.*got \(0, 0\)"),
    (lambda: fill(GOOD.copy(), [(0, 0, 2, 2)], (0, 0, 256)), r"got \(0, 0, 256\)"),
    (lambda: fill(GOOD.copy(), [(0, 0, 2, 2)], (0, 0, 1.5)), r"got \(0, 0, 1.5\)"),
    (lambda: fill(GOOD.copy(), [(0, 0, 2, 2)], (1, 2, 3), ellipse=[True, False]),
     r"ellipse has shape \(2,\) but boxes has 1 rows"),
    (lambda: fill(GOOD.copy(), [(0, 0, 2, 2)], (1, 2, 3), ellipse=["yes"]), r"ellipse must be None, a bool"),
    (lambda: fill(GOOD.copy(), [(0, 0, 40000, 2)], (1, 2, 3), ellipse=True), r"at most 32768 px.*boxes\[0\]"),
    (lambda: redact(GOOD.copy(), [(0, 0, 2, 2)], [3], [1.0]), r"unknown method code 3 at methods\[0\]"),
    (lambda: redact(GOOD.copy(), [(0, 0, 2, 2)] * 2, [0, -1], [1.0, 1.0]), r"unknown method code -1 at methods\[1\]"),
    (lambda: redact(GOOD.copy(), [(0, 0, 2, 2)], [0, 1], [1.0]), r"methods has shape \(2,\) but boxes has 1 rows"),
    (lambda: redact(GOOD.copy(), [(0, 0, 2, 2)], [0], [1.0, 2.0]), r"strengths has shape \(2,\)"),
    (lambda: redact(GOOD.copy(), [(0, 0, 2, 2)] * 2, [2, 0], [0.0, 0.0]),
     r"blur sigma must be finite and > 0; got strengths\[1\]=0.0"),
    (lambda: redact(GOOD.copy(), [(0, 0, 2, 2)] * 2, [1, 1], [2, 0.9]),
     r"pixelate block must be finite and >= 1; got strengths\[1\]=0.9"),
    (lambda: redact(GOOD.copy(), [(0, 0, 2, 2)], [2], [0.0], color="red"), r"color must be 3 integers"),
    (lambda: copy_out(GOOD.astype(np.int16), [(0, 0, 2, 2)]), r"dtype=int16"),
    (lambda: copy_out(GOOD, [(0, -2**31, 2, 2)]), r"within \+-2\*\*31; got boxes\[0, 1\]=-2147483648"),
    (lambda: copy_out(GOOD, np.array([(0, 2**31, 2, 2)], np.int64)), r"got boxes\[0, 1\]=2147483648"),
    (lambda: blur(GOOD.copy(), np.array([(0, 0, 2, 2**33)], np.int64), 1.0), r"got boxes\[0, 3\]=8589934592"),
    (lambda: blur(GOOD.copy(), [(0, 0, 2, 2)] * 2, [1.0, [2.0]]), r"sigma must be a number or one number per box"),
    (lambda: redact(GOOD.copy(), [(0, 0, 2, 2)], [0.5], [1.0]), r"methods must be whole numbers; got \[0.5\]"),
    (lambda: redact(GOOD.copy(), [(0, 0, 2, 2)], ["blur"], [1.0]), r"methods must be a number"),
    (lambda: fill(GOOD.copy(), [(0, 0, 2, 2)], [1, [2, 3]]), r"color must be 3 integers"),
])
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_solid_ignores_strength():
    frame = rand_frame(seed=21)
    redact(frame, [(0, 0, 4, 4)], [METHOD_SOLID], [float("nan")], color=(1, 2, 3))
    assert (frame[:4, :4] == (1, 2, 3)).all()


# --- pure-Python kernels -----------------------------------------------------------------

_PURE_PYTHON_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
import naive
from redaction.kernels import redact
rng = np.random.default_rng(0)
frame = rng.integers(0, 256, (23, 29, 3), dtype=np.uint8)
ref = frame.copy()
boxes = [(-3, 2, 12, 9), (5, 5, 15, 11), (20, 15, 12, 12), (8, 0, 1, 1)]
args = ([0, 1, 2, 0], [2.5, 3, 0, 1.2])
got = redact(frame, boxes, *args, ellipse=[True, False, True, False], copy_out=True)
want = naive.redact(ref, boxes, *args, ellipse=[True, False, True, False])
assert np.abs(frame.astype(int) - ref).max() <= 1
assert all((g == w).all() for g, w in zip(got, want))
print("ok")
"""


def test_kernels_run_as_plain_python():
    """``NUMBA_DISABLE_JIT=1`` (used for coverage of the kernel bodies) must work too."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("already running without JIT")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=str(root))
    script = _PURE_PYTHON_SCRIPT.format(tests=str(root / "tests"))
    res = subprocess.run([sys.executable, "-W", "error", "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
