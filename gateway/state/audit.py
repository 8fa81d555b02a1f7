"""This node's audit log copied into the cluster's database, so that any node reads every node's log.

The log itself stays the node's file, appended under ``flock`` and checkpointed at the co-signer
(:mod:`keys.audit`): an append must never wait for the database. :class:`AuditCopy` is the log's
mirror hook (chained after the bucket's, if any): it queues each new line and a thread of its own
puts them into ``audit_entries`` (:class:`~.postgres.AuditTable`). When the database cannot be
reached the queue is dropped and the thread, with backoff, copies from the file what the table
lacks once it can; the same catch-up runs at start, so entries appended while this node was not
copying (before it joined a cluster, while the database was down) arrive too. A line the table
holds differently from the file is reported (logged and counted), never overwritten: the file
and the checkpoints decide which one is true.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from keys import AuditLog

from .postgres import AuditTable, StateUnavailable

__all__ = ["AuditCopy"]

log = logging.getLogger(__name__)

_BACKOFF = (0.5, 30.0)  # first and longest wait between two tries while the database is away


class AuditCopy:
    """Copies ``audit``'s entries into ``table`` under ``node`` (see the module docstring)."""

    def __init__(self, table: AuditTable, node: str, audit: AuditLog) -> None:
        self.table, self.node, self.audit = table, node, audit
        self.rewritten: set[int] = set()  # seqs at which the table holds another line than this node's log
        self.failures = 0  # copies that failed (the database away): each one is caught up later
        self._queue: deque[tuple[int, bytes]] = deque()
        self._wake = threading.Condition()
        self._catch_up = True  # copy from the file what the table lacks (at start, after a failure)
        self._busy = False  # a batch is being copied
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"audit-copy-{node}", daemon=True)
        self._before: Callable[[int, bytes], None] | None = None

    def start(self) -> None:
        """Hook into the log (after its bucket mirror, if any) and start copying."""
        self._before, self.audit.mirror = self.audit.mirror, self
        self._thread.start()

    def __call__(self, seq: int, line: bytes) -> None:
        """The log's mirror hook (the appending thread): queue the line, never wait."""
        if self._before is not None:
            self._before(seq, line)
        with self._wake:
            if not self._catch_up:
                self._queue.append((seq, line))
            self._wake.notify_all()  # the copier, and flush() waiting for it

    def flush(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every line appended so far is in the table: before a
        camera's lease is handed back, so that the node taking it over finds this node's last seal of
        it there (its hand-over names it). False if the table is behind still (the database away)."""
        if not self._thread.is_alive():
            return False

        def copied() -> bool:
            return not (self._queue or self._busy or self._catch_up)

        with self._wake:
            return self._wake.wait_for(lambda: copied() or self._stopping, timeout) and copied()

    @property
    def pending(self) -> int:
        with self._wake:
            return len(self._queue)

    def close(self, timeout: float = 5.0) -> None:
        """Copy what is queued (for at most ``timeout`` s), then stop and close the table's connection (the
        copy's own); the rest waits for the next start."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout)
        if self.audit.mirror is self:
            self.audit.mirror = self._before
        self.table.database.close()

    def _run(self) -> None:
        wait = _BACKOFF[0]
        while True:
            with self._wake:
                while not (self._queue or self._catch_up or self._stopping):
                    self._wake.wait()
                if self._stopping and not self._queue and not self._catch_up:
                    return
                catch_up, batch = self._catch_up, list(self._queue)
                self._queue.clear()
                self._catch_up, self._busy = False, True
            try:
                self._copy(self._from_file() if catch_up else batch)
                wait = _BACKOFF[0]
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()
            except StateUnavailable as exc:
                self.failures += 1
                if self.failures == 1 or wait >= _BACKOFF[1]:
                    log.warning("the audit log's copy in the shared state is behind (%s); catching up when it "
                                "answers", exc)
                with self._wake:
                    self._queue.clear()
                    self._catch_up, self._busy = True, False  # whatever was queued is in the file
                    if self._stopping:
                        return
                    self._wake.wait(wait)
                wait = min(_BACKOFF[1], wait * 2)

    def _from_file(self) -> list[tuple[int, bytes]]:
        """The log's entries the table does not have yet (its lines after the table's last seq)."""
        copied = self.table.last(self.node)
        lines = self.audit.lines()
        return [(seq, line) for seq, line in enumerate(lines[copied:], start=copied + 1)]

    def _copy(self, entries: list[tuple[int, bytes]]) -> None:
        started = time.monotonic()
        for first in range(0, len(entries), 500):
            for seq in self.table.put(self.node, entries[first:first + 500]):
                if seq not in self.rewritten:
                    self.rewritten.add(seq)
                    log.error("the shared state holds another line than this node's audit log at entry %d of node "
                              "%s: rewritten in the database, or this log was replaced; `audit verify` says which",
                              seq, self.node)
        if len(entries) > 500:
            log.info("audit log of node %s: %d entries copied to the shared state in %.1f s", self.node, len(entries),
                     time.monotonic() - started)
