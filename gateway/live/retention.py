"""Retention on schedule: what ``serve`` does by itself every ``storage.retention_check_s``.

One run, in this order, each step audited by the vault's log:

1. segments past their policy's ``retention_days`` are crypto-shredded (:func:`keys.shred`:
   the ``shred`` entry first, then the co-signer's transit keys, then the key files);
2. recordings older than their camera's ``retention_days`` are deleted;
3. if ``storage.quota_gb`` is set and the data directory (plus the node's recordings in the bucket,
   with ``storage.objects.s3``) holds more, the oldest recordings are deleted until it does not
   (never one still being written), and the shortfall is logged when nothing more can go.

Recordings are found where :class:`gateway.storage.Recordings` keeps them: on the node's disk, and
(with a bucket) in the node's part of the bucket, where their age is the upload's time.

The run's ``retention`` entry names what it deleted and the bytes in use. Counters per action
are read by ``/metrics`` (``privacy_gateway_retention_actions_total``). A failing run is logged
and counted; the next one tries again.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from keys import EscrowError, VaultStore, actor_of, shred
from redaction import Policy

from ..storage import Recording, Recordings

log = logging.getLogger(__name__)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class Retention:
    """The schedule and one run of it; counters in :attr:`counts`."""

    def __init__(self, store: VaultStore, signer, data_dir: Path, recordings: Path,
                 policies: Callable[[], dict[str, Policy]], open_files: Callable[[], set[Path]],
                 period: float, quota_bytes: int | None = None, sealing: Callable[[], set[str]] = set,
                 archive: Recordings | None = None) -> None:
        """``sealing()``: the cameras this gateway's sealers are appending to (their chain locks are ours);
        ``archive``: where finished recordings are (default: ``recordings`` on this disk only)."""
        self.store, self._signer = store, signer
        self.data_dir, self.recordings = Path(data_dir), Path(recordings)
        self.archive = archive or Recordings(self.recordings)
        self._policies, self._open_files, self._sealing = policies, open_files, sealing
        self.period, self.quota_bytes = period, quota_bytes
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.run()
            except (EscrowError, OSError) as exc:
                self.counts["errors"] += 1
                log.error("retention run failed (the next one tries again): %s", exc)

    def run(self, now: dt.datetime | None = None) -> dict:
        """One run (see the module docstring); returns what its ``retention`` entry says."""
        now = now or dt.datetime.now(dt.UTC)
        shredded = shred(self.store, self._signer, expired=True, now=now, sealing=self._sealing()).segments
        recordings = self.archive.finished(self._open_files())
        expired: list[Recording] = []
        evicted: list[Recording] = []
        policies = self._policies()
        for recording in list(recordings):
            policy = policies.get(recording.camera)
            days = None if policy is None else policy.retention_days
            if days is not None and recording.modified + dt.timedelta(days=days) < now:
                self.archive.delete(recording)
                expired.append(recording)
                recordings.remove(recording)
        used = _size(self.data_dir) + sum(r.size for r in recordings if r.path is None)
        if self.quota_bytes is not None:
            while used > self.quota_bytes and recordings:
                oldest = recordings.pop(0)
                used -= oldest.size
                self.archive.delete(oldest)
                evicted.append(oldest)
            if used > self.quota_bytes:
                log.warning("data directory %s holds %d bytes, over its quota of %d, with no finished recording "
                            "left to delete", self.data_dir, used, self.quota_bytes)
        details = {"segments_shredded": len(shredded), "expired": [r.name for r in expired],
                   "evicted": [r.name for r in evicted], "used_bytes": used, "quota_bytes": self.quota_bytes}
        self.store.audit.append(actor_of(self._signer), self._signer, "retention", details)
        self.counts.update({"runs": 1, "segments_shredded": len(shredded), "recordings_expired": len(expired),
                            "recordings_evicted": len(evicted)})
        if evicted:
            log.warning("over quota: deleted the %d oldest recordings (%s)", len(evicted),
                        ", ".join(details["evicted"]))
        return details

