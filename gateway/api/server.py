"""``serve``: the gateway under uvicorn (HTTP, optionally TLS) and its RTSP listener, until stopped.

uvicorn's connections are capped and must send each request head in time (:mod:`.connections`).

uvicorn handles SIGINT/SIGTERM; on the way out every WebRTC and RTSP session ends, the cameras
stop (undecided frames leave blanked, sealers close their segments and log them), the sinks
write what they hold (the last recording is finished, and moved to the bucket with one), a
cluster node hands its leases back, and the command returns (exit status 0).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from redaction import Policy

from ..config import GatewayConfig
from .app import Gateway
from .demo import Demo

_START_POLL = 0.05  # seconds between checks that uvicorn is listening
_STOP_POLL = 0.1  # seconds between checks of the caller's stop event
_BACKLOG = 2048  # connections waiting to be accepted (uvicorn's default)
_RTSP_BACKLOG = 100  # asyncio's default


async def serve(config: GatewayConfig, policies: dict[str, Policy], announce: Callable[[str], None] = print,
                ready: Callable[[Gateway, int], None] | None = None, stop: threading.Event | None = None,
                demo: Demo | None = None) -> None:
    """Run until interrupted (uvicorn handles SIGINT/SIGTERM) or ``stop`` is set;
    ``ready(gateway, port)`` is called once listening. ``demo``: this is the embedded demo
    (``serve`` without ``--config``, :mod:`.demo`), never a site's configuration."""
    import uvicorn

    from .connections import listener_settings

    # before anything starts (the embedded OpenBao, the cameras): a port taken stops here
    http_listeners = listen_on(config.listen.host, config.listen.port, _BACKLOG)
    rtsp_listeners: list[socket.socket] = []
    try:
        if config.rtsp is not None:
            rtsp_listeners = listen_on(config.rtsp.host, config.rtsp.port, _RTSP_BACKLOG)
        gateway = Gateway(config, policies, announce, demo)
        tls = config.tls
        server = uvicorn.Server(uvicorn.Config(
            gateway.app, host=config.listen.host, port=config.listen.port, log_level="warning", lifespan="off",
            ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None,
            backlog=_BACKLOG, **listener_settings(config.listen, gateway.http_connections)))
        with _Signals(server):  # from before the cameras start until they have stopped
            gateway.start()
            rechecks = None
            try:
                rtsp_port = None
                if gateway.rtsp is not None:
                    rtsp_port = await gateway.rtsp.start(rtsp_listeners)
                    gateway.rtsp_port = rtsp_port
                task = asyncio.create_task(server.serve(sockets=http_listeners))
                rechecks = asyncio.create_task(gateway.recheck_sessions())
                while not server.started and not task.done():
                    await asyncio.sleep(_START_POLL)
                if server.started:
                    port = server.servers[0].sockets[0].getsockname()[1]
                    base = f"{'https' if tls else 'http'}://{config.listen.host}:{port}"
                    announce(f"privacy-gateway serving {len(gateway.cameras)} camera(s) on {base}/"
                             + (" (the demo: not for production)" if demo is not None else ""))
                    announce(f"  {gateway.ice.describe()}")
                    viewer = await asyncio.to_thread(gateway.demo_viewer_token)  # logs, issues, keeps: disk writes
                    for name in gateway.cameras:
                        announce(f"  viewer: {base}/view/{name}" + (viewer.url_end(name) if viewer else " (with a viewer token)"))
                        if rtsp_port is not None:
                            announce(f"  RTSP:   rtsp://{config.rtsp.host}:{rtsp_port}/{name} "
                                     "(user: a token's id, password: its secret)")
                    if viewer is not None:
                        announce(f"  {viewer.note()}")
                    officer = config.storage.data_dir / "identities" / "demo-officer.identity"
                    announce(f"  console: privacy-gateway console --gateway {base} --identity "
                             + (f"{officer} (the demo officer)" if demo is not None and officer.exists() else "YOUR-IDENTITY-FILE")
                             + f", or {base}/console#token=... with an officer's token")
                    if ready is not None:
                        ready(gateway, port)
                while stop is not None and not stop.is_set() and not task.done():
                    await asyncio.sleep(_STOP_POLL)
                if stop is not None and stop.is_set():
                    server.should_exit = True
                await task
            finally:
                if rechecks is not None:
                    rechecks.cancel()
                await gateway.stop()
    finally:
        for listener in (*http_listeners, *rtsp_listeners):  # uvicorn and the RTSP server closed theirs if they served
            listener.close()


def listen_on(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` names (as asyncio's ``create_server`` binds them),
    bound before anything starts rather than by uvicorn, which logs a port it cannot bind and exits
    the process, or by the RTSP server, which would fail once the cameras had started.
    Raises :class:`OSError` naming the address (the command line's one-line error)."""
    bound: list[socket.socket] = []
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(found):
            listener = socket.socket(family, kind, proto)
            bound.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind((address[0], port, *address[2:]))
            port = listener.getsockname()[1]  # 0 (any free port): the first address's, for the others too
            listener.listen(backlog)
            listener.setblocking(False)
    except OSError as exc:
        for listener in bound:
            listener.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return bound


class _Signals:
    """SIGINT and SIGTERM while the gateway starts, serves or stops.

    While it serves, uvicorn takes both (its own handlers) and shuts down; then it raises each
    signal it took again, for the handler that was in place before it. Python's defaults would end
    the process there, before :meth:`Gateway.stop`: no camera stopped, no segment closed, the last
    recording left without its index, a cluster node's leases left to expire. This handler is
    the one in place: it asks uvicorn to exit (at once if the signal comes while the gateway is
    still starting) and lets the stop run to its end."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, server) -> None:
        self._server = server
        self._previous: dict = {}

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {sig: signal.signal(sig, self._exit) for sig in self._SIGNALS}

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _exit(self, signum, frame) -> None:
        self._server.should_exit = True


def data_dir_default(config_path: Path | None) -> Path | None:
    """The embedded default keeps its data in ./data (the current directory), not beside the config."""
    return Path("data").resolve() if config_path is None else None
