"""Sealed records: the original pixels under redactions, encrypted and bound to where they belong.

A record holds the originals of one track (one class, one track id) of one segment over one
or more frames, encrypted with AES-256-GCM under a key specific to (camera, segment, class,
track), derived with HKDF-SHA256 from two secrets: the segment's random data key (which the
policy's quorum unwraps) and the track's random *share*, which only the co-signer (OpenBao,
cosigner.py) can decrypt; the header carries the share as OpenBao encrypted it. The header
is the associated data: it binds camera, segment, track, class, policy version, codec, the
share and every frame's index, media time and box, so a record cannot be swapped, moved,
re-timed or replayed elsewhere. Opening the records of one track derives that track's key
only: other tracks' keys are never computed, and their shares never asked for.

Three versions, told apart by their magic (see docs/vault-format.md):

- **version 3** (``PGR3``, written today): a *clip*, the track's crops over a run of frames
  coded as one small video (clips.py), so that a time range opens only the clips it
  overlaps, under a key that needs the co-signer's share;
- **version 2** (``PGR2``, read only): the same clips under a key from the data key alone;
- **version 1** (``PGR1``, read only): one frame's crop as raw BGR bytes, as vaults written
  before clips hold them.

Byte layout (all integers big-endian)::

    magic  b"PGR3" (or b"PGR2", b"PGR1")
    u32    header length H
    H      header: canonical JSON (sorted keys, no spaces, ASCII)
    12     AES-GCM nonce
    u32    ciphertext length C (plaintext + 16-byte tag)
    C      ciphertext
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .clips import CODECS, decode
from .errors import RecordError
from .identity import canonical

MAGIC = b"PGR3"
VERSION = 3
RAW = "raw-bgr24"  # the codec of every version-1 record
_MAGICS = {1: b"PGR1", 2: b"PGR2", 3: MAGIC}
_TRACK_INFO = b"privacy-gateway track key v1\x00"  # versions 1 and 2: the data key alone
_SHARED_TRACK_INFO = b"privacy-gateway track key v3\x00"  # version 3: data key and co-signer's share
_MAX_SHARE = 1024  # characters of the co-signer's ciphertext of a share
_MAX_HEADER = 1 << 20
_MAX_PIXELS = 1 << 28
_MAX_FRAMES = 1 << 14
_MAX_CIPHERTEXT = 1 << 31

Box = tuple[int, int, int, int]  # x, y, w, h in the frame


@dataclass(frozen=True)
class Placement:
    """Where one frame's original sits: record frame number, media time, and box in the frame."""

    frame: int
    pts_us: int
    box: Box


