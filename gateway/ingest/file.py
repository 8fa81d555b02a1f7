"""A video file as a camera: played in a loop at its own rate (the embedded demo), or read as fast
as the consumer takes it."""

from __future__ import annotations

import logging
from pathlib import Path

import av

from .decoding import DecodingSource, frame_step

log = logging.getLogger(__name__)


class FileSource(DecodingSource):
    """A video file, played at its own rate on the monotonic clock (``realtime``) or as fast as ``emit`` takes it."""

    def __init__(self, camera: str, path: str | Path, loop: bool = True, realtime: bool = True, *, queue_size: int = 8):
        super().__init__(camera, live=realtime, queue_size=queue_size)
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"camera {camera}: no such file {self.path}")
        self.loop = loop
        self.realtime = realtime

    def _read(self) -> None:
        first = True
        while not self._stopping.is_set():
            passed = 0
            try:
                with av.open(str(self.path)) as container:
                    stream = container.streams.video[0]
                    self.stats.connected = True
                    if first:
                        log.info("camera %s: playing %s", self.camera, self.path)
                    self._timeline.begin(frame_step(stream))
                    for packet in container.demux(stream):
                        if self._stopping.is_set():
                            return
                        passed += self._decode(packet, pace=self.realtime)
            except (av.FFmpegError, IndexError) as exc:
                message = "no video stream" if isinstance(exc, IndexError) else str(exc)
                self.stats.error(f"read: {message}")
                log.warning("camera %s: %s: %s", self.camera, self.path, message)
            finally:
                self.stats.connected = False
            first = False
            if not self.loop:
                log.info("camera %s: end of %s", self.camera, self.path)
                return
            if passed == 0:  # nothing decodable: do not spin on it
                self._stopping.wait(1.0)
