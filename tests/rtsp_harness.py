"""The RTSP egress under test, and the clients that talk to it (shared by tests/test_rtsp_*.py).

A feeder thread pushes frames of a real clip (opencv_vtest.avi, read in place) into the camera's
rendition, each with its number written across the top (a row of black/white blocks and their
inverse below). Clients decode what they receive; the tests read the numbers back and compare
the rest of the picture with what was pushed, so a stream that merely plays but shows the wrong
pictures fails. A second camera shows noise, which keeps the encoder at its bitrate cap: that
is the one a stalled client falls behind on. :class:`RawClient` speaks RTSP over a plain socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import socket
import struct
import threading
import time

import av
import cv2
import numpy as np
import pytest
from hypothesis import strategies as st

from gateway.api.server import listen_on
from gateway.egress import Rendition, RtspServer, RtspUser
from live_support import Feeder

LOGGER = "gateway.egress.rtsp"  # the parent of the server's, sender's and sessions' loggers

WIDTH, HEIGHT, FPS = 640, 360, 25
TICKS = 90_000 // FPS
REALM = "privacy-gateway"
FIRST_CODE, CODE_STEP = 1000, 3
BITS, BLOCK = 16, 40
ALICE = ("alice", "wonder land")  # may view every camera
BOB = ("bob", "builder")  # may view only the noise camera
OK_STATUSES = {200, 400, 401, 403, 404, 405, 413, 414, 451, 454, 455, 457, 461, 501, 503, 505, 551}
METHODS = ["OPTIONS", "DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER",
           "ANNOUNCE", "RECORD", "FROB", "get"]
line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def ha1(user: str, password: str) -> str:
    return md5(f"{user}:{REALM}:{password}")


def compose(source: list[np.ndarray], index: int) -> np.ndarray:
    image = source[index % len(source)].copy()
    code = FIRST_CODE + CODE_STEP * index
    for bit in range(BITS):
        on = (code >> (BITS - 1 - bit)) & 1
        image[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255 if on else 0
        image[BLOCK : 2 * BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 0 if on else 255
    return image


def read_code(image: np.ndarray) -> int | None:
    code = 0
    for bit in range(BITS):
        top = image[10:30, bit * BLOCK + 10 : bit * BLOCK + 30].mean()
        bottom = image[BLOCK + 10 : BLOCK + 30, bit * BLOCK + 10 : bit * BLOCK + 30].mean()
        if abs(top - bottom) < 100:
            return None
        code = code << 1 | int(top > bottom)
    if code < FIRST_CODE or (code - FIRST_CODE) % CODE_STEP:
        return None
    return (code - FIRST_CODE) // CODE_STEP


def check_pictures(frames: list[np.ndarray], source: list[np.ndarray], minimum: int) -> None:
    """Enough frames, of the right size, numbered in order, each close to the frame pushed with its number."""
    assert len(frames) >= minimum, f"decoded {len(frames)} frames, wanted {minimum}"
    codes = []
    for image in frames:
        assert image.shape == (HEIGHT, WIDTH, 3)
        index = read_code(image)
        if index is None:
            continue
        codes.append(index)
        difference = np.abs(image[2 * BLOCK :].astype(np.int16) - compose(source, index)[2 * BLOCK :]).mean()
        assert difference < 6, f"frame {index}: mean absolute difference {difference:.1f} from what was pushed"
    assert len(codes) >= 0.9 * len(frames), f"only {len(codes)} of {len(frames)} frame numbers readable"
    assert codes == sorted(set(codes)), f"frames out of order or repeated: {codes}"


@pytest.fixture(scope="module")
def clip(data) -> list[np.ndarray]:
    frames = []
    with av.open(str(data / "videos" / "opencv_vtest.avi")) as container:
        for frame in container.decode(video=0):
            frames.append(cv2.resize(frame.to_ndarray(format="bgr24"), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA))
            if len(frames) == 40:
                break
    return frames


class Gateway:
    """Cameras ``cam`` (the clip), ``noise`` and ``empty`` (configured, no frame yet) behind one RTSP server."""

    def __init__(self, clip: list[np.ndarray]) -> None:
        rng = np.random.default_rng(7)
        self.sources = {"cam": clip, "noise": [rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8) for _ in range(8)]}
        self.renditions = {name: Rendition(name, "h264", WIDTH, HEIGHT, fps=FPS) for name in self.sources}
        self.users = {
            ALICE[0]: RtspUser(ALICE[0], ha1(*ALICE), lambda camera: True),
            BOB[0]: RtspUser(BOB[0], ha1(*BOB), lambda camera: camera == "noise"),
        }
        self.failures: list[tuple[str, str | None, str]] = []
        self.throttled: set[str] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rtsp-loop", daemon=True)
        self.thread.start()
        self.servers: list[RtspServer] = []
        self.server, self.port = self.start_server()
        self.feeder = Feeder(self._push, FPS)
        self.feeder.start()

    def _push(self, number: int) -> None:
        """Frame ``number`` of each camera's source to its rendition, while someone watches."""
        for name, source in self.sources.items():
            if self.renditions[name].viewers:
                self.renditions[name].push(compose(source, number), number / FPS)

    def start_server(self, users=None, **options) -> tuple[RtspServer, int]:
        """``users``: who may log in (default: :attr:`users`)."""
        server = RtspServer(
            self.renditions.get,
            lambda camera: camera in ("cam", "noise", "empty"),
            users or self.users.get,
            throttled=lambda peer: peer in self.throttled,
            failed=lambda peer, user, why: self.failures.append((peer, user, why)),
            **options,
        )
        port = self.run(server.start(listen_on("127.0.0.1", 0, 100)))
        self.servers.append(server)
        return server, port

    def run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def sessions(self, camera: str, server: RtspServer | None = None) -> int:
        async def count() -> int:
            return (server or self.server).sessions(camera)

        return self.run(count())

    def url(self, camera: str, port: int | None = None, credentials: tuple[str, str] | None = None) -> str:
        userinfo = f"{credentials[0]}:{credentials[1]}@".replace(" ", "%20") if credentials else ""
        return f"rtsp://{userinfo}127.0.0.1:{port or self.port}/{camera}"

    def close(self) -> None:
        for server in self.servers:
            self.run(server.close())
        self.feeder.stop()
        for rendition in self.renditions.values():
            rendition.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        if self.feeder.error is not None:
            raise self.feeder.error


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def gw(clip):
    errors = ErrorRecords()
    logging.getLogger(LOGGER).addHandler(errors)
    gateway = Gateway(clip)
    try:
        yield gateway
    finally:
        gateway.close()
        logging.getLogger(LOGGER).removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]


