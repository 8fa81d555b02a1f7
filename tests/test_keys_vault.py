"""Vault segments: written and read back, every tamper case detected, and restoring pixels."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from vault_files import key_file

from keys.audit import AuditLog
from keys.clips import ClipCoder
from keys.identity import PrivateIdentity
from keys.objects import LocalObjects
from keys.record import Placement, open_record, shared_track_key
from keys.store import VaultStore
from keys.vault import SegmentHeader, VaultError, key_context, read_segment
from keys.wrap import Grant, UnwrapError, unwrap_key

GRANTS = {"face": Grant(("investigator",)), "plate": Grant(("privacy-officer",), quorum=2)}


@pytest.fixture(scope="module")
def people():
    return [PrivateIdentity.generate("ivan", ["investigator"]), PrivateIdentity.generate("olga", ["privacy-officer"]),
            PrivateIdentity.generate("omar", ["privacy-officer"]), PrivateIdentity.generate("vera", ["viewer"])]


def header(number: int, previous: str = "0" * 64) -> SegmentHeader:
    return SegmentHeader("lobby", number, 1, "ab" * 32, "rec-1", "2026-11-22T00:00:00+00:00", previous)


def store_at(root, gateway, people=()) -> VaultStore:
    """A local vault's store without its anchor: this file tests segments, not vault.json."""
    return VaultStore(LocalObjects(root), root / "segments", AuditLog(root / "audit.log"), gateway,
                      [p.public for p in people])


def writer(store, number, people, signer, previous="0" * 64):
    return store.open_segment(header(number, previous), GRANTS, [p.public for p in people], signer)


def add(writer_, frame, pts_us, track, cls, box, pixels):
    """One frame of one track as a clip of its own, coded losslessly (so that it restores exactly)."""
    codec, size, coded = ClipCoder("lossless").encode([pixels])
    writer_.add_clip(track, cls, (Placement(frame, pts_us, box),), codec, size, coded, share(cls, track))


def share(cls, track):
    """A track's share and a stand-in for the co-signer's ciphertext of it: segments are tested
    here, not OpenBao (test_keys_unmask and test_escrow seal and open through the real one)."""
    return hashlib.sha256(f"{cls}/{track}".encode()).digest(), f"test:{cls}:{track}"


def key_of(data_key, segment, cls, track):
    return shared_track_key(data_key, share(cls, track)[0], "lobby", segment, cls, track)


def first(record):
    return record.header.placements[0].frame


@pytest.fixture()
def vault(tmp_path, people):
    signer = Ed25519PrivateKey.generate()
    store = store_at(tmp_path, signer.public_key(), people)
    rng = np.random.default_rng(1)
    crops = {}
    previous = "0" * 64
    for number in (1, 2, 3):
        writer_ = writer(store, number, people, signer, previous)
        for frame in range(4):
            for track, cls in ((1, "face"), (2, "face"), (3, "plate")):
                pixels = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
                crops[(number, frame, track)] = pixels
                add(writer_, frame, frame * 40_000, track, cls, (10 * track, 5, 5, 6), pixels)
        previous = writer_.close()
    return store, tmp_path, crops


def test_segments_verify_and_restore_exactly(vault, people):
    store, root, crops = vault
    chain = list(store.verify_chain("lobby"))
    assert [s.number for s in chain] == [1, 2, 3]
    segment = chain[1]
    assert all(r.header.packed for r in segment.records)  # the placements packed, not rows of JSON
    wraps = store.wraps("lobby", segment)
    data_key = unwrap_key(wraps["face"], [people[0]], key_context("lobby", 2, "face"))
    key = key_of(data_key, 2, "face", 1)
    for record in segment.records:
        if record.header.track == 1:
            assert np.array_equal(open_record(key, record)[0], crops[(2, first(record), 1)])
    # the investigator cannot open plates (2 of the officers needed), the viewer nothing
    with pytest.raises(UnwrapError):
        unwrap_key(wraps["plate"], [people[0], people[1]], key_context("lobby", 2, "plate"))
    with pytest.raises(UnwrapError):
        unwrap_key(wraps["face"], [people[3]], key_context("lobby", 2, "face"))
    plate_key = unwrap_key(wraps["plate"], [people[1], people[2]], key_context("lobby", 2, "plate"))
    plate = next(r for r in segment.records if r.header.cls == "plate")
    assert np.array_equal(open_record(key_of(plate_key, 2, "plate", 3), plate)[0], crops[(2, first(plate), 3)])