@dataclass(frozen=True)
class Header:
    camera: str
    segment: int
    track: int  # 0 for a region outside any track
    cls: str
    policy: int  # policy version in force when the region was sealed
    placements: tuple[Placement, ...]  # one per frame, in frame order (exactly one in version 1)
    codec: str  # clips.H264, clips.FFV1 or clips.FFV1_DELTA; RAW in version 1
    size: tuple[int, int]  # width, height of the coded canvas (version 1: the box's)
    version: int = VERSION
    share: str = ""  # version 3: the track's share, encrypted by the co-signer ("vault:v1:...")
    #: version 3: the placements as ``"placements"`` holds them (:func:`pack_placements`), kept as
    #: written, so the header's bytes are what they were; None: as ``"frames"`` rows (records sealed
    #: before placements were packed, and versions 1 and 2)
    packed: str | None = None

    @functools.cached_property
    def encoded(self) -> bytes:
        """The header's canonical bytes: written to the record and used as associated data."""
        return canonical(self.to_json())

    @property
    def frames(self) -> range:
        return range(self.placements[0].frame, self.placements[-1].frame + 1)

    def to_json(self) -> dict:
        common = {"v": self.version, "camera": self.camera, "segment": self.segment, "track": self.track,
                  "class": self.cls, "policy": self.policy, "codec": self.codec}
        if self.version == 1:
            (only,) = self.placements
            return {**common, "frame": only.frame, "pts_us": only.pts_us, "box": list(only.box)}
        if self.packed is not None:
            return {**common, "size": list(self.size), "placements": self.packed, "share": self.share}
        clip = {**common, "size": list(self.size), "frames": [[p.frame, p.pts_us, *p.box] for p in self.placements]}
        return clip if self.version == 2 else {**clip, "share": self.share}

    @classmethod
    def from_json(cls, data: dict) -> Header:
        version, codec = data.get("v"), data.get("codec")
        packed = None
        if not ((version == 1 and codec == RAW) or (version in (2, VERSION) and codec in CODECS)):
            raise RecordError(f"unsupported record version {version!r} / codec {codec!r}")
        if version == 1:
            box = _box(data["box"])
            placements: tuple[Placement, ...] = (Placement(int(data["frame"]), int(data["pts_us"]), box),)
            size = (box[2], box[3])
        else:
            size = tuple(int(v) for v in data["size"])
            packed = data.get("placements") if version == VERSION else None
            if packed is not None and "frames" in data:
                raise RecordError("a clip's placements given twice")
            rows = data["frames"] if packed is None else _unpack_placements(packed)
            if len(size) != 2 or min(size) <= 0 or size[0] * size[1] > _MAX_PIXELS or not 0 < len(rows) <= _MAX_FRAMES:
                raise RecordError(f"bad clip size {data['size']!r} or frame count {len(rows)}")
            placements = tuple(Placement(int(r[0]), int(r[1]), _box(r[2:])) for r in rows)
            if any(b.frame <= a.frame for a, b in itertools.pairwise(placements)):
                raise RecordError("clip frames out of order")
            if any(p.box[2] > size[0] or p.box[3] > size[1] for p in placements):
                raise RecordError("a clip's box is larger than its canvas")
        share = ""
        if version == VERSION:
            share = data["share"]
            if not isinstance(share, str) or not 0 < len(share) <= _MAX_SHARE or not share.isascii():
                raise RecordError("bad co-signer share")
        return cls(str(data["camera"]), int(data["segment"]), int(data["track"]), str(data["class"]),
                   int(data["policy"]), placements, str(codec), size, int(version), share, packed)  # type: ignore[arg-type]


def pack_placements(placements: Sequence[Placement]) -> str:
    """A clip's placements as version 3 headers keep them since 2026-12-07 (``"placements"``): the rows
    ``[frame, pts_us, x, y, w, h]``, each less the row before it (the first less zeros), as zigzag
    LEB128 varints, compressed with zlib, in base64. A clip's frames follow one another, its times
    step by a frame's duration and its box moves a pixel or two: 5-8 times smaller than the rows
    in JSON, which were 7 % of the recording's size on short_hamilton_clip (2813 regions)."""
    rows = np.array([[p.frame, p.pts_us, *p.box] for p in placements], dtype=np.int64)
    out = bytearray()
    for value in np.diff(rows, axis=0, prepend=np.zeros((1, 6), np.int64)).ravel().tolist():
        value = (value << 1) ^ (value >> 63)  # zigzag: small magnitudes of either sign in few bytes
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return base64.b64encode(zlib.compress(bytes(out), 9)).decode("ascii")


def _unpack_placements(packed: object) -> list[list[int]]:
    """The rows :func:`pack_placements` packed; :class:`RecordError` if they are not such."""
    if not isinstance(packed, str):
        raise RecordError("malformed clip placements")
    try:
        inflate = zlib.decompressobj()
        # at most _MAX_FRAMES rows of six values of at most ten bytes: no more is inflated
        raw = inflate.decompress(base64.b64decode(packed, validate=True), _MAX_FRAMES * 6 * 10 + 1)
        if inflate.unconsumed_tail or not inflate.eof or len(raw) > _MAX_FRAMES * 6 * 10:
            raise ValueError
    except (ValueError, zlib.error):
        raise RecordError("malformed clip placements") from None
    values, value, shift = [], 0, 0
    for byte in raw:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte & 0x80:
            if shift > 63:
                raise RecordError("malformed clip placements")
            continue
        if value >> 64:
            raise RecordError("malformed clip placements")
        values.append((value >> 1) ^ -(value & 1))
        value, shift = 0, 0
    if shift or not values or len(values) % 6:
        raise RecordError("malformed clip placements")
    return np.cumsum(np.array(values, dtype=np.int64).reshape(-1, 6), axis=0).tolist()


