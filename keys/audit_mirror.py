"""A copy of the audit log in the vault's object store, one object per entry: :class:`AuditMirror`.

The log itself is a local file, appended under ``flock`` (:mod:`.audit`); an object store has no
append. So when the vault is in a bucket, every entry is also put as its own object::

    audit/<seq, 12 digits>.json      the entry's line exactly as in the log (no newline)

after it is durable on the node and before it is checkpointed at the co-signer, so the copy is
never behind a checkpoint of an honest writer. With the node gone (disk and all), the copy is the
log: :meth:`AuditMirror.sync` rebuilds a local file from it, byte for byte, and ``vault verify``
checks it as it checks any log (chain, signatures, the checkpoints in segments and at the
co-signer). A put that fails (the store down) is kept and retried at the next append; one still
missing when the node stops is put by the next :meth:`~AuditMirror.sync` (at the next start).

The copy adds no trust: whoever may write the bucket may rewrite it, as whoever holds the node may
rewrite the file; the checkpoints are what catch either. Where Object Lock is configured the entries
are locked like segments (keys.s3.LOCKED_PREFIXES), so a rewrite only adds versions.
"""

from __future__ import annotations

import logging
import re
import threading

from .audit import AuditLog
from .errors import AuditError, ObjectMissing
from .objects import ObjectStore

__all__ = ["AUDIT_PREFIX", "AuditMirror"]

log = logging.getLogger(__name__)

#: where the entries are, in the vault's object store
AUDIT_PREFIX = "audit/"
_ENTRY = re.compile(r"audit/(\d{12})\.json")


def _name(seq: int) -> str:
    return f"{AUDIT_PREFIX}{seq:012d}.json"


class AuditMirror:
    """The copy of one vault's audit log in ``objects``; call it as :attr:`keys.AuditLog.mirror`."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self._pending: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._failing = False

    def __call__(self, seq: int, line: bytes) -> None:
        """Put the entry just appended (and any an earlier failure left); never raises: the entry is
        durable on the node, and what could not be put is tried again at the next append."""
        with self._lock:
            self._pending[seq] = bytes(line)
            for number in sorted(self._pending):
                try:
                    self.objects.put(_name(number), self._pending[number])
                except OSError as exc:
                    if not self._failing:
                        log.error("audit log: cannot copy entry %d to %s (%s); trying again at the next entry",
                                  number, self.objects, exc)
                    self._failing = True
                    return
                del self._pending[number]
            if self._failing:
                log.info("audit log: the copy in %s is complete again", self.objects)
            self._failing = False

    def stored(self) -> list[int]:
        """The sequence numbers of the entries in the store, sorted."""
        return sorted(int(m.group(1)) for name in self.objects.list(AUDIT_PREFIX) if (m := _ENTRY.fullmatch(name)))

    def sync(self, audit: AuditLog) -> tuple[int, int]:
        """Bring the local log and the copy level: entries only the log has are put, entries only the copy
        has (appended by another machine, or the node's disk replaced) are appended to the log. Returns
        (put, appended). Raises :class:`AuditError` when the two disagree (a fork: the same place in the
        chain holds different entries) or the copy has a hole, :class:`OSError` when the store fails."""
        local = audit.lines()
        stored = self.stored()
        held = set(stored)
        last = stored[-1] if stored else 0
        common = min(len(local), last)
        if common and common in held and self.objects.get(_name(common)) != local[common - 1]:
            raise AuditError(f"{audit.path}: entry {common} differs from its copy in {self.objects} (two writers?)")
        put = [seq for seq in range(1, len(local) + 1) if seq not in held]
        for seq in put:
            self.objects.put(_name(seq), local[seq - 1])
        extra = []
        for seq in range(len(local) + 1, last + 1):
            try:
                extra.append(self.objects.get(_name(seq)))
            except ObjectMissing:
                raise AuditError(f"{self.objects}: the copy of the audit log lacks entry {seq}") from None
        if extra:
            audit.extend(extra)
        return len(put), len(extra)
