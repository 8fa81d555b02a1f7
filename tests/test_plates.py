"""PlateDetector: DB post-processing on synthetic probability maps, and the real model on real plates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from redaction.plates import PlateDetector, db_boxes, merge_lines
from redaction.regions import coverage_mask, iou_matrix

DATA = Path("/work/shared/data")
# A few labelled frames per set, read in place: dashcam frames with several plates near and far
# (t1192 has a blurred plate only the sharpened fine pass finds), a US close-up whose text is
# too tall for the fine pass, and US plates whose border lies well outside their characters.
REAL = [
    ("plates_romania_dashcam", "dayride_type1_001_t1192.jpg"),
    ("plates_romania_dashcam", "nightride_type3_001_t472.jpg"),
    ("plates_romania_dashcam", "dayride_type1_001_t1094.jpg"),
    ("plates_openalpr_us", "us4.jpg"),
    ("plates_openalpr_us", "car15.jpg"),
    ("plates_openalpr_us", "wts-lg-000047.jpg"),
]


@pytest.fixture(scope="module")
def detector() -> PlateDetector:
    return PlateDetector()


def _blob_map(shape: tuple[int, int], blobs: list[tuple[int, int, int, int, float]]) -> np.ndarray:
    """A probability map with rectangles ``(x, y, w, h, p)`` of constant probability."""
    prob = np.zeros(shape, dtype=np.float32)
    for x, y, w, h, p in blobs:
        prob[y : y + h, x : x + w] = p
    return prob


# DB post-processing -------------------------------------------------------------------------


def test_rectangle_gives_one_unclipped_box() -> None:
    prob = _blob_map((64, 128), [(30, 20, 40, 10, 0.9)])
    rects = db_boxes(prob, binarize=0.3, box_threshold=0.5, unclip_ratio=1.6)
    assert rects.shape == (1, 7)
    cx, cy, w, h, angle, score, fill = rects[0]
    d = 40 * 10 * 1.6 / (2 * (40 + 10))  # area * ratio / perimeter of the 40 x 10 kernel
    assert (cx, cy) == pytest.approx((49.5, 24.5))
    assert (w, h) == pytest.approx((40 + 2 * d, 10 + 2 * d))
    assert angle == pytest.approx(0.0)
    assert score == pytest.approx(0.9)
    assert fill == pytest.approx(1.0)


def test_unclip_grows_with_ratio() -> None:
    prob = _blob_map((64, 128), [(30, 20, 40, 10, 0.9)])
    plain = db_boxes(prob, 0.3, 0.5, unclip_ratio=0.0)
    assert plain[0, 2:4] == pytest.approx((40.0, 10.0))
    wide = db_boxes(prob, 0.3, 0.5, unclip_ratio=3.0)
    assert wide[0, 2:4] == pytest.approx((40.0 + 24.0, 10.0 + 24.0))


def test_two_blobs_give_two_boxes() -> None:
    prob = _blob_map((64, 160), [(10, 10, 30, 8, 0.8), (90, 40, 50, 12, 0.95)])
    rects = db_boxes(prob, 0.3, 0.5, 1.6)
    assert len(rects) == 2
    centres = sorted(tuple(r[:2]) for r in rects)
    assert centres == [pytest.approx((24.5, 13.5)), pytest.approx((114.5, 45.5))]


def test_below_binarize_gives_nothing() -> None:
    prob = _blob_map((64, 128), [(30, 20, 40, 10, 0.25)])
    rects = db_boxes(prob, binarize=0.3, box_threshold=0.1, unclip_ratio=1.6)
    assert rects.shape == (0, 7)


def test_box_score_filter() -> None:
    # Above the binarisation threshold everywhere, but a mean probability of 0.45.
    prob = _blob_map((64, 128), [(30, 20, 40, 10, 0.45)])
    assert len(db_boxes(prob, binarize=0.3, box_threshold=0.5, unclip_ratio=1.6)) == 0
    assert len(db_boxes(prob, binarize=0.3, box_threshold=0.4, unclip_ratio=1.6)) == 1


def test_too_thin_region_is_dropped() -> None:
    prob = _blob_map((64, 128), [(30, 20, 40, 2, 0.9)])
    assert len(db_boxes(prob, 0.3, 0.5, 1.6, min_side=3.0)) == 0


def test_tilted_line_keeps_its_angle() -> None:
    prob = np.zeros((200, 200), dtype=np.float32)
    corners = cv2.boxPoints(((100.0, 100.0), (80.0, 16.0), 20.0))
    cv2.fillPoly(prob, [np.round(corners).astype(np.int32)], 0.9)
    (rect,) = db_boxes(prob, 0.3, 0.5, 0.0)
    assert abs(rect[4]) == pytest.approx(20.0, abs=2.0)
    assert rect[2] / rect[3] == pytest.approx(80 / 16, rel=0.15)


def test_map_must_be_two_dimensional() -> None:
    with pytest.raises(ValueError, match=re.escape("expected a 2-D probability map, got shape (1, 8, 8)")):
        db_boxes(np.zeros((1, 8, 8), np.float32), 0.3, 0.5, 1.6)


def test_merge_lines_joins_fragments_on_one_line_only() -> None:
    boxes = np.array(
        [
            [10.0, 10.0, 30.0, 10.0],  # left half of a plate
            [44.0, 11.0, 30.0, 10.0],  # right half, 4 px further on: joined
            [10.0, 40.0, 30.0, 10.0],  # the line below: kept apart
            [300.0, 10.0, 30.0, 10.0],  # far along the same row: kept apart
        ]
    )
    merged, scores = merge_lines(boxes, np.array([0.9, 0.8, 0.7, 0.6]), max_gap=0.5)
    assert len(merged) == 3
    order = np.argsort(merged[:, 0] + 1000 * merged[:, 1])
    assert merged[order[0]] == pytest.approx([10.0, 10.0, 64.0, 11.0])
    assert scores[order[0]] == pytest.approx(0.9)


# Regions from maps (the model is loaded but these maps are synthetic) -------------------------


def test_line_becomes_plate_grown_around_it(detector: PlateDetector) -> None:
    fine = _blob_map((96, 160), [(40, 40, 40, 10, 0.9)])
    coarse = np.zeros((64, 96), dtype=np.float32)
    # The frame is twice the fine map in each direction.
    (region,) = detector.regions_from_maps([fine, coarse], 320, 192)
    d = 40 * 10 * detector.unclip_ratio / (2 * 50)
    lw, lh = 2 * (40 + 2 * d), 2 * (10 + 2 * d)
    pad, factor = detector.grow
    assert region.cls == "plate" and region.shape == "box"
    assert (region.w, region.h) == pytest.approx((lw + pad * lh, factor * lh))
    assert (region.x + region.w / 2, region.y + region.h / 2) == pytest.approx((2 * 59.5 + 1, 2 * 44.5 + 1))
    assert region.score == pytest.approx(0.9)


def test_each_pass_keeps_its_own_text_sizes(detector: PlateDetector) -> None:
    tall = _blob_map((480, 640), [(100, 100, 300, 80, 0.9)])  # 80 px kernel: > max_line once unclipped
    small = _blob_map((480, 640), [(100, 100, 40, 6, 0.9)])  # well under coarse_min_line
    empty = np.zeros((480, 640), dtype=np.float32)
    assert detector.regions_from_maps([tall, empty], 640, 480) == []
    assert len(detector.regions_from_maps([empty, tall], 640, 480)) == 1
    assert len(detector.regions_from_maps([small, empty], 640, 480)) == 1
    assert detector.regions_from_maps([empty, small], 640, 480) == []


def test_steep_and_sentence_long_lines_are_not_plates(detector: PlateDetector) -> None:
    steep = np.zeros((200, 200), dtype=np.float32)
    corners = cv2.boxPoints(((100.0, 100.0), (80.0, 12.0), 60.0))
    cv2.fillPoly(steep, [np.round(corners).astype(np.int32)], 0.9)
    sentence = _blob_map((200, 400), [(20, 100, 360, 8, 0.9)])
    empty = np.zeros((100, 100), dtype=np.float32)
    assert detector.regions_from_maps([steep, empty], 200, 200) == []
    assert detector.regions_from_maps([sentence, empty], 400, 200) == []


# Input checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "shown"),
    [
        (np.zeros((32, 32, 3), np.float32), "float32 (32, 32, 3)"),
        (np.zeros((32, 32), np.uint8), "uint8 (32, 32)"),
        (np.zeros((32, 32, 4), np.uint8), "uint8 (32, 32, 4)"),
    ],
)
def test_rejects_bad_frames(detector: PlateDetector, frame: np.ndarray, shown: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"expected a BGR uint8 frame of shape (H, W, 3), got {shown}")):
        detector.detect(frame)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 1.0}, "plate threshold must be in (0, 1), got 1.0"),
        ({"input_side": 1000}, "plate input_side must be a positive multiple of 32, got 1000"),
        ({"coarse_side": 0}, "plate coarse_side must be a positive multiple of 32, got 0"),
        ({"grow": (0.5, 0.9)}, "plate grow must be (pad >= 0, factor >= 1), got (0.5, 0.9)"),
    ],
)
def test_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        PlateDetector(**kwargs)


def test_maps_must_match_passes(detector: PlateDetector) -> None:
    with pytest.raises(ValueError, match=re.escape("expected 2 probability maps, got 1")):
        detector.regions_from_maps([np.zeros((32, 32), np.float32)], 32, 32)


# The real model on real plates ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("set_name", "image"), REAL)
def test_labelled_plates_are_covered(detector: PlateDetector, set_name: str, image: str) -> None:
    boxes = json.loads((DATA / set_name / "annotations.json").read_text())[image]
    frame = cv2.imread(str(DATA / set_name / "images" / image), cv2.IMREAD_COLOR)
    assert frame is not None
    regions = detector.detect(frame)
    assert all(r.cls == "plate" for r in regions)
    mask = coverage_mask(regions, frame.shape[1], frame.shape[0])
    for x, y, w, h in boxes:
        covered = mask[y : y + h, x : x + w].mean()
        assert covered >= 0.8, f"{image}: plate {[x, y, w, h]} only {covered:.0%} covered"


def test_network_input_is_the_frame_normalised_with_imagenet_statistics_channel_by_channel() -> None:
    """``_blob`` is ``(x / 255 - mean) / std`` of each BGR channel, NCHW."""
    from redaction.plates import _MEAN, _STD, _blob

    frame = np.random.default_rng(1).integers(0, 256, (77, 131, 3), np.uint8)
    blob = _blob(frame, (131, 77), 0.0)
    expected = ((frame.astype(np.float64) / 255 - _MEAN) / _STD).transpose(2, 0, 1)[None]
    assert blob.shape == (1, 3, 77, 131) and blob.dtype == np.float32 and blob.flags.c_contiguous
    assert np.abs(blob - expected).max() < 1e-5


def test_the_rewritten_model_is_the_shipped_one_in_what_onnxruntime_fuses() -> None:
    """The hard-swishes, the scalar affines after convolutions and after hard-swishes, the residual
    gates' Adds and the head's bias Adds and first normalisation are gone from the graph that runs, and on a real dashcam frame its probability map is the export's to
    float rounding; the rewritten file shipped in redaction/models is what the rewrite makes of
    the installed model."""
    import onnx

    from redaction.detector import create_session
    from redaction.fusion import FUSED_MODEL, fuse, source_model
    from redaction.plates import _blob, det_model, input_size

    assert det_model() == FUSED_MODEL.read_bytes()  # the installed rapidocr is the one it was built from
    graph = onnx.load_from_string(det_model()).graph
    ops = [n.op_type for n in graph.node]
    assert "Div" not in ops and ops.count("HardSigmoid") == 26  # 10 were there before, 8 are residual gates now
    assert ops.count("Clip") == 8  # each residual gate's: 1 + HardSigmoid, fused into its convolution
    assert ops.count("Mul") == 34  # one a hard-swish or a gate: no scalar affine is left (there were 58)
    assert ops.count("Add") == 3 and ops.count("BatchNormalization") == 2  # the head's folded into its deconvolutions
    frame = cv2.imread(str(DATA / "plates_romania_dashcam" / "images" / REAL[0][1]), cv2.IMREAD_COLOR)
    blob = _blob(frame, input_size(frame.shape[1], frame.shape[0], 960), 0.0)
    exported, fused, rebuilt = (create_session(model, 1).run(None, {"x": blob})[0]
                                for model in (source_model(), det_model(), fuse(source_model())))
    assert exported.max() > 0.9  # there is text to find
    assert np.abs(exported - fused).max() < 1e-4
    assert np.array_equal(fused, rebuilt)


def test_loading_the_plate_model_imports_neither_onnx_nor_rapidocr() -> None:
    """onnx (with ml_dtypes) took a second of every start-up that loaded the plate detector, rapidocr
    (which ships the weights; shapely and its OCR pipeline) a quarter of one."""
    import subprocess
    import sys

    code = ("import sys; from redaction.plates import det_model; from redaction.fusion import FUSED_SHA256; "
            "import hashlib; "
            "assert hashlib.sha256(det_model()).hexdigest() == FUSED_SHA256; "
            "print('onnx' in sys.modules, 'rapidocr_onnxruntime' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False False"


@pytest.mark.parametrize("damage", ["other source", "missing", "damaged"])
def test_a_plate_model_not_built_from_the_installed_one_is_rewritten_at_start_up(damage, tmp_path, monkeypatch,
                                                                                  caplog) -> None:
    from redaction import fusion, plates

    good = fusion.FUSED_MODEL.read_bytes()
    if damage == "other source":
        monkeypatch.setattr(fusion, "FUSED_FROM", "0" * 64)
    else:
        monkeypatch.setattr(fusion, "FUSED_MODEL", tmp_path / "fused.onnx")
        if damage == "damaged":
            (tmp_path / "fused.onnx").write_bytes(good[: len(good) // 2])
    plates.det_model.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="redaction.plates"):
            model = plates.det_model()
    finally:
        plates.det_model.cache_clear()
    assert "rewriting" in caplog.text
    assert model != fusion.source_model() and len(model) == len(good)  # rewritten, not the raw export


def test_a_known_plate_looked_at_again_runs_only_the_pass_that_can_find_it(detector, monkeypatch) -> None:
    """A sweep-scale look for known plates of given heights skips the pass whose line sizes cannot be
    theirs: a small plate on a real 720p frame is found again by the fine pass alone; for text too
    tall for the fine pass only the coarse pass runs; without heights, both."""
    frame = cv2.imread(str(DATA / "plates_openalpr_us" / "images" / REAL[5][1]), cv2.IMREAD_COLOR)
    plate = min((r for r in detector.detect(frame) if r.score >= 0.9), key=lambda r: r.h)
    assert plate.h < 20
    x, y, w, h = (int(v) for v in plate.box)
    crop = (max(0, x - w), max(0, y - h), 3 * w, 3 * h)
    widths = []
    run = detector._session.run
    monkeypatch.setattr(detector._session, "run",
                        lambda names, feed: widths.append(feed["x"].shape[3]) or run(names, feed))
    fine, coarse = (side / max(frame.shape[:2]) for side in detector.sides)

    found = detector.detect_boxes(frame, [crop], sweep=True, heights=(plate.h / 1.5, plate.h * 1.5))
    assert widths == [32 * round(crop[2] * fine / 32)]
    assert (iou_matrix(np.array([plate.box]), np.array([r.box for r in found])) > 0).any()
    widths.clear()
    detector.detect_boxes(frame, [crop], sweep=True, heights=(300.0, 500.0))
    assert widths == [32 * round(crop[2] * coarse / 32)]
    widths.clear()
    detector.detect_boxes(frame, [crop], sweep=True)
    assert len(widths) == 2
