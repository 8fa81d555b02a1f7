"""WHIP ingest: cameras and browsers publish video to the gateway over WebRTC (RFC 9725, no trickle ICE).

:class:`WhipServer` answers the publishers' offers (``POST /whip/{camera}``) and ends their
sessions (``DELETE /whip/{camera}/{session}``); each accepted offer becomes one aiortc peer
connection whose video track feeds the camera's :class:`~gateway.ingest.whip.WhipSource`.

One publisher per camera at a time: a second offer while a session is open (connecting or
connected) is answered 409. A session ends on ``DELETE``, when the publisher closes its peer
connection (DTLS close), when the connection fails, when it has not connected within
``connect_timeout`` seconds of the answer, or when a connected publisher sends no frame for the
source's ``read_timeout`` seconds; all but the first two count in ``stats.errors``.

Sessions are also capped per principal, per address and in all (:mod:`gateway.limits`): an offer
over a cap is answered 429 (the client's own cap) or 503 (all taken) with a JSON error and
``Retry-After``, before its body is read.

Only video is taken. An offer must have exactly one video section that sends (``sendonly`` or
``sendrecv``) VP8 or H.264 (constrained baseline, packetization-mode 1: what aiortc's answerer
negotiates); audio sections are answered ``inactive`` so that publishers which always offer
audio (browsers, OBS) can connect, and no audio reaches the gateway.

ICE is confined by an :class:`~gateway.webrtc.IcePolicy`: the publisher's candidates outside the
allowed networks are taken out of the offer (counted in :attr:`WhipServer.ignored_candidates`).

In a cluster a WHIP camera runs, like any camera, on the node holding its lease, and its
publisher must reach that node. An offer for a camera another node runs is answered ``307
Temporary Redirect`` to that node (the same path and query; RFC 9725 §4.5), after the
authorization check, as WHEP's; the session's resource (``Location``) is then on that node. An
offer for a WHIP camera no node runs yet (its node died and the lease has not moved, or the node
that took it is still starting it) is answered ``503`` with ``Retry-After``: the publisher tries
again, here or at another node, and so follows its camera when a node dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ..http import (
    BodyTooLarge,
    content_type,
    json_error,
    peer_of,
    read_body,
    text_error,
)
from ..limits import RETRY_AFTER, Caps, Hold, Ledger, Refused
from ..webrtc import (
    MAX_OFFER_BYTES,
    NEGOTIATION_ERRORS,
    IcePolicy,
    check_publisher_offer,
    configuration,
    confine_ice,
    filter_offer,
)
from .whip import WhipSource

__all__ = ["WhipServer"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 15.0  # seconds from answer to a connected peer before the session is dropped
DEFAULT_CAPS = Caps(total=64, per_address=16, per_principal=16)


@dataclass(eq=False)
class _Publisher:
    """One WHIP session: a publisher's peer connection feeding a camera's source."""

    id: str
    camera: str
    source: WhipSource
    server: WhipServer
    loop: asyncio.AbstractEventLoop
    pc: RTCPeerConnection | None = None
    task: asyncio.Task | None = None
    timeout: asyncio.TimerHandle | None = None
    heard: float = 0.0  # monotonic time of the last frame (or of the connection)
    ended: bool = False
    allowed: Callable[[], bool] | None = None  # left by authorize in request.state.still_allowed
    hold: Hold | None = None  # its place under the session caps
    _tasks: set[asyncio.Task] = field(default_factory=set)

    def close_from_any_thread(self, timeout: float) -> None:
        """End the session from a thread that may or may not run its event loop (``WhipSource.stop``)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:  # cannot wait for the loop from inside it: close soon
            task = self.loop.create_task(self.server._end(self, None))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self.server._end(self, None), self.loop)
        except RuntimeError:  # the loop is closed: its peer connections went with it
            return
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            log.warning("camera %s: publisher session %s still closing after %.1f s", self.camera, self.id, timeout)


