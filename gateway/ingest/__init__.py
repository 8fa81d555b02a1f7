"""Ingest: camera frames in, decoded, on a timeline of their own (the first stage).

Sources read and decode on threads of their own and hand :class:`~gateway.frames.SourceFrame`
objects to the live pipeline through ``emit``: an RTSP camera pulled with PyAV
(:mod:`.rtsp`), a file played as a camera (:mod:`.file`), or a WHIP publisher pushing WebRTC
(:mod:`.whip`, endpoints in :mod:`.whip_server`). :mod:`.source` holds what they share: the
:class:`Source` seam, the drop-oldest emitter and the timeline.

May import :mod:`gateway.frames`, :mod:`gateway.http`, :mod:`gateway.limits` and :mod:`gateway.webrtc`; never
``live``, ``egress``, ``api`` or ``cli``.
"""

from .create import create_source
from .decoding import DecodingSource
from .file import FileSource
from .rtsp import RtspSource
from .source import Emitter, Source, SourceStats, Timeline
from .whip import WhipSource
from .whip_server import WhipServer

__all__ = [
    "DecodingSource",
    "Emitter",
    "FileSource",
    "RtspSource",
    "Source",
    "SourceStats",
    "Timeline",
    "WhipServer",
    "WhipSource",
    "create_source",
]
