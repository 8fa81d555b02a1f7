"""Sealed records: byte-exact round trips, binding, known-answer vectors for every version."""

import dataclasses
import hashlib
import hmac
import os

import numpy as np
import pytest

from keys.clips import FFV1, H264, ClipCoder
from keys.record import (
    RAW,
    Header,
    Placement,
    Record,
    RecordError,
    open_record,
    pack_placements,
    seal,
    shared_track_key,
    track_key,
)

DATA_KEY = bytes(range(32))
PLACEMENTS = (Placement(120, 4_800_000, (10, 20, 4, 3)), Placement(121, 4_840_000, (11, 20, 5, 3)))
SHARE = bytes(range(32, 64))  # the track's share, as the co-signer gives it back
#: a clip of track 3: two frames whose boxes differ, coded on a 16x16 canvas; the share as OpenBao encrypted it
HEADER = Header("lobby", 7, 3, "face", 2, PLACEMENTS, FFV1, (16, 16), share="vault:v1:c2hhcmU=")
#: version 2, clips before the co-signer: no share
HEADER_V2 = dataclasses.replace(HEADER, version=2, share="")
#: version 1, as vaults written before clips hold it: one frame, raw BGR
HEADER_V1 = Header("lobby", 7, 3, "face", 2, (Placement(120, 4_800_000, (10, 20, 4, 3)),), RAW, (4, 3), version=1)


def crops(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(p.box[3], p.box[2], 3), dtype=np.uint8) for p in PLACEMENTS]


def coded(seed=0) -> bytes:
    codec, size, data = ClipCoder("lossless").encode(crops(seed))
    assert (codec, size) == (FFV1, (16, 16))
    return data


def test_round_trip_is_byte_exact_and_lossless():
    key = shared_track_key(DATA_KEY, SHARE, "lobby", 7, "face", 3)
    record = seal(key, HEADER, coded())
    data = record.to_bytes()
    parsed, used = Record.from_bytes(data + b"next record")
    assert used == len(data) and parsed == record and parsed.to_bytes() == data
    restored = open_record(key, parsed)
    assert len(restored) == 2 and all(np.array_equal(a, b) for a, b in zip(restored, crops()))
    assert len(open_record(key, parsed, count=1)) == 1  # a time range decodes only what it needs
    at_offset, used = Record.from_bytes(b"previous" + data + b"next", 8)  # in place inside a segment
    assert used == len(data) and at_offset == record
    with pytest.raises(RecordError, match="truncated"):
        Record.from_bytes(b"previous" + data, 8, 8 + len(data) - 1)


def test_version_1_records_still_open():
    key = track_key(DATA_KEY, "lobby", 7, 3)
    pixels = crops()[0]
    data = seal(key, HEADER_V1, pixels.tobytes()).to_bytes()
    parsed, _ = Record.from_bytes(data)
    assert parsed.header == HEADER_V1 and data[:4] == b"PGR1"
    (restored,) = open_record(key, parsed)
    assert np.array_equal(restored, pixels)


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


def test_version_3_track_key_needs_both_secrets():
    info = b'privacy-gateway track key v3\x00{"camera":"lobby","class":"face","segment":7,"track":3}'
    key = shared_track_key(DATA_KEY, SHARE, "lobby", 7, "face", 3)
    assert key == _hkdf_sha256(DATA_KEY + SHARE, info)
    assert key.hex() == KNOWN_SHARED_TRACK_KEY
    record = seal(key, HEADER, coded())
    for data_key, share in ((DATA_KEY, os.urandom(32)), (os.urandom(32), SHARE)):  # either one alone opens nothing
        with pytest.raises(RecordError, match="^record does not open$"):
            open_record(shared_track_key(data_key, share, "lobby", 7, "face", 3), record)
    with pytest.raises(RecordError):
        shared_track_key(DATA_KEY, SHARE[:16], "lobby", 7, "face", 3)


def _header_bytes(data: bytes) -> bytes:
    return data[8 : 8 + int.from_bytes(data[4:8], "big")]


def test_known_answer_version_1():
    """Fixed key, nonce and pixels: the bytes of a version 1 record, as old vaults hold them."""
    key = track_key(DATA_KEY, "lobby", 7, 3)
    record = seal(key, HEADER_V1, np.arange(36, dtype=np.uint8).tobytes(), nonce=b"\x00" * 12)
    data = record.to_bytes()
    assert data[:4] == b"PGR1"
    assert _header_bytes(data) == (
        b'{"box":[10,20,4,3],"camera":"lobby","class":"face","codec":"raw-bgr24","frame":120,'
        b'"policy":2,"pts_us":4800000,"segment":7,"track":3,"v":1}'
    )
    assert hashlib.sha256(data).hexdigest() == KNOWN_SHA256_V1


