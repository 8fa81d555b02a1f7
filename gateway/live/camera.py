"""One camera, wired: the path every frame takes, in one place.

    source ──SourceFrame──▶ CameraPipeline (decide · redact + seal · release in order)
                                 │ Released                      │ redacted images (a reference each)
                                 │                               └──▶ ViewWatch: a moved camera is held (blanked)
                                 ├──▶ LatestFrame (the officers' snapshot)
                                 └──▶ output sink thread ──▶ CameraOutput: pace, encode once (H.264)
                                                               ├──▶ Recorder (fMP4 next to the vault)
                                                               ├──▶ WHEP viewers, RTSP clients
                                                               └──▶ VP8 rendition (only while watched)

Each arrow is a thread boundary with its own bounded queue: the source never waits for the
pipeline (it drops its oldest frame), the pipeline never waits for the output sink (it keeps
every frame's slot but gives up pixels when too far behind: those frames are encoded blank),
so a slow encoder cannot stall redaction. The runtime builds one :class:`LiveCamera` per configured camera and drives its
watchdog; this module only composes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from keys import Sealer
from redaction import Analyzer, Policy

from ..config import Camera
from ..egress import CameraOutput, LatestFrame, Recorder, Rendition, ThreadedSink
from ..ingest import Source, WhipSource, create_source
from ..sealing import RedactSeal, Reopen
from ..webrtc import Codec
from .moved import ViewWatch
from .pipeline import CameraPipeline

#: frames whose pixels wait for the output (4 s at 30 fps: the hold-back, a detection group of up
#: to 30 frames released at once, and encoder hiccups) before it encodes blanks in their slots
_OUTPUT_BACKLOG = 120
#: seconds without a redacted frame leaving, while frames come in, after which ``/health`` says the
#: camera is degraded (beyond any hold-back, and beyond the blanked bursts of a busy machine)
RELEASE_STALL = 5.0


class LiveCamera:
    """Source → pipeline → output (one encode: recording, WHEP, RTSP), for one camera."""

    def __init__(self, name: str, config: Camera, policy: Policy, sealer: Sealer | None, *, recordings: Path,
                 recording_seconds: float, recording_preset: str, codecs: tuple[Codec, ...],
                 cores: int | None = None, recorded: Callable | None = None, reopen: Reopen | None = None,
                 views: Path | None = None, event: Callable[[str, dict], None] | None = None) -> None:
        """``cores``: the camera's share of the machine for detection (see :func:`redaction.build_detectors`);
        ``recorded(path, ref, frames)``: told of each finished recording file; ``reopen``: opens
        the camera's sealer anew after it failed (see :class:`~gateway.sealing.RedactSeal`);
        ``views``: where the moved-camera watch keeps its reference (``<views>/<camera>.json``);
        ``event(action, details)``: its audit entries."""
        self.name, self.config = name, config
        self.source: Source = WhipSource(name) if config.kind == "whip" else create_source(
            name, config.source, **({"transport": config.transport} if config.kind == "rtsp" else {}))
        step = RedactSeal(policy, sealer, recording_seconds=recording_seconds, live=True, reopen=reopen)
        self.recorder = Recorder(recordings, name, recorded, restart=step.request_recording) if config.record else None
        self.output = CameraOutput(name, codecs, self.recorder, preset=recording_preset)
        self.sinks = [ThreadedSink(f"{name}-output", self.output, max_images=_OUTPUT_BACKLOG, keep_all=True)]
        self.snapshot = LatestFrame()
        self.pipeline = CameraPipeline(name, step, [*self.sinks, self.snapshot], holdback=config.holdback_ms / 1000,
                                       queue_frames=config.queue_frames,
                                       analyzer_factory=partial(Analyzer, cores=cores))
        self.view = ViewWatch(name, config.view_check, (views or recordings.parent / "views") / f"{name}.json",
                              self._hold, event or (lambda action, details: None), self.pipeline.holdback)
        self.pipeline.observe = self.view.observe

    def _hold(self, reason: str | None) -> None:
        self.pipeline.held = reason

    @property
    def policy(self) -> Policy:
        return self.pipeline.policy

    def rendition(self, codec: Codec) -> Rendition | None:
        return self.output.rendition(codec)

    def viewers(self) -> int:
        return self.output.viewers()

    def start(self) -> None:
        self.pipeline.start()
        self.source.start(self.pipeline.offer)

    def stop_input(self) -> None:
        """Stop the source, then the pipeline: undecided frames leave blanked; the sealer closes."""
        self.source.stop()
        self.pipeline.stop()

    def stop_output(self) -> None:
        """Finish the sink (what is queued is encoded), the renditions and the recording."""
        for sink in self.sinks:
            sink.close()
        self.output.close()

    def health(self, now: float | None = None) -> dict:
        """The camera's counters, and ``status`` ``ok`` or ``degraded`` with the ``reasons``."""
        now = time.monotonic() if now is None else now
        pipeline, stats, source = self.pipeline, self.pipeline.stats, self.source.stats
        reasons = []
        if not source.connected:
            reasons.append("the source does not deliver")
        if not stats.warm:
            reasons.append(f"the detector is not running ({pipeline.worker_faults.reason})"
                           if pipeline.worker_faults.reason else "the detector is warming up")
        elif pipeline.worker_faults.reason:
            reasons.append(f"the pipeline worker failed ({pipeline.worker_faults.reason}); restarting")
        if pipeline.step.faults.reason:
            reasons.append(f"sealing failed ({pipeline.step.faults.reason}); frames are blanked, retrying")
        if self.recorder is not None and self.recorder.faults.reason:
            reasons.append(f"recording failed ({self.recorder.faults.reason}); retrying at a new recording")
        view = self.view.state()
        if view["held"] is not None:
            reasons.append(f"the view changed since its zones were drawn ({view['held']['reason']}, since "
                           f"{view['held']['since']}); every frame is blanked until an officer confirms the zones "
                           "still fit")
        last = stats.last_redacted if stats.last_redacted is not None else stats.started
        if stats.warm and stats.last_in is not None and now - stats.last_in < RELEASE_STALL \
                and now - last > RELEASE_STALL and view["held"] is None:
            reasons.append(f"no redacted frame released for {now - last:.0f} s (every frame blanked or dropped)")
        return {"status": "degraded" if reasons else "ok", "reasons": reasons,
                "warm": stats.warm, "connected": source.connected, "frames_in": stats.frames_in,
                "released": stats.released, "blanked": stats.blanked, "dropped": stats.dropped,
                "detector_errors": stats.detector_errors, "detections": stats.detections,
                "detect_seconds": round(stats.detect_seconds, 3), "reconnects": source.reconnects,
                "seal_errors": pipeline.step.faults.errors, "worker_errors": pipeline.worker_faults.errors,
                "recording_errors": self.recorder.faults.errors if self.recorder is not None else 0,
                "viewers": self.viewers(), "held_frames": stats.held, "view": view}
