"""Vault segments: the sealed region records of one camera and time span, signed and chained.

Two objects per segment (named, and kept, by :mod:`keys.store`)::

    <n>.pgv    the segment: magic ``PGV1``, u32 + canonical-JSON header (``"v": 3``, with the
               vault's id; segments of format versions 1 and 2 are still read), the records,
               each followed (version 3) by a signed *checkpoint*: magic ``PGVC``, u32 +
               canonical JSON (records so far, SHA-256 of every byte before the checkpoint,
               time), the signer's 64-byte signature of it; then a
               trailer read from the end of the file: magic ``PGVT``, a canonical-JSON summary
               (record count, SHA-256 of every byte before the trailer, SHA-256 of the key
               file, end time), u32 summary length, and the signer's 64-byte Ed25519
               signature of the summary. The signer is the gateway key, or on a cluster
               node that node's key, which the summaries and the key file then name
               (``"signer": "node:<name>"``; keys/nodes.py).
    <n>.<d>.keys  the segment's data keys, one per class, HPKE-wrapped to the recipients the
               policy grants that class (see wrap.py); signed by the gateway (or node). Deleting it
               crypto-shreds the segment. ``<d>``: the first 16 hex digits of its SHA-256, which
               the segment's header (``"keys"``) and trailer name in full, so that each try at
               opening a segment keeps its key file under a name of its own: a store that
               completes an earlier try's write late (an S3 gateway holding writes while
               SeaweedFS's master is away) cannot replace the one the segment was sealed with.
               Segments sealed before headers named it have ``<n>.keys``.

The header names the previous segment's digest, so per camera the segments form a hash
chain: a deleted, reordered, truncated or altered segment or record is detected by
:func:`check_chain`, which names the first broken segment.

A crash leaves a segment without its trailer. :func:`recover_partial` finishes it only when it
is the camera's next segment (its number follows the chain's head, its ``previous`` is the
head's digest) and keeps only what a checkpoint the gateway signed vouches for, ending it at
that checkpoint's time: a partial file made by hand, or a sealed segment turned back into one
and edited, is refused, not signed. A partial that is a whole segment already (finished and
signed, its upload failed) is kept as it is.

Nothing here knows where segments are kept: :class:`SegmentWriter` appends to a local
``<n>.pgv.partial`` file and hands the key file and, on close, the finished partial to the
store's callbacks; :func:`read_segment` and :func:`read_wraps` are functions of bytes.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .durable import make_dirs
from .errors import RecordError, VaultError
from .identity import PublicIdentity, canonical
from .nodes import GATEWAY_ACTOR, actor_of
from .record import Header, Placement, Record, pack_placements, seal, shared_track_key
from .wrap import Grant, Wrap, wrap_key

SEGMENT_MAGIC = b"PGV1"
TRAILER_MAGIC = b"PGVT"
CHECKPOINT_MAGIC = b"PGVC"
VERSION = 3  # written; versions 1 (raw records, PGR1) and 2 (clips without a co-signer share, PGR2) are read
GENESIS = "0" * 64
_SHA256 = re.compile(r"[0-9a-f]{64}")

__all__ = ["GENESIS", "Segment", "SegmentHeader", "SegmentWriter", "check_chain", "key_context", "keys_name",
           "partial_name", "read_segment", "read_wraps", "recover_partial", "segment_name", "utc_now"]


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def key_context(camera: str, segment: int, cls: str) -> bytes:
    return canonical({"camera": camera, "segment": segment, "class": cls})


@dataclass(frozen=True)
class SegmentHeader:
    """What a segment says about itself; signed (through the body digest) with its records."""

    camera: str
    segment: int  # 1, 2, ... per camera
    policy: int  # version of the policy in force, also bound into every record
    policy_sha256: str  # digest of that policy's canonical JSON (kept in the vault's policies/)
    recording: str  # the redacted output (file or recorder segment) these records belong to
    started: str  # UTC ISO 8601 time the segment was opened
    previous: str = GENESIS  # digest of the camera's previous segment
    version: int = VERSION  # its records' version too
    vault: str = ""  # version 3: the id of the vault it was sealed into (a chain cannot move to another)
    #: SHA-256 of its key file, set by :class:`SegmentWriter` (version 3; "" in segments sealed before
    #: headers named it, whose key file is ``<n>.keys``)
    keys: str = ""

    def to_json(self) -> dict:
        data = {"v": self.version, "camera": self.camera, "segment": self.segment, "policy": self.policy,
                "policy_sha256": self.policy_sha256, "recording": self.recording, "started": self.started,
                "previous": self.previous}
        if self.version < 3:
            return data
        return {**data, "vault": self.vault, **({"keys": self.keys} if self.keys else {})}

    @classmethod
    def from_json(cls, data: dict) -> SegmentHeader:
        if data.get("v") not in (1, 2, VERSION):
            raise ValueError(f"unsupported segment version {data.get('v')!r}")
        vault = str(data["vault"]) if data["v"] == VERSION else ""
        keys = str(data.get("keys", "")) if data["v"] == VERSION else ""
        if keys and not _SHA256.fullmatch(keys):  # it names the key file
            raise ValueError("the key file's digest is not a SHA-256")
        return cls(str(data["camera"]), int(data["segment"]), int(data["policy"]), str(data["policy_sha256"]),
                   str(data["recording"]), str(data["started"]), str(data["previous"]), int(data["v"]), vault, keys)


class SegmentWriter:
    """Writes one segment: the key file first, then records as they come, the trailer on close.

    Holds only public keys and the gateway's signing key: it can seal, never unseal. Each
    class gets its own random data key, wrapped to that class's grant only. The key file is
    handed to ``save_keys`` (which must make it durable, as :func:`keys_name` of its digest) before
    the header, which names that digest (``header.keys``), and before the first record, so the
    records of a segment cut short by a crash can still be unmasked once :func:`recover_partial`
    has signed what reached the disk. Records go to ``partial``, a new local file; on
    :meth:`close` the finished file is handed to ``publish``, which keeps it and removes it.
    Made by :meth:`keys.store.VaultStore.open_segment`, which supplies the three.
    """

    def __init__(
        self,
        partial: Path,
        header: SegmentHeader,
        grants: dict[str, Grant],
        identities: list[PublicIdentity],
        signer: Ed25519PrivateKey,
        *,
        save_keys: Callable[[bytes], None],
        publish: Callable[[Path], None],
    ) -> None:
        self._partial, self._publish = Path(partial), publish
        self._signer = signer
        camera, number = header.camera, header.segment
        self._data_keys = {cls: os.urandom(32) for cls in grants}
        wraps = {
            cls: [w.to_json() for w in wrap_key(self._data_keys[cls], grant, identities, key_context(camera, number, cls))]
            for cls, grant in grants.items()
        }
        self._track_keys: dict[tuple[str, int], bytes] = {}
        keys = canonical({"v": 1, "camera": camera, "segment": number, "wraps": wraps, **_signed_by(signer)})
        keys_doc = json.dumps({"keys": json.loads(keys), "signature": self._signer.sign(keys).hex()}).encode()
        self._keys_sha256 = hashlib.sha256(keys_doc).hexdigest()
        self.header = dataclasses.replace(header, keys=self._keys_sha256) if header.version >= 3 else header
        header = self.header
        save_keys(keys_doc)
        make_dirs(self._partial.parent)
        # O_EXCL, owner only: a segment being sealed is never another's file, nor readable by others
        self._file = os.fdopen(os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        self._hash = hashlib.sha256()
        self._count = 0
        head = canonical(header.to_json())
        self._write(SEGMENT_MAGIC + struct.pack(">I", len(head)) + head)
        if header.version >= 3:
            self._checkpoint()  # the header itself is vouched for

    @property
    def count(self) -> int:
        return self._count

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)

    def add_clip(self, track: int, cls: str, placements: tuple[Placement, ...], codec: str, size: tuple[int, int],
                 coded: bytes, share: tuple[bytes, str]) -> None:
        """Seal one clip of one track: its placements (frame, time, box each) and its coded crops.

        ``share``: the track's share in this segment and the co-signer's ciphertext of it (the
        same for every clip of the track in the segment)."""
        if cls not in self._data_keys:
            raise ValueError(f"no grant for class {cls!r} in this segment's policy")
        key = self._track_keys.get((cls, track))
        if key is None:
            key = self._track_keys[(cls, track)] = shared_track_key(self._data_keys[cls], share[0], self.header.camera,
                                                                    self.header.segment, cls, track)
        header = Header(self.header.camera, self.header.segment, track, cls, self.header.policy, placements, codec, size,
                        share=share[1], packed=pack_placements(placements))
        self._write(seal(key, header, coded).to_bytes())
        self._count += 1
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Vouch for every byte so far: what :func:`recover_partial` may keep after a crash."""
        summary = canonical({"count": self._count, "body": self._hash.hexdigest(), "time": utc_now(),
                             **_signed_by(self._signer)})
        self._write(CHECKPOINT_MAGIC + struct.pack(">I", len(summary)) + summary + self._signer.sign(summary))

    def close(self, ended: str | None = None, audit: tuple[int, str] | None = None) -> str:
        """Sign and finish the segment; returns its digest (the next segment's ``previous``).

        ``audit``: the audit log's head (:meth:`keys.audit.AuditLog.head`), kept in the trailer."""
        self._data_keys.clear()
        self._track_keys.clear()
        self._file.flush()
        digest = _finish(self._file, self._hash, self._count, self._keys_sha256, ended or utc_now(), self._signer,
                         audit=audit)
        self._publish(self._partial)
        return digest

    def abort(self) -> None:
        """Stop without a trailer (the partial file stays, for :func:`recover_partial`)."""
        self._data_keys.clear()
        self._track_keys.clear()
        self._file.close()


