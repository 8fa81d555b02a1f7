"""ICE confined (issue 14): candidates only on the configured addresses, peers' candidates only in the
allowed networks, for WHEP and WHIP alike.

The unit tests take :func:`gateway.webrtc.filter_offer` and :class:`gateway.webrtc.IcePolicy` apart.
The live ones put a real aiortc peer against the real WHEP and WHIP servers over their HTTP app,
and a trap: a UDP socket on 127.0.0.90 (loopback, but not an address the gateway gathers on or
should ever talk to) named in the offer. Each live check also runs with the trap's network
allowed, and there the trap does receive STUN, so a check that saw nothing saw nothing because of
the policy, not because nothing could have arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest
from aioice import stun
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from starlette.applications import Starlette

from gateway.api.metrics import Metrics
from gateway.config import ConfigError, load_config
from gateway.egress import Rendition, WhepServer
from gateway.ingest import WhipServer, WhipSource
from gateway.webrtc import IcePolicy, filter_offer

TRAP_HOST = "127.0.0.90"
LOOPBACK_ONLY = IcePolicy(("127.0.0.1",), (ipaddress.ip_network("127.0.0.1/32"),))
DEFAULT = IcePolicy.for_listen("127.0.0.1")  # what a gateway on the default listen address gets
TRAP_ALLOWED = IcePolicy(("127.0.0.1",), (*DEFAULT.remote_networks, ipaddress.ip_network("127.0.0.0/8")))
SDP = {"Content-Type": "application/sdp"}
QUIET = 3.0  # seconds a trap must stay silent: a check to it would come within a few hundred ms


# --- the offer filter ------------------------------------------------------------------------------

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=candidate:1 1 udp 2130706431 192.0.2.10 5000 typ host\r\n"
    "a=candidate:2 1 udp 2130706431 127.0.0.90 5001 typ host\r\n"
    "a=candidate:3 1 udp 2130706431 4b1c2f3a-0d1e-4f00-9a7b-1234567890ab.local 5002 typ host\r\n"
    "a=candidate:4 1 udp 1694498815 198.51.100.7 5003 typ srflx raddr 192.0.2.10 rport 5000\r\n"
    "a=candidate:5 1 udp 2130706431 ::ffff:127.0.0.1 5004 typ host\r\n"
    "a=end-of-candidates\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n"
)


def candidate_hosts(offer: str) -> list[str]:
    return [line.split()[4] for line in offer.splitlines() if line.startswith("a=candidate:")]


def test_the_filter_drops_candidates_outside_the_networks_and_host_names_and_keeps_every_other_byte():
    policy = IcePolicy(None, (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.0/24")))
    filtered = filter_offer(OFFER, policy)
    assert candidate_hosts(filtered.sdp) == ["192.0.2.10", "198.51.100.7"]
    assert filtered.kept == 2 and filtered.ignored == Counter(network=2, hostname=1) and filtered.error is None
    # what is left is the offer minus those lines and a=end-of-candidates, CRLFs and all
    dropped = [line for line in OFFER.splitlines(keepends=True)
               if "127.0.0" in line or ".local" in line or line.startswith("a=end-of-candidates")]
    assert filtered.sdp == "".join(line for line in OFFER.splitlines(keepends=True) if line not in dropped)


def test_an_offer_that_loses_nothing_is_passed_on_unchanged_end_of_candidates_included():
    everything = IcePolicy(None, (ipaddress.ip_network("0.0.0.0/0"),))
    offer = "\n".join(line for line in OFFER.split("\r\n") if ".local" not in line)  # LF line ends this time
    filtered = filter_offer(offer, everything)
    assert filtered.sdp == offer and filtered.kept == 4 and not filtered.ignored


def test_ipv4_mapped_addresses_are_judged_as_the_ipv4_address_they_carry():
    policy = IcePolicy(None, (ipaddress.ip_network("192.0.2.0/24"),))
    assert policy.allows("::ffff:192.0.2.9") and not policy.allows("::ffff:127.0.0.1")
    assert not IcePolicy().allows("::ffff:127.0.0.90")  # the default refuses loopback, mapped or not
    assert IcePolicy(None, (ipaddress.ip_network("127.0.0.1/32"),)).allows("::ffff:127.0.0.1")


def test_an_offer_whose_candidates_are_all_outside_is_refused_unless_a_host_name_may_still_connect():
    only_trap = OFFER.replace("192.0.2.10", "127.0.0.91").replace("198.51.100.7", "127.0.0.92")
    lines = [line for line in only_trap.split("\r\n") if ".local" not in line]
    elsewhere = IcePolicy(None, (ipaddress.ip_network("10.0.0.0/8"),))
    filtered = filter_offer("\r\n".join(lines), elsewhere)
    assert filtered.kept == 0 and filtered.ignored == Counter(network=4)
    assert filtered.error == ("no usable ICE candidate: the offer's 4 candidates are outside the networks the "
                              "gateway accepts (webrtc.remote_networks)")
    # an mDNS name is not contacted, but its peer connects through the checks it sends (peer-reflexive)
    with_name = filter_offer(only_trap, elsewhere)
    assert with_name.kept == 0 and with_name.ignored == Counter(network=4, hostname=1) and with_name.error is None
    # an offer with no candidate at all has nothing to refuse
    bare = filter_offer("".join(l for l in OFFER.splitlines(keepends=True) if "candidate" not in l), LOOPBACK_ONLY)
    assert bare.kept == 0 and not bare.ignored and bare.error is None


def test_a_candidate_line_too_short_to_name_an_address_is_an_error():
    with pytest.raises(ValueError, match="^an ICE candidate line has fewer than 8 fields$"):
        filter_offer("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=candidate:1 1 udp 1 10.0.0.1\r\n", IcePolicy())


# --- the policy and its defaults -------------------------------------------------------------------

@pytest.mark.parametrize("address", ["192.0.2.2", "10.1.2.3", "8.8.8.8", "fd00::2", "2001:db8::1"])
def test_by_default_any_unicast_address_another_host_can_have_is_allowed(address):
    assert IcePolicy().allows(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.90", "::1", "169.254.1.1", "fe80::1", "fe80::1%eth0",
                                     "224.0.0.251", "ff02::fb", "0.0.0.0", "::", "255.255.255.255", "240.0.0.1",
                                     "::ffff:127.0.0.1", "host.local", "example.com", ""])
def test_by_default_loopback_link_local_multicast_unspecified_reserved_and_names_are_refused(address):
    assert not IcePolicy().allows(address)


def test_a_gateway_on_loopback_gathers_on_loopback_and_talks_to_this_hosts_addresses_only():
    policy = IcePolicy.for_listen("127.0.0.1")
    assert policy.local_addresses == ("127.0.0.1",)
    assert policy.allows("127.0.0.1") and policy.allows("::1")
    assert not policy.allows(TRAP_HOST)  # 127.0.0.0/8 beyond 127.0.0.1 leads only to other services here
    assert not policy.allows("8.8.8.8") and not policy.allows("10.99.99.99")
    from aioice.ice import get_host_addresses

    assert all(policy.allows(address) for address in get_host_addresses(True, True))  # what aiortc peers here name


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_a_gateway_on_every_interface_gathers_on_every_interface_with_the_default_networks(host):
    policy = IcePolicy.for_listen(host)
    assert policy == IcePolicy(None, None)
    assert policy.allows("192.0.2.50") and not policy.allows("127.0.0.1")


def test_a_specific_address_or_host_name_is_gathered_on_and_the_configuration_wins_over_both():
    assert IcePolicy.for_listen("192.0.2.2") == IcePolicy(("192.0.2.2",), None)
    assert set(IcePolicy.for_listen("localhost").local_addresses) <= {"127.0.0.1", "::1"}
    networks = (ipaddress.ip_network("10.0.0.0/8"),)
    assert IcePolicy.for_listen("127.0.0.1", ["192.0.2.2"], networks) == IcePolicy(("192.0.2.2",), networks)
    with pytest.raises(ValueError, match="listen.host 'no-such-host.invalid' does not resolve"):
        IcePolicy.for_listen("no-such-host.invalid")


# --- configuration ---------------------------------------------------------------------------------

def write(tmp_path, text):
    path = tmp_path / "gateway.yaml"
    path.write_text("cameras: {a: {source: rtsp://x}}\n" + text)
    return path


def test_the_webrtc_section_is_read_and_its_defaults_follow_the_listen_address(tmp_path):
    config, _ = load_config(write(tmp_path, "webrtc: {local_addresses: ['127.0.0.1', '::1', '127.0.0.1'], "
                                            "remote_networks: [192.0.2.0/24, '2001:db8::/32', 127.0.0.1]}\n"))
    assert config.webrtc.local_addresses == ("127.0.0.1", "::1")
    assert config.webrtc.remote_networks == (ipaddress.ip_network("192.0.2.0/24"),
                                             ipaddress.ip_network("2001:db8::/32"), ipaddress.ip_network("127.0.0.1/32"))
    defaults, _ = load_config(write(tmp_path, ""))
    assert defaults.webrtc.local_addresses is None and defaults.webrtc.remote_networks is None


@pytest.mark.parametrize("text, message", [
    ("webrtc: {interfaces: [lo]}", "webrtc.interfaces: unknown key"),
    ("webrtc: {local_addresses: [eth0]}", "webrtc.local_addresses: 'eth0' is not an IP address"),
    ("webrtc: {local_addresses: ['0.0.0.0']}", "webrtc.local_addresses: 0.0.0.0 is not one address of this host"),
    ("webrtc: {local_addresses: []}", "webrtc.local_addresses: at least one address; leave it out to follow listen.host"),
    ("webrtc: {local_addresses: ['fe80::1']}", "webrtc.local_addresses: fe80::1: link-local IPv6 addresses cannot"),
    ("webrtc: {local_addresses: ['203.0.113.5']}", "webrtc.local_addresses: cannot gather on 203.0.113.5: "),
    ("webrtc: {remote_networks: [10.0.0.1/8]}", "webrtc.remote_networks: '10.0.0.1/8': 10.0.0.1/8 has host bits set"),
    ("webrtc: {remote_networks: [somewhere]}", "webrtc.remote_networks: 'somewhere': "),
    ("webrtc: {remote_networks: []}", "webrtc.remote_networks: at least one network; leave it out for the default"),
])
def test_bad_webrtc_settings_are_refused_with_the_field_path(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text + "\n"))
    assert message in str(error.value)


def test_ignored_candidates_are_counted_on_metrics_by_endpoint_and_reason():
    counts = {("whep", "network"): 2, ("whip", "hostname"): 1, ("whep", "peer_reflexive"): 3}
    text = Metrics(list, ice_ignored=lambda: counts).render().decode()
    assert 'privacy_gateway_ice_candidates_ignored_total{endpoint="whep",reason="network"} 2.0' in text
    assert 'privacy_gateway_ice_candidates_ignored_total{endpoint="whip",reason="hostname"} 1.0' in text
    assert 'privacy_gateway_ice_candidates_ignored_total{endpoint="whep",reason="peer_reflexive"} 3.0' in text


# --- live: real peers, real sockets ----------------------------------------------------------------

async def allow_everyone(request, camera):
    return None


@dataclass
class Endpoints:
    http: httpx.AsyncClient
    whep: WhepServer
    whip: WhipServer

    def server(self, kind: str):
        return self.whep if kind == "whep" else self.whip


@contextlib.asynccontextmanager
async def gateway(policy: IcePolicy | None):
    """A WHEP and a WHIP endpoint for camera ``cam`` confined by ``policy`` (None: the servers' default)."""
    rendition = Rendition("cam", "vp8", 160, 120, 10, bitrate=200_000)
    source = WhipSource("cam")
    source.start(lambda frame: None)
    whep = WhepServer(lambda camera, codec: rendition if (camera, codec) == ("cam", "vp8") else None,
                      allow_everyone, ice=policy)
    whip = WhipServer(lambda camera: source if camera == "cam" else None, allow_everyone, ice=policy)
    app = Starlette(routes=[*whep.routes, *whip.routes])
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
            yield Endpoints(http, whep, whip)
    finally:
        await whep.close()
        await whip.close()
        rendition.close()
        await asyncio.to_thread(source.stop)


class Peer:
    """An aiortc viewer (WHEP) or publisher (WHIP) whose offer can be doctored before it is sent."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if kind == "whep":
            self.pc.addTransceiver("video", direction="recvonly")
        else:
            self.pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        self.answer = ""

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def post(self, endpoints: Endpoints, offer: str) -> httpx.Response:
        response = await endpoints.http.post(f"/{self.kind}/cam", content=offer, headers=SDP)
        if response.status_code == 201:
            self.answer = response.text
        return response

    async def accept(self) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer, type="answer"))

    async def connected(self, timeout: float = 20) -> None:
        for _ in range(int(timeout / 0.05)):
            if self.pc.connectionState == "connected":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not connected: {self.pc.connectionState}")


def with_candidate(offer: str, host: str, port: int, only: bool = False) -> str:
    """``offer`` naming ``host:port`` as its first (highest-priority) candidate; ``only``: as its only one."""
    lines = offer.split("\r\n")
    if only:
        lines = [line for line in lines if not line.startswith("a=candidate:")]
    at = next(i for i, line in enumerate(lines) if line.startswith(("a=candidate:", "a=end-of-candidates")))
    lines.insert(at, f"a=candidate:trap 1 udp 2130706431 {host} {port} typ host")
    return "\r\n".join(lines)


class Trap(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.90 keeping the STUN messages it receives (and who sent them)."""

    def __init__(self) -> None:
        self.received: list[tuple[stun.Message, tuple]] = []
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> Trap:
        _, trap = await asyncio.get_running_loop().create_datagram_endpoint(cls, local_addr=(TRAP_HOST, 0))
        return trap

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        with contextlib.suppress(ValueError):
            self.received.append((stun.parse_message(data), addr))

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]

    async def wait(self, seconds: float) -> list:
        """What arrived within ``seconds``, returning as soon as something did."""
        for _ in range(int(seconds / 0.05)):
            if self.received:
                break
            await asyncio.sleep(0.05)
        return self.received

    def close(self) -> None:
        self.transport.close()


