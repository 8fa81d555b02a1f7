"""One node of a cluster: holds camera leases (:mod:`.leases`) and runs exactly the cameras it holds.

Fail closed: a node publishes a camera only while its lease is surely valid. A lease renewed
in a round that started at ``t`` (this node's monotonic clock; the database stamps it later, with
``now()``) lasts until at least ``t + lease_s``; the node stops releasing video at
``t + lease_s - margin`` (:meth:`ClusterNode.may_release`, asked by the pipeline for each frame:
frames leave blanked after it) and stops its cameras then. So a node that cannot reach the
database (gone, partitioned, too slow: every statement times out after a third of a lease) has
stopped before anyone else may claim its cameras, and two nodes never release one camera.

Three threads, none on the event loop:

* ``leases``: a round every third of a lease, or at once when told (a ``NOTIFY`` from another
  node, a camera stopped to be handed back); reconnects after any database error;
* ``listen``: ``LISTEN`` on its own connection, waking the lease thread;
* ``apply``: makes the running cameras follow the leases: starts the ones held (a new
  recording and vault segment, as at a restart), stops the others, stops everything when the
  leases can no longer be trusted, and stops then starts again a camera whose definition changed
  (:meth:`ClusterNode.restart`: one thread does both, so the old one has stopped before the new
  one starts, under the same lease). Starting a camera takes seconds (its detector warms up);
  renewals go on meanwhile on the lease thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from ..config import Cluster
from .leases import CHANNEL, Leases

log = logging.getLogger(__name__)

#: seconds between two looks of the apply thread at the leases' deadline
_APPLY_TICK = 0.1
#: seconds before a camera that failed to start is tried again
_START_RETRY = 5.0
#: longest a hand-back waits for the audit copy to hold what the stopped cameras logged last
_FLUSH_S = 2.0
#: the longest a stopping node hands its cameras back one by one, its leases renewed meanwhile; then
#: what is left is stopped and released at once (or expires)
_LEAVE_S = 60.0
#: seconds between two log lines about the same database failure
_LOG_EVERY = 30.0


@dataclass
class ClusterStats:
    """What ``/metrics`` and ``/health`` report of this node."""

    #: cameras claimed from another node whose lease had expired
    takeovers: int = 0
    #: cameras claimed (free, handed back, or taken over)
    claims: int = 0
    #: rounds that failed (database unreachable, a statement timed out)
    failed_rounds: int = 0
    #: the last round's error, None once a round succeeds
    error: str | None = None
    #: node -> cameras held, over the live nodes, at the last round
    load: dict[str, int] = field(default_factory=dict)
    #: camera -> seconds of its last take-over's gap (:attr:`TakeOver.gap_s`)
    gaps: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TakeOver:
    """A camera this node took over from another node, once started here: from a node that stopped
    renewing its lease, or (``released``) from one that stopped the camera and handed it back (it
    stopped, or gave one back to even out the load).

    The previous owner of an expired lease released frames at most until its lease's last renewal plus
    two thirds of a lease, and may have stopped any time after that renewal (killed): ``gap_s`` runs
    from that renewal (``expired_at - lease_s``) to the camera started here (claim plus start). An
    estimate, not a bound: the old owner may have recorded past the renewal, and the first frame here
    comes after the start. The previous owner's open recording and segment are not in the bucket
    (docs/deploy.md). A camera handed back had stopped, its recording and segment finished, before its
    release (``expired_at`` is then the release's time): ``gap_s`` runs from the release to the start here."""

    camera: str
    previous: str
    epoch: int
    expired_at: datetime
    claimed_at: datetime
    gap_s: float
    released: bool = False

    def details(self) -> dict:
        """As the ``take-over`` audit entry records it."""
        return {"camera": self.camera, "previous": self.previous, "epoch": self.epoch,
                "expired_at": self.expired_at.isoformat(), "claimed_at": self.claimed_at.isoformat(),
                "gap_s": round(self.gap_s, 3), **({"released": True} if self.released else {})}


def connect(config: Cluster, autocommit: bool = False) -> psycopg.Connection:
    """A connection to the cluster's database as every part of a node opens one: the password from
    ``password_file``, and every statement, lock wait and connection attempt bounded by a third of a lease."""
    password = None
    if config.password_file is not None:
        password = config.password_file.read_text("utf-8").splitlines()[0]
    period = config.lease_s / 3
    timeout_ms = int(period * 1000)
    return psycopg.connect(config.database, autocommit=autocommit, password=password,
                           connect_timeout=max(1, int(period)), application_name=f"privacy-gateway {config.node}",
                           options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms} "
                                   f"-c idle_in_transaction_session_timeout={timeout_ms * 3}")