def test_altered_byte_detected(vault):
    store, root, _ = vault
    path = root / "segments" / "lobby" / "00000002.pgv"
    data = bytearray(path.read_bytes())
    data[200] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(VaultError, match="00000002.pgv: contents altered"):
        list(store.verify_chain("lobby"))


def test_truncated_segment_detected(vault):
    store, root, _ = vault
    path = root / "segments" / "lobby" / "00000003.pgv"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(VaultError, match="00000003.pgv: (truncated|malformed|signature)"):
        list(store.verify_chain("lobby"))


def test_deleted_segment_detected(vault):
    store, root, _ = vault
    (root / "segments" / "lobby" / "00000002.pgv").unlink()
    with pytest.raises(VaultError, match="00000003.pgv: out of sequence"):
        list(store.verify_chain("lobby"))


def test_swapped_segments_detected(vault):
    store, root, _ = vault
    a, b = root / "segments" / "lobby" / "00000001.pgv", root / "segments" / "lobby" / "00000002.pgv"
    shutil.move(a, root / "x")
    shutil.move(b, a)
    shutil.move(root / "x", b)
    with pytest.raises(VaultError, match="00000001.pgv: out of sequence"):
        list(store.verify_chain("lobby"))


def test_signed_by_another_gateway_detected(vault):
    _, root, _ = vault
    with pytest.raises(VaultError, match="00000001.pgv: signature does not verify"):
        list(store_at(root, Ed25519PrivateKey.generate().public_key()).verify_chain("lobby"))


def test_key_file_shredded_or_swapped(vault):
    store, root, _ = vault
    segment = store.segment("lobby", 1)
    one = key_file(root / "keys" / "lobby", 1)
    one.write_bytes(key_file(root / "keys" / "lobby", 2).read_bytes())
    with pytest.raises(VaultError, match="does not belong to its segment"):
        store.wraps("lobby", segment)
    one.unlink()
    assert not store.has_key_file("lobby", 1) and store.has_key_file("lobby", 2)
    with pytest.raises(VaultError, match="no key file"):
        store.wraps("lobby", segment)
    # the segment itself still verifies after its keys are gone
    assert [s.number for s in store.verify_chain("lobby")] == [1, 2, 3]


def test_crashed_segment_is_recovered_with_its_whole_records(tmp_path, people):
    signer = Ed25519PrivateKey.generate()
    store = store_at(tmp_path, signer.public_key(), people)
    first_writer = writer(store, 1, people, signer)
    pixels = np.arange(90, dtype=np.uint8).reshape(6, 5, 3)
    for frame in range(3):
        add(first_writer, frame, frame * 40_000, 1, "face", (0, 0, 5, 6), pixels)
    first_writer.abort()  # the process died: no trailer, a half-written record at the end
    partial = tmp_path / "segments" / "lobby" / "00000001.pgv.partial"  # where it always was
    assert store.partial_segments("lobby") == [1] and store.segment_numbers("lobby") == []
    with open(partial, "ab") as tail:
        tail.write(b"PGR3\x00\x00\x01")
    kept = store.recover_partial("lobby", 1, signer)
    assert kept == 3 and not partial.exists() and store.partial_segments("lobby") == []
    (segment,) = store.verify_chain("lobby")
    assert segment.recovered and len(segment.records) == 3
    wraps = store.wraps("lobby", segment)
    key = key_of(unwrap_key(wraps["face"], [people[0]], key_context("lobby", 1, "face")), 1, "face", 1)
    assert all(np.array_equal(open_record(key, r)[0], pixels) for r in segment.records)


