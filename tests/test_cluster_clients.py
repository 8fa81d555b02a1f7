"""Clients that reach a cluster node which does not run their camera, against real `serve` processes
sharing one PostgreSQL (the nodes of tests/test_cluster_nodes.py):

* headless Chromium opens the viewer page on the wrong node and ends up playing the camera from its
  owner (the page's 307, the token riding along in the URL fragment), and a page that is open when its
  camera moves to another node follows it there;
* an aiortc WHIP publisher whose node is killed (kill -9) publishes again, as an encoder would, to the
  nodes it knows until one takes it (307 to the owner, 503 while the camera runs nowhere, 201): the
  camera's new node releases redacted frames (the time from the kill is printed), and no recording on
  either node shows a face unredacted.
"""

from __future__ import annotations

import asyncio
import json
import time
from fractions import Fraction

import av
import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from cluster_harness import stop_all, wait_for
from peers import chromium_missing, require
from rtsp_harness import RawClient
from serve_harness import add_people, assert_faces_redacted, grab, half
from test_cluster_nodes import LEASE_S, Node, _recorded, _request, clip  # noqa: F401  (clip: a fixture)

from keys.directory import KeyDirectory
from keys.identity import PrivateIdentity

pytestmark = pytest.mark.realtime

FPS = 10  # the small clip's
CAMERAS = ["cam0", "cam1"]


def _keys(tmp_path):
    """A key directory with the tests' people (serve_harness.add_people), copied into each node."""
    keys = tmp_path / "keys"
    add_people(keys, tmp_path / "people")
    return keys


def _viewers(node, camera) -> float:
    """The owner's ``privacy_gateway_viewers`` of ``camera`` (0 if absent or the node is gone)."""
    try:
        text = node.metrics()
    except OSError:
        return 0.0
    prefix = f'privacy_gateway_viewers{{camera="{camera}"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def test_the_viewer_page_opened_on_the_wrong_node_plays_the_camera_from_its_owner(postgres, openbao, clip, tmp_path,
                                                                                    capsys):
    from browser import Browser

    require(chromium_missing())
    path, frames, faces = clip
    database = postgres.database("viewer_page")
    keys = _keys(tmp_path)
    cameras = CAMERAS
    nodes = [Node(name, tmp_path, keys, path, postgres, database, openbao, cameras=cameras) for name in ("n1", "n2")]
    try:
        owned = wait_for(lambda: (o := [n.owns() for n in nodes]) and sorted(map(len, o)) == [1, 1] and o, 120,
                         "the two cameras spread over the two nodes")
        owner, other = (nodes[0], nodes[1]) if "cam0" in owned[0] else (nodes[1], nodes[0])
        wait_for(lambda: owner.released("cam0") > 0, 90, "cam0 releasing frames on its owner")
        wait_for(lambda: "cam0" in json.dumps((other.health() or {}).get("cluster", {}).get("elsewhere", {})), 30,
                 "the other node to know where cam0 runs")
        shots = []
        with Browser() as browser:
            began = time.monotonic()
            page = browser.new_page(f"{other.url}/view/cam0#token={other.viewer}")
            page.wait_for("document.getElementById('video').videoWidth > 0", timeout=60)
            playing = time.monotonic() - began
            # the page is the owner's, reached with the token in its fragment (never sent to a server), which
            # the page kept for the tab and took out of the address bar
            assert page.evaluate("location.origin + location.pathname + location.hash") == f"{owner.url}/view/cam0"
            assert page.evaluate("sessionStorage.getItem('privacy-gateway-token')") == other.viewer
            for _ in range(150):  # shots until ten show a picture (a loaded machine blanks some while detection lags)
                shot = grab(page)
                if shot is not None:
                    shots.append(shot)
                if sum(s.std() > 10 for s in shots) >= 10:
                    break
                time.sleep(0.2)
            decoded = page.evaluate("document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames")
            viewers = _viewers(owner, "cam0"), _viewers(other, "cam0")
        with capsys.disabled():
            print(f"\nviewer page: opened on {other.name}, playing cam0 from {owner.name} {playing:.1f} s later "
                  f"({decoded} frames decoded)")
        assert viewers == (1.0, 0.0)  # the WHEP session is the owner's
        assert decoded >= 10 and {s.shape for s in shots} == {frames[0].shape}
        assert sum(s.std() > 10 for s in shots) >= 10  # pictures, not the blank frame
        # what the browser shows has no face left unredacted (where a shot is one of the sampled frames)
        assert_faces_redacted([half(s) for s in shots], frames, faces)
    finally:
        stop_all(nodes)


