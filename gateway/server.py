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
import collections
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from keys.directory import KeyDirectory
from keys.identity import PrivateIdentity
from keys.seal import Sealer, grants_of
from keys.store import GATEWAY_ACTOR, VaultStore
from redaction.policy import Policy, parse_policy

from .access import RTSP_REALM, Access, Denied, TokenStore, require, write_private_json
from .api import Api, authenticate, read_body
from .config import Camera, GatewayConfig
from .metrics import CONTENT_TYPE, Metrics
from .pipeline import CameraPipeline, Released
from .recorder import Recorder, ThreadedSink

log = logging.getLogger(__name__)

WATCHDOG_PERIOD = 0.005  # seconds between deadline checks
_PACE_WINDOW = 2.0  # seconds of release delays the live schedule follows
_MAX_PACE = 1.0  # seconds a live frame may wait for its turn; more means the media clock jumped


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
    codecs: tuple[str, ...] = ()  # the renditions to make: WHEP's, plus H.264 for RTSP egress
    _first_time: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _delays: collections.deque = field(default_factory=collections.deque)  # (when, release - media time)

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
                for codec in self.codecs:
                    self.renditions[codec] = Rendition(self.name, codec, width - width % 2, height - height % 2, fps=fps)
        self._wait_for_turn(item.time, item.at)
        image = item.image
        if image.shape[0] % 2 or image.shape[1] % 2:  # push copies (converts) the frame itself
            image = image[: image.shape[0] - image.shape[0] % 2, : image.shape[1] - image.shape[1] % 2]
        for rendition in list(self.renditions.values()):
            rendition.push(image, item.time)


    def _wait_for_turn(self, media_time: float, released: float) -> None:
        """Pace the live renditions at the camera's own rate (live sink thread).

        The pipeline releases a detection group at once, so frames come in bursts; sent that
        way, a browser's jitter buffer would grow to the burst length. Each frame is held until
        its media time plus the largest release delay (release time minus media time) of the
        last :data:`_PACE_WINDOW` seconds: a steady delay, bounded by the hold-back, that also
        follows a camera clock running a little fast or slow. A frame already past its turn
        (this thread fell behind) goes at once, so a backlog drains.
        """
        delays = self._delays
        delays.append((released, released - media_time))
        while delays[0][0] < released - _PACE_WINDOW:
            delays.popleft()
        due = media_time + max(delay for _, delay in delays)
        now = time.monotonic()
        if due - now > _MAX_PACE:  # the media clock jumped ahead (a reconnect): start afresh
            delays.clear()
            delays.append((released, released - media_time))
        elif due > now:
            time.sleep(due - now)


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
        for name, role in (("demo-officer", "privacy-officer"), ("demo-investigator", "investigator"),
                           ("demo-viewer", "viewer")):
            identity = PrivateIdentity.generate(name, [role])
            identity.save(people / f"{name}.identity", passphrase)
            directory.add(identity.public)
        announce(f"demo identities created in {people} (demo-officer, demo-investigator, demo-viewer); "
                 f"their passphrase, shown only now: {passphrase}")
    return directory


