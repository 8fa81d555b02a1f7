"""Scene cuts between detection frames: found on real cuts, not on cameras that move or people who do."""

import cv2
import numpy as np
import pytest

from redaction.cuts import (
    Cut,
    CutDetector,
    histogram_distance,
    shifted_correlation,
    thumbnail,
)


def detection_frames(path, interval=0.2):
    capture = cv2.VideoCapture(str(path))
    stride = max(1, round(interval * capture.get(cv2.CAP_PROP_FPS)))
    index = 0
    while True:
        ok, image = capture.read()
        if not ok:
            return
        if index % stride == 0:
            yield index, image
        index += 1


def cuts_in(path):
    detector = CutDetector()
    return [index for index, image in detection_frames(path) if detector.check(image) is not None]


def test_a_shifted_picture_is_the_same_scene_and_another_picture_is_not():
    rng = np.random.default_rng(3)
    scene = cv2.GaussianBlur((rng.random((360, 640, 3)) * 255).astype(np.uint8), (31, 31), 0)
    scene = cv2.normalize(scene, None, 0, 255, cv2.NORM_MINMAX)
    panned = np.roll(scene, 40, axis=1)  # 6 % of the width
    other = 255 - scene[::-1]
    assert shifted_correlation(thumbnail(scene), thumbnail(panned)) > 0.8
    assert shifted_correlation(thumbnail(scene), thumbnail(other)) < 0.5
    assert histogram_distance(thumbnail(scene), thumbnail(scene)) == 0.0
    detector = CutDetector()
    assert [detector.check(i) for i in (scene, panned, other, other)] == [None, None, Cut(0), None]
    # a flat picture (a blanked frame) after another flat one of the same grey is no cut
    grey = np.full((360, 640, 3), 90, np.uint8)
    assert [detector.check(i) for i in (grey, grey)] == [Cut(0), None]


def test_a_cut_is_placed_among_the_frames_held_before_it_when_that_is_clear():
    rng = np.random.default_rng(4)
    a, b = (cv2.GaussianBlur((rng.random((360, 640, 3)) * 255).astype(np.uint8), (31, 31), 0) for _ in range(2))
    a, b = cv2.normalize(a, None, 0, 255, cv2.NORM_MINMAX), cv2.normalize(b, None, 0, 120, cv2.NORM_MINMAX)
    detector = CutDetector()
    detector.check(a)
    # the new scene's first frame is the third of the four frames held and the detection frame
    assert detector.check(b, [a, np.roll(a, 2, axis=1), b, b]) == Cut(2)
    detector.check(a)
    # a dissolve: every step alike, the cut's place is not clear
    blend = [cv2.addWeighted(a, 1 - f, b, f, 0) for f in (0.2, 0.4, 0.6, 0.8)]
    assert detector.check(b, blend) == Cut(None)


@pytest.mark.slow
def test_the_cuts_of_a_real_clip_are_found_and_a_walkway_has_none(data):
    # Hamilton's cuts are at frames 20, 82 and 211 (pts 1.52, 3.59 and 7.89 s: the stream starts at
    # 0.85 s); the detection frames 0.2 s apart (every 6th) that follow them are 24, 84 and 216
    assert cuts_in(data / "videos" / "short_hamilton_clip.mp4") == [24, 84, 216]
    assert cuts_in(data / "videos" / "opencv_vtest.avi") == []
    # a camera on a moving bus: everything moves, nothing cuts
    assert cuts_in(data / "videos" / "MOT17-13-SDP_raw_h264.mp4") == []
