"""The RTSP wire format and digest nonces, without a server: exact parser errors, fuzzing, nonce expiry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.egress.rtsp import Request, RtspError, RtspUser, parse_request
from gateway.egress.rtsp.digest import AuthFailure, Digest
from gateway.egress.rtsp.protocol import relocate, response
from rtsp_harness import ALICE, METHODS, REALM, digest, ha1, line_text



def test_nonces_expire():
    now = [1000.0]
    checker = Digest(REALM, clock=lambda: now[0])
    users = {"alice": RtspUser("alice", ha1(*ALICE), lambda camera: True)}.get
    uri = "rtsp://127.0.0.1:554/cam"

    challenge = checker.challenge("10.0.0.1")

    def request(nc: int) -> Request:
        return Request("DESCRIBE", uri, {"authorization": digest(ALICE, "DESCRIBE", uri, challenge, nc=nc)}, "1")

    assert checker.check(request(1), "10.0.0.1", users).name == "alice"
    with pytest.raises(AuthFailure) as other_address:
        checker.check(request(2), "10.0.0.2", users)
    assert other_address.value.stale and other_address.value.why is None
    now[0] += 299
    assert checker.check(request(2), "10.0.0.1", users).name == "alice"
    now[0] += 2
    with pytest.raises(AuthFailure) as expired:
        checker.check(request(3), "10.0.0.1", users)
    assert expired.value.stale and expired.value.why is None


def test_nonce_counts_must_rise_and_forgotten_counts_are_stale(monkeypatch):
    from gateway.egress.rtsp import digest as module

    monkeypatch.setattr(module, "_COUNTED_NONCES", 2)
    now = [1000.0]
    checker = Digest(REALM, clock=lambda: now[0])
    users = {"alice": RtspUser("alice", ha1(*ALICE), lambda camera: True)}.get
    uri = "rtsp://127.0.0.1:554/cam"

    def check(peer: str, nc: int, challenge: str | None = None):
        challenge = challenge or checker.challenge(peer)
        return checker.check(Request("DESCRIBE", uri, {"authorization": digest(ALICE, "DESCRIBE", uri, challenge, nc=nc)},
                                     "1"), peer, users)

    first = checker.challenge("10.0.0.1:1")
    assert check("10.0.0.1:1", 1, first).name == "alice"
    for nc in (1, 0):
        with pytest.raises(AuthFailure) as replay:
            check("10.0.0.1:1", nc, first)
        assert (replay.value.stale, replay.value.why) == (True, "replayed nonce count")
    assert check("10.0.0.1:1", 5, first).name == "alice"
    now[0] += 1  # two more nonces in use push the first one's count out: it is stale, never counted afresh
    assert check("10.0.0.2:1", 1).name == "alice"
    assert check("10.0.0.3:1", 1).name == "alice"
    with pytest.raises(AuthFailure) as forgotten:
        check("10.0.0.1:1", 6, first)
    assert (forgotten.value.stale, forgotten.value.why) == (True, None)
    assert check("10.0.0.1:1", 1).name == "alice"  # a new nonce for the same connection works


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


def test_relocate_keeps_path_and_query_and_drops_host_and_user_info():
    owner = "rtsp://gw-2.example:8554"
    assert relocate("rtsp://alice:pw@gw-1:8554/lobby%20cam/trackID=0?x=1", owner) == f"{owner}/lobby%20cam/trackID=0?x=1"
    assert relocate("RTSP://gw-1/cam", owner + "/") == f"{owner}/cam"
    assert relocate("rtsp://gw-1", owner) == f"{owner}/"
    with pytest.raises(RtspError, match="neither"):
        relocate("http://gw-1/cam", owner)
    assert response(302, "3", {"Location": f"{owner}/cam"}).startswith(b"RTSP/1.0 302 Moved Temporarily\r\nCSeq: 3\r\n")
