"""What one RTSP client may hold (issue 14): connections per address and in all, the login deadline,
sessions per principal and per address. Each test replays the attack, from several loopback
addresses where the caps are per address (see tests/rtsp_harness.py)."""

from __future__ import annotations

import time

from rtsp_harness import ALICE, BOB, RawClient, clip, extra_server, gw, server_errors  # noqa: F401  (fixtures)

from gateway.api.metrics import Metrics

TCP = {"Transport": "RTP/AVP/TCP;unicast"}


def counts(harness, ledger) -> tuple[int, dict, dict]:
    """(held, refused, closed) of a ledger, read on the server's loop."""

    async def read():
        return ledger.held, dict(ledger.refused), dict(ledger.closed)

    return harness.run(read())


def options(client: RawClient) -> int:
    return client.request("OPTIONS", "*").status


def test_connections_that_do_not_log_in_are_closed_whatever_they_send(gw, server_errors):
    """Issue 14: idle connections kept alive with unauthenticated OPTIONS held every slot for 88 s."""
    with (extra_server(gw, auth_timeout=1) as (server, port), RawClient(port) as idle, RawClient(port) as guesser,
          RawClient(port) as viewer):
        url = f"rtsp://127.0.0.1:{port}/cam"
        assert viewer.request("DESCRIBE", url, credentials=ALICE).status == 200
        started = time.monotonic()
        closed = set()
        while len(closed) < 2:
            assert time.monotonic() - started < 15, "a connection that never logged in is still open"
            for name, client, credentials in (("idle", idle, None), ("guesser", guesser, (ALICE[0], "guess"))):
                if name in closed:
                    continue
                try:  # OPTIONS, and wrong passwords, keep nothing open
                    status = client.request("OPTIONS" if credentials is None else "DESCRIBE", url,
                                            credentials=credentials).status
                    assert status == (200 if credentials is None else 401)
                except (EOFError, ConnectionError):
                    closed.add(name)
            time.sleep(0.2)
        assert time.monotonic() - started >= 0.5
        assert options(viewer) == 200  # logged in: kept, though it has no session either
        held, _, reasons = counts(gw, server.connection_ledger)
        assert reasons == {"auth_timeout": 2} and held == 1


def test_connection_caps_per_address_and_in_all_and_who_makes_room(gw, server_errors):
    with extra_server(gw, max_connections=4, max_connections_per_address=2, auth_timeout=60) as (server, port):
        url = f"rtsp://127.0.0.1:{port}/cam"
        first, second = RawClient(port, source="127.0.0.2"), RawClient(port, source="127.0.0.2")
        others = [RawClient(port, source="127.0.0.3") for _ in range(2)]
        clients = [first, second, *others]
        try:
            for client in clients:  # four connections that have not logged in: every slot taken
                assert options(client) == 200
            with RawClient(port, source="127.0.0.2") as third:  # its address is at its cap: refused, nobody displaced
                refused = third.read_response()
                assert refused.status == 503 and int(refused.headers["retry-after"]) > 0
                assert refused.body == b"too many connections from your address (at most 2)\n"
                assert third.is_closed()
            newcomer = RawClient(port, source="127.0.0.4")  # the oldest one not logged in makes room
            clients.append(newcomer)
            assert newcomer.request("DESCRIBE", url, credentials=ALICE).status == 200
            assert first.is_closed(), "the oldest connection that never logged in should have made room"
            for client in (second, *others):
                assert client.request("DESCRIBE", url, credentials=ALICE).status == 200
            with RawClient(port, source="127.0.0.5") as late:  # all four logged in: nobody to displace
                refused = late.read_response()
                assert refused.status == 503 and b"all the connections it takes (4)" in refused.body
                assert late.is_closed()
            assert all(options(client) == 200 for client in (second, *others, newcomer))
            held, refusals, reasons = counts(gw, server.connection_ledger)
            assert (held, refusals, reasons) == (4, {"connections_per_address": 1, "connections": 1}, {"evicted": 1})
        finally:
            for client in clients:
                client.close()


def test_session_caps_per_principal_and_per_address(gw, server_errors):
    """Issue 14: one viewer token set up all 64 sessions over one connection."""
    options_ = {"max_sessions": 10, "max_sessions_per_principal": 2, "max_sessions_per_address": 3}
    with (extra_server(gw, **options_) as (server, port), RawClient(port) as alice, RawClient(port) as bob,
          RawClient(port, source="127.0.0.2") as elsewhere):
        cam, noise = f"rtsp://127.0.0.1:{port}/cam", f"rtsp://127.0.0.1:{port}/noise"
        sessions = [alice.request("SETUP", cam + "/trackID=0", TCP, ALICE) for _ in range(2)]
        assert [s.status for s in sessions] == [200, 200]
        over = alice.request("SETUP", cam + "/trackID=0", TCP, ALICE)
        assert (over.status, over.body) == (453, b"too many sessions for alice (at most 2)\n")
        assert bob.request("SETUP", noise + "/trackID=0", TCP, BOB).status == 200  # the address's third
        over = bob.request("SETUP", noise + "/trackID=0", TCP, BOB)
        assert (over.status, over.body) == (453, b"too many sessions from your address (at most 3)\n")
        assert elsewhere.request("SETUP", noise + "/trackID=0", TCP, BOB).status == 200  # another address
        first = sessions[0].headers["session"].split(";")[0]
        assert alice.request("TEARDOWN", cam + "/", {"Session": first}, ALICE).status == 200  # gives its place back
        assert alice.request("SETUP", cam + "/trackID=0", TCP, ALICE).status == 200
        held, refusals, _ = counts(gw, server.session_ledger)
        assert (held, refusals) == (4, {"sessions_per_principal": 1, "sessions_per_address": 1})
    assert counts(gw, server.session_ledger)[0] == 0  # every place given back with the connections


def test_the_caps_are_counted_in_metrics(gw):
    with extra_server(gw, max_connections_per_address=1) as (server, port), RawClient(port) as client:
        assert options(client) == 200
        with RawClient(port) as refused:
            assert refused.read_response().status == 503
        metrics = Metrics(list, ledgers=lambda: [server.connection_ledger, server.session_ledger])
        text = gw.run(_render(metrics))
    assert 'privacy_gateway_open_connections{entry="rtsp"} 1.0' in text
    assert 'privacy_gateway_open_sessions{entry="rtsp"} 0.0' in text
    assert 'privacy_gateway_limit_refusals_total{entry="rtsp",limit="connections_per_address"} 1.0' in text


async def _render(metrics: Metrics) -> str:
    return metrics.render().decode()
