"""Sealed region records: byte-exact round trips, binding, and a known-answer vector."""

import dataclasses
import hashlib
import hmac
import os

import numpy as np
import pytest

from keys.record import Header, Record, RecordError, open_record, seal, track_key

DATA_KEY = bytes(range(32))
HEADER = Header("lobby", 7, 120, 4_800_000, 3, "face", (10, 20, 4, 3), 2)


def pixels(h=3, w=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_round_trip_is_byte_exact_and_lossless():
    key = track_key(DATA_KEY, "lobby", 7, 3)
    original = pixels()
    record = seal(key, HEADER, original)
    data = record.to_bytes()
    parsed, used = Record.from_bytes(data + b"next record")
    assert used == len(data) and parsed == record and parsed.to_bytes() == data
    assert np.array_equal(open_record(key, parsed), original)
    at_offset, used = Record.from_bytes(b"previous" + data + b"next", 8)  # in place inside a segment
    assert used == len(data) and at_offset == record
    with pytest.raises(RecordError, match="truncated"):
        Record.from_bytes(b"previous" + data, 8, 8 + len(data) - 1)


def _hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 with the standard library's HMAC: an independent reference for the derivation."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()  # no salt: HashLen zero bytes
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm, counter = okm + block, counter + 1
    return okm[:length]


def test_track_key_is_hkdf_sha256_over_the_documented_info():
    info = b'privacy-gateway track key v1\x00{"camera":"lobby","segment":7,"track":3}'
    assert track_key(DATA_KEY, "lobby", 7, 3) == _hkdf_sha256(DATA_KEY, info)
    assert track_key(DATA_KEY, "lobby", 7, 3).hex() == KNOWN_TRACK_KEY


def test_known_answer():
    """Fixed key, nonce and pixels: the record bytes must never change for format version 1."""
    key = track_key(DATA_KEY, "lobby", 7, 3)
    record = seal(key, HEADER, np.arange(36, dtype=np.uint8).reshape(3, 4, 3), nonce=b"\x00" * 12)
    data = record.to_bytes()
    assert data[:4] == b"PGR1"
    assert data[8 : 8 + int.from_bytes(data[4:8], "big")] == (
        b'{"box":[10,20,4,3],"camera":"lobby","class":"face","codec":"raw-bgr24","frame":120,'
        b'"policy":2,"pts_us":4800000,"segment":7,"track":3,"v":1}'
    )
    assert hashlib.sha256(data).hexdigest() == KNOWN_SHA256


KNOWN_TRACK_KEY = "6c1ab047b8ae5b032d4ce15b6269e93a934488c051fcd3a6b4295831b5e8b741"
KNOWN_SHA256 = "93f1dc40a9ee3422eed1105f617b85c85f38be8b36772823b2a8130541692f94"


@pytest.mark.parametrize(
    "field, value",
    [("camera", "garage"), ("segment", 8), ("frame", 121), ("pts_us", 4_800_001), ("track", 4),
     ("cls", "plate"), ("box", (11, 20, 4, 3)), ("policy", 3)],
)
def test_every_bound_field_is_checked(field, value):
    key = track_key(DATA_KEY, "lobby", 7, 3)
    record = seal(key, HEADER, pixels())
    moved = Record(dataclasses.replace(HEADER, **{field: value}), record.nonce, record.ciphertext)
    with pytest.raises(RecordError, match="^record does not open$"):
        open_record(key, moved)


def test_other_tracks_and_segments_have_other_keys():
    keys = {track_key(DATA_KEY, c, s, t) for c in ("lobby", "garage") for s in (7, 8) for t in (0, 3, 4)}
    assert len(keys) == 12
    record = seal(track_key(DATA_KEY, "lobby", 7, 3), HEADER, pixels())
    with pytest.raises(RecordError):
        open_record(track_key(DATA_KEY, "lobby", 7, 4), record)
    with pytest.raises(RecordError):
        open_record(track_key(os.urandom(32), "lobby", 7, 3), record)


def test_flipped_bits_and_truncation_are_detected():
    key = track_key(DATA_KEY, "lobby", 7, 3)
    data = seal(key, HEADER, pixels()).to_bytes()
    for position in (len(data) - 1, len(data) - 20):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        record, _ = Record.from_bytes(bytes(damaged))
        with pytest.raises(RecordError):
            open_record(key, record)
    for cut in (3, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(RecordError, match="malformed|magic"):
            Record.from_bytes(data[:cut])
    head = data[8 : 8 + int.from_bytes(data[4:8], "big")]
    loose = head.replace(b'"box":[10,20,4,3]', b'"box":[10,20,4, 3]')
    with pytest.raises(RecordError, match="canonical"):
        Record.from_bytes(b"PGR1" + len(loose).to_bytes(4, "big") + loose + data[8 + len(head):])


def test_shape_mismatch_refused():
    with pytest.raises(ValueError, match="do not match box"):
        seal(track_key(DATA_KEY, "lobby", 7, 3), HEADER, pixels(4, 4))