class ClusterNode:
    """This node's leases, and the cameras that follow them through ``start(camera)`` and ``stop(camera)``."""

    def __init__(self, config: Cluster, cameras: Callable[[], Collection[str]],
                 start: Callable[[str], None], stop: Callable[[str], None], rtsp_url: str | None = None) -> None:
        """``cameras()``: the cameras this node may run (the configuration's, as changed at run time;
        a lease of any other camera lapses); ``start``/``stop``:
        blocking, called on the apply thread only. ``rtsp_url``: where the other nodes send RTSP clients
        of this node's cameras (``GatewayConfig.rtsp_address``; None: this node serves no RTSP)."""
        self.config, self.name, self.lease_s, self.rtsp_url = config, config.node, config.lease_s, rtsp_url
        self.period = self.margin = config.lease_s / 3
        self._cameras, self._start, self._stop = cameras, start, stop
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # camera -> epoch, as the last round left them
        self._valid_until = 0.0  # monotonic: the held leases end at the earliest then
        self._elsewhere: dict[str, str] = {}  # camera -> its owner's base URL
        self._rtsp_elsewhere: dict[str, str] = {}  # camera -> its owner's RTSP address
        self._shedding: set[str] = set()  # being stopped to be handed back
        self._stopped_to_release: set[str] = set()  # stopped; release at the next round
        self._running: dict[str, int] = {}  # camera -> the epoch it was started under (apply thread)
        self._failed: dict[str, float] = {}  # camera -> when it last failed to start
        self._restarting: set[str] = set()  # to be stopped and started again (its definition changed)
        self.stats = ClusterStats()
        #: told of each take-over once the camera runs here (on the apply thread): the audit entry
        self.on_takeover: Callable[[TakeOver], None] | None = None
        #: called with a timeout (s) before stopped cameras are handed back: returns once what their
        #: stop logged is where the next owner reads it (the audit copy, for the hand-over's link)
        self.before_release: Callable[[float], object] | None = None
        self._taken: dict[str, tuple[str, datetime, datetime]] = {}  # camera -> Round.previous, until started
        self._handed: set[str] = set()  # of those, the cameras their previous owner handed back
        self._closing = threading.Event()
        self._leaving = threading.Event()  # close(): every camera handed back, nothing claimed
        self._round_now = threading.Event()
        self._apply_now = threading.Event()
        self._leases: Leases | None = None
        self._threads = [threading.Thread(target=target, name=f"cluster-{what}", daemon=True)
                         for what, target in (("leases", self._lease_loop), ("listen", self._listen_loop),
                                              ("apply", self._apply_loop))]

    # --- what the rest of the gateway asks ------------------------------------------------------

    def may_release(self, camera: str) -> bool:
        """Whether ``camera``'s frames may leave now (this node surely holds its lease); O(1)."""
        return camera in self._held and time.monotonic() < self._valid_until - self.margin

    def owner_url(self, camera: str) -> str | None:
        """The base URL of the node that runs ``camera``, if another node holds its lease."""
        return self._elsewhere.get(camera)

    def owner_rtsp_url(self, camera: str) -> str | None:
        """The RTSP address (``rtsp://host:port``) of the node that runs ``camera``, if another node holds
        its lease and serves RTSP."""
        return self._rtsp_elsewhere.get(camera)

    def owned(self) -> dict[str, int]:
        """camera -> epoch of the leases this node holds and may publish under now."""
        with self._lock:
            return dict(self._held) if time.monotonic() < self._valid_until - self.margin else {}

    def elsewhere(self) -> dict[str, str]:
        return dict(self._elsewhere)

    # --- what the rest of the gateway tells -----------------------------------------------------

    def changed(self) -> None:
        """``cameras()`` changed (a camera added or removed at run time): a round now, not in a period."""
        self._round_now.set()

    def restart(self, camera: str) -> None:
        """``camera``'s definition changed: if it runs here, stop it and start it again (on the apply
        thread, the stop finished before the start, under the same lease); if it failed to start
        here, try the new definition at once."""
        with self._lock:
            self._restarting.add(camera)
        self._apply_now.set()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Hand every camera back and leave. The cameras stop one by one as for a hand-back (the apply
        thread stops each, the lease thread releases it) while the leases of the others are still
        renewed: stopping a camera (its recording finished, its originals sealed) takes a second or
        more on a busy machine, and a node holding three of them let their leases expire before it
        could hand them back (the next owner took them over as from a dead node). Then the threads
        stop and anything left is released (best effort: if the database is unreachable the leases
        simply expire)."""
        with self._lock:
            self._shedding |= set(self._held)
        self._leaving.set()
        self._round_now.set()
        self._apply_now.set()
        deadline = time.monotonic() + _LEAVE_S
        while time.monotonic() < deadline and any(thread.is_alive() for thread in self._threads):
            with self._lock:
                lapsed = time.monotonic() >= self._valid_until  # nothing left to hand back
                if not self._running and (not self._shedding or lapsed):
                    break
            time.sleep(_APPLY_TICK)
        self._closing.set()
        self._round_now.set()
        self._apply_now.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(self.lease_s + 5)
        for camera in list(self._running):
            self._stop_camera(camera)
        if self._leases is not None:
            self._flush()
            try:
                self._leases.release(list(self._held))
                self._leases.leave()
            except psycopg.Error as exc:
                log.warning("cluster: could not hand the leases back (%s); they expire within %.0f s",
                            exc, self.lease_s)
            self._leases.connection.close()

    def _flush(self) -> None:
        if self.before_release is not None:
            try:
                self.before_release(min(_FLUSH_S, self.lease_s / 2))
            except Exception:  # the release goes ahead: a hand-over without a link is logged as such
                log.exception("cluster: waiting for the audit copy before a release failed")

    # --- the lease thread -----------------------------------------------------------------------

    def _connect(self, autocommit: bool = False) -> psycopg.Connection:
        return connect(self.config, autocommit=autocommit)

    def _lease_loop(self) -> None:
        logged = -_LOG_EVERY
        while not self._closing.is_set():
            began = time.monotonic()
            try:
                if self._leases is None:
                    self._leases = Leases(self._connect(), self.name, self.config.url, self.config.capacity,
                                          self.lease_s, self.rtsp_url)
                    self._leases.set_up()
                self._round(began)
            except (psycopg.Error, OSError) as exc:
                self.stats.failed_rounds += 1
                self.stats.error = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
                if time.monotonic() - logged >= _LOG_EVERY:
                    logged = time.monotonic()
                    log.warning("cluster: node %s cannot reach the lease table (%s); its cameras stop %.1f s after "
                                "the last renewal", self.name, self.stats.error, self.lease_s - self.margin)
                if self._leases is not None:
                    self._leases.connection.close()
                    self._leases = None
            self._apply_now.set()
            self._round_now.wait(max(0.0, self.period - (time.monotonic() - began)))
            self._round_now.clear()

    def _round(self, began: float) -> None:
        if self._closing.is_set():
            return  # claim nothing while stopping: close() hands back what is held
        with self._lock:
            release = set(self._stopped_to_release)
        if release:
            self._flush()
            self._leases.release(release)
        with self._lock:
            self._stopped_to_release -= release
            self._shedding -= release
            keep_out = set(self._shedding)
            kept = set(self._held) - release
        leaving = self._leaving.is_set()
        # leaving: only the leases still held are renewed (none claimed), until each is handed back
        result = self._leases.round(kept if leaving else self._cameras(), keep_out)
        with self._lock:
            self._held, self._valid_until = result.held, began + self.lease_s
            if leaving:
                self._shedding |= set(result.held)
            self._taken = {camera: taken for camera, taken in {**self._taken, **result.previous}.items()
                           if camera in result.held}
            self._handed = (self._handed - set(result.taken_over) | set(result.handed_over)) & set(self._taken)
            self._elsewhere, self._rtsp_elsewhere = result.elsewhere, result.rtsp_elsewhere
            if result.shed is not None:
                self._shedding.add(result.shed)
                log.info("cluster: node %s hands camera %s back (nodes hold %s)", self.name, result.shed,
                         result.load)
        self.stats.claims += len(result.claimed)
        self.stats.takeovers += len(result.taken_over)
        self.stats.load, self.stats.error = result.load, None
        for camera in result.claimed:
            log.info("cluster: node %s claimed camera %s (epoch %d%s)", self.name, camera, result.held[camera],
                     ", taken over from a node that stopped renewing" if camera in result.taken_over else
                     f", handed back by {result.previous[camera][0]}" if camera in result.handed_over else "")

    def _listen_loop(self) -> None:
        while not self._closing.is_set():
            try:
                with self._connect(autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    while not self._closing.is_set():
                        for notice in connection.notifies(timeout=0.5):
                            if notice.payload != self.name:
                                self._round_now.set()
            except (psycopg.Error, OSError):
                self._closing.wait(self.period)  # the lease thread reports the database's failures

    # --- the apply thread -----------------------------------------------------------------------

    def _apply_loop(self) -> None:
        lost = False
        while not self._closing.is_set():
            with self._lock:
                valid = time.monotonic() < self._valid_until - self.margin
                wanted = {camera: epoch for camera, epoch in self._held.items()
                          if camera not in self._shedding} if valid and not self._leaving.is_set() else {}
            if not valid and self._running and not lost:
                log.error("cluster: node %s could not renew its leases in time; stopping its cameras %s",
                          self.name, sorted(self._running))
            lost = not valid
            with self._lock:
                restarting, self._restarting = self._restarting, set()
            for camera in restarting:
                self._failed.pop(camera, None)
            for camera in [c for c, epoch in self._running.items() if wanted.get(c) != epoch or c in restarting]:
                self._stop_camera(camera)
            with self._lock:  # handed back while not running (it failed to start, or the leases were in doubt)
                idle = self._shedding - set(self._running) - self._stopped_to_release
                if idle:
                    self._stopped_to_release |= idle
                    self._round_now.set()
            now = time.monotonic()
            for camera in sorted(set(wanted) - set(self._running)):
                if self._closing.is_set() or not self.may_release(camera):
                    break
                if now - self._failed.get(camera, -_START_RETRY) < _START_RETRY:
                    continue
                started = time.monotonic()
                try:
                    self._start(camera)
                except Exception:  # a camera that cannot start must not stop the others; tried again later
                    log.exception("cluster: camera %s cannot start on node %s; trying again in %.0f s", camera,
                                  self.name, _START_RETRY)
                    self._failed[camera] = time.monotonic()
                    continue
                self._running[camera] = wanted[camera]
                self._took_over(camera, wanted[camera], time.monotonic() - started)
            self._apply_now.wait(_APPLY_TICK)
            self._apply_now.clear()

    def _took_over(self, camera: str, epoch: int, start_s: float) -> None:
        with self._lock:
            previous = self._taken.pop(camera, None)
            released = camera in self._handed
            self._handed.discard(camera)
        if previous is None:
            return
        owner, expired_at, claimed_at = previous
        since = expired_at if released else expired_at - timedelta(seconds=self.lease_s)
        event = TakeOver(camera, owner, epoch, expired_at, claimed_at, (claimed_at - since).total_seconds() + start_s,
                         released)
        self.stats.gaps[camera] = event.gap_s
        if released:
            log.info("cluster: node %s took camera %s over from %s, which handed it back at %s; its footage has a "
                     "gap of %.1f s", self.name, camera, owner, expired_at.isoformat(), event.gap_s)
        else:
            log.warning("cluster: node %s took camera %s over from %s (its lease expired at %s); its footage has a "
                        "gap of at most %.1f s", self.name, camera, owner, expired_at.isoformat(), event.gap_s)
        if self.on_takeover is not None:
            try:
                self.on_takeover(event)
            except Exception:  # the camera runs either way; the log says why the entry is missing
                log.exception("cluster: could not record the take-over of camera %s", camera)

    def _stop_camera(self, camera: str) -> None:
        self._running.pop(camera, None)
        try:
            self._stop(camera)
        except Exception:  # it is out of the running set either way: its frames are fenced
            log.exception("cluster: stopping camera %s failed", camera)
        with self._lock:
            if camera in self._shedding:
                self._stopped_to_release.add(camera)
                self._round_now.set()
