"""WHEP egress: redacted video to browsers over WebRTC (RFC 9725 without trickle ICE).

:class:`WhepServer` answers a viewer's offer (``POST /whep/{camera}``) with a peer connection
that sends one track of the camera's :class:`~gateway.egress.rendition.Rendition` (the codec the
offer allows, H.264 preferred), and ends sessions (``DELETE /whep/{camera}/{session}``, a failed
or closed connection, no connection within :data:`CONNECT_TIMEOUT` seconds, access revoked, or
the camera removed or edited: :meth:`WhepServer.end_camera`).
Its ICE is confined by an :class:`~gateway.webrtc.IcePolicy`: the viewer's candidates outside the
allowed networks are taken out of the offer (counted in :attr:`WhepServer.ignored_candidates`).

In a cluster, an offer for a camera another node runs is answered ``307 Temporary Redirect`` to
that node's URL (the same path and query; WHEP clients re-send the offer there), after the
authorization check, so only those who may watch the camera learn where it runs.

Sessions, connected or still connecting, are capped per principal, per address and in all
(:mod:`gateway.limits`): an offer over a cap is answered 429 (the client's own cap) or 503 (all
taken) with a JSON error and ``Retry-After``, before any peer connection is made.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from urllib.parse import quote

from aiortc import RTCPeerConnection, RTCSessionDescription
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
    CODEC_NAMES,
    CODECS,
    MAX_OFFER_BYTES,
    NEGOTIATION_ERRORS,
    IcePolicy,
    capabilities,
    configuration,
    confine_ice,
    filter_offer,
    route_keyframe_requests,
    viewer_codecs,
)
from .rendition import Rendition, ViewerTrack

__all__ = ["WhepServer"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0  # seconds from answer to a connected peer before the session is dropped
DEFAULT_CAPS = Caps(total=64, per_address=16, per_principal=16)


@dataclass(eq=False)
class _Session:
    id: str
    camera: str
    pc: RTCPeerConnection
    track: ViewerTrack
    timeout: asyncio.TimerHandle | None = None
    allowed: Callable[[], bool] | None = None  # left by authorize in request.state.still_allowed
    hold: Hold | None = None  # its place under the session caps


class WhepServer:
    """WHEP endpoints over renditions looked up by ``rendition_for(camera, codec)`` (``None``: no such camera)."""

    def __init__(
        self,
        rendition_for: Callable[[str, str], Rendition | None],
        authorize: Callable[[Request, str], Awaitable[Response | None]],
        ice_servers: list[str] | None = None,
        camera_known: Callable[[str], bool] | None = None,
        ice: IcePolicy | None = None,
        caps: Caps = DEFAULT_CAPS,
        owner_url: Callable[[str], str | None] | None = None,
    ) -> None:
        """``authorize(request, camera)``: an error response to send (401, 403, 429 ...), or
        None to go on; asked first, before anything reveals whether the camera exists. It may
        leave ``request.state.still_allowed``, a callable that :meth:`recheck` asks while the
        session lives, and ``request.state.principal``, whom the per-principal cap counts.
        ``camera_known(camera)``: a configured camera whose renditions do not exist yet (no
        frame released so far) is answered 503 with Retry-After instead of 404.
        ``ice``: where peer connections gather and whom they talk to; default: the policy of a
        gateway listening on 127.0.0.1 (the default ``listen.host``).
        ``owner_url(camera)``: the base URL of the cluster node that runs ``camera`` if not this one."""
        self._rendition_for = rendition_for
        self._authorize = authorize
        self._camera_known = camera_known or (lambda camera: False)
        self._owner_url = owner_url or (lambda camera: None)
        self._ice_servers = list(ice_servers or [])
        self._ice = ice if ice is not None else IcePolicy.for_listen("127.0.0.1")
        #: remote candidates left out, by reason (``network``, ``hostname``, ``peer_reflexive``)
        self.ignored_candidates: Counter[str] = Counter()
        self._sessions: dict[str, _Session] = {}
        self.ledger = Ledger("whep", "sessions", caps)  # for the caps and /metrics
        self.routes: list[BaseRoute] = [
            Route("/whep/{camera}", self._offer, methods=["POST"]),
            Route("/whep/{camera}/{session}", self._delete, methods=["DELETE"]),
        ]

    def viewers(self, camera: str) -> int:
        """Open sessions for ``camera``, connected or still connecting."""
        return sum(1 for session in self._sessions.values() if session.camera == camera)

    async def close(self) -> None:
        """Close every peer connection."""
        await asyncio.gather(*(self._end(session_id) for session_id in list(self._sessions)))

    async def end_camera(self, camera: str, renditions: Collection[Rendition] | None = None) -> int:
        """End the sessions watching ``camera`` (only those on ``renditions``, if given): it was
        removed, or replaced by an edit. Their viewers see the peer connection close, and may
        offer again. Returns how many ended."""
        ended = [s.id for s in list(self._sessions.values())
                 if s.camera == camera and (renditions is None or s.track.rendition in renditions)]
        for session_id in ended:
            logger.info("WHEP session %s ended: camera %s stopped", session_id, camera)
        await asyncio.gather(*(self._end(session_id) for session_id in ended))
        return len(ended)

    async def recheck(self) -> int:
        """End every session whose viewer may no longer watch (see ``authorize``); how many ended."""
        ended = [s.id for s in list(self._sessions.values()) if s.allowed is not None and not s.allowed()]
        for session_id in ended:
            logger.info("WHEP session %s ended: access revoked", session_id)
        await asyncio.gather(*(self._end(session_id) for session_id in ended))
        return len(ended)

    # -- handlers -----------------------------------------------------------------------------

    async def _offer(self, request: Request) -> Response:
        camera = request.path_params["camera"]
        refused = await self._authorize(request, camera)
        if refused is not None:
            return refused
        owner = self._owner_url(camera)
        if owner is not None:  # another node runs it: the client re-sends the offer there
            query = f"?{request.url.query}" if request.url.query else ""
            return PlainTextResponse(f"camera {camera} runs on {owner}\n", status_code=307,
                                     headers={"Location": f"{owner}{request.url.path}{query}"})
        try:
            hold = self.ledger.take(peer_of(request), getattr(request.state, "principal", None))
        except Refused as full:
            return json_error(full.http_status, str(full), {"Retry-After": str(RETRY_AFTER)}, limit=full.limit)
        try:
            answer = await self._answer(request, camera, hold)
        except BaseException:
            hold.release()
            raise
        if answer.status_code != 201:
            hold.release()  # no session came of the offer
        return answer

    async def _answer(self, request: Request, camera: str, hold: Hold) -> Response:
        if content_type(request) != "application/sdp":
            return text_error(415, "Content-Type must be application/sdp")
        forced = request.query_params.get("codec")
        if forced is not None and forced not in CODECS:
            return text_error(400, f"codec must be one of {', '.join(CODECS)}")
        try:
            body = await read_body(request, MAX_OFFER_BYTES)
        except BodyTooLarge:
            return text_error(413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
        try:
            offer = body.decode("utf-8")
            offered = viewer_codecs(offer)
        except UnicodeDecodeError:
            return text_error(400, "malformed SDP offer: not UTF-8 text")
        except ValueError as exc:
            return text_error(400, f"malformed SDP offer: {exc}")

        wanted = [forced] if forced else list(CODECS)
        rendition = None
        for codec in (c for c in wanted if c in offered):
            rendition = self._rendition_for(camera, codec)
            if rendition is not None:
                break
        if rendition is None:
            if not any(c in offered for c in wanted) and any(self._rendition_for(camera, c) for c in CODECS):
                names = " or ".join(CODEC_NAMES[c] for c in wanted)
                return text_error(400, f"the offer cannot receive {names}")
            if self._camera_known(camera):
                return text_error(503, f"camera {camera} has no frame yet; retry", {"Retry-After": "1"})
            return text_error(404, f"no such camera: {camera}")

        filtered = filter_offer(offer, self._ice)
        self.ignored_candidates.update(filtered.ignored)
        if filtered.error is not None:
            return text_error(400, filtered.error)
        pc = RTCPeerConnection(configuration(self._ice_servers))
        session = _Session(secrets.token_urlsafe(12), camera, pc, rendition.subscribe(),
                           allowed=getattr(request.state, "still_allowed", None), hold=hold)

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState == "connected" and session.timeout is not None:
                session.timeout.cancel()
                session.timeout = None
            elif pc.connectionState in ("failed", "closed"):
                await self._end(session.id)

        try:
            transceiver = pc.addTransceiver(session.track, direction="sendonly")
            transceiver.setCodecPreferences(capabilities(rendition.codec))
            route_keyframe_requests(transceiver.sender, rendition.request_keyframe)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=filtered.sdp, type="offer"))
            confine_ice(pc, self._ice, self.ignored_candidates)
            await pc.setLocalDescription(await pc.createAnswer())
        except NEGOTIATION_ERRORS as exc:
            session.track.stop()
            await pc.close()
            return text_error(400, f"cannot answer the offer: {exc}")
        except BaseException:  # a bug, an aiortc the adapters refuse, or cancellation: leave no peer behind
            session.track.stop()
            await pc.close()
            raise

        self._sessions[session.id] = session
        if pc.connectionState != "connected":
            session.timeout = asyncio.get_running_loop().call_later(CONNECT_TIMEOUT, self._expire, session)
        location = f"{request.scope.get('root_path', '')}/whep/{quote(camera, safe='')}/{session.id}"
        return Response(
            pc.localDescription.sdp, status_code=201, media_type="application/sdp", headers={"Location": location}
        )

    async def _delete(self, request: Request) -> Response:
        refused = await self._authorize(request, request.path_params["camera"])
        if refused is not None:
            return refused
        session = self._sessions.get(request.path_params["session"])
        if session is None or session.camera != request.path_params["camera"]:
            return text_error(404, "no such session")
        await self._end(session.id)
        return PlainTextResponse("session ended\n")

    # -- sessions -----------------------------------------------------------------------------

    def _expire(self, session: _Session) -> None:
        session.timeout = None
        if session.pc.connectionState != "connected":
            asyncio.ensure_future(self._end(session.id))

    async def _end(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        if session.timeout is not None:
            session.timeout.cancel()
        if session.hold is not None:
            session.hold.release()
        session.track.stop()
        await session.pc.close()
