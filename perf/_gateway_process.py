"""What runs inside the gateway's process for perf/bench_gateway.py: ``serve``, instrumented.

Every gateway thread is renamed for the kernel after the stage it runs, so /proc/PID/task
shows where the CPU goes; native threads a gateway thread starts (onnxruntime's pool, FFmpeg
and x264 workers) inherit its name. For the latency run, :class:`Stamps` stamps each frame on
``time.monotonic()`` when it arrives (with the number its block code spells), when it is
released, pushed to the WHEP rendition and encoded, and notes the first packet each viewer gets.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from _gateway_peers import read_code

#: gateway thread names -> the stage they run (also the kernel's name for the thread, <= 15 chars)
_STAGES = [
    (r"(?:Rtsp|File)Source\[.+\]\.emit$", "to-bgr+offer"),
    (r"(?:Rtsp|File)Source\[.+\]$", "rtsp+decode"),
    (r"pipeline-.+$|detect_\d+$", "analyse"),
    (r"seal-.+$", "seal"),
    (r"sink-.+-output$", "pace+to-i420"),
    (r"whep-.+-h264$", "encode+record"),
    (r"whep-.+$", "vp8-encode"),
    (r"watchdog$", "watchdog"),
    (r"serve$", "event-loop"),
    (r"asyncio_\d+$|AnyIO worker.*", "executor"),
    (r"MainThread$", "harness"),
]
STAGE_NOTES = {
    "rtsp+decode": "RTSP read, depacketize, H.264 decode (FFmpeg threads)",
    "to-bgr+offer": "YUV->BGR conversion, pipeline.offer",
    "analyse": "detect (onnxruntime threads), track, redact, copy out the originals",
    "seal": "the sealer: originals coded as clips (x264), encrypted, written to the vault",
    "pace+to-i420": "camera output: pacing, BGR->I420",
    "encode+record": "the camera's one H.264 encode (x264, recording grade), MP4 mux, fan-out to viewers",
    "vp8-encode": "VP8 rendition (only while a VP8 viewer watches)",
    "event-loop": "uvicorn + aiortc: ICE, DTLS, SRTP, RTP packetizing",
    "watchdog": "hold-back watchdog",
    "executor": "asyncio executor (metrics rendering)",
    "harness": "this benchmark's control thread",
}


def _pts(media_time: float) -> int:
    return round(media_time * 90_000)  # as gateway.egress.Rendition.push counts


def _stage(name: str) -> str:
    return next((stage for pattern, stage in _STAGES if re.match(pattern, name)), "other")


def _name_threads() -> None:
    """Give every Python thread its stage as kernel name; native threads it starts inherit it."""

    def name(stage: str) -> None:
        try:
            Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(stage[:15])
        except OSError:
            pass

    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def _bootstrap_inner(thread):
        name(_stage(thread.name))
        bootstrap(thread)

    threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]
    name("harness")


class Stamps:
    """Latency stamps inside the gateway: arrival (with the frame's code), release, WHEP push and encode."""

    def __init__(self) -> None:
        # all keyed by the frame's media time in 90 kHz ticks (the WHEP pts), which every stage keeps
        self.arrived: dict[int, tuple[float, int | None]] = {}  # -> (SourceFrame.arrived, the code it shows)
        self.released: dict[int, tuple[str, float]] = {}  # -> (state, when released)
        self.pushed: dict[int, float] = {}  # -> when the live sink handed it to the h264 rendition
        self.encoded: dict[int, float] = {}  # -> when its encode returned
        self.first_sent: list[int] = []  # per viewer, the pts of the first packet sent to it

    def install(self) -> None:
        """Wrap ``CameraPipeline.offer``, the renditions' encode and the viewer tracks (before ``serve`` starts)."""
        from gateway.egress import rendition as whep
        from gateway.live import CameraPipeline

        offer, push, encode = CameraPipeline.offer, whep.Rendition.push, getattr(whep.Rendition, "_encode", None)
        track = getattr(whep, "ViewerTrack", None)
        started: set[int] = set()

        def _offer(pipeline, frame):
            self.arrived[_pts(frame.time)] = (frame.arrived, read_code(frame.image[:, :, 1]))
            offer(pipeline, frame)

        def _push(rendition, image, media_time, *args, **kwargs):
            if rendition.codec == "h264":
                self.pushed.setdefault(_pts(media_time), time.monotonic())
            push(rendition, image, media_time, *args, **kwargs)

        def _encode(rendition, yuv, pts, *args, **kwargs):
            packets = encode(rendition, yuv, pts, *args, **kwargs)
            self.encoded[pts] = time.monotonic()
            return packets

        async def _recv(viewer):
            packet = await recv(viewer)
            if id(viewer) not in started:
                started.add(id(viewer))
                self.first_sent.append(packet.pts)
            return packet

        CameraPipeline.offer = _offer
        whep.Rendition.push = _push
        if encode is not None:
            whep.Rendition._encode = _encode
        if track is not None:
            recv = track.recv
            track.recv = _recv

    def sink(self, item) -> None:
        self.released[_pts(item.time)] = (item.state, time.monotonic())


def gateway_process(config_path: str, conn, probe: bool) -> None:
    """The gateway: ``serve`` on a thread until the benchmark sends ``"stop"``."""
    import asyncio
    import traceback

    _name_threads()
    from gateway.config import load_config
    from gateway.api import serve

    config, policies = load_config(Path(config_path))
    stamps = Stamps() if probe else None
    if stamps is not None:
        stamps.install()
    stop = threading.Event()

    def ready(gateway, port):
        if stamps is not None:
            for runtime in gateway.cameras.values():
                runtime.pipeline.sinks.append(stamps.sink)
        # an officer's token: it may watch every camera and read /metrics
        token, _ = gateway.access.store.issue("officer", None, 24 * 3600.0, "bench")
        conn.send(("ready", (port, token)))

    def run():
        try:
            asyncio.run(serve(config, policies, announce=lambda line: None, ready=ready, stop=stop))
        except BaseException:
            conn.send(("error", traceback.format_exc()))

    thread = threading.Thread(target=run, name="serve")
    thread.start()
    while conn.recv() != "stop":
        pass
    stop.set()
    thread.join(60)
    records = None if stamps is None else {
        "arrived": stamps.arrived, "released": stamps.released, "pushed": stamps.pushed, "encoded": stamps.encoded,
        "first_sent": stamps.first_sent}
    conn.send(("done", records))