def test_known_answer_version_2():
    """Fixed key, nonce and coded bytes: the bytes of a clip record must never change for version 2."""
    key = track_key(DATA_KEY, "lobby", 7, 3)
    data = seal(key, dataclasses.replace(HEADER_V2, codec=H264), bytes(range(200)), nonce=b"\x00" * 12).to_bytes()
    assert data[:4] == b"PGR2"
    assert _header_bytes(data) == (
        b'{"camera":"lobby","class":"face","codec":"h264-yuv444p","frames":[[120,4800000,10,20,4,3],'
        b'[121,4840000,11,20,5,3]],"policy":2,"segment":7,"size":[16,16],"track":3,"v":2}'
    )
    assert hashlib.sha256(data).hexdigest() == KNOWN_SHA256_V2
    assert Record.from_bytes(data)[0].header == dataclasses.replace(HEADER_V2, codec=H264)


def test_known_answer_version_3():
    """Fixed keys, nonce and coded bytes: the bytes of a clip record with its co-signer share."""
    key = shared_track_key(DATA_KEY, SHARE, "lobby", 7, "face", 3)
    data = seal(key, dataclasses.replace(HEADER, codec=H264), bytes(range(200)), nonce=b"\x00" * 12).to_bytes()
    assert data[:4] == b"PGR3"
    assert _header_bytes(data) == (
        b'{"camera":"lobby","class":"face","codec":"h264-yuv444p","frames":[[120,4800000,10,20,4,3],'
        b'[121,4840000,11,20,5,3]],"policy":2,"segment":7,"share":"vault:v1:c2hhcmU=","size":[16,16],"track":3,'
        b'"v":3}'
    )
    assert hashlib.sha256(data).hexdigest() == KNOWN_SHA256_V3


def test_known_answer_version_3_with_packed_placements():
    """Fixed keys, nonce and coded bytes: the bytes of a clip record as the sealer writes it since
    its placements are packed (:func:`pack_placements`; the string as this machine's zlib packed them:
    another zlib may pack them to other bytes, which read back the same), read back to the same header."""
    key = shared_track_key(DATA_KEY, SHARE, "lobby", 7, "face", 3)
    header = dataclasses.replace(HEADER, codec=H264, packed="eNr7wNjw4ySLiAYHG1PDRxYmBiYGAD9BBPw=")
    data = seal(key, header, bytes(range(200)), nonce=b"\x00" * 12).to_bytes()
    assert data[:4] == b"PGR3"
    assert _header_bytes(data) == (
        b'{"camera":"lobby","class":"face","codec":"h264-yuv444p","placements":"eNr7wNjw4ySLiAYHG1PDRxYmBiYGAD9BBPw=",'
        b'"policy":2,"segment":7,"share":"vault:v1:c2hhcmU=","size":[16,16],"track":3,"v":3}'
    )
    assert hashlib.sha256(data).hexdigest() == KNOWN_SHA256_V3_PACKED
    parsed = Record.from_bytes(data)[0]
    assert parsed.header == header and parsed.header.placements == PLACEMENTS


def test_packed_placements_round_trip_whatever_their_values():
    """Long clips, negative and large values (the packing is of differences, zigzag coded)."""
    rng = np.random.default_rng(3)
    for count in (1, 2, 60, 600):
        frames = np.cumsum(rng.integers(1, 4, count)) + 10**9
        rows = tuple(Placement(int(f), int(f) * 33_333 - 5, (int(rng.integers(-50, 4000)), int(rng.integers(-50, 3000)),
                                                             int(rng.integers(1, 900)), int(rng.integers(1, 900))))
                     for f in frames)
        header = dataclasses.replace(HEADER, placements=rows, size=(900, 900), packed=pack_placements(rows))
        assert Header.from_json(header.to_json()) == header


@pytest.mark.parametrize("packed, message", [
    ("not base64!", "malformed clip placements"),
    ("AAAA", "malformed clip placements"),  # base64, not zlib
    ("eJwDAAAAAAE=", "malformed clip placements"),  # zlib of nothing: no rows
    ("eJxjYgEAAAoABw==", "malformed clip placements"),  # two values: not whole rows
    ("eJxrAAAAgQCB", "malformed clip placements"),  # a varint cut short
    (7, "malformed clip placements"),
])
def test_malformed_packed_placements_are_refused(packed, message):
    data = {**dataclasses.replace(HEADER, packed=pack_placements(PLACEMENTS)).to_json(), "placements": packed}
    with pytest.raises(RecordError, match=message):
        Header.from_json(data)


def test_packed_placements_that_inflate_beyond_any_clip_are_refused():
    """A few bytes that inflate to megabytes: refused after the most a clip's rows can take."""
    import base64
    import zlib

    bomb = base64.b64encode(zlib.compress(b"\x01" * (20 << 20), 9)).decode()
    data = {**dataclasses.replace(HEADER, packed=pack_placements(PLACEMENTS)).to_json(), "placements": bomb}
    with pytest.raises(RecordError, match="malformed clip placements"):
        Header.from_json(data)


