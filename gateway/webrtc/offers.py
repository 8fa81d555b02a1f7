"""SDP offers from WebRTC peers: what a viewer (WHEP) or a publisher (WHIP) must offer, and the codecs.

aiortc takes much of an offer for granted and fails deep inside negotiation, with whatever
exception its code hits first, when a field it relies on is missing. These checks run first and
raise ``ValueError`` with the reason, which the endpoints answer as 400 ``malformed SDP offer:
<reason>``. The gateway sends and takes two codecs: VP8 and H.264 constrained baseline with
packetization-mode 1 (what every WebRTC H.264 decoder takes and what aiortc negotiates).
"""

from __future__ import annotations

from typing import Literal

from aiortc import RTCRtpSender, sdp
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError

Codec = Literal["h264", "vp8"]
CODECS: tuple[Codec, ...] = ("h264", "vp8")  # order of preference when an offer allows both
CODEC_NAMES = {"h264": "H.264 (constrained baseline, packetization-mode 1)", "vp8": "VP8"}
MAX_OFFER_BYTES = 64 * 1024

# aiortc's SDP parser reports malformed input with whichever of these its code hits first
# (measured by mutating a valid offer); anything else is a bug and propagates.
SDP_PARSE_ERRORS = (ValueError, KeyError, IndexError, AttributeError, AssertionError, StopIteration, TypeError)
#: what aiortc raises when it cannot answer an offer that parsed
NEGOTIATION_ERRORS = (ValueError, InternalError, InvalidAccessError, InvalidStateError, OperationError)


def _parse(offer: str, tracks: bool = False) -> sdp.SessionDescription:
    if not offer.lstrip().startswith("v=0"):
        raise ValueError("it does not start with v=0")
    try:
        description = sdp.SessionDescription.parse(offer)
        for media in description.media if tracks else ():  # what aiortc reads when it makes the peer's tracks
            description.webrtc_track_id(media)
    except SDP_PARSE_ERRORS as exc:
        raise ValueError(f"cannot parse it ({type(exc).__name__})") from None
    return description


def _check_transport(media: sdp.MediaDescription) -> None:
    """ICE credentials, a DTLS fingerprint and rtcp-mux: aiortc assumes all three."""
    if not media.ice.usernameFragment or not media.ice.password:
        raise ValueError("ICE username fragment or password is missing")
    if not media.dtls or not media.dtls.fingerprints:
        raise ValueError("DTLS fingerprint is missing")
    if not media.rtcp_mux:
        raise ValueError("rtcp-mux is required")


def _codecs_of(media: sdp.MediaDescription) -> set[Codec]:
    found: set[Codec] = set()
    for codec in media.rtp.codecs:
        mime = codec.mimeType.lower()
        if mime == "video/vp8":
            found.add("vp8")
        elif mime == "video/h264" and is_baseline_h264(codec.parameters):
            found.add("h264")
    return found


def viewer_codecs(offer: str) -> set[Codec]:
    """The codecs a viewer's offer can receive from us (its first video section); ``ValueError``
    saying why if it is no viewer's offer."""
    description = _parse(offer)
    video = next((media for media in description.media if media.kind == "video"), None)
    if video is None:
        raise ValueError("no video media section")
    if video.direction not in (None, "recvonly", "sendrecv"):
        raise ValueError(f"the video section is {video.direction}, a viewer must receive")
    _check_transport(video)
    return _codecs_of(video)


def check_publisher_offer(offer: str) -> None:
    """``ValueError`` saying why ``offer`` is not a publisher's offer of video the gateway can take:
    exactly one sending video section with VP8 or baseline H.264; audio sections are allowed
    (browsers and OBS always offer audio) and answered inactive by the caller."""
    description = _parse(offer, tracks=True)
    videos = [media for media in description.media if media.kind == "video"]
    if not videos:
        raise ValueError("no video media section")
    if len(videos) > 1:
        raise ValueError(f"{len(videos)} video media sections, a publisher sends one")
    others = {media.kind for media in description.media} - {"audio", "video"}
    if others:
        raise ValueError(f"unexpected {', '.join(sorted(others))} media section")
    video = videos[0]
    if video.direction not in (None, "sendonly", "sendrecv"):
        raise ValueError(f"the video section is {video.direction}, a publisher must send")
    mids = [media.rtp.muxId for media in description.media]
    if not all(mids) or len(set(mids)) != len(mids):
        raise ValueError("every media section needs a mid of its own")
    for group in description.group:
        if group.semantic == "BUNDLE" and not set(group.items) <= set(mids):
            raise ValueError("the BUNDLE group names a mid no media section has")
    for media in description.media:
        _check_transport(media)
    if not _codecs_of(video):
        raise ValueError(f"the video section offers neither {CODEC_NAMES['vp8']} nor {CODEC_NAMES['h264']}")


def is_baseline_h264(parameters: dict) -> bool:
    """Whether an H.264 rtpmap's fmtp names packetization-mode 1 and a (constrained) baseline profile."""
    if str(parameters.get("packetization-mode", "0")) != "1":
        return False
    try:
        profile, _ = sdp.parse_h264_profile_level_id(str(parameters.get("profile-level-id", "42e01f")))
    except ValueError:
        return False
    return profile in (sdp.H264Profile.PROFILE_CONSTRAINED_BASELINE, sdp.H264Profile.PROFILE_BASELINE)


def capabilities(codec: Codec) -> list:
    """aiortc's codec capabilities for ``codec`` (and RTX), for ``setCodecPreferences``."""
    mime = {"h264": "video/h264", "vp8": "video/vp8"}[codec]
    return [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in (mime, "video/rtx")]
