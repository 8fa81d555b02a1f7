"""RTSP egress against real clients: FFmpeg (PyAV), GStreamer's rtspsrc and raw sockets.

A feeder thread pushes frames of a real clip (opencv_vtest.avi, read in place) into the camera's
rendition, each with its number written across the top (a row of black/white blocks and their
inverse below). Clients decode what they receive; the tests read the numbers back and compare
the rest of the picture with what was pushed, so a stream that merely plays but shows the wrong
pictures fails. A second camera shows noise, which keeps the encoder at its bitrate cap: that
is the one a stalled client falls behind on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import random
import re
import secrets
import socket
import struct
import subprocess
import threading
import time

import av
import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.rtsp_digest import _AuthFailure, _Digest
from gateway.rtsp_egress import RtspServer, RtspUser
from gateway.rtsp_protocol import MAX_HEAD, Request, RtspError, parse_request
from gateway.whep import Rendition
from live_support import Feeder
from rtsp_support import SYSTEM_PYTHON, gstreamer_elements_missing

WIDTH, HEIGHT, FPS = 640, 360, 25
TICKS = 90_000 // FPS
REALM = "privacy-gateway"
FIRST_CODE, CODE_STEP = 1000, 3
BITS, BLOCK = 16, 40
ALICE = ("alice", "wonder land")  # may view every camera
BOB = ("bob", "builder")  # may view only the noise camera
OK_STATUSES = {200, 400, 401, 403, 404, 405, 413, 414, 451, 454, 455, 457, 461, 501, 503, 505, 551}


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def ha1(user: str, password: str) -> str:
    return md5(f"{user}:{REALM}:{password}")


# -- pictures -----------------------------------------------------------------------------------------


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


def test_pattern_round_trips(clip):
    for index in (0, 1, 39, 1234):
        assert read_code(compose(clip, index)) == index
    assert read_code(clip[0]) is None


# -- the gateway under test -----------------------------------------------------------------------------


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

    def start_server(self, **options) -> tuple[RtspServer, int]:
        server = RtspServer(
            self.renditions.get,
            lambda camera: camera in ("cam", "noise", "empty"),
            self.users.get,
            throttled=lambda peer: peer in self.throttled,
            failed=lambda peer, user, why: self.failures.append((peer, user, why)),
            **options,
        )
        port = self.run(server.start("127.0.0.1", 0))
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


class _ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def gw(clip):
    errors = _ErrorRecords()
    logging.getLogger("gateway.rtsp_egress").addHandler(errors)
    gateway = Gateway(clip)
    try:
        yield gateway
    finally:
        gateway.close()
        logging.getLogger("gateway.rtsp_egress").removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]


@pytest.fixture
def server_errors():
    """ERROR records the server logs during one test (it never should)."""
    errors = _ErrorRecords()
    logging.getLogger("gateway.rtsp_egress").addHandler(errors)
    yield errors.records
    logging.getLogger("gateway.rtsp_egress").removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]


def wait_until(predicate, timeout: float = 20, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        time.sleep(0.05)


# -- a raw RTSP client ------------------------------------------------------------------------------------


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers}, {self.body[:80]!r})"


def digest(credentials: tuple[str, str], method: str, uri: str, challenge: str, qop: bool = True) -> str:
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    user, password = credentials
    ha2 = md5(f"{method}:{uri}")
    common = f'username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", uri="{uri}"'
    if qop:
        cnonce = secrets.token_hex(8)
        response = md5(f"{ha1(user, password)}:{params['nonce']}:00000001:{cnonce}:auth:{ha2}")
        return f'Digest {common}, response="{response}", algorithm="MD5", qop="auth", cnonce="{cnonce}", nc=00000001'
    response = md5(f"{ha1(user, password)}:{params['nonce']}:{ha2}")
    return f'Digest {common}, response="{response}"'


class RawClient:
    """Speaks RTSP over a plain socket; keeps interleaved frames that arrive between responses."""

    def __init__(self, port: int, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""
        self.cseq = 0
        self.challenge: str | None = None
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
                lines.append(f"Authorization: {digest(credentials, method, uri, self.challenge, qop)}")
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


# -- FFmpeg (PyAV) ------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_ffmpeg_decodes_the_redacted_stream(gw, transport, server_errors):
    frames = ffmpeg_frames(gw.url("cam", credentials=ALICE), transport, 40)
    check_pictures(frames, gw.sources["cam"], 40)
    wait_until(lambda: gw.sessions("cam") == 0, message="the session to end after TEARDOWN")
    wait_until(lambda: gw.renditions["cam"].viewers == 0, message="the rendition to lose its viewer")


def test_ffmpeg_wrong_password_is_refused(gw):
    gw.failures.clear()
    with pytest.raises(av.FFmpegError) as failure:
        ffmpeg_frames(gw.url("cam", credentials=(ALICE[0], "guess")), "tcp", 1)
    assert "401" in str(failure.value) or "Unauthorized" in str(failure.value) or "denied" in str(failure.value).lower()
    assert ("127.0.0.1", "alice", "wrong password") in gw.failures


# -- GStreamer (rtspsrc, under the system python) -----------------------------------------------------------

GST_ELEMENTS = {"rtspsrc": "gstreamer1.0-plugins-good", "rtph264depay": "gstreamer1.0-plugins-good",
                "avdec_h264": "gstreamer1.0-libav", "videoconvert": "gstreamer1.0-plugins-base",
                "appsink": "gstreamer1.0-plugins-base"}
GST_CLIENT = r"""
import sys, gi
gi.require_version("Gst", "1.0"); gi.require_version("GstApp", "1.0")
from gi.repository import Gst, GstApp
Gst.init(None)
url, protocol, user, password, count, out = sys.argv[1:7]
pipeline = Gst.parse_launch(
    f"rtspsrc name=src protocols={protocol} latency=200 ! rtph264depay ! avdec_h264 ! videoconvert "
    "! video/x-raw,format=BGR ! appsink name=sink sync=false max-buffers=100")
