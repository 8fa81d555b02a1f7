"""Vault segments: sealed region records of one camera and time span, signed and chained.

Files per camera, under ``<vault>/<camera>/``::

    <n>.pgv    the segment: magic ``PGV1``, u32 + canonical-JSON header, the records, then a
               trailer read from the end of the file: magic ``PGVT``, a canonical-JSON summary
               (record count, SHA-256 of every byte before the trailer, SHA-256 of the key
               file), u32 summary length, and the gateway's 64-byte Ed25519 signature of the
               summary.
    <n>.keys   the segment's data keys, one per class, HPKE-wrapped to the recipients the
               policy grants that class (see wrap.py); signed like the segment. Deleting it
               crypto-shreds the segment.

The header names the previous segment's summary digest, so per camera the segments form a
hash chain: a deleted, reordered, truncated or altered segment or record is detected by
:func:`verify_camera`, which names the first broken segment.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .identity import PublicIdentity, canonical
from .record import Header, Record, RecordError, seal, track_key
from .wrap import Grant, Wrap, wrap_key

SEGMENT_MAGIC = b"PGV1"
TRAILER_MAGIC = b"PGVT"
VERSION = 1
GENESIS = "0" * 64


class VaultError(Exception):
    """A segment or key file that is missing, malformed, or fails its checks."""


def _segment_path(root: Path, camera: str, number: int) -> Path:
    return root / camera / f"{number:08d}.pgv"


def key_context(camera: str, segment: int, cls: str) -> bytes:
    return canonical({"camera": camera, "segment": segment, "class": cls})


class SegmentWriter:
    """Writes one segment: records as they come, then the trailer and the key file on close.

    Holds only public keys and the gateway's signing key: it can seal, never unseal. Each
    class gets its own random data key, wrapped to that class's grant only.
    """

    def __init__(
        self,
        root: Path,
        camera: str,
        number: int,
        policy: int,
        grants: dict[str, Grant],
        identities: list[PublicIdentity],
        signer: Ed25519PrivateKey,
        previous: str = GENESIS,
    ) -> None:
        self.root, self.camera, self.number, self.policy = Path(root), camera, number, policy
        self._signer = signer
        self._data_keys = {cls: os.urandom(32) for cls in grants}
        self._wraps = {
            cls: [w.to_json() for w in wrap_key(self._data_keys[cls], grant, identities, key_context(camera, number, cls))]
            for cls, grant in grants.items()
        }
        self._track_keys: dict[tuple[str, int], bytes] = {}
        path = _segment_path(self.root, camera, number)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._tmp = path.with_suffix(".pgv.partial")
        self._file = open(self._tmp, "xb")  # noqa: SIM115 (closed in close())
        self._hash = hashlib.sha256()
        self._count = 0
        header = canonical({"v": VERSION, "camera": camera, "segment": number, "policy": policy, "previous": previous})
        self._write(SEGMENT_MAGIC + struct.pack(">I", len(header)) + header)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)

    def add(self, frame: int, pts_us: int, track: int, cls: str, box: tuple[int, int, int, int], pixels: np.ndarray) -> None:
        if cls not in self._data_keys:
            raise ValueError(f"no grant for class {cls!r} in this segment's policy")
        key = self._track_keys.get((cls, track))
        if key is None:
            key = self._track_keys[(cls, track)] = track_key(self._data_keys[cls], self.camera, self.number, track)
        header = Header(self.camera, self.number, frame, pts_us, track, cls, box, self.policy)
        self._write(seal(key, header, pixels).to_bytes())
        self._count += 1

    def close(self) -> str:
        """Finish both files; returns this segment's summary digest (the next one's ``previous``)."""
        keys = canonical({"v": VERSION, "camera": self.camera, "segment": self.number, "wraps": self._wraps})
        keys_doc = json.dumps({"keys": json.loads(keys), "signature": self._signer.sign(keys).hex()}).encode()
        summary = canonical({"count": self._count, "body": self._hash.hexdigest(),
                             "keys": hashlib.sha256(keys_doc).hexdigest()})
        signature = self._signer.sign(summary)
        self._file.write(TRAILER_MAGIC + summary + struct.pack(">I", len(summary)) + signature)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        keys_path = self.path.with_suffix(".keys")
        keys_path.write_bytes(keys_doc)
        os.replace(self._tmp, self.path)
        self._data_keys.clear()
        self._track_keys.clear()
        return hashlib.sha256(summary).hexdigest()


@dataclass(frozen=True)
class Segment:
    camera: str
    number: int
    policy: int
    previous: str
    digest: str  # SHA-256 of the signed summary: what the next segment names as previous
    keys_sha256: str
    records: list[Record]


def read_segment(path: Path, gateway: Ed25519PublicKey) -> Segment:
    """Parse and verify one segment file (signature, body digest, record count)."""
    name = Path(path).name
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise VaultError(f"{name}: cannot read ({exc.strerror or exc})") from None
    try:
        if data[:4] != SEGMENT_MAGIC:
            raise VaultError(f"{name}: not a vault segment")
        (hlen,) = struct.unpack_from(">I", data, 4)
        header = json.loads(data[8 : 8 + hlen])
        at = 8 + hlen
        signature = data[-64:]
        (slen,) = struct.unpack_from(">I", data, len(data) - 68)
        trailer = len(data) - 68 - slen - 4
        if trailer < at or data[trailer : trailer + 4] != TRAILER_MAGIC:
            raise VaultError(f"{name}: truncated (no trailer)")
        summary_bytes = data[trailer + 4 : len(data) - 68]
        summary = json.loads(summary_bytes)
    except (struct.error, ValueError) as exc:
        raise VaultError(f"{name}: malformed ({type(exc).__name__})") from None
    try:
        gateway.verify(signature, summary_bytes)
    except InvalidSignature:
        raise VaultError(f"{name}: signature does not verify") from None
    if hashlib.sha256(data[:trailer]).hexdigest() != summary["body"]:
        raise VaultError(f"{name}: contents altered (digest mismatch)")
    records = []
    while at < trailer:
        try:
            record, used = Record.from_bytes(data[at:trailer])
        except RecordError as exc:
            raise VaultError(f"{name}: record {len(records)}: {exc}") from None
        if (record.header.camera, record.header.segment) != (header["camera"], header["segment"]):
            raise VaultError(f"{name}: record {len(records)} belongs to another segment")
        records.append(record)
        at += used
    if len(records) != summary["count"]:
        raise VaultError(f"{name}: {len(records)} records, trailer says {summary['count']}")
    return Segment(header["camera"], header["segment"], header["policy"], header["previous"],
                   hashlib.sha256(summary_bytes).hexdigest(), summary["keys"], records)


def read_wraps(path: Path, gateway: Ed25519PublicKey, expected_sha256: str) -> dict[str, list[Wrap]]:
    """The wraps of a segment's key file; raises if shredded (missing), altered or swapped."""
    name = Path(path).name
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise VaultError(f"{name}: no key file (shredded?)") from None
    if hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise VaultError(f"{name}: key file does not belong to its segment")
    document = json.loads(raw)
    try:
        gateway.verify(bytes.fromhex(document["signature"]), canonical(document["keys"]))
    except (InvalidSignature, ValueError, KeyError):
        raise VaultError(f"{name}: key file signature does not verify") from None
    return {cls: [Wrap.from_json(w) for w in wraps] for cls, wraps in document["keys"]["wraps"].items()}


def segments(root: Path, camera: str) -> list[Path]:
    return sorted((Path(root) / camera).glob("*.pgv"))


def verify_camera(root: Path, camera: str, gateway: Ed25519PublicKey) -> Iterator[Segment]:
    """Every segment of a camera in order, checking the hash chain; raises at the first break."""
    previous = GENESIS
    for expected, path in enumerate(segments(root, camera), start=1):
        segment = read_segment(path, gateway)
        if segment.number != expected or path.name != f"{segment.number:08d}.pgv":
            raise VaultError(f"{path.name}: out of sequence (expected segment {expected}; one deleted or renamed?)")
        if segment.previous != previous:
            raise VaultError(f"{path.name}: hash chain broken (previous segment deleted, replaced or reordered)")
        previous = segment.digest
        yield segment