def test_a_clip_s_placements_given_both_ways_are_refused():
    data = {**dataclasses.replace(HEADER, packed=pack_placements(PLACEMENTS)).to_json(), "frames": [[120, 0, 1, 1, 1, 1]]}
    with pytest.raises(RecordError, match="given twice"):
        Header.from_json(data)


KNOWN_TRACK_KEY = "6c1ab047b8ae5b032d4ce15b6269e93a934488c051fcd3a6b4295831b5e8b741"
KNOWN_SHA256_V1 = "93f1dc40a9ee3422eed1105f617b85c85f38be8b36772823b2a8130541692f94"
KNOWN_SHA256_V2 = "d0d2dcd67b869789ea8fbbbcf020d0b8bc241798b976040b4909bc951c441520"
KNOWN_SHARED_TRACK_KEY = "de65109783b5aa2ae2534b33eef0415acae45877bb6215301c5c60ae5ce23550"
KNOWN_SHA256_V3 = "5bb76d2cd1e9cca3956a70e11cfdbbba82ae76350159f39ca72d4a8ebb56400b"
KNOWN_SHA256_V3_PACKED = "a7f6d050b35f54f8ef8d9cb6d65a9331570f7334f9cde371197bc95291657996"


@pytest.mark.parametrize(
    "field, value",
    [("camera", "garage"), ("segment", 8), ("track", 4), ("cls", "plate"), ("policy", 3), ("codec", H264),
     ("size", (16, 17)),
     ("placements", (Placement(120, 4_800_000, (10, 20, 4, 3)), Placement(122, 4_840_000, (11, 20, 5, 3)))),
     ("placements", (Placement(120, 4_800_001, (10, 20, 4, 3)), PLACEMENTS[1])),
     ("placements", (Placement(120, 4_800_000, (10, 21, 4, 3)), PLACEMENTS[1])),
     ("placements", PLACEMENTS[:1]), ("share", "vault:v1:b3RoZXI=")],
)
def test_every_bound_field_is_checked(field, value):
    key = shared_track_key(DATA_KEY, SHARE, "lobby", 7, "face", 3)
    record = seal(key, HEADER, coded())
    moved = Record(dataclasses.replace(HEADER, **{field: value}), record.nonce, record.ciphertext)
    with pytest.raises(RecordError, match="^record does not open$"):
        open_record(key, moved)


def test_other_tracks_and_segments_have_other_keys():
    keys = {track_key(DATA_KEY, c, s, t) for c in ("lobby", "garage") for s in (7, 8) for t in (0, 3, 4)}
    assert len(keys) == 12
    record = seal(track_key(DATA_KEY, "lobby", 7, 3), HEADER, coded())
    with pytest.raises(RecordError):
        open_record(track_key(DATA_KEY, "lobby", 7, 4), record)
    with pytest.raises(RecordError):
        open_record(track_key(os.urandom(32), "lobby", 7, 3), record)


def test_flipped_bits_and_truncation_are_detected():
    key = track_key(DATA_KEY, "lobby", 7, 3)
    data = seal(key, HEADER, coded()).to_bytes()
    for position in (len(data) - 1, len(data) - 20):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        record, _ = Record.from_bytes(bytes(damaged))
        with pytest.raises(RecordError):
            open_record(key, record)
    for cut in (3, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(RecordError, match="malformed|magic"):
            Record.from_bytes(data[:cut])
    head = _header_bytes(data)
    loose = head.replace(b'"size":[16,16]', b'"size":[16, 16]')
    with pytest.raises(RecordError, match="canonical"):
        Record.from_bytes(b"PGR3" + len(loose).to_bytes(4, "big") + loose + data[8 + len(head):])
    for magic in (b"PGR1", b"PGR2"):  # a version 3 header under an older version's magic
        with pytest.raises(RecordError, match="canonical"):
            Record.from_bytes(magic + data[4:])


@pytest.mark.parametrize("change, message", [
    ({"size": [4, 3]}, "larger than its canvas"),
    ({"frames": [[121, 0, 10, 20, 4, 3], [120, 1, 10, 20, 4, 3]]}, "out of order"),
    ({"frames": []}, "frame count"),
    ({"codec": "raw-bgr24"}, "unsupported"),
    ({"share": ""}, "share"),
    ({"share": 7}, "share"),
])
def test_malformed_clip_headers_are_refused(change, message):
    with pytest.raises(RecordError, match=message):
        Header.from_json({**HEADER.to_json(), **change})


def test_a_clip_that_does_not_decode_is_refused_after_it_opens():
    key = track_key(DATA_KEY, "lobby", 7, 3)
    record = seal(key, HEADER, coded()[:40])  # authentic (sealed so), but cut short before sealing
    with pytest.raises(RecordError, match="decode"):
        open_record(key, record)


def test_version_1_pixels_must_match_the_box():
    with pytest.raises(ValueError, match="do not match box"):
        seal(track_key(DATA_KEY, "lobby", 7, 3), HEADER_V1, bytes(4 * 4 * 3))
