"""Checking a whole vault, or its audit log, for damage: what ``vault verify`` and ``audit verify`` run.

What :func:`verify_vault` checks, in this order, stopping at the first damage with an
:class:`~keys.errors.IntegrityError` that names it:

1. the audit log: every entry's chain link, sequence and signature, and every checkpoint of it
   the segments keep (a log cut, rolled back or replaced fails); a missing log fails as soon
   as a segment was sealed after an entry of it, or before checkpoints were kept;
2. per camera (every camera in the vault, and every camera the log says sealed something):
   its segment chain (:meth:`~keys.store.VaultStore.verify_chain`);
3. the chain against the log's ``seal`` entries for the camera: a chain that stops short of the
   segment the log records as sealed has lost its newest segments, which the chain alone
   cannot tell; and every recording the log sealed must be there as logged: its segments
   belong to it, hold the records the entry counts, and end at the digest it names (a chain
   from another vault, or one rebuilt by hand, does not); a version 3 segment must name this
   vault's id;
4. every segment's key file: present and belonging to its segment, or absent with a ``shred``
   entry in the log that names it; a key file *present* for a segment the log says was
   shredded is damage too (a copy put back: it opens nothing, since the co-signer's keys are
   gone, but it must not pass unnoticed);
5. the signature of the vault's copy of the roster, whether or not the key directory was given;
6. given the recordings' directory (``<camera>/<file>``) and a way to count a file's frames
   (or ``recording_frames(camera, file)``, None when it is missing: recordings in a bucket): every recording the log says was written (``recorded``) is there, holding the
   frames it logged, unless a ``retention`` entry deleted it: a recording cut or replaced fails.

A ``take-over`` entry (a cluster node took a camera from a node that stopped renewing its
lease, or, with ``released``, that stopped the camera and handed it back) is a gap in that camera's
footage, not damage: the report lists them (:attr:`VaultReport.gaps`),
each with its hand-over to the previous owner's log, which only a reader of that log checks
(:func:`keys.check_handovers`, the cluster's ``/api/audit/verify``).

Segments left unfinished by a crash are not damage: they are counted per camera in the
report, and recovered when sealing resumes. Nothing is repaired or changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cosigner import CoSigner
from .errors import AuditError, CoSignerRefused, IntegrityError, VaultError
from .store import VaultStore
from .vault import Segment, segment_name

__all__ = ["VaultReport", "verify_audit", "verify_vault"]


@dataclass(frozen=True)
class VaultReport:
    """What :func:`verify_vault` found intact."""

    cameras: tuple[str, ...]  # the cameras the vault holds (VaultStore.cameras())
    segments: int  # segments verified, all cameras together
    entries: int  # audit log entries verified (0: no log yet)
    partials: dict[str, int] = field(default_factory=dict)  # camera -> unfinished segments, only where > 0
    #: the ``take-over`` entries' details (camera, previous, epoch, expired_at, claimed_at, gap_s), in log order
    gaps: tuple[dict, ...] = ()


def verify_audit(store: VaultStore, cosigner: CoSigner | None = None) -> int:
    """Verify the vault's audit log against its checkpoints in the segments; the number of
    entries, or :class:`IntegrityError` naming the first damage.

    A log that does not exist is 0 entries while nothing shows it ever existed (no segment
    sealed after an entry of it or before checkpoints were kept, no checkpoint at the
    co-signer), and damage otherwise; one that cannot be read raises. With ``cosigner`` (a client whose token
    may read them, such as the gateway's), the checkpoints the co-signer keeps count too: the
    only ones that catch entries dropped after the last segment closed.
    """
    try:
        anchors = store.audit_anchors()
        if cosigner is not None and store.vault_id:
            anchors += store.cosigner_anchors(cosigner)
        if not store.audit.exists():
            _missing_log(store, anchors)
            return 0
        return store.audit.verify(store.key_of, anchors)
    except (AuditError, VaultError, CoSignerRefused) as exc:
        raise IntegrityError(str(exc)) from None


def _missing_log(store: VaultStore, anchors: list[tuple[int, str, str]]) -> None:
    anchored = [source for seq, _, source in anchors if seq > 0]
    unanchored = any(store.segment(c, n).audit is None for c in store.cameras() for n in store.segment_numbers(c))
    if anchored or unanchored:
        where = anchored[0] if anchored else "segments sealed before checkpoints were kept"
        raise IntegrityError(f"the audit log is missing, but {where} show it existed (deleted?)")


def verify_vault(store: VaultStore, cosigner: CoSigner | None = None, recordings: Path | None = None,
                 frames_of: Callable[[Path], int] | None = None, *,
                 recording_frames: Callable[[str, str], int | None] | None = None) -> VaultReport:
    """Check every segment chain, key file and the audit log against each other (see the module docstring)."""
    log: list[dict] = []
    verify_audit(store, cosigner)
    if store.audit.exists():
        try:
            log = store.audit.entries()
        except AuditError as exc:
            raise IntegrityError(str(exc)) from None
    try:
        store.check_roster_copy()
    except VaultError as exc:
        raise IntegrityError(str(exc)) from None
    shredded = {tuple(s): e["seq"] for e in log if e["action"] == "shred" for s in e["details"]["segments"]}
    heads: dict[str, int] = {}
    seals: dict[str, list[dict]] = {}
    for entry in log:
        if entry["action"] == "seal":
            heads[entry["details"]["camera"]] = entry["details"]["segments"][1]
            seals.setdefault(entry["details"]["camera"], []).append(entry)
    cameras = store.cameras()
    total, partials = 0, {}
    for camera in sorted(set(cameras) | set(heads)):
        try:
            chain = list(store.verify_chain(camera))
        except VaultError as exc:
            raise IntegrityError(f"camera {camera!r}: {exc}") from None
        if camera in heads and (not chain or chain[-1].number < heads[camera]):
            missing = segment_name(chain[-1].number + 1 if chain else 1)
            raise IntegrityError(f"camera {camera!r}: segment {missing} is missing (the audit log records segments "
                                 f"up to {segment_name(heads[camera])} as sealed)")
        _check_seals(camera, chain, seals.get(camera, []))
        for segment in chain:
            if store.has_key_file(camera, segment.number):
                if (camera, segment.number) in shredded:
                    raise IntegrityError(f"camera {camera!r}: key file of {segment_name(segment.number)} is present, "
                                         f"but audit entry {shredded[(camera, segment.number)]} shredded it "
                                         "(put back from a copy?)")
                try:
                    store.wraps(camera, segment)
                except VaultError as exc:
                    raise IntegrityError(f"camera {camera!r}: {exc}") from None
            elif (camera, segment.number) not in shredded:
                raise IntegrityError(f"camera {camera!r}: key file of {segment_name(segment.number)} is missing "
                                     "and no shred is logged")
        total += len(chain)
        finished = {segment.number for segment in chain}
        unfinished = [n for n in store.partial_segments(camera) if n not in finished]
        if unfinished:
            partials[camera] = len(unfinished)
    if recordings is not None and frames_of is not None:
        directory = Path(recordings)

        def counted(camera: str, file: str) -> int | None:
            path = directory / camera / file
            return frames_of(path) if path.is_file() else None

        _check_recordings(log, counted)
    elif recording_frames is not None:
        _check_recordings(log, recording_frames)
    gaps = tuple(e["details"] for e in log if e.get("action") == "take-over" and isinstance(e.get("details"), dict))
    return VaultReport(tuple(cameras), total, len(log), partials, gaps)


def _check_recordings(log: list[dict], frames_of: Callable[[str, str], int | None]) -> None:
    deleted = {name for e in log if e.get("action") == "retention"
               for name in [*e["details"].get("expired", []), *e["details"].get("evicted", [])]}
    for entry in log:
        if entry.get("action") != "recorded":
            continue
        details = entry["details"]
        name = f"{details['camera']}/{details['file']}"
        if name in deleted:
            continue
        frames = frames_of(details["camera"], details["file"])
        if frames is None:
            raise IntegrityError(f"recording {name} is missing (audit entry {entry['seq']} logged it; no retention "
                                 "run deleted it)")
        if frames != details["frames"]:
            raise IntegrityError(f"recording {name} holds {frames} frames; audit entry {entry['seq']} logged "
                                 f"{details['frames']} (cut or edited?)")


def _check_seals(camera: str, chain: list[Segment], seals: list[dict]) -> None:
    """Every recording the log says was sealed, against the segments that hold it."""
    by_number = {segment.number: segment for segment in chain}
    for entry in seals:
        details = entry["details"]
        first, last = details["segments"]
        held = [by_number.get(n) for n in range(first, last + 1)]
        if any(segment is None for segment in held):
            missing = next(n for n, segment in zip(range(first, last + 1), held, strict=True) if segment is None)
            raise IntegrityError(f"camera {camera!r}: segment {segment_name(missing)} of the recording audit entry "
                                 f"{entry['seq']} sealed is missing")
        where = f"camera {camera!r}: segments {segment_name(first)}-{segment_name(last)}"
        if any(segment.header.recording != details["recording"] for segment in held):
            raise IntegrityError(f"{where} do not all belong to recording {details['recording']} "
                                 f"(audit entry {entry['seq']})")
        records = sum(len(segment.records) for segment in held)
        if "records" in details and records != details["records"]:
            raise IntegrityError(f"{where} hold {records} records; audit entry {entry['seq']} sealed "
                                 f"{details['records']}")
        if "head" in details and held[-1].digest != details["head"]:
            raise IntegrityError(f"{where} end at another digest than audit entry {entry['seq']} sealed "
                                 "(replaced?)")
