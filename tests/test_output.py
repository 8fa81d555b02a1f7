"""A camera's output (gateway/egress/output.py): one H.264 encode is the recording, and what viewers get.

Real frames of the bundled clip go through the real encoder and muxer and are decoded back
with FFmpeg (PyAV): every frame index keeps its slot in its recording, each recording starts at
an IDR, nothing is encoded twice, and a continuous rendition never drops a frame to keep up.
"""

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest

from gateway.egress import CameraOutput, Recorder
from gateway.egress.encoding import TIME_BASE, Continuous, open_encoder
from gateway.frames import BLANK_LEVEL, Released
from keys import VaultRef

pytestmark = pytest.mark.realtime

SAMPLE = Path(__file__).resolve().parents[1] / "config" / "samples" / "vtest-10s.mp4"


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    with av.open(str(SAMPLE)) as container:
        return [f.to_ndarray(format="bgr24") for _, f in zip(range(60), container.decode(video=0))]


def decoded(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def keyframes(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [i for i, packet in enumerate(container.demux(video=0)) if packet.size and packet.is_keyframe]


def test_recordings_are_the_one_encode_split_at_their_first_frames(tmp_path, frames):
    """Two recordings (a new vault reference at frame 25): each file starts with an IDR and holds
    exactly its frames; the dropped frame is recorded blank in its slot; every frame encoded once."""
    first, second = VaultRef("cam", "one", 0, 0), VaultRef("cam", "two", 25, 2_500_000)
    recorder = Recorder(tmp_path, "cam")
    output = CameraOutput("cam", ("h264", "vp8"), recorder)
    for index, image in enumerate(frames[:50]):
        state, pixels = ("dropped", None) if index == 30 else ("redacted", image)
        output(Released("cam", index, index / 10, state, pixels, image.shape, first if index < 25 else second))
    h264 = output.rendition("h264")
    output.close()
    assert [p.name for p in recorder.files] == ["one.mp4", "two.mp4"]
    one, two = (decoded(p) for p in recorder.files)
    assert (len(one), len(two)) == (25, 25)
    assert keyframes(recorder.files[0])[0] == 0 and keyframes(recorder.files[1])[0] == 0
    assert abs(two[0].time - 0.0) < 1e-3 and abs(two[-1].time - 2.4) < 1e-3  # times from the recording's start
    blank = two[5].to_ndarray(format="bgr24").astype(int)
    assert np.abs(blank - BLANK_LEVEL).max() < 8  # frame 30 was dropped: its slot holds a blank frame
    assert np.abs(one[3].to_ndarray(format="bgr24").astype(int) - frames[3]).mean() < 6  # the picture itself
    assert h264.frames_encoded == 50 and h264.frames_dropped == 0  # once per frame, none lost
    assert output.rendition("vp8").frames_encoded == 0  # nobody watched in VP8: nothing encoded


def test_a_continuous_rendition_waits_rather_than_drops(tmp_path, frames):
    """Frames pushed far faster than real time: the encoder falls behind, and every frame still
    reaches the recording (push waits for room; an on-demand rendition would drop the oldest)."""
    recorder = Recorder(tmp_path, "cam")
    output = CameraOutput("cam", ("h264",), recorder)
    big = [np.ascontiguousarray(np.tile(f, (2, 2, 1))[:720, :1280]) for f in frames[:8]]
    count = 120
    for index in range(count):  # media time 1/30 s apart, released all at once (no pacing delay)
        output(Released("cam", index, index / 30, "redacted", big[index % 8], big[0].shape, None, at=index / 30))
    h264 = output.rendition("h264")
    output.close()
    assert h264.frames_encoded == count and h264.frames_dropped == 0
    assert recorder.frames == count and len(decoded(recorder.files[0])) == count


@pytest.mark.asyncio
async def test_viewers_get_the_recordings_packets_on_one_timeline_across_recordings(tmp_path, frames):
    """A viewer's packets are the recording's packets (the same bytes): nothing is encoded for it. A new
    recording restarts the file's timeline, never the viewer's: their times keep rising at the camera's
    rate (a jump back would freeze a browser's playback at every new file)."""
    recorded = []
    recorder = Recorder(tmp_path, "cam")
    write = recorder.write
    recorder.write = lambda packet, frame, stream: (recorded.append(bytes(packet)), write(packet, frame, stream))
    output = CameraOutput("cam", ("h264",), recorder)
    first, second = VaultRef("cam", "one", 0, 0), VaultRef("cam", "two", 20, 2_000_000)
    image = frames[0]
    output(Released("cam", 0, 0.0, "redacted", image, image.shape, first))
    output(Released("cam", 1, 0.1, "redacted", image, image.shape, first))
    track = output.rendition("h264").subscribe()
    got = []

    async def watch():  # a viewer reads as packets come (one that falls behind is resumed at a keyframe)
        while len(got) < 30:
            got.append(await track.recv())

    viewer = asyncio.ensure_future(watch())
    await asyncio.sleep(0.1)  # subscribed: the rendition now fans out to it
    try:
        for index in range(2, 60):
            ref = first if index < 20 else second
            await asyncio.to_thread(output, Released("cam", index, index / 10, "redacted", frames[index], image.shape,
                                                     ref))
        await asyncio.wait_for(viewer, 10)
    finally:
        track.stop()
        await asyncio.to_thread(output.close)
    assert got[0].is_keyframe
    assert all(bytes(packet) in recorded for packet in got)
    times = [float(packet.pts * packet.time_base) for packet in got]
    assert times[0] < 2.0 < times[-1]  # the viewer watched across the new recording
    assert all(abs(b - a - 0.1) < 1e-3 for a, b in zip(times, times[1:])), times
    assert output.rendition("h264").frames_encoded == 60
    assert [p.name for p in recorder.files] == ["one.mp4", "two.mp4"]
    assert abs(decoded(recorder.files[1])[0].time) < 1e-3  # the file's own timeline starts at 0


def test_keyframe_requests_cost_at_most_one_extra_keyframe_a_second(tmp_path, frames):
    """However often viewers ask (PLI storms, many newcomers), at most one extra keyframe a second."""
    import time

    output = CameraOutput("cam", ("h264",), Recorder(tmp_path, "cam"))
    image = frames[0]

    def push(indices):  # each frame with five keyframe requests behind it
        for index in indices:
            output(Released("cam", index, index / 30, "redacted", frames[index], image.shape, None, at=index / 30))
            if output.rendition("h264") is not None:
                for _ in range(5):
                    output.rendition("h264").request_keyframe()

    push(range(10))  # the first frame is an IDR anyway; the requests meanwhile add nothing
    time.sleep(1.1)  # a second later one request is honoured, and the rest again not
    push(range(10, 20))  # 0.67 s of media time in all: no GOP keyframe (every 2 s)
    h264 = output.rendition("h264")
    output.close()
    assert h264.keyframes == 2


def test_the_continuous_encode_hands_each_packet_on_with_its_frame(frames):
    """The camera's encode holds no frame back: the packet of a frame comes out of the call that took
    it (a frame held would add a frame's time of latency for every live viewer), keeping its time
    however irregular the camera's clock."""
    encoder = open_encoder("h264", 768, 576, 10.0, 0, Continuous(lambda *_: None))
    for pts, image in zip((0, 9000, 25_000, 30_000, 100_000), frames):
        frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, TIME_BASE
        assert [packet.pts for packet in encoder.encode(frame)] == [pts]
