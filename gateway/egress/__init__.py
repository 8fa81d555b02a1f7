"""Egress: released frames out, to the recorder and to live viewers (the last stage).

Every camera's :class:`~gateway.frames.Released` frames go to sinks on threads of their own
(:mod:`.sinks`): the :class:`Recorder` (every frame, aligned with the sealed records) and the
:class:`LiveFeed` (paced, encoded once per codec in a :class:`Rendition` whose packets fan out
to every WHEP viewer (:mod:`.whep`) and RTSP client (:mod:`.rtsp`)). Only released frames ever
arrive here, so no path out can carry an unredacted pixel.

May import :mod:`gateway.frames`, :mod:`gateway.http`, :mod:`gateway.webrtc` and ``keys``'
public API; never ``ingest``, ``live``, ``api`` or ``cli``.
"""

from .feed import LiveFeed
from .pacing import Pacer
from .recorder import Recorder
from .rendition import RTP_CLOCK, VIEWER_BACKLOG, Rendition, ViewerTrack
from .rtsp import RtspServer, RtspUser
from .sinks import Sink, ThreadedSink
from .whep import WhepServer

__all__ = [
    "RTP_CLOCK",
    "VIEWER_BACKLOG",
    "LiveFeed",
    "Pacer",
    "Recorder",
    "Rendition",
    "RtspServer",
    "RtspUser",
    "Sink",
    "ThreadedSink",
    "ViewerTrack",
    "WhepServer",
]
