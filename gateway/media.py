"""Reading and writing image and video files for the command line (PyAV, OpenCV).

Output is written to a temporary file beside the target and renamed into place only when
complete, so a failure never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
COMMENT_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
#: containers whose ``comment`` tag survives a round trip (the vault reference rides in it)
COMMENT_VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".3gp"})


class MediaError(Exception):
    """An input that cannot be read or an output that cannot be written; the message says which."""


def copy_excerpt(source: Path, target: Path, seconds: float) -> Path:
    """The first ``seconds`` of the video and audio streams of ``source``, copied without re-encoding."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        mapping = {s: dst.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")}
        for packet in src.demux(*mapping):
            if packet.dts is None:
                continue
            start = packet.stream.start_time or 0  # streams need not start at 0 (counted from their start)
            if packet.pts is not None and (packet.pts - start) * packet.stream.time_base >= seconds:
                continue
            packet.stream = mapping[packet.stream]
            dst.mux(packet)
    return target


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: Path) -> np.ndarray:
    """A BGR ``uint8`` image; alpha is dropped and grey is expanded to three channels."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror or exc}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise MediaError(f"cannot read {path}: not a decodable image")
    return np.ascontiguousarray(image)


def write_image(path: Path, image: np.ndarray, comment: str | None = None) -> None:
    """Write losslessly for PNG (and other lossless formats), at JPEG quality 95 otherwise.

    ``comment`` (ASCII) is stored as a PNG ``tEXt`` chunk or a JPEG ``COM`` segment.
    """
    suffix = path.suffix.lower()
    if comment is not None and suffix not in COMMENT_IMAGE_SUFFIXES:
        raise MediaError(f"cannot write {path}: only PNG and JPEG images can carry the vault reference")
    params: list[int] = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 101]  # above 100 means lossless
    ok, encoded = cv2.imencode(suffix or ".png", image, params)
    if not ok:
        raise MediaError(f"cannot encode {path}: unsupported image format {suffix!r}")
    data = encoded.tobytes()
    if comment is not None:
        data = _with_comment(data, comment.encode("ascii"))
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_KEYWORD = b"Comment\x00"


def _with_comment(data: bytes, text: bytes) -> bytes:
    if data.startswith(_PNG):  # after the 8-byte signature and the IHDR chunk (25 bytes)
        body = b"tEXt" + _PNG_KEYWORD + text
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return data[:33] + chunk + data[33:]
    if len(text) > 65533:
        raise MediaError("comment too long for a JPEG COM segment")
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]


def image_comment(path: Path) -> str | None:
    """The comment stored by :func:`write_image` (PNG ``tEXt`` "Comment", JPEG ``COM``), if any."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data.startswith(_PNG):
        at = 8
        while at + 12 <= len(data):
            (length,) = struct.unpack_from(">I", data, at)
            kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
            if kind == b"tEXt" and body.startswith(_PNG_KEYWORD):
                return body[len(_PNG_KEYWORD):].decode("latin-1")
            if kind == b"IDAT":
                break
            at += 12 + length
        return None
    at = 2 if data[:2] == b"\xff\xd8" else len(data)
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        (length,) = struct.unpack_from(">H", data, at + 2)
        if marker == 0xFE:
            return data[at + 4 : at + 2 + length].decode("latin-1")
        if marker == 0xDA:  # start of scan: no more headers
            break
        at += 2 + length
    return None


def video_comment(path: Path) -> str | None:
    """The container's ``comment`` metadata (set by :class:`VideoTranscoder`), if any."""
    container = open_video(path)
    try:
        return {k.lower(): v for k, v in container.metadata.items()}.get("comment")
    finally:
        container.close()


