"""Camera sources against a real RTSP camera (GStreamer's RTSP server in another process) and real files.

Nothing is mocked: faults are made by signalling the camera process (SIGSTOP stalls it
mid-stream, SIGKILL drops it) and by damaging a copy of a clip. Waits poll with generous
deadlines; the only timing assertions are bounds several seconds wide.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from gateway.files import BgrConverter
from gateway.frames import SourceFrame
from gateway.ingest import FileSource, RtspSource, create_source
from peers import require
from rtsp_support import gstreamer_missing, rtsp_camera

pytestmark = pytest.mark.realtime

HAMILTON = "short_hamilton_clip.mp4"  # 640x360, 29.97 fps, keyframe every 2 s, with an audio track
MOT17 = "MOT17-13-SDP_raw_h264.mp4"  # 960x540, 25 fps, B-frames, keyframe every 10 s

READ_TIMEOUT = 2.0
FAST = dict(open_timeout=2.0, read_timeout=READ_TIMEOUT, backoff_initial=0.2, backoff_max=1.0)


@pytest.fixture(scope="module")
def gstreamer() -> None:
    require(gstreamer_missing())


@pytest.fixture
def clips(data) -> Path:
    return data / "videos"


@pytest.fixture
def camera(gstreamer, clips):
    with rtsp_camera(clips / HAMILTON) as camera:
        yield camera


@pytest.fixture
def started():
    """Starts sources for a test and makes sure each one is stopped afterwards."""
    sources = []

    def start(source, collector=None):
        collector = Collector() if collector is None else collector
        source.start(collector)
        sources.append(source)
        return collector

    yield start
    for source in sources:
        source.stop(timeout=1.0)


class Collector:
    """An ``emit`` that keeps what the tests check about each frame (not the pixels)."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.lock = threading.Lock()
        self.frames: list[tuple[int, float, tuple, bool, float]] = []
        self.threads: set[str] = set()

    def __call__(self, frame: SourceFrame) -> None:
        image = frame.image
        ok = image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.flags.c_contiguous
        with self.lock:
            self.frames.append((frame.index, frame.time, image.shape, ok, frame.arrived))
            self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)

    def __len__(self) -> int:
        with self.lock:
            return len(self.frames)

    def snapshot(self):
        with self.lock:
            return list(self.frames)


