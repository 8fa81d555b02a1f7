"""WHIP ingest against real aiortc publishers over the host's network (harness: tests/whip_harness.py):
sessions, publishers that never connect or fall silent, a stalled consumer, access checks first,
bad and mutated offers."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest import WhipSource
from gateway.ingest import whip_server as whip_module
from whip_harness import (  # noqa: F401  (gateway: fixtures)
    AUTH, BLOCK, CONNECT_TIMEOUT, Publisher, READ_TIMEOUT, SDP, STAMP_ROWS, check_seen, clip, gateway,
    make_frame, publishing, read_number, section, wait_until,
)

pytestmark = pytest.mark.realtime


def test_stamp_round_trips():
    height, width = clip()[0].shape[:2]
    assert (width, height) == (768, 576)
    for number in (0, 1, 29, 30, 12345):
        image = make_frame(number)
        assert read_number(image) == number
        assert np.array_equal(image[STAMP_ROWS:], clip()[number % 30][STAMP_ROWS:])
    broken = make_frame(5)
    broken[BLOCK:STAMP_ROWS] = broken[:BLOCK]
    assert read_number(broken) is None


async def quiet(collector, still: float = 0.5, timeout: float = 10.0) -> None:
    """Wait until no frame has reached ``collector`` for ``still`` seconds (a loaded machine's emit
    thread may still hand on frames of a session that has ended)."""
    deadline = asyncio.get_running_loop().time() + timeout
    count = -1
    while count != len(collector) and asyncio.get_running_loop().time() < deadline:
        count = len(collector)
        await asyncio.sleep(still)


@pytest.mark.asyncio
@pytest.mark.parametrize("codec, audio", [("h264", True), ("vp8", False)])
async def test_published_frames_reach_emit_in_order_and_delete_ends_the_session(gateway, codec, audio):
    source, collector = gateway.sources["door"], gateway.collectors["door"]
    await quiet(collector)  # the last frames of an earlier test's publisher are not this session's
    start, errors = len(collector), source.stats.errors
    async with httpx.AsyncClient() as http, publishing(gateway, http, codec=codec, audio=audio) as publisher:
        assert publisher.location.startswith("/whip/door/")
        video = section(publisher.answer, "video")
        assert next(line for line in video if line.startswith("a=rtpmap:")).endswith(f" {codec.upper()}/90000")
        assert "a=recvonly" in video
        if audio:  # offered, answered inactive: no audio reaches the gateway
            assert "a=inactive" in section(publisher.answer, "audio")
        await wait_until(lambda: len(collector) - start >= 30, message="30 frames")
        assert source.stats.connected and gateway.whip.publishers("door") == 1

        response = await http.delete(gateway.url + publisher.location, headers=AUTH)
        assert (response.status_code, response.text) == (200, "session ended\n")
        assert not source.stats.connected and gateway.whip.publishers("door") == 0
        await wait_until(lambda: publisher.pc.connectionState == "closed", message="the publisher to be cut off")
        assert (await http.delete(gateway.url + publisher.location, headers=AUTH)).status_code == 404
        publisher.location = None
    seen = collector.since(start)
    check_seen(seen)
    assert source.stats.errors == errors  # an orderly end


@pytest.mark.asyncio
async def test_a_new_publisher_carries_on_the_index_and_the_timeline(gateway):
    source, collector = gateway.sources["door"], gateway.collectors["door"]
    start, reconnects, errors = len(collector), source.stats.reconnects, source.stats.errors
    async with httpx.AsyncClient() as http:
        first = Publisher()
        try:
            assert (await first.publish(http, gateway.endpoint())).status_code == 201
            await wait_until(lambda: len(collector) - start >= 10, message="frames from the first publisher")
        finally:
            await first.close()  # no DELETE: the gateway notices the peer connection closing
        await wait_until(lambda: gateway.whip.publishers("door") == 0, message="the closed publisher to be noticed")
        assert not source.stats.connected and source.stats.errors == errors
        middle = len(collector)
        await asyncio.sleep(1.0)  # a gap between publishers, which the timeline must show
        async with publishing(gateway, http):
            await wait_until(lambda: len(collector) - middle >= 10, message="frames from the second publisher")
    before, after = collector.since(start)[: middle - start], collector.since(middle)
    check_seen(before)
    check_seen(after)
    assert source.stats.reconnects == reconnects + 2  # earlier tests published to this camera too
    last, following = before[-1], after[0]
    assert following.index > last.index
    if source.stats.dropped == 0:
        assert following.index == last.index + 1
    assert following.time > last.time
    assert following.time - last.time >= following.arrived - last.arrived - 0.5  # the gap shows


@pytest.mark.asyncio
async def test_a_second_publisher_is_refused_while_one_is_connected(gateway):
    collector = gateway.collectors["door"]
    async with httpx.AsyncClient() as http, publishing(gateway, http):
        count = len(collector)
        await wait_until(lambda: len(collector) > count + 5, message="frames")
        second = Publisher()
        try:
            response = await second.publish(http, gateway.endpoint())
        finally:
            await second.close()
        assert (response.status_code, response.text) == (409, "camera door already has a publisher\n")
        assert gateway.whip.publishers("door") == 1
        count = len(collector)
        await wait_until(lambda: len(collector) > count + 5, message="the first publisher to keep going")


@pytest.mark.asyncio
async def test_a_publisher_that_never_connects_is_dropped(gateway):
    source = gateway.sources["door"]
    errors = source.stats.errors
    async with httpx.AsyncClient() as http:
        silent = Publisher()
        try:
            response = await http.post(gateway.endpoint(), content=await silent.offer(), headers=SDP)
            assert response.status_code == 201  # ...but the answer is never applied: no ICE, no DTLS
            assert gateway.whip.publishers("door") == 1
            await wait_until(lambda: gateway.whip.publishers("door") == 0, timeout=CONNECT_TIMEOUT + 15,
                             message="the connect timeout")
        finally:
            await silent.close()
        assert source.stats.errors == errors + 1
        assert source.stats.last_error == f"did not connect within {CONNECT_TIMEOUT:g} s"
        assert not source.stats.connected
        assert (await http.delete(gateway.url + response.headers["location"], headers=AUTH)).status_code == 404
        async with publishing(gateway, http):  # the camera is free again
            pass


@pytest.mark.asyncio
async def test_a_publisher_that_falls_silent_is_dropped(gateway):
    source, collector = gateway.sources["yard"], gateway.collectors["yard"]
    async with httpx.AsyncClient() as http:
        publisher = Publisher(frames=20)  # connected, then no more video: a stalled or vanished camera
        try:
            assert (await publisher.publish(http, gateway.endpoint("yard"))).status_code == 201
            await wait_until(lambda: len(collector) >= 10, message="frames")
            assert source.stats.connected and source.stats.errors == 0
            await wait_until(lambda: gateway.whip.publishers("yard") == 0, timeout=READ_TIMEOUT + 20,
                             message="the silence to be noticed")
            assert not source.stats.connected
            assert (source.stats.errors, source.stats.last_error) == (1, f"no video for {READ_TIMEOUT:g} s")
            await wait_until(lambda: publisher.pc.connectionState == "closed", message="the publisher to be cut off")
        finally:
            await publisher.close()
    seen = check_seen(collector.since(0), camera="yard")
    assert seen[-1].number < 20


@pytest.mark.asyncio
async def test_a_stalled_consumer_loses_the_oldest_frames_and_never_the_event_loop(gateway):
    source, collector = gateway.sources["slow"], gateway.collectors["slow"]
    collector.gate.clear()
    try:
        async with httpx.AsyncClient() as http, publishing(gateway, http, camera="slow"):
            await wait_until(lambda: source.stats.dropped >= 10, message="frames to be dropped")
            # emit is stuck on the source's thread; the event loop still answers and still takes frames
            assert (await http.options(gateway.endpoint("slow"), headers=AUTH)).status_code == 204
            assert len(collector) == 0 and source.stats.connected
            frames = source.stats.frames
            await wait_until(lambda: source.stats.frames > frames + 5, message="frames to keep arriving")
            collector.gate.set()
            await wait_until(lambda: len(collector) >= 10, message="emit to resume")
    finally:
        collector.gate.set()
    await wait_until(lambda: len(collector) + source.stats.dropped == source.stats.frames, message="the queue to drain")
    seen = check_seen(collector.since(0), camera="slow")
    first, following = collector.since(0)[:2]
    assert following.index > first.index + 10  # the oldest went: what follows the stuck frame is recent
    assert len(seen) >= 10


class CountingPeerConnection(RTCPeerConnection):
    created = 0

    def __init__(self, *args, **kwargs) -> None:
        type(self).created += 1
        super().__init__(*args, **kwargs)


@pytest.mark.asyncio
async def test_authorize_answers_first_and_nothing_else_happens(gateway, monkeypatch):
    monkeypatch.setattr(whip_module, "RTCPeerConnection", CountingPeerConnection)
    CountingPeerConnection.created = 0
    publisher = Publisher()
    offer = await publisher.offer()
    await publisher.close()
    gateway.authorized.clear()
    sdp_only = {"Content-Type": "application/sdp"}
    async with httpx.AsyncClient() as http:
        requests = [
            ("POST", gateway.endpoint(), offer, sdp_only),
            ("POST", gateway.endpoint("nowhere"), offer, sdp_only),  # not a 404: existence is not revealed
            ("POST", gateway.endpoint(), "x" * 1_000_000, sdp_only),  # not a 413: the body is not read
            ("POST", gateway.endpoint(), offer, {"Content-Type": "text/plain", "Authorization": "Bearer guess"}),
            ("OPTIONS", gateway.endpoint(), None, {}),
            ("DELETE", gateway.endpoint() + "/no-session", None, {}),
        ]
        for method, url, body, headers in requests:
            response = await http.request(method, url, content=body, headers=headers)
            assert (response.status_code, response.text) == (401, "who are you?\n"), (method, url)
            assert response.headers["www-authenticate"] == "Bearer"
        assert [(m, c) for m, c, _ in gateway.authorized] == [
            ("POST", "door"), ("POST", "nowhere"), ("POST", "door"), ("POST", "door"), ("OPTIONS", "door"),
            ("DELETE", "door")]
        assert CountingPeerConnection.created == 0
        assert gateway.whip.publishers("door") == 0 and gateway.sources["door"].stats.connected is False

        # The same requests, authorized.
        assert (await http.post(gateway.endpoint("nowhere"), content=offer, headers=SDP)).status_code == 404
        options = await http.options(gateway.endpoint(), headers=AUTH)
        assert options.status_code == 204 and options.headers["accept-post"] == "application/sdp"
        assert (await http.delete(gateway.endpoint() + "/no-session", headers=AUTH)).status_code == 404
        response = await http.post(gateway.endpoint(), content=offer, headers=SDP)
        assert response.status_code == 201 and CountingPeerConnection.created == 1
        assert (await http.delete(gateway.url + response.headers["location"], headers=AUTH)).status_code == 200
    assert gateway.whip.publishers("door") == 0


async def valid_offer(**options) -> str:
    publisher = Publisher(**options)
    try:
        return await publisher.offer()
    finally:
        await publisher.close()


@pytest.mark.asyncio
async def test_bad_offers_get_one_line_4xx_and_the_server_keeps_serving(gateway):
    offer = await valid_offer()
    url = gateway.endpoint()
    async with httpx.AsyncClient() as http:

        async def expect(status: int, text: str, method: str, target: str, **kwargs) -> None:
            kwargs["headers"] = {**AUTH, **kwargs.get("headers", {})}
            response = await http.request(method, target, **kwargs)
            assert (response.status_code, response.text) == (status, text + "\n")

        no_codec = offer.replace(" VP8/90000", " VP9/90000").replace(" H264/90000", " AV1/90000")
        await expect(404, "no such camera: nowhere", "POST", gateway.endpoint("nowhere"), content=offer, headers=SDP)
        await expect(415, "Content-Type must be application/sdp", "POST", url, content=offer,
                     headers={"Content-Type": "text/plain"})
        await expect(415, "Content-Type must be application/sdp", "POST", url, json={"sdp": offer, "type": "offer"})
        await expect(400, "malformed SDP offer: it does not start with v=0", "POST", url,
                     content='{"sdp": "v=0", "type": "offer"}', headers=SDP)
        await expect(400, "malformed SDP offer: it does not start with v=0", "POST", url, content=b"", headers=SDP)
        await expect(400, "malformed SDP offer: not UTF-8 text", "POST", url, content=b"v=0\r\n\xff\xfe", headers=SDP)
        await expect(413, "SDP offer larger than 65536 bytes", "POST", url, content=offer + "a=x\r\n" * 20_000,
                     headers=SDP)
        await expect(400, "malformed SDP offer: no video media section", "POST", url,
                     content=offer.replace("m=video", "m=audio"), headers=SDP)
        await expect(400, "malformed SDP offer: the video section is recvonly, a publisher must send", "POST", url,
                     content=offer.replace("a=sendonly", "a=recvonly"), headers=SDP)
        await expect(400, "malformed SDP offer: ICE username fragment or password is missing", "POST", url,
                     content="\r\n".join(l for l in offer.split("\r\n") if not l.startswith("a=ice-pwd")), headers=SDP)
        await expect(400, "malformed SDP offer: the video section offers neither VP8 nor "
                     "H.264 (constrained baseline, packetization-mode 1)", "POST", url, content=no_codec, headers=SDP)
        await expect(404, "no such session", "DELETE", f"{url}/not-a-session")
        assert (await http.get(url, headers=AUTH)).status_code == 405
        assert (await http.patch(f"{url}/a-session", headers=AUTH)).status_code == 405  # no trickle ICE
        assert gateway.whip.publishers("door") == 0

        response = await http.post(url, content=offer, headers=SDP)  # still serving
        assert response.status_code == 201 and response.headers["content-type"] == "application/sdp"
        location = response.headers["location"]
        other = location.replace("/whip/door/", "/whip/gate/")
        assert (await http.delete(gateway.url + other, headers=AUTH)).status_code == 404  # another camera's URL
        assert (await http.delete(gateway.url + location, headers=AUTH)).status_code == 200
    assert gateway.whip.publishers("door") == 0


_GARBAGE = st.sampled_from([
    "", ":", " ", "=", "x", "\x00", "-1", "999999999999", "é", "\t", "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=rtpmap:96 VP8", "a=fingerprint:sha-256",
    "a=group:BUNDLE 7", "a=msid: ", "a=setup:bogus", "a=candidate:x 1 udp 1 203.0.113.9 9 typ host", "a=inactive",
    "a=fmtp:97 packetization-mode=1;profile-level-id=640032",
])


_EDIT = st.tuples(st.sampled_from(["delete", "cut", "insert", "duplicate", "swap"]),
                  st.integers(0, 10_000), st.integers(0, 10_000), _GARBAGE)


def mutate(offer: str, edits) -> str:
    lines = offer.split("\r\n")
    for kind, i, j, text in edits:
        i, j = i % len(lines), j % len(lines)
        if kind == "delete" and len(lines) > 1:
            del lines[i]
        elif kind == "cut":
            lines[i] = lines[i][: j % (len(lines[i]) + 1)] + text
        elif kind == "insert":
            lines.insert(i, text)
        elif kind == "duplicate":
            lines.insert(j, lines[i])
        elif kind == "swap":
            lines[i], lines[j] = lines[j], lines[i]
    return "\r\n".join(lines)


@pytest.fixture(scope="module")
def offers() -> dict[str, str]:
    return {"plain": asyncio.run(valid_offer()), "with audio": asyncio.run(valid_offer(codec="h264", audio=True))}


@settings(max_examples=60, deadline=None)
@given(which=st.sampled_from(["plain", "with audio"]), edits=st.lists(_EDIT, min_size=1, max_size=4))
def test_mutated_offers_get_a_201_or_a_4xx_never_a_server_error(gateway, offers, which, edits):
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=30) as http:
        response = http.post("/whip/door", content=mutate(offers[which], edits).encode(), headers=SDP)
        if response.status_code == 201:
            assert http.delete(response.headers["location"]).status_code == 200
        else:
            assert 400 <= response.status_code < 500 and response.text.count("\n") == 1, response.text
            assert response.status_code != 409, "a session was left open"
        assert gateway.whip.publishers("door") == 0


@pytest.mark.asyncio
async def test_stopping_the_source_ends_its_publisher(gateway):
    source, collector = gateway.sources["gate"], gateway.collectors["gate"]
    async with httpx.AsyncClient() as http:
        publisher = Publisher()
        try:
            assert (await publisher.publish(http, gateway.endpoint("gate"))).status_code == 201
            await wait_until(lambda: len(collector) >= 5, message="frames")
            assert source.stats.connected
            await asyncio.to_thread(source.stop, 5.0)
            assert not source.stats.connected and gateway.whip.publishers("gate") == 0
            assert not any(t.name == "WhipSource[gate].emit" for t in threading.enumerate())  # joined
            await wait_until(lambda: publisher.pc.connectionState == "closed", message="the publisher to be cut off")
            count = len(collector)
            await asyncio.sleep(0.3)
            assert len(collector) == count
            late = Publisher()
            try:
                response = await late.publish(http, gateway.endpoint("gate"))
            finally:
                await late.close()
            assert (response.status_code, response.text) == (503, "camera gate is not running\n")
        finally:
            await publisher.close()
    check_seen(collector.since(0), camera="gate")


def test_source_rejects_bad_arguments():
    with pytest.raises(ValueError, match="queue_size must be at least 1, not 0"):
        WhipSource("door", queue_size=0)
    with pytest.raises(ValueError, match="read_timeout must be positive, not 0"):
        WhipSource("door", read_timeout=0)
    source = WhipSource("door")
    source.start(lambda frame: None)
    try:
        with pytest.raises(RuntimeError, match="source 'door' was already started"):
            source.start(lambda frame: None)
    finally:
        source.stop()


@pytest.mark.asyncio
async def test_a_node_that_does_not_run_a_camera_sends_its_publisher_to_the_one_that_does(gateway):
    """A second WHIP server stands for a cluster node where ``door`` runs on ``gateway`` and ``yard`` runs
    nowhere yet: after authorization, door's offer is redirected (307) to its node, where the publisher
    re-sends it and publishes; yard's is answered 503 Retry-After (the publisher comes back); others 404."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse

    from gateway.ingest import WhipServer
    from live_support import ThreadedServer

    async def authorize(request, camera):
        if request.headers.get("authorization") == AUTH["Authorization"]:
            return None
        return PlainTextResponse("who are you?\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})

    elsewhere = WhipServer(lambda camera: None, authorize,
                           owner_url=lambda camera: gateway.url if camera == "door" else None,
                           pending=lambda camera: camera == "yard")
    node = ThreadedServer(Starlette(routes=elsewhere.routes))
    collector = gateway.collectors["door"]
    await quiet(collector)
    start = len(collector)
    try:
        async with httpx.AsyncClient() as http:
            offer = await valid_offer()
            anonymous = await http.post(f"{node.url}/whip/door?x=1", content=offer,
                                        headers={"Content-Type": "application/sdp"})
            assert anonymous.status_code == 401 and "location" not in anonymous.headers  # where it runs: not told
            moved = await http.post(f"{node.url}/whip/door?x=1", content=offer, headers=SDP)
            assert moved.status_code == 307 and moved.headers["location"] == f"{gateway.url}/whip/door?x=1"
            waiting = await http.post(f"{node.url}/whip/yard", content=offer, headers=SDP)
            assert (waiting.status_code, waiting.headers["retry-after"]) == (503, "1")
            assert (await http.post(f"{node.url}/whip/nowhere", content=offer, headers=SDP)).status_code == 404

            # a publisher that follows the redirect (with its token) publishes to the camera's node
            publisher = Publisher()
            try:
                first = await http.post(f"{node.url}/whip/door", content=await publisher.offer(), headers=SDP)
                assert first.status_code == 307
                response = await publisher.publish(http, first.headers["location"])
                assert response.status_code == 201 and publisher.location.startswith("/whip/door/")
                await wait_until(lambda: len(collector) - start >= 15, message="15 frames on the camera's node")
                assert gateway.whip.publishers("door") == 1 and elsewhere.publishers("door") == 0
            finally:
                await publisher.close()
                if publisher.location is not None:  # the session's resource is on the camera's node
                    await http.delete(gateway.url + publisher.location, headers=AUTH)
                await wait_until(lambda: gateway.whip.publishers("door") == 0, message="the session to end")
    finally:
        node.close()
    check_seen(collector.since(start))