def answer_candidates(answer: str) -> list[tuple[str, str]]:
    return [(fields[4], fields[7]) for line in answer.splitlines() if line.startswith("a=candidate:")
            for fields in [line.split()]]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["whep", "whip"])
async def test_the_answer_names_candidates_on_the_configured_addresses_only(kind):
    """Default (the servers follow listen.host 127.0.0.1): loopback only, where aioice alone would
    offer every interface but loopback; unconfined (None), what aioice gathers shows up again."""
    for policy, expected in ((None, {"127.0.0.1"}), (IcePolicy(None, None), None)):
        async with gateway(policy) as endpoints:
            peer = Peer(kind)
            try:
                response = await peer.post(endpoints, await peer.offer())
                assert response.status_code == 201, response.text
                hosts = {host for host, kind_ in answer_candidates(peer.answer) if kind_ == "host"}
                if expected is not None:
                    assert hosts == expected
                    await peer.accept()
                    await peer.connected()  # and a peer on this host connects through it
                else:
                    from aioice.ice import get_host_addresses

                    assert hosts == set(get_host_addresses(True, True)) and "127.0.0.1" not in hosts
            finally:
                await peer.pc.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["whep", "whip"])
async def test_a_candidate_outside_the_networks_gets_no_stun_while_the_session_connects(kind):
    """The reported attack: an offer naming 127.0.0.90. Confined, the trap hears nothing while the
    peer connects through its own candidates; with 127.0.0.0/8 allowed, the gateway checks the trap."""
    for policy, heard in ((DEFAULT, False), (TRAP_ALLOWED, True)):
        trap = await Trap.open()
        async with gateway(policy) as endpoints:
            peer = Peer(kind)
            try:
                response = await peer.post(endpoints, with_candidate(await peer.offer(), TRAP_HOST, trap.port))
                assert response.status_code == 201, response.text
                await peer.accept()
                received = await trap.wait(10 if heard else QUIET)
                if heard:
                    assert received, "the unconfined gateway never checked the trap: this test proves nothing"
                    message, source = received[0]
                    assert message.message_method == stun.Method.BINDING and message.message_class == stun.Class.REQUEST
                    assert source[0] == "127.0.0.1"
                    assert endpoints.server(kind).ignored_candidates == Counter()
                else:
                    await peer.connected()
                    await asyncio.sleep(max(0.0, QUIET - 1))  # and stays silent once connected
                    assert trap.received == []
                    assert endpoints.server(kind).ignored_candidates == Counter(network=1)
            finally:
                await peer.pc.close()
                trap.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["whep", "whip"])
