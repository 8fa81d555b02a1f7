"""The recorder: a camera's continuous H.264 encode muxed, frame for frame, into fragmented MP4 files.

One file per recording (the pipeline starts a new recording every ``recording_seconds`` and at
every policy switch), named by the recording and carrying its vault reference in its metadata,
so ``privacy-gateway unmask`` works on it directly. The recorder encodes nothing: it writes the
packets of the camera's continuous rendition (:mod:`.rendition`), the same ones WHEP viewers and
RTSP clients get. Every frame index has its packet, blanked and dropped frames included (encoded
blank), and every recording starts with an IDR forced at its first frame, so frame *n* of a file
is always frame *n* of its sealed records. Fragmented MP4 means a crash leaves every complete
fragment playable.

A recorder that cannot write (disk full, no file descriptors left, the directory gone) does not
raise into the encoder: it counts the error, logs it once per burst (:mod:`gateway.faults`),
finishes the file it had (its frame count logged as written, so it still unmasks up to there)
and asks the pipeline, through ``restart``, for a new recording, retried with backoff: a file
can only start at a recording's first frame, or frame *n* of it would not be frame *n* of its
records. The frames in between are missing from the recordings; viewers still get them.

A finished file's ``finished`` notice (the gateway signs a frame count into the audit log: a
lock, an fsync, perhaps a co-signer checkpoint) runs on a thread of its own, in order, so the
encoder, which feeds live viewers, never waits for it; :meth:`Recorder.close` waits for them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av

from keys import VaultRef

from ..faults import Faults
from ..frames import Released
from .encoding import TIME_BASE, StreamInfo

log = logging.getLogger(__name__)


class Recorder:
    """Packets of one camera → ``<directory>/<camera>/<recording>.mp4`` (fragmented, H.264 as encoded)."""

    def __init__(self, directory: Path, camera: str,
                 finished: Callable[[Path, VaultRef | None, int], None] | None = None,
                 restart: Callable[[], None] | None = None) -> None:
        """``finished(path, ref, frames)``: told of every file once it is complete (the gateway
        logs its frame count, which ``vault verify --recordings`` and ``unmask`` check);
        ``restart()``: asks for a new recording after a failure (any thread)."""
        self.directory = Path(directory) / camera
        self.directory.mkdir(parents=True, exist_ok=True)
        self.camera = camera
        self.faults = Faults(f"camera {camera}: recording", "its frames are not recorded (viewers still get them)")
        self.restart = restart
        self._failed_ref: object = None  # the recording a failure cut short: its later frames are skipped
        self._out: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._ref: VaultRef | None = None
        self._start = 0  # the recording's first media time, 90 kHz ticks
        self._last_pts = -1
        self.files: list[Path] = []
        self.frames = 0
        self._finished, self._file_frames = finished, 0
        self._notices: ThreadPoolExecutor | None = None  # one thread: the notices keep the files' order

    def write(self, packet: av.Packet, frame: Released, stream: StreamInfo) -> None:
        """Mux the packet of ``frame`` (on the encoder's thread, in frame order); never raises."""
        try:
            if self._out is None or frame.ref != self._ref:
                if self.faults.reason is not None and frame.ref == self._failed_ref:
                    self._retry()
                    return  # the rest of a recording whose file failed: no file can take it up
                if not packet.is_keyframe:
                    log.error("camera %s: recording %s would not start at a keyframe; frame %d left out", self.camera,
                              frame.ref.recording if frame.ref else "?", frame.index)
                    return
                self._open(frame, stream)
            pts = max(round(frame.time / TIME_BASE) - self._start, self._last_pts + 1)
            # viewers share ``packet`` and read its time after this returns: the file's timeline (from
            # the recording's start) goes on a copy, theirs stays the encoder's, with no jump at a new file
            own = av.Packet(memoryview(packet))
            own.is_keyframe = packet.is_keyframe
            own.stream = self._stream
            own.pts = own.dts = pts
            own.time_base = TIME_BASE
            self._out.mux(own)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 (counted, logged per burst; the file so far is kept)
            self._fail(exc, frame)
            return
        self._last_pts = pts
        self.frames += 1
        self._file_frames += 1
        self.faults.recovered()

    def _fail(self, error: Exception, frame: Released) -> None:
        self.faults.failed(error)
        self._failed_ref = frame.ref
        try:
            self._finish_file()
        except Exception:  # noqa: BLE001 (what reached the disk stays; nothing more can be done with it)
            self._out = self._stream = None
        self._retry()

    def _retry(self) -> None:
        """Ask for a new recording once a retry is due (each ask is one attempt)."""
        if self.restart is not None and self.faults.due():
            self.faults.retrying()
            self.restart()

    def _open(self, frame: Released, stream: StreamInfo) -> None:
        self._finish_file()
        ref = frame.ref
        name = ref.recording if ref is not None else f"{frame.index:012d}"
        path = self.directory / f"{name}.mp4"
        out = av.open(str(path), mode="w", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
        try:
            video = self._add_stream(out, ref, stream)
        except BaseException:
            out.close()
            raise
        start = 0.0 if ref is None else ref.first_pts_us / 1e6
        self._out, self._stream, self._ref, self._last_pts = out, video, ref, -1
        self._file_frames = 0
        self._start = round(start / TIME_BASE)
        self.files.append(path)

    @staticmethod
    def _add_stream(out: av.container.OutputContainer, ref: VaultRef | None, stream: StreamInfo) -> av.VideoStream:
        if ref is not None:
            out.metadata["comment"] = ref.encode()
        video = out.add_stream("h264", rate=Fraction(stream.fps).limit_denominator(1001))
        video.width, video.height = stream.width, stream.height
        video.time_base = TIME_BASE
        # Annex B SPS/PPS: the MP4 muxer writes its avcC from them and converts every packet
        video.codec_context.extradata = stream.extradata
        return video

    @property
    def current(self) -> Path | None:
        """The file being written, which retention must leave alone."""
        return self.files[-1] if self._out is not None else None

    def close(self) -> None:
        """Finish the open file, and wait until every finished file's notice is done."""
        try:
            self._finish_file()
        finally:
            if self._notices is not None:
                self._notices.shutdown(wait=True)
                self._notices = None

    def _finish_file(self) -> None:
        """Close the open file and queue its notice."""
        if self._out is None:
            return
        try:
            self._out.close()
        finally:
            self._out = self._stream = None
        if self._finished is not None:
            if self._notices is None:
                self._notices = ThreadPoolExecutor(1, thread_name_prefix=f"{self.camera}-recorded")
            self._notices.submit(self._notify, self.files[-1], self._ref, self._file_frames)

    def _notify(self, path: Path, ref: VaultRef | None, frames: int) -> None:
        try:
            self._finished(path, ref, frames)  # type: ignore[misc]
        except Exception:
            log.exception("camera %s: could not log the frame count of %s", self.camera, path.name)
