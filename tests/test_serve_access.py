"""`serve` as privacy officers, viewers and VMSes use it over the network: policies activated live over
HTTP, tokens from signed requests, RTSP egress with digest logins, and revocation ending live
sessions (see tests/serve_harness.py)."""

import hashlib
import json
import time
import urllib.error
import urllib.request

import pytest
import yaml
from peers import available, chromium_missing
from rtsp_support import rtsp_camera
from serve_harness import FACES, Running, assert_faces_redacted, collect_released, half

from gateway.cli import main

pytestmark = pytest.mark.realtime


def test_policy_activated_over_http_switches_live_binds_new_records_and_outlives_a_restart(camera_clip, tmp_path, openbao):
    from keys import VaultStore

    clip, frames, _ = camera_clip
    raw = {hashlib.blake2b(f.tobytes()).digest() for f in frames}
    pixelate = {**FACES, "name": "pixelated", "classes": {"plate": {"enabled": False}, "face": {"method": "pixelate"}},
                "unmask": {"face": {"roles": ["investigator"], "quorum": 1}, "watermark": "optional"}}
    with rtsp_camera(clip, loop=True) as camera:
        with Running(tmp_path, openbao, {"cam": camera.url, "side": str(clip)}) as running:
            released = collect_released(running, "cam")
            running.wait_healthy()
            status, before = running.call("GET", "/api/cameras/cam/policy")
            assert status == 200
            # an invalid version is refused with field paths, and changes nothing
            bad = {**pixelate, "classes": {"face": {"method": "smudge", "strength": -1}}}
            status, answer = running.call("POST", "/api/policies", bad)
            assert status == 422 and any(e.startswith("classes.face.method:") for e in answer["errors"]), answer
            status, stored = running.call("POST", "/api/policies", yaml.safe_dump(pixelate).encode(), "application/yaml")
            assert status == 201
            version = stored["version"]
            status, diff = running.call("GET", f"/api/policies/{before['version']}/diff/{version}")
            assert status == 200 and "+    method: pixelate" in diff and "-    method: blur" in diff
            # a version that cannot run here (no auditor holds keys for its grant): 409, the old one stays
            impossible = {**pixelate, "name": "impossible", "unmask": {"face": {"roles": ["auditor"], "quorum": 1}}}
            status, stored_bad = running.call("POST", "/api/policies", impossible)
            status, answer = running.call("PUT", "/api/cameras/cam/policy", {"version": stored_bad["version"]})
            assert status == 409 and "stays in force" in answer["error"], answer
            assert running.call("GET", "/api/cameras/cam/policy")[1]["version"] == before["version"]
            switch_at = running.metric("privacy_gateway_frames_total", camera="cam", state="in")
            status, answer = running.call("PUT", "/api/cameras/cam/policy", {"version": version})
            assert status == 200 and answer["switched"] is True and answer["previous"] == before["version"]
            running.wait_metric("privacy_gateway_frames_total", switch_at + 60, camera="cam", state="released")
            assert running.call("GET", "/api/cameras/cam/policy")[1]["version"] == version
            # only what was activated is kept: the side camera still follows its configured file
            assert json.loads((tmp_path / "data" / "active-policies.json").read_text()) == {"cam": version}
            actions = [e["action"] for e in running.call("GET", "/api/audit")[1]["entries"]]
            assert actions.count("store-policy") == 2 and actions.count("activate-policy") == 2
            assert actions.count("activate-policy-failed") == 1
        # no raw frame around the switch, and the frames after it still redacted
        assert not released.raw(raw)
        assert "redacted" in [state for state, *_ in released[-30:]]
        store = VaultStore.open(tmp_path / "data" / "vault")
        bound = [store.segment("cam", n).header.policy_sha256 for n in store.segment_numbers("cam")]
        assert bound[0] == before["version"] and bound[-1] == version and sorted(set(bound)) == sorted({before["version"], version})
        assert main(["vault", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0
        assert main(["audit", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0

        with Running(tmp_path, openbao, {"cam": camera.url, "side": str(clip)}) as again:  # a restart keeps what was activated
            assert again.call("GET", "/api/cameras/cam/policy")[1]["version"] == version
            assert again.call("GET", "/api/cameras/side/policy")[1]["version"] == before["version"]  # its file's
            assert [line for line in again.lines if "activated over HTTP" in line] == [
                f"camera cam: policy {version[:12]} (activated over HTTP) is in force, not its configured file"]


def test_token_command_gets_a_token_with_a_signed_request_and_it_opens_only_its_camera(camera_clip, tmp_path, capsys,
                                                                                       monkeypatch, openbao):
    with Running(tmp_path, openbao, {"cam": str(camera_clip[0]), "other": str(camera_clip[0])}) as running:
        officer, viewer = running.people["officer"], running.people["viewer"]
        monkeypatch.setenv(officer.variable, officer.passphrase)
        monkeypatch.setenv(viewer.variable, viewer.passphrase)
        identity = officer.file
        url = f"http://127.0.0.1:{running.port}"
        capsys.readouterr()
        assert main(["token", "--gateway", url, "--identity", str(identity), "--for", "viewer",
                     "--camera", "cam", "--ttl", "600"]) == 0
        token = capsys.readouterr().out.strip()
        assert running.get("/api/whoami", token=token)[0] == 200
        status, body = running.get("/api/cameras", token=token)
        assert status == 200 and json.loads(body) == {"cameras": [{"id": "cam"}]}
        if available(chromium_missing()):  # the viewer page lists the token's cameras, and only them
            from browser import Browser

            with Browser() as browser:
                page = browser.new_page(f"{url}/#token={token}")
                page.wait_for("document.querySelectorAll('#cameras a').length > 0", timeout=30)
                assert page.evaluate("[...document.querySelectorAll('#cameras a')].map(a => a.textContent)") == ["cam"]
                assert "token" not in page.evaluate("location.href")  # taken out of the address bar
                bare = browser.new_page(f"{url}/view")
                bare.wait_for("document.getElementById('status').textContent.length > 0", timeout=30)
                assert bare.evaluate("document.getElementById('status').textContent") == "A viewer token is needed."
        # the wrong passphrase (here the viewer's: each identity has its own), an unreachable gateway: one
        # clear line each, exit 2
        monkeypatch.setenv(officer.variable, viewer.passphrase)
        assert main(["token", "--gateway", url, "--identity", str(identity)]) == 2
        monkeypatch.setenv(officer.variable, officer.passphrase)
        assert main(["token", "--gateway", "http://127.0.0.1:9", "--identity", str(identity)]) == 2
        # a viewer may not issue tokens to others
        assert main(["token", "--gateway", url, "--identity", str(viewer.file), "--for", "officer"]) == 2
        errors = capsys.readouterr().err
        assert "cannot open identity" in errors and "cannot reach" in errors and "refused (403)" in errors


def test_rtsp_egress_serves_vms_clients_the_redacted_stream_with_digest_auth(camera_clip, tmp_path, openbao):
    import av

    clip, frames, faces = camera_clip
    with rtsp_camera(clip, loop=True) as camera, Running(tmp_path, openbao, {"cam": camera.url, "other": camera.url},
                                                         rtsp={"port": 0}) as running:
        running.wait_healthy()
        deadline = time.monotonic() + 30
        while running.gateway.cameras["cam"].rendition("h264") is None:  # until then RTSP answers 503, retry
            assert time.monotonic() < deadline, "no rendition"
            time.sleep(0.1)
        store = running.gateway.access.store
        store.grant("viewer", ["cam"])
        token, record = store.issue("viewer", ["cam"], 600.0, "test")
        secret = token.split("_", 2)[2]
        base = f"rtsp://127.0.0.1:{running.gateway.rtsp_port}"
        assert any(line.startswith("  RTSP:   rtsp://127.0.0.1:") for line in running.lines)
        decoded, checked = [], 0

        def pull(transport):
            with av.open(f"rtsp://{record.id}:{secret}@127.0.0.1:{running.gateway.rtsp_port}/cam",
                         options={"rtsp_transport": transport, "timeout": "20000000"}, timeout=30) as client:
                for frame in client.decode(video=0):
                    decoded.append(frame.to_ndarray(format="bgr24"))
                    if len(decoded) % 40 == 0:
                        break
            # what the VMS decodes is the redacted stream: wherever a sampled frame has a face, its detail is gone
            return assert_faces_redacted([half(d) for d in decoded[-40:]], frames, faces)

        for transport in ("tcp", "udp"):
            checked += pull(transport)
        while checked < 3 and len(decoded) < 400:  # a loaded machine blanks many frames: look at more
            checked += pull("tcp")
        for url in (f"{base}/cam", f"rtsp://{record.id}:wrong@127.0.0.1:{running.gateway.rtsp_port}/cam",
                    f"rtsp://{record.id}:{secret}@127.0.0.1:{running.gateway.rtsp_port}/other"):
            with pytest.raises(av.error.FFmpegError):  # 401, 401, 403
                av.open(url, options={"rtsp_transport": "tcp"}, timeout=20)
        assert running.metric("privacy_gateway_auth_failures_total", reason="wrong password") >= 1
    assert len(decoded) >= 80 and decoded[0].shape == frames[0].shape
    assert checked >= 3


def test_revoking_a_token_ends_the_live_sessions_it_opened(camera_clip, tmp_path, openbao):
    """A viewer watching over WHEP and a VMS pulling RTSP are cut off once their token is revoked."""
    import asyncio

    import av
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    with Running(tmp_path, openbao, {"cam": str(camera_clip[0])}, rtsp={"port": 0}) as running:
        running.wait_healthy()
        deadline = time.monotonic() + 30
        while running.gateway.cameras["cam"].rendition("h264") is None:
            assert time.monotonic() < deadline, "no rendition"
            time.sleep(0.1)
        store = running.gateway.access.store
        store.grant("viewer", ["cam"])
        web, _ = store.issue("viewer", ["cam"], 600.0, "test")
        vms, record = store.issue("viewer", ["cam"], 600.0, "test")

        async def watch():
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            transceiver = pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            request = urllib.request.Request(f"http://127.0.0.1:{running.port}/whep/cam", method="POST",
                                             data=pc.localDescription.sdp.encode(), headers={
                                                 "Content-Type": "application/sdp", "Authorization": f"Bearer {web}"})
            answer = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=30).read().decode())
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            track = transceiver.receiver.track
            for _ in range(5):
                await asyncio.wait_for(track.recv(), 30)
            assert running.gateway.whep.viewers("cam") == 1
            status, _ = await asyncio.to_thread(running.call, "DELETE", f"/api/tokens/{web.split('_')[1]}")
            assert status == 200
            deadline = time.monotonic() + 15
            while running.gateway.whep.viewers("cam") or pc.connectionState not in ("closed", "failed"):
                assert time.monotonic() < deadline, "the WHEP session outlived its token"
                await asyncio.sleep(0.2)
            await pc.close()

        asyncio.run(watch())

        # the VMS is told by its connection closing: one left open would wait out its own read
        # timeout (60 s here, the test's generous bound 20 s; the reaper runs every second)
        secret = vms.split("_", 2)[2]
        frames, revoked = 0, None
        with av.open(f"rtsp://{record.id}:{secret}@127.0.0.1:{running.gateway.rtsp_port}/cam",
                     options={"rtsp_transport": "tcp", "timeout": "60000000"}, timeout=60) as client:
            try:
                for _ in client.decode(video=0):
                    frames += 1
                    if frames == 10:
                        store.revoke(record.id)
                        revoked = time.monotonic()
                    assert frames < 10 + 25 * 15, "the RTSP session outlived its token"
            except av.error.FFmpegError:
                pass  # the server closed the connection: the demuxer reports it
        assert frames >= 10
        assert time.monotonic() - revoked < 20, "the revoked VMS's connection was left open"
        assert running.gateway.rtsp.sessions("cam") == 0