def test_the_viewer_page_follows_its_camera_to_another_node(postgres, openbao, clip, tmp_path, capsys):
    """A node runs both cameras and a viewer watches cam1 there; a second node joins and is handed cam1
    (the first gives back the last of its cameras to even out the load): the page's session ends, its
    offer again is redirected, and it reloads itself on the new node, the token carried in the fragment."""
    from browser import Browser

    require(chromium_missing())
    path, _, _ = clip
    database = postgres.database("viewer_moves")
    keys = _keys(tmp_path)
    cameras = CAMERAS
    first = Node("n1", tmp_path, keys, path, postgres, database, openbao, cameras=cameras)
    nodes = [first]
    try:
        wait_for(lambda: first.owns() == set(cameras) and first.released("cam1") > 0, 120, "n1 running both cameras")
        with Browser() as browser:
            page = browser.new_page(f"{first.url}/view/cam1#token={first.viewer}")
            page.wait_for("window.whepSession && whepSession.pc.connectionState === 'connected'", timeout=60)
            assert page.evaluate("location.origin") == first.url
            nodes.append(second := Node("n2", tmp_path, keys, path, postgres, database, openbao, cameras=cameras))
            wait_for(lambda: "cam1" not in first.owns(), 120, "n1 to hand cam1 back")
            moved = time.monotonic()
            try:
                page.wait_for(f"location.origin === {json.dumps(second.url)} && window.whepSession && "
                              "whepSession.pc.connectionState === 'connected'", timeout=90)
                page.wait_for("document.getElementById('video').videoWidth > 0", timeout=30)
            except Exception:
                print("page:", page.evaluate("location.href + ' ' + document.getElementById('status').textContent"))
                raise
            following = time.monotonic() - moved
            assert "cam1" in second.owns()
            assert page.evaluate("location.pathname + location.hash") == "/view/cam1"  # the token left the bar again
            before = page.evaluate("document.getElementById('video').currentTime")
            page.wait_for(f"document.getElementById('video').currentTime > {before}", timeout=20)  # it plays
            viewers = _viewers(second, "cam1"), _viewers(first, "cam1")
        with capsys.disabled():
            print(f"\nviewer page: cam1 handed from n1 to n2; the page played it from n2 {following:.1f} s after n1 "
                  f"let it go")
        assert viewers == (1.0, 0.0)
    finally:
        stop_all(nodes)


def test_a_configured_camera_that_runs_on_no_node_is_answered_retry_later(postgres, openbao, clip, tmp_path):
    """One node of capacity 1 and two cameras: the one it cannot take runs nowhere, which WHEP and RTSP
    answer 503 Retry-After (a viewer waits for it, as the viewer page does while a camera moves); a
    camera that is not configured stays 404."""
    path, _, _ = clip
    keys = _keys(tmp_path)
    node = Node("n1", tmp_path, keys, path, postgres, postgres.database("nowhere"), openbao, cameras=CAMERAS,
                capacity=1)

    async def offer():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()
        return pc.localDescription.sdp

    try:
        running = wait_for(lambda: node.owns(), 120, "n1 to run one camera")
        idle = ({"cam0", "cam1"} - running).pop()
        sdp = asyncio.run(offer()).encode()
        for camera, token, status in ((idle, node.viewer, 503), ("nowhere", node.token, 404)):
            answer = _request(node.port, "POST", f"/whep/{camera}", token, sdp, {"Content-Type": "application/sdp"})
            assert answer[0] == status, answer
        assert answer[0] == 404 and "retry-after" not in answer[1]
        with RawClient(node.rtsp_port) as client:
            waiting = client.request("DESCRIBE", f"rtsp://127.0.0.1:{node.rtsp_port}/{idle}",
                                     credentials=node.rtsp_login)
            assert waiting.status == 503 and waiting.headers["retry-after"] == "1", waiting
            assert client.request("DESCRIBE", f"rtsp://127.0.0.1:{node.rtsp_port}/nowhere",
                                  credentials=node.officer_login).status == 404
    finally:
        node.stop()


