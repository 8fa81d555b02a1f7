"""Unmask as a library: selection, overlap, which keys are derived, and the order of steps."""

import base64
import json

import numpy as np
import pytest

import keys.unmask as unmask_module
from gateway.files import image_comment, write_image
from keys.directory import KeyDirectory
from keys.identity import PrivateIdentity
from keys.seal import Sealed, Sealer
from keys.unmask import Selection, Unmask, UnmaskError
from keys.wrap import Grant


@pytest.fixture()
def sealed(tmp_path, sealing_store):
    """Two frames, three overlapping tracks: 1 and 2 faces, 3 a plate; originals kept for comparison."""
    directory = KeyDirectory.init(tmp_path / "keys")
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    olga = PrivateIdentity.generate("olga", ["privacy-officer"])
    directory.add(ivan.public)
    directory.add(olga.public)
    store = sealing_store(tmp_path / "vault", directory)
    grants = {"face": Grant(("investigator",)), "plate": Grant(("privacy-officer",))}
    rng = np.random.default_rng(3)
    originals = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(2)]
    boxes = {1: (10, 10, 20, 20), 2: (20, 20, 20, 20), 3: (50, 30, 20, 10)}
    classes = {1: "face", 2: "face", 3: "plate"}
    # kept bit-exact, so that what is restored and what stays redacted can be told apart to the pixel
    policy = {"version": 2, "storage": {"originals": "lossless"}}
    with Sealer(store, directory.signer, "lobby", policy, grants, directory.identities) as sealer:
        for frame, image in enumerate(originals):
            sealer.add(frame, frame * 100_000, [Sealed(t, classes[t], b, image[b[1] : b[1] + b[3], b[0] : b[0] + b[2]])
                                                for t, b in boxes.items()])
    redacted = [np.zeros_like(o) for o in originals]
    return store, sealer.ref, originals, redacted, boxes, (ivan, olga)


def restore_all(job, redacted):
    job.authorize("C-9", "test", "memory", True)
    out = [r.copy() for r in redacted]
    for index, image in enumerate(out):
        job.restore(index, index * 0.1, image, tolerance_us=1000)
    return out


def test_one_track_derives_only_its_key_and_leaves_overlaps_redacted(sealed, monkeypatch, openbao):
    store, ref, originals, redacted, boxes, (ivan, _) = sealed
    derived = []
    real = unmask_module.shared_track_key
    monkeypatch.setattr(unmask_module, "shared_track_key", lambda key, share, camera, segment, cls, track:
                        derived.append(track) or real(key, share, camera, segment, cls, track))
    before = len(openbao.decrypts())
    job = Unmask(store, ref, Selection(tracks=frozenset({1})), [ivan])
    out = restore_all(job, redacted)
    assert set(derived) == {1}
    # the co-signer was asked for exactly one share, naming track 1 (OpenBao's own audit log says so)
    asked = openbao.decrypts()[before:]
    assert job.shares_asked == 1 and len(asked) == 1
    assert json.loads(base64.b64decode(asked[0]["data"]["context"])) == {
        "camera": "lobby", "segment": 1, "class": "face", "track": 1}
    for original, image in zip(originals, out):
        assert np.array_equal(image[10:20, 10:30], original[10:20, 10:30])  # track 1 outside track 2's box
        assert np.array_equal(image[20:30, 10:20], original[20:30, 10:20])
        assert not image[20:30, 20:30].any()  # the overlap with track 2 stays as redacted
        assert not image[30:40, 20:40].any() and not image[30:40, 50:70].any()


def test_selection_by_class_and_time(sealed):
    store, ref, originals, redacted, boxes, (ivan, olga) = sealed
    job = Unmask(store, ref, Selection(classes=frozenset({"plate"}), start_us=50_000), [olga])
    out = restore_all(job, redacted)
    assert job.selected == 1 and job.restored == 1
    assert not out[0].any()
    assert np.array_equal(out[1][30:40, 50:70], originals[1][30:40, 50:70])
    assert out[1][:30].sum() == 0
    with pytest.raises(UnmaskError, match="ivan may not unmask plate regions"):
        Unmask(store, ref, Selection(classes=frozenset({"plate"})), [ivan])


def test_nothing_is_decrypted_before_the_audit_entry(sealed):
    store, ref, _, redacted, _, (ivan, _) = sealed
    job = Unmask(store, ref, Selection(classes=frozenset({"face"})), [ivan])
    with pytest.raises(RuntimeError, match="authorize"):
        job.restore(0, 0.0, redacted[0].copy(), 1000)
    with pytest.raises(UnmaskError, match="case id and a reason"):
        job.authorize(" ", "why", "memory", True)


def test_a_frame_whose_time_does_not_match_its_records_is_refused(sealed):
    store, ref, _, redacted, _, (ivan, _) = sealed
    job = Unmask(store, ref, Selection(classes=frozenset({"face"})), [ivan])
    job.authorize("C-9", "test", "memory", True)
    with pytest.raises(UnmaskError, match="does not match its sealed records"):
        job.restore(1, 0.5, redacted[1].copy(), tolerance_us=1000)  # frame 1 was sealed at 0.1 s


def test_vault_reference_rides_in_png_and_jpeg(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"a{suffix}"
        write_image(path, image, comment="privacy-gateway-vault:{}")
        assert image_comment(path) == "privacy-gateway-vault:{}"
    import cv2

    assert np.array_equal(cv2.imread(str(tmp_path / "a.png")), image)
    write_image(tmp_path / "b.png", image)
    assert image_comment(tmp_path / "b.png") is None
    from gateway.files import MediaError

    with pytest.raises(MediaError, match="only PNG and JPEG"):
        write_image(tmp_path / "c.webp", image, comment="x")


def test_a_track_lost_and_linked_again_lists_its_time_ranges(tmp_path, sealing_store):
    """A subject the tracker linked back after a gap is one track with two time ranges."""
    from keys.unmask import recording_tracks

    directory = KeyDirectory.init(tmp_path / "keys")
    directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    store = sealing_store(tmp_path / "vault", directory)
    pixels = np.zeros((10, 10, 3), np.uint8)
    grants = {"face": Grant(("investigator",))}
    with Sealer(store, directory.signer, "lobby", {"version": 2}, grants, directory.identities) as sealer:
        for frame in [*range(0, 10), *range(20, 25)]:  # 10 fps: 0.0-0.9 s, then 2.0-2.4 s
            sealer.add(frame, frame * 100_000, [Sealed(4, "face", (0, 0, 10, 10), pixels)])
            if frame < 5:
                sealer.add(frame, frame * 100_000, [Sealed(5, "face", (20, 0, 10, 10), pixels)])
    listed = {t.track: t for t in recording_tracks(store, sealer.ref)}
    assert listed[4].ranges == ((0.0, 0.9), (2.0, 2.4)) and listed[4].frames == 15
    assert listed[5].ranges == ((0.0, 0.4),)


def test_the_subject_at_a_point_and_time(sealed):
    from keys.unmask import tracks_at

    store, ref, *_ = sealed
    assert tracks_at(store, ref, 0.1, 12, 12) == [("face", 1)]
    assert tracks_at(store, ref, 0.12, 25, 25) == [("face", 1), ("face", 2)]  # the overlap: both
    assert tracks_at(store, ref, 0.0, 55, 35) == [("plate", 3)]
    assert tracks_at(store, ref, 0.0, 5, 5) == []
    with pytest.raises(UnmaskError, match="nothing was sealed near 3.00 s"):
        tracks_at(store, ref, 3.0, 12, 12)