source = pipeline.get_by_name("src")
source.set_property("location", url)
source.set_property("user-id", user)
source.set_property("user-pw", password)
sink = pipeline.get_by_name("sink")
pipeline.set_state(Gst.State.PLAYING)
with open(out, "wb") as output:
    for _ in range(int(count)):
        sample = sink.try_pull_sample(15 * Gst.SECOND)
        if sample is None:
            message = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
            print(message.parse_error()[0].message if message else "no frame in 15 s", file=sys.stderr)
            sys.exit(1)
        structure = sample.get_caps().get_structure(0)
        buffer = sample.get_buffer()
        print(structure.get_value("width"), structure.get_value("height"), buffer.get_size(), flush=True)
        output.write(buffer.extract_dup(0, buffer.get_size()))
pipeline.set_state(Gst.State.NULL)
"""


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_gstreamer_decodes_the_redacted_stream(gw, protocol, tmp_path, server_errors):
    reason = gstreamer_elements_missing(GST_ELEMENTS)
    if reason:
        pytest.skip(reason)
    out = tmp_path / "frames.bgr"
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", GST_CLIENT, gw.url("cam"), protocol, *ALICE, "30", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sizes = {tuple(map(int, line.split())) for line in result.stdout.splitlines()}
    assert sizes == {(WIDTH, HEIGHT, WIDTH * HEIGHT * 3)}
    frames = list(np.fromfile(out, np.uint8).reshape(-1, HEIGHT, WIDTH, 3))
    check_pictures(frames, gw.sources["cam"], 30)
    wait_until(lambda: gw.sessions("cam") == 0, message="GStreamer's session to end")


# -- describe, setup, play, over raw sockets ---------------------------------------------------------------


def test_describe_offers_one_h264_track_with_parameter_sets(gw):
    with RawClient(gw.port) as client:
        options = client.request("OPTIONS", "*")
        assert options.status == 200 and "DESCRIBE" in options.headers["public"]
        response = client.request("DESCRIBE", gw.url("cam"), {"Accept": "application/sdp"}, ALICE)
    assert response.status == 200, response
    assert response.headers["content-type"] == "application/sdp"
    assert response.headers["content-base"] == gw.url("cam") + "/"
    sdp = response.body.decode().split("\r\n")
    assert "m=video 0 RTP/AVP 96" in sdp and "a=rtpmap:96 H264/90000" in sdp and "a=control:trackID=0" in sdp
    fmtp_line = next(line for line in sdp if line.startswith("a=fmtp:96 "))
    fmtp = dict(item.split("=", 1) for item in fmtp_line.removeprefix("a=fmtp:96 ").split(";"))
    assert fmtp["packetization-mode"] == "1"
    sps, pps = (base64.b64decode(part) for part in fmtp["sprop-parameter-sets"].split(","))
    assert (sps[0] & 0x1F, pps[0] & 0x1F) == (7, 8)
    assert fmtp["profile-level-id"] == sps[1:4].hex().upper()


def test_tcp_interleaved_rtp_matches_setup_and_rtp_info(gw):
    with RawClient(gw.port) as client:
        session, setup, play = client.play(gw.url("cam"), "RTP/AVP/TCP;unicast;interleaved=0-1")
        transport = setup.headers["transport"]
        assert "interleaved=0-1" in transport
        ssrc = int(re.search(r"ssrc=([0-9A-Fa-f]{8})", transport).group(1), 16)
        assert setup.headers["session"] == f"{session};timeout=60"
        info = dict(item.split("=", 1) for item in play.headers["rtp-info"].split(";"))
        assert info["url"] == gw.url("cam") + "/trackID=0"
        packets = []
        while len(packets) < 60:
            frame = client.read_frame()
            if frame[0] == 0:
                packets.append(rtp_fields(frame[1]))
        marker, sequence, timestamp, first_ssrc, payload = packets[0]
        assert (sequence, timestamp, first_ssrc) == (int(info["seq"]), int(info["rtptime"]), ssrc)
        assert starts_keyframe(payload)
        for (m0, s0, t0, _, _), (m1, s1, t1, x1, _) in zip(packets, packets[1:]):
            assert s1 == (s0 + 1) & 0xFFFF and x1 == ssrc
            assert t1 == t0 or (m0 == 1 and (t1 - t0) % (1 << 32) in range(TICKS, 20 * TICKS)), (t0, t1, m0)
        assert gw.sessions("cam") == 1
        assert client.request("TEARDOWN", gw.url("cam") + "/", {"Session": session}, ALICE).status == 200
        assert gw.sessions("cam") == 0


def test_udp_rtp_comes_from_the_announced_server_ports(gw):
    rtp, rtcp = udp_pair()
    with rtp, rtcp, RawClient(gw.port) as client:
        port = rtp.getsockname()[1]
        session, setup, play = client.play(gw.url("cam"), f"RTP/AVP;unicast;client_port={port}-{port + 1}")
        server_ports = tuple(map(int, re.search(r"server_port=(\d+)-(\d+)", setup.headers["transport"]).groups()))
        assert server_ports[0] % 2 == 0 and server_ports[1] == server_ports[0] + 1
        rtp.settimeout(10)
        sequences = []
        while len(sequences) < 30:
            packet, source = rtp.recvfrom(2048)
            assert source == ("127.0.0.1", server_ports[0])
            sequences.append(rtp_fields(packet)[1])
        assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(30)]
        rtcp.settimeout(10)
        report, source = rtcp.recvfrom(2048)  # a sender report (200) with an SDES (202) from the RTCP port
        assert source == ("127.0.0.1", server_ports[1]) and (report[1], report[29]) == (200, 202)
        assert client.request("TEARDOWN", gw.url("cam") + "/", {"Session": session}, ALICE).status == 200


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_client_that_vanishes_mid_stream_is_cleaned_up(gw, transport, server_errors):
    rtp, rtcp = udp_pair()
    with rtp, rtcp:
        client = RawClient(gw.port)
        port = rtp.getsockname()[1]
        spec = f"RTP/AVP;unicast;client_port={port}-{port + 1}"
        if transport == "tcp":
            spec = "RTP/AVP/TCP;unicast;interleaved=0-1"
        client.play(gw.url("cam"), spec)
        if transport == "tcp":
            for _ in range(20):
                client.read_frame()
        else:
            rtp.settimeout(10)
            for _ in range(20):
                rtp.recv(2048)
        assert gw.sessions("cam") == 1 and gw.renditions["cam"].viewers == 1
        client.close(reset=True)  # no TEARDOWN, the connection just goes
        wait_until(lambda: gw.sessions("cam") == 0, message="the vanished client's session to end")
        wait_until(lambda: gw.renditions["cam"].viewers == 0, message="the rendition to lose its viewer")
        if transport == "udp":  # and nothing is sent to its ports any more
            rtp.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                while True:
                    rtp.recv(2048)
            with pytest.raises(TimeoutError):
                rtp.recv(2048)


def test_slow_tcp_client_skips_to_a_keyframe_and_holds_back_nobody(gw, server_errors):
    """A client that stops reading falls behind on its own; another on the same camera keeps decoding."""
    url = gw.url("noise")
    skipped = gw.server.frames_skipped
    slow = RawClient(gw.port, receive_buffer=4096)
    try:
        slow.play(url, "RTP/AVP/TCP;unicast;interleaved=0-1", credentials=BOB)
        decoded, stop = [], threading.Event()

        def watch() -> None:
            options = ffmpeg_options("tcp")
            with av.open(gw.url("noise", credentials=BOB), options=options, timeout=(20, 10)) as container:
                for frame in container.decode(video=0):
                    decoded.append(read_code(frame.to_ndarray(format="bgr24")))
                    if stop.is_set():
                        return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        wait_until(lambda: gw.server.frames_skipped > skipped, 40, "the stalled client to skip frames")
        mark = len(decoded)
        wait_until(lambda: len(decoded) >= mark + 2 * FPS or not watcher.is_alive(), 30, "the other client to go on")
        stop.set()
        watcher.join(20)
        assert len(decoded) >= mark + 2 * FPS, "the other client stopped while one client stalled"
        codes = [code for code in decoded if code is not None]
        assert len(codes) >= 0.9 * len(decoded) and codes == sorted(set(codes))

        # The stalled client's stream is intact RTP that jumps forward and resumes at a keyframe.
        slow.sock.settimeout(10)
        previous, resumed = None, False
        deadline = time.monotonic() + 30
        while not resumed and time.monotonic() < deadline:
            channel, data = slow.read_frame()
            if channel != 0:
                continue
            packet = rtp_fields(data)
            if previous is not None:
                assert packet[1] == (previous[1] + 1) & 0xFFFF, "sequence numbers must stay contiguous"
                gap = (packet[2] - previous[2]) % (1 << 32)
                resumed = gap >= FPS // 2 * TICKS and starts_keyframe(packet[4])
            previous = packet
        assert resumed, "no jump to a keyframe in the stalled client's stream"
    finally:
        slow.close()
    wait_until(lambda: gw.sessions("noise") == 0, message="the noise sessions to end")


# -- authentication and authorization ----------------------------------------------------------------------


def test_authentication_and_authorization(gw):
    gw.failures.clear()
    with RawClient(gw.port) as client:
        challenge = client.request("DESCRIBE", gw.url("cam"))
        assert challenge.status == 401
        header = challenge.headers["www-authenticate"]
        assert header.startswith("Digest ") and f'realm="{REALM}"' in header and 'qop="auth"' in header
        assert "stale" not in header
        client.challenge = header
        for credentials, camera, status in [
            (ALICE, "cam", 200), (BOB, "noise", 200),
            ((ALICE[0], "nope"), "cam", 401), (("mallory", "x"), "cam", 401),
            (None, "nosuch", 401),  # authentication before existence
            (ALICE, "nosuch", 404), (BOB, "cam", 403), (BOB, "nosuch", 403), (ALICE, "empty", 503),
        ]:
            client.challenge = header
            uri = gw.url(camera)
            response = client.request("DESCRIBE", uri, credentials=credentials)
            assert response.status == status, (credentials, camera, response)
            if status == 503:
                assert response.headers["retry-after"] == "1"
        assert client.request("DESCRIBE", gw.url("cam"), credentials=ALICE, qop=False).status == 200  # GStreamer's form
    assert gw.failures == [("127.0.0.1", "alice", "wrong password"), ("127.0.0.1", "mallory", "unknown user")]


def test_credentials_bound_to_their_uri_and_nonce(gw):
    gw.failures.clear()
    with RawClient(gw.port) as client:
        client.challenge = client.request("DESCRIBE", gw.url("cam")).headers["www-authenticate"]
        stolen = digest(ALICE, "DESCRIBE", gw.url("cam"), client.challenge)
        for uri, authorization, why in [
            (gw.url("noise"), stolen, "credentials for another URI"),
            (gw.url("cam"), stolen.replace('response="', 'response="0'), "malformed credentials"),
            (gw.url("cam"), stolen.replace(f'realm="{REALM}"', 'realm="elsewhere"'), "wrong realm"),
            (gw.url("cam"), "Basic " + base64.b64encode(b"alice:wonder land").decode(), "not digest credentials"),
        ]:
            client.cseq += 1
            client.send(f"DESCRIBE {uri} RTSP/1.0\r\nCSeq: {client.cseq}\r\n"
                        f"Authorization: {authorization}\r\n\r\n".encode())
            assert client.read_response().status == 401
            assert gw.failures[-1] == ("127.0.0.1", "alice" if why != "not digest credentials" else None, why)
        # A nonce this server never issued, with the right password: a fresh challenge, not a failed login.
        failures = len(gw.failures)
        client.challenge = re.sub(r'nonce="[^"]*"', f'nonce="{secrets.token_hex(22)}"', client.challenge)
        client.cseq += 1
        client.send(f"DESCRIBE {gw.url('cam')} RTSP/1.0\r\nCSeq: {client.cseq}\r\n"
                    f"Authorization: {digest(ALICE, 'DESCRIBE', gw.url('cam'), client.challenge)}\r\n\r\n".encode())
        response = client.read_response()
        assert response.status == 401 and "stale=true" in response.headers["www-authenticate"]
        assert len(gw.failures) == failures


def test_nonces_expire():
    now = [1000.0]
    checker = _Digest(REALM, clock=lambda: now[0])
    users = {"alice": RtspUser("alice", ha1(*ALICE), lambda camera: True)}.get
    uri = "rtsp://127.0.0.1:554/cam"

    def request(peer_nonce_from: str) -> Request:
        challenge = checker.challenge(peer_nonce_from)
        return Request("DESCRIBE", uri, {"authorization": digest(ALICE, "DESCRIBE", uri, challenge)}, "1")

    fresh = request("10.0.0.1")
    assert checker.check(fresh, "10.0.0.1", users).name == "alice"
    with pytest.raises(_AuthFailure) as other_address:
        checker.check(fresh, "10.0.0.2", users)
    assert other_address.value.stale and other_address.value.why is None
    now[0] += 299
    assert checker.check(fresh, "10.0.0.1", users).name == "alice"
    now[0] += 2
    with pytest.raises(_AuthFailure) as expired:
        checker.check(fresh, "10.0.0.1", users)
    assert expired.value.stale and expired.value.why is None


def test_throttled_address_is_answered_503_before_its_credentials_are_read(gw):
    gw.failures.clear()
    with RawClient(gw.port) as client:
        client.challenge = client.request("DESCRIBE", gw.url("cam")).headers["www-authenticate"]
        gw.throttled.add("127.0.0.1")
        try:
            refused = client.request("DESCRIBE", gw.url("cam"), credentials=(ALICE[0], "guess"))
            assert refused.status == 503 and int(refused.headers["retry-after"]) > 0
            assert client.request("OPTIONS", "*").status == 200  # needs no authentication
        finally:
            gw.throttled.discard("127.0.0.1")
        assert client.request("DESCRIBE", gw.url("cam"), credentials=ALICE).status == 200
    assert gw.failures == []


# -- sessions: timeout and cap -------------------------------------------------------------------------------


@contextlib.contextmanager
def extra_server(gw: Gateway, **options):
    server, port = gw.start_server(**options)
    try:
        yield server, port
    finally:
        gw.run(server.close())
        gw.servers.remove(server)


def test_sessions_without_keepalive_expire(gw, server_errors):
    rtp, rtcp = udp_pair()
    with (rtp, rtcp, extra_server(gw, session_timeout=2) as (server, port),
          RawClient(port) as idle, RawClient(port) as kept):
        client_port = rtp.getsockname()[1]
        url = gw.url("cam", port)
        idle_session, setup, _ = idle.play(url, f"RTP/AVP;unicast;client_port={client_port}-{client_port + 1}")
        assert setup.headers["session"] == f"{idle_session};timeout=2"
        kept_setup = kept.request("SETUP", url + "/trackID=0", {"Transport": "RTP/AVP/TCP;unicast"}, ALICE)
        kept_session = kept_setup.headers["session"].split(";")[0]
        assert "interleaved=0-1" in kept_setup.headers["transport"]  # channels chosen by the server
        deadline = time.monotonic() + 20
        while gw.sessions("cam", server) != 1:
            assert time.monotonic() < deadline, "the idle session did not expire"
            assert kept.request("GET_PARAMETER", url + "/", {"Session": kept_session}, ALICE).status == 200
            time.sleep(0.3)
        for _ in range(3):  # the kept session outlives several timeouts' worth of keep-alives
            time.sleep(0.8)
            assert kept.request("GET_PARAMETER", url + "/", {"Session": kept_session}, ALICE).status == 200
        assert idle.is_closed(timeout=5), "the connection of a client that went quiet stays open"
        assert gw.sessions("cam", server) == 1


def test_session_cap(gw):
    with extra_server(gw, max_sessions=1) as (server, port), RawClient(port) as first, RawClient(port) as second:
        url = gw.url("cam", port)
        transport = {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}
        setup = first.request("SETUP", url + "/trackID=0", transport, ALICE)
        assert setup.status == 200
        refused = second.request("SETUP", url + "/trackID=0", transport, ALICE)
        assert refused.status == 503 and int(refused.headers["retry-after"]) > 0
        session = setup.headers["session"].split(";")[0]
        assert first.request("TEARDOWN", url + "/", {"Session": session}, ALICE).status == 200
        assert second.request("SETUP", url + "/trackID=0", transport, ALICE).status == 200


# -- malformed requests ----------------------------------------------------------------------------------------


def answer(port: int, data: bytes) -> tuple[Response, bool]:
    """The server's response to raw bytes, and whether it then closed the connection."""
    with RawClient(port) as client:
        client.send(data)
        response = client.read_response()
        return response, client.is_closed(timeout=0.5)


