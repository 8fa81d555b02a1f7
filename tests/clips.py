"""Camera clips made for tests from the evaluation videos: an H.264 MP4 excerpt the RTSP camera can
serve (``rtsp_camera.py`` remuxes H.264 only), optionally changed frame by frame (a camera re-aimed,
covered or defocused, as the moved-camera tests simulate it)."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from gateway.files import VideoTranscoder


def h264_excerpt(source: Path, target: Path, seconds: float,
                 change: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[Path, list[np.ndarray]]:
    """The first ``seconds`` of ``source`` coded as H.264 (a keyframe a second, no B-frames) in ``target``,
    each frame passed through ``change`` first; returns the file and the frames as a decoder gets them."""
    frames = []
    for frame in VideoTranscoder(source).frames():
        if frame.time >= seconds:
            break
        frames.append(change(frame.image) if change is not None else frame.image)
    rate = round(len(frames) / seconds) or 1
    with av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(rate))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "bf": "0", "g": str(rate), "threads": "1"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return target, [f.image for f in VideoTranscoder(target).frames()]


def shifted(share_x: float, share_y: float = 0.0) -> Callable[[np.ndarray], np.ndarray]:
    """A camera re-aimed: the picture moved by a share of its width and height (edges repeated)."""

    def change(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        move = np.float32([[1, 0, share_x * w], [0, 1, share_y * h]])
        return cv2.warpAffine(image, move, (w, h), borderMode=cv2.BORDER_REPLICATE)

    return change
