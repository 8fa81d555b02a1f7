"""A real RTSP camera for tests: GStreamer's RTSP server serving an H.264 MP4 clip.

The clip is remuxed, never re-encoded: qtdemux's samples (with their own PTS/DTS, so
B-frames stay in order) are read into memory once, and every client gets its own
``appsrc ! rtph264pay`` pipeline that plays them from the first keyframe and, with
``--loop``, again and again with the timestamps shifted by the clip's length, so the
stream never jumps back. SPS/PPS go out in band at the head of every keyframe, once per
access unit as cameras send them, so a client that joins or rejoins can start decoding at
once. Not rtph264pay's ``config-interval=-1``: it puts them before every IDR *slice*, and a
parameter set between two slices of one picture starts a new access unit (H.264 7.4.1.2.3):
FFmpeg then decodes each slice of a multi-slice keyframe as a picture of its own, and every
picture until the next keyframe is built on half a picture (x264 with sliced threads, PyAV's
default, codes two slices per 720p frame here). Both RTP over the RTSP TCP connection
(interleaved) and RTP over UDP work.

PyGObject is a Debian package for the system interpreter, so this runs under
``/usr/bin/python3``, never the project's venv:

    /usr/bin/python3 tests/rtsp_camera.py --port 8554 --clip clip.mp4 [--mount /cam] [--loop]

Once the server is listening it prints ``ready rtsp://HOST:PORT/MOUNT`` on stdout;
SIGTERM or SIGINT stops it. Exit status 2: the clip cannot be read or the port is taken.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtspServer  # noqa: E402


class Clip:
    """The H.264 samples of an MP4 file, timestamps rebased to start at zero."""

    def __init__(self, path: str):
        pipeline = Gst.parse_launch(
            "filesrc name=file ! qtdemux name=demux "
            "demux.video_0 ! appsink name=sink sync=false max-buffers=0"
        )
        pipeline.get_by_name("file").set_property("location", path)
        sink: GstApp.AppSink = pipeline.get_by_name("sink")
        pipeline.set_state(Gst.State.PLAYING)
        self.caps: Gst.Caps | None = None
        samples: list[Gst.Buffer] = []
        while True:
            sample = sink.try_pull_sample(10 * Gst.SECOND)
            if sample is None:
                break
            if self.caps is None:
                self.caps = sample.get_caps()
            samples.append(sample.get_buffer())
        error = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
        pipeline.set_state(Gst.State.NULL)
        if error is not None:
            raise ValueError(f"{path}: {error.parse_error()[0].message}")
        if not samples or self.caps is None or self.caps.get_structure(0).get_name() != "video/x-h264":
            raise ValueError(f"{path}: no H.264 video stream")

        headers = _parameter_sets(self.caps)
        if headers:
            samples = [b if b.has_flags(Gst.BufferFlags.DELTA_UNIT) else _prefixed(headers, b) for b in samples]
        stamps = [t for b in samples for t in (b.pts, b.dts) if t != Gst.CLOCK_TIME_NONE]
        base = min(stamps)
        frame = samples[1].dts - samples[0].dts if len(samples) > 1 else Gst.SECOND // 25
        self.buffers: list[tuple[Gst.Buffer, int, int, int]] = []
        end = 0
        for buffer in samples:
            duration = buffer.duration if buffer.duration != Gst.CLOCK_TIME_NONE else frame
            pts = buffer.pts - base
            dts = buffer.dts - base if buffer.dts != Gst.CLOCK_TIME_NONE else pts
            self.buffers.append((buffer, pts, dts, duration))
            end = max(end, pts + duration, dts + duration)
        #: how far the timestamps move on at each loop
        self.period = end


def _parameter_sets(caps: Gst.Caps) -> bytes | None:
    """The SPS and PPS of an ``avc`` stream's ``codec_data`` (avcC) as length-prefixed NAL units
    (the samples' own format, lengths of ``lengthSizeMinusOne + 1`` bytes), None if it has none."""
    found, data = caps.get_structure(0).get_value("codec_data"), None
    if found is not None:
        ok, info = found.map(Gst.MapFlags.READ)
        if ok:
            data = bytes(info.data)
            found.unmap(info)
    if not data or len(data) < 7:
        return None
    size = (data[4] & 3) + 1
    units, at = [], 5
    for bits in (0x1F, 0xFF):  # the SPS count (byte 5, low five bits), then the PPS count after the SPS
        count, at = data[at] & bits, at + 1
        for _ in range(count):
            length = int.from_bytes(data[at : at + 2], "big")
            units.append(length.to_bytes(size, "big") + data[at + 2 : at + 2 + length])
            at += 2 + length
    return b"".join(units) or None


def _prefixed(head: bytes, buffer: Gst.Buffer) -> Gst.Buffer:
    """``buffer`` with ``head`` before its data, its timestamps and flags kept."""
    out = Gst.Buffer.new_wrapped(head + buffer.extract_dup(0, buffer.get_size()))
    out.pts, out.dts, out.duration = buffer.pts, buffer.dts, buffer.duration
    out.set_flags(buffer.get_flags())
    return out


class Feeder:
    """Feeds one client's appsrc from the clip, looping if asked."""

    def __init__(self, clip: Clip, loop: bool):
        self.clip, self.loop = clip, loop
        self.position = 0
        self.offset = 0

    def need_data(self, src: GstApp.AppSrc, _length: int) -> None:
        if self.position == len(self.clip.buffers):
            if not self.loop:
                src.end_of_stream()
                return
            self.position = 0
            self.offset += self.clip.period
        original, pts, dts, duration = self.clip.buffers[self.position]
        self.position += 1
        buffer = original.copy()  # shares the memory, owns its timestamps
        buffer.pts, buffer.dts, buffer.duration = pts + self.offset, dts + self.offset, duration
        src.push_buffer(buffer)


class ClipFactory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, clip: Clip, loop: bool):
        super().__init__()
        self.clip, self.loop = clip, loop
        self.set_shared(False)  # every client starts at the first keyframe
        self.set_launch(
            "( appsrc name=src format=time is-live=false max-bytes=2000000 "
            "! rtph264pay name=pay0 pt=96 config-interval=0 )"
        )
        self.connect("media-configure", self._configure)

    def _configure(self, _factory, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_by_name_recurse_up("src")
        src.set_property("caps", self.clip.caps)
        feeder = Feeder(self.clip, self.loop)
        src.connect("need-data", feeder.need_data)  # the handler keeps the feeder alive with the media


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clip", required=True, help="an MP4 file with an H.264 video stream")
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--loop", action="store_true", help="play the clip forever")
    args = parser.parse_args(argv)
    mount = args.mount if args.mount.startswith("/") else "/" + args.mount

    Gst.init(None)
    try:
        clip = Clip(args.clip)
    except (ValueError, GLib.Error) as exc:
        print(f"rtsp_camera: {exc}", file=sys.stderr)
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(mount, ClipFactory(clip, args.loop))
    if server.attach(None) == 0:
        print(f"rtsp_camera: cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 2

    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, loop.quit)
    # Sessions of clients that vanished without TEARDOWN expire only when someone asks.
    pool = server.get_session_pool()
    GLib.timeout_add_seconds(2, lambda: pool.cleanup() >= 0)

    print(f"ready rtsp://{args.host}:{args.port}{mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
