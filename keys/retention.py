"""Retention: crypto-shredding old segments, logged before anything is destroyed.

A segment is *due* when it ended before a cut-off (``before``), or (``expired``) when its
policy's ``retention_days`` have passed since it ended. Shredding deletes the due segments'
key files, and only those: the segments stay and still verify, but nobody can unmask them.

The order is the invariant: the gateway's signed ``shred`` entry naming every due segment
(``details``: ``segments: [[camera, n], ...]`` and ``before`` or ``expired_at``) is appended
to the audit log first; if it cannot be written, nothing is shredded
(:class:`~keys.errors.AuditError`). Only then are the key files deleted, durably, so the log
never lacks a shredding that happened, and unmask can say which entry shredded a segment.
Segments already shredded are skipped; each camera's chain is verified (under its sealing
lock) before anything of it is chosen.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import AuditError
from .store import GATEWAY_ACTOR, VaultStore

__all__ = ["Shredded", "shred"]


@dataclass(frozen=True)
class Shredded:
    """What :func:`shred` destroyed: ``(camera, segment number)`` pairs, and the audit entry saying so."""

    segments: list[tuple[str, int]]
    entry: dict | None  # None when nothing was due (then nothing is logged)


def _utc(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def shred(store: VaultStore, signer: Ed25519PrivateKey, *, before: dt.datetime | None = None, expired: bool = False,
          now: dt.datetime | None = None) -> Shredded:
    """Shred every segment that ended before ``before``, or (``expired``) is past its policy's retention.

    Exactly one of ``before`` and ``expired``. Naive times are UTC. ``signer`` is the gateway's
    key (it signs the ``shred`` entry); ``now`` is fixed only by tests. Raises
    :class:`~keys.errors.VaultError` for a damaged chain or a camera being sealed, and
    :class:`~keys.errors.AuditError` (nothing shredded) if the log cannot be written.
    """
    if (before is None) == (not expired):
        raise ValueError("shred: give either a cut-off time (before) or expired=True")
    now = _utc(now or dt.datetime.now(dt.UTC))
    before = None if before is None else _utc(before)
    chosen: list[tuple[str, int]] = []
    for camera in store.cameras():
        with store.camera_lock(camera):
            for segment in store.verify_chain(camera):
                if not store.has_key_file(camera, segment.number):
                    continue
                ended = dt.datetime.fromisoformat(segment.ended)
                if before is not None:
                    due = ended < before
                else:
                    days = store.load_policy(segment.header.policy_sha256).get("retention_days")
                    due = days is not None and ended + dt.timedelta(days=days) < now
                if due:
                    chosen.append((camera, segment.number))
    if not chosen:
        return Shredded([], None)
    rule = {"before": before.isoformat()} if before is not None else {"expired_at": now.isoformat()}
    try:  # the log first: no shredding that the log does not show
        entry = store.audit.append(GATEWAY_ACTOR, signer, "shred", {"segments": [list(c) for c in chosen], **rule})
    except AuditError as exc:
        raise AuditError(f"{exc}; nothing shredded") from None
    for camera, number in chosen:
        store.shred_key_file(camera, number)
    return Shredded(chosen, entry)
