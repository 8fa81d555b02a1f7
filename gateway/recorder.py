"""Where released frames go after the pipeline: a thread per consumer, and the recorder.

:class:`ThreadedSink` keeps encoders off the pipeline's release path: ``put`` never blocks. A
sink that must see every frame (the recorder) keeps the frame's slot but loses its pixels
when too far behind (it then writes a blank frame), so its files stay aligned with the
sealed records; a live sink (a WebRTC rendition) simply skips frames it cannot keep up with.

:class:`Recorder` writes one fragmented MP4 per recording (a crash leaves every complete
fragment playable), named by the recording and carrying its vault reference, next to the
vault that seals its originals: ``privacy-gateway unmask`` works on it directly.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .pipeline import BLANK_LEVEL, Released

log = logging.getLogger(__name__)

_TIME_BASE = Fraction(1, 90000)


class ThreadedSink:
    """Runs ``consume`` on its own thread; at most ``max_images`` frames' pixels wait for it."""

    def __init__(self, name: str, consume: Callable[[Released], None], max_images: int = 60, keep_all: bool = False) -> None:
        self.name, self._consume, self._max, self._keep_all = name, consume, max_images, keep_all
        self._items: deque[Released] = deque()
        self._images = 0
        self._cond = threading.Condition()
        self._closed = False
        self.skipped = 0  # frames (or frames' pixels, with keep_all) given up because the consumer was behind
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    def __call__(self, item: Released) -> None:
        with self._cond:
            if self._closed:
                return
            if item.image is not None and self._images >= self._max:
                self.skipped += 1
                if not self._keep_all:
                    return
                item = Released(item.camera, item.index, item.time, "dropped", None, item.shape, item.ref, item.at)
            self._items.append(item)
            self._images += item.image is not None
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
                self._images -= item.image is not None
            try:
                self._consume(item)
            except Exception:
                log.exception("sink %s failed on frame %d", self.name, item.index)

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)


class Recorder:
    """Released frames of one camera → ``<directory>/<camera>/<recording>.mp4`` (fragmented, H.264)."""

    def __init__(self, directory: Path, camera: str, fps: float, crf: int = 23, preset: str = "veryfast") -> None:
        self.directory = Path(directory) / camera
        self.directory.mkdir(parents=True, exist_ok=True)
        self.camera, self.fps, self.crf, self.preset = camera, fps, crf, preset
        self._out: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._ref = None
        self._size: tuple[int, int] | None = None
        self._last_pts = -1
        self.files: list[Path] = []
        self.frames = 0

    def __call__(self, item: Released) -> None:
        ref = item.ref
        if self._out is None or ref != self._ref:
            self._open(item)
        image = item.image if item.image is not None else np.full(item.shape, BLANK_LEVEL, dtype=np.uint8)
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
        self.close()
        ref = item.ref
        name = ref.recording if ref is not None else f"{item.index:012d}"
        path = self.directory / f"{name}.mp4"
        out = av.open(str(path), mode="w", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
        if ref is not None:
            out.metadata["comment"] = ref.encode()
        height, width = item.shape[:2]
        stream = out.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        # the encoder must count in the same 90 kHz clock: at its default 1/rate a 30 fps camera
        # recorded with a 25 fps hint would put two frames on one tick
        stream.time_base = stream.codec_context.time_base = _TIME_BASE
        # no B-frames: timestamps come from the camera and may be irregular, which B-frame
        # reordering turns into non-monotonic DTS that the MP4 muxer rejects
        stream.options = {"crf": str(self.crf), "preset": self.preset, "g": str(max(1, round(self.fps * 2))), "bf": "0"}
        self._out, self._stream, self._ref, self._last_pts = out, stream, ref, -1
        self._size = (stream.width, stream.height)
        self.files.append(path)

    def close(self) -> None:
        if self._out is None:
            return
        try:
            for packet in self._stream.encode(None):  # type: ignore[union-attr]
                self._out.mux(packet)
        finally:
            self._out.close()
            self._out = self._stream = None
