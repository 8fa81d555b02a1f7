"""The live feed of one camera: released frames, paced, into one rendition per codec.

The renditions (one encoder each, see :mod:`.rendition`) are made when the camera's rate is
known, from the spacing of its first two released frames, at the size of the first frame
rounded down to even pixels (H.264 4:2:0). WHEP viewers and RTSP clients subscribe to them.
Dropped frames carry no pixels and are skipped; blanked frames are sent like any other.
"""

from __future__ import annotations

import threading

from ..frames import Released, frame_rate
from ..webrtc import Codec
from .pacing import Pacer
from .rendition import Rendition


class LiveFeed:
    """The live sink of one camera (called from one thread, the camera's live :class:`~.sinks.ThreadedSink`)."""

    def __init__(self, camera: str, codecs: tuple[Codec, ...]) -> None:
        self.camera, self.codecs = camera, codecs
        self._renditions: dict[Codec, Rendition] = {}
        self._lock = threading.Lock()
        self._first_time: float | None = None
        self._pacer = Pacer()

    def rendition(self, codec: Codec) -> Rendition | None:
        """The camera's rendition in ``codec``; None until its first frames are out (or if it has none)."""
        with self._lock:
            return self._renditions.get(codec)

    def renditions(self) -> list[Rendition]:
        with self._lock:
            return list(self._renditions.values())

    def viewers(self) -> int:
        return sum(r.viewers for r in self.renditions())

    def __call__(self, item: Released) -> None:
        if item.image is None:
            return
        if not self._renditions:
            if self._first_time is None or item.time <= self._first_time:
                self._first_time = item.time
                return
            fps = frame_rate(self._first_time, item.time)
            height, width = item.shape[:2]
            with self._lock:
                for codec in self.codecs:
                    self._renditions[codec] = Rendition(self.camera, codec, width - width % 2, height - height % 2,
                                                        fps=fps)
        self._pacer.wait(item.time, item.at)
        image = item.image
        if image.shape[0] % 2 or image.shape[1] % 2:  # push copies (converts) the frame itself
            image = image[: image.shape[0] - image.shape[0] % 2, : image.shape[1] - image.shape[1] % 2]
        for rendition in self.renditions():
            rendition.push(image, item.time)

    def close(self) -> None:
        for rendition in self.renditions():
            rendition.close()
