"""The recorder: every released frame of one camera into fragmented MP4 files next to the vault.

One file per recording (the pipeline starts a new recording every ``recording_seconds`` and at
every policy switch), named by the recording and carrying its vault reference in its metadata,
so ``privacy-gateway unmask`` works on it directly. Every frame index has its slot: a frame the
pipeline blanked or dropped, or whose pixels a busy sink gave up, is written blank, so frame
*n* of a file is always frame *n* of its sealed records. Fragmented MP4 means a crash leaves
every complete fragment playable.

The encoder's rate (GOP length, declared frame rate) comes from the camera itself: the
recorder waits for the second frame and measures the spacing, as the live renditions do.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from keys import VaultRef

from ..frames import MIN_RATE, Released, frame_rate

log = logging.getLogger(__name__)

_TIME_BASE = Fraction(1, 90000)
_GOP_SECONDS = 2.0  # a keyframe at least this often: where a player can start and unmask can seek


class Recorder:
    """Released frames of one camera → ``<directory>/<camera>/<recording>.mp4`` (fragmented, H.264)."""

    def __init__(self, directory: Path, camera: str, crf: int = 23, preset: str = "veryfast") -> None:
        self.directory = Path(directory) / camera
        self.directory.mkdir(parents=True, exist_ok=True)
        self.camera, self.crf, self.preset = camera, crf, preset
        self.fps: float | None = None  # measured from the first two frames
        self._first: Released | None = None  # held until the second frame tells the rate
        self._out: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._ref: VaultRef | None = None
        self._size: tuple[int, int] | None = None
        self._last_pts = -1
        self.files: list[Path] = []
        self.frames = 0

    def __call__(self, item: Released) -> None:
        if self.fps is None:
            if self._first is None:
                self._first = item
                return
            self.fps = frame_rate(self._first.time, item.time)
            first, self._first = self._first, None
            self._write(first)
        self._write(item)

    def _write(self, item: Released) -> None:
        ref = item.ref
        if self._out is None or ref != self._ref:
            self._open(item)
        image = item.pixels()
        width, height = self._size  # type: ignore[misc]
        if image.shape[1] - width in (0, 1) and image.shape[0] - height in (0, 1):
            image = image[:height, :width]  # H.264 4:2:0 wants even sizes: drop the odd last row/column
        else:
            log.warning("camera %s: frame size changed to %dx%d inside a recording; scaled", self.camera,
                        image.shape[1], image.shape[0])
            image = cv2.resize(image, (width, height))
        start = 0.0 if ref is None else ref.first_pts_us / 1e6
        pts = max(round((item.time - start) / _TIME_BASE), self._last_pts + 1)
        self._last_pts = pts
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame.pts, frame.time_base = pts, _TIME_BASE
        for packet in self._stream.encode(frame):  # type: ignore[union-attr]
            self._out.mux(packet)  # type: ignore[union-attr]
        self.frames += 1

    def _open(self, item: Released) -> None:
        self._close_file()
        ref = item.ref
        name = ref.recording if ref is not None else f"{item.index:012d}"
        path = self.directory / f"{name}.mp4"
        out = av.open(str(path), mode="w", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
        if ref is not None:
            out.metadata["comment"] = ref.encode()
        height, width = item.shape[:2]
        fps = self.fps or MIN_RATE
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        # the encoder counts in the same 90 kHz clock as the frames' media times: at its default
        # 1/rate, two frames closer together than the declared rate would land on one tick
        stream.time_base = stream.codec_context.time_base = _TIME_BASE
        # no B-frames: timestamps come from the camera and may be irregular, which B-frame
        # reordering turns into non-monotonic DTS that the MP4 muxer rejects
        stream.options = {"crf": str(self.crf), "preset": self.preset, "g": str(max(1, round(fps * _GOP_SECONDS))),
                          "bf": "0"}
        self._out, self._stream, self._ref, self._last_pts = out, stream, ref, -1
        self._size = (stream.width, stream.height)
        self.files.append(path)

    def close(self) -> None:
        """Write what is held (a recording of one frame), finish the open file."""
        if self._first is not None:
            first, self._first = self._first, None
            self._write(first)
        self._close_file()

    def _close_file(self) -> None:
        if self._out is None:
            return
        try:
            for packet in self._stream.encode(None):  # type: ignore[union-attr]
                self._out.mux(packet)
        finally:
            self._out.close()
            self._out = self._stream = None
