"""Video files for the command line (PyAV): decode every frame, encode what comes back, keep audio.

Output is written through :func:`~gateway.files.output.atomic_output`, so a failure never
leaves a partial file behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .output import MediaError, atomic_output
from .stages import Stage

#: containers whose ``comment`` tag survives a round trip (the vault reference rides in it)
COMMENT_VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".3gp"})
#: the rate of a stream that declares none: 25 fps, what FFmpeg's raw H.264/HEVC demuxers assume
#: too. It sets the output's nominal rate, the frame count estimate, the spacing given to frames
#: without timestamps and unmask's half-frame tolerance; frames with timestamps keep theirs
FALLBACK_RATE = Fraction(25)


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


def video_comment(path: Path) -> str | None:
    """The container's ``comment`` metadata (set by :class:`VideoTranscoder`), if any."""
    container = open_video(path)
    try:
        return {k.lower(): v for k, v in container.metadata.items()}.get("comment")
    finally:
        container.close()


def count_frames(path: Path) -> int:
    """The number of video frames a file holds (its video packets, without decoding)."""
    container = open_video(path)
    try:
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
    except av.FFmpegError as exc:
        raise MediaError(f"cannot read {path}: {_reason(exc)}") from None
    finally:
        container.close()


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
    rate = stream.average_rate or stream.guessed_rate or FALLBACK_RATE
    frames = stream.frames or None
    if frames is None and stream.duration and stream.time_base:
        frames = int(stream.duration * stream.time_base * rate)
    return VideoInfo(stream.codec_context.width, stream.codec_context.height, Fraction(rate),
                     Fraction(stream.time_base or Fraction(1, 90000)), frames)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


class BgrConverter:
    """Decoded pictures to BGR arrays, for one stream, on one thread at a time.

    ``frame.to_ndarray(format="bgr24")`` sets FFmpeg's scaler up anew for every picture, and the
    scaler starts threads of its own each time (two a picture on 2 cores: 60 a second for a 30 fps
    camera, whose CPU showed as "exited threads" beside the camera's own). One scaler kept for the
    stream, on the caller's thread, gives the same pixels for about a quarter less CPU (MOT17-13's
    960x540 pictures: 0.21 -> 0.16 ms each) and starts no thread. The live sources use it too."""

    def __init__(self) -> None:
        self._scaler = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        return np.ascontiguousarray(self._scaler.reformat(frame, format="bgr24", threads=1).to_ndarray())


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


def frame_at(path: Path, seconds: float) -> VideoFrame:
    """The frame shown nearest ``seconds`` after the first one (past the end: the last one), timed as
    :meth:`VideoTranscoder.frames` times it. Decoded from the keyframe before it, not from the
    start, when the stream's timestamps rise; else every frame up to it is decoded. ``index`` is
    counted at the stream's rate after a seek (exact for a constant rate, as the recorder writes)."""
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        info = video_info(container)
        try:
            first = next(container.decode(stream), None)
            if first is None:
                raise MediaError(f"cannot read {path}: no video frame")
            if first.pts is not None and seconds > 0:
                container.seek(first.pts + int(seconds / info.time_base), stream=stream, backward=True)
                found = _nearest(_timed(container.decode(stream), first.pts, info), seconds)
                if found is not None:
                    frame, time = found
                    return VideoFrame(round(time * float(info.rate)), frame.pts, time, BgrConverter()(frame))
        except av.FFmpegError as exc:
            raise MediaError(f"cannot decode {path}: {_reason(exc)}") from None
    finally:
        container.close()
    video = VideoTranscoder(path)  # no timestamps to seek by, or they do not rise: every frame, in order
    try:
        frames = ((f, f.time) for f in video.frames())
        found = _nearest(frames, seconds, strict=False)
        assert found is not None  # the file has a frame (read above)
        return found[0]
    finally:
        video.close()


def _timed(frames, first: int, info: VideoInfo):
    """(frame, seconds after ``first``) while timestamps rise; stops at the first that does not."""
    last = None
    for frame in frames:
        if frame.pts is None or (last is not None and frame.pts <= last):
            yield None, None
            return
        last = frame.pts
        yield frame, float((frame.pts - first) * info.time_base)


def _nearest(frames, seconds: float, strict: bool = True):
    """The (frame, time) nearest ``seconds`` of ``frames`` in time order; None (with ``strict``) when
    they do not start at or before it, or an untimed frame comes first: the caller decodes from the start."""
    before = None
    for frame, time in frames:
        if frame is None or (strict and before is None and time > seconds + 1e-6):
            return None
        if time >= seconds:
            return (frame, time) if before is None or time - seconds <= seconds - before[1] else before
        before = (frame, time)
    return before


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
        clock, bgr = _Clock(self.info), BgrConverter()
        try:
            for index, frame in enumerate(self._input.decode(stream)):
                yield VideoFrame(index, *clock.stamp(frame.pts), bgr(frame))
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
                decoded = Stage("decoder", lambda put: self._decode_into(put, audio))
                encoded = Stage("encoder", None, sink=lambda item: self._write(out, video_out, audio, item))
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
        clock, bgr = _Clock(self.info), BgrConverter()
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
                put(("video", VideoFrame(index, *clock.stamp(frame.pts), bgr(frame))))
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
        # the encoder counts in the input's time base too: at 1/rate, frames closer together than the
        # nominal rate (variable frame rate, an excerpt's rate estimated from its length) round onto one
        # tick, and the muxer refuses the repeated timestamp
        stream.codec_context.time_base = info.time_base
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