def _finish(file, body_hash, count: int, keys_sha256: str, ended: str, signer: Ed25519PrivateKey,
            recovered: bool = False, audit: tuple[int, str] | None = None) -> str:
    fields = {"count": count, "body": body_hash.hexdigest(), "keys": keys_sha256, "ended": ended,
              **_signed_by(signer)}
    if recovered:
        fields["recovered"] = True
    if audit is not None:  # the audit log's head as the segment closed: a checkpoint the log cannot shed
        fields["audit"] = {"seq": audit[0], "head": audit[1]}
    summary = canonical(fields)
    file.write(TRAILER_MAGIC + summary + struct.pack(">I", len(summary)) + signer.sign(summary))
    file.flush()
    os.fsync(file.fileno())
    file.close()
    return hashlib.sha256(summary).hexdigest()


def _signed_by(signer: object) -> dict:
    """``{"signer": "node:<name>"}`` for a cluster node's key; nothing for the gateway key, whose
    segments, checkpoints and key files are byte for byte what they were before nodes had keys."""
    actor = actor_of(signer)
    return {} if actor == GATEWAY_ACTOR else {"signer": actor}


def _verify(keys, signature: bytes, data: bytes, fields: object, time: object | None) -> None:
    """``signature`` of ``data`` (whose JSON is ``fields``) by the signer ``fields`` names: the gateway
    (no ``signer``) or a node, through :meth:`keys.store.GatewayKeys.verify_as` (its certification and
    revocation, dated ``time``). ``keys`` may also be a bare public key a caller trusts (recovery on the
    node that signed): then it must have made the signature, whoever is named. Raises
    :class:`InvalidSignature`, or :class:`VaultError` for a signer no key vouches for."""
    signer = fields.get("signer", GATEWAY_ACTOR) if isinstance(fields, dict) else GATEWAY_ACTOR
    if not isinstance(signer, str):
        raise InvalidSignature
    if signer == GATEWAY_ACTOR or not hasattr(keys, "verify_as"):
        keys.verify(signature, data)
    else:
        keys.verify_as(signer, signature, data, None if time is None else str(time))


