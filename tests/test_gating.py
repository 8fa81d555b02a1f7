"""Motion-gated detection (redaction/motion.py, redaction/gating.py): changed boxes, sweep slices, still
masks, and region-of-interest detection equal to whole-frame detection where they overlap."""

import cv2
import numpy as np
import pytest

from redaction import Analyzer, Frame, StreamRedactor, parse_policy
from redaction.gating import GatedDetection, Plan, still, tiles
from redaction.motion import MotionGate, area, inside, merge
from redaction.regions import Region, coverage_mask, iou_matrix


def noise(seed: int = 0, shape=(360, 640, 3)) -> np.ndarray:
    """A textured scene: random 10x10-pixel patches (two seeds differ almost everywhere)."""
    cells = np.random.default_rng(seed).integers(0, 256, (shape[0] // 10, shape[1] // 10, 3), np.uint8)
    return cv2.resize(cells, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def drift(image: np.ndarray, levels: int) -> np.ndarray:
    """``image`` with its dark pixels ``levels`` grey levels brighter and its bright ones darker (light
    that changes slowly: under 16 levels a frame is no change to the motion gate)."""
    return np.where(image < 128, image.astype(int) + levels, image.astype(int) - levels).astype(np.uint8)


def test_first_frame_is_all_change_then_only_what_moved():
    gate = MotionGate(scale=0.25, threshold=16, pad=8)
    frame = noise()
    assert gate.changed(frame) is None  # nothing to compare with
    assert gate.changed(frame.copy()) == []
    moved = frame.copy()
    moved[100:140, 200:260] = 255 - moved[100:140, 200:260]
    (box,) = gate.changed(moved)
    x, y, w, h = box
    assert x <= 200 and y <= 100 and x + w >= 260 and y + h >= 140  # the change, padded
    assert w * h < 0.1 * 640 * 360
    assert gate.changed(cv2.resize(moved, (320, 180))) is None  # another size: no reference


def test_small_flicker_is_not_change():
    gate = MotionGate(threshold=16)
    frame = noise(1)
    gate.changed(frame)
    flicker = np.clip(frame.astype(int) + np.random.default_rng(2).integers(-6, 7, frame.shape), 0, 255).astype(np.uint8)
    assert gate.changed(flicker) == []


def test_merge_joins_overlapping_boxes_and_inside_measures_cover():
    assert merge([(0, 0, 10, 10), (5, 5, 10, 10), (30, 30, 5, 5)]) == [(0, 0, 15, 15), (30, 30, 5, 5)]
    assert area([(0, 0, 15, 15), (30, 30, 5, 5)]) == 250
    assert inside((0, 0, 10, 10), [(0, 0, 5, 10)]) == pytest.approx(0.5)
    assert inside((0, 0, 10, 10), [(20, 20, 5, 5)]) == 0.0


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080), (768, 576), (176, 144)])
def test_sweep_tiles_cover_the_frame_so_that_anything_up_to_the_overlap_is_whole_in_one(size):
    width, height = size
    rng = np.random.default_rng(7)
    for tile, overlap, slack in (((640, 384), 64, 1.25), ((512, 320), 128, 1.0), ((512, 320), 128, 1.25)):
        found = tiles(width, height, tile, overlap, slack)
        for x, y, w, h in found:
            assert w <= slack * tile[0] and h <= slack * tile[1] and x >= 0 and y >= 0
            assert x + w <= width and y + h <= height
        for _ in range(500):  # any box up to the overlap across, anywhere: inside one tile
            bw, bh = rng.integers(1, min(overlap, width, height) + 1, 2)
            bx, by = rng.integers(0, width - bw + 1), rng.integers(0, height - bh + 1)
            assert any(x <= bx and y <= by and bx + bw <= x + w and by + bh <= y + h for x, y, w, h in found)


def test_sweep_tiles_may_grow_a_little_rather_than_add_a_row():
    """1280x720 in face tiles of at most 640x384 takes nine tiles (2.4 times the frame); grown by up
    to a quarter, four do. Without slack, tiles keep their size (plates: 512x320, twelve)."""
    assert len(tiles(1280, 720, (640, 384), 64)) == 9
    found = tiles(1280, 720, (640, 384), 64, 1.25)
    assert len(found) == 4 and sum(w * h for *_, w, h in found) < 1.2 * 1280 * 720
    plates = tiles(1280, 720, (512, 320), 128)
    assert len(plates) == 12 and {(w, h) for *_, w, h in plates} == {(512, 320)}


