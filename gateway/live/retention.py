"""Retention on schedule: what ``serve`` does by itself every ``storage.retention_check_s``.

One run, in this order, each step audited by the vault's log:

1. segments past their policy's ``retention_days`` are crypto-shredded (:func:`keys.shred`:
   the ``shred`` entry first, then the co-signer's transit keys, then the key files);
2. recordings older than their camera's ``retention_days`` are deleted;
3. if ``storage.quota_gb`` is set and the data directory holds more, the oldest recordings are
   deleted until it does not (never one still being written), and the shortfall is logged when
   nothing more can go.

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

from keys import GATEWAY_ACTOR, EscrowError, VaultStore, shred
from redaction import Policy

log = logging.getLogger(__name__)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class Retention:
    """The schedule and one run of it; counters in :attr:`counts`."""

    def __init__(self, store: VaultStore, signer, data_dir: Path, recordings: Path,
                 policies: Callable[[], dict[str, Policy]], open_files: Callable[[], set[Path]],
                 period: float, quota_bytes: int | None = None, sealing: Callable[[], set[str]] = set) -> None:
        """``sealing()``: the cameras this gateway's sealers are appending to (their chain locks are ours)."""
        self.store, self._signer = store, signer
        self.data_dir, self.recordings = Path(data_dir), Path(recordings)
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
        open_files = {p.resolve() for p in self._open_files()}
        recordings = sorted((p for p in self.recordings.glob("*/*.mp4") if p.resolve() not in open_files),
                            key=lambda p: p.stat().st_mtime)
        expired, evicted = [], []
        policies = self._policies()
        for path in list(recordings):
            policy = policies.get(path.parent.name)
            days = None if policy is None else policy.retention_days
            ended = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
            if days is not None and ended + dt.timedelta(days=days) < now:
                path.unlink()
                expired.append(path)
                recordings.remove(path)
        used = _size(self.data_dir)
        if self.quota_bytes is not None:
            while used > self.quota_bytes and recordings:
                oldest = recordings.pop(0)
                used -= oldest.stat().st_size
                oldest.unlink()
                evicted.append(oldest)
            if used > self.quota_bytes:
                log.warning("data directory %s holds %d bytes, over its quota of %d, with no finished recording "
                            "left to delete", self.data_dir, used, self.quota_bytes)
        details = {"segments_shredded": len(shredded), "expired": [_name(p) for p in expired],
                   "evicted": [_name(p) for p in evicted], "used_bytes": used, "quota_bytes": self.quota_bytes}
        self.store.audit.append(GATEWAY_ACTOR, self._signer, "retention", details)
        self.counts.update({"runs": 1, "segments_shredded": len(shredded), "recordings_expired": len(expired),
                            "recordings_evicted": len(evicted)})
        if evicted:
            log.warning("over quota: deleted the %d oldest recordings (%s)", len(evicted),
                        ", ".join(details["evicted"]))
        return details


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"
