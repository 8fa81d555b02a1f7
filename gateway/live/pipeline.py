"""One camera's live pipeline: frames in → decide (detect, track) → redact + seal → release in order.

Fail-closed by construction: a frame leaves only through :meth:`CameraPipeline._drain`, and
only in one of three states:

``redacted``  the engine decided its regions and they were redacted (and sealed);
``blanked``   no decision by its deadline (detector still warming up, slow, stalled or
              crashed, queue behind), or the camera is held because its view moved
              (:mod:`.moved`): replaced by a solid frame of the same size;
``dropped``   never analysed because the input queue overflowed (no pixels at all).

Every frame index is released exactly once and in order, so a recorder can keep its files
aligned with the sealed records. The watchdog (:meth:`tick`, driven by the runtime every few
milliseconds) blanks the oldest frame once its hold-back deadline passes; the worker claims
a frame before redacting it, and the watchdog never touches a claimed frame, so a frame is
either redacted or blanked, never both, never raw. Redacting and sealing a decided frame is
:class:`~gateway.sealing.RedactSeal`'s job, the same step ``privacy-gateway redact`` uses.

Nothing stops the worker for good: an error that escapes it is counted and logged once per
burst (:mod:`gateway.faults`) and the worker starts again after a backoff, while the watchdog
blanks the frames that come meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from keys import PublicIdentity, VaultRef
from redaction import (
    Analyzer,
    Decision,
    Frame,
    Policy,
    StreamRedactor,
    detector_settings,
    warmup_kernels,
)

from ..egress import Sink
from ..faults import Faults
from ..frames import Released, SourceFrame, State, blank, frame_rate
from ..sealing import PolicyChange, RedactSeal, SealerBusy, SealingDown

log = logging.getLogger(__name__)

#: a detection frame is started only if it is expected to finish within its hold-back with a
#: quarter of its expected cost to spare: detection time varies from frame to frame
_COST_MARGIN = 1.25
#: the cost estimate never exceeds this share of the hold-back: 1.25 x 0.75 < 1, so a frame that
#: has just arrived is always tried, and after a stall the estimate can come down again instead of
#: every detection frame being judged late for ever
_COST_CAP = 0.75
#: weight of the newest detection time in the running cost estimate
_COST_SMOOTHING = 0.3
_ERROR_LOG_INTERVAL = 10.0  # seconds between logged detector failures: a crash loop must not flood the log
#: the longest the watchdog sleeps: the shortest hold-back a camera may have (``holdback_ms``), so
#: a camera added while it sleeps has no frame past its deadline before it wakes
WATCHDOG_PERIOD = 0.02


@dataclass
class PipelineStats:
    """Counters read by the metrics exporter (plain numbers; written under the pipeline lock)."""

    frames_in: int = 0
    released: int = 0
    blanked: int = 0
    dropped: int = 0
    late: int = 0  # decided after the watchdog had already blanked them
    seal_refused: int = 0  # decided, but blanked: the sealer was behind, or failed, and did not take their originals
    detector_errors: int = 0
    detections: int = 0
    detect_seconds: float = 0.0
    queue_depth: int = 0
    warm: bool = False
    started: float = 0.0  # when the worker started (monotonic s)
    last_redacted: float | None = None  # when a redacted frame last left (monotonic s)
    last_in: float | None = None  # when a frame last came in (monotonic s)
    redaction_errors: int = 0  # decided frames blanked because redacting them raised
    sink_errors: int = 0  # frames a sink raised on (the sink logs and counts its own failures)
    held: int = 0  # redacted frames released blanked because the camera's view moved (counted in blanked too)
    #: arrival → release of redacted frames, drained by the metrics exporter (bounded)
    latency_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


@dataclass(frozen=True)
class _Queued:
    index: int  # the pipeline's own, consecutive
    time: float
    image: np.ndarray
    arrived: float


@dataclass
class _Slot:
    time: float
    arrived: float
    shape: tuple[int, int, int]
    state: State | Literal["pending", "claimed"] = "pending"
    image: np.ndarray | None = None
    ref: VaultRef | None = None


@dataclass(frozen=True)
class _Switch:
    """A policy switch asked for by :meth:`CameraPipeline.activate`, made by the worker between two frames."""

    analyzer: Analyzer
    change: PolicyChange


class CameraPipeline:
    """Decides, redacts, seals and releases one camera's frames; sinks get :class:`Released` in order."""

    def __init__(
        self,
        camera: str,
        step: RedactSeal,
        sinks: list[Sink],
        holdback: float = 0.5,
        queue_frames: int = 16,
        analyzer_factory: Callable[[Policy], Analyzer] = Analyzer,
    ) -> None:
        """``step`` redacts and seals decided frames (its policy is the one in force at start)."""
        if holdback <= 0:
            raise ValueError(f"holdback must be > 0 s, got {holdback}")
        self.camera, self.step, self.sinks = camera, step, sinks
        self.holdback = holdback
        self.stats = PipelineStats()
        self._seal_logged = -_ERROR_LOG_INTERVAL  # when a redaction failure was last logged
        self._sink_logged = -_ERROR_LOG_INTERVAL  # when a sink failure was last logged
        self._analyzer_factory = analyzer_factory
        self._lock = threading.Lock()
        self._release_lock = threading.Lock()
        self._slots: OrderedDict[int, _Slot] = OrderedDict()
        self._queue: deque[_Queued] = deque()
        self._next_index = 0
        self._queue_frames = queue_frames
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        #: the worker has ended, and who closes the sealer is settled (under _lock): stop(), or the
        #: worker itself on its way out when stop() gave up waiting for it
        self._ended = False
        self._close_when_ended = False
        self._switch: _Switch | None = None
        self._switched = threading.Condition(self._lock)
        self._switch_failure: Exception | None = None
        self._activating = threading.Lock()  # one policy switch at a time
        self._analyzer: Analyzer | None = None  # the worker's, once it has one (a switch may share its detectors)
        #: the worker's own failures (it restarts, with backoff, after any error that escapes it)
        self.worker_faults = Faults(f"camera {camera}: pipeline worker")
        #: why every frame leaves blanked, redacted or not (a moved camera, see :mod:`.moved`); None: released
        self.held: str | None = None
        #: asked for each redacted frame: False and it leaves blanked (a cluster node whose lease on
        #: the camera is in doubt, :meth:`gateway.cluster.ClusterNode.may_release`); None: always released
        self.fence: Callable[[], bool] | None = None
        #: told of every redacted frame as it is released or withheld (O(1): it keeps a reference)
        self.observe: Callable[[np.ndarray], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"pipeline-{camera}", daemon=True)

    @property
    def policy(self) -> Policy:
        """The policy in force (frames decided from now on are redacted and sealed under it)."""
        return self.step.policy

    # --- input (source thread) --------------------------------------------------------------

    def offer(self, source_frame: SourceFrame) -> None:
        """Take a frame from the source; never blocks. Overflow drops the oldest queued frame.

        Frames are numbered here, consecutively, whatever the source's numbering: a frame the
        source itself lost must not leave a gap, or recordings would drift from their records.
        """
        with self._lock:
            frame = _Queued(self._next_index, source_frame.time, source_frame.image, source_frame.arrived)
            self._next_index += 1
            self.stats.frames_in += 1
            self.stats.last_in = source_frame.arrived
            self._slots[frame.index] = _Slot(frame.time, frame.arrived, frame.image.shape)
            self._queue.append(frame)
            while len(self._queue) > self._queue_frames:
                old = self._queue.popleft()
                slot = self._slots.get(old.index)
                if slot is not None and slot.state == "pending":
                    slot.state = "dropped"
            self.stats.queue_depth = len(self._queue)
            self._wake.notify()
        self._drain()

    # --- watchdog ------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> float:
        """Blank every frame whose deadline has passed without a decision. Returns when to tick
        again (monotonic s): the next undecided frame's deadline, or one hold-back from ``now``
        (no frame offered after ``now`` has an earlier one)."""
        now = time.monotonic() if now is None else now
        due = now + self.holdback
        with self._lock:
            for slot in self._slots.values():
                if slot.state != "pending":
                    continue
                if now - slot.arrived >= self.holdback:
                    slot.state = "blanked"
                else:
                    due = slot.arrived + self.holdback
                    break  # younger frames have later deadlines
        self._drain()
        return due

    # --- worker ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.stats.started = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; frames not yet decided are released blanked, none raw."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        with self._lock:
            for slot in self._slots.values():
                if slot.state == "pending":
                    slot.state = "blanked"
            ended = self._ended
            self._close_when_ended = not ended
        self._drain()
        if ended:
            self.step.close()
        else:  # a detection or a model load outlasting the wait: the sealer is the worker's to close,
            # after its last frame (else the camera's vault lock stays held until the process ends)
            log.warning("camera %s: the pipeline worker is still busy after %.0f s; its sealer closes when it ends",
                        self.camera, timeout)

    # --- policy ----------------------------------------------------------------------------------

    def activate(self, policy: Policy, identities: list[PublicIdentity] | None = None, timeout: float = 30.0) -> bool:
        """Switch to ``policy`` without stopping: call from any thread but the worker's.

        The new analyzer is built here (models loaded and warmed) while the old one keeps
        deciding; the worker adopts it between two frames. Frames held by the old analyzer at
        that moment are blanked then (never raw), not at their deadline. Sealing binds
        every record from the first frame decided under the new policy to it (a new
        recording). Raises, with the old policy still in force, if the analyzer cannot be built
        or the policy's unmask grants cannot be met. Returns True once the worker has switched,
        False if no frame came within ``timeout`` (the switch then happens at the next frame).
        """
        with self._activating:
            change = self.step.prepare(policy, identities)
            current = self._analyzer
            if current is not None and detector_settings(current.policy) == detector_settings(policy):
                # the same models: none loaded, no CPU spike
                analyzer = Analyzer(policy, current.detectors, side_by_side=current.side_by_side)
            else:
                analyzer = self._analyzer_factory(policy)
            switch = _Switch(analyzer, change)
            with self._lock:
                self._switch = switch
                self._wake.notify()
                if not self._switched.wait_for(lambda: self._switch is not switch, timeout):
                    return False
                if self._switch_failure is not None:
                    raise self._switch_failure
                return True

    def _adopt(self, frame: _Queued) -> Analyzer | None:
        """The switch :meth:`activate` asked for, made before ``frame`` is analysed (worker thread)."""
        with self._lock:
            switch = self._switch
        if switch is None:
            return None
        failure = None
        try:
            self.step.switch(switch.change, frame.index, frame.time)
        except Exception as exc:  # the vault refused (disk, audit log): the old policy stays in force
            log.exception("camera %s: could not seal under the new policy; the old one stays", self.camera)
            failure = exc
        with self._lock:
            self._switch, self._switch_failure = None, failure
            self._switched.notify_all()
        return None if failure is not None else switch.analyzer

    def _next(self) -> _Queued | None:
        with self._lock:
            while not self._queue and not self._stopping:
                self._wake.wait(0.5)
            if self._stopping:
                return None
            frame = self._queue.popleft()
            self.stats.queue_depth = len(self._queue)
            return frame

    def _run(self) -> None:
        """The worker, restarted with backoff whenever an error escapes it: meanwhile the watchdog
        blanks every frame, so a failure costs frames, never the camera, and never a raw frame."""
        try:
            while True:
                try:
                    self._work()
                    return
                except Exception as exc:  # noqa: BLE001 (counted, logged once per burst, restarted)
                    self.worker_faults.failed(exc)
                with self._lock:
                    self._wake.wait_for(lambda: self._stopping, self.worker_faults.wait())
                    if self._stopping:
                        return
        finally:
            with self._lock:
                self._ended = True
                late = self._close_when_ended
            if late:
                try:
                    self.step.close()
                except Exception:  # nobody is left to raise it to
                    log.exception("camera %s: closing the sealer after the worker ended failed", self.camera)

    def _work(self) -> None:
        try:
            analyzer = self._analyzer = self._analyzer_factory(self.policy)
            warmup_kernels()
        except Exception:
            self.stats.detector_errors += 1
            raise
        self.worker_faults.recovered()
        self.stats.warm = True
        # Detection runs on the frames whose index is a multiple of the stride, whatever was lost,
        # so a camera never costs more than its policy's detection rate. Frames held for a
        # detection that is lost (skipped because it could not be decided in time, dropped, or
        # blanked while queued) are left to the watchdog, and so are the frames after it until
        # the next detection frame: they would be decided from tracks older than the gap (a face
        # that appeared, or a scene cut, in the gap would be missed on them). The stream gives
        # them up and goes on from the next detection frame with its tracks and motion reference:
        # starting afresh would mean a whole-frame detection, the most expensive kind, just when
        # the camera is behind.
        stream: StreamRedactor | None = None
        gap = False  # a detection frame was lost: frames wait for the next one that is not
        seen: int | None = None  # the index of the last frame the worker took
        first: SourceFrame | None = None  # the first frame the worker took
        rate: float | None = None  # the camera's frame rate, from the first two frames taken
        cost, logged = 0.0, -1e9
        while True:
            frame = self._next()
            if frame is None:
                break
            adopted = self._adopt(frame)
            if adopted is not None:
                # the old analyzer's undecided frames will never be decided: blanked now rather than at
                # their deadline, so the first frame under the new policy does not wait behind them
                if stream is not None:
                    stream.close()
                analyzer, stream = adopted, None
                self._analyzer = adopted
                with self._lock:
                    for index, slot in self._slots.items():
                        if index >= frame.index:
                            break
                        if slot.state == "pending":
                            slot.state = "blanked"
                self._drain()
            if first is None:
                first = frame
            elif rate is None and frame.time > first.time:
                rate = frame_rate(first.time, first.time + (frame.time - first.time) / (frame.index - first.index))
            detection = analyzer.policy.detection
            # a stride in seconds (detection.interval) needs the frame rate: until it is known
            # (the first frame only), frames are not decided
            stride = detection.stride_at(rate) if rate is not None or detection.interval is None else None
            detects = stride is not None and frame.index % stride == 0
            if stride is not None and seen is not None and (frame.index - 1) // stride * stride > seen:
                # a detection frame between the last frame seen and this one never reached the
                # worker (dropped from the queue): the frames held for it, and those after it, wait
                gap = True
                if stream is not None:
                    stream.skip()
            seen = frame.index
            with self._lock:
                slot = self._slots.get(frame.index)
                lost = slot is None or slot.state != "pending"  # dropped or blanked while queued
                late = (not lost and detects
                        and time.monotonic() - frame.arrived + _COST_MARGIN * cost > self.holdback)
                waiting = not lost and not late and not detects and (stream is None or gap or stride is None)
                if late or waiting:
                    # late: its detection cannot finish in time, so it is not started; waiting:
                    # frames are decided from a detection frame at or before them
                    slot.state = "blanked"
            if lost or late or waiting:
                if detects:
                    gap = True
                    if stream is not None:
                        stream.skip()
                self._drain()
                continue
            if detects:
                gap = False
            if stream is None:
                stream = StreamRedactor(analyzer, stride=stride, by_index=True)
            started = time.monotonic()
            try:
                decisions = stream.push(Frame(frame.index, frame.time, frame.image))
            except Exception:
                # the frames of the failed group are never decided: the watchdog blanks them
                self.stats.detector_errors += 1
                if time.monotonic() - logged >= _ERROR_LOG_INTERVAL:
                    logged = time.monotonic()
                    log.exception("camera %s: detector failed (%d so far); its frames are blanked", self.camera,
                                  self.stats.detector_errors)
                stream.close()
                stream = None
                continue
            if decisions:
                spent = time.monotonic() - started
                self.stats.detections += 1
                self.stats.detect_seconds += spent
            if decisions and stream.settled:  # a stream's first two looks cost more than the ones after
                # expected time to decide a frame: what detection took lately, capped (see _COST_CAP)
                estimate = spent if cost == 0.0 else (1 - _COST_SMOOTHING) * cost + _COST_SMOOTHING * spent
                cost = min(estimate, _COST_CAP * self.holdback)
            for decision in decisions:
                self._finish(decision)
        if stream is not None:
            stream.close()

    def _finish(self, decision: Decision) -> None:
        frame = decision.frame
        with self._lock:
            slot = self._slots.get(frame.index)
            if slot is None or slot.state != "pending":
                self.stats.late += 1
                return
            slot.state = "claimed"
        try:
            ref = self.step.apply(frame.index, frame.time, frame.image, decision.regions)
        except (SealerBusy, SealingDown):
            # the sealer is behind (or waiting for its co-signer), or failed and is being reopened
            # (the step counts and logs that): the frame leaves blanked, never without its originals sealed
            with self._lock:
                slot.state = "blanked"
                self.stats.seal_refused += 1
        except Exception as exc:  # noqa: BLE001 (a redaction or sealing error: blanked, counted, logged per burst)
            with self._lock:
                slot.state = "blanked"
                self.stats.redaction_errors += 1
            if time.monotonic() - self._seal_logged >= _ERROR_LOG_INTERVAL:
                self._seal_logged = time.monotonic()
                log.error("camera %s: redacting frame %d failed (%s: %s; %d so far); its frames are blanked",
                          self.camera, frame.index, type(exc).__name__, exc, self.stats.redaction_errors)
        else:
            with self._lock:
                slot.state, slot.image, slot.ref = "redacted", frame.image, ref
        self._drain()

    # --- output ----------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Release, in index order, every frame at the head whose fate is settled."""
        with self._release_lock:
            while True:
                with self._lock:
                    if not self._slots:
                        return
                    index, slot = next(iter(self._slots.items()))
                    if slot.state in ("pending", "claimed"):
                        return
                    del self._slots[index]
                    ref = slot.ref if slot.ref is not None else self.step.ref_for(index)
                    self.step.released(index)
                    if slot.state == "redacted" and self.observe is not None:
                        self.observe(slot.image)
                    if slot.state == "redacted" and self.held is not None:
                        # redacted and sealed (the recording keeps its place), but not released: the
                        # zones may miss what they were drawn on
                        slot.state = "blanked"
                        self.stats.held += 1
                    if slot.state == "redacted" and self.fence is not None and not self.fence():
                        slot.state = "blanked"  # another node may own the camera by now
                    if slot.state == "redacted":
                        self.stats.released += 1
                        self.stats.last_redacted = time.monotonic()
                        self.stats.latency_seconds.append(time.monotonic() - slot.arrived)
                        image = slot.image
                    elif slot.state == "blanked":
                        self.stats.blanked += 1
                        image = blank(slot.shape)
                    else:
                        self.stats.dropped += 1
                        image = None
                item = Released(self.camera, index, slot.time, slot.state, image, slot.shape, ref)  # type: ignore[arg-type]
                for sink in self.sinks:
                    try:
                        sink(item)
                    except Exception:
                        self.stats.sink_errors += 1
                        if self.stats.sink_errors == 1 or time.monotonic() - self._sink_logged >= _ERROR_LOG_INTERVAL:
                            self._sink_logged = time.monotonic()
                            log.exception("camera %s: a sink failed on frame %d (%d so far)", self.camera, index,
                                          self.stats.sink_errors)


def watch(pipelines: Callable[[], Iterable[CameraPipeline]], stop: threading.Event,
          failed: Callable[[CameraPipeline, Exception], None] | None = None) -> None:
    """The hold-back watchdog, until ``stop`` is set: ticks the pipelines at their frames' deadlines
    (at most :data:`WATCHDOG_PERIOD` apart), not every few milliseconds (200 wake-ups a second,
    each taking the interpreter from the detection and sealing threads, cost 1.3-1.7 % of a core).
    ``failed`` is told of a pipeline's tick that raised (the watchdog goes on); None: it raises."""
    while not stop.is_set():
        now = time.monotonic()
        wake = now + WATCHDOG_PERIOD
        for pipeline in pipelines():
            try:
                wake = min(wake, pipeline.tick(now))
            except Exception as exc:
                if failed is None:
                    raise
                failed(pipeline, exc)
        stop.wait(max(0.001, wake - time.monotonic()))