def segment_name(number: int) -> str:
    return f"{number:08d}.pgv"


def keys_name(number: int, sha256: str = "") -> str:
    """The name of a segment's key file whose SHA-256 is ``sha256`` ("": the name of segments sealed
    before headers named their key file's digest)."""
    return f"{number:08d}.{sha256[:16]}.keys" if sha256 else f"{number:08d}.keys"


def partial_name(number: int) -> str:
    return f"{number:08d}.pgv.partial"


def _checkpoint_at(data: bytes, mark: int, gateway: Ed25519PublicKey, running, count: int) -> tuple[int, dict]:
    """The checkpoint at ``mark``, if the gateway signed it for ``count`` records and the bytes
    ``running`` has hashed (it then hashes the checkpoint too); its end and summary, else ValueError."""
    try:
        if data[mark : mark + 4] != CHECKPOINT_MAGIC:
            raise ValueError
        (slen,) = struct.unpack_from(">I", data, mark + 4)
        summary_bytes = bytes(data[mark + 8 : mark + 8 + slen])
        summary = json.loads(summary_bytes)
        _verify(gateway, bytes(data[mark + 8 + slen : mark + 8 + slen + 64]), summary_bytes, summary,
                summary.get("time") if isinstance(summary, dict) else None)
    except (struct.error, InvalidSignature, VaultError):
        raise ValueError("not a checkpoint") from None
    if not isinstance(summary, dict) or summary.get("count") != count or summary.get("body") != running.hexdigest():
        raise ValueError("a checkpoint of other bytes")
    end = mark + 8 + slen + 64
    running.update(data[mark:end])
    return end, summary


