"""RTSP connections and the sessions set up on them: transports (TCP interleaved or UDP) and sending.

A :class:`Connection` reads requests off its stream (and lingers before closing after a framing
error). A :class:`Session` lives at most as long as the :class:`Connection` that set it up. It sends RTP
and RTCP either interleaved in the RTSP connection (``$`` framing, RFC 2326 10.12) or over a
pair of UDP sockets bound next to the server's address; either way its :meth:`Session.backlog`
says how many bytes wait to be sent, which is how a client that falls behind is noticed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc.mediastreams import MediaStreamTrack

from ...limits import Hold
from ..rendition import Rendition
from .protocol import (
    MAX_HEAD,
    REQUEST_LINE,
    Request,
    RtspError,
    TransportChoice,
    cseq_of,
    parse_request,
)

logger = logging.getLogger(__name__)

BACKLOG_BYTES = 256 * 1024  # unsent bytes for one client before it skips to the next keyframe
SEND_BUFFER = 128 * 1024  # kernel send buffer per connection (Linux doubles it): bounds the delay too
CONNECTION_BUFFER_LIMIT = 4 * BACKLOG_BYTES  # unread responses + media: the connection is closed
RETRY_FULL = 5  # Retry-After (s): session cap reached, or no UDP ports


def _bind_udp_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets on consecutive ports, the first even (RTP, RTCP), as RFC 3550 expects."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(64):
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            rtp.bind((host, 0))
            port = rtp.getsockname()[1]
            if port % 2 == 0 and port < 65535:
                rtcp = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    rtcp.bind((host, port + 1))
                except OSError:
                    rtcp.close()
                else:
                    rtp.setblocking(False)
                    rtcp.setblocking(False)
                    return rtp, rtcp
        except OSError:
            pass
        rtp.close()
    raise RtspError(503, "no free UDP port pair", {"Retry-After": str(RETRY_FULL)})


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_packet: Callable[[bytes, tuple], None] | None = None) -> None:
        self.on_packet = on_packet

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.on_packet is not None:
            self.on_packet(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: the client is gone or late
        pass


@dataclass(eq=False)
class Session:
    id: str
    camera: str
    user: str
    connection: Connection
    choice: TransportChoice
    base_url: str  # aggregate control URL, ending with "/"
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    sequence: int = field(default_factory=lambda: secrets.randbits(16))
    ts_offset: int = field(default_factory=lambda: secrets.randbits(32))
    last_seen: float = field(default_factory=time.monotonic)
    channels: tuple[int, int] = (0, 1)
    udp: tuple[asyncio.DatagramTransport, asyncio.DatagramTransport] | None = None
    server_ports: tuple[int, int] = (0, 0)
    track: MediaStreamTrack | None = None
    rendition: Rendition | None = None
    pump: asyncio.Task | None = None
    skipping: bool = False  # behind: dropping frames until a keyframe
    behind_since: float | None = None
    packets: int = 0
    octets: int = 0
    frames_dropped: int = 0
    last_rtp: tuple[int, float] | None = None  # (RTP timestamp, monotonic time) of the last frame sent
    last_report: float = -1e9
    allowed: Callable[[str], bool] | None = None  # the user's may_view, asked again while the session lives
    hold: Hold | None = None  # its place under the session caps, given back when it ends

    @property
    def playing(self) -> bool:
        return self.pump is not None

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def transport_header(self) -> str:
        if self.choice.tcp:
            a, b = self.channels
            return f"RTP/AVP/TCP;unicast;interleaved={a}-{b};ssrc={self.ssrc:08X}"
        a, b = self.choice.client_ports
        c, d = self.server_ports
        return f"RTP/AVP;unicast;client_port={a}-{b};server_port={c}-{d};ssrc={self.ssrc:08X}"

    async def open_udp(self) -> None:
        """Bind the server's RTP/RTCP port pair beside the connection's local address and listen
        on it; RTCP receiver reports from the client's address keep the session alive."""
        connection = self.connection
        rtp, rtcp = _bind_udp_pair(connection.local)
        self.server_ports = (rtp.getsockname()[1], rtcp.getsockname()[1])

        def on_rtcp(data: bytes, addr: tuple) -> None:  # receiver reports keep the session alive
            if addr[0] == connection.peer:
                self.touch()

        loop = asyncio.get_running_loop()
        transports = []
        try:
            for sock, protocol in ((rtp, _Datagrams()), (rtcp, _Datagrams(on_rtcp))):
                transports.append((await loop.create_datagram_endpoint(lambda p=protocol: p, sock=sock))[0])
        except OSError:
            for transport in transports:
                transport.close()
            rtp.close()
            rtcp.close()
            raise RtspError(503, "cannot open UDP ports", {"Retry-After": str(RETRY_FULL)}) from None
        self.udp = (transports[0], transports[1])

    def backlog(self) -> int:
        if self.udp is not None:
            return self.udp[0].get_write_buffer_size()
        return self.connection.buffered()

    def send(self, rtcp: bool, data: bytes) -> None:
        if self.udp is not None:
            host = self.connection.peer
            port = self.choice.client_ports[1 if rtcp else 0]
            self.udp[1 if rtcp else 0].sendto(data, (host, port))
        else:
            self.connection.write(b"$" + struct.pack("!BH", self.channels[1 if rtcp else 0], len(data)) + data)

    def stop_media(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
            self.pump = None
        if self.track is not None:
            self.track.stop()
            self.track = None

    def close(self) -> None:
        self.stop_media()
        if self.udp is not None:
            for transport in self.udp:
                transport.close()
            self.udp = None


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("0.0.0.0", 0)
        self.peer: str = peer[0]
        #: the TCP connection (address and port) a digest nonce is bound to: a captured
        #: Authorization header does not replay on another connection, even from the same address
        self.endpoint: str = f"{peer[0]}:{peer[1]}"
        self.local: str = local[0]
        self.sessions: dict[str, Session] = {}
        self.opened = time.monotonic()
        self.last_seen = self.opened  # of the last request that authenticated
        self.task: asyncio.Task | None = None
        self.hold: Hold | None = None  # its place under the connection caps

    def buffered(self) -> int:
        transport = self.writer.transport
        return 0 if transport.is_closing() else transport.get_write_buffer_size()

    def write(self, data: bytes) -> None:
        if self.writer.transport.is_closing():
            return
        if self.buffered() > CONNECTION_BUFFER_LIMIT:
            logger.info("rtsp %s: client does not read; closing the connection", self.peer)
            self.writer.transport.abort()
            return
        self.writer.write(data)

    async def read_request(self, first: bytes) -> Request:
        """Read one request (``first``: its first byte, already read) line by line, so a line that
        cannot start a request is refused at once."""
        reader = self.reader
        head = first
        try:
            head += await reader.readuntil(b"\r\n")
            if not REQUEST_LINE.fullmatch(head[:-2]):
                raise RtspError(400, "request line is not METHOD URI RTSP/1.0")
            while not head.endswith(b"\r\n\r\n"):
                head += await reader.readuntil(b"\r\n")
                if len(head) > MAX_HEAD:
                    break
        except asyncio.LimitOverrunError:
            head += b"?" * MAX_HEAD  # a line longer than the whole allowance
        try:
            request = parse_request(head)
        except RtspError as exc:
            exc.cseq = cseq_of(head)
            raise
        length = int(request.headers.get("content-length", "0"))
        if length:
            request.body = await reader.readexactly(length)
        return request

    async def linger(self) -> None:
        """Send what is queued, half-close, and read what the client still sends, so that closing does
        not reset the connection (and destroy the error response) while unread input is pending."""
        try:
            async with asyncio.timeout(2.0):
                await self.writer.drain()
                self.writer.write_eof()
                discarded = 0
                while discarded < (1 << 20) and (chunk := await self.reader.read(65536)):
                    discarded += len(chunk)
        except (TimeoutError, ConnectionError, OSError):
            pass

    def free_channels(self) -> tuple[int, int] | None:
        used = {c for s in self.sessions.values() if s.choice.tcp for c in s.channels}
        return next(((a, a + 1) for a in range(0, 255, 2) if a not in used and a + 1 not in used), None)


def session_header(session: Session | None, timeout: float) -> dict[str, str]:
    return {} if session is None else {"Session": f"{session.id};timeout={max(1, int(timeout))}"}
