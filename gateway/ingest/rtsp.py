"""An RTSP camera pulled through PyAV (FFmpeg's RTSP client), reconnecting until stopped."""

from __future__ import annotations

import logging
import random
import time

import av

from ..config import redact_source
from .decoding import DecodingSource, Lost, frame_step

log = logging.getLogger(__name__)


class RtspSource(DecodingSource):
    """An RTSP camera pulled through PyAV, reconnecting with exponential backoff and jitter until stopped.

    ``open_timeout`` bounds connecting and probing, ``read_timeout`` the silence allowed
    while streaming; PyAV's interrupt callback (``av.open(timeout=(open, read))``) enforces
    both, over TCP and UDP alike, and FFmpeg's RTSP socket ``timeout`` stands behind it. A
    stalled camera is noticed ``read_timeout`` after its last packet and retried after
    ``backoff_initial`` seconds, doubling up to ``backoff_max``, each wait drawn at random
    from its upper half; a connection that delivered frames resets the backoff.
    ``stop()`` cannot cut a read short (PyAV has no cancel), so while the camera is stalled
    it returns at its own ``timeout`` and the reader exits at its read timeout, silently.
    """

    def __init__(
        self,
        camera: str,
        url: str,
        transport: str = "tcp",
        open_timeout: float = 5.0,
        read_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        *,
        queue_size: int = 8,
    ):
        super().__init__(camera, live=True, queue_size=queue_size)
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be tcp or udp, not {transport!r}")
        for name, value in (("open_timeout", open_timeout), ("read_timeout", read_timeout),
                            ("backoff_initial", backoff_initial), ("backoff_max", backoff_max)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self.url = url
        #: the URL as logs and errors show it: a password in it is not (:func:`~gateway.config.redact_source`)
        self.shown = redact_source(url)
        self.transport = transport
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = max(backoff_max, backoff_initial)
        self._options = {
            "rtsp_transport": transport,
            "allowed_media_types": "video",
            # Fast start: ~0.5 s of probing instead of FFmpeg's 5 s. Not fflags=nobuffer: it
            # throws the probed packets away, first keyframe included, so the first frame
            # would wait a whole GOP (10 s with some encoders' defaults).
            "probesize": "500000",
            "analyzeduration": "500000",
            # FFmpeg's own socket I/O timeout (microseconds): a backstop behind PyAV's, which
            # is the one that acts (the interrupt callback, polled every 0.1 s in FFmpeg's reads).
            "timeout": str(int(max(open_timeout, read_timeout) * 1_000_000)),
        }

    def _read(self) -> None:
        delay = self.backoff_initial
        opened_before = False
        while not self._stopping.is_set():
            try:
                container = av.open(self.url, options=self._options, timeout=(self.open_timeout, self.read_timeout))
            except av.FFmpegError as exc:
                message = str(exc).replace(self.url, self.shown)  # FFmpeg's errors name the URL
                self.stats.error(f"open: {message}")
                log.warning("camera %s: cannot open %s: %s", self.camera, self.shown, message)
            else:
                if self._stopping.is_set():
                    container.close()
                    return
                if opened_before:
                    self.stats.reconnects += 1
                opened_before = True
                self.stats.connected = True
                log.info("camera %s: connected to %s over %s", self.camera, self.shown, self.transport)
                passed = 0
                try:
                    passed = self._stream(container)
                except (Lost, av.FFmpegError, IndexError) as exc:
                    if not self._stopping.is_set():
                        message = "no video stream" if isinstance(exc, IndexError) else \
                            str(exc).replace(self.url, self.shown) or type(exc).__name__
                        self.stats.error(f"lost: {message}")
                        log.warning("camera %s: connection lost: %s", self.camera, message)
                finally:
                    self.stats.connected = False
                    container.close()
                if passed:
                    delay = self.backoff_initial
            wait = delay * random.uniform(0.5, 1.0)
            delay = min(delay * 2, self.backoff_max)
            if self._stopping.wait(wait):
                return

    def _stream(self, container: av.container.InputContainer) -> int:
        """Decode until stopped (the number of frames passed on) or until the stream is lost (raises)."""
        stream = container.streams.video[0]
        stream.codec_context.flags |= av.codec.context.Flags.low_delay
        self._timeline.begin(frame_step(stream), floor=time.monotonic() - self._started_at)
        passed = 0
        last = time.monotonic()
        for packet in container.demux(stream):
            if self._stopping.is_set():
                return passed
            now = time.monotonic()
            # An interrupted read makes FFmpeg first flush the frame its parser held back,
            # and only fail on the next read: judge the silence by the gap, not the error.
            silent = now - last >= self.read_timeout
            last = now
            passed += self._decode(packet)
            if silent:
                raise Lost(f"no data for {self.read_timeout:g} s")
        raise Lost("end of stream")