async def test_an_offer_naming_only_addresses_outside_the_networks_is_refused_and_nothing_is_sent(kind):
    trap = await Trap.open()
    try:
        async with gateway(LOOPBACK_ONLY) as endpoints:
            peer = Peer(kind)
            try:
                response = await peer.post(endpoints, with_candidate(await peer.offer(), TRAP_HOST, trap.port, only=True))
            finally:
                await peer.pc.close()
            assert response.status_code == 400
            assert response.text == ("no usable ICE candidate: the offer's 1 candidate is outside the networks "
                                     "the gateway accepts (webrtc.remote_networks)\n")
            assert endpoints.server(kind).ignored_candidates == Counter(network=1)
            if kind == "whip":
                assert endpoints.whip.publishers("cam") == 0  # the camera was not claimed
            assert await trap.wait(1.0) == []
    finally:
        trap.close()


async def check_from(trap: Trap, answer: str, offer: str) -> None:
    """Send the gateway a valid ICE connectivity check (right credentials) from the trap's socket."""
    def attribute(sdp: str, name: str) -> str:
        return next(line.split(":", 1)[1] for line in sdp.splitlines() if line.startswith(f"a={name}:"))

    host, port = next((fields[4], int(fields[5])) for line in answer.splitlines()
                      if line.startswith("a=candidate:") for fields in [line.split()])
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{attribute(answer, 'ice-ufrag')}:{attribute(offer, 'ice-ufrag')}"
    request.attributes["PRIORITY"] = 1853817087
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(attribute(answer, "ice-pwd").encode())
    request.add_fingerprint()
    trap.transport.sendto(bytes(request), (host, port))