class Gateway:
    """Every camera of a configuration, running, plus the HTTP app that exposes them."""

    def __init__(self, config: GatewayConfig, policies: dict[str, Policy], announce=print) -> None:
        self.config = config
        data = config.storage.data_dir
        data.mkdir(parents=True, exist_ok=True)
        directory = prepare_keys(config, announce)
        self.store = store = VaultStore.for_sealing(data / "vault", directory)
        self.signer = directory.signer
        self.access = Access(config.keys_dir, TokenStore(data / "access"))
        self.cameras: dict[str, CameraRuntime] = {}
        self._activations = data / "active-policies.json"
        self._active: dict[str, str] = {}  # camera -> the version in force
        self._over_http: dict[str, str] = {}  # camera -> the version activated over HTTP (kept across restarts)
        activated = self._activated(announce)
        from .sources import create_source
        from .whep import WhepServer
        from .whip import WhipServer, WhipSource

        for name, camera in config.cameras.items():
            policy = activated.get(name, policies[name])
            self._active[name] = store.store_policy(policy.model_dump(mode="json"))
            sealer = Sealer(store, directory.signer, name, policy.model_dump(mode="json"), grants_of(policy),
                            directory.identities, segment_seconds=None)
            sinks: list[ThreadedSink] = []
            recorder = (Recorder(data / "recordings", name, fps=25.0, preset=config.storage.recording_preset)
                        if camera.record else None)
            if recorder is not None:
                sinks.append(ThreadedSink(f"{name}-recorder", recorder, max_images=120, keep_all=True))
            pipeline = CameraPipeline(name, policy, list(sinks), sealer=sealer, holdback=camera.holdback_ms / 1000,
                                      queue_frames=camera.queue_frames,
                                      recording_seconds=config.storage.recording_seconds)
            if camera.kind == "whip":
                source = WhipSource(name)
            else:
                options = {"transport": camera.transport} if camera.kind == "rtsp" else {}
                source = create_source(name, camera.source, **options)
            codecs = tuple(dict.fromkeys([*camera.renditions, *(["h264"] if config.rtsp else [])]))
            runtime = CameraRuntime(name, camera, policy, pipeline, source, recorder, sinks, codecs=codecs)
            # a whole detection group is released at once: room for the largest stride (30)
            live = ThreadedSink(f"{name}-live", runtime.live, max_images=32)
            runtime.sinks.append(live)
            pipeline.sinks.append(live)
            self.cameras[name] = runtime
        self.whep = WhepServer(self._rendition, self._authorize_feed, ice_servers=list(config.ice_servers) or None,
                               camera_known=self.cameras.__contains__)
        self.rtsp, self.rtsp_port = None, None
        if config.rtsp is not None:
            from .rtsp_egress import RtspServer

            self.rtsp = RtspServer(lambda camera: self._rendition(camera, "h264"), self.cameras.__contains__,
                                   self.access.rtsp_user, realm=RTSP_REALM,
                                   throttled=lambda peer: self.access.limiter.retry_after(peer) > 0,
                                   failed=lambda peer, who, why: self.access.limiter.failed(peer, who, why, "rtsp"),
                                   max_sessions=config.rtsp.max_sessions)
        self.whip = WhipServer(self._whip_source, self._authorize_ingest, ice_servers=list(config.ice_servers) or None)
        self.api = Api(self, self.access, self.activate)
        self.metrics = Metrics(lambda: list(self.cameras.values()), lambda: dict(self.access.limiter.counts))
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._tick, name="watchdog", daemon=True)
        self.app = Starlette(routes=[
            Route("/", self._index),
            Route("/view", self._index),
            Route("/health", self._health),
            Route("/metrics", self._metrics),
            *self.api.routes,
            *self.whep.routes,
            *self.whip.routes,
        ])

    # --- policies ------------------------------------------------------------------------------

    def _activated(self, announce) -> dict[str, Policy]:
        """Policies activated over HTTP, which outlive a restart (they win over the configuration's files)."""
        if not self._activations.exists():
            return {}
        try:
            versions = json.loads(self._activations.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self._activations}: unreadable ({exc}); fix or remove it to use the configured policies") from None
        out = {}
        for camera, version in versions.items():
            if camera in self.config.cameras:
                out[camera] = parse_policy(self.store.load_policy(version), f"policy {version[:12]}")
                self._over_http[camera] = version
                announce(f"camera {camera}: policy {version[:12]} (activated over HTTP) is in force, "
                         f"not its configured file")
        return out

    def active_version(self, camera: str) -> str:
        return self._active[camera]

    def activate(self, camera: str, policy: Policy, version: str) -> bool:
        """Switch a camera's policy live (blocking): see :meth:`CameraPipeline.activate`."""
        runtime = self.cameras[camera]
        switched = runtime.pipeline.activate(policy)
        runtime.policy = policy
        self._active[camera] = self._over_http[camera] = version
        write_private_json(self._activations, self._over_http)  # the other cameras keep their configured files
        return switched

    # --- access ---------------------------------------------------------------------------------

    async def _authorize(self, request: Request, permission: str, camera: str) -> Response | None:
        """An error answer unless the request's principal holds the camera-scoped ``permission`` on ``camera``."""
        try:
            signed = request.headers.get("authorization", "").lower().startswith("signature")
            who = await authenticate(self.access, request, await read_body(request) if signed else b"")
            require(who, permission, camera)
        except Denied as denied:
            return PlainTextResponse(denied.message + "\n", status_code=denied.status, headers=denied.headers)
        request.state.still_allowed = self.access.still_allowed(who, permission, camera)  # for the session's life
        return None

    async def recheck_sessions(self, period: float = 1.0) -> None:
        """End live WebRTC sessions whose token was revoked or expired, or whose role or grant went
        (RTSP sessions are re-checked by the RTSP server itself)."""
        while True:
            await asyncio.sleep(period)
            try:
                await self.whep.recheck()
                await self.whip.recheck()
            except Exception:  # a failing check must not end the checking
                log.exception("re-checking sessions failed")

    async def _authorize_feed(self, request: Request, camera: str) -> Response | None:
        return await self._authorize(request, "feeds*", camera)  # WHEP: watch

    async def _authorize_ingest(self, request: Request, camera: str) -> Response | None:
        return await self._authorize(request, "ingest*", camera)  # WHIP: publish

    def _whip_source(self, camera: str):
        from .whip import WhipSource

        runtime = self.cameras.get(camera)
        return runtime.source if runtime is not None and isinstance(runtime.source, WhipSource) else None

    async def _principal(self, request: Request, permission: str | None = None):
        """The request's principal if it holds ``permission``; None if it sent no credentials at all."""
        if not request.headers.get("authorization"):
            return None
        who = await authenticate(self.access, request)
        if permission is not None:
            require(who, permission)
        return who

    def demo_viewer_token(self) -> str | None:
        """With demo identities: a day's token for demo-viewer on every camera, for the printed viewer URLs."""
        if not self.config.demo_identities or "demo-viewer" not in self.access.identities():
            return None
        self.access.store.grant("demo-viewer", list(self.cameras))
        token, record = self.access.store.issue("demo-viewer", list(self.cameras), 24 * 3600.0, GATEWAY_ACTOR)
        self.store.audit.append(GATEWAY_ACTOR, self.signer, "issue-token",
                                {"identity": "demo-viewer", "cameras": list(self.cameras), "ttl": 24 * 3600,
                                 "by": GATEWAY_ACTOR, "via": "demo start-up"})
        return token

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
        if self.rtsp is not None:
            await self.rtsp.close()
        await self.whep.close()
        await self.whip.close()
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
        """Anyone: ok or degraded (for load balancers); holders of ``metrics``: every camera's state too."""
        report = self.health()
        status = 200 if report["status"] == "ok" else 503
        try:
            who = await self._principal(request, "metrics")
        except Denied as denied:
            return JSONResponse({"error": denied.message}, status_code=denied.status, headers=denied.headers)
        return JSONResponse(report if who is not None else {"status": report["status"]}, status_code=status)

    async def _metrics(self, request: Request) -> Response:
        try:
            require(await authenticate(self.access, request), "metrics")  # Prometheus: bearer_token in its scrape config
        except Denied as denied:
            return JSONResponse({"error": denied.message}, status_code=denied.status, headers=denied.headers)
        return Response(await asyncio.to_thread(self.metrics.render), media_type=CONTENT_TYPE)

    async def _index(self, request: Request) -> Response:
        from .whep import viewer_index

        return viewer_index()


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
    rechecks = None
    try:
        rtsp_port = None
        if gateway.rtsp is not None:
            rtsp_port = await gateway.rtsp.start(config.rtsp.host, config.rtsp.port)
            gateway.rtsp_port = rtsp_port
        task = asyncio.create_task(server.serve())
        rechecks = asyncio.create_task(gateway.recheck_sessions())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            base = f"{'https' if tls else 'http'}://{config.listen.host}:{port}"
            announce(f"privacy-gateway serving {len(gateway.cameras)} camera(s) on {base}/")
            token = gateway.demo_viewer_token()
            for name in gateway.cameras:
                announce(f"  viewer: {base}/view/{name}" + (f"#token={token}" if token else " (with a viewer token)"))
                if rtsp_port is not None:
                    announce(f"  RTSP:   rtsp://{config.rtsp.host}:{rtsp_port}/{name} (user: a token's id, password: its secret)")
            if ready is not None:
                ready(gateway, port)
        while stop is not None and not stop.is_set() and not task.done():
            await asyncio.sleep(0.1)
        if stop is not None and stop.is_set():
            server.should_exit = True
        await task
    finally:
        if rechecks is not None:
            rechecks.cancel()
        await gateway.stop()


def data_dir_default(config_path: Path | None) -> Path | None:
    """The embedded default keeps its data in ./data (the current directory), not beside the config."""
    return Path("data").resolve() if config_path is None else None
