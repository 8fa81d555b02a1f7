"""One person, one track: identities through crossings on a clip of real faces, and the IDF1 used to judge it."""

import pytest
from identity_support import crossing_clip, idf1, on_truth, switches, track_clip

from redaction import Policy

A, B = (10, 10, 20, 20), (100, 10, 20, 20)


def test_idf1_of_known_cases():
    truth = [{1: A, 2: B}] * 4
    assert idf1(truth, [{7: A, 8: B}] * 4) == 1.0
    # the tracks swap halfway: each identity is its best track on half its frames
    swapped = [{7: A, 8: B}] * 2 + [{8: A, 7: B}] * 2
    assert idf1(truth, swapped) == pytest.approx(0.5)
    # one identity split over two tracks: 6 of 8 boxes matched
    split = [{7: A, 8: B}] * 2 + [{7: A, 9: B}] * 2
    assert idf1(truth, split) == pytest.approx(0.75)
    # a false positive on every frame: 8 of 8 matched, 12 predicted
    assert idf1(truth, [{7: A, 8: B, 9: (300, 300, 20, 20)}] * 4) == pytest.approx(2 * 8 / 20)
    assert on_truth(truth, [{7: A, 9: (300, 300, 20, 20)}] * 4) == [{7: A}] * 4
    assert switches(truth, swapped) == {1: 1, 2: 1}
    # a face keeps its track while that still covers it, though another box fits it better for a frame
    # (the mask of a face passing behind it); a box matches one face at a time
    wide = (5, 5, 120, 30)
    assert switches(truth, [{7: A, 8: B}, {7: A, 8: B, 9: (9, 9, 22, 22)}, {7: A, 8: B}]) == {1: 0, 2: 0}
    assert switches(truth[:3], [{7: A, 8: B}, {8: wide}, {7: A, 8: B}]) == {1: 0, 2: 0}
    # a new box over both: one of them goes to it and back (two switches), the other is unmatched there
    assert switches(truth[:3], [{7: A, 8: B}, {9: wide}, {7: A, 8: B}]) == {1: 2, 2: 0}


@pytest.fixture(scope="module")
def clip(data):
    return crossing_clip(data)


def test_faces_keep_their_identity_through_crossings_and_occlusion(clip):
    """Two pairs of real faces (24 px and 90 px) cross, the later one passing over the earlier one,
    on a real street photo, through the default live path (motion-gated detection every 0.2 s,
    tracking, linking). The face hidden behind another comes out under its own track."""
    policy = Policy.model_validate({"classes": {"plate": {"enabled": False}}})
    predicted = track_clip(clip, policy)
    faces = on_truth(clip.truth, predicted)
    assert idf1(clip.truth, faces) >= 0.9
    assert len({track for frame in faces for track in frame}) <= 2 * len(clip.truth[0])
    assert max(switches(clip.truth, predicted).values()) <= 1  # one crossing per face: at most one switch
    # the large face that was behind the other: the track covering it before and after is one
    hidden = [i for i, frame in enumerate(clip.truth) if 3 not in frame]
    assert hidden, "the clip must hide face 3 for a while"

    def track_on(index):
        box = clip.truth[index][3]
        covering = on_truth([{3: box}], [predicted[index]])[0]
        return min(covering, key=lambda t: abs(covering[t][0] - box[0]))

    assert track_on(hidden[0] - 5) == track_on(hidden[-1] + 5)
