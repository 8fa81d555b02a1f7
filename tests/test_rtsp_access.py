"""Who may pull what over RTSP, and a server that survives its clients: digest authentication,
throttling, session keep-alive and cap, malformed and fuzzed requests (see tests/rtsp_harness.py)."""

from __future__ import annotations

import base64
import random
import re
import secrets
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.egress.rtsp import MAX_HEAD
from rtsp_harness import (  # noqa: F401  (fixtures)
    ALICE, BOB, FPS, HEIGHT, METHODS, OK_STATUSES, REALM, TICKS, WIDTH, Gateway, RawClient, Response, answer,
    check_pictures, clip, compose, digest, extra_server, ffmpeg_frames, ffmpeg_options, gw, ha1, line_text, read_code,
    rtp_fields, server_errors, starts_keyframe, udp_pair, wait_until,
)


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
                headers["Authorization"] = digest(credentials, method, uri, challenge, qop=auth != "valid-no-qop",
                                                  nc=turn + 1)
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


def test_a_captured_digest_header_does_not_replay_on_another_connection(gw):
    """Issue 14: a captured Authorization header replayed from the same address for 5 minutes. A
    nonce is now bound to its TCP connection: on another one it is stale (a new challenge)."""
    with RawClient(gw.port) as client:
        client.challenge = client.request("DESCRIBE", gw.url("cam")).headers["www-authenticate"]
        captured = digest(ALICE, "DESCRIBE", gw.url("cam"), client.challenge)
        client.cseq += 1
        client.send(f"DESCRIBE {gw.url('cam')} RTSP/1.0\r\nCSeq: {client.cseq}\r\n"
                    f"Authorization: {captured}\r\n\r\n".encode())
        assert client.read_response().status == 200  # on its own connection it works
    with RawClient(gw.port) as thief:
        thief.send(f"DESCRIBE {gw.url('cam')} RTSP/1.0\r\nCSeq: 1\r\nAuthorization: {captured}\r\n\r\n".encode())
        response = thief.read_response()
        assert response.status == 401 and "stale=true" in response.headers["www-authenticate"]


def test_a_digest_nonce_count_that_does_not_increase_is_a_replay(gw):
    """Issue 14: within its own connection a captured header (qop=auth) could be sent again. Its nonce
    count must now rise with every request on the nonce; a repeat is a failed login and a fresh challenge."""
    gw.failures.clear()
    with RawClient(gw.port) as client:
        client.challenge = client.request("DESCRIBE", gw.url("cam")).headers["www-authenticate"]

        def describe(authorization: str):
            client.cseq += 1
            client.send(f"DESCRIBE {gw.url('cam')} RTSP/1.0\r\nCSeq: {client.cseq}\r\n"
                        f"Authorization: {authorization}\r\n\r\n".encode())
            return client.read_response()

        first = digest(ALICE, "DESCRIBE", gw.url("cam"), client.challenge, nc=1)
        assert describe(first).status == 200
        for replay in (first, digest(ALICE, "DESCRIBE", gw.url("cam"), client.challenge, nc=1)):
            refused = describe(replay)  # the same header, or a new one with the same count
            assert refused.status == 401 and "stale=true" in refused.headers["www-authenticate"]
        assert describe(digest(ALICE, "DESCRIBE", gw.url("cam"), client.challenge, nc=3)).status == 200  # counts may skip
        assert describe(digest(ALICE, "DESCRIBE", gw.url("cam"), client.challenge, nc=2)).status == 401
        assert describe(digest(ALICE, "DESCRIBE", gw.url("cam"), client.challenge, qop=False)).status == 200  # no count
    assert gw.failures == [("127.0.0.1", "alice", "replayed nonce count")] * 3