def _box(values) -> Box:
    box = tuple(int(v) for v in values)
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0 or box[2] * box[3] > _MAX_PIXELS:
        raise RecordError(f"bad box {list(values)!r}")
    return box  # type: ignore[return-value]


@dataclass(frozen=True)
class Record:
    header: Header
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        head = self.header.encoded
        return b"".join((_MAGICS[self.header.version], struct.pack(">I", len(head)), head, self.nonce,
                         struct.pack(">I", len(self.ciphertext)), self.ciphertext))

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0, end: int | None = None) -> tuple[Record, int]:
        """Parse one record at ``offset`` in ``data`` (up to ``end``); returns it and the bytes it used.

        Only the record's own bytes are copied, so reading a segment is linear in its size.
        """
        end = len(data) if end is None else end
        try:
            magic = bytes(data[offset : offset + 4])
            if magic not in _MAGICS.values():
                raise RecordError("not a sealed record (bad magic)")
            (hlen,) = struct.unpack_from(">I", data, offset + 4)
            if hlen > _MAX_HEADER:
                raise RecordError("record header too long")
            at = offset + 8 + hlen
            if at + 16 > end:
                raise RecordError("truncated or malformed record")
            head = bytes(data[offset + 8 : at])
            header = Header.from_json(json.loads(head))
            if header.encoded != head or _MAGICS[header.version] != magic:
                raise RecordError("record header is not in canonical form")
            nonce = bytes(data[at : at + 12])
            (clen,) = struct.unpack_from(">I", data, at + 12)
            ciphertext = bytes(data[at + 16 : min(at + 16 + clen, end)])
        except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
            raise RecordError(f"truncated or malformed record ({type(exc).__name__})") from None
        if header.version == 1:
            expected = header.size[0] * header.size[1] * 3 + 16
            well_sized = clen == expected
        else:
            well_sized = 16 < clen <= _MAX_CIPHERTEXT
        if len(nonce) != 12 or len(ciphertext) != clen or not well_sized:
            raise RecordError("truncated or malformed record")
        return cls(header, nonce, ciphertext), at + 16 + clen - offset


def track_key(data_key: bytes, camera: str, segment: int, track: int) -> bytes:
    """The AES-256 key of one (camera, segment, track) in versions 1 and 2 (read only)."""
    info = _TRACK_INFO + canonical({"camera": camera, "segment": segment, "track": track})
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)


def shared_track_key(data_key: bytes, share: bytes, camera: str, segment: int, cls: str, track: int) -> bytes:
    """The AES-256 key of one (camera, segment, class, track) in version 3: both secrets go in."""
    if len(data_key) != 32 or len(share) != 32:
        raise RecordError("record does not open")
    info = _SHARED_TRACK_INFO + canonical({"camera": camera, "segment": segment, "class": cls, "track": track})
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key + share)


def seal(key: bytes, header: Header, plaintext: bytes, nonce: bytes | None = None) -> Record:
    """Encrypt a record's plaintext (a coded clip; raw pixels in version 1) under a track key,
    the header as associated data (``nonce`` fixed only by tests)."""
    if header.version == 1 and len(plaintext) != header.size[0] * header.size[1] * 3:
        raise ValueError(f"{len(plaintext)} bytes of pixels do not match box {header.placements[0].box}")
    nonce = nonce or os.urandom(12)
    return Record(header, nonce, AESGCM(key).encrypt(nonce, plaintext, header.encoded))


def open_record(key: bytes, record: Record, count: int | None = None) -> list[np.ndarray]:
    """The original crops of a record, one ``(h, w, 3)`` BGR array per placement (``count``: the
    first so many only), or :class:`RecordError` if anything does not match."""
    header = record.header
    try:
        plain = AESGCM(key).decrypt(record.nonce, record.ciphertext, header.encoded)
    except InvalidTag:
        raise RecordError("record does not open") from None
    if header.version == 1:
        w, h = header.size
        return [np.frombuffer(plain, dtype=np.uint8).reshape(h, w, 3).copy()]
    shapes: Sequence[tuple[int, int]] = [(p.box[3], p.box[2]) for p in header.placements]
    return decode(header.codec, header.size, plain, shapes, count)