class Scripted:
    """A face detector that answers from a script: whole-frame and box detection alike, by frame number."""

    classes = ("face",)

    def __init__(self, script):
        self.script, self.calls = script, []

    def _found(self, image):
        return list(self.script.get(int(image[0, 0, 0]), []))

    def detect(self, image):
        self.calls.append(("whole", int(image[0, 0, 0])))
        return self._found(image)

    def detect_boxes(self, image, boxes, sweep=False, heights=None):
        self.calls.append(("sweep" if sweep else "boxes", int(image[0, 0, 0])))
        return [r for r in self._found(image) if inside(r.box, boxes) > 0]

    def roi_finest(self, width, height):
        return True


class Coarse(Scripted):
    """A detector whose changed-region pass finds nothing that a whole-frame pass finds (a plate
    detector reading changed regions at native size, where the whole frame is upscaled)."""

    def __init__(self, script, finest):
        super().__init__(script)
        self.finest = finest

    def detect_boxes(self, image, boxes, sweep=False, heights=None):
        found = super().detect_boxes(image, boxes, sweep)
        return found if sweep else []

    def roi_finest(self, width, height):
        return self.finest


POLICY = parse_policy({"classes": {"plate": {"enabled": False}, "face": {"margin": 0.0}},
                       "detection": {"stride": 1, "persist": 0.1, "sweep": {"face": 100.0},
                                     "motion": {"pad": 4, "max_area": 0.5}}})


def scene(number: int, walker_at: int | None = None) -> np.ndarray:
    image = noise(5)
    if walker_at is not None:
        image[200:260, walker_at : walker_at + 30] = 250
    image[0, 0, 0] = number  # the frame's number, for the script
    return image


def test_a_still_face_keeps_its_mask_after_detection_stops_and_loses_it_only_when_its_pixels_change():
    face = Region("face", 100, 50, 30, 30, 0.9)
    detector = Scripted({0: [face]})  # found once, at the start, never again
    stream = StreamRedactor(Analyzer(POLICY, {"face": detector}))
    masked = {}
    for number in range(1, 12):
        walker = 300 + 20 * number if number < 8 else None  # someone walks past elsewhere, then leaves
        frame = scene(number, walker)
        if number >= 10:
            frame[50:80, 100:130] = 0  # the face's own pixels change (the person leaves)
        if number == 1:
            first = scene(0)
            masked.update({d.frame.index: d.regions for d in stream.push(Frame(0, 0.0, first))})
        masked.update({d.frame.index: d.regions for d in stream.push(Frame(number, number / 10, frame))})
    # a stream's second look also reads the whole frame (tests/test_engine.py: it looks twice before it releases)
    assert detector.calls[0] == ("whole", 0) and detector.calls[1:3] == [("boxes", 1), ("whole", 1)]
    assert all(kind == "boxes" for kind, _ in detector.calls[3:])
    for number in range(0, 10):  # unchanged pixels: masked although never detected again
        assert any(r.box == face.box for r in masked[number]), number
    assert masked[11] == []  # its pixels changed and the detection that looked there found nothing