def wait_for(predicate, timeout: float, what: str) -> float:
    """Poll until ``predicate()``; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(0.02)
    return time.monotonic() - start


def assert_continuous(frames, dropped: int = 0) -> None:
    """Indices 0, 1, 2 ... with strictly increasing times, however many reconnects or loops.

    A live source may drop frames (oldest first) if its emit thread falls behind a burst;
    then every missing index must be one of the ``dropped`` it counted.
    """
    indices = [f[0] for f in frames]
    times = [f[1] for f in frames]
    if dropped:
        assert all(b > a for a, b in zip(indices, indices[1:])) and indices[-1] + 1 - len(indices) <= dropped
    else:
        assert indices == list(range(len(frames)))
    assert all(b > a for a, b in zip(times, times[1:])), "time went back or stood still"
    assert all(f[3] for f in frames), "an image was not a C-contiguous BGR uint8 array"


# -- RTSP ------------------------------------------------------------------------------


@pytest.mark.parametrize(("transport", "clip", "shape"),
                         [("tcp", HAMILTON, (360, 640, 3)), ("udp", MOT17, (540, 960, 3))])
def test_rtsp_delivers_the_clip(gstreamer, clips, started, transport, clip, shape):
    with rtsp_camera(clips / clip) as camera:
        source = RtspSource("lobby", camera.url, transport=transport, **FAST)
        got = started(source)
        wait_for(lambda: len(got) >= 40, 15, "40 frames")
        assert source.stats.connected
        frames = got.snapshot()
        assert {f[2] for f in frames} == {shape}
        assert_continuous(frames, source.stats.dropped)
        assert source.stats.frames >= len(frames) and source.stats.errors == 0 and source.stats.reconnects == 0
        assert len(got.threads) == 1  # emit is only ever called from the source's own thread


def test_a_clip_with_several_slices_a_frame_arrives_frame_for_frame_as_coded(gstreamer, tmp_path, started):
    """Two slices a picture (as x264's sliced threads code it): the camera must send the parameter
    sets once per keyframe, not before each slice, or FFmpeg decodes each keyframe as two half
    pictures and every frame after it on half a picture, and flags none of them corrupt."""
    rng = np.random.default_rng(3)
    texture = cv2.resize(rng.integers(0, 256, (45, 80, 3), np.uint8), (640, 360), interpolation=cv2.INTER_CUBIC)
    clip = tmp_path / "sliced.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "threads": "1",
                          "x264-params": "keyint=15:min-keyint=15:scenecut=0:bframes=0:slices=2"}
        for number in range(45):
            frame = av.VideoFrame.from_ndarray(np.roll(texture, 4 * number, axis=1), format="bgr24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(clip)) as container:
        first = next(container.demux(video=0))
        assert sum(1 for unit in _nal_types(bytes(first)) if unit == 5) == 2  # an IDR picture in two slices
    with av.open(str(clip)) as container:
        expected = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    got: list[np.ndarray] = []
    with rtsp_camera(clip) as camera:
        started(RtspSource("lobby", camera.url, **FAST), lambda frame: got.append(frame.image))
        wait_for(lambda: len(got) >= 40, 15, "40 frames")
    worst = max(float(np.abs(a.astype(np.int16) - b).mean()) for a, b in zip(got[:40], expected[:40]))
    assert worst < 1.0, f"a received frame differs from the coded one by {worst:.1f} grey levels on average"


def _nal_types(sample: bytes) -> list[int]:
    """The NAL unit types of an MP4 sample (4-byte length prefixes)."""
    types, at = [], 0
    while at + 4 < len(sample):
        length = int.from_bytes(sample[at : at + 4], "big")
        types.append(sample[at + 4] & 0x1F)
        at += 4 + length
    return types


def test_the_camera_loops_its_clip_seamlessly(gstreamer, half_second, started):
    with rtsp_camera(half_second, loop=True) as camera:  # 15 frames: a loop every half second
        source = RtspSource("lobby", camera.url, **FAST)
        got = started(source)
        wait_for(lambda: len(got) >= 50, 15, "three loops")
        frames = got.snapshot()
        assert_continuous(frames, source.stats.dropped)
        steps = [b[1] - a[1] for a, b in zip(frames, frames[1:]) if b[0] == a[0] + 1]
        assert len(steps) > 40 and max(steps) < 1.5 / 29.97  # no gap or jump at the loop points
        assert source.stats.reconnects == 0 and source.stats.errors == 0


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_reconnects_when_the_camera_comes_back(camera, started, transport):
    source = RtspSource("lobby", camera.url, transport=transport, **FAST)
    got = started(source)
    wait_for(lambda: len(got) >= 10, 15, "first frames")

    camera.kill()
    wait_for(lambda: not source.stats.connected, READ_TIMEOUT + 3, "the loss noticed")
    time.sleep(0.5)  # let a reconnect attempt fail against the closed port
    lost_at = len(got)
    assert not source.stats.connected and source.stats.errors >= 1
    camera.restart()

    wait_for(lambda: source.stats.reconnects >= 1 and len(got) >= lost_at + 15, 15, "frames after the restart")
    assert source.stats.connected
    frames = got.snapshot()
    assert_continuous(frames, source.stats.dropped)
    # The outage shows as a gap in media time, not as time running backwards.
    assert frames[lost_at][1] - frames[lost_at - 1][1] > 0.5


def test_stalled_camera_times_out_and_recovers(camera, started):
    source = RtspSource("lobby", camera.url, **FAST)
    got = started(source)
    wait_for(lambda: len(got) >= 10, 15, "first frames")

    camera.pause()
    noticed = wait_for(lambda: not source.stats.connected, READ_TIMEOUT + 3, "the stall noticed")
    assert noticed >= READ_TIMEOUT - 1.0  # frames already in flight may arrive for a moment, no more
    stalled_at, errors = source.stats.frames, source.stats.errors
    assert "no data" in source.stats.last_error
    # It keeps trying: each attempt fails at open_timeout against the frozen server.
    wait_for(lambda: source.stats.errors > errors, 2.0 + 1.0 + 3, "a failed reconnect")
    assert source.stats.frames == stalled_at and not source.stats.connected

    camera.resume()
    wait_for(lambda: len(got) >= stalled_at + 15, 15, "frames after the camera woke up")
    assert source.stats.reconnects >= 1 and source.stats.connected
    assert_continuous(got.snapshot(), source.stats.dropped)


def test_a_stalled_camera_stalls_only_its_own_source(gstreamer, clips, started):
    with rtsp_camera(clips / HAMILTON) as stuck_camera, rtsp_camera(clips / HAMILTON) as live_camera:
        # A read timeout longer than the test: the stuck source stays blocked in its read.
        stuck = RtspSource("stuck", stuck_camera.url, **{**FAST, "read_timeout": 30.0})
        live = RtspSource("live", live_camera.url, transport="udp", **FAST)
        stuck_got, live_got = started(stuck), started(live)
        wait_for(lambda: len(stuck_got) >= 10 and len(live_got) >= 10, 15, "both cameras streaming")

        stuck_camera.pause()
        time.sleep(0.5)
        stuck_at, before = stuck.stats.frames, len(live_got)
        time.sleep(1.0)
        assert len(live_got) >= before + 15  # ~30 at 29.97 fps
        assert stuck.stats.frames == stuck_at

        begun = time.monotonic()
        stuck.stop(timeout=1.0)
        assert time.monotonic() - begun < 2.5  # returns although its reader is still blocked
        stopped_at = len(stuck_got)

        stuck_camera.resume()  # the blocked read gets data again: none of it may be emitted now
        before = len(live_got)
        wait_for(lambda: len(live_got) >= before + 30, 5, "the other camera still delivering")
        assert live.stats.connected and live.stats.errors == 0
        assert len(stuck_got) == stopped_at


def test_corrupt_bitstream_is_counted_and_skipped(gstreamer, clips, tmp_path, started):
    damaged = tmp_path / "damaged.mp4"
    hits = damage_video_data(clips / HAMILTON, damaged, every=5)
    assert hits > 20
    with rtsp_camera(damaged) as camera:
        source = RtspSource("lobby", camera.url, **FAST)
        got = started(source)
        wait_for(lambda: source.stats.errors >= 3 and len(got) >= 40, 20, "frames and counted errors")
        counted = len(got)
        wait_for(lambda: len(got) >= counted + 15, 10, "frames still coming after the damage")
        assert source.stats.connected and source.stats.reconnects == 0
        assert "corrupt" in source.stats.last_error
        assert_continuous(got.snapshot(), source.stats.dropped)
        begun = time.monotonic()
        source.stop()
        assert time.monotonic() - begun < 2.0


def damage_video_data(source: Path, target: Path, every: int, seed: int = 7) -> int:
    """Copy ``source`` with random bytes overwritten inside every ``every``-th video sample; how many samples.

    Only sample payloads are touched (past each sample's first NAL header), so the MP4
    structure and the samples' sizes stay intact and the damage reaches the decoder.
    """
    shutil.copyfile(source, target)
    with av.open(str(source)) as container:
        samples = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size and p.pos >= 0]
    rng = random.Random(seed)
    data = bytearray(target.read_bytes())
    hits = 0
    for number, (pos, size) in enumerate(samples):
        if number % every == every - 1 and size > 64:
            for _ in range(8):
                data[pos + rng.randrange(16, size)] = rng.randrange(256)
            hits += 1
    target.write_bytes(bytes(data))
    return hits


# -- files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def half_second(tmp_path_factory, data) -> Path:
    """The first 15 frames (half a second) of the Hamilton clip's video, remuxed."""
    target = tmp_path_factory.mktemp("sources") / "half.mp4"
    with av.open(str(data / "videos" / HAMILTON)) as src, av.open(str(target), "w") as dst:
        video = src.streams.video[0]
        out = dst.add_stream_from_template(video)
        for number, packet in enumerate(p for p in src.demux(video) if p.dts is not None):
            if number == 15:
                break
            packet.stream = out
            dst.mux(packet)
    return target


def count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_file_loops_with_continuous_index_and_time(half_second, started):
    per_pass = count_frames(half_second)
    source = FileSource("file", half_second, loop=True, realtime=False)
    got = started(source, Collector())
    wait_for(lambda: len(got) >= 3 * per_pass + 2, 10, "three loops")
    source.stop()
    frames = got.snapshot()
    assert_continuous(frames)
    steps = np.diff([f[1] for f in frames])
    assert steps.max() < 1.5 / 29.97  # no jump at the loop points either
    assert frames[3 * per_pass][1] == pytest.approx(3 * per_pass / 29.97, rel=0.02)
    assert {f[2] for f in frames} == {(360, 640, 3)}


def test_file_without_loop_delivers_every_frame_once(half_second, started):
    source = FileSource("file", half_second, loop=False, realtime=False)
    got = started(source, Collector(delay=0.01))  # a slow consumer slows the reading, loses nothing
    expected = count_frames(half_second)
    wait_for(lambda: len(got) == expected and not source.stats.connected, 10, "the whole file")
    time.sleep(0.2)
    assert len(got) == expected and source.stats.dropped == 0
    assert_continuous(got.snapshot())


def test_realtime_file_keeps_the_file_rate(half_second, started):
    source = FileSource("file", half_second, loop=True, realtime=True)
    got = started(source)
    time.sleep(0.5)
    before = len(got)
    time.sleep(2.0)
    delivered = len(got) - before
    assert 30 <= delivered <= 90  # 29.97 fps: ~60 in two seconds
    begun = time.monotonic()
    source.stop()
    assert time.monotonic() - begun < 1.0
    assert_continuous(got.snapshot(), source.stats.dropped)


def test_realtime_file_drops_oldest_when_emit_is_slow(half_second, started):
    source = FileSource("file", half_second, loop=True, realtime=True, queue_size=2)
    got = started(source, Collector(delay=0.2))
    wait_for(lambda: source.stats.dropped >= 10 and len(got) >= 5, 10, lambda: f"drops counted: {source.stats}")
    source.stop()
    frames, stats = got.snapshot(), source.stats
    indices = [f[0] for f in frames]
    assert indices == sorted(set(indices))  # in order, none twice
    # Every decoded frame was emitted, dropped, or is among the two still queued at stop(), or is the
    # one the decode thread had just counted when stop() came (it is then discarded, not queued).
    assert 0 <= stats.frames - stats.dropped - len(frames) <= 3
    # Oldest dropped: after each 0.2 s emit (6 frames at 29.97 fps) the next one is recent.
    assert max(np.diff(indices)) <= 15


def test_frame_size_changes_are_passed_on(tmp_path, started):
    # Two MPEG-TS encodings back to back, as from a camera whose resolution was changed:
    # a new SPS mid-stream, and timestamps that start again from zero.
    sizes = [(320, 240)] * 6 + [(160, 128)] * 6
    data = b""
    for part, (width, height) in enumerate([(320, 240), (160, 128)]):
        path = tmp_path / f"part{part}.ts"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for index in range(6):
                frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), index * 40, np.uint8), format="rgb24")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        data += path.read_bytes()
    path = tmp_path / "sizes.ts"
    path.write_bytes(data)

    source = FileSource("file", path, loop=False, realtime=False)
    got = started(source)
    wait_for(lambda: len(got) == len(sizes) and not source.stats.connected, 10, lambda: f"every frame, got {len(got)}")
    frames = got.snapshot()
    assert [f[2] for f in frames] == [(h, w, 3) for w, h in sizes]
    assert_continuous(frames)