def test_finished_object_wins_over_a_stale_partial(tmp_path, people):
    """A crash after the finished segment was kept but before its partial was removed."""
    signer = Ed25519PrivateKey.generate()
    store = store_at(tmp_path, signer.public_key(), people)
    first_writer = writer(store, 1, people, signer)
    add(first_writer, 0, 0, 1, "face", (0, 0, 5, 6), np.zeros((6, 5, 3), dtype=np.uint8))
    first_writer.close("2026-11-22T00:00:10+00:00")
    finished = tmp_path / "segments" / "lobby" / "00000001.pgv"
    partial = tmp_path / "segments" / "lobby" / "00000001.pgv.partial"
    assert finished.exists() and not partial.exists()
    kept = finished.read_bytes()
    partial.write_bytes(kept[: len(kept) // 2])  # the stale partial, as the crash left it (any state)
    assert store.partial_segments("lobby") == [1]
    assert store.recover_partial("lobby", 1, signer) is None  # nothing recovered, nothing to log
    assert not partial.exists() and finished.read_bytes() == kept
    (segment,) = store.verify_chain("lobby")
    assert not segment.recovered and segment.ended == "2026-11-22T00:00:10+00:00"


def test_a_finished_segment_whose_upload_failed_is_kept_byte_for_byte(tmp_path, people):
    """The partial is the whole signed segment (its upload failed). An S3 store may still complete
    that upload later (SeaweedFS holds writes while its master is away): recovering must put the same
    bytes, or whichever lands last would break the chain the next segment continues."""
    signer = Ed25519PrivateKey.generate()
    store = store_at(tmp_path, signer.public_key(), people)
    first_writer = writer(store, 1, people, signer)
    add(first_writer, 0, 0, 1, "face", (0, 0, 5, 6), np.zeros((6, 5, 3), dtype=np.uint8))
    add(first_writer, 1, 40_000, 1, "face", (0, 0, 5, 6), np.ones((6, 5, 3), dtype=np.uint8))
    first_writer.close("2026-11-22T00:00:10+00:00")
    finished = tmp_path / "segments" / "lobby" / "00000001.pgv"
    uploaded = finished.read_bytes()
    finished.rename(tmp_path / "segments" / "lobby" / "00000001.pgv.partial")  # as a failed upload leaves it
    assert store.recover_partial("lobby", 1, signer) == 2
    assert finished.read_bytes() == uploaded
    (segment,) = store.verify_chain("lobby")
    assert not segment.recovered and segment.ended == "2026-11-22T00:00:10+00:00"


def test_a_key_file_of_an_earlier_failed_try_landing_late_lands_beside_the_segment_s_own(tmp_path, people):
    """A sealer whose key-file write failed leaves a write the store may still complete (SeaweedFS's S3
    gateway while its master is away), even after the next sealer wrote segment 1's key file anew, with
    other data keys, and closed the segment: each try's key file has a name of its own, so the late
    one replaces nothing; the segment unmasks, and shredding it takes both."""
    signer = Ed25519PrivateKey.generate()
    store = store_at(tmp_path, signer.public_key(), people)
    pixels = np.arange(90, dtype=np.uint8).reshape(6, 5, 3)
    writer(store, 1, people, signer).abort()  # the earlier try
    stale = key_file(tmp_path / "keys" / "lobby", 1)
    earlier = stale.read_bytes()
    stale.unlink()  # its write failed: nothing kept, as far as the sealer knows
    (tmp_path / "segments" / "lobby" / "00000001.pgv.partial").unlink()  # (a failed key-file write leaves none)
    second = writer(store, 1, people, signer)
    add(second, 0, 0, 1, "face", (0, 0, 5, 6), pixels)
    second.close("2026-11-22T00:00:10+00:00")
    stale.write_bytes(earlier)  # the earlier try's write, completed late
    assert len(list((tmp_path / "keys" / "lobby").glob("*.keys"))) == 2
    (segment,) = store.verify_chain("lobby")
    wraps = store.wraps("lobby", segment)
    key = key_of(unwrap_key(wraps["face"], [people[0]], key_context("lobby", 1, "face")), 1, "face", 1)
    assert np.array_equal(open_record(key, segment.records[0])[0], pixels)
    store.shred_key_file("lobby", 1)
    assert not store.has_key_file("lobby", 1) and not list((tmp_path / "keys" / "lobby").glob("*.keys"))


def test_a_crashed_segment_is_recovered_with_the_key_file_its_header_names(tmp_path, people):
    """An earlier try's key file landed late beside the one the crashed writer kept: recovery signs the
    partial with the digest of the one its (checkpointed) header names, and its records unmask."""
    signer = Ed25519PrivateKey.generate()
    store = store_at(tmp_path, signer.public_key(), people)
    pixels = np.arange(90, dtype=np.uint8).reshape(6, 5, 3)
    writer(store, 1, people, signer).abort()  # the earlier try: its key file stays, landed late
    (tmp_path / "segments" / "lobby" / "00000001.pgv.partial").unlink()
    second = writer(store, 1, people, signer)
    add(second, 0, 0, 1, "face", (0, 0, 5, 6), pixels)
    second.abort()  # the process died
    assert len(list((tmp_path / "keys" / "lobby").glob("*.keys"))) == 2
    assert store.recover_partial("lobby", 1, signer) == 1
    (segment,) = store.verify_chain("lobby")
    assert segment.keys_sha256 == segment.header.keys
    wraps = store.wraps("lobby", segment)
    key = key_of(unwrap_key(wraps["face"], [people[0]], key_context("lobby", 1, "face")), 1, "face", 1)
    assert np.array_equal(open_record(key, segment.records[0])[0], pixels)


def test_segments_whose_key_files_have_the_older_name_still_read_recover_and_restore(tmp_path):
    """Version 3 segments sealed before headers named their key file's digest (tests/data/
    segments-v3-unnamed-keys, written by the code of then) have ``<n>.keys``: a finished one still
    reads, a partial one still recovers, and their clips restore."""
    source = Path(__file__).resolve().parent / "data" / "segments-v3-unnamed-keys"
    shutil.copytree(source / "vault", tmp_path / "vault")
    signer = Ed25519PrivateKey.from_private_bytes((source / "gateway.key").read_bytes())
    ivan = PrivateIdentity.load(source / "ivan.identity", "fixture passphrase v3")
    store = store_at(tmp_path / "vault", signer.public_key(), [ivan])
    assert store.recover_partial("lobby", 2, signer) == 1
    chain = list(store.verify_chain("lobby"))
    assert [(s.number, s.header.keys) for s in chain] == [(1, ""), (2, "")]
    restored = []
    for segment in chain:
        data_key = unwrap_key(store.wraps("lobby", segment)["face"], [ivan], key_context("lobby", segment.number, "face"))
        restored += [int(open_record(key_of(data_key, segment.number, "face", 1), r)[0][0, 0, 0]) for r in segment.records]
    assert restored == [10, 11, 12]
    store.shred_key_file("lobby", 1)
    assert not store.has_key_file("lobby", 1) and store.has_key_file("lobby", 2)


def test_a_segment_header_naming_its_key_file_by_anything_but_a_digest_is_refused():
    """The header's ``keys`` names an object (``<n>.<16 hex>.keys``): only a SHA-256 may be there."""
    for keys in ("../../gateway", "AB" * 32, "ab" * 31):
        with pytest.raises(ValueError, match="not a SHA-256"):
            SegmentHeader.from_json({**header(1).to_json(), "keys": keys})
    assert SegmentHeader.from_json({**header(1).to_json(), "keys": "ab" * 32}).keys == "ab" * 32


def test_partial_without_its_key_file_is_not_recovered(tmp_path, people):
    signer = Ed25519PrivateKey.generate()
    store = store_at(tmp_path, signer.public_key(), people)
    writer(store, 1, people, signer).abort()
    key_file(tmp_path / "keys" / "lobby", 1).unlink()
    with pytest.raises(VaultError, match=r"00000001.pgv.partial: its key file 00000001\.[0-9a-f]{16}\.keys is missing; "
                                         "cannot recover"):
        store.recover_partial("lobby", 1, signer)
    assert store.partial_segments("lobby") == [1] and store.segment_numbers("lobby") == []


def test_a_segment_read_back_from_its_bytes_is_identical(vault):
    store, root, _ = vault
    data = (root / "segments" / "lobby" / "00000002.pgv").read_bytes()
    segment = read_segment(data, "00000002.pgv", store.gateway)
    assert segment == store.segment("lobby", 2)
    # every record re-serialises to the bytes it was read from, each followed by its checkpoint
    assert all(r.to_bytes() + b"PGVC" in data for r in segment.records)
    with pytest.raises(VaultError, match="x.pgv: not a vault segment"):
        read_segment(b"nope", "x.pgv", store.gateway)


def test_nothing_leaves_the_store_as_a_path(vault):
    store, _, _ = vault
    for gone in ("root", "camera_dir", "segment_path", "keys_path"):
        assert not hasattr(store, gone)
    assert store.cameras() == ["lobby"] and store.segment_numbers("lobby") == [1, 2, 3]
    with pytest.raises(ValueError, match="camera id"):
        store.segment_numbers("../keys")
