"""Hostile clients all at once, over loopback (issue 14): the gateway as ``serve`` runs it, one file
camera, while

* 200 RTSP connections from 127.0.0.2-9 (25 an address) are held open, kept busy with
  unauthenticated OPTIONS and reopened whenever the gateway closes them;
* 200 half-open HTTP connections from the same addresses (half say nothing, half send a request
  head that never ends), reopened likewise;
* WHEP offers that never connect are posted from 127.0.0.10-13 with two viewer identities'
  tokens, and with a guessed token from 127.0.0.14;

a viewer at 127.0.0.20, playing over RTSP since before the flood, must keep receiving frames (its
RTP packets are counted), a second one at 127.0.0.21 must be able to join during the flood, and an
officer at 127.0.0.20 must get every API answer. The RTSP caps are the defaults (16 connections an
address, 128 in all); HTTP and WHEP caps are set lower than the defaults so that, with these
numbers, every kind of cap is met. The figures (``-s`` prints them) are in docs/access.md.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import http.client
import json
import os
import re
import resource
import selectors
import socket
import statistics
import threading
import time

import httpx
import pytest
from peers import require
from rtsp_harness import RawClient, rtp_fields
from serve_harness import Running
from whep_harness import viewer_offer

from gateway.config import DEFAULT

pytestmark = [pytest.mark.load, pytest.mark.realtime]

CLIP = DEFAULT.parent / "samples" / "vtest-10s.mp4"  # 10 fps
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 10)]
OFFERERS = [f"127.0.0.{i}" for i in range(10, 14)]
VIEWER, LATECOMER = "127.0.0.20", "127.0.0.21"
PER_ADDRESS = 25  # connections each attacking address tries to hold, RTSP and HTTP each
FLOOD_SECONDS = 12.0
SETTINGS = {"rtsp": {"port": 0},
            "listen": {"host": "127.0.0.1", "port": 0, "max_connections": 128, "max_connections_per_address": 16},
            "whep": {"max_sessions": 20, "max_sessions_per_address": 6, "max_sessions_per_principal": 12}}


class Flood(threading.Thread):
    """Holds ``PER_ADDRESS`` RTSP and HTTP connections from each attacking address; any the gateway
    closes is opened again half a second later. Counts what the gateway answered, client side."""

    def __init__(self, rtsp_port: int, http_port: int) -> None:
        super().__init__(name="flood", daemon=True)
        self.ports = {"rtsp": rtsp_port, "http": http_port}
        self.slots = {(kind, address, i): None for kind in self.ports for address in ATTACKERS
                      for i in range(PER_ADDRESS)}
        self.reopen_at = dict.fromkeys(self.slots, 0.0)
        self.answers: collections.Counter[str] = collections.Counter()  # "rtsp 503", "http 408", "rtsp closed" ...
        self.opened = dict.fromkeys(self.slots, 0.0)
        self.lifetimes: dict[str, list[float]] = {kind: [] for kind in self.ports}  # connect to close, or to the end
        self.peak = 0  # most connections held at once
        self.halt = threading.Event()
        self.selector = selectors.DefaultSelector()

    def run(self) -> None:
        last_options = 0.0
        while not self.halt.is_set():
            now = time.monotonic()
            for slot, sock in self.slots.items():
                if sock is None and now >= self.reopen_at[slot]:
                    self._open(slot)
            self.peak = max(self.peak, sum(1 for s in self.slots.values() if s is not None))
            if now - last_options >= 1.0:  # unauthenticated keep-alives, as in the report
                last_options = now
                for (kind, _, i), sock in self.slots.items():
                    if sock is not None and kind == "rtsp":
                        self._send(sock, f"OPTIONS * RTSP/1.0\r\nCSeq: {i + 1}\r\n\r\n".encode())
            for key, _ in self.selector.select(timeout=0.05):
                self._read(key.data, key.fileobj)
        for slot, sock in self.slots.items():
            if sock is not None:
                self.lifetimes[slot[0]].append(time.monotonic() - self.opened[slot])
            self._close(slot)
        self.selector.close()

    def _open(self, slot) -> None:
        kind, address, i = slot
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((address, 0))
        if sock.connect_ex(("127.0.0.1", self.ports[kind])) not in (0, errno.EINPROGRESS):
            sock.close()
            self.reopen_at[slot] = time.monotonic() + 0.5
            return
        self.slots[slot], self.opened[slot] = sock, time.monotonic()
        self.selector.register(sock, selectors.EVENT_READ, slot)
        if kind == "http" and i % 2:
            self._send(sock, b"GET /api/whoami HTTP/1.1\r\nHost: gateway\r\n")  # and never the end of it

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except OSError:
            pass  # found closed when read

    def _read(self, slot, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        kind = slot[0]
        if data and not data.startswith((b"RTSP/1.0 503", b"HTTP/1.1 4", b"HTTP/1.1 5")):
            return  # an OPTIONS answered
        status = data.split(b" ", 2)[1].decode() if data else "closed"
        self.answers[f"{kind} {status}"] += 1
        self.lifetimes[kind].append(time.monotonic() - self.opened[slot])
        self._close(slot)
        self.reopen_at[slot] = time.monotonic() + 0.5

    def _close(self, slot) -> None:
        sock, self.slots[slot] = self.slots[slot], None
        if sock is not None:
            self.selector.unregister(sock)
            sock.close()


def offer_flood(http_port: int, tokens: list[str], offer: str, statuses: collections.Counter) -> None:
    """Offers that never connect: 10 from each offering address, alternating the tokens; and 15
    with a guessed token from 127.0.0.14."""

    async def post(address: str, headers: list[dict]) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=address)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{http_port}", timeout=30) as http:
            for header in headers:
                try:
                    response = await http.post("/whep/cam", content=offer,
                                               headers={"Content-Type": "application/sdp", **header})
                    statuses[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

    async def main() -> None:
        signed = [{"Authorization": f"Bearer {tokens[i % len(tokens)]}"} for i in range(10)]
        guessed = [{"Authorization": f"Bearer pgw_{'g' * 16}_{'0' * 64}"}] * 15
        await asyncio.gather(*(post(address, signed) for address in OFFERERS), post("127.0.0.14", guessed))

    asyncio.run(main())


class Viewer(threading.Thread):
    """An RTSP client from ``address`` playing the camera over TCP; counts whole frames (RTP marker bits)."""

    def __init__(self, port: int, address: str, credentials: tuple[str, str]) -> None:
        super().__init__(name=f"viewer {address}", daemon=True)
        self.client = RawClient(port, source=address)
        self.client.play(f"rtsp://127.0.0.1:{port}/cam", "RTP/AVP/TCP;unicast;interleaved=0-1", credentials)
        self.frames: list[float] = []  # arrival times
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        self.client.sock.settimeout(5)
        try:
            while not self.halt.is_set():
                frame = self.client.read_frame()
                if frame is not None and frame[0] == 0 and rtp_fields(frame[1])[0]:
                    self.frames.append(time.monotonic())
        except (OSError, EOFError) as exc:
            if not self.halt.is_set():
                self.error = exc

    def between(self, start: float, end: float) -> int:
        return sum(1 for t in self.frames if start <= t < end)

    def stop(self) -> None:
        self.halt.set()
        self.client.close()
        self.join(10)


def officer_calls(http_port: int, token: str, halt: threading.Event, calls: list[tuple[int, float]]) -> None:
    """GET /api/cameras twice a second from 127.0.0.20, each on a new connection: (status, seconds)."""
    while not halt.is_set():
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30, source_address=(VIEWER, 0))
        try:
            connection.request("GET", "/api/cameras", headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            response.read()
            calls.append((response.status, time.monotonic() - started))
        except OSError as exc:
            calls.append((0, time.monotonic() - started))
            print("officer call failed:", exc)
        finally:
            connection.close()
        halt.wait(0.5)


def metrics(running: Running) -> dict[str, float]:
    """The limit metrics, ``name{labels}`` -> value."""
    _, body = running.get("/metrics")
    wanted = ("privacy_gateway_limit_refusals_total", "privacy_gateway_connections_closed_total",
              "privacy_gateway_open_connections", "privacy_gateway_open_sessions", "privacy_gateway_auth_failures_total")
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+\{[^}]*\}) (\S+)$", body.decode(), re.MULTILINE)
            if m.group(1).startswith(wanted)}


def test_a_viewer_and_an_officer_are_served_through_a_flood_of_hostile_clients(tmp_path, openbao):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    require(None if hard >= 4096 else f"RLIMIT_NOFILE hard limit {hard}: the flood and the gateway need 4096")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    from keys.directory import KeyDirectory
    from keys.identity import PrivateIdentity

    with Running(tmp_path, openbao, {"cam": str(CLIP)}, **SETTINGS) as running:
        gateway, http_port, rtsp_port = running.gateway, running.port, running.gateway.rtsp_port
        KeyDirectory.open(running.config.keys_dir).add(PrivateIdentity.generate("mallory", ["viewer"]).public)
        gateway.access.store.grant("mallory", ["cam"])
        mallory, _ = gateway.access.store.issue("mallory", ["cam"], 3600.0, "test")
        credentials = tuple(running.viewer_token.split("_")[1:])
        deadline = time.monotonic() + 60
        while True:  # the camera's first frames make its rendition
            with RawClient(rtsp_port) as probe:
                if probe.request("DESCRIBE", f"rtsp://127.0.0.1:{rtsp_port}/cam", credentials=credentials).status == 200:
                    break
            assert time.monotonic() < deadline, "the camera never had a frame"
            time.sleep(0.5)
        offer = asyncio.run(viewer_offer())

        viewer = Viewer(rtsp_port, VIEWER, credentials)
        viewer.start()
        calm = time.monotonic()
        time.sleep(3)
        flood, offers, calls, halt = Flood(rtsp_port, http_port), collections.Counter(), [], threading.Event()
        officer = threading.Thread(target=officer_calls, args=(http_port, running.token, halt, calls))
        offerer = threading.Thread(target=offer_flood, args=(http_port, [running.viewer_token, mallory], offer, offers))
        started = time.monotonic()
        for thread in (flood, officer, offerer):
            thread.start()
        time.sleep(FLOOD_SECONDS / 2)
        latecomer = Viewer(rtsp_port, LATECOMER, credentials)  # must get in while every slot is contested
        latecomer.start()
        time.sleep(FLOOD_SECONDS / 2)
        ended = time.monotonic()
        during = metrics(running)
        open_files = len(os.listdir("/proc/self/fd"))  # the gateway's and the flood's, one process
        halt.set()
        flood.halt.set()
        for thread in (flood, officer, offerer):
            thread.join(60)
        for client in (viewer, latecomer):
            client.stop()
        held = {"rtsp connections": gateway.rtsp.connection_ledger.held, "whep sessions": gateway.whep.ledger.held}

    before_rate = viewer.between(calm, started) / (started - calm)
    during_rate = viewer.between(started, ended) / (ended - started)
    latencies = [seconds for _, seconds in calls]
    figures = {
        "viewer frames/s before, during the flood": [round(before_rate, 1), round(during_rate, 1)],
        "latecomer frames (joined halfway through)": latecomer.between(0, ended),
        "officer calls (statuses)": collections.Counter(status for status, _ in calls),
        "officer latency median, max (s)": [round(statistics.median(latencies), 3), round(max(latencies), 3)],
        "attacker connections held at most (client side)": flood.peak,
        "open files in the process (gateway and clients)": open_files,
        "attacker answers (client side)": dict(flood.answers),
        "longest an attacker connection stayed open, RTSP and HTTP (s)": [round(max(flood.lifetimes[kind]), 1)
                                                                           for kind in ("rtsp", "http")],
        "WHEP offers": dict(offers),
        "gateway metrics at the end of the flood": during,
        "held at the end": held,
    }
    print(json.dumps(figures, indent=1, default=str))

    assert viewer.error is None and latecomer.error is None, (viewer.error, latecomer.error)
    assert during_rate >= 0.3 * before_rate > 0, figures
    assert latecomer.between(0, ended) > 0, "a viewer could not join during the flood"
    assert calls and all(status == 200 for status, _ in calls), figures
    # every cap met, and none of them exceeded
    refused = lambda entry, limit: during.get(f'privacy_gateway_limit_refusals_total{{entry="{entry}",limit="{limit}"}}', 0)
    closed = lambda entry, why: during.get(f'privacy_gateway_connections_closed_total{{entry="{entry}",reason="{why}"}}', 0)
    for entry in ("rtsp", "http"):
        assert refused(entry, "connections_per_address") > 0, (entry, figures)
        assert closed(entry, "evicted") > 0, (entry, figures)
    # none held on for long: closed at the login or head deadline (5 s, 10 s), or displaced sooner
    assert max(flood.lifetimes["rtsp"]) < 5 + 5 and max(flood.lifetimes["http"]) < 10 + 5, figures
    assert closed("http", "head_timeout") > 0, figures
    assert during['privacy_gateway_open_connections{entry="rtsp"}'] <= 128
    assert during['privacy_gateway_open_connections{entry="http"}'] <= 128
    # WHEP: 40 signed offers fill the 20 sessions; which cap refuses each of the other 20 depends on
    # their order. The 15 guessed tokens: 401, and 429 once their address has failed 10 times.
    whep_refused = sum(v for k, v in during.items() if k.startswith('privacy_gateway_limit_refusals_total{entry="whep"'))
    assert during['privacy_gateway_open_sessions{entry="whep"}'] == offers["201"] == 20 == whep_refused, figures
    assert (offers["401"], offers["429"] + offers["503"]) == (10, 5 + 20), offers
