"""HTTP connections under caps and a request-head deadline (issue 14): 300 half-open connections
stayed open for 60 s, with no header timeout and no connection cap. uvicorn runs the listener
the way ``serve`` does (gateway/api/connections.py) over a small app; clients are raw sockets from
several loopback addresses."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from live_support import ThreadedServer
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.api.connections import listener_settings
from gateway.config import Listen
from gateway.limits import Caps, Ledger

pytestmark = pytest.mark.realtime


class Listener:
    """``/`` answers at once, ``/slow`` once :attr:`release` is set; ``started`` counts ``/slow`` calls."""

    def __init__(self, **listen) -> None:
        self.listen = Listen(**listen)
        self.ledger = Ledger("http", "connections", Caps(self.listen.max_connections,
                                                          self.listen.max_connections_per_address))
        self.release = threading.Event()
        self.started = 0

        async def hello(request):
            return PlainTextResponse("hello\n")

        async def slow(request):
            self.started += 1
            await run_in_threadpool(self.release.wait, 30)
            return PlainTextResponse("slow\n")

        app = Starlette(routes=[Route("/", hello), Route("/slow", slow)])
        self.server = ThreadedServer(app, **listener_settings(self.listen, self.ledger))
        self.port = self.server.port

    def connect(self, source: str) -> socket.socket:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def wait(self, predicate, message: str) -> None:
        deadline = time.monotonic() + 20
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {message}"
            time.sleep(0.02)

    def close(self) -> None:
        self.release.set()
        self.server.close()


@pytest.fixture
def listener_with():
    made = []

    def make(**listen) -> Listener:
        made.append(Listener(**listen))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


def response(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of the next response on ``sock``; (0, b"") if it is closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def get(sock: socket.socket, path: str = "/") -> tuple[int, bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
    return response(sock)


def test_a_connection_must_send_each_request_head_in_time(listener_with):
    listener = listener_with(head_timeout_s=1.0, keep_alive_s=30)
    quiet = listener.connect("127.0.0.2")  # connects and says nothing
    trickle = listener.connect("127.0.0.3")  # a head that never ends, one header a fifth of a second
    kept = listener.connect("127.0.0.4")  # a whole request, then the next head trickles
    sockets = [quiet, trickle, kept]
    try:
        assert get(kept) == (200, b"hello\n")
        trickle.sendall(b"GET / HTTP/1.1\r\nHost: gateway\r\n")
        kept.sendall(b"GET / HTTP/1.1\r\n")
        started, answers = time.monotonic(), {}
        while len(answers) < 3:
            assert time.monotonic() - started < 15, f"still open after 15 s: {answers}"
            for name, sock in (("quiet", quiet), ("trickle", trickle), ("kept", kept)):
                if name in answers:
                    continue
                sock.settimeout(0.2)
                try:
                    answers[name] = response(sock)
                except TimeoutError:
                    if name != "quiet":
                        sock.sendall(b"X-More: header\r\n")  # does not extend the deadline
        late = (408, json.dumps({"error": "no complete request head within 1 s"}).encode())
        assert answers == {"quiet": late, "trickle": late, "kept": late}
        assert time.monotonic() - started >= 0.5
        for sock in sockets:
            sock.settimeout(10)
            assert closed(sock)
        with listener.connect("127.0.0.5") as fresh:  # and the listener still serves
            assert get(fresh) == (200, b"hello\n")
        listener.wait(lambda: listener.ledger.held == 0, "every connection to be given back")
        assert dict(listener.ledger.closed) == {"head_timeout": 3}
    finally:
        for sock in sockets:
            sock.close()


def test_connection_caps_per_address_and_in_all_and_who_makes_room(listener_with):
    listener = listener_with(max_connections=4, max_connections_per_address=2, head_timeout_s=60, keep_alive_s=60)
    sockets = []

    def connect(source: str, held: int | None = None) -> socket.socket:
        sockets.append(listener.connect(source))
        if held is not None:
            listener.wait(lambda: listener.ledger.held == held, f"{held} connections held")
        return sockets[-1]

    try:
        oldest = connect("127.0.0.2", 1)
        for held, source in ((2, "127.0.0.2"), (3, "127.0.0.3"), (4, "127.0.0.3")):  # four half-open: all taken
            connect(source, held)
        over = connect("127.0.0.2")  # its address is at its cap: refused, nobody displaced
        status, body = response(over)
        assert (status, json.loads(body)) == (429, {"error": "too many connections from your address (at most 2)",
                                                    "limit": "connections_per_address"})
        assert closed(over)
        newcomer = connect("127.0.0.4")  # the oldest connection still waiting for a head makes room
        assert get(newcomer) == (200, b"hello\n")
        assert closed(oldest)
        for index, source in enumerate(("127.0.0.5", "127.0.0.5", "127.0.0.6", "127.0.0.6")):
            busy = connect(source)  # each displaces a waiting one (the newcomer too, idle after its answer)
            busy.sendall(b"GET /slow HTTP/1.1\r\nHost: gateway\r\n\r\n")
            listener.wait(lambda n=index + 1: listener.started == n, "the slow request to begin")
        late = connect("127.0.0.7")  # every connection is busy with a request: nobody to displace
        status, body = response(late)
        assert (status, json.loads(body)["limit"]) == (503, "connections")
        assert json.loads(body)["error"] == "the gateway has all the connections it takes (4); try again later"
        assert closed(late)
        listener.release.set()
        assert [response(sock) for sock in sockets[-5:-1]] == [(200, b"slow\n")] * 4
        assert dict(listener.ledger.refused) == {"connections_per_address": 1, "connections": 1}
        assert dict(listener.ledger.closed) == {"evicted": 5}
    finally:
        for sock in sockets:
            sock.close()


def test_at_the_global_cap_the_flooding_address_makes_room_not_a_lone_client(listener_with):
    """The lone client is the oldest waiting connection, yet the one displaced is the flooder's:
    a viewer or officer slow to send its request is not cut off by someone else's many connections."""
    listener = listener_with(max_connections=4, max_connections_per_address=3, head_timeout_s=60, keep_alive_s=60)
    sockets = []
    try:
        lone = listener.connect("127.0.0.9")
        sockets.append(lone)
        listener.wait(lambda: listener.ledger.held == 1, "the lone client held")
        for held in (2, 3, 4):
            sockets.append(listener.connect("127.0.0.2"))
            listener.wait(lambda h=held: listener.ledger.held == h, f"{held} connections held")
        newcomer = listener.connect("127.0.0.3")
        sockets.append(newcomer)
        assert get(newcomer) == (200, b"hello\n")
        assert closed(sockets[1])  # the flooder's oldest went
        assert get(lone) == (200, b"hello\n")  # the lone client, older still, is served
        assert dict(listener.ledger.closed) == {"evicted": 1}
    finally:
        for sock in sockets:
            sock.close()