def test_malformed_requests_get_4xx_and_the_server_carries_on(gw, server_errors):
    url = gw.url("cam")
    cases = [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", 400, True),  # a TLS hello
        (b"hello world\r\n\r\n", 400, True),
        (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX-Pad: " + b"a" * MAX_HEAD + b"\r\n\r\n", 400, True),
        (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n" + b"X: y\r\n" * 100 + b"\r\n", 400, True),
        (b"OPTIONS * RTSP/1.0\r\n\r\n", 400, True),  # no CSeq
        (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n folded\r\n\r\n", 400, True),
        (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nCSeq: 2\r\n\r\n", 400, True),
        (b"OPTIONS * RTSP/1.0\r\nCSeq: \xff\r\n\r\n", 400, True),
        (b"GET / HTTP/1.1\r\nCSeq: 1\r\nHost: x\r\n\r\n", 505, True),
        (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 99999999\r\n\r\n", 413, True),
        (b"DESCRIBE rtsp://h/" + b"a" * 3000 + b" RTSP/1.0\r\nCSeq: 1\r\n\r\n", 414, True),
        (b"FROB * RTSP/1.0\r\nCSeq: 1\r\n\r\n", 501, False),
        (b"RECORD " + url.encode() + b" RTSP/1.0\r\nCSeq: 1\r\n\r\n", 405, False),
        (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nRequire: implicit-play\r\n\r\n", 551, False),
        (b"PLAY " + url.encode() + b" RTSP/1.0\r\nCSeq: 1\r\nSession: nosuch\r\n\r\n", 454, False),
        (b"TEARDOWN " + url.encode() + b" RTSP/1.0\r\nCSeq: 1\r\nSession: a b\r\n\r\n", 454, False),
        (b"DESCRIBE http://h/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n", 400, False),
        (b"DESCRIBE rtsp://h/nosuch RTSP/1.0\r\nCSeq: 1\r\n\r\n", 401, False),  # authentication before existence
    ]
    for data, status, closes in cases:
        response, closed = answer(gw.port, data)
        assert (response.status, closed) == (status, closes), (data[:60], response)
        if b"CSeq: 1\r\n" in data and status != 400:
            assert response.headers["cseq"] == "1"
    with RawClient(gw.port) as client:  # requests that need a valid login to get so far
        client.challenge = client.request("DESCRIBE", url).headers["www-authenticate"]
        assert client.request("DESCRIBE", "http://h/cam", credentials=ALICE).status == 400
        assert client.request("DESCRIBE", "*", credentials=ALICE).status == 400
        assert client.request("DESCRIBE", f"rtsp://127.0.0.1:{gw.port}/", credentials=ALICE).status == 404
        assert client.request("DESCRIBE", url + "/a/b", credentials=ALICE).status == 404
        assert client.request("PLAY", url + "/", credentials=ALICE).status == 454  # no Session header
        for transport in ["RTP/AVP;multicast", "RTP/SAVP;unicast;client_port=4000-4001", "RTP/AVP;unicast",
                          "RTP/AVP;unicast;client_port=99999-100000", "RTP/AVP/TCP;interleaved=9-300",
                          "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record", ""]:
            response = client.request("SETUP", url + "/trackID=0", {"Transport": transport}, ALICE)
            assert response.status == 461, (transport, response)
        setup = client.request("SETUP", url + "/trackID=0", {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}, ALICE)
        session = setup.headers["session"].split(";")[0]
        again = client.request("SETUP", url + "/trackID=0", {"Transport": "RTP/AVP/TCP", "Session": session}, ALICE)
        assert again.status == 455
        assert client.request("PLAY", gw.url("noise") + "/", {"Session": session}, ALICE).status == 454
        assert client.request("PLAY", url + "/", {"Session": session, "Range": "bytes=0-"}, ALICE).status == 457
        keepalive = {"Session": session, "Content-Length": "0"}
        assert client.request("GET_PARAMETER", url + "/", keepalive, ALICE).status == 200
    with RawClient(gw.port) as client:  # someone else's session is not found either
        client.challenge = client.request("DESCRIBE", url).headers["www-authenticate"]
        assert client.request("PLAY", url + "/", {"Session": session}, ALICE).status == 454
    with RawClient(gw.port) as client:  # a request cut off mid-header, then the client goes
        client.send(b"DESCRIBE " + url.encode() + b" RTSP/1.0\r\nCSeq: 1\r\nAccept: appl")
    wait_until(lambda: gw.sessions("cam") == 0, message="sessions of closed connections to end")
    assert answer(gw.port, b"OPTIONS * RTSP/1.0\r\nCSeq: 7\r\n\r\n")[0].status == 200


@pytest.mark.parametrize("head, status, message", [
    (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n", 400, "request header section does not end with CRLF CRLF"),
    (b"OPTIONS  * RTSP/1.0\r\nCSeq: 1\r\n\r\n", 400, "request line is not METHOD URI RTSP/1.0"),
    (b"OPT(IONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n", 400, "method is not a token"),
    (b"OPTIONS \x7f RTSP/1.0\r\nCSeq: 1\r\n\r\n", 400, "request URI is empty or has control characters"),
    (b"OPTIONS * RTSP/1.0\r\nCSeq 1\r\n\r\n", 400, "malformed header line 'CSeq 1'"),
    (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX: a\x01\r\n\r\n", 400, "header X has control characters"),
    (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nSession: a\r\nsession: b\r\n\r\n", 400, "header session repeated"),
    (b"OPTIONS * RTSP/1.0\r\nCSeq: one\r\n\r\n", 400, "CSeq is missing or not a number"),
    (b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n", 505, "RTSP/2.0 is not RTSP/1.0"),
    (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length is not a number"),
    (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 4097\r\n\r\n", 413, "Content-Length over 4096 bytes"),
])
def test_parser_errors_name_the_problem(head, status, message):
    with pytest.raises(RtspError) as error:
        parse_request(head)
    assert (error.value.status, str(error.value)) == (status, message)


def test_parser_accepts_a_well_formed_request():
    request = parse_request(b"SETUP rtsp://h/cam/trackID=0 RTSP/1.0\r\nCSeq: 3\r\n"
                            b"Transport:RTP/AVP/TCP;interleaved=0-1\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert (request.method, request.uri, request.cseq) == ("SETUP", "rtsp://h/cam/trackID=0", "3")
    assert request.headers == {"cseq": "3", "transport": "RTP/AVP/TCP;interleaved=0-1", "x-a": "1, 2"}


# -- fuzzing ----------------------------------------------------------------------------------------------------

METHODS = ["OPTIONS", "DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER",
           "ANNOUNCE", "RECORD", "FROB", "get"]
line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda method, uri, version, headers: f"{method} {uri} {version}\r\n{headers}\r\n".encode(),
              st.sampled_from(METHODS) | line_text, line_text, st.sampled_from(["RTSP/1.0", "RTSP/2.0", "x"]),
              st.lists(st.tuples(st.sampled_from(["CSeq", "Content-Length", "Session", "X"]) | line_text, line_text)
                       .map(lambda h: f"{h[0]}:{h[1]}\r\n"), max_size=6).map("".join)),
))
def test_parser_fuzz(data):
    try:
        request = parse_request(data)
    except RtspError as exc:
        assert 400 <= exc.status < 600 and exc.status != 500, exc
    else:
        assert request.cseq.isdigit() and request.method and request.uri


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_request_handling_fuzz(gw, data, seed, server_errors):
    """Plausible requests, logged in or not, with now and then a nonsensical part: always a clean answer.

    The requests' shape comes from a plain ``random.Random(seed)`` (Hypothesis' own draws cluster at
    their simplest values, which would leave the handlers behind authentication untouched). When a
    SETUP succeeds, a few more requests follow on its session.
    """
    rnd = random.Random(seed)

    def mostly(common: list, rare=line_text):  # one of ``common``; one time in ten anything from ``rare``
        return data.draw(rare) if rnd.random() < 0.1 else rnd.choice(common)

    base = gw.url("cam")
    uris = [base, base + "/", base + "/trackID=0", gw.url("noise"), gw.url("empty"), gw.url("nosuch"), "*",
            f"rtsp://127.0.0.1:{gw.port}", base + "/x/y", f"rtsp://127.0.0.1:{gw.port}/%ff%fe", "http://h/cam"]
    optional = [
        ("Transport", 0.7, ["RTP/AVP/TCP;unicast;interleaved=0-1", "RTP/AVP;unicast;client_port=40000-40001",
                            "RTP/AVP/TCP", "RTP/AVP;multicast", "RTP/AVP/TCP;unicast;interleaved=254-255"]),
        ("Session", 0.15, ["0123456789abcdef", "x;timeout=5", ""]),
        ("Range", 0.4, ["npt=0-", "npt=now-", "clock=19961108T142300Z-", "smpte=0:10:00-"]),
        ("Require", 0.05, ["play.basic"]),
        ("Accept", 0.3, ["application/sdp", "text/html"]),
    ]

    with RawClient(gw.port) as client:
        challenge = client.request("DESCRIBE", base).headers["www-authenticate"]
        session = None
        setup_first = rnd.random() < 0.5  # half the time a session to fuzz the later requests on
        for turn in range(4):
            if turn == 0:
                method = "SETUP" if setup_first else mostly(METHODS[:7], st.sampled_from(METHODS[7:]))
            else:
                method = mostly(["PLAY", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SETUP", "OPTIONS"],
                                st.sampled_from(METHODS))
            uri = mostly(uris, line_text.filter(lambda text: text and " " not in text))
            headers = {"CSeq": str(turn + 1)}
            for name, chance, values in optional:
                if rnd.random() < chance:
                    headers[name] = mostly(values).strip()
            auth = rnd.choice(["valid", "valid", "valid-no-qop", "none", "wrong", "garbage"])
            if turn == 0 and setup_first:
                uri = rnd.choice([base + "/trackID=0", gw.url("noise") + "/trackID=0"])
                headers = {"CSeq": "1", "Transport": rnd.choice(optional[0][2][:3])}
                auth = "valid"
            if session and rnd.random() < 0.9:
                headers["Session"] = session
            if auth == "garbage":
                headers["Authorization"] = data.draw(line_text)
            elif auth != "none":
                credentials = ALICE if auth != "wrong" else (ALICE[0], "wrong")
                headers["Authorization"] = digest(credentials, method, uri, challenge, qop=auth != "valid-no-qop")
            body = b"position\r\n" if rnd.random() < 0.1 else b""
            if body:
                headers["Content-Length"] = str(len(body))
            head = f"{method} {uri} RTSP/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            client.send(head.encode() + body)
            response = client.read_response()
            assert response.status in OK_STATUSES, (head, response)
            if method == "SETUP" and response.status == 200:
                session = response.headers["session"].split(";")[0]
            if session is None or response.status in (400, 413, 414, 505):  # no session, or maybe closed
                break
