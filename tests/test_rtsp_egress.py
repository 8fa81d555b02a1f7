"""RTSP egress against real clients: FFmpeg (PyAV), GStreamer's rtspsrc and raw sockets, checking the
pictures they decode (see tests/rtsp_harness.py): transports, parameter sets, vanishing and slow clients."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import re
import subprocess
import threading
import time

import av
import numpy as np
import pytest

from peers import available, require
from rtsp_support import SYSTEM_PYTHON, gstreamer_elements_missing
from rtsp_harness import (  # noqa: F401  (fixtures)
    ALICE, BOB, FPS, HEIGHT, METHODS, OK_STATUSES, REALM, TICKS, WIDTH, Gateway, RawClient, Response, answer,
    check_pictures, clip, compose, digest, extra_server, ffmpeg_frames, ffmpeg_options, gw, ha1, line_text, read_code,
    rtp_fields, server_errors, starts_keyframe, udp_pair, wait_until,
)

from gateway.egress import RtspUser


def test_pattern_round_trips(clip):
    for index in (0, 1, 39, 1234):
        assert read_code(compose(clip, index)) == index
    assert read_code(clip[0]) is None


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
    require(gstreamer_elements_missing(GST_ELEMENTS))
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
    skipped = gw.server.sender.skipped["noise"]
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
        wait_until(lambda: gw.server.sender.skipped["noise"] > skipped, 40, "the stalled client to skip frames")
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


def test_a_node_that_does_not_run_a_camera_redirects_rtsp_clients_to_the_one_that_does(gw, tmp_path, server_errors):
    """A server stands for a cluster node where ``cam`` runs elsewhere (on a second server, the owner): it
    answers DESCRIBE and SETUP with 302 to the owner, only once the client proved it may view the camera, with
    the login its user hands on for the camera in the Location. The owner does not know that login yet and
    looks it up once. FFmpeg (which from libavformat 62.12.103 on does not send the URL's own credentials to
    the host a redirect names) and GStreamer follow the redirect and decode the owner's stream."""
    carol = ("carol", "for cam/only")  # what alice hands on for cam: may view cam alone
    handed, looked_up, broken = [], [], []

    def here_users(name):
        user = gw.users.get(name)

        async def hand_on(camera):
            if broken:
                raise OSError("the shared state is unreachable")
            handed.append((name, camera))
            return carol

        return None if user is None else dataclasses.replace(user, hand_on=hand_on if name == ALICE[0] else None)

    known = dict(gw.users)  # the owner's users: carol only once looked up

    async def look_up(name):
        looked_up.append(name)
        if name == carol[0]:
            known[name] = RtspUser(name, ha1(*carol), lambda camera: camera == "cam")

    with (extra_server(gw, known.get, look_up=look_up) as (_, owner_port),
          extra_server(gw, here_users, owner_url=lambda camera: f"rtsp://127.0.0.1:{owner_port}"
                       if camera == "cam" else None) as (here, port)):
        elsewhere = gw.url("cam", port=port)
        there = f"rtsp://carol:for%20cam%2Fonly@127.0.0.1:{owner_port}/cam"  # the login as URL user info
        with RawClient(port) as client:
            options = client.request("OPTIONS", elsewhere)  # answered without credentials: tells nothing
            assert options.status == 200 and "location" not in options.headers
            anonymous = client.request("DESCRIBE", elsewhere)
            assert anonymous.status == 401 and "location" not in anonymous.headers
            bob = client.request("DESCRIBE", elsewhere, credentials=BOB)  # may not view cam: not told where it is
            assert bob.status == 403 and "location" not in bob.headers
        assert handed == []
        with RawClient(port) as client:
            moved = client.request("DESCRIBE", elsewhere, {"Accept": "application/sdp"}, ALICE)
            assert moved.status == 302 and moved.headers["location"] == there, moved
            setup = client.request("SETUP", f"{elsewhere}/trackID=0", {"Transport": "RTP/AVP/TCP;unicast"}, ALICE)
            assert setup.status == 302 and setup.headers["location"] == there + "/trackID=0", setup
            assert client.request("DESCRIBE", gw.url("noise", port=port), credentials=ALICE).status == 200  # runs here
            assert client.request("DESCRIBE", gw.url("nowhere", port=port), credentials=ALICE).status == 404
        assert handed == [(ALICE[0], "cam")] * 2 and looked_up == []
        assert here.sessions("cam") == 0

        # FFmpeg (PyAV) follows the 302 and logs in to the owner with the login of the Location,
        # which the owner looks up (it was made "elsewhere") before it answers
        began = time.monotonic()
        frames = ffmpeg_frames(gw.url("cam", port=port, credentials=ALICE), "tcp", 20)
        redirected = time.monotonic() - began
        check_pictures(frames, gw.sources["cam"], 20)
        assert looked_up == [carol[0]] and carol[0] in known
        began = time.monotonic()
        ffmpeg_frames(gw.url("cam", credentials=ALICE), "tcp", 20)
        direct = time.monotonic() - began
        print(f"\nRTSP 302: FFmpeg decoded 20 frames in {redirected:.2f} s through the redirect, {direct:.2f} s direct")
        with RawClient(owner_port) as client:  # the handed-on login views cam and nothing else
            assert client.request("DESCRIBE", gw.url("noise", port=owner_port), credentials=carol).status == 403

        # GStreamer's rtspsrc follows it too, with its credentials in user-id/user-pw
        if available(gstreamer_elements_missing(GST_ELEMENTS)):
            out = tmp_path / "frames.bgr"
            result = subprocess.run([SYSTEM_PYTHON, "-c", GST_CLIENT, elsewhere, "tcp", *ALICE, "20", str(out)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr[-2000:]
            check_pictures(list(np.fromfile(out, np.uint8).reshape(-1, HEIGHT, WIDTH, 3)), gw.sources["cam"], 20)
        assert here.sessions("cam") == 0

        # a login that cannot be made (the shared state down, say) is a 503 to come back, never a bare redirect
        broken.append(True)
        with RawClient(port) as client:
            refused = client.request("DESCRIBE", elsewhere, credentials=ALICE)
            assert refused.status == 503 and "location" not in refused.headers and "retry-after" in refused.headers
    wait_until(lambda: gw.sessions("cam") == 0, message="the redirected sessions to end")
