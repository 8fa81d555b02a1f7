"""Vault segments: written and read back, every tamper case detected, and restoring pixels."""

import shutil

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys.identity import PrivateIdentity
from keys.record import open_record, track_key
from keys.vault import (
    SegmentHeader,
    SegmentWriter,
    VaultError,
    key_context,
    partial_path,
    read_segment,
    read_wraps,
    recover_partial,
    verify_camera,
)
from keys.wrap import Grant, UnwrapError, unwrap_key

GRANTS = {"face": Grant(("investigator",)), "plate": Grant(("privacy-officer",), quorum=2)}


@pytest.fixture(scope="module")
def people():
    return [PrivateIdentity.generate("ivan", ["investigator"]), PrivateIdentity.generate("olga", ["privacy-officer"]),
            PrivateIdentity.generate("omar", ["privacy-officer"]), PrivateIdentity.generate("vera", ["viewer"])]


def header(number: int, previous: str = "0" * 64) -> SegmentHeader:
    return SegmentHeader("lobby", number, 1, "ab" * 32, "rec-1", "2026-11-22T00:00:00+00:00", previous)


def writer(root, number, people, signer, previous="0" * 64) -> SegmentWriter:
    return SegmentWriter(root / "lobby" / f"{number:08d}.pgv", root / "keys" / f"{number:08d}.keys",
                         header(number, previous), GRANTS, [p.public for p in people], signer)


@pytest.fixture()
def vault(tmp_path, people):
    signer = Ed25519PrivateKey.generate()
    rng = np.random.default_rng(1)
    crops = {}
    previous = "0" * 64
    for number in (1, 2, 3):
        writer_ = writer(tmp_path, number, people, signer, previous)
        for frame in range(4):
            for track, cls in ((1, "face"), (2, "face"), (3, "plate")):
                pixels = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
                crops[(number, frame, track)] = pixels
                writer_.add(frame, frame * 40_000, track, cls, (10 * track, 5, 5, 6), pixels)
        previous = writer_.close()
    return tmp_path, signer.public_key(), crops


def test_segments_verify_and_restore_exactly(vault, people):
    root, gateway, crops = vault
    chain = list(verify_camera(root / "lobby", gateway))
    assert [s.number for s in chain] == [1, 2, 3]
    segment = chain[1]
    wraps = read_wraps(root / "keys" / "00000002.keys", gateway, segment.keys_sha256)
    data_key = unwrap_key(wraps["face"], [people[0]], key_context("lobby", 2, "face"))
    key = track_key(data_key, "lobby", 2, 1)
    for record in segment.records:
        if record.header.track == 1:
            assert np.array_equal(open_record(key, record), crops[(2, record.header.frame, 1)])
    # the investigator cannot open plates (2 of the officers needed), the viewer nothing
    with pytest.raises(UnwrapError):
        unwrap_key(wraps["plate"], [people[0], people[1]], key_context("lobby", 2, "plate"))
    with pytest.raises(UnwrapError):
        unwrap_key(wraps["face"], [people[3]], key_context("lobby", 2, "face"))
    plate_key = unwrap_key(wraps["plate"], [people[1], people[2]], key_context("lobby", 2, "plate"))
    plate = next(r for r in segment.records if r.header.cls == "plate")
    assert np.array_equal(open_record(track_key(plate_key, "lobby", 2, 3), plate), crops[(2, plate.header.frame, 3)])


def test_altered_byte_detected(vault):
    root, gateway, _ = vault
    path = root / "lobby" / "00000002.pgv"
    data = bytearray(path.read_bytes())
    data[200] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(VaultError, match="00000002.pgv: contents altered"):
        list(verify_camera(root / "lobby", gateway))


def test_truncated_segment_detected(vault):
    root, gateway, _ = vault
    path = root / "lobby" / "00000003.pgv"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(VaultError, match="00000003.pgv: (truncated|malformed|signature)"):
        list(verify_camera(root / "lobby", gateway))


def test_deleted_segment_detected(vault):
    root, gateway, _ = vault
    (root / "lobby" / "00000002.pgv").unlink()
    with pytest.raises(VaultError, match="00000003.pgv: out of sequence"):
        list(verify_camera(root / "lobby", gateway))


def test_swapped_segments_detected(vault):
    root, gateway, _ = vault
    a, b = root / "lobby" / "00000001.pgv", root / "lobby" / "00000002.pgv"
    shutil.move(a, root / "x")
    shutil.move(b, a)
    shutil.move(root / "x", b)
    with pytest.raises(VaultError, match="00000001.pgv: out of sequence"):
        list(verify_camera(root / "lobby", gateway))


def test_signed_by_another_gateway_detected(vault):
    root, _, _ = vault
    with pytest.raises(VaultError, match="00000001.pgv: signature does not verify"):
        list(verify_camera(root / "lobby", Ed25519PrivateKey.generate().public_key()))


def test_key_file_shredded_or_swapped(vault):
    root, gateway, _ = vault
    segment = read_segment(root / "lobby" / "00000001.pgv", gateway)
    shutil.copy(root / "keys" / "00000002.keys", root / "keys" / "00000001.keys")
    with pytest.raises(VaultError, match="does not belong to its segment"):
        read_wraps(root / "keys" / "00000001.keys", gateway, segment.keys_sha256)
    (root / "keys" / "00000001.keys").unlink()
    with pytest.raises(VaultError, match="no key file"):
        read_wraps(root / "keys" / "00000001.keys", gateway, segment.keys_sha256)
    # the segment itself still verifies after its keys are gone
    assert [s.number for s in verify_camera(root / "lobby", gateway)] == [1, 2, 3]


def test_crashed_segment_is_recovered_with_its_whole_records(tmp_path, people):
    signer = Ed25519PrivateKey.generate()
    first = writer(tmp_path, 1, people, signer)
    pixels = np.arange(90, dtype=np.uint8).reshape(6, 5, 3)
    for frame in range(3):
        first.add(frame, frame * 40_000, 1, "face", (0, 0, 5, 6), pixels)
    first.abort()  # the process died: no trailer, a half-written record at the end
    partial = partial_path(tmp_path / "lobby" / "00000001.pgv")
    with open(partial, "ab") as tail:
        tail.write(b"PGR1\x00\x00\x01")
    final, kept = recover_partial(partial, tmp_path / "keys" / "00000001.keys", signer)
    assert kept == 3 and not partial.exists()
    (segment,) = verify_camera(tmp_path / "lobby", signer.public_key())
    assert segment.recovered and len(segment.records) == 3
    wraps = read_wraps(tmp_path / "keys" / "00000001.keys", signer.public_key(), segment.keys_sha256)
    key = track_key(unwrap_key(wraps["face"], [people[0]], key_context("lobby", 1, "face")), "lobby", 1, 1)
    assert all(np.array_equal(open_record(key, r), pixels) for r in segment.records)