@pytest.mark.parametrize("finest", [False, True])
def test_a_still_sign_beside_a_path_keeps_its_mask_while_people_walk_past_it(finest):
    """Someone walks past a sign, close enough that the padded changed box takes the sign in, but
    never over it: the sign's own pixels stay those it had when found, so it keeps its mask,
    although no look finds it again (before, the changed box decided: looked at there and not
    found, it was released while people walked by). The control, ``finest``: a class read more
    closely in a changed box than in the whole frame (faces) is taken as gone when not found."""
    sign = Region("face", 300, 170, 40, 20, 0.9)
    detector = Coarse({0: [sign]}, finest)  # found once, at the start, never again
    policy = parse_policy({"classes": {"plate": {"enabled": False}, "face": {"margin": 0.0}},
                           "detection": {"stride": 1, "persist": 0.1, "sweep": {"face": 100.0},
                                         "motion": {"pad": 24, "max_area": 0.5}}})
    stream = StreamRedactor(Analyzer(policy, {"face": detector}))
    gate = MotionGate(policy.detection.motion.scale, policy.detection.motion.threshold, policy.detection.motion.pad)
    gate.changed(scene(0))
    masked, engulfed = {}, []
    for number in range(12):
        walker = 270 + 6 * number if 2 <= number < 10 else None  # rows 200-260, below the sign
        frame = scene(number, walker)
        masked.update({d.frame.index: d.regions for d in stream.push(Frame(number, number / 10, frame))})
        if number and inside(sign.box, gate.changed(frame)) >= 0.8:
            engulfed.append(number)
    assert len(engulfed) >= 5, engulfed  # the changed boxes took the sign in on most frames
    kept = [any(r.box == sign.box for r in masked[number]) for number in range(12)]
    assert kept == [True] * 12 if not finest else not all(kept), kept


@pytest.mark.parametrize("finest", [False, True])
def test_a_known_region_whose_pixels_change_is_looked_at_again_at_whole_frame_scale(finest):
    """Someone walks over a sign that the changed-region pass (less close than the whole frame)
    cannot find: the sign is looked at again at whole-frame scale and keeps its mask; without
    that second look it would be released (the control, ``finest``: no second look is made)."""
    sign = Region("face", 300, 195, 40, 40, 0.9)
    detector = Coarse({n: [sign] for n in range(12)}, finest)
    stream = StreamRedactor(Analyzer(POLICY, {"face": detector}))
    masked = {}
    for number in range(12):
        frame = scene(number, 280 + 6 * number if number else None)  # the walker crosses the sign
        masked.update({d.frame.index: d.regions for d in stream.push(Frame(number, number / 10, frame))})
    looked_again = [n for kind, n in detector.calls if kind == "sweep"]
    if finest:
        assert looked_again == [] and not any(r.box == sign.box for r in masked[3])
    else:
        assert looked_again and all(any(r.box == sign.box for r in masked[n]) for n in range(11)), looked_again


def test_a_track_mostly_outside_the_changed_boxes_is_kept_and_one_inside_them_is_not():
    tracks = [Region("face", 0, 0, 20, 20, 0.9, track=1), Region("face", 100, 100, 20, 20, 0.9, track=2)]
    assert [t.track for t in still(tracks, [], [(95, 95, 40, 40)])] == [1]
    found_again = [Region("face", 2, 2, 20, 20, 0.8)]
    assert still(tracks, found_again, [(95, 95, 40, 40)]) == []  # the detection is that track: not kept twice
    moved = [Region("face", 13, 0, 20, 20, 0.8)]  # the same face a little further on (IoU 0.23)
    assert still(tracks, moved, [(95, 95, 40, 40)]) == []  # its old box is not kept as a second mask


def test_too_much_change_falls_back_to_the_whole_frame_and_the_sweep_covers_it_in_time():
    """No reference: the whole frame at full quality; too much changed: the whole frame too, each
    class at the cheaper of its two scales. A light that flickers below the motion gate's threshold
    changes every pixel a little from frame to frame: the sweep reads the whole frame within its period."""
    detector = Scripted({})
    policy = parse_policy({"classes": {"plate": {"enabled": False}},
                           "detection": {"sweep": {"face": 1.0}, "motion": {"max_area": 0.3}}})
    gating = GatedDetection(Analyzer(policy, {"face": detector}), policy.detection.motion, policy.detection.sweep)
    assert gating.plan(scene(0), 0.0).whole  # the first frame
    plans = [gating.plan(drift(scene(n, 100 + n), 10 * n), n / 10) for n in range(1, 12)]
    assert not any(p.whole for p in plans)
    covered = np.zeros((360, 640), bool)
    for plan in plans[:10]:  # within the sweep's second
        for x, y, w, h in plan.sweep.get("face", []):
            covered[y : y + h, x : x + w] = True
    assert covered.all()
    cut = gating.plan(noise(9), 1.2)  # everything changed (a cut): the whole frame, at whole-frame scale
    assert not cut.whole and cut.changed == [(0, 0, 640, 360)] and cut.coarse == ("face",)


