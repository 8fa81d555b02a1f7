"""Egress: released frames out, to the recorder and to live viewers (the last stage).

Every camera's :class:`~gateway.frames.Released` frames go to its :class:`CameraOutput` on a
sink thread of its own (:mod:`.sinks`): paced, encoded once (:mod:`.encoding`) in a continuous
H.264 :class:`Rendition` whose packets go to the :class:`Recorder` (every frame, aligned with
the sealed records), to every WHEP viewer (:mod:`.whep`) and to every RTSP client (:mod:`.rtsp`);
:class:`LatestFrame` keeps the newest released frame for officers' snapshots (:mod:`.snapshot`).
Only released frames ever arrive here, so no path out can carry an unredacted pixel.

May import :mod:`gateway.frames`, :mod:`gateway.http`, :mod:`gateway.limits`,
:mod:`gateway.webrtc` and ``keys``' public API; never ``ingest``, ``live``, ``api`` or ``cli``.
"""

from .encoding import Continuous, StreamInfo
from .output import CameraOutput
from .pacing import Pacer
from .recorder import Recorder
from .rendition import RTP_CLOCK, VIEWER_BACKLOG, Rendition, ViewerTrack
from .rtsp import RtspServer, RtspUser
from .sinks import Sink, ThreadedSink
from .snapshot import MEDIA_TYPES, LatestFrame, encode_snapshot
from .whep import WhepServer

__all__ = [
    "MEDIA_TYPES",
    "RTP_CLOCK",
    "VIEWER_BACKLOG",
    "CameraOutput",
    "Continuous",
    "LatestFrame",
    "Pacer",
    "Recorder",
    "Rendition",
    "RtspServer",
    "RtspUser",
    "Sink",
    "StreamInfo",
    "ThreadedSink",
    "ViewerTrack",
    "WhepServer",
    "encode_snapshot",
]