def check_writable(path: Path) -> None:
    """Fail early, before any work, when ``path`` cannot be created."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise MediaError(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise MediaError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise MediaError(f"cannot write {path}: directory {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise MediaError(f"cannot write {path}: permission denied")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix), renamed onto it on success, removed on failure."""
    check_writable(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class VideoInfo:
    width: int
    height: int
    rate: Fraction  # frames per second
    time_base: Fraction
    frames: int | None  # best estimate, for progress


@dataclass
class VideoFrame:
    index: int
    pts: int  # in the stream's time base, strictly increasing
    time: float  # seconds since the first frame
    image: np.ndarray  # BGR uint8


def open_video(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot read {path}: {_reason(exc)}") from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"cannot read {path}: no video stream")
    return container


def video_info(container: av.container.InputContainer) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    frames = stream.frames or None
    if frames is None and stream.duration and stream.time_base:
        frames = int(stream.duration * stream.time_base * rate)
    return VideoInfo(stream.codec_context.width, stream.codec_context.height, Fraction(rate),
                     Fraction(stream.time_base or Fraction(1, 90000)), frames)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _bgr(frame: av.VideoFrame) -> np.ndarray:
    return np.ascontiguousarray(frame.to_ndarray(format="bgr24"))


class _Clock:
    """Presentation timestamps made strictly increasing.

    AVI and raw streams can repeat, reorder or lack timestamps (packed B-frames); a frame
    whose pts does not move forward is placed one frame duration after the previous one.
    """

    def __init__(self, info: VideoInfo) -> None:
        self.time_base = info.time_base
        self.step = max(1, round(1 / (info.rate * info.time_base)))
        self.first: int | None = None
        self.last: int | None = None

    def stamp(self, pts: int | None) -> tuple[int, float]:
        if pts is None or (self.last is not None and pts <= self.last):
            pts = 0 if self.last is None else self.last + self.step
        if self.first is None:
            self.first = pts
        self.last = pts
        return pts, float((pts - self.first) * self.time_base)


class VideoTranscoder:
    """Decode a video, hand every frame to the caller, encode what comes back; copy audio.

    Output keeps the input's size, frame rate and timestamps. Audio streams are copied
    packet for packet when the output container accepts their codec, else re-encoded to AAC.
    """

    def __init__(self, source: Path, target: Path | None = None, comment: str | None = None) -> None:
        """``target`` may be None when the video is only read (``frames``); ``comment`` goes
        into the output container's metadata."""
        if comment is not None and target is not None and target.suffix.lower() not in COMMENT_VIDEO_SUFFIXES:
            raise MediaError(f"cannot write {target}: use one of {', '.join(sorted(COMMENT_VIDEO_SUFFIXES))} "
                             "so the output can carry its vault reference")
        self.source, self.target, self.comment = source, target, comment
        self._input = open_video(source)
        self.info = video_info(self._input)
        self.skipped_audio = 0

    def close(self) -> None:
        self._input.close()

    def frames(self) -> Iterator[VideoFrame]:
        """Every decoded video frame, for analysis only (nothing written)."""
        stream = self._input.streams.video[0]
        stream.thread_type = "AUTO"
        clock = _Clock(self.info)
        try:
            for index, frame in enumerate(self._input.decode(stream)):
                yield VideoFrame(index, *clock.stamp(frame.pts), _bgr(frame))
        except av.FFmpegError as exc:
            raise MediaError(f"cannot decode {self.source}: {_reason(exc)}") from None

    def run(self, process: Callable[[VideoFrame | None], list[VideoFrame]]) -> int:
        """Transcode: ``process(frame)`` returns frames ready to encode (possibly held back);
        ``process(None)`` at the end returns the rest. Returns the number of frames written.

        Decoding and encoding each run in their own thread (PyAV releases the GIL in both),
        so they overlap with ``process``, which runs in the calling thread. Queues are
        bounded: a slow stage holds the others back instead of piling up frames.
        """
        if self.target is None:
            raise ValueError("no target to transcode to")
        with atomic_output(self.target) as tmp:
            out = av.open(str(tmp), mode="w")
            if self.comment is not None:
                out.metadata["comment"] = self.comment
            try:
                video_out = self._add_video(out)
                audio = self._add_audio(out)
                decoded = _Stage("decoder", lambda put: self._decode_into(put, audio))
                encoded = _Stage("encoder", None, sink=lambda item: self._write(out, video_out, audio, item))
                try:
                    for kind, item in decoded:
                        if kind == "audio":
                            encoded.put(("audio", item))
                        else:
                            for ready in process(item):
                                encoded.put(("video", ready))
                    for ready in process(None):
                        encoded.put(("video", ready))
                finally:
                    decoded.stop()
                    written = encoded.finish()
                for packet in video_out.encode(None):
                    out.mux(packet)
                for stream_out, decoder in audio.values():
                    if decoder is not None:
                        for packet in stream_out.encode(None):
                            out.mux(packet)
            finally:
                out.close()
        return written

    def _decode_into(self, put: Callable[[tuple], None], audio: dict) -> None:
        video_in = self._input.streams.video[0]
        video_in.thread_type = "AUTO"
        clock = _Clock(self.info)
        index = 0
        for packet in self._input.demux(video_in, *audio):
            if packet.stream.type == "audio":
                put(("audio", packet))
                continue
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                raise MediaError(f"cannot decode {self.source}: {_reason(exc)}") from None
            for frame in frames:
                put(("video", VideoFrame(index, *clock.stamp(frame.pts), _bgr(frame))))
                index += 1

    def _write(self, out: av.container.OutputContainer, video_out: av.VideoStream, audio: dict, item: tuple) -> int:
        kind, value = item
        if kind == "audio":
            self._audio_packet(out, audio[value.stream], value)
            return 0
        return self._encode(out, video_out, [value])

    def _add_video(self, out: av.container.OutputContainer) -> av.VideoStream:
        info = self.info
        codec = "libvpx" if self.target.suffix.lower() == ".webm" else "libx264"
        stream = out.add_stream(codec, rate=info.rate)
        stream.width, stream.height = info.width, info.height
        even = info.width % 2 == 0 and info.height % 2 == 0
        stream.pix_fmt = "yuv420p" if even or codec != "libx264" else "yuv444p"
        stream.time_base = info.time_base
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        return stream

    def _encode(self, out: av.container.OutputContainer, stream: av.VideoStream, frames: list[VideoFrame]) -> int:
        for item in frames:
            frame = av.VideoFrame.from_ndarray(item.image, format="bgr24")
            frame.pts = item.pts
            frame.time_base = self.info.time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        return len(frames)

    def _add_audio(self, out: av.container.OutputContainer) -> dict:
        """Map each input audio stream to (output stream, decoder or None for a plain copy).

        Packets are copied as they are when their timestamps are usable (strictly
        increasing) and the output container accepts the codec; otherwise the audio is
        decoded and re-encoded (AAC, Opus for WebM, MP3 for AVI).
        """
        clean = self._audio_with_clean_timestamps()
        mapping = {}
        for stream in self._input.streams.audio:
            if stream.index in clean:
                try:
                    mapping[stream] = (out.add_stream_from_template(stream), None)
                    continue
                except (ValueError, av.FFmpegError):
                    pass
            codec = {".webm": "libopus", ".avi": "libmp3lame"}.get(self.target.suffix.lower(), "aac")
            rate = 48000 if codec == "libopus" else (stream.codec_context.sample_rate or 48000)
            encoder = out.add_stream(codec, rate=rate)
            if stream.codec_context.layout is not None:
                encoder.layout = "stereo" if stream.codec_context.layout.nb_channels > 1 else "mono"
            mapping[stream] = (encoder, stream.codec_context)
        return mapping

    def _audio_with_clean_timestamps(self) -> set[int]:
        """Indices of the audio streams whose packet timestamps strictly increase (one demux pass)."""
        if not self._input.streams.audio:
            return set()
        last: dict[int, int] = {}
        bad: set[int] = set()
        with av.open(str(self.source)) as probe:
            for packet in probe.demux(*probe.streams.audio):
                if packet.dts is None:
                    continue
                index = packet.stream.index
                if index in last and packet.dts <= last[index]:
                    bad.add(index)
                last[index] = packet.dts
        return set(last) - bad

    def _audio_packet(self, out: av.container.OutputContainer, target: tuple, packet: av.Packet) -> None:
        stream_out, decoder = target
        if packet.dts is None:
            return
        if decoder is None:
            packet.stream = stream_out
            out.mux(packet)
            return
        try:
            frames = packet.decode()
        except av.FFmpegError:
            self.skipped_audio += 1  # one damaged audio packet is dropped, not the whole output
            return
        for frame in frames:
            frame.pts = None
            for encoded in stream_out.encode(frame):
                out.mux(encoded)



class _Stage:
    """One pipeline stage in its own thread, joined by bounded queues.

    A producer stage (``produce``) calls ``put`` for each item and is iterated by the caller;
    a consumer stage (``sink``) takes items given with ``put`` and sums what ``sink`` returns.
    An exception in the thread is re-raised in the caller.
    """

    _DONE = object()

    def __init__(self, name: str, produce: Callable | None, sink: Callable | None = None, depth: int = 8) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._sink = sink
        self._total = 0
        target = self._run_producer if produce is not None else self._run_consumer
        self._thread = threading.Thread(target=target, args=(produce,) if produce else (), name=name, daemon=True)
        self._thread.start()

    # producer side -------------------------------------------------------------------
    def _run_producer(self, produce: Callable) -> None:
        try:
            produce(self._offer)
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc
        finally:
            self._offer(self._DONE, force=True)

    def _offer(self, item, force: bool = False) -> None:
        while not self._stopped.is_set() or force:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if force and self._stopped.is_set():
                    return
        raise _Stopped

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._DONE:
                if self._error is not None and not isinstance(self._error, _Stopped):
                    raise self._error
                return
            yield item

    def stop(self) -> None:
        self._stopped.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()

    # consumer side -------------------------------------------------------------------
    def _run_consumer(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if self._error is None:
                try:
                    self._total += self._sink(item)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._error = exc

    def put(self, item) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def finish(self) -> int:
        self._queue.put(self._DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._total


class _Stopped(Exception):
    """The consumer went away; the producer thread ends quietly."""
