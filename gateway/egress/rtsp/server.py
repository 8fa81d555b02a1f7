"""RTSP egress: redacted video to video-management systems (RTSP 1.0, RFC 2326).

A VMS pulls ``rtsp://HOST:PORT/CAMERA`` with digest authentication (RFC 2617, MD5, with or
without ``qop="auth"``) and receives one H.264 track (RFC 6184, packetization-mode 1) either
interleaved in the RTSP connection (``RTP/AVP/TCP``) or as unicast UDP (``RTP/AVP``). The media
comes from the camera's :class:`~gateway.egress.rendition.Rendition`, the same encoder WHEP
viewers share: every session subscribes to it, so a session adds packetization and sending
(:mod:`.sender`), never an encode.

This module accepts connections, answers their requests and keeps the sessions; a connection's
I/O (reading a request, lingering before a close) and a session's transports are
:mod:`.session`, the wire format is :mod:`.protocol` and the credentials check :mod:`.digest`.
Sessions live at most as long as the RTSP connection that created them and expire after
``session_timeout`` seconds without a request naming them or an RTCP report from their client.

What a client may hold is capped (:mod:`gateway.limits`): connections per address and in all,
sessions per principal, per address and in all. A connection must authenticate within
``auth_timeout`` seconds of being accepted or it is closed (requests without valid credentials,
OPTIONS included, do not keep it open); at the connection cap, a new connection displaces the
oldest one that has not authenticated yet, so a flood of idle connections cannot keep out a client
that logs in.

In a cluster, a DESCRIBE or SETUP for a camera another node runs is answered ``302 Moved
Temporarily`` (RFC 2326 §11.3.3) with ``Location:`` that node's RTSP address and the same path, after
authentication and the check that the client may view the camera, so that only those who may watch
it learn where it runs; clients reconnect there (docs/deploy.md says which do). The Location carries
the login its user hands on for that camera (:attr:`RtspUser.hand_on`), as FFmpeg no longer sends a
URL's credentials to the host a redirect names. A login this node does not know yet (made on
another node a moment ago) is looked up once (``look_up``) before it is refused.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Collection
from urllib.parse import quote

from aiortc.mediastreams import MediaStreamError

from ...limits import Caps, Hold, Ledger, Refused
from ..rendition import Rendition
from .digest import AuthFailure, Digest, RtspUser
from .protocol import (
    MAX_HEAD,
    TRACK,
    Request,
    RtspError,
    choose_transport,
    error_response,
    relocate,
    response,
    sdp,
    sprop,
    target,
)
from .sender import RtpSender
from .session import RETRY_FULL, SEND_BUFFER, Connection, Session, session_header

__all__ = ["RtspServer"]

logger = logging.getLogger(__name__)

_REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to its last
_FIRST_PACKET_WAIT = 5.0  # PLAY waits this long for the first frame (to report its rtptime)
_PROBE_WAIT = 2.0  # DESCRIBE waits this long for a keyframe's SPS/PPS when none is cached
_RETRY_NO_FRAME = 1  # Retry-After (s): the camera has no frame yet
_RETRY_THROTTLED = 30  # Retry-After (s): too many failed logins from this address
PUBLIC = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER"
_METHODS = frozenset(PUBLIC.split(", "))
_NOT_ALLOWED = {"ANNOUNCE", "RECORD", "REDIRECT", "SET_PARAMETER"}  # RTSP methods we refuse (405)
_SESSION_ID = re.compile(r"[0-9A-Za-z$\-_.+]{1,64}")


# -- the server --------------------------------------------------------------------------------------


class RtspServer:
    """RTSP 1.0 server over per-camera H.264 renditions (see the module docstring and docs/rtsp-egress.md)."""

    def __init__(
        self,
        rendition_for: Callable[[str], Rendition | None],
        camera_known: Callable[[str], bool],
        users: Callable[[str], RtspUser | None],
        *,
        realm: str = "privacy-gateway",
        throttled: Callable[[str], bool] = lambda peer: False,
        failed: Callable[[str, str | None, str], None] = lambda peer, user, why: None,
        max_sessions: int = 64,
        session_timeout: float = 60.0,
        max_sessions_per_address: int = 32,
        max_sessions_per_principal: int = 16,
        max_connections: int | None = None,
        max_connections_per_address: int = 16,
        auth_timeout: float = 5.0,
        owner_url: Callable[[str], str | None] = lambda camera: None,
        look_up: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """``throttled(peer)``: answer that address's requests needing authentication with 503
        Retry-After before looking at its credentials (RTSP 1.0 has no 429; 503 tells clients to
        come back rather than give up). ``failed(peer, user, why)``: each failed login; a request
        without credentials is the normal challenge and is not one.

        Caps (docs/rtsp-egress.md): sessions in all, per address and per principal
        (:attr:`RtspUser.principal`); connections in all (None: twice ``max_sessions``, at least
        16) and per address; ``auth_timeout`` seconds for a new connection to log in.

        ``owner_url(camera)``: the RTSP address (``rtsp://host:port``) of the cluster node that runs
        ``camera`` if not this one: DESCRIBE and SETUP are redirected there (302), with the login the
        user hands on (:attr:`RtspUser.hand_on`). ``look_up(username)``: take in a user that
        ``users`` does not know yet, if it exists now (a login another node just made); called at most
        once per request, only for a digest response to an unknown user."""
        if '"' in realm or "\\" in realm:
            raise ValueError(f"realm: {realm!r} may not contain quotes or backslashes")
        if not session_timeout >= 1:
            raise ValueError(f"session_timeout: {session_timeout!r} is not at least 1 second")
        if not auth_timeout > 0:
            raise ValueError(f"auth_timeout: {auth_timeout!r} is not a positive number of seconds")
        if max_connections is None:
            max_connections = max(16, 2 * max_sessions) if isinstance(max_sessions, int) else max_sessions
        for name, value in (("max_sessions", max_sessions), ("max_sessions_per_address", max_sessions_per_address),
                            ("max_sessions_per_principal", max_sessions_per_principal),
                            ("max_connections", max_connections),
                            ("max_connections_per_address", max_connections_per_address)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: {value!r} is not a positive integer")
        session_caps = Caps(max_sessions, max_sessions_per_address, max_sessions_per_principal)
        connection_caps = Caps(max_connections, max_connections_per_address)
        self._rendition_for = rendition_for
        self._camera_known = camera_known
        self._owner_url = owner_url
        self._look_up = look_up
        self._users = users
        self._throttled = throttled
        self._failed = failed
        self._digest = Digest(realm)
        self._timeout = float(session_timeout)
        self._auth_timeout = float(auth_timeout)
        #: what clients hold, for the caps and /metrics
        self.connection_ledger = Ledger("rtsp", "connections", connection_caps)
        self.session_ledger = Ledger("rtsp", "sessions", session_caps)
        self._sessions: dict[str, Session] = {}
        self._connections: set[Connection] = set()
        self._unauthenticated: dict[Connection, None] = {}  # oldest first: the auth deadline, and who is displaced
        self.sender = RtpSender(self._timeout)
        self._servers: list[asyncio.Server] = []
        self._reaper: asyncio.Task | None = None

    def sessions(self, camera: str) -> int:
        """Sessions set up for ``camera``, playing or not."""
        return sum(1 for session in self._sessions.values() if session.camera == camera)

    def end_camera(self, camera: str, renditions: Collection[Rendition] | None = None) -> int:
        """End the sessions of ``camera`` (only those playing ``renditions``, if given): it was
        removed, or replaced by an edit. Their connections are closed, as when a stream ends.
        Returns how many ended."""
        ended = [s for s in list(self._sessions.values()) if s.camera == camera
                 and (renditions is None or (s.rendition is not None and s.rendition in renditions))]
        for session in ended:
            self._end_closing(session, "the camera was removed" if renditions is None else "the camera was edited")
        return len(ended)

    async def start(self, listeners: list[socket.socket]) -> int:
        """Serve on ``listeners``, bound and listening sockets (``serve`` binds them before anything
        starts, so that a port already taken stops it there); returns their port."""
        if self._servers:
            raise RuntimeError("already started")
        for listener in listeners:
            self._servers.append(await asyncio.start_server(self._on_connection, sock=listener, limit=MAX_HEAD))
        self._reaper = asyncio.get_running_loop().create_task(self._reap())
        return listeners[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, end every session and close every connection."""
        for server in self._servers:
            server.close()
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        tasks = [c.task for c in self._connections if c.task is not None]
        for connection in list(self._connections):
            connection.writer.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    # -- connections ------------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(reader, writer)
        try:
            connection.hold = self._admit(connection)
        except Refused as refused:
            logger.debug("rtsp %s: connection refused: %s", connection.peer, refused)
            writer.write(error_response(RtspError(503, str(refused), {"Retry-After": str(RETRY_FULL)}), None))
            writer.close()
            return
        connection.task = asyncio.current_task()
        self._connections.add(connection)
        self._unauthenticated[connection] = None
        sock = writer.get_extra_info("socket")
        if sock is not None:  # without autotuning's megabytes, a client that falls behind shows up in our backlog
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        try:
            await self._serve(connection)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("rtsp %s: connection failed", connection.peer)
        finally:
            self._connections.discard(connection)
            self._unauthenticated.pop(connection, None)
            for session in list(connection.sessions.values()):
                self._end(session, "connection closed")
            connection.hold.release()
            writer.transport.abort()

    def _admit(self, connection: Connection) -> Hold:
        """The new connection's hold; at the connection cap a connection that has not logged in yet
        makes room: the oldest of the address holding the most connections (a client at its
        address's cap displaces nobody; one with a single connection is not displaced by a flood)."""
        ledger = self.connection_ledger
        if ledger.refusal(connection.peer) == ledger.resource and self._unauthenticated:
            self._drop(max(self._unauthenticated, key=lambda waiting: ledger.held_from(waiting.peer)), "evicted")
        return ledger.take(connection.peer)

    def _drop(self, connection: Connection, why: str) -> None:
        """Close ``connection`` now (its task cleans up after it), counted in the ledger's ``closed``."""
        self._unauthenticated.pop(connection, None)
        connection.hold.release()
        self.connection_ledger.closed[why] += 1
        logger.debug("rtsp %s: connection closed: %s", connection.peer, why)
        connection.writer.transport.abort()

    async def _serve(self, connection: Connection) -> None:
        reader = connection.reader
        while True:
            first = await reader.readexactly(1)  # idles as long as the client likes; the reaper bounds it
            if first == b"$":  # interleaved data from the client: RTCP receiver reports
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    channel, length = struct.unpack("!BH", await reader.readexactly(3))
                    await reader.readexactly(length)
                for session in connection.sessions.values():
                    if session.choice.tcp and channel == session.channels[1]:
                        session.touch()
                continue
            try:
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    request = await connection.read_request(first)
            except RtspError as exc:
                logger.debug("rtsp %s: bad request: %s", connection.peer, exc)
                connection.write(error_response(exc, exc.cseq))
                await connection.linger()  # the framing can no longer be trusted
                return
            try:
                reply, then = await self._handle(connection, request)
            except RtspError as exc:
                logger.debug("rtsp %s: %s %s: %d %s", connection.peer, request.method, request.uri, exc.status, exc)
                reply, then = error_response(exc, request.cseq), None
            connection.write(reply)
            if then is not None:
                then()

    # -- requests ---------------------------------------------------------------------------------

    async def _handle(self, connection: Connection, request: Request) -> tuple[bytes, Callable[[], None] | None]:
        method = request.method
        if method in _NOT_ALLOWED:
            raise RtspError(405, f"{method} is not allowed here", {"Allow": PUBLIC})
        if method not in _METHODS:
            raise RtspError(501, f"{method} is not implemented", {"Public": PUBLIC})
        if request.header("require"):
            raise RtspError(551, "no options are supported", {"Unsupported": request.header("require")})
        session = self._session_of(connection, request)
        if method == "OPTIONS":  # the one request answered without authentication
            if session is not None:
                session.touch()
            return response(200, request.cseq, {"Public": PUBLIC}), None
        authority, camera = target(request.uri)
        user = await self._authenticate(connection, request, session)
        if session is not None:
            if session.user != user.name:
                raise RtspError(454, "no such session")
            session.touch()
        if method == "GET_PARAMETER":  # keep-alive, with or without a session
            if request.body.strip():
                raise RtspError(451, "no parameters are readable")
            return response(200, request.cseq, session_header(session, self._timeout)), None
        if camera is None:
            raise RtspError(400 if request.uri == "*" else 404, "the URI names no camera")
        if session is not None and session.camera != camera:
            raise RtspError(454, "the session belongs to another camera")
        # Whether a camera exists is told only to those who may view it.
        if not user.may_view(camera):
            raise RtspError(403, f"{user.name} may not view this camera")
        if session is None and method in ("DESCRIBE", "SETUP") and (owner := self._owner_url(camera)) is not None:
            raise RtspError(302, f"camera {camera} runs on {owner}",
                            {"Location": relocate(request.uri, owner, await self._login_for(user, camera))})
        if not self._camera_known(camera):
            raise RtspError(404, "no such camera")

        if method == "DESCRIBE":
            return await self._describe(connection, request, camera, authority), None
        if method == "SETUP":
            return await self._setup(connection, request, session, camera, authority, user), None
        if session is None:
            raise RtspError(454, "a Session header is required")
        if method == "PLAY":
            return await self._play(request, session)
        if method == "PAUSE":
            session.stop_media()
            return response(200, request.cseq, session_header(session, self._timeout)), None
        self._end(session, "teardown")  # TEARDOWN
        return response(200, request.cseq), None

    async def _login_for(self, user: RtspUser, camera: str) -> tuple[str, str] | None:
        """The login a redirect for ``camera`` hands ``user`` on with (None: it has none to give)."""
        if user.hand_on is None:
            return None
        try:
            return await user.hand_on(camera)
        except Exception as exc:  # e.g. the shared state is unreachable: no redirect the client could not follow
            logger.warning("rtsp: no login to hand %s on with for camera %s: %r", user.name, camera, exc)
            raise RtspError(503, "the redirect to the camera's node cannot be prepared now; try later",
                            {"Retry-After": "2"}) from None

    async def _authenticate(self, connection: Connection, request: Request, session: Session | None) -> RtspUser:
        if session is None and self._throttled(connection.peer):
            raise RtspError(503, "too many failed logins; try later", {"Retry-After": str(_RETRY_THROTTLED)})
        try:
            try:
                user = self._digest.check(request, connection.endpoint, self._users)
            except AuthFailure as failure:
                if failure.why != "unknown user" or self._look_up is None:
                    raise
                await self._look_up(failure.user)  # made on another node a moment ago, maybe
                user = self._digest.check(request, connection.endpoint, self._users)
        except AuthFailure as failure:
            if failure.why is not None:
                logger.info("rtsp %s: failed login as %r: %s", connection.peer, failure.user, failure.why)
                self._failed(connection.peer, failure.user, failure.why)
            challenge = {"WWW-Authenticate": self._digest.challenge(connection.endpoint, stale=failure.stale)}
            raise RtspError(401, "authentication required", challenge) from None
        # Only a request that proves who sent it keeps a connection open: not OPTIONS, not a failed login.
        connection.last_seen = time.monotonic()
        self._unauthenticated.pop(connection, None)
        return user

    def _session_of(self, connection: Connection, request: Request) -> Session | None:
        value = request.header("session")
        if value is None:
            return None
        session_id = value.split(";", 1)[0].strip()
        session = connection.sessions.get(session_id) if _SESSION_ID.fullmatch(session_id) else None
        if session is None:
            raise RtspError(454, "no such session")
        return session

    def _rendition(self, camera: str) -> Rendition:
        rendition = self._rendition_for(camera)
        if rendition is None:
            raise RtspError(503, "the camera has no frame yet; retry", {"Retry-After": str(_RETRY_NO_FRAME)})
        return rendition

    async def _describe(self, connection: Connection, request: Request, camera: str, authority: str) -> bytes:
        rendition = self._rendition(camera)
        parameter_sets = self.sender.sprop.get(rendition)
        if parameter_sets is None:  # one forced keyframe per rendition, then cached
            track = rendition.subscribe()
            try:
                parameter_sets = sprop(await asyncio.wait_for(track.recv(), _PROBE_WAIT))
            except (TimeoutError, MediaStreamError):
                parameter_sets = None
            finally:
                track.stop()
            if parameter_sets is not None:
                self.sender.sprop[rendition] = parameter_sets
        description = sdp(camera, connection.local, rendition.fps, parameter_sets)
        base = f"rtsp://{authority}/{quote(camera, safe='')}/"
        return response(200, request.cseq, {"Content-Base": base}, description.encode(), "application/sdp")

    async def _setup(self, connection: Connection, request: Request, session: Session | None, camera: str,
               authority: str, user: RtspUser) -> bytes:
        if session is not None:
            raise RtspError(455, "the session is already set up", {"Allow": "PLAY, PAUSE, TEARDOWN, GET_PARAMETER"})
        self._rendition(camera)
        choice = choose_transport(request.header("transport") or "")
        if choice is None:
            raise RtspError(461, "use RTP/AVP/TCP;unicast;interleaved=a-b or RTP/AVP;unicast;client_port=a-b")
        channels = (0, 1)
        if choice.tcp:
            channels = choice.channels
            used = {c for s in connection.sessions.values() if s.choice.tcp for c in s.channels}
            if channels is None or used & set(channels):
                channels = connection.free_channels()
            if channels is None:
                raise RtspError(461, "no free interleaved channels on this connection")
        try:
            hold = self.session_ledger.take(connection.peer, user.principal or user.name)
        except Refused as refused:  # all sessions taken: come back later; this client's own cap: 453
            if refused.everyone:
                raise RtspError(503, str(refused), {"Retry-After": str(RETRY_FULL)}) from None
            raise RtspError(453, str(refused)) from None
        session = Session(secrets.token_hex(8), camera, user.name, connection, choice,
                          f"rtsp://{authority}/{quote(camera, safe='')}/", allowed=user.may_view, hold=hold,
                          channels=channels)
        connection.sessions[session.id] = session
        self._sessions[session.id] = session
        if not choice.tcp:
            try:
                await session.open_udp()
                if session.id not in self._sessions:  # the client left while the ports opened
                    session.close()
                    raise RtspError(454, "the session ended")
            except BaseException:
                self._end(session, "no UDP ports")
                raise
        logger.info("rtsp %s: %s set up %s over %s (session %s)", connection.peer, user.name, camera,
                    "TCP" if choice.tcp else "UDP", session.id)
        headers = {"Transport": session.transport_header(), **session_header(session, self._timeout)}
        return response(200, request.cseq, headers)

    async def _play(self, request: Request, session: Session) -> tuple[bytes, Callable[[], None] | None]:
        range_ = request.header("range")
        if range_ is not None and not range_.strip().lower().startswith(("npt=", "clock=")):
            raise RtspError(457, "only npt and clock ranges (a live stream plays from now)")
        headers = {**session_header(session, self._timeout), "Range": "npt=0.000-"}
        track_url = session.base_url + TRACK
        if session.playing:
            headers["RTP-Info"] = f"url={track_url};seq={session.sequence}"
            return response(200, request.cseq, headers), None
        rendition = self._rendition(session.camera)
        track = rendition.subscribe()
        first = asyncio.ensure_future(track.recv())
        try:
            await asyncio.wait({first}, timeout=_FIRST_PACKET_WAIT)
            if session.id not in self._sessions:
                raise RtspError(454, "the session ended")
            if first.done() and first.exception() is not None:
                raise RtspError(503, "the camera's stream ended; retry", {"Retry-After": str(_RETRY_NO_FRAME)})
        except BaseException:  # cancelled with the connection, too: the track must not outlive us
            first.cancel()
            track.stop()
            raise
        session.touch()
        info = f"url={track_url};seq={session.sequence}"
        if first.done():  # else the camera is slow: no rtptime, which RFC 2326 allows
            info += f";rtptime={(first.result().pts + session.ts_offset) & 0xFFFFFFFF}"
        headers["RTP-Info"] = info
        session.track, session.rendition = track, rendition

        def start() -> None:
            if session.track is track:
                session.pump = asyncio.get_running_loop().create_task(self.sender.pump(session, track, first, self._end))

        return response(200, request.cseq, headers), start

    # -- bookkeeping ------------------------------------------------------------------------------

    def _end_closing(self, session: Session, why: str) -> None:
        """End ``session`` from our side and close its connection if it holds no other session: an
        RTSP/1.0 server cannot tell a playing client that its stream is over except by closing, and a
        client left connected waits for its own read timeout instead."""
        self._end(session, why)
        if not session.connection.sessions:
            session.connection.writer.transport.abort()

    def _end(self, session: Session, why: str) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        session.connection.sessions.pop(session.id, None)
        session.close()
        if session.hold is not None:
            session.hold.release()
        logger.info("rtsp %s: session %s (%s, %s) ended: %s; %d frames skipped", session.connection.peer,
                    session.id, session.user, session.camera, why, session.frames_dropped)

    async def _reap(self) -> None:
        """End sessions nobody kept alive, close connections that did not log in in time and idle
        connections without sessions."""
        while True:
            await asyncio.sleep(min(1.0, self._timeout / 4, self._auth_timeout / 4))
            now = time.monotonic()
            for connection in list(self._unauthenticated):  # oldest first
                if now - connection.opened <= self._auth_timeout:
                    break
                self._drop(connection, "auth_timeout")
            for session in list(self._sessions.values()):
                if now - session.last_seen > self._timeout:
                    self._end(session, f"no keep-alive for {self._timeout:g} s")
                elif session.allowed is not None and not session.allowed(session.camera):
                    # token revoked or expired, role or grant taken away
                    self._end_closing(session, "access revoked")
            for connection in list(self._connections):
                if not connection.sessions and now - connection.last_seen > self._timeout and not connection.hold.released:
                    self._drop(connection, "idle")