def recover_partial(partial: Path, key_file: Callable[[SegmentHeader], bytes | None], signer: Ed25519PrivateKey,
                    head: tuple[int, str], vault: str, audit: tuple[int, str] | None = None,
                    vouchers: Ed25519PublicKey | None = None) -> int:
    """Finish, in place, a segment a crash left as ``partial``: keep what its checkpoints vouch for, sign it
    (a segment finished and signed already is left byte for byte as it is).

    Refused (:class:`VaultError`, the file left as it is) unless it is a version 3 segment of
    ``vault`` that continues the chain whose last segment is ``head`` (number, digest). Every
    record up to the last checkpoint signed by the gateway's key (``signer``'s public half) and
    matching the bytes before it is kept (the checkpoint after the header must be good: else
    nothing is); the trailer says ``"recovered": true`` and its end time is that checkpoint's.
    ``key_file`` gives the segment's key file for its header (None if it is missing: nothing can
    be recovered). Returns the number of records kept.
    """
    partial = Path(partial)
    name = partial.name
    data = partial.read_bytes()
    try:
        if data[:4] != SEGMENT_MAGIC:
            raise VaultError(f"{name}: not a vault segment")
        (hlen,) = struct.unpack_from(">I", data, 4)
        header = SegmentHeader.from_json(json.loads(data[8 : 8 + hlen]))
    except (struct.error, ValueError, KeyError, TypeError):
        raise VaultError(f"{name}: header unreadable; cannot recover") from None
    number, digest = head
    if name != partial_name(header.segment):
        raise VaultError(f"{name}: says it is segment {header.segment}; not recovered")
    if header.version < VERSION or header.vault != vault:
        raise VaultError(f"{name}: not a segment this vault's gateway writes (version {header.version}, "
                         "or another vault's); not recovered")
    if header.segment != number + 1 or header.previous != digest:
        raise VaultError(f"{name}: does not continue the camera's chain (its head is segment {number}); "
                         "not recovered")
    keys_document = key_file(header)
    if keys_document is None:
        raise VaultError(f"{name}: its key file {keys_name(header.segment, header.keys)} is missing; cannot recover")
    if header.keys and hashlib.sha256(keys_document).hexdigest() != header.keys:
        raise VaultError(f"{name}: key file does not belong to its segment; not recovered")
    gateway = vouchers or signer.public_key()  # whose checkpoints count (a rotation: the old key's too)
    try:
        finished = read_segment(data, name, gateway)
    except VaultError:
        finished = None
    if finished is not None and finished.keys_sha256 == hashlib.sha256(keys_document).hexdigest():
        # finished and signed, its upload failed: kept byte for byte, so that the upload, if the store
        # still completes it later (an S3 gateway holding writes while its master is away), lands the same bytes
        return len(finished.records)
    running = hashlib.sha256(data[: 8 + hlen])  # of every byte before ``at``
    try:
        at, summary = _checkpoint_at(data, 8 + hlen, gateway, running, 0)
    except ValueError:
        raise VaultError(f"{name}: its header is not vouched for by the gateway; not recovered") from None
    kept, count, ended = at, 0, str(summary["time"])
    while at < len(data):
        try:
            _, used = Record.from_bytes(data, at)
            probe = running.copy()
            probe.update(data[at : at + used])
            end, summary = _checkpoint_at(data, at + used, gateway, probe, count + 1)
        except (RecordError, ValueError):
            break  # nothing after the last good checkpoint is vouched for
        running = probe
        at = kept = end
        count, ended = count + 1, str(summary["time"])
    with open(partial, "r+b") as file:
        file.truncate(kept)
        file.seek(kept)
        _finish(file, running, count, hashlib.sha256(keys_document).hexdigest(), ended, signer, recovered=True,
                audit=audit)
    return count


