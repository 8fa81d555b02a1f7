"""aiortc peer connections as the gateway sets them up, and the one place it reaches inside aiortc.

* :func:`configuration`: no ICE servers unless the operator names some (aiortc would otherwise
  add a public STUN server and contact it).
* :func:`route_keyframe_requests`: the gateway sends pre-encoded packets (one shared encoder per
  camera, see :mod:`gateway.egress.rendition`), so a viewer's keyframe request (RTCP PLI or FIR)
  must reach that shared encoder. aiortc turns such a request into ``sender._send_keyframe()``,
  which only affects frames aiortc encodes itself; there is no public hook, so this adapter
  replaces that one private method and refuses to run on an aiortc that no longer has it
  (``tests/test_whep.py`` sends a real PLI over a real connection to prove the route works).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiortc import RTCConfiguration, RTCIceServer, RTCRtpSender

_KEYFRAME_HOOK = "_send_keyframe"  # aiortc 1.9-1.16: RTCRtpSender._handle_rtcp_packet calls it on PLI/FIR


def configuration(ice_servers: Iterable[str] = ()) -> RTCConfiguration:
    """A peer connection configuration with exactly the operator's STUN/TURN URLs (none by default)."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in ice_servers])


def route_keyframe_requests(sender: RTCRtpSender, request_keyframe: Callable[[], None]) -> None:
    """Make the viewer's PLI/FIR on ``sender`` call ``request_keyframe`` instead of aiortc's own encoder."""
    if not callable(getattr(sender, _KEYFRAME_HOOK, None)):
        raise RuntimeError(f"aiortc's RTCRtpSender has no {_KEYFRAME_HOOK}(): keyframe requests cannot reach "
                           "the shared encoder with this aiortc version")
    setattr(sender, _KEYFRAME_HOOK, request_keyframe)
