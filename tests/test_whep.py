"""WHEP egress against real peers: headless Chromium and aiortc clients over the host's network
(harness: tests/whep_harness.py), negotiation and bad input, and the rendition on its own."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import urllib.parse
from fractions import Fraction

import av
import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from starlette.applications import Starlette

from gateway.api import pages
from gateway.egress import Rendition, WhepServer
from whep_harness import (  # noqa: F401  (browser, gateway: fixtures)
    AiortcViewer, BLOCK, CAMERA, COLOUR_RGB, FPS, HEIGHT, INBOUND_STATS, TICKS_PER_FRAME, WIDTH,
    allow_everyone, async_wait_until, browser, check_frames, chromium_frames, close_viewer_page, decode,
    gateway, make_frame, open_viewer_page, sample, viewer_offer, wait_until,
)

pytestmark = pytest.mark.realtime


def test_pattern_round_trips():
    for index in (0, 1, 7, 1234):
        assert decode(sample(make_frame(index))) == (index, tuple(float(c) for c in COLOUR_RGB))
    broken = make_frame(5)
    broken[BLOCK : 2 * BLOCK] = broken[:BLOCK]  # inverse row equal to the code row: unreadable
    assert decode(sample(broken))[0] is None


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


@pytest.mark.asyncio
async def test_a_viewers_keyframe_request_reaches_the_shared_encoder(gateway, monkeypatch):
    """A viewer's RTCP PLI, sent over the real connection, must reach the rendition's encoder: aiortc
    would otherwise act on it in an encoder of its own that the gateway never uses (gateway/webrtc/peers.py)."""
    rendition = gateway.rendition("vp8")
    requests: list[float] = []
    original = rendition.request_keyframe

    def counted() -> None:
        requests.append(time.monotonic())
        original()

    monkeypatch.setattr(rendition, "request_keyframe", counted)
    async with httpx.AsyncClient() as http:
        viewer = await AiortcViewer.connect(http, f"{gateway.url}/whep/{CAMERA}?codec=vp8", ("vp8",))
        try:
            await async_wait_until(lambda: len(viewer.frames) > 10, timeout=15, message="frames")
            receiver = viewer.pc.getReceivers()[0]
            (source,) = receiver.getSynchronizationSources()
            requests.clear()
            await receiver._send_rtcp_pli(source.source)  # what a viewer's decoder sends when it needs a keyframe
            await async_wait_until(lambda: requests, timeout=5, message="the PLI to reach the shared encoder")
        finally:
            await viewer.close()
            with contextlib.suppress(httpx.HTTPError):
                await http.delete(gateway.url + viewer.location)


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


@pytest.mark.asyncio
async def test_bad_requests_get_one_line_4xx_and_the_server_keeps_serving(gateway):
    offer = await viewer_offer()
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
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy  # only the gateway's own scripts
        scripts = re.findall(r'<script src="([^"]+)"></script>', page.text)
        assert scripts and all("://" not in src for src in scripts) and "<script>" not in page.text
        for src in scripts:  # served beside the page
            script = await http.get(urllib.parse.urljoin(f"{gateway.url}/view/{CAMERA}", src))
            assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        response = await http.post(url, content=offer, headers=sdp)
        assert response.status_code == 201 and response.headers["content-type"] == "application/sdp"
        assert response.headers["location"].startswith(f"/whep/{CAMERA}/")
        assert gateway.whep.viewers(CAMERA) == 1
        assert (await http.delete(gateway.url + response.headers["location"])).status_code == 200
    assert gateway.whep.viewers(CAMERA) == 0


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
        await asyncio.sleep(1.05)  # keyframe requests are rate-limited (one a second): the newcomer's was one

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
    app = Starlette(routes=[*pages.routes(), *server.routes])
    offer = await viewer_offer()
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
