"""RTSP egress for video-management systems: the camera's shared H.264 rendition over RTSP 1.0.

:mod:`.protocol` the wire format (pure), :mod:`.digest` digest authentication and the
:class:`RtspUser` it checks, :mod:`.session` connections and sessions, :mod:`.sender` RTP and
RTCP out, :mod:`.server` the listener. Imports only :mod:`gateway.egress.rendition` and
:mod:`gateway.limits` from the rest of the gateway.
"""

from .digest import RtspUser
from .protocol import MAX_HEAD, Request, RtspError, parse_request
from .server import RtspServer

__all__ = ["MAX_HEAD", "Request", "RtspError", "RtspServer", "RtspUser", "parse_request"]