def test_box_detection_finds_what_whole_frame_detection_finds(data):
    """On a real group photo and a real dashcam frame, detecting inside one box that covers the frame
    at whole-frame scale (a sweep slice) gives the whole-frame detections."""
    policy = parse_policy({"detection": {"threads": 1}})
    analyzer = Analyzer(policy)
    face_image = cv2.imread(str(sorted((data / "faces_dlib_examples" / "images").glob("*.jpg"))[0]))
    plate_image = cv2.imread(str(sorted((data / "plates_romania_dashcam" / "images").glob("*"))[0]))
    for image, cls in ((face_image, "face"), (plate_image, "plate")):
        h, w = image.shape[:2]
        whole = [r for r in analyzer.detect(image) if r.cls == cls]
        boxes = analyzer.detect_boxes(image, [(0, 0, w, h)], sweep=True, classes=(cls,))
        assert len(whole) >= 1 and len(boxes) == len(whole), cls
        a = np.array([r.box for r in whole], np.float64)
        b = np.array([r.box for r in boxes], np.float64)
        assert (iou_matrix(a, b).max(axis=1) > 0.95).all(), cls


def test_changed_region_detection_finds_the_faces_in_it(data):
    """Faces inside a changed box are found at roi_scale; faces outside it are not looked for."""
    policy = parse_policy({"classes": {"plate": {"enabled": False}}, "detection": {"threads": 1}})
    analyzer = Analyzer(policy)
    image = cv2.imread(str(sorted((data / "faces_dlib_examples" / "images").glob("*.jpg"))[0]))
    confident = [r for r in analyzer.detect(image) if r.score >= 0.5]
    target = confident[0]
    x, y, w, h = (int(v) for v in target.box)
    box = (max(0, x - 20), max(0, y - 20), w + 40, h + 40)
    found = analyzer.detect_boxes(image, [box])
    assert any(iou_matrix(np.array([target.box]), np.array([r.box]))[0, 0] > 0.5 for r in found)
    assert all(inside(r.box, [box]) > 0 for r in found)


def test_the_sweep_is_spread_over_its_period_one_slice_at_a_time():
    """Four slices (720p in face tiles) in 0.8 s with a detection every 20 ms: one every 0.2 s, not
    four frames in a row (a burst that would push those detections past the hold-back)."""
    policy = parse_policy({"classes": {"plate": {"enabled": False}}, "detection": {"sweep": {"face": 0.8}}})
    gating = GatedDetection(Analyzer(policy, {"face": Scripted({})}), policy.detection.motion, policy.detection.sweep)
    still_frame = np.full((720, 1280, 3), 90, np.uint8)
    assert gating.plan(still_frame, 0.0).whole
    # light that brightens a grey level a frame: each slice has something to read
    given = {n: gating.plan(drift(still_frame, n), n * 0.02).sweep["face"] for n in range(1, 140)}
    times = [n * 0.02 for n, slices in given.items() if slices]
    assert all(len(slices) <= 1 for slices in given.values())
    # the first round starts 0.8 s after the whole frame, and gives its four slices within its 0.8 s
    assert times[0] == pytest.approx(0.8) and sum(0.8 <= t < 1.6 for t in times) == 4
    assert all(0.18 <= b - a <= 0.22 for a, b in zip(times, times[1:])), times


def test_a_mask_follows_a_face_that_drifts_too_slowly_to_count_as_motion():
    """A slow pan: the face moves one pixel per detection frame, never enough between two of them
    to count as motion, but 40 pixels in all. Its mask is kept while its pixels are those it had
    when found; once they drift, it is looked at again and the mask follows the face."""
    texture = noise(3, (40, 40, 3))

    def frame(number: int) -> np.ndarray:
        image = np.full((360, 640, 3), 120, np.uint8)
        image[100:140, 100 + number : 140 + number] = texture
        image[0, 0, 0] = number
        return image

    def face(number: int) -> Region:
        return Region("face", 100 + number, 100, 40, 40, 0.9)

    class Follows(Scripted):
        def _found(self, image):
            return [face(int(image[0, 0, 0]))]

    detector = Follows({})
    stream = StreamRedactor(Analyzer(POLICY, {"face": detector}))
    masked = {}
    for number in range(41):
        masked.update({d.frame.index: d.regions for d in stream.push(Frame(number, number / 10, frame(number)))})
    assert "boxes" in {kind for kind, _ in detector.calls[1:]}  # looked at again
    for number in range(41):
        covered = coverage_mask(masked[number], 640, 360)[100:140, 100 + number : 140 + number].mean()
        assert covered >= 0.8, (number, masked[number])