@pytest.mark.asyncio
async def test_a_connectivity_check_from_outside_the_networks_is_not_answered():
    """Peer-reflexive candidates: a check with the right credentials from 127.0.0.90 gets no answer
    (and makes the gateway learn no candidate there); with 127.0.0.0/8 allowed it is answered."""
    for policy, answered in ((DEFAULT, False), (TRAP_ALLOWED, True)):
        trap = await Trap.open()
        async with gateway(policy) as endpoints:
            peer = Peer("whep")
            try:
                offer = await peer.offer()
                response = await peer.post(endpoints, offer)
                assert response.status_code == 201, response.text
                for _ in range(3):  # a lost datagram is retransmitted, as a real agent would
                    await check_from(trap, peer.answer, offer)
                    await asyncio.sleep(0.2)
                responses = [m for m, _ in await trap.wait(3.0 if answered else QUIET)
                             if m.message_class == stun.Class.RESPONSE]
                if answered:
                    assert responses and responses[0].attributes["XOR-MAPPED-ADDRESS"] == (TRAP_HOST, trap.port)
                else:
                    assert trap.received == []
                    assert endpoints.whep.ignored_candidates == Counter(peer_reflexive=1)  # once per address
            finally:
                await peer.pc.close()
                trap.close()


@pytest.mark.asyncio
async def test_a_peer_naming_only_mdns_host_names_still_connects_through_the_checks_it_sends():
    """Browsers name ``<uuid>.local`` instead of their addresses. The gateway does not resolve them,
    drops the offer's end-of-candidates so it keeps listening, and learns the peer's address from
    its checks (checked against the networks like any other)."""
    async with gateway(None) as endpoints:
        peer = Peer("whep")
        try:
            offer = await peer.offer()
            hosts = sorted(set(candidate_hosts(offer)))
            for number, host in enumerate(hosts):
                offer = offer.replace(f" {host} ", f" 0d6c1f2e-aaaa-4bbb-8ccc-{number:012d}.local ")
            assert "a=end-of-candidates" in offer and all(h.endswith(".local") for h in candidate_hosts(offer))
            response = await peer.post(endpoints, offer)
            assert response.status_code == 201, response.text
            await peer.accept()
            await peer.connected()
            assert endpoints.whep.ignored_candidates == Counter(hostname=len(candidate_hosts(offer)))
        finally:
            await peer.pc.close()
