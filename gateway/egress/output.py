"""A camera's output: its released frames, paced, encoded once, and the packets to every consumer.

    Released ──▶ pace ──▶ H.264 continuous rendition ──┬─▶ Recorder (every packet, a file per recording)
                    │                                  ├─▶ WHEP viewers
                    │                                  └─▶ RTSP clients
                    └──▶ VP8 rendition (only while a VP8 viewer watches)

Every frame index is encoded, blanked and dropped ones too (a dropped frame, which has no pixels,
is encoded blank), so the recording keeps every slot. A frame that starts a recording (its
vault reference differs from the previous frame's) is forced to an IDR: each file starts with a
keyframe. The renditions are made when the camera's rate is known, from the spacing of its
first two frames (the first is held until then), at the first frame's size rounded down to
even pixels (H.264 4:2:0). Frames are paced (:mod:`.pacing`) before encoding, so the encoder
works evenly and viewers get frames at the camera's own rhythm.
"""

from __future__ import annotations

import threading

import av

from keys import VaultRef

from ..frames import MIN_RATE, Released, frame_rate
from ..webrtc import Codec
from .encoding import Continuous, StreamInfo
from .pacing import Pacer
from .recorder import Recorder
from .rendition import Rendition


class CameraOutput:
    """The output sink of one camera (called from one thread: the camera's output ThreadedSink).

    ``codecs``: the renditions viewers may pick; the H.264 one exists whatever they are, since
    it is also the recording's and RTSP's stream.
    """

    def __init__(self, camera: str, codecs: tuple[Codec, ...], recorder: Recorder | None = None,
                 preset: str = "superfast", crf: int = 23) -> None:
        self.camera, self.codecs, self.recorder = camera, codecs, recorder
        self._continuous = Continuous(self._record, preset=preset, crf=crf)
        self._renditions: dict[Codec, Rendition] = {}
        self._lock = threading.Lock()
        self._first: Released | None = None  # held until the second frame tells the rate
        self._ref: VaultRef | None = None  # the recording of the last frame encoded
        self._started = False
        self._pacer = Pacer()

    def rendition(self, codec: Codec) -> Rendition | None:
        """The camera's rendition in ``codec`` if viewers may pick it; None until the first frames are out."""
        if codec not in self.codecs:
            return None
        with self._lock:
            return self._renditions.get(codec)

    def renditions(self) -> list[Rendition]:
        with self._lock:
            return list(self._renditions.values())

    def viewers(self) -> int:
        return sum(r.viewers for r in self.renditions())

    def __call__(self, item: Released) -> None:
        if not self._renditions:
            if self._first is None or item.time <= self._first.time:
                self._first = item
                return
            self._open(self._first, frame_rate(self._first.time, item.time))
            first, self._first = self._first, None
            self._encode(first)
        self._encode(item)

    def _open(self, first: Released, fps: float) -> None:
        height, width = first.shape[:2]
        width, height = width - width % 2, height - height % 2
        with self._lock:
            self._renditions["h264"] = Rendition(self.camera, "h264", width, height, fps, continuous=self._continuous)
            for codec in self.codecs:
                if codec != "h264":
                    self._renditions[codec] = Rendition(self.camera, codec, width, height, fps)

    def _encode(self, item: Released) -> None:
        self._pacer.wait(item.time, item.at)
        image = item.pixels()
        if image.shape[0] % 2 or image.shape[1] % 2:  # push copies (converts) the frame itself
            image = image[: image.shape[0] - image.shape[0] % 2, : image.shape[1] - image.shape[1] % 2]
        starts = not self._started or item.ref != self._ref  # a new recording: an IDR
        self._started, self._ref = True, item.ref
        for rendition in self.renditions():
            if rendition.continuous is not None:
                rendition.push(image, item.time, tag=item, keyframe=starts)
            elif item.image is not None:  # viewers of an extra codec skip the frames that have none
                rendition.push(image, item.time)

    def _record(self, packet: av.Packet, frame: Released | None, stream: StreamInfo) -> None:
        if self.recorder is not None and frame is not None:
            self.recorder.write(packet, frame, stream)

    def close(self) -> None:
        """Encode what is held, flush the encoders, finish the recording."""
        if self._first is not None and not self._renditions:  # a single frame ever: any rate plays it
            first, self._first = self._first, None
            self._open(first, MIN_RATE)
            self._encode(first)
        for rendition in self.renditions():
            rendition.close()
        if self.recorder is not None:
            self.recorder.close()
