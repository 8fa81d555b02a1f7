"""WebRTC shared by egress (WHEP viewers) and ingest (WHIP publishers): offer checks, codecs, peers.

Imports aiortc and :mod:`gateway.http` only; both :mod:`gateway.egress` and
:mod:`gateway.ingest` build on it, so neither reaches into the other.
"""

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
from .peers import configuration, route_keyframe_requests

__all__ = [
    "CODECS",
    "CODEC_NAMES",
    "MAX_OFFER_BYTES",
    "NEGOTIATION_ERRORS",
    "Codec",
    "capabilities",
    "check_publisher_offer",
    "configuration",
    "is_baseline_h264",
    "route_keyframe_requests",
    "viewer_codecs",
]
