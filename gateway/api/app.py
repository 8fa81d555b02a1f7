"""The whole gateway: the live runtime and every network entry point over it, in one Starlette app.

:class:`Gateway` builds the :class:`~gateway.live.Runtime` (cameras, pipelines, sinks) and, over
it, what the network reaches: access control, WHEP egress and WHIP ingest (routes in the app),
RTSP egress (its own listener), the ``/api`` resources, ``/health``, ``/metrics`` and the pages.
Every entry point asks :class:`~gateway.api.access.Access` first. In a cluster, tokens, grants,
signatures used, policies and the cameras changed at run time are kept in the shared state (:mod:`gateway.state`) and a
:class:`~gateway.state.follower.StateFollower` takes in what other nodes change there: a token
revoked or a grant taken away elsewhere ends this node's sessions at once. Composition only: the
work is done by the modules it wires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from keys import actor_of
from redaction import Policy

from ..config import ConfigError, GatewayConfig, SessionLimits
from ..egress import Rendition, RtspServer, WhepServer
from ..http import within_networks
from ..ingest import WhipServer, WhipSource
from ..limits import Caps, Ledger
from ..live import LiveCamera, Runtime
from ..state import (
    FailureTable,
    SeenTable,
    StateDatabase,
    StateFollower,
    TokenFiles,
    TokenTable,
)
from ..webrtc import IcePolicy
from . import pages
from .access import (
    RTSP_REALM,
    Access,
    Denied,
    FailureLimiter,
    HandOn,
    TokenStore,
    require,
)
from .audit import AuditRoutes, AuditView
from .cameras import CameraRoutes
from .console import Console
from .console.audit import AuditPages
from .console.cameras import CameraPages
from .console.people import PeoplePages
from .console.policies import PolicyPages
from .console.recordings import RecordingPages
from .demo import Demo, ViewerToken
from .identities import IdentityRoutes
from .metrics import Metrics
from .policies import PolicyRoutes, PolicyVersions
from .recordings import RecordingRoutes, Recordings
from .requests import ChangeLog, authenticate, bounded_body
from .status import StatusRoutes
from .unmask_requests import UnmaskRequestRoutes
from .unmask_store import UnmaskRequests
from .views import ViewRoutes

log = logging.getLogger(__name__)


def _caps(limits: SessionLimits) -> Caps:
    return Caps(limits.max_sessions, limits.max_sessions_per_address, limits.max_sessions_per_principal)


class Gateway:
    """Every camera of a configuration, running, plus the network entry points that expose them."""

    def __init__(self, config: GatewayConfig, policies: dict[str, Policy],
                 announce: Callable[[str], None] = print, demo: Demo | None = None) -> None:
        """``demo``: the embedded demo (``serve`` without ``--config``); never for a site's configuration."""
        self.config, self.demo = config, demo
        try:  # the listen address may be a host name (and --host may have changed it since load_config)
            self.ice = IcePolicy.for_listen(config.listen.host, config.webrtc.local_addresses,
                                            config.webrtc.remote_networks)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        # before the runtime opens the key directory: the demo policy seals to the demo investigator
        self._demo_created = demo.prepare(config, announce) if demo is not None else False
        self.runtime = runtime = Runtime(config, policies, announce)
        self.access = self._access(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: takes in what other nodes change in the shared state (None: single node)
        self.follower = None if runtime.state is None else StateFollower(config.cluster, {
            "token": self._token_changed, "grant": self._grant_changed, "activation": runtime.follow_shared,
            "policy": runtime.activations.fetch, "roster": self._roster_changed,
            "camera": runtime.follow_camera}, self._resync)
        ice = list(config.ice_servers) or None
        self.whep = WhepServer(self._rendition, self._authorize_feed, ice_servers=ice,
                               camera_known=runtime.expected, ice=self.ice, caps=_caps(config.whep),
                               owner_url=runtime.owner_url)
        self.whip = WhipServer(self._whip_source, self._authorize_ingest, ice_servers=ice, ice=self.ice,
                               caps=_caps(config.whip), owner_url=runtime.owner_url, pending=self._whip_pending)
        self.rtsp: RtspServer | None = None
        self.rtsp_port: int | None = None
        changes = ChangeLog(runtime.store, runtime.signer)
        if config.rtsp is not None:
            limiter = self.access.limiter
            # a redirect to the camera's node carries a login for it (FFmpeg drops the URL's own there)
            hand_on = HandOn(self.access, changes.record)
            self.rtsp = RtspServer(lambda camera: self._rendition(camera, "h264"), runtime.expected,
                                   hand_on.rtsp_user, realm=RTSP_REALM,
                                   throttled=lambda peer: limiter.retry_after(peer) > 0,
                                   failed=lambda peer, who, why: limiter.failed(peer, who, why, "rtsp"),
                                   max_sessions=config.rtsp.max_sessions,
                                   max_sessions_per_address=config.rtsp.max_sessions_per_address,
                                   max_sessions_per_principal=config.rtsp.max_sessions_per_principal,
                                   max_connections=config.rtsp.max_connections,
                                   max_connections_per_address=config.rtsp.max_connections_per_address,
                                   auth_timeout=config.rtsp.auth_timeout_s, owner_url=runtime.owner_rtsp_url,
                                   look_up=None if runtime.state is None else hand_on.look_up)
        listen = config.listen
        #: the HTTP listener's connections (gateway.api.connections puts them under these caps)
        self.http_connections = Ledger("http", "connections", Caps(listen.max_connections,
                                                                   listen.max_connections_per_address),
                                       uncapped_address=lambda peer: within_networks(peer, listen.trusted_proxies))
        versions = PolicyVersions(runtime.store, runtime.activations.rows if runtime.state is not None else None)
        cameras = CameraRoutes(runtime, self.access, versions, changes, ended=self._camera_stopped)
        self.metrics = Metrics(lambda: list(runtime.cameras.values()), lambda: dict(self.access.limiter.counts),
                               rtsp_skipped=lambda: dict(self.rtsp.sender.skipped) if self.rtsp else {},
                               retention=lambda: dict(runtime.retention.counts),
                               ice_ignored=self._ignored_candidates, ledgers=self.ledgers,
                               cluster=runtime.cluster)
        recordings = Recordings(runtime)
        unmasks = UnmaskRequestRoutes(runtime, self.access, changes, recordings,
                                      UnmaskRequests(config.storage.data_dir / "unmask-requests"))
        self.console = console = Console(self.access, lambda: list(runtime.cameras))
        console.page("cameras", "Cameras", ("cameras",), CameraPages(runtime, versions).data)
        console.page("policies", "Policies", ("policies",), PolicyPages(runtime, versions).data)
        audit = AuditView(runtime.store, runtime.audit_copy)
        console.page("audit", "Audit", ("audit", "audit:own"), AuditPages(audit).data)
        console.page("people", "People and access", ("identities", "tokens"),
                     PeoplePages(self.access, lambda: list(runtime.cameras)).data)
        unmask_pages = RecordingPages(runtime, recordings, unmasks)
        console.page("recordings", "Recordings", ("unmask*",), unmask_pages.recordings)
        console.page("requests", "Unmask requests", ("unmask*",), unmask_pages.requests)
        self.app = Starlette(routes=[
            *pages.routes(runtime.owner_url),
            *console.routes,
            *StatusRoutes(runtime, self.access, self.metrics).routes,
            *cameras.routes,
            *ViewRoutes(runtime, self.access, changes).routes,
            *PolicyRoutes(runtime, self.access, versions, changes).routes,
            *IdentityRoutes(self.access, cameras, changes).routes,
            *AuditRoutes(audit, self.access).routes,
            *RecordingRoutes(runtime, self.access, changes, recordings, unmasks.closed_reason).routes,
            *unmasks.routes,
            *self.whep.routes,
            *self.whip.routes,
        ])
        self.app.state.trusted_proxies = config.listen.trusted_proxies  # gateway.http.peer_of

    def _access(self, config: GatewayConfig) -> Access:
        """Tokens and grants in this node's files; in a cluster, in the shared state, which first
        takes in the tokens and grants of this node's files that it lacks (a gateway joining keeps
        its people's access; what the shared state has wins)."""
        directory = config.storage.data_dir / "access"
        state = self.runtime.state
        if state is None:
            return Access(config.keys_dir, TokenStore(directory))
        table = TokenTable(state)
        if directory.is_dir():
            try:
                tokens, grants = TokenFiles(directory).load()
                added = table.adopt(tokens, grants)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{directory}: could not be taken into the shared state: {exc}") from None
            if added:
                log.info("%d tokens and grants of %s taken into the shared state", added, directory)
        # failed logins counted over every node, on a connection of their own (never on a request's path)
        failures = FailureTable(StateDatabase(config.cluster), config.cluster.node)
        return Access(config.keys_dir, TokenStore(directory, rows=table), seen=SeenTable(state),
                      limiter=FailureLimiter(shared=failures))

    # --- what other nodes change (the follower's thread) ---------------------------------------

    def _token_changed(self, token_id: str) -> None:
        record = self.access.store.refresh_token(token_id)
        if record is None or record.revoked is not None:
            self._recheck_now()  # its sessions end here, as a revocation on this node ends them

    def _grant_changed(self, identity: str) -> None:
        self.access.store.refresh_grants(identity)
        self._recheck_now()

    def _roster_changed(self, serial: str | None = None) -> None:
        """The cluster's roster changed (a person enrolled, removed or revoked on another node): taken in
        here (access control and the sealers re-read it), and sessions checked against it."""
        if self.runtime.shared_roster is not None and self.runtime.shared_roster.sync() != "same":
            self._recheck_now()

    def _resync(self) -> None:
        """After (re)connecting: everything read again, the cameras changed meanwhile taken in, every
        camera following its activation."""
        self._roster_changed()
        self.access.store.refresh()
        self.runtime.follow_cameras()
        known = set(self.runtime.store.policy_versions())
        for version in self.runtime.activations.rows.documents():
            if version not in known:
                self.runtime.activations.fetch(version)
        for camera in list(self.runtime.config.cameras):
            try:
                self.runtime.follow_shared(camera)
            except OSError:
                raise
            except Exception:  # one camera's policy must not keep the others from theirs
                log.exception("camera %s: the policy activated on it in the shared state cannot run here", camera)
        self._recheck_now()

    def _recheck_now(self) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._recheck(), self._loop)

    async def _recheck(self) -> None:
        try:
            await self.whep.recheck()
            await self.whip.recheck()
        except Exception:  # a failing check must not end the checking
            log.exception("re-checking sessions failed")

    @property
    def cameras(self) -> dict[str, LiveCamera]:
        return self.runtime.cameras

    def ledgers(self) -> list[Ledger]:
        """What clients hold at every entry point, under its caps (for /metrics)."""
        rtsp = (self.rtsp.connection_ledger, self.rtsp.session_ledger) if self.rtsp is not None else ()
        return [self.http_connections, *rtsp, self.whep.ledger, self.whip.ledger]

    # --- the entry points' questions -----------------------------------------------------------

    def _rendition(self, camera: str, codec: str) -> Rendition | None:
        live = self.runtime.cameras.get(camera)
        return None if live is None else live.rendition(codec)

    async def _camera_stopped(self, camera: str, old: LiveCamera | None, removed: bool) -> None:
        """A camera was removed (every session of it ends) or restarted by an edit (the sessions on
        its old renditions end; their viewers offer again and get the new camera)."""
        if not removed and old is None:
            return  # it was not running: nobody watched it
        renditions = None if removed else set(old.output.renditions())
        await self.whep.end_camera(camera, renditions)
        if self.rtsp is not None:
            self.rtsp.end_camera(camera, renditions)

    def _ignored_candidates(self) -> dict[tuple[str, str], int]:
        return {**{("whep", reason): n for reason, n in self.whep.ignored_candidates.items()},
                **{("whip", reason): n for reason, n in self.whip.ignored_candidates.items()}}

    def _whip_source(self, camera: str) -> WhipSource | None:
        live = self.runtime.cameras.get(camera)
        return live.source if live is not None and isinstance(live.source, WhipSource) else None

    def _whip_pending(self, camera: str) -> bool:
        """In a cluster, a configured WHIP camera that runs neither here nor on another node: its node is
        starting it, or its lease has not yet moved from a node that died (the publisher retries)."""
        configured = self.runtime.config.cameras.get(camera)
        return self.runtime.cluster is not None and configured is not None and configured.kind == "whip"

    async def _authorize(self, request: Request, permission: str, camera: str) -> Response | None:
        """An error answer unless the request's principal holds the camera-scoped ``permission`` on ``camera``."""
        try:
            signed = request.headers.get("authorization", "").lower().startswith("signature")
            who = await authenticate(self.access, request, await bounded_body(request) if signed else b"")
            require(who, permission, camera)
        except Denied as denied:
            return PlainTextResponse(denied.message + "\n", status_code=denied.status, headers=denied.headers)
        request.state.still_allowed = self.access.still_allowed(who, permission, camera)  # for the session's life
        request.state.principal = who.name  # whom the session caps count: the identity, over all its tokens
        return None

    async def _authorize_feed(self, request: Request, camera: str) -> Response | None:
        return await self._authorize(request, "feeds*", camera)  # WHEP: watch

    async def _authorize_ingest(self, request: Request, camera: str) -> Response | None:
        return await self._authorize(request, "ingest*", camera)  # WHIP: publish

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

    def demo_viewer_token(self) -> ViewerToken | None:
        """In the demo: the token the start prints for demo-viewer (kept while valid, else issued).

        Blocking (the audit entries and the kept token are written durably): call it off the event loop."""
        if self.demo is None:
            return None
        runtime = self.runtime
        return self.demo.viewer_token(
            self.config, self.access, lambda action, details: runtime.store.audit.append(
                actor_of(runtime.signer), runtime.signer, action, details), self._demo_created)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.runtime.on_parked = lambda camera, old: asyncio.run_coroutine_threadsafe(
            self._camera_stopped(camera, old, True), loop)  # its lease went: its sessions end
        self._loop = loop
        if self.follower is not None:
            self.follower.start()
        self.runtime.start()

    async def stop(self) -> None:
        if self.follower is not None:
            await asyncio.to_thread(self.follower.close)
        await asyncio.to_thread(self.access.limiter.close)
        if self.rtsp is not None:
            await self.rtsp.close()
        await self.whep.close()
        await self.whip.close()
        await asyncio.to_thread(self.runtime.stop)
