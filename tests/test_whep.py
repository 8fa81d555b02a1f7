"""WHEP egress against real peers: headless Chromium and aiortc clients over the host's network.

A feeder thread pushes synthetic frames whose number is written in the pixels (a row of
black/white blocks and its inverse below it) next to a flat colour patch. Viewers decode what
they receive and the tests check the numbers and colours, so a stream that merely "plays" but
shows the wrong pictures fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from fractions import Fraction

import av
import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from starlette.applications import Starlette

from gateway.whep import Rendition, WhepServer
from browser import CHROMIUM, Browser, BrowserError
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


def test_pattern_round_trips():
    for index in (0, 1, 7, 1234):
        assert decode(sample(make_frame(index))) == (index, tuple(float(c) for c in COLOUR_RGB))
    broken = make_frame(5)
    broken[BLOCK : 2 * BLOCK] = broken[:BLOCK]  # inverse row equal to the code row: unreadable
    assert decode(sample(broken))[0] is None


def assert_colour(colour: tuple[float, ...], tolerance: float = 16) -> None:
    assert all(abs(got - want) <= tolerance for got, want in zip(colour, COLOUR_RGB)), (colour, COLOUR_RGB)


# -- the gateway under test: renditions fed by a thread, served by uvicorn ---------------------


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

        self.app = Starlette(routes=self.whep.routes, lifespan=lifespan)
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
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)")
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


# -- clients ------------------------------------------------------------------------------------


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


# -- Chromium -----------------------------------------------------------------------------------

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


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_chromium_plays_the_pushed_frames(gateway, browser, codec):
    page = open_viewer_page(browser, gateway, f"?codec={codec}")
    try:
        callbacks = page.evaluate("window.callbacks")
        time.sleep(2.5)
        assert page.evaluate("window.callbacks") >= callbacks + 30  # ~25 fps, allowing for a loaded machine
        stats = page.evaluate(INBOUND_STATS)
        assert stats["mimeType"].lower() == f"video/{codec}"
        frames = chromium_frames(page)
        indices = check_frames(frames, gateway.feeder.pushed, minimum=40)
        assert indices[-1] - indices[0] >= 40
        # the RTP clock runs at 90 kHz in step with media time (Chromium reports RTP timestamps)
        pairs = [(i, rtp) for i, rtp, _ in frames if i is not None and rtp is not None]
        (i0, t0), (i1, t1) = pairs[0], pairs[-1]
        assert (t1 - t0) % 2**32 == (i1 - i0) * TICKS_PER_FRAME
    finally:
        close_viewer_page(page)
    wait_until(lambda: gateway.whep.viewers(CAMERA) == 0, message="the session to end")
    assert gateway.rendition(codec).viewers == 0


@pytest.mark.asyncio
async def test_one_encode_fans_out_to_every_viewer(gateway, browser):
    rendition = gateway.rendition("h264")
    async with httpx.AsyncClient() as http:
        page = await asyncio.to_thread(open_viewer_page, browser, gateway)  # H.264: preferred
        viewers = []
        try:
            viewers = [await AiortcViewer.connect(http, f"{gateway.url}/whep/{CAMERA}") for _ in range(2)]
            assert [v.codec for v in viewers] == ["h264", "h264"]
            await async_wait_until(lambda: rendition.viewers == 3 and all(len(v.frames) > 5 for v in viewers),
                                   timeout=15, message="three receiving viewers")
            assert gateway.whep.viewers(CAMERA) == 3

            before = (gateway.feeder.pushed, rendition.frames_encoded, rendition.frames_dropped, rendition.packets_sent)
            received_before = [len(v.frames) for v in viewers]
            await asyncio.sleep(3)
            after = (gateway.feeder.pushed, rendition.frames_encoded, rendition.frames_dropped, rendition.packets_sent)
            pushed, encoded, dropped, sent = (a - b for a, b in zip(after, before))
            # Encoded once: every pushed frame is encoded (or dropped) once, not once per viewer.
            assert pushed >= 50
            assert abs(encoded + dropped - pushed) <= 2, (pushed, encoded, dropped)
            assert encoded >= 0.9 * pushed
            # ...and its packets reach all three viewers.
            assert sent >= 2.5 * encoded, (sent, encoded)
            for viewer, count in zip(viewers, received_before):
                assert len(viewer.frames) - count >= 0.8 * pushed
                indices = check_frames(viewer.frames, gateway.feeder.pushed, minimum=50)
                # RTP timestamps follow media time on the 90 kHz clock
                (i0, t0), (i1, t1) = [(i, pts) for i, pts, _ in viewer.frames if i is not None][:: len(indices) - 1]
                assert (t1 - t0) % 2**32 == (i1 - i0) * TICKS_PER_FRAME
                assert indices[-1] - indices[0] >= 50
            check_frames(await asyncio.to_thread(chromium_frames, page), gateway.feeder.pushed, minimum=50)

            # DELETE ends one session; the others keep receiving.
            response = await http.delete(gateway.url + viewers[0].location)
            assert response.status_code == 200
            assert rendition.viewers == 2 and gateway.whep.viewers(CAMERA) == 2
            assert (await http.delete(gateway.url + viewers[0].location)).status_code == 404
            await async_wait_until(lambda: viewers[0].pc.connectionState == "closed" or viewers[0].ended,
                                   timeout=10, message="the deleted viewer to be cut off")
            count = len(viewers[1].frames)
            await asyncio.sleep(1)
            assert len(viewers[1].frames) >= count + 15
        finally:
            await asyncio.to_thread(close_viewer_page, page)
            for viewer in viewers:
                await viewer.close()
                with contextlib.suppress(httpx.HTTPError):
                    await http.delete(gateway.url + viewer.location)
    await async_wait_until(lambda: gateway.whep.viewers(CAMERA) == 0, message="all sessions to end")
    assert rendition.viewers == 0


# -- negotiation and bad input ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_codec_negotiation(gateway):
    url = f"{gateway.url}/whep/{CAMERA}"
    async with httpx.AsyncClient() as http:
        cases = [(url, ("vp8", "h264"), "h264"), (url + "?codec=vp8", ("h264", "vp8"), "vp8"), (url, ("vp8",), "vp8")]
        for target, offered, chosen in cases:
            viewer = await AiortcViewer.connect(http, target, offered)
            try:
                assert viewer.codec == chosen, (target, offered)
                assert (await http.delete(gateway.url + viewer.location)).status_code == 200
            finally:
                await viewer.close()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            transceiver = pc.addTransceiver("video", direction="recvonly")
            transceiver.setCodecPreferences(
                [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == "video/vp8"]
            )
            await pc.setLocalDescription(await pc.createOffer())
            response = await http.post(url + "?codec=h264", content=pc.localDescription.sdp,
                                       headers={"Content-Type": "application/sdp"})
        finally:
            await pc.close()
        assert response.status_code == 400
        assert response.text == "the offer cannot receive H.264 (constrained baseline, packetization-mode 1)\n"
    assert gateway.whep.viewers(CAMERA) == 0


async def _offer_sdp() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


@pytest.mark.asyncio
async def test_bad_requests_get_one_line_4xx_and_the_server_keeps_serving(gateway):
    offer = await _offer_sdp()
    url = f"{gateway.url}/whep/{CAMERA}"
    sdp = {"Content-Type": "application/sdp"}
    async with httpx.AsyncClient() as http:

        async def expect(status: int, text: str, method: str, target: str, **kwargs) -> None:
            response = await http.request(method, target, **kwargs)
            assert (response.status_code, response.text) == (status, text + "\n")

        await expect(404, "no such camera: nowhere", "POST", f"{gateway.url}/whep/nowhere", content=offer, headers=sdp)
        await expect(415, "Content-Type must be application/sdp", "POST", url, content=offer,
                     headers={"Content-Type": "text/plain"})
        await expect(415, "Content-Type must be application/sdp", "POST", url, content=offer)
        await expect(400, "codec must be one of h264, vp8", "POST", url + "?codec=av1", content=offer, headers=sdp)
        await expect(400, "malformed SDP offer: it does not start with v=0", "POST", url, content="hello", headers=sdp)
        await expect(400, "malformed SDP offer: not UTF-8 text", "POST", url, content=b"v=0\r\n\xff\xfe", headers=sdp)
        await expect(400, "malformed SDP offer: no video media section", "POST", url,
                     content=offer.replace("m=video", "m=audio"), headers=sdp)
        await expect(400, "malformed SDP offer: the video section is sendonly, a viewer must receive", "POST", url,
                     content=offer.replace("a=recvonly", "a=sendonly"), headers=sdp)
        await expect(400, "malformed SDP offer: ICE username fragment or password is missing", "POST", url,
                     content="\r\n".join(l for l in offer.split("\r\n") if not l.startswith("a=ice-pwd")), headers=sdp)
        await expect(413, "SDP offer larger than 65536 bytes", "POST", url, content=offer + "a=x\r\n" * 20_000,
                     headers=sdp)
        await expect(404, "no such session", "DELETE", f"{url}/not-a-session")
        assert (await http.get(url)).status_code == 405

        # Mutated offers: a 201 or a one-line 4xx, never a server error.
        rng = random.Random(7)
        lines = offer.split("\r\n")
        statuses = set()
        for _ in range(60):
            mutated = list(lines)
            for _ in range(rng.randint(1, 3)):
                j = rng.randrange(len(mutated))
                if rng.random() < 0.5:
                    del mutated[j]
                else:
                    cut = rng.randrange(len(mutated[j]) + 1)
                    mutated[j] = mutated[j][:cut] + rng.choice(["", ":", " ", "=", "x", "\x00", "-1"])
            response = await http.post(url, content="\r\n".join(mutated), headers=sdp)
            statuses.add(response.status_code)
            if response.status_code == 201:
                assert (await http.delete(gateway.url + response.headers["location"])).status_code == 200
            else:
                assert 400 <= response.status_code < 500 and response.text.count("\n") == 1, response.text
        assert any(400 <= s < 500 for s in statuses)

        # Still serving: the page and a valid offer.
        page = await http.get(f"{gateway.url}/view/{CAMERA}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'nonce-" in page.headers["content-security-policy"]
        assert "<script nonce=" in page.text and "://" not in page.text.split("<script")[1]  # no external scripts
        response = await http.post(url, content=offer, headers=sdp)
        assert response.status_code == 201 and response.headers["content-type"] == "application/sdp"
        assert response.headers["location"].startswith(f"/whep/{CAMERA}/")
        assert gateway.whep.viewers(CAMERA) == 1
        assert (await http.delete(gateway.url + response.headers["location"])).status_code == 200
    assert gateway.whep.viewers(CAMERA) == 0


# -- the rendition on its own -------------------------------------------------------------------


def test_rendition_rejects_bad_arguments():
    with pytest.raises(ValueError, match="codec: 'av1' is not one of h264, vp8"):
        Rendition(CAMERA, "av1", WIDTH, HEIGHT, FPS)
    with pytest.raises(ValueError, match="width: 641 is not a positive even number of pixels"):
        Rendition(CAMERA, "h264", 641, HEIGHT, FPS)
    with pytest.raises(ValueError, match="fps: 0 is not a positive number"):
        Rendition(CAMERA, "h264", WIDTH, HEIGHT, 0)
    rendition = Rendition(CAMERA, "h264", WIDTH, HEIGHT, FPS)
    try:
        with pytest.raises(ValueError, match=r"image: expected a BGR uint8 array of shape \(h, w, 3\), got float64"):
            rendition.push(np.zeros((HEIGHT, WIDTH, 3)), 0.0)
        with pytest.raises(ValueError, match="time: nan is not a finite number of seconds"):
            rendition.push(make_frame(0), float("nan"))
    finally:
        rendition.close()


@pytest.mark.asyncio
async def test_rendition_encodes_only_for_viewers_and_a_slow_viewer_resumes_at_a_keyframe():
    rendition = Rendition(CAMERA, "h264", 320, 180, FPS)  # frames are scaled to the rendition's size
    pushed = 0

    async def push_one() -> None:
        nonlocal pushed
        encoded = rendition.frames_encoded
        await asyncio.to_thread(rendition.push, make_frame(pushed), pushed / FPS)
        pushed += 1
        await async_wait_until(lambda: rendition.frames_encoded > encoded, message="the frame to be encoded")
        await asyncio.sleep(0.03)  # let the packet reach the viewer on this loop

    try:
        for _ in range(5):
            await asyncio.to_thread(rendition.push, make_frame(pushed), pushed / FPS)
            pushed += 1
        await asyncio.sleep(0.2)
        assert rendition.frames_encoded == 0  # nobody watches: nothing is encoded

        track = rendition.subscribe()
        first = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.05)
        assert rendition.viewers == 1
        await push_one()
        packet = await asyncio.wait_for(first, 5)
        assert isinstance(packet, av.Packet) and packet.is_keyframe  # forced for the newcomer
        assert (packet.pts, packet.time_base) == (5 * TICKS_PER_FRAME, Fraction(1, 90_000))

        # The viewer stops reading for 20 frames; the encoder does not wait for it. At 15 queued
        # packets its backlog is dropped, and it resumes at the keyframe requested for it.
        for _ in range(20):
            await push_one()
        assert rendition.frames_encoded == 21 and rendition.frames_dropped == 0
        assert rendition.packets_dropped == 16
        packet = await asyncio.wait_for(track.recv(), 5)
        assert packet.is_keyframe and packet.pts == 22 * TICKS_PER_FRAME
        track.stop()
        assert rendition.viewers == 0
        with pytest.raises(MediaStreamError):
            await track.recv()
    finally:
        rendition.close()
    assert rendition.keyframes == 2


@pytest.mark.asyncio
async def test_a_configured_camera_without_frames_yet_is_503_retry_not_404():
    server = WhepServer(lambda camera, codec: None, allow_everyone, camera_known=lambda camera: camera == "lobby")
    app = Starlette(routes=server.routes)
    offer = await _offer_sdp()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        waiting = await http.post("/whep/lobby", content=offer, headers={"Content-Type": "application/sdp"})
        assert (waiting.status_code, waiting.headers["Retry-After"]) == (503, "1")
        assert waiting.text == "camera lobby has no frame yet; retry\n"
        assert (await http.get("/view/lobby")).status_code == 200  # the page retries by itself
        unknown = await http.post("/whep/nowhere", content=offer, headers={"Content-Type": "application/sdp"})
        assert unknown.status_code == 404
        # the page is the same for every name: it reveals nothing, the WHEP request answers
        assert (await http.get("/view/nowhere")).status_code == 200
    await server.close()
