"""WHEP egress under test (shared by tests/test_whep.py): renditions fed by a thread and served by
uvicorn, and the viewers that watch them (aiortc clients and headless Chromium).

A feeder thread pushes synthetic frames whose number is written in the pixels (a row of
black/white blocks and its inverse below it) next to a flat colour patch. Viewers decode what
they receive and the tests check the numbers and colours, so a stream that merely "plays" but
shows the wrong pictures fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from starlette.applications import Starlette

from gateway.api import pages
from gateway.egress import Rendition, WhepServer
from browser import Browser, BrowserError
from peers import chromium_missing, require
from live_support import Feeder, ThreadedServer


WIDTH, HEIGHT, FPS = 640, 360, 25


CAMERA = "lobby"


FIRST_CODE, CODE_STEP = 1000, 3  # frame i shows code FIRST_CODE + 3 i: a garbled read is rarely a valid code


BITS, BLOCK = 16, 40  # 16 blocks of 40x40 px across the top, their inverse below


COLOUR_RGB = (200, 90, 30)


COLOUR_RECT = (60, 240, 200, 80)  # x, y, w, h inside the flat patch


TICKS_PER_FRAME = 90_000 // FPS


RECTS = (
    [(i * BLOCK + 10, 10, 20, 20) for i in range(BITS)]
    + [(i * BLOCK + 10, BLOCK + 10, 20, 20) for i in range(BITS)]
    + [COLOUR_RECT]
)


def make_frame(index: int) -> np.ndarray:
    code = FIRST_CODE + CODE_STEP * index
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    for bit in range(BITS):
        on = (code >> (BITS - 1 - bit)) & 1
        image[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255 if on else 0
        image[BLOCK : 2 * BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 0 if on else 255
    ramp = (np.arange(WIDTH, dtype=np.int32) * 2 + index * 8) % 256  # motion, so P-frames carry data
    image[2 * BLOCK : 200] = ramp[None, :, None].astype(np.uint8)
    image[200:, : WIDTH // 2] = COLOUR_RGB[::-1]
    image[200:, WIDTH // 2 :] = 128
    return image


def decode(means: list[list[float]]) -> tuple[int | None, tuple[float, float, float]]:
    """(frame index or None, mean RGB of the colour patch) from the RGB means over ``RECTS``."""
    luma = [0.299 * r + 0.587 * g + 0.114 * b for r, g, b in means[: 2 * BITS]]
    colour = tuple(means[2 * BITS])
    code = 0
    for top, bottom in zip(luma[:BITS], luma[BITS:]):
        if abs(top - bottom) < 100:  # a block and its inverse must disagree clearly
            return None, colour
        code = code << 1 | (top > bottom)
    if code < FIRST_CODE or (code - FIRST_CODE) % CODE_STEP:
        return None, colour
    return (code - FIRST_CODE) // CODE_STEP, colour


def sample(image_bgr: np.ndarray) -> list[list[float]]:
    return [image_bgr[y : y + h, x : x + w].reshape(-1, 3).mean(axis=0)[::-1].tolist() for x, y, w, h in RECTS]


def assert_colour(colour: tuple[float, ...], tolerance: float = 16) -> None:
    assert all(abs(got - want) <= tolerance for got, want in zip(colour, COLOUR_RGB)), (colour, COLOUR_RGB)


async def allow_everyone(request, camera):  # access control is tested with the gateway (test_access.py)
    return None


class Gateway:
    def __init__(self) -> None:
        self.renditions = {
            (CAMERA, codec): Rendition(CAMERA, codec, WIDTH, HEIGHT, FPS, bitrate=800_000) for codec in ("h264", "vp8")
        }
        self.whep = WhepServer(lambda camera, codec: self.renditions.get((camera, codec)), allow_everyone)

        @contextlib.asynccontextmanager
        async def lifespan(app):
            yield
            await self.whep.close()

        self.app = Starlette(routes=[*pages.routes(), *self.whep.routes], lifespan=lifespan)
        self.server = ThreadedServer(self.app)
        self.url = self.server.url
        self.feeder = Feeder(self._push, FPS)
        self.feeder.start()

    def _push(self, number: int) -> None:
        """``make_frame(number)`` to every rendition."""
        image = make_frame(number)
        for rendition in self.renditions.values():
            rendition.push(image, number / FPS)

    def rendition(self, codec: str) -> Rendition:
        return self.renditions[(CAMERA, codec)]

    def close(self) -> None:
        self.feeder.stop()
        self.server.close()
        for rendition in self.renditions.values():
            rendition.close()
        if self.feeder.error is not None:
            raise self.feeder.error


@pytest.fixture(scope="module")
def gateway():
    gateway = Gateway()
    try:
        yield gateway
    finally:
        gateway.close()
    assert gateway.whep.viewers(CAMERA) == 0


@pytest.fixture(scope="module")
def browser():
    require(chromium_missing())
    with Browser() as browser:
        yield browser


def wait_until(predicate, timeout: float = 10, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        time.sleep(0.05)


async def async_wait_until(predicate, timeout: float = 10, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        await asyncio.sleep(0.05)


async def viewer_offer() -> str:
    """A viewer's SDP offer (aiortc, receive-only video), for tests that post offers themselves."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