@dataclass(frozen=True)
class Segment:
    header: SegmentHeader
    digest: str  # SHA-256 of the signed summary: what the next segment names as previous
    keys_sha256: str
    ended: str
    recovered: bool
    records: list[Record]
    audit: tuple[int, str] | None = None  # the audit log's (seq, line digest) when it closed (version 3)
    signer: str = GATEWAY_ACTOR  # who signed it: "gateway", or a cluster node ("node:<name>")

    @property
    def number(self) -> int:
        return self.header.segment


def read_segment(data: bytes, name: str, gateway: Ed25519PublicKey) -> Segment:
    """Parse and verify one segment's bytes (signature, body digest, record count); ``name`` is for messages."""
    if data[:4] != SEGMENT_MAGIC:
        raise VaultError(f"{name}: not a vault segment")
    try:  # the trailer first: nothing else is parsed before the signature and digest check out
        signature = data[-64:]
        (slen,) = struct.unpack_from(">I", data, len(data) - 68)
        trailer = len(data) - 68 - slen - 4
        if trailer < 8 or data[trailer : trailer + 4] != TRAILER_MAGIC:
            raise VaultError(f"{name}: truncated (no trailer)")
        summary_bytes = data[trailer + 4 : len(data) - 68]
        summary = json.loads(summary_bytes)
    except (struct.error, ValueError) as exc:
        raise VaultError(f"{name}: truncated or malformed trailer ({type(exc).__name__})") from None
    try:
        _verify(gateway, signature, summary_bytes, summary, summary.get("ended") if isinstance(summary, dict) else None)
    except InvalidSignature:
        raise VaultError(f"{name}: signature does not verify") from None
    except VaultError as exc:
        raise VaultError(f"{name}: {exc}") from None
    if hashlib.sha256(data[:trailer]).hexdigest() != summary["body"]:
        raise VaultError(f"{name}: contents altered (digest mismatch)")
    try:
        (hlen,) = struct.unpack_from(">I", data, 4)
        header = SegmentHeader.from_json(json.loads(data[8 : 8 + hlen]))
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise VaultError(f"{name}: malformed header ({type(exc).__name__})") from None
    at = 8 + hlen
    if header.version >= 3:
        at = _skip_checkpoint(data, at, trailer, name, "the header")
    records = []
    while at < trailer:
        try:
            record, used = Record.from_bytes(data, at, trailer)
        except RecordError as exc:
            raise VaultError(f"{name}: record {len(records)}: {exc}") from None
        if header.version >= 3:  # each record is followed by its checkpoint (covered by the trailer's digest)
            used = _skip_checkpoint(data, at + used, trailer, name, f"record {len(records)}") - at
        if (record.header.camera, record.header.segment) != (header.camera, header.segment):
            raise VaultError(f"{name}: record {len(records)} belongs to another segment")
        if record.header.version != header.version:
            raise VaultError(f"{name}: record {len(records)} is of version {record.header.version}, "
                             f"its segment of version {header.version}")
        records.append(record)
        at += used
    if len(records) != summary["count"]:
        raise VaultError(f"{name}: {len(records)} records, trailer says {summary['count']}")
    anchor = summary.get("audit")
    try:
        audit = None if anchor is None else (int(anchor["seq"]), str(anchor["head"]))
    except (KeyError, TypeError, ValueError):
        raise VaultError(f"{name}: malformed audit checkpoint") from None
    return Segment(header, hashlib.sha256(summary_bytes).hexdigest(), summary["keys"], summary["ended"],
                   bool(summary.get("recovered")), records, audit, str(summary.get("signer", GATEWAY_ACTOR)))


