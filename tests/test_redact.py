"""Policy methods applied to real pixels, and the originals kept for sealing."""

import cv2
import numpy as np
import pytest

from redaction.policy import parse_policy
from redaction.redact import redact_frame
from redaction.regions import Region, coverage_mask


@pytest.fixture(scope="module")
def photo(data):
    path = data / "extras_unannotated" / "face_recognition_two_people.jpg"
    return cv2.imread(str(path))


def regions():
    return [
        Region("face", 40, 30, 60, 70, 0.9, "ellipse"),
        Region("plate", 80, 60, 90, 24, 0.8, "box"),  # overlaps the face
        Region("face", 5, 5, 3, 3, 0.4, "box"),  # tiny
    ]


@pytest.mark.parametrize("method", ["blur", "pixelate", "solid"])
def test_every_method_changes_the_regions_and_nothing_else(photo, method):
    policy = parse_policy({"classes": {"face": {"method": method, "strength": 0.5}, "plate": {"method": method, "strength": 0.5}}})
    image = photo.copy()
    redact_frame(image, regions(), policy)
    h, w = image.shape[:2]
    mask = coverage_mask(regions(), w, h)
    assert np.array_equal(image[~mask], photo[~mask])
    for r in regions()[:2]:
        own = coverage_mask([r], w, h)
        assert (np.abs(image[own].astype(int) - photo[own]).sum(axis=1) > 0).mean() > 0.5


def test_copy_out_returns_the_originals_in_order_even_when_overlapping(photo):
    policy = parse_policy({})
    image = photo.copy()
    originals = redact_frame(image, regions(), policy, copy_out=True)
    assert len(originals) == 3
    for r, crop in zip(regions(), originals):
        x, y, w, h = (int(v) for v in r.box)
        assert np.array_equal(crop, photo[y:y + h, x:x + w])
        # writing the originals back restores the frame exactly
    for r, crop in zip(reversed(regions()), reversed(originals)):
        x, y, w, h = (int(v) for v in r.box)
        image[y:y + h, x:x + w] = crop
    assert np.array_equal(image, photo)


def test_strong_blur_removes_detail(photo):
    """A face blurred at the default strength keeps little of its high-frequency content."""
    face = Region("face", 150, 60, 120, 140, 0.9, "box")
    image = photo.copy()
    redact_frame(image, [face], parse_policy({}))
    x, y, w, h = (int(v) for v in face.box)

    def detail(a):
        grey = cv2.cvtColor(np.ascontiguousarray(a[y:y + h, x:x + w]), cv2.COLOR_BGR2GRAY).astype(float)
        return np.abs(cv2.Laplacian(grey, cv2.CV_64F)).mean()

    assert detail(image) < 0.1 * detail(photo)


def test_no_regions_no_change(photo):
    image = photo.copy()
    assert redact_frame(image, [], parse_policy({})) is None
    assert redact_frame(image, [], parse_policy({}), copy_out=True) == []
    assert np.array_equal(image, photo)
