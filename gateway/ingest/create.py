"""The source a camera's configured URL names."""

from __future__ import annotations

from .file import FileSource
from .rtsp import RtspSource
from .source import Source


def create_source(camera: str, url: str, **options) -> Source:
    """``rtsp://`` and ``rtsps://`` give an :class:`RtspSource`; ``file://`` or a plain path a :class:`FileSource`."""
    lowered = url.lower()
    if lowered.startswith(("rtsp://", "rtsps://")):
        return RtspSource(camera, url, **options)
    if lowered.startswith("file://"):
        # As the config reads it: everything after file:// is the path (file:///abs, file://relative).
        return FileSource(camera, url[len("file://"):], **options)
    if "://" in url:
        raise ValueError(f"camera {camera}: unsupported source {url!r} (expected rtsp://, file:// or a path)")
    return FileSource(camera, url, **options)