def read_wraps(raw: bytes | None, name: str, gateway: Ed25519PublicKey, expected_sha256: str) -> dict[str, list[Wrap]]:
    """The wraps of a segment's key file (``raw``, None if there is none); raises if shredded, altered or swapped."""
    if raw is None:
        raise VaultError(f"{name}: no key file (shredded?)")
    if hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise VaultError(f"{name}: key file does not belong to its segment")
    try:
        document = json.loads(raw)
        # no date to check a node's revocation against: the key file is bound (its digest) to its segment,
        # whose signed trailer was checked with its date
        _verify(gateway, bytes.fromhex(document["signature"]), canonical(document["keys"]), document["keys"], None)
        return {cls: [Wrap.from_json(w) for w in wraps] for cls, wraps in document["keys"]["wraps"].items()}
    except (InvalidSignature, ValueError, KeyError, TypeError):
        raise VaultError(f"{name}: key file signature does not verify") from None
    except VaultError as exc:
        raise VaultError(f"{name}: {exc}") from None


def _skip_checkpoint(data: bytes, mark: int, end: int, name: str, after: str) -> int:
    """Where the checkpoint at ``mark`` ends (its signature is the trailer's business once finished)."""
    try:
        if data[mark : mark + 4] != CHECKPOINT_MAGIC:
            raise ValueError
        (slen,) = struct.unpack_from(">I", data, mark + 4)
    except (struct.error, ValueError):
        raise VaultError(f"{name}: no checkpoint after {after}") from None
    if mark + 8 + slen + 64 > end:
        raise VaultError(f"{name}: checkpoint after {after} truncated")
    return mark + 8 + slen + 64


def check_chain(camera: str, segments: Iterable[tuple[str, Segment]],
                start: tuple[int, str] = (1, GENESIS)) -> Iterator[Segment]:
    """A camera's segments, as ``(name, segment)`` in name order, checked as a chain; raises at the first break.

    Read the segments lazily (a generator): the first unreadable one raises where it stands.
    ``start``: the first segment's number and the digest it must name as previous (a part of a
    chain, as a remote unmask receives it; whoever passes it vouches for that link).
    """
    previous = start[1]
    for expected, (name, segment) in enumerate(segments, start=start[0]):
        if segment.number != expected or name != segment_name(segment.number):
            raise VaultError(f"{name}: out of sequence (expected segment {expected}; one deleted or renamed?)")
        if segment.header.previous != previous:
            raise VaultError(f"{name}: hash chain broken (previous segment deleted, replaced or reordered)")
        if segment.header.camera != camera:
            raise VaultError(f"{name}: belongs to camera {segment.header.camera!r}, not {camera!r}")
        previous = segment.digest
        yield segment