class AiortcViewer:
    """A WHEP client built on aiortc that decodes the frame numbers it receives."""

    def __init__(self, pc: RTCPeerConnection, location: str, answer: str) -> None:
        self.pc = pc
        self.location = location
        self.answer = answer
        self.frames: list[tuple[int | None, int, tuple]] = []  # (index, RTP timestamp, colour)
        self.ended = False
        self._task: asyncio.Task | None = None

    @classmethod
    async def connect(cls, http: httpx.AsyncClient, url: str, codecs: tuple[str, ...] = ("h264", "vp8")) -> AiortcViewer:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = pc.addTransceiver("video", direction="recvonly")
        mimes = {"h264": "video/h264", "vp8": "video/vp8"}
        wanted = [mimes[c] for c in codecs] + ["video/rtx"]
        transceiver.setCodecPreferences(
            sorted(
                (c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in wanted),
                key=lambda c: wanted.index(c.mimeType.lower()),
            )
        )
        await pc.setLocalDescription(await pc.createOffer())
        response = await http.post(url, content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
        if response.status_code != 201:
            await pc.close()
            raise AssertionError(f"{response.status_code}: {response.text}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        viewer = cls(pc, response.headers["location"], response.text)
        viewer._task = asyncio.ensure_future(viewer._receive(transceiver.receiver.track))
        return viewer

    @property
    def codec(self) -> str:
        """The codec the answer chose (first one in its video section)."""
        for line in self.answer.splitlines():
            if line.startswith("a=rtpmap:"):
                return line.split()[1].split("/")[0].lower()
        raise AssertionError("answer without rtpmap")

    async def _receive(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                index, colour = decode(sample(frame.to_ndarray(format="bgr24")))
                self.frames.append((index, frame.pts, colour))
        except MediaStreamError:
            self.ended = True

    async def close(self) -> None:
        await self.pc.close()
        if self._task is not None:
            # a track that never received anything is not ended by pc.close()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def check_frames(frames: list[tuple[int | None, int | None, tuple]], pushed: int, minimum: int) -> list[int]:
    """Assert the received frames are ones that were pushed, in order; return their indices."""
    indices = [index for index, _, _ in frames if index is not None]
    assert len(indices) >= minimum, f"only {len(indices)} readable frames of {len(frames)}"
    assert len(indices) >= 0.9 * len(frames), f"{len(frames) - len(indices)} unreadable frames of {len(frames)}"
    assert all(0 <= i < pushed for i in indices), (indices, pushed)
    assert indices == sorted(indices) and len(set(indices)) == len(indices), indices
    for _, _, colour in frames:
        assert_colour(colour)
    return indices


SAMPLER = """
(() => {
  const video = document.getElementById("video");
  const canvas = document.createElement("canvas");
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const rects = %s;
  window.samples = [];
  window.callbacks = 0;
  const step = (now, metadata) => {
    window.callbacks++;
    if (canvas.width !== video.videoWidth || canvas.height !== video.videoHeight) {
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
    }
    context.drawImage(video, 0, 0);
    const means = rects.map(([x, y, w, h]) => {
      const data = context.getImageData(x, y, w, h).data;
      const sum = [0, 0, 0];
      for (let i = 0; i < data.length; i += 4) { sum[0] += data[i]; sum[1] += data[i + 1]; sum[2] += data[i + 2]; }
      return sum.map((s) => s / (data.length / 4));
    });
    if (window.samples.length < 1000) {
      window.samples.push({ width: video.videoWidth, height: video.videoHeight, rtp: metadata.rtpTimestamp, means });
    }
    video.requestVideoFrameCallback(step);
  };
  video.requestVideoFrameCallback(step);
  return true;
})()
""" % [list(r) for r in RECTS]


INBOUND_STATS = """
(async () => {
  const stats = await whepSession.pc.getStats();
  let inbound = null;
  stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") inbound = r; });
  return { framesDecoded: inbound.framesDecoded, mimeType: stats.get(inbound.codecId).mimeType };
})()
"""


def open_viewer_page(browser: Browser, gateway: Gateway, query: str = ""):
    page = browser.new_page(f"{gateway.url}/view/{CAMERA}{query}")
    try:
        page.wait_for("window.whepSession && whepSession.pc.connectionState === 'connected'", timeout=20)
        page.wait_for("document.getElementById('video').readyState >= 2", timeout=10)
        page.evaluate(SAMPLER)
    except BrowserError as exc:
        status = page.evaluate("document.getElementById('status').textContent")
        page.close()
        raise AssertionError(f"{exc}; page status {status!r}; console {page.console()}") from None
    return page


def close_viewer_page(page) -> None:
    try:
        assert page.evaluate("fetch(whepSession.location, { method: 'DELETE' }).then((r) => r.status)") == 200
        page.evaluate("whepSession.pc.close(), true")
    finally:
        page.close()


def chromium_frames(page) -> list[tuple[int | None, int | None, tuple]]:
    """(index, RTP timestamp, colour) of each frame the page presented since the sampler started."""
    samples = page.evaluate("window.samples")
    assert {(s["width"], s["height"]) for s in samples} == {(WIDTH, HEIGHT)}
    return [(index, s["rtp"], colour) for s in samples for index, colour in [decode(s["means"])]]
