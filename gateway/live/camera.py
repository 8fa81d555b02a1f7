"""One camera, wired: the path every frame takes, in one place.

    source ──SourceFrame──▶ CameraPipeline (decide · redact + seal · release in order)
                                 │ Released
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

from collections.abc import Callable

from functools import partial
from pathlib import Path

from keys import Sealer
from redaction import Analyzer, Policy

from ..config import Camera
from ..egress import CameraOutput, Recorder, Rendition, ThreadedSink
from ..ingest import Source, WhipSource, create_source
from ..sealing import RedactSeal
from ..webrtc import Codec
from .pipeline import CameraPipeline

#: frames whose pixels wait for the output (4 s at 30 fps: the hold-back, a detection group of up
#: to 30 frames released at once, and encoder hiccups) before it encodes blanks in their slots
_OUTPUT_BACKLOG = 120


class LiveCamera:
    """Source → pipeline → output (one encode: recording, WHEP, RTSP), for one camera."""

    def __init__(self, name: str, config: Camera, policy: Policy, sealer: Sealer | None, *, recordings: Path,
                 recording_seconds: float, recording_preset: str, codecs: tuple[Codec, ...],
                 cores: int | None = None, recorded: Callable | None = None) -> None:
        """``cores``: the camera's share of the machine for detection (see :func:`redaction.build_detectors`);
        ``recorded(path, ref, frames)``: told of each finished recording file."""
        self.name, self.config = name, config
        self.source: Source = WhipSource(name) if config.kind == "whip" else create_source(
            name, config.source, **({"transport": config.transport} if config.kind == "rtsp" else {}))
        self.recorder = Recorder(recordings, name, recorded) if config.record else None
        self.output = CameraOutput(name, codecs, self.recorder, preset=recording_preset)
        self.sinks = [ThreadedSink(f"{name}-output", self.output, max_images=_OUTPUT_BACKLOG, keep_all=True)]
        step = RedactSeal(policy, sealer, recording_seconds=recording_seconds, live=True)
        self.pipeline = CameraPipeline(name, step, list(self.sinks), holdback=config.holdback_ms / 1000,
                                       queue_frames=config.queue_frames,
                                       analyzer_factory=partial(Analyzer, cores=cores))

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

    def health(self) -> dict:
        stats, source = self.pipeline.stats, self.source.stats
        return {"warm": stats.warm, "connected": source.connected, "frames_in": stats.frames_in,
                "released": stats.released, "blanked": stats.blanked, "dropped": stats.dropped,
                "detector_errors": stats.detector_errors, "reconnects": source.reconnects,
                "viewers": self.viewers()}
