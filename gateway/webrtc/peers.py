"""aiortc peer connections as the gateway sets them up, and the one place it reaches inside aiortc.

* :func:`configuration`: no ICE servers unless the operator names some (aiortc would otherwise
  add a public STUN server and contact it).
* :func:`route_keyframe_requests`: the gateway sends pre-encoded packets (one shared encoder per
  camera, see :mod:`gateway.egress.rendition`), so a viewer's keyframe request (RTCP PLI or FIR)
  must reach that shared encoder. aiortc turns such a request into ``sender._send_keyframe()``,
  which only affects frames aiortc encodes itself; there is no public hook, so this adapter
  replaces that one private method and refuses to run on an aiortc that no longer has it
  (``tests/test_whep.py`` sends a real PLI over a real connection to prove the route works).
* :func:`confine_ice`: gather host candidates only on the policy's local addresses, and answer
  no connectivity check from outside its remote networks (:mod:`gateway.webrtc.ice`). aiortc
  creates each peer connection's ICE agent (an aioice ``Connection``) itself and has no option
  for either (its maintainer says as much in aiortc issue #51); aioice enumerates every
  interface in ``gather_candidates`` and offers no filter (aioice issue #2 is open, and its
  maintainer declined an allow/block-list pull request, #57). So this adapter replaces two
  methods on each of the connection's own aioice ``Connection`` objects, reached through the
  ICE gatherer's private ``_connection``: ``get_component_candidates`` (handed the addresses to
  bind) and ``request_received`` (handed every STUN request with its source address). Nothing
  module-wide changes: two gateways, or a gateway and a test's own peers, in one process do not
  affect each other. It refuses to run when aiortc or aioice no longer have these
  (``tests/test_webrtc_ice.py`` checks the candidates and the packets on real sockets).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender

from .ice import PEER_REFLEXIVE, IcePolicy

_KEYFRAME_HOOK = "_send_keyframe"  # aiortc 1.9-1.16: RTCRtpSender._handle_rtcp_packet calls it on PLI/FIR
_ICE_AGENT = "_connection"  # aiortc 1.16: RTCIceGatherer's aioice Connection
_GATHER_HOOK = "get_component_candidates"  # aioice 0.13: gather_candidates hands it the host addresses
_CHECK_HOOK = "request_received"  # aioice 0.13: its StunProtocol hands it every STUN request


def configuration(ice_servers: Iterable[str] = ()) -> RTCConfiguration:
    """A peer connection configuration with exactly the operator's STUN/TURN URLs (none by default)."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in ice_servers])


def route_keyframe_requests(sender: RTCRtpSender, request_keyframe: Callable[[], None]) -> None:
    """Make the viewer's PLI/FIR on ``sender`` call ``request_keyframe`` instead of aiortc's own encoder."""
    if not callable(getattr(sender, _KEYFRAME_HOOK, None)):
        raise RuntimeError(f"aiortc's RTCRtpSender has no {_KEYFRAME_HOOK}(): keyframe requests cannot reach "
                           "the shared encoder with this aiortc version")
    setattr(sender, _KEYFRAME_HOOK, request_keyframe)


def confine_ice(pc: RTCPeerConnection, policy: IcePolicy, ignored: Counter) -> None:
    """Make ``pc`` gather only on ``policy.local_addresses`` and drop connectivity checks from
    outside ``policy.remote_networks``, counting each such source address once in
    ``ignored[PEER_REFLEXIVE]``. Call it after ``setRemoteDescription`` (which may add a transport)
    and before ``setLocalDescription`` (which gathers); the peer connection must come from
    :func:`configuration` (the ``all`` transport policy: host candidates are wanted)."""
    transports = {}
    for transceiver in pc.getTransceivers():
        transports[id(transceiver.sender.transport)] = transceiver.sender.transport
    if pc.sctp is not None:
        transports[id(pc.sctp.transport)] = pc.sctp.transport
    for dtls in transports.values():
        gatherer = dtls.transport.iceGatherer
        if gatherer.state != "new":
            raise RuntimeError("confine_ice: the peer connection has gathered its candidates already")
        agent = getattr(gatherer, _ICE_AGENT, None)
        if not all(callable(getattr(agent, hook, None)) for hook in (_GATHER_HOOK, _CHECK_HOOK)):
            raise RuntimeError(f"aiortc's ICE gatherer has no aioice connection with {_GATHER_HOOK}() and "
                               f"{_CHECK_HOOK}(): ICE cannot be confined with this aiortc/aioice version")
        _confine(agent, policy, ignored)


def _confine(agent, policy: IcePolicy, ignored: Counter) -> None:
    gather, answer = getattr(agent, _GATHER_HOOK), getattr(agent, _CHECK_HOOK)
    refused: set[str] = set()

    async def gather_on_local_addresses(component, addresses, *args, **kwargs):
        if policy.local_addresses is not None:
            addresses = list(policy.local_addresses)
        return await gather(component, addresses, *args, **kwargs)

    def answer_allowed(message, addr, *args, **kwargs):
        if not policy.allows(addr[0]):
            if addr[0] not in refused:
                refused.add(addr[0])
                ignored[PEER_REFLEXIVE] += 1
            return None
        return answer(message, addr, *args, **kwargs)

    setattr(agent, _GATHER_HOOK, gather_on_local_addresses)
    setattr(agent, _CHECK_HOOK, answer_allowed)
