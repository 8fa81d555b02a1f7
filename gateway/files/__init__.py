"""Offline files: the images and videos the command line redacts, unmasks and watermarks.

Nothing here runs in the live gateway's per-frame path but :class:`BgrConverter`, which the live
sources share: these are whole files read and written at once, with every output written beside
its target and renamed into place only when complete (the gateway reads one frame of a finished
recording with :func:`frame_at` for the console, off its event loop). May import ``keys`` (its
public API), never another ``gateway`` package.
"""

from .images import IMAGE_SUFFIXES, image_comment, is_image, read_image, write_image
from .output import MediaError, atomic_output, check_writable
from .video import (
    VIDEO_SUFFIXES,
    BgrConverter,
    VideoFrame,
    VideoInfo,
    VideoTranscoder,
    copy_excerpt,
    count_frames,
    frame_at,
    video_comment,
)
from .watermark import watermark

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "BgrConverter",
    "MediaError",
    "VideoFrame",
    "VideoInfo",
    "VideoTranscoder",
    "atomic_output",
    "check_writable",
    "copy_excerpt",
    "count_frames",
    "frame_at",
    "image_comment",
    "is_image",
    "read_image",
    "video_comment",
    "watermark",
    "write_image",
]
