"""One object, one region: duplicates of a frame merged, neighbours kept apart."""

import av
import numpy as np

from redaction import Analyzer, Frame, Policy, StreamRedactor
from redaction.regions import Region, iou_matrix, merge_duplicates


def face(x, y, w=12, h=14, score=0.5, track=None):
    return Region("face", x, y, w, h, score, "box", track)


def overlapping_pairs(regions):
    by_class = {}
    for r in regions:
        by_class.setdefault(r.cls, []).append(r.box)
    pairs = 0
    for boxes in by_class.values():
        b = np.array(boxes, np.float64)
        pairs += int(np.triu(iou_matrix(b, b) > 0.3, 1).sum())
    return pairs


def test_boxes_a_few_pixels_apart_become_one_region_covering_both():
    merged = merge_duplicates([face(100, 50, score=0.3), face(102, 52, score=0.6, track=7), face(99, 51, score=0.2)])
    assert len(merged) == 1
    (one,) = merged
    assert one.score == 0.6 and one.track == 7  # the best box's score and track
    assert one.box == (99, 50, 15, 16)  # the union: everything each box covered stays covered


def test_a_box_inside_another_is_the_same_object():
    merged = merge_duplicates([face(100, 50, 40, 48, score=0.4), face(110, 60, 12, 14, score=0.9)])
    assert [r.box for r in merged] == [(100, 50, 40, 48)]


def test_neighbouring_faces_and_other_classes_stay_apart():
    touching = [face(100, 50), face(110, 50), face(100, 63)]  # 2 px overlaps: three people
    plate = Region("plate", 100, 50, 12, 14, 0.9)
    merged = merge_duplicates([*touching, plate])
    assert sorted(r.box for r in merged if r.cls == "face") == sorted(r.box for r in touching)
    assert [r for r in merged if r.cls == "plate"] == [plate]


def test_a_large_face_passing_in_front_of_another_is_not_merged_with_it():
    """Two 90 px faces, the front one covering a third of the one behind: their boxes overlap by IoU 0.2
    as two jittery boxes of one small face do, but their centres are most of a side apart (the
    synthetic crossing of tests/identity_support.py, at 1.8 s). Merged, the face behind becomes part
    of the front one's subject, and the tracker follows the union."""
    front, behind = face(450, 328, 91, 113, score=0.86), face(398, 322, 86, 107, score=0.74)
    assert iou_matrix(np.array([front.box]), np.array([behind.box]))[0, 0] > 0.2
    assert sorted(r.box for r in merge_duplicates([front, behind])) == sorted([front.box, behind.box])
    # merging again what a merge gave (the engine merges the passes' regions, then the masks kept)
    twice = merge_duplicates(merge_duplicates([front, face(453, 330, 89, 110, score=0.85), behind]))
    assert len(twice) == 2
    # the same overlap between two boxes of an 8 px face is one face found twice, a few pixels off
    assert len(merge_duplicates([face(385, 183, 8, 12, score=0.26), face(385, 180, 6, 7, score=0.12)])) == 1


def test_a_small_face_found_twice_a_few_pixels_apart_is_one_region():
    """On the walkway clip an 8-15 px head is often found twice: the face and a 6 px part of it below
    or beside it, 4-9 px apart. The two overlap by a third or more of the smaller box, by IoU well
    under 0.2: two regions and two tracks, masked twice on the frames between detections."""
    for a, b in [(face(388, 178, 13, 14, score=0.49), face(385, 187, 6, 7, score=0.1)),
                 (face(635, 248, 6, 8, score=0.41), face(639, 248, 7, 8, score=0.17))]:
        assert iou_matrix(np.array([a.box]), np.array([b.box]))[0, 0] < 0.2
        (one,) = merge_duplicates([a, b])
        assert one.score == a.score
    # two small heads side by side, their boxes touching: two people
    assert len(merge_duplicates([face(100, 50, 8, 10), face(107, 50, 8, 10)])) == 2


def test_boxes_join_the_best_box_not_each_other_through_a_chain():
    # b is the same face as a, c is the same as b but not as a: c stays its own region
    a, b, c = face(100, 50, score=0.9), face(104, 50, score=0.5), face(110, 50, score=0.4)
    assert iou_matrix(np.array([a.box]), np.array([c.box]))[0, 0] < 0.3
    merged = merge_duplicates([c, b, a])
    assert len(merged) == 2 and merged[0].box == (100, 50, 16, 14) and merged[1].box == c.box


def test_overlapping_crops_find_a_real_face_once(data):
    """The same face seen through two overlapping crops (a changed area and a sweep tile) is one region."""
    from gateway.files import read_image

    image = read_image(data / "faces_dlib_examples" / "images" / "2008_002079.jpg")
    analyzer = Analyzer(Policy.model_validate({"classes": {"plate": {"enabled": False}}}))
    faces = [r for r in analyzer.detect(image) if r.score >= 0.5]
    assert faces
    x, y, w, h = (int(v) for v in faces[0].box)
    crops = [(max(0, x - w), max(0, y - h), 3 * w, 3 * h), (max(0, x - w // 2), max(0, y - h // 2), 2 * w, 2 * h)]
    found = analyzer.detect_boxes(image, crops)
    assert overlapping_pairs(found) == 0
    assert any(iou_matrix(np.array([r.box]), np.array([faces[0].box]))[0, 0] > 0.5 for r in found)


def test_the_bundled_walkway_has_no_duplicate_masks_on_detection_frames():
    """On the bundled sample (seven walking people, small faces) with the built-in default's
    detection, the regions of each detection frame are one per object (before the fix: 138 overlapping pairs per
    frame, every face masked and sealed several times)."""
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "config" / "samples" / "vtest-10s.mp4"
    with av.open(str(sample)) as container:
        images = [f.to_ndarray(format="bgr24") for _, f in zip(range(40), container.decode(video=0))]
    # no margin, so that the regions are the boxes merged (a margin makes neighbours overlap)
    policy = Policy.model_validate({"classes": {"face": {"margin": 0.0}, "plate": {"margin": 0.0}}})
    stream = StreamRedactor(Analyzer(policy), rate=10.0)
    decided = [d for i, image in enumerate(images) for d in stream.push(Frame(i, i / 10, image))]
    decided += stream.flush()
    detection_frames = [d for d in decided if d.frame.index % stream.stride == 0]
    regions = sum(len(d.regions) for d in detection_frames)
    assert regions > 5 * len(detection_frames)  # faces are found
    assert sum(overlapping_pairs(d.regions) for d in detection_frames) <= 0.02 * regions
