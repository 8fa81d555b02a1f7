"""Retention: crypto-shredding old segments, logged before anything is destroyed.

A segment is *due* when it ended before a cut-off (``before``), or (``expired``) when its
policy's ``retention_days`` have passed since it ended. Shredding destroys the due segments'
key material, and only theirs: the transit keys the co-signer (OpenBao) holds for a version 3
segment's classes (no copy of the vault's files can bring those back), then its key file. The
segments stay and still verify, but nobody can unmask them.

The order is the invariant: the gateway's signed ``shred`` entry naming every due segment
(``details``: ``segments: [[camera, n], ...]`` and ``before`` or ``expired_at``) is appended
to the audit log first; if it cannot be written, nothing is shredded
(:class:`~keys.errors.AuditError`). Only then are the key files deleted, durably, so the log
never lacks a shredding that happened, and unmask can say which entry shredded a segment.
Segments a ``shred`` entry names are never chosen again; if key material of theirs is still
there (a shredding the co-signer interrupted, or key files put back from a copy), it is
destroyed again without a new entry. Each camera's chain is verified (under its sealing lock)
before anything of it is chosen.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .cosigner import CoSigner, segment_key
from .errors import AuditError, EscrowError, VaultError
from .nodes import actor_of
from .store import VaultStore
from .vault import Segment, segment_name

__all__ = ["Shredded", "shred"]


@dataclass(frozen=True)
class Shredded:
    """What :func:`shred` destroyed: ``(camera, segment number)`` pairs, and the audit entry saying so."""

    segments: list[tuple[str, int]]
    entry: dict | None  # None when nothing was due (then nothing is logged)


def _utc(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def shred(store: VaultStore, signer: Ed25519PrivateKey, *, before: dt.datetime | None = None, expired: bool = False,
          now: dt.datetime | None = None, cosigner: CoSigner | None = None,
          sealing: Collection[str] = ()) -> Shredded:
    """Shred every segment that ended before ``before``, or (``expired``) is past its policy's retention.

    Exactly one of ``before`` and ``expired``. Naive times are UTC. ``signer`` is the gateway's
    key (it signs the ``shred`` entry); ``cosigner`` the gateway's client of the vault's
    co-signer (default: the store's), needed for version 3 segments; ``now`` is fixed only by
    tests; ``sealing``: cameras this process itself is sealing (a running gateway's retention),
    whose chain lock its sealers hold: their finished segments are shredded without it (shredding
    destroys key material of finished segments only, and never appends to a chain). Raises :class:`~keys.errors.VaultError` for a damaged chain, a camera being sealed
    or a co-signer missing, and :class:`~keys.errors.AuditError` (nothing shredded) if the log
    cannot be written.
    """
    if (before is None) == (not expired):
        raise ValueError("shred: give either a cut-off time (before) or expired=True")
    now = _utc(now or dt.datetime.now(dt.UTC))
    before = None if before is None else _utc(before)
    cosigner = cosigner or store.cosigner
    try:
        log = store.audit.entries() if store.audit.exists() else []
    except AuditError as exc:  # what was shredded before is the log's to say
        raise AuditError(f"{exc}; nothing shredded") from None
    logged = {tuple(s) for e in log if e["action"] == "shred" for s in e["details"]["segments"]}
    chosen: list[tuple[str, int]] = []
    leftovers: list[tuple[str, Segment]] = []  # logged as shredded, key material still there
    segments: dict[tuple[str, int], Segment] = {}
    for camera in store.cameras():
        with contextlib.nullcontext() if camera in sealing else store.camera_lock(camera):
            for segment in store.verify_chain(camera):
                segments[(camera, segment.number)] = segment
                if (camera, segment.number) in logged:
                    if store.has_key_file(camera, segment.number):
                        leftovers.append((camera, segment))
                    continue
                ended = dt.datetime.fromisoformat(segment.ended)
                if before is not None:
                    due = ended < before
                else:
                    days = store.load_policy(segment.header.policy_sha256).get("retention_days")
                    due = days is not None and ended + dt.timedelta(days=days) < now
                if due:
                    chosen.append((camera, segment.number))
    if any(segments[c].header.version >= 3 for c in chosen) and cosigner is None:
        raise VaultError("shredding version 3 segments needs the co-signer (the gateway's OpenBao credentials)")
    for camera, segment in leftovers:
        _destroy(store, cosigner, camera, segment)
    if not chosen:
        return Shredded([], None)
    rule = {"before": before.isoformat()} if before is not None else {"expired_at": now.isoformat()}
    try:  # the log first: no shredding that the log does not show
        entry = store.audit.append(actor_of(signer), signer, "shred", {"segments": [list(c) for c in chosen], **rule})
    except AuditError as exc:
        raise AuditError(f"{exc}; nothing shredded") from None
    for camera, number in chosen:
        try:
            _destroy(store, cosigner, camera, segments[(camera, number)])
        except EscrowError as exc:
            raise VaultError(f"{exc}: shredding logged (audit entry {entry['seq']}) but not finished at "
                             f"{segment_name(number)} of camera {camera!r}; run it again to finish") from None
    return Shredded(chosen, entry)


def _destroy(store: VaultStore, cosigner: CoSigner | None, camera: str, segment: Segment) -> None:
    """The co-signer's transit keys of the segment's classes first, then its key file."""
    if segment.header.version >= 3:
        if cosigner is None:
            raise VaultError("shredding version 3 segments needs the co-signer (the gateway's OpenBao credentials)")
        # every class the segment sealed (a zone's ``zone:<name>`` too), and the detected ones in any case
        for cls in sorted({"face", "plate"} | {record.header.cls for record in segment.records}):
            cosigner.delete_key(segment_key(segment.header.vault, camera, cls, segment.number))
    if store.has_key_file(camera, segment.number):
        store.shred_key_file(camera, segment.number)