def _next_thread_id() -> int:
    """The kernel's id for the next thread started: thread ids are handed out in turn."""
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    return thread.native_id


def test_pictures_convert_to_bgr_as_pyav_converts_them_and_start_no_thread(half_second):
    """PyAV's own conversion sets FFmpeg's scaler up for every picture, which starts a thread per core
    each time (two a picture on the 2-core CI machine); the sources' converter keeps one scaler."""
    with av.open(str(half_second)) as container:
        pictures = list(container.decode(video=0))
    bgr = BgrConverter()
    bgr(pictures[0])
    before = _next_thread_id()
    images = [bgr(picture) for picture in pictures]
    started = _next_thread_id() - before - 1
    assert started < len(pictures) // 2, f"{started} threads started converting {len(pictures)} pictures"
    for picture, image in zip(pictures, images, strict=True):
        assert image.flags.c_contiguous and image.shape == (picture.height, picture.width, 3)
        assert np.array_equal(image, picture.to_ndarray(format="bgr24"))


# -- construction ----------------------------------------------------------------------


def test_create_source_picks_the_kind(half_second):
    assert isinstance(create_source("a", "rtsp://127.0.0.1:1/cam", transport="udp"), RtspSource)
    assert isinstance(create_source("a", f"file://{half_second}"), FileSource)
    assert isinstance(create_source("a", str(half_second), realtime=False), FileSource)
    with pytest.raises(ValueError, match=r"unsupported source 'http://x/cam'"):
        create_source("a", "http://x/cam")
    with pytest.raises(ValueError, match="transport must be tcp or udp, not 'sctp'"):
        RtspSource("a", "rtsp://127.0.0.1:1/cam", transport="sctp")
    with pytest.raises(FileNotFoundError, match="no such file"):
        FileSource("a", half_second.with_name("missing.mp4"))