class WhipServer:
    """WHIP endpoints feeding the sources looked up by ``source_for(camera)`` (``None``: no such WHIP camera).

    ``authorize(request, camera)`` runs first in every handler, before anything else is looked
    at (not even whether the camera exists, nor the body): it returns a response to send (401,
    403, ...) or ``None`` to go on. It may leave ``request.state.principal``, whom the
    per-principal cap of ``caps`` counts. ``ice``: where peer connections gather and whom they
    talk to; default: the policy of a gateway listening on 127.0.0.1 (the default ``listen.host``).
    """

    def __init__(
        self,
        source_for: Callable[[str], WhipSource | None],
        authorize: Callable[[Request, str], Awaitable[Response | None]],
        ice_servers: list[str] | None = None,
        *,
        connect_timeout: float = _CONNECT_TIMEOUT,
        ice: IcePolicy | None = None,
        caps: Caps = DEFAULT_CAPS,
        owner_url: Callable[[str], str | None] = lambda camera: None,
        pending: Callable[[str], bool] = lambda camera: False,
    ) -> None:
        """``owner_url(camera)``: the base URL of the cluster node that runs ``camera`` if not this one
        (offers are redirected there); ``pending(camera)``: whether ``camera`` is a WHIP camera that runs
        nowhere yet but will (answered 503 with Retry-After, not 404)."""
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, not {connect_timeout!r}")
        self._source_for = source_for
        self._authorize = authorize
        self._owner_url, self._pending = owner_url, pending
        self._ice_servers = list(ice_servers or [])
        self._ice = ice if ice is not None else IcePolicy.for_listen("127.0.0.1")
        #: remote candidates left out, by reason (``network``, ``hostname``, ``peer_reflexive``)
        self.ignored_candidates: Counter[str] = Counter()
        self._connect_timeout = connect_timeout
        self._sessions: dict[str, _Publisher] = {}
        self._tasks: set[asyncio.Task] = set()
        self.ledger = Ledger("whip", "sessions", caps)  # for the caps and /metrics
        self.routes: list[BaseRoute] = [
            Route("/whip/{camera}", self._endpoint, methods=["POST", "OPTIONS"]),
            Route("/whip/{camera}/{session}", self._delete, methods=["DELETE"]),
        ]

    def publishers(self, camera: str) -> int:
        """Open sessions for ``camera`` (0 or 1), connected or still connecting."""
        return sum(1 for session in list(self._sessions.values()) if session.camera == camera)

    async def close(self) -> None:
        """End every session."""
        await asyncio.gather(*(self._end(session, None) for session in list(self._sessions.values())))

    async def recheck(self) -> int:
        """End every session whose publisher may no longer publish (see ``authorize``); how many ended."""
        ended = [s for s in list(self._sessions.values()) if s.allowed is not None and not s.allowed()]
        await asyncio.gather(*(self._end(session, "access revoked") for session in ended))
        return len(ended)

    # -- handlers -----------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        camera = request.path_params["camera"]
        denied = await self._authorize(request, camera)
        if denied is not None:
            return denied
        source = self._source_for(camera)
        if not isinstance(source, WhipSource):
            owner = self._owner_url(camera)
            if owner is not None:  # another node runs it: the publisher re-sends its offer there
                query = f"?{request.url.query}" if request.url.query else ""
                return PlainTextResponse(f"camera {camera} runs on {owner}\n", status_code=307,
                                         headers={"Location": f"{owner}{request.url.path}{query}"})
            if self._pending(camera):
                return text_error(503, f"camera {camera} runs on no node yet; retry", {"Retry-After": "1"})
            return text_error(404, f"no such camera: {camera}")
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": "OPTIONS, POST", "Accept-Post": "application/sdp"})
        try:
            hold = self.ledger.take(peer_of(request), getattr(request.state, "principal", None))
        except Refused as full:
            return json_error(full.http_status, str(full), {"Retry-After": str(RETRY_AFTER)}, limit=full.limit)
        try:
            answer = await self._offer(request, camera, source, hold)
        except BaseException:
            hold.release()
            raise
        if answer.status_code != 201:
            hold.release()  # no session came of the offer
        return answer

    async def _offer(self, request: Request, camera: str, source: WhipSource, hold: Hold) -> Response:
        if content_type(request) != "application/sdp":
            return text_error(415, "Content-Type must be application/sdp")
        try:
            body = await read_body(request, MAX_OFFER_BYTES)
        except BodyTooLarge:
            return text_error(413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
        try:
            offer = body.decode("utf-8")
            check_publisher_offer(offer)
        except UnicodeDecodeError:
            return text_error(400, "malformed SDP offer: not UTF-8 text")
        except ValueError as exc:
            return text_error(400, f"malformed SDP offer: {exc}")
        filtered = filter_offer(offer, self._ice)
        self.ignored_candidates.update(filtered.ignored)
        if filtered.error is not None:
            return text_error(400, filtered.error)

        session = _Publisher(secrets.token_urlsafe(12), camera, source, self, asyncio.get_running_loop(),
                             allowed=getattr(request.state, "still_allowed", None), hold=hold)
        refused = source.claim(session)
        if refused == "busy":
            return text_error(409, f"camera {camera} already has a publisher")
        if refused is not None:
            return text_error(503, f"camera {camera} is not running", {"Retry-After": "5"})
        self._sessions[session.id] = session
        pc = session.pc = RTCPeerConnection(configuration(self._ice_servers))

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState == "connected":
                if session.timeout is not None:
                    session.timeout.cancel()
                    session.timeout = None
                session.heard = time.monotonic()
                log.info("camera %s: publisher %s connected", camera, session.id)
            elif pc.connectionState == "failed":
                await self._end(session, "publisher connection failed")
            elif pc.connectionState == "closed":
                await self._end(session, None)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=filtered.sdp, type="offer"))
            confine_ice(pc, self._ice, self.ignored_candidates)
            video = None
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video" and video is None:
                    video = transceiver
                else:  # audio (and nothing else: _check_offer allows one video section) is not taken
                    transceiver.direction = "inactive"
            await pc.setLocalDescription(await pc.createAnswer())
        except NEGOTIATION_ERRORS as exc:
            await self._end(session, None)
            return text_error(400, f"cannot answer the offer: {exc}")
        except BaseException:  # a bug (or cancellation): never leave the camera claimed by a dead session
            await self._end(session, None)
            raise
        if session.ended:  # the source stopped (or the server closed) while negotiating
            return text_error(503, f"camera {camera} is not running", {"Retry-After": "5"})
        if video is None or video.receiver.track is None:  # checked by _check_offer; aiortc must agree
            await self._end(session, None)
            return text_error(400, "cannot answer the offer: no video to receive")

        session.task = asyncio.create_task(self._receive(session, video.receiver.track))
        if pc.connectionState != "connected":
            session.timeout = session.loop.call_later(self._connect_timeout, self._expire, session)
        location = f"{request.scope.get('root_path', '')}/whip/{quote(camera, safe='')}/{session.id}"
        return Response(
            pc.localDescription.sdp, status_code=201, media_type="application/sdp", headers={"Location": location}
        )

    async def _delete(self, request: Request) -> Response:
        camera = request.path_params["camera"]
        denied = await self._authorize(request, camera)
        if denied is not None:
            return denied
        session = self._sessions.get(request.path_params["session"])
        if session is None or session.camera != camera:
            return text_error(404, "no such session")
        await self._end(session, None)
        return PlainTextResponse("session ended\n")

    # -- sessions -----------------------------------------------------------------------------

    async def _receive(self, session: _Publisher, track: MediaStreamTrack) -> None:
        """Pass the publisher's decoded frames to the source until the track ends or falls silent."""
        silence = session.source.read_timeout
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(track.recv(), silence)
                except TimeoutError:
                    if session.pc.connectionState == "connected" and time.monotonic() - session.heard >= silence:
                        await self._end(session, f"no video for {silence:g} s")
                        return
                    continue  # still connecting (the connect timeout governs), or connected only lately
                session.heard = time.monotonic()
                session.source.deliver(session, frame)
        except MediaStreamError:  # the track ended: the connection closed
            await self._end(session, None)

    def _expire(self, session: _Publisher) -> None:
        session.timeout = None
        if session.pc is not None and session.pc.connectionState != "connected":
            task = asyncio.ensure_future(self._end(session, f"did not connect within {self._connect_timeout:g} s"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _end(self, session: _Publisher, error: str | None) -> None:
        """End ``session`` (idempotent); ``error`` says how it broke, ``None`` for an orderly end."""
        if session.ended:
            return
        session.ended = True
        self._sessions.pop(session.id, None)
        if session.hold is not None:
            session.hold.release()
        if session.timeout is not None:
            session.timeout.cancel()
            session.timeout = None
        session.source.detach(session, error)
        if error is not None:
            log.warning("camera %s: publisher session %s ended: %s", session.camera, session.id, error)
        else:
            log.info("camera %s: publisher session %s ended", session.camera, session.id)
        if session.task is not None and session.task is not asyncio.current_task():
            session.task.cancel()
        if session.pc is not None:
            try:
                await session.pc.close()
            except Exception:  # aiortc failing half-way must not break DELETE, close() or shutdown
                log.exception("camera %s: closing publisher session %s failed", session.camera, session.id)