@pytest.mark.parametrize("finest", [False, True])
def test_a_sweep_tile_is_read_again_only_if_its_pixels_changed_since_it_was_last_read(finest):
    """After the whole frame was read, a sweep round over pixels that have not changed since reads
    nothing; a patch that brightened too little for the motion gate is change enough, and so is
    someone who walked in and stands still: then the whole tile is read, not the changed part
    alone (a detector's answer on a still sign depends on the scene around it). Unless the class
    reads changed boxes at least as closely as the sweep does (faces, ``finest``): then the walker's
    pixels were read where they changed, and the sweep has nothing new to read."""
    policy = parse_policy({"classes": {"plate": {"enabled": False}}, "detection": {"sweep": {"face": 0.8}}})
    gating = GatedDetection(Analyzer(policy, {"face": Coarse({}, finest)}), policy.detection.motion,
                            policy.detection.sweep)
    assert gating.plan(scene(0), 0.0).whole
    rounds = {}
    for n in range(1, 26):  # three rounds of the sweep (one tile at 640x360), a detection every 0.1 s
        frame = scene(0, 100 + 8 * min(n - 17, 3) if n >= 17 else None)  # walks in at 1.7 s, then stands
        if n >= 4:
            frame[300:316, 500:516] = np.clip(frame[300:316, 500:516].astype(int) + 12, 0, 255)
        plan = gating.plan(frame, n / 10)
        assert n >= 17 or plan.changed == []  # the patch: too little change for the motion gate
        assert n < 17 or n > 20 or plan.changed  # the walker: motion
        if plan.sweep["face"]:
            rounds[n] = plan.sweep["face"]
    # rounds start at 0.8, 1.6 (nothing changed: nothing read) and 2.4 s (the float sum may make it 2.5)
    assert 8 in rounds and all(tiles == [(0, 0, 640, 360)] for tiles in rounds.values())
    assert set(rounds) == {8} if finest else (len(rounds) == 2 and {24, 25} & set(rounds)), rounds


def test_a_detection_frame_s_looks_start_largest_first_and_their_regions_keep_the_plan_s_order():
    """The looks of a plan are model calls of different sizes; the analyzer starts the largest
    first (so that two threads sharing them out finish together), and the regions come back in the
    plan's order (changed boxes, sweep slices, known regions again) whatever order they ran in."""
    policy = parse_policy({"classes": {"face": {"margin": 0.0}, "plate": {"margin": 0.0}},
                           "detection": {"stride": 1}})
    calls = []

    class Recording:
        def __init__(self, cls):
            self.classes = (cls,)

        def detect_boxes(self, image, boxes, sweep=False, heights=None):
            calls.append((self.classes[0], boxes[0]))
            return [Region(self.classes[0], *boxes[0], 0.9)]

        def roi_finest(self, width, height):
            return True

    analyzer = Analyzer(policy, {"face": Recording("face"), "plate": Recording("plate")})
    gating = GatedDetection(analyzer, policy.detection.motion, policy.detection.sweep)
    image = np.zeros((720, 1280, 3), np.uint8)
    small, large, medium, tiny = (0, 0, 40, 40), (100, 100, 400, 300), (600, 0, 200, 200), (900, 500, 10, 10)
    plan = Plan(False, [small], sweep={"plate": [large]}, recheck={"face": [medium], "plate": [tiny]})
    regions = gating.run(image, plan)
    assert calls == [("plate", large), ("face", medium), ("face", small), ("plate", small), ("plate", tiny)]
    assert [(r.cls, r.box) for r in regions] == [("face", small), ("plate", small), ("plate", large),
                                                 ("face", medium), ("plate", tiny)]