class _Clip(MediaStreamTrack):
    """The small clip's frames in a loop at its rate, numbered on from where ``encoder``'s last session stopped."""

    kind = "video"

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.start = encoder, None

    async def recv(self):
        encoder = self.encoder
        if self.start is None:
            self.start = time.monotonic() - encoder.sent / FPS
        await asyncio.sleep(max(0.0, self.start + encoder.sent / FPS - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(encoder.frames[encoder.sent % len(encoder.frames)], format="bgr24")
        frame.pts, frame.time_base = encoder.sent * (90_000 // FPS), Fraction(1, 90_000)
        encoder.sent += 1
        return frame


class Encoder:
    """A WHIP publisher as an encoder behaves: it knows every node's URL, offers to each in turn until one
    answers 201, follows a 307 (re-sending its token: the redirect comes only after the token was accepted)
    and keeps the session's resource where the answer came from."""

    def __init__(self, frames, token: str, camera: str) -> None:
        self.frames, self.token, self.camera = frames, token, camera
        self.sent = 0
        self.pc: RTCPeerConnection | None = None
        self.resource: str | None = None
        self.answers: list[tuple[str, int]] = []  # (URL, status) of every attempt

    async def publish(self, http: httpx.AsyncClient, nodes: list[str], timeout: float) -> str:
        """Publish to the first node that takes the offer; returns the session's resource URL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for base in nodes:
                if await self._offer(http, f"{base}/whip/{self.camera}"):
                    return self.resource
            await asyncio.sleep(0.5)
        raise AssertionError(f"no node took the publisher within {timeout:.0f} s: {self.answers[-8:]}")

    async def _offer(self, http: httpx.AsyncClient, url: str) -> bool:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(_Clip(self), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"}
        for _ in range(3):  # a redirect or two
            try:
                response = await http.post(url, content=pc.localDescription.sdp, headers=headers)
            except httpx.TransportError:  # a dead node (or the one a stale redirect names)
                self.answers.append((url, 0))
                break
            self.answers.append((url, response.status_code))
            if response.status_code == 307:
                url = response.headers["location"]
                continue
            if response.status_code == 201:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
                self.pc, self.resource = pc, str(httpx.URL(url).join(response.headers["location"]))
                return True
            assert response.status_code == 503, (url, response.status_code, response.text)  # runs nowhere yet
            break
        await pc.close()
        return False

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()


def test_a_whip_camera_whose_node_dies_publishes_again_to_another_node(postgres, openbao, clip, tmp_path, capsys):
    path, frames, faces = clip
    database = postgres.database("whip_move")
    keys = _keys(tmp_path)
    KeyDirectory.open(keys).add(PrivateIdentity.generate("encoder", ["publisher"]).public)
    nodes = [Node(name, tmp_path, keys, path, postgres, database, openbao, cameras=["cam0"], whip=["door"])
             for name in ("n1", "n2")]
    urls = [node.url for node in nodes]

    async def run():
        async with httpx.AsyncClient(timeout=10) as http:
            encoder = Encoder(frames, nodes[0].encoder, "door")
            try:
                # a stable spread first (one camera each): a camera handed back to even out the load moves
                # with its publisher's session ended, which the encoder would follow as below
                spread = lambda: sorted(len(n.owns()) for n in nodes) == [1, 1]
                await asyncio.to_thread(wait_for, spread, 120, "one camera on each node")
                await asyncio.sleep(2 * LEASE_S)
                await asyncio.to_thread(wait_for, spread, 30, "the spread to hold")
                owner = next(n for n in nodes if "door" in n.owns())
                resource = await encoder.publish(http, urls, 60)
                assert resource.startswith(f"{owner.url}/whip/door/")
                if owner is not nodes[0]:  # the first node it asked sent it on
                    assert (urls[0] + "/whip/door", 307) in encoder.answers
                await asyncio.to_thread(wait_for, lambda: owner.released("door") > 0, 90, "door released on its node")

                survivor = next(n for n in nodes if n is not owner)
                owner.process.kill()
                killed = time.monotonic()
                owner.process.wait(10)
                await encoder.close()  # its session went with the node
                encoder.answers.clear()
                resource = await encoder.publish(http, urls, 90)
                published = time.monotonic() - killed
                assert resource.startswith(f"{survivor.url}/whip/door/")
                await asyncio.to_thread(wait_for, lambda: survivor.released("door") > 0, 90,
                                        "door released on the surviving node")
                moved = time.monotonic() - killed
                statuses = sorted({status for _, status in encoder.answers})
                with capsys.disabled():
                    print(f"\nWHIP camera moved: kill -9 of {owner.name}; the publisher was taken by {survivor.name} "
                          f"{published:.1f} s later and door released redacted frames again {moved:.1f} s after the "
                          f"kill (lease {LEASE_S:.0f} s; answers on the way: {statuses})")
                assert moved < 60
                await asyncio.sleep(4)  # a few seconds recorded on the new node
                return owner, survivor
            finally:
                await encoder.close()

    try:
        _, survivor = asyncio.run(run())
    finally:
        stop_all(nodes)
    # nothing unredacted was recorded on either node, and the new node recorded the camera
    checked = 0
    for node in nodes:
        images, _ = _recorded(node.dir / "data")
        checked += assert_faces_redacted(images, frames, faces)
    assert checked > 0 and list((survivor.dir / "data" / "recordings" / "door").glob("*.mp4"))