@pytest.fixture
def server_errors():
    """ERROR records the server logs during one test (it never should)."""
    errors = ErrorRecords()
    logging.getLogger(LOGGER).addHandler(errors)
    yield errors.records
    logging.getLogger(LOGGER).removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]


def wait_until(predicate, timeout: float = 20, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        time.sleep(0.05)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers}, {self.body[:80]!r})"


def nonce_of(challenge: str) -> str:
    return dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))["nonce"]


def digest(credentials: tuple[str, str], method: str, uri: str, challenge: str, qop: bool = True, nc: int = 1) -> str:
    """An Authorization header answering ``challenge``; with ``qop``, as the ``nc``-th request on its nonce."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    user, password = credentials
    ha2 = md5(f"{method}:{uri}")
    common = f'username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", uri="{uri}"'
    if qop:
        cnonce = secrets.token_hex(8)
        response = md5(f"{ha1(user, password)}:{params['nonce']}:{nc:08x}:{cnonce}:auth:{ha2}")
        return f'Digest {common}, response="{response}", algorithm="MD5", qop="auth", cnonce="{cnonce}", nc={nc:08x}'
    response = md5(f"{ha1(user, password)}:{params['nonce']}:{ha2}")
    return f'Digest {common}, response="{response}"'


class RawClient:
    """Speaks RTSP over a plain socket; keeps interleaved frames that arrive between responses."""

    def __init__(self, port: int, receive_buffer: int | None = None, source: str | None = None) -> None:
        """``source``: the loopback address to connect from (127.0.0.2 ...: another client address)."""
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""
        self.cseq = 0
        self.challenge: str | None = None
        self.counts: dict[str, int] = {}  # nonce -> requests sent with it (the digest nc), as FFmpeg counts
        self.frames: list[tuple[int, bytes]] = []

    def close(self, reset: bool = False) -> None:
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buffer += chunk

    def read_frame(self) -> tuple[int, bytes] | None:
        """The next interleaved frame if one is buffered or arrives (None: a response is next)."""
        while len(self.buffer) < 4:
            self._fill()
        if self.buffer[:1] != b"$":
            return None
        channel, length = struct.unpack("!BH", self.buffer[1:4])
        while len(self.buffer) < 4 + length:
            self._fill()
        frame, self.buffer = (channel, self.buffer[4 : 4 + length]), self.buffer[4 + length :]
        return frame

    def read_response(self) -> Response:
        while True:
            if self.buffer[:1] == b"$" or len(self.buffer) < 4:
                frame = self.read_frame()
                if frame is not None:
                    self.frames.append(frame)
                    continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                self._fill()
                continue
            lines = self.buffer[:end].decode().split("\r\n")
            self.buffer = self.buffer[end + 4 :]
            version, status, _ = lines[0].split(" ", 2)
            assert version == "RTSP/1.0", lines[0]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", 0))
            while len(self.buffer) < length:
                self._fill()
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return Response(int(status), headers, body)

    def request(self, method: str, uri: str, headers: dict[str, str] | None = None,
                credentials: tuple[str, str] | None = None, qop: bool = True) -> Response:
        for _ in range(2):
            self.cseq += 1
            lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {self.cseq}"]
            lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
            if credentials and self.challenge:
                nonce = nonce_of(self.challenge)
                self.counts[nonce] = self.counts.get(nonce, 0) + 1
                lines.append(f"Authorization: {digest(credentials, method, uri, self.challenge, qop, self.counts[nonce])}")
            self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
            response = self.read_response()
            assert response.headers.get("cseq") == str(self.cseq), response
            if response.status != 401 or not credentials or self.challenge and "stale" not in response.headers.get(
                "www-authenticate", ""
            ):
                return response
            self.challenge = response.headers["www-authenticate"]
        return response

    def is_closed(self, timeout: float = 5) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def play(self, url: str, transport: str, credentials=ALICE) -> tuple[str, Response, Response]:
        """SETUP and PLAY; (session id, SETUP response, PLAY response)."""
        setup = self.request("SETUP", f"{url}/trackID=0", {"Transport": transport}, credentials)
        assert setup.status == 200, setup
        session = setup.headers["session"].split(";")[0]
        play = self.request("PLAY", f"{url}/", {"Session": session, "Range": "npt=0.000-"}, credentials)
        assert play.status == 200, play
        return session, setup, play


def rtp_fields(packet: bytes) -> tuple[int, int, int, int, bytes]:
    """(marker, sequence, timestamp, ssrc, payload) of an RTP packet with payload type 96 and no extensions."""
    first, second, sequence, timestamp, ssrc = struct.unpack("!BBHLL", packet[:12])
    assert first == 0x80 and second & 0x7F == 96, packet[:12].hex()
    return second >> 7, sequence, timestamp, ssrc, packet[12:]


def starts_keyframe(payload: bytes) -> bool:
    """The payload begins an access unit with SPS (alone, or first in a STAP-A) or an IDR slice."""
    kind = payload[0] & 0x1F
    if kind == 24:
        kind = payload[3] & 0x1F
    elif kind == 28:
        kind = payload[1] & 0x1F if payload[1] & 0x80 else 0
    return kind in (5, 7)


def udp_pair() -> tuple[socket.socket, socket.socket]:
    while True:
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind(("127.0.0.1", 0))
        port = rtp.getsockname()[1]
        if port % 2 == 0:
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp.bind(("127.0.0.1", port + 1))
                return rtp, rtcp
            except OSError:
                rtcp.close()
        rtp.close()


def ffmpeg_options(transport: str) -> dict[str, str]:
    return {"rtsp_transport": transport, "analyzeduration": "500000", "probesize": "500000", "timeout": "10000000"}


def ffmpeg_frames(url: str, transport: str, count: int) -> list[np.ndarray]:
    frames = []
    with av.open(url, options=ffmpeg_options(transport), timeout=(20, 10)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) == count:
                break
    return frames


@contextlib.contextmanager
def extra_server(gw: Gateway, users=None, **options):
    server, port = gw.start_server(users, **options)
    try:
        yield server, port
    finally:
        gw.run(server.close())
        gw.servers.remove(server)


def answer(port: int, data: bytes) -> tuple[Response, bool]:
    """The server's response to raw bytes, and whether it then closed the connection."""
    with RawClient(port) as client:
        client.send(data)
        response = client.read_response()
        return response, client.is_closed(timeout=0.5)
