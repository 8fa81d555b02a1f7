"""WebRTC shared by egress (WHEP viewers) and ingest (WHIP publishers): offer checks, codecs, ICE, peers.

Imports aiortc (and its aioice) and :mod:`gateway.http` only; both :mod:`gateway.egress` and
:mod:`gateway.ingest` build on it, so neither reaches into the other.
"""

from .ice import (
    HOSTNAME,
    NETWORK,
    PEER_REFLEXIVE,
    FilteredOffer,
    IcePolicy,
    filter_offer,
)
from .offers import (
    CODEC_NAMES,
    CODECS,
    MAX_OFFER_BYTES,
    NEGOTIATION_ERRORS,
    Codec,
    capabilities,
    check_publisher_offer,
    is_baseline_h264,
    viewer_codecs,
)
from .peers import configuration, confine_ice, route_keyframe_requests

__all__ = [
    "CODECS",
    "CODEC_NAMES",
    "HOSTNAME",
    "MAX_OFFER_BYTES",
    "NEGOTIATION_ERRORS",
    "NETWORK",
    "PEER_REFLEXIVE",
    "Codec",
    "FilteredOffer",
    "IcePolicy",
    "capabilities",
    "check_publisher_offer",
    "configuration",
    "confine_ice",
    "filter_offer",
    "is_baseline_h264",
    "route_keyframe_requests",
    "viewer_codecs",
]
