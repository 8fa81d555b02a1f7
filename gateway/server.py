"""``privacy-gateway serve``: cameras in, redacted WebRTC, recordings and sealed originals out.

Per camera: source thread → :class:`~gateway.pipeline.CameraPipeline` (decide, redact, seal,
release in order; a watchdog thread blanks what misses its hold-back) → two sinks on their
own threads: the recorder (every frame, aligned with the vault) and the live renditions
(encoded once per codec, packets fanned out to every WHEP viewer). The HTTP side (Starlette)
serves the WHEP endpoints and viewer page, ``/health`` and ``/metrics``; it never touches
pixels.
"""

from __future__ import annotations

import asyncio
import html
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from keys.directory import KeyDirectory
from keys.identity import PrivateIdentity
from keys.seal import Sealer, grants_of
from keys.store import VaultStore
from redaction.policy import Policy

from .config import Camera, GatewayConfig
from .metrics import CONTENT_TYPE, Metrics
from .pipeline import CameraPipeline, Released
from .recorder import Recorder, ThreadedSink

log = logging.getLogger(__name__)

WATCHDOG_PERIOD = 0.005  # seconds between deadline checks


@dataclass
class CameraRuntime:
    name: str
    config: Camera
    policy: Policy
    pipeline: CameraPipeline
    source: object
    recorder: Recorder | None
    sinks: list[ThreadedSink]
    renditions: dict[str, object] = field(default_factory=dict)
    _first_time: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def viewers(self) -> int:
        return sum(r.viewers for r in list(self.renditions.values()))

    def live(self, item: Released) -> None:
        """Live sink: encode once per codec (renditions are made at the first frame's size)."""
        if item.image is None:
            return
        if not self.renditions:
            # the encoders' rate (GOP length, rate control) from the first two frames' spacing
            if self._first_time is None or item.time <= self._first_time:
                self._first_time = item.time
                return
            from .whep import Rendition

            fps = min(60.0, max(1.0, 1.0 / (item.time - self._first_time)))
            height, width = item.shape[:2]
            with self._lock:
                for codec in self.config.renditions:
                    self.renditions[codec] = Rendition(self.name, codec, width - width % 2, height - height % 2, fps=fps)
        image = item.image
        if image.shape[0] % 2 or image.shape[1] % 2:  # push copies (converts) the frame itself
            image = image[: image.shape[0] - image.shape[0] % 2, : image.shape[1] - image.shape[1] % 2]
        for rendition in list(self.renditions.values()):
            rendition.push(image, item.time)


def prepare_keys(config: GatewayConfig, announce=print) -> KeyDirectory:
    """Open the key directory; on first start create it (and the demo identities if asked for)."""
    path = config.keys_dir
    if (path / "roster.json").exists():
        return KeyDirectory.open(path)
    directory = KeyDirectory.init(path)
    if config.demo_identities:
        people = config.storage.data_dir / "identities"
        people.mkdir(parents=True, exist_ok=True)
        passphrase = secrets.token_urlsafe(12)
        for name, role in (("demo-officer", "privacy-officer"), ("demo-investigator", "investigator")):
            identity = PrivateIdentity.generate(name, [role])
            identity.save(people / f"{name}.identity", passphrase)
            directory.add(identity.public)
        announce(f"demo identities created in {people} (demo-officer, demo-investigator); "
                 f"their passphrase, shown only now: {passphrase}")
    return directory


