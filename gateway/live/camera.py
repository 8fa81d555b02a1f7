"""One camera, wired: the path every frame takes, in one place.

    source ──SourceFrame──▶ CameraPipeline (decide · redact + seal · release in order)
                                 │ Released
                                 ├──▶ recorder sink thread ──▶ Recorder (fMP4 next to the vault)
                                 └──▶ live sink thread ──▶ LiveFeed ──▶ one Rendition per codec ──▶ WHEP, RTSP

Each arrow is a thread boundary with its own bounded queue: the source never waits for the
pipeline (it drops its oldest frame), the pipeline never waits for a sink (the recorder keeps
every slot but may give up pixels, the live feed skips), so a slow consumer cannot stall
redaction. The runtime builds one :class:`LiveCamera` per configured camera and drives its
watchdog; this module only composes.
"""

from __future__ import annotations

from pathlib import Path

from keys import Sealer
from redaction import Policy

from ..config import Camera
from ..egress import LiveFeed, Recorder, Rendition, ThreadedSink
from ..ingest import Source, WhipSource, create_source
from ..sealing import RedactSeal
from ..webrtc import Codec
from .pipeline import CameraPipeline

#: frames whose pixels wait for the recorder before it writes blanks in their slots (4 s at 30 fps)
_RECORDER_BACKLOG = 120
#: frames waiting for the live feed: a whole detection group is released at once, and the largest
#: stride a policy allows is 30 (redaction.policy.Detection.stride), plus two frames of slack
_LIVE_BACKLOG = 32


class LiveCamera:
    """Source → pipeline → recorder and live feed, for one camera."""

    def __init__(self, name: str, config: Camera, policy: Policy, sealer: Sealer | None, *, recordings: Path,
                 recording_seconds: float, recording_preset: str, codecs: tuple[Codec, ...]) -> None:
        self.name, self.config = name, config
        self.source: Source = WhipSource(name) if config.kind == "whip" else create_source(
            name, config.source, **({"transport": config.transport} if config.kind == "rtsp" else {}))
        self.recorder = Recorder(recordings, name, preset=recording_preset) if config.record else None
        self.feed = LiveFeed(name, codecs)
        self.sinks: list[ThreadedSink] = []
        if self.recorder is not None:
            self.sinks.append(ThreadedSink(f"{name}-recorder", self.recorder, max_images=_RECORDER_BACKLOG,
                                           keep_all=True))
        self.sinks.append(ThreadedSink(f"{name}-live", self.feed, max_images=_LIVE_BACKLOG))
        step = RedactSeal(policy, sealer, recording_seconds=recording_seconds)
        self.pipeline = CameraPipeline(name, step, list(self.sinks), holdback=config.holdback_ms / 1000,
                                       queue_frames=config.queue_frames)

    @property
    def policy(self) -> Policy:
        return self.pipeline.policy

    def rendition(self, codec: Codec) -> Rendition | None:
        return self.feed.rendition(codec)

    def viewers(self) -> int:
        return self.feed.viewers()

    def start(self) -> None:
        self.pipeline.start()
        self.source.start(self.pipeline.offer)

    def stop_input(self) -> None:
        """Stop the source, then the pipeline: undecided frames leave blanked; the sealer closes."""
        self.source.stop()
        self.pipeline.stop()

    def stop_output(self) -> None:
        """Finish the sinks (what is queued is written), the recording and the renditions."""
        for sink in self.sinks:
            sink.close()
        if self.recorder is not None:
            self.recorder.close()
        self.feed.close()

    def health(self) -> dict:
        stats, source = self.pipeline.stats, self.source.stats
        return {"warm": stats.warm, "connected": source.connected, "frames_in": stats.frames_in,
                "released": stats.released, "blanked": stats.blanked, "dropped": stats.dropped,
                "detector_errors": stats.detector_errors, "reconnects": source.reconnects,
                "viewers": self.viewers()}
