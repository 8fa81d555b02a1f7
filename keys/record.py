"""Sealed region records: the original pixels under one redaction, encrypted and bound.

Each record holds the original pixels of one redacted region of one frame, losslessly (raw
BGR bytes), encrypted with AES-256-GCM under a key specific to (camera, segment, track),
derived with HKDF-SHA256 from the segment's random data key. The record's header is the
associated data: it binds camera, segment, frame index, pts, track, class, box, policy
version and pixel shape, so a record cannot be swapped, moved or replayed elsewhere.
Opening the records of one track derives that track's key only: other tracks' keys are
never computed.

Byte layout (all integers big-endian; see docs/vault-format.md)::

    magic  b"PGR1"
    u32    header length H
    H      header: canonical JSON (sorted keys, no spaces, ASCII)
    12     AES-GCM nonce
    u32    ciphertext length C (pixels + 16-byte tag)
    C      ciphertext
"""

from __future__ import annotations

import functools
import json
import os
import struct
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import RecordError
from .identity import canonical

MAGIC = b"PGR1"
VERSION = 1
_TRACK_INFO = b"privacy-gateway track key v1\x00"
_MAX_HEADER = 1 << 16
_MAX_PIXELS = 1 << 28


@dataclass(frozen=True)
class Header:
    camera: str
    segment: int
    frame: int
    pts_us: int  # presentation time in microseconds
    track: int  # 0 for a region outside any track (a still image)
    cls: str
    box: tuple[int, int, int, int]  # x, y, w, h of the stored pixels in the frame
    policy: int  # policy version in force when the region was sealed

    @functools.cached_property
    def encoded(self) -> bytes:
        """The header's canonical bytes: written to the record and used as associated data."""
        return canonical(self.to_json())

    def to_json(self) -> dict:
        return {"v": VERSION, "camera": self.camera, "segment": self.segment, "frame": self.frame,
                "pts_us": self.pts_us, "track": self.track, "class": self.cls, "box": list(self.box),
                "policy": self.policy, "codec": "raw-bgr24"}

    @classmethod
    def from_json(cls, data: dict) -> Header:
        if data.get("v") != VERSION or data.get("codec") != "raw-bgr24":
            raise RecordError(f"unsupported record version {data.get('v')!r} / codec {data.get('codec')!r}")
        box = tuple(int(v) for v in data["box"])
        if len(box) != 4 or box[2] <= 0 or box[3] <= 0 or box[2] * box[3] > _MAX_PIXELS:
            raise RecordError(f"bad box {data['box']!r}")
        return cls(str(data["camera"]), int(data["segment"]), int(data["frame"]), int(data["pts_us"]),
                   int(data["track"]), str(data["class"]), box, int(data["policy"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Record:
    header: Header
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        head = self.header.encoded
        return b"".join((MAGIC, struct.pack(">I", len(head)), head, self.nonce,
                         struct.pack(">I", len(self.ciphertext)), self.ciphertext))

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0, end: int | None = None) -> tuple[Record, int]:
        """Parse one record at ``offset`` in ``data`` (up to ``end``); returns it and the bytes it used.

        Only the record's own bytes are copied, so reading a segment is linear in its size.
        """
        end = len(data) if end is None else end
        try:
            if data[offset : offset + 4] != MAGIC:
                raise RecordError("not a sealed record (bad magic)")
            (hlen,) = struct.unpack_from(">I", data, offset + 4)
            if hlen > _MAX_HEADER:
                raise RecordError("record header too long")
            at = offset + 8 + hlen
            if at + 16 > end:
                raise RecordError("truncated or malformed record")
            head = bytes(data[offset + 8 : at])
            header = Header.from_json(json.loads(head))
            if header.encoded != head:
                raise RecordError("record header is not in canonical form")
            nonce = bytes(data[at : at + 12])
            (clen,) = struct.unpack_from(">I", data, at + 12)
            ciphertext = bytes(data[at + 16 : min(at + 16 + clen, end)])
        except (struct.error, ValueError, KeyError, TypeError) as exc:
            raise RecordError(f"truncated or malformed record ({type(exc).__name__})") from None
        w, h = header.box[2], header.box[3]
        if len(nonce) != 12 or len(ciphertext) != clen or clen != w * h * 3 + 16:
            raise RecordError("truncated or malformed record")
        return cls(header, nonce, ciphertext), at + 16 + clen - offset


def track_key(data_key: bytes, camera: str, segment: int, track: int) -> bytes:
    """The AES-256 key of one (camera, segment, track)."""
    info = _TRACK_INFO + canonical({"camera": camera, "segment": segment, "track": track})
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)


def seal(key: bytes, header: Header, pixels: np.ndarray, nonce: bytes | None = None) -> Record:
    """Encrypt a ``(h, w, 3)`` uint8 crop under a track key (``nonce`` fixed only by tests)."""
    x, y, w, h = header.box
    if pixels.dtype != np.uint8 or pixels.shape != (h, w, 3):
        raise ValueError(f"pixels of shape {pixels.shape} {pixels.dtype} do not match box {header.box}")
    nonce = nonce or os.urandom(12)
    return Record(header, nonce, AESGCM(key).encrypt(nonce, np.ascontiguousarray(pixels).tobytes(), header.encoded))


def open_record(key: bytes, record: Record) -> np.ndarray:
    """The original pixels of a record, or :class:`RecordError` if anything does not match."""
    try:
        plain = AESGCM(key).decrypt(record.nonce, record.ciphertext, record.header.encoded)
    except InvalidTag:
        raise RecordError("record does not open") from None
    w, h = record.header.box[2], record.header.box[3]
    return np.frombuffer(plain, dtype=np.uint8).reshape(h, w, 3).copy()