class Gateway:
    """Every camera of a configuration, running, plus the HTTP app that exposes them."""

    def __init__(self, config: GatewayConfig, policies: dict[str, Policy], announce=print) -> None:
        self.config = config
        data = config.storage.data_dir
        data.mkdir(parents=True, exist_ok=True)
        directory = prepare_keys(config, announce)
        store = VaultStore.for_sealing(data / "vault", directory)
        self.cameras: dict[str, CameraRuntime] = {}
        from .sources import create_source
        from .whep import WhepServer

        for name, camera in config.cameras.items():
            policy = policies[name]
            sealer = Sealer(store, directory.signer, name, policy.model_dump(mode="json"), grants_of(policy),
                            directory.identities, segment_seconds=None)
            sinks: list[ThreadedSink] = []
            recorder = Recorder(data / "recordings", name, fps=25.0) if camera.record else None
            if recorder is not None:
                sinks.append(ThreadedSink(f"{name}-recorder", recorder, max_images=120, keep_all=True))
            pipeline = CameraPipeline(name, policy, list(sinks), sealer=sealer, holdback=camera.holdback_ms / 1000,
                                      queue_frames=camera.queue_frames,
                                      recording_seconds=config.storage.recording_seconds)
            options = {"transport": camera.transport} if camera.kind == "rtsp" else {}
            runtime = CameraRuntime(name, camera, policy, pipeline, create_source(name, camera.source, **options),
                                    recorder, sinks)
            live = ThreadedSink(f"{name}-live", runtime.live, max_images=3)
            runtime.sinks.append(live)
            pipeline.sinks.append(live)
            self.cameras[name] = runtime
        self.whep = WhepServer(self._rendition, ice_servers=list(config.ice_servers) or None,
                               camera_known=self.cameras.__contains__)
        self.metrics = Metrics(lambda: list(self.cameras.values()))
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._tick, name="watchdog", daemon=True)
        self.app = Starlette(routes=[
            Route("/", self._index),
            Route("/health", self._health),
            Route("/metrics", self._metrics),
            *self.whep.routes,
        ])

    def _rendition(self, camera: str, codec: str):
        runtime = self.cameras.get(camera)
        return None if runtime is None else runtime.renditions.get(codec)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        for runtime in self.cameras.values():
            runtime.pipeline.start()
        self._watchdog.start()
        for runtime in self.cameras.values():
            runtime.source.start(runtime.pipeline.offer)

    async def stop(self) -> None:
        await self.whep.close()
        await asyncio.to_thread(self._stop_threads)

    def _stop_threads(self) -> None:
        for runtime in self.cameras.values():
            runtime.source.stop()
        for runtime in self.cameras.values():
            runtime.pipeline.stop()  # undecided frames leave blanked; closes the camera's sealer
        self._stop.set()
        self._watchdog.join(5)
        for runtime in self.cameras.values():
            for sink in runtime.sinks:
                sink.close()
            if runtime.recorder is not None:
                runtime.recorder.close()
            for rendition in runtime.renditions.values():
                rendition.close()

    def _tick(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for runtime in self.cameras.values():
                runtime.pipeline.tick(now)
            self._stop.wait(WATCHDOG_PERIOD)

    # --- HTTP ----------------------------------------------------------------------------------

    def health(self) -> dict:
        cameras = {}
        for name, runtime in self.cameras.items():
            stats, source = runtime.pipeline.stats, runtime.source.stats
            cameras[name] = {"warm": stats.warm, "connected": source.connected, "frames_in": stats.frames_in,
                             "released": stats.released, "blanked": stats.blanked, "dropped": stats.dropped,
                             "detector_errors": stats.detector_errors, "reconnects": source.reconnects,
                             "viewers": runtime.viewers()}
        ok = all(c["warm"] and c["connected"] for c in cameras.values())
        return {"status": "ok" if ok else "degraded", "cameras": cameras}

    async def _health(self, request: Request) -> Response:
        report = self.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    async def _metrics(self, request: Request) -> Response:
        return Response(await asyncio.to_thread(self.metrics.render), media_type=CONTENT_TYPE)

    async def _index(self, request: Request) -> Response:
        links = "".join(f'<li><a href="/view/{html.escape(n)}">{html.escape(n)}</a></li>' for n in self.cameras)
        return HTMLResponse(f"<!doctype html><title>privacy-gateway</title><h1>Cameras</h1><ul>{links}</ul>")


async def serve(config: GatewayConfig, policies: dict[str, Policy], announce=print, ready=None,
                stop: threading.Event | None = None) -> None:
    """Run until interrupted (uvicorn handles SIGINT/SIGTERM) or ``stop`` is set;
    ``ready(gateway, port)`` is called once listening."""
    import uvicorn

    gateway = Gateway(config, policies, announce)
    tls = config.tls
    server = uvicorn.Server(uvicorn.Config(
        gateway.app, host=config.listen.host, port=config.listen.port, log_level="warning", lifespan="off",
        ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None))
    gateway.start()
    try:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            base = f"{'https' if tls else 'http'}://{config.listen.host}:{port}"
            announce(f"privacy-gateway serving {len(gateway.cameras)} camera(s) on {base}/")
            for name in gateway.cameras:
                announce(f"  viewer: {base}/view/{name}")
            if ready is not None:
                ready(gateway, port)
        while stop is not None and not stop.is_set() and not task.done():
            await asyncio.sleep(0.1)
        if stop is not None and stop.is_set():
            server.should_exit = True
        await task
    finally:
        await gateway.stop()


def data_dir_default(config_path: Path | None) -> Path | None:
    """The embedded default keeps its data in ./data (the current directory), not beside the config."""
    return Path("data").resolve() if config_path is None else None
