"""The live per-camera pipeline on a real clip with the real face detector: fail closed under
every fault (warm-up, crash, stall, overload), frames released once and in order, and the
recordings it makes unmask with an investigator's key."""

import hashlib
import os
import threading
import time
from dataclasses import dataclass

import av
import numpy as np
import pytest

from gateway.cli import main
from gateway.files import VideoTranscoder, read_image
from gateway.egress import CameraOutput, Recorder, ThreadedSink
from gateway.frames import BLANK_LEVEL, blank
from gateway.live import WATCHDOG_PERIOD, CameraPipeline, watch
from gateway.sealing import RedactSeal
import keys.seal
from keys import CoSignerUnavailable, KeyDirectory, PrivateIdentity, Sealer, grants_of
from keys.clips import MIN_PSNR, psnr, restored_psnr
from redaction.engine import Analyzer
from redaction.policy import parse_policy

pytestmark = pytest.mark.realtime

# stride 3 at 12.5 fps: one detection (~0.1-0.25 s here) per 0.24 s of video, as a live camera would be set up
POLICY = parse_policy({"classes": {"plate": {"enabled": False}}, "detection": {"threads": 1, "stride": 3}})
FPS = 12.5


@dataclass(frozen=True)
class Item:
    index: int
    time: float
    image: np.ndarray
    arrived: float


@pytest.fixture(scope="module")
def clip(short_clip):
    """The first 40 frames of the 2 s clip (640x360), and the faces the detector finds on each
    with confidence (>= 0.5; a stride may legitimately skip faces that flicker at low scores)."""
    frames = [f.image for f in VideoTranscoder(short_clip).frames()][:40]
    analyzer = Analyzer(POLICY)
    faces = [[r for r in analyzer.regions(image) if r.score >= 0.5] for image in frames]
    assert sum(map(len, faces)) >= 30
    return frames, faces, analyzer.detectors


class Faulty:
    """The real face detector, with faults injected on chosen frames (by content identity)."""

    classes = ("face",)

    def __init__(self, real, frames, crash=(), stall=None, slow=0.0):
        self.real, self.crash, self.stall, self.slow = real, set(crash), stall or {}, slow
        self.ids = {hashlib.blake2b(f.tobytes()).digest(): i for i, f in enumerate(frames)}
        self.calls = 0

    def _fault(self, image):
        self.calls += 1
        index = self.ids.get(hashlib.blake2b(image.tobytes()).digest())
        if index in self.crash:
            raise RuntimeError(f"model crashed on frame {index}")
        if index in self.stall:
            time.sleep(self.stall.pop(index))
        if self.slow:
            time.sleep(self.slow)

    def detect(self, image):
        self._fault(image)
        return self.real.detect(image)

    def detect_boxes(self, image, boxes, sweep=False, heights=None):  # motion-gated detection looks into boxes
        self._fault(image)
        return self.real.detect_boxes(image, boxes, sweep)

    def roi_finest(self, width, height):
        return self.real.roi_finest(width, height)


def run(frames, pipeline, fps=FPS, tail=1.0):
    """Offer frames at ``fps`` from a source thread while a watchdog ticks; then stop."""
    released = []
    pipeline.sinks.insert(0, released.append)
    stop = threading.Event()

    def watchdog():
        while not stop.is_set():
            pipeline.tick()
            time.sleep(0.005)

    ticker = threading.Thread(target=watchdog, daemon=True)
    pipeline.start()
    ticker.start()
    start = time.monotonic()
    for index, image in enumerate(frames):
        time.sleep(max(0.0, start + index / fps - time.monotonic()))
        pipeline.offer(Item(index, index / fps, image.copy(), time.monotonic()))
    time.sleep(tail)
    stop.set()
    ticker.join()
    pipeline.stop()
    return released


def check_fail_closed(released, frames, faces):
    """Every frame released once, in order; blanked frames solid; redacted ones changed on every face."""
    assert [r.index for r in released] == list(range(len(frames)))
    for item in released:
        if item.state == "blanked":
            assert (item.image == BLANK_LEVEL).all()
        elif item.state == "dropped":
            assert item.image is None
        else:
            raw = frames[item.index]
            for face in faces[item.index]:
                x, y, w, h = face.box
                changed = (item.image[y : y + h, x : x + w] != raw[y : y + h, x : x + w]).any(axis=2).mean()
                assert changed > 0.5, f"frame {item.index}: face {face.box} released {changed:.0%} changed"


def test_frames_are_blanked_until_the_detector_is_warm(clip):
    frames, faces, detectors = clip

    def slow_start(policy):
        time.sleep(2.0)  # longer than the hold-back: the first frames cannot wait for it
        return Analyzer(policy, detectors)

    pipeline = CameraPipeline("cam", RedactSeal(POLICY), [], holdback=1.5, analyzer_factory=slow_start)
    released = run(frames, pipeline, tail=2.5)
    check_fail_closed(released, frames, faces)
    states = [r.state for r in released]
    assert states[0] in ("blanked", "dropped") and "redacted" in states
    assert pipeline.stats.blanked + pipeline.stats.dropped >= 5 and pipeline.stats.warm


def test_a_crashing_detector_blanks_its_frames_and_the_stream_goes_on(clip):
    frames, faces, detectors = clip
    faulty = Faulty(detectors["face"], frames, crash=range(10, 16))
    pipeline = CameraPipeline("cam", RedactSeal(POLICY), [], holdback=0.8,
                              analyzer_factory=lambda p: Analyzer(p, {"face": faulty}))
    released = run(frames, pipeline)
    check_fail_closed(released, frames, faces)
    assert pipeline.stats.detector_errors >= 1
    assert all(released[i].state != "redacted" for i in range(10, 16))
    assert sum(r.state == "redacted" for r in released[20:]) >= 10


def test_the_watchdog_wakes_at_deadlines_not_every_few_milliseconds(clip):
    """A frame nobody decides (no worker) is blanked at its hold-back deadline, by a watchdog that
    sleeps until then (at most WATCHDOG_PERIOD at a time) instead of waking every 5 ms."""
    frames = clip[0]
    pipeline = CameraPipeline("cam", RedactSeal(POLICY), [], holdback=0.1)
    left: dict[int, tuple[str, float]] = {}
    pipeline.sinks.append(lambda item: left.__setitem__(item.index, (item.state, time.monotonic())))
    ticks = []
    tick = pipeline.tick
    pipeline.tick = lambda now=None: ticks.append(now) or tick(now)
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(lambda: [pipeline], stop), daemon=True)
    watcher.start()
    time.sleep(0.05)
    arrived = time.monotonic()
    pipeline.offer(Item(0, 0.0, frames[0].copy(), arrived))
    assert pipeline.tick(arrived) == pytest.approx(arrived + 0.1)  # its deadline: when to tick again
    time.sleep(0.45)
    stop.set()
    watcher.join(2)
    state, when = left[0]
    assert state == "blanked" and 0.1 <= when - arrived < 0.3  # at its deadline (loosely: a busy CI machine)
    assert pipeline.tick(when) == pytest.approx(when + 0.1)  # nothing undecided: a hold-back from now
    assert len(ticks) <= 0.5 / WATCHDOG_PERIOD + 10  # 100 at one wake-up every 5 ms


def test_blanked_frames_share_one_read_only_picture():
    """A blanked frame's pixels are made once per shape and shared (no 2.7 MB allocation per blanked
    720p frame), so nobody may write into them."""
    first, second = blank((720, 1280, 3)), blank((720, 1280, 3))
    assert first is second and (first == BLANK_LEVEL).all() and blank((360, 640, 3)).shape == (360, 640, 3)
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0, 0] = 0


def test_a_stalled_detector_is_overtaken_by_the_watchdog(clip):
    frames, faces, detectors = clip
    faulty = Faulty(detectors["face"], frames, stall={9: 1.5})
    pipeline = CameraPipeline("cam", RedactSeal(POLICY), [], holdback=0.6, queue_frames=64,
                              analyzer_factory=lambda p: Analyzer(p, {"face": faulty}))
    released = run(frames, pipeline, tail=2.0)
    check_fail_closed(released, frames, faces)
    assert pipeline.stats.blanked >= 3  # ~11 of the frames that came during the 1.5 s stall, on a quiet machine
    assert pipeline.stats.late >= 1  # the stalled frame's decision came after it was blanked
    assert any(r.state == "redacted" for r in released[30:])


def test_overload_drops_and_blanks_but_never_releases_raw(clip):
    frames, faces, detectors = clip
    # each detection call takes longer than its 3 frames, yet a gated look (two calls: the changed
    # boxes and a sweep slice) fits in the hold-back; a stream's second look (three calls) does not
    faulty = Faulty(detectors["face"], frames, slow=0.3)
    pipeline = CameraPipeline("cam", RedactSeal(POLICY), [], holdback=0.8, queue_frames=3,
                              analyzer_factory=lambda p: Analyzer(p, {"face": faulty}))
    released = run(frames, pipeline)
    check_fail_closed(released, frames, faces)
    assert pipeline.stats.dropped >= 3 and pipeline.stats.released >= 1


def live_sealer(tmp_path, sealing_store, investigator) -> Sealer:
    """Camera cam's sealer as the live gateway makes it (segments end with their recording), into a
    fresh vault whose one investigator is ``investigator``."""
    directory = KeyDirectory.init(tmp_path / "keys")
    directory.add(investigator.public)
    store = sealing_store(tmp_path / "vault", directory)
    return Sealer(store, directory.signer, "cam", POLICY.model_dump(mode="json"), grants_of(POLICY),
                  directory.identities, segment_seconds=None)


def stuck_sealer(tmp_path, monkeypatch, sealing_store) -> tuple[Sealer, threading.Event]:
    """A live sealer whose thread never gets through a frame until the event is set, with a queue of
    8 frames (the clip is shorter than the real queue)."""
    monkeypatch.setattr(keys.seal, "QUEUE_FRAMES", 8)
    sealer = live_sealer(tmp_path, sealing_store, PrivateIdentity.generate("ivan", ["investigator"]))
    stall = threading.Event()
    monkeypatch.setattr(sealer, "_add", lambda *args: stall.wait())
    return sealer, stall


def run_while_stuck(frames, pipeline, stall: threading.Event) -> tuple[list, float | None]:
    """:func:`run` with the sealer stuck until half a second after the last frame (before run() stops,
    and closes, the pipeline); returns what was released and when the sealer was freed."""
    lifted: list[float] = []

    def lift():
        lifted.append(time.monotonic())
        stall.set()

    unstall = threading.Timer(len(frames) / FPS + 0.5, lift)
    unstall.start()
    try:
        released = run(frames, pipeline, tail=2.0)
    finally:
        stall.set()
        unstall.cancel()
    return released, lifted[0] if lifted else None


def test_a_stalled_sealer_blanks_frames_instead_of_releasing_them_unsealed(clip, tmp_path, monkeypatch, sealing_store):
    """The sealing thread codes clips off the frame's path; when it falls behind by a whole queue,
    the frames it cannot take leave blanked (counted), never redacted with their originals unsealed."""
    frames, faces, detectors = clip
    sealer, stall = stuck_sealer(tmp_path, monkeypatch, sealing_store)
    pipeline = CameraPipeline("cam", RedactSeal(POLICY, sealer, live=True), [], holdback=1.0,
                              analyzer_factory=lambda p: Analyzer(p, detectors))
    released, _ = run_while_stuck(frames, pipeline, stall)
    check_fail_closed(released, frames, faces)
    refused = pipeline.stats.seal_refused
    assert refused > 0 and refused == sealer.dropped
    assert pipeline.stats.released <= 8 + 1  # what the queue took, plus the frame the thread holds
    assert sum(r.state == "blanked" for r in released) >= refused


def test_a_stalled_sealer_at_a_recording_s_end_does_not_hold_the_frames_after_it(clip, tmp_path, monkeypatch,
                                                                                 sealing_store):
    """A live camera begins a new recording every few seconds. With the sealing thread stuck (its
    co-signer unreachable) and its queue full, beginning the next recording must not wait for it:
    the frame that would begin it is refused like any the sealer cannot take, and it and the frames
    after it leave blanked at their deadlines, not when the sealer comes back. (Found by CI: a
    camera whose file descriptors ran out released nothing for 57 s, its next frame claimed and
    waiting to begin a recording, so that the watchdog could blank nothing either.)"""
    frames, faces, detectors = clip
    sealer, stall = stuck_sealer(tmp_path, monkeypatch, sealing_store)
    pipeline = CameraPipeline("cam", RedactSeal(POLICY, sealer, recording_seconds=0.4, live=True), [], holdback=1.0,
                              analyzer_factory=lambda p: Analyzer(p, detectors))
    left: dict[int, float] = {}
    pipeline.sinks.append(lambda item: left.setdefault(item.index, time.monotonic()))
    released, lifted = run_while_stuck(frames, pipeline, stall)
    check_fail_closed(released, frames, faces)
    assert pipeline.stats.seal_refused > 0 and pipeline.stats.seal_refused == sealer.dropped
    # a frame leaves by its deadline (the 1 s hold-back) while the sealer is stuck: all those that
    # came at least 1 s before it was freed (33 of the 40), with a margin for a loaded machine
    before = sum(1 for at in left.values() if lifted is not None and at < lifted)
    assert before >= len(frames) - 15, f"only {before} of {len(frames)} frames left while the sealer was stuck"


def test_a_worker_still_busy_when_stopped_closes_the_sealer_itself_once_it_ends(clip, tmp_path, sealing_store):
    """stop() waits for the worker only so long (a model load or a detection on an overloaded
    machine can outlast it); the sealer is then closed by the worker after its last frame, so the
    camera's vault is free again for a camera started anew in this process (an edit, a restart)."""
    _, _, detectors = clip
    sealer = live_sealer(tmp_path, sealing_store, PrivateIdentity.generate("ivan", ["investigator"]))
    loading, loaded = threading.Event(), threading.Event()

    def slow_load(policy):
        loading.set()
        loaded.wait(30)
        return Analyzer(policy, detectors)

    pipeline = CameraPipeline("cam", RedactSeal(POLICY, sealer, live=True), [], analyzer_factory=slow_load)
    pipeline.start()
    try:
        assert loading.wait(10)
        pipeline.stop(timeout=0.2)
        with pytest.raises(keys.VaultError, match="being sealed"):  # the busy worker's sealer still holds it
            Sealer(sealer.store, sealer._signer, "cam", POLICY.model_dump(mode="json"), grants_of(POLICY),
                   sealer.identities, segment_seconds=None)
    finally:
        loaded.set()
    pipeline._thread.join(30)
    assert not pipeline._thread.is_alive()
    again = Sealer(sealer.store, sealer._signer, "cam", POLICY.model_dump(mode="json"), grants_of(POLICY),
                   sealer.identities, segment_seconds=None)
    again.close()


def test_a_co_signer_lost_while_live_blanks_every_later_frame(clip, tmp_path, monkeypatch, sealing_store):
    """OpenBao goes away mid-stream: the sealing thread waits for it at the next share it needs, its
    queue fills, and from then on every frame leaves blanked (counted), never redacted with
    originals nobody can seal; closing gives up the wait (after CLOSING_PATIENCE) and reports the co-signer."""
    frames, faces, detectors = clip
    monkeypatch.setattr(keys.seal, "QUEUE_FRAMES", 8)  # the clip is shorter than the real queue
    monkeypatch.setattr(keys.seal, "CLOSING_PATIENCE", 0.5)  # it stays gone: no need to wait it out
    sealer = live_sealer(tmp_path, sealing_store, PrivateIdentity.generate("ivan", ["investigator"]))
    store = sealer.store

    def gone(*args):
        raise CoSignerUnavailable("the co-signer (OpenBao) at http://test does not answer")

    monkeypatch.setattr(store.cosigner, "seal_shares", gone)
    pipeline = CameraPipeline("cam", RedactSeal(POLICY, sealer, live=True), [], holdback=1.0,
                              analyzer_factory=lambda p: Analyzer(p, detectors))
    released = []
    pipeline.sinks.append(released.append)
    with pytest.raises(CoSignerUnavailable):
        run(frames, pipeline, tail=2.0)  # stopping closes the sealer, which reports the failure too
    check_fail_closed(released, frames, faces)
    assert pipeline.stats.seal_refused > 0
    first_blanked = next(i for i, r in enumerate(released) if r.state == "blanked" and i > 10)
    assert all(r.state == "blanked" for r in released[first_blanked:])


def test_recordings_of_the_live_pipeline_unmask_with_an_investigator_key(clip, tmp_path, monkeypatch, sealing_store):
    frames, faces, detectors = clip
    monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE", "pipeline passphrase")
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    ivan.save(tmp_path / "ivan.id", "pipeline passphrase")
    sealer = live_sealer(tmp_path, sealing_store, ivan)
    store = sealer.store
    recorder = Recorder(tmp_path / "recordings", "cam")
    output = CameraOutput("cam", ("h264",), recorder)  # the camera's one encode: recording, WHEP, RTSP
    sink = ThreadedSink("output", output, keep_all=True)
    pipeline = CameraPipeline("cam", RedactSeal(POLICY, sealer, recording_seconds=1.5, live=True), [sink], holdback=2.0,
                              analyzer_factory=lambda p: Analyzer(p, detectors))
    released = run(frames, pipeline, tail=2.5)
    sink.close()
    output.close()
    check_fail_closed(released, frames, faces)
    assert len(recorder.files) >= 2
    records = {}  # recording -> frame -> sealed boxes, from the plaintext record headers
    for segment in store.verify_chain("cam"):
        for record in segment.records:
            for placement in record.header.placements:
                records.setdefault(segment.header.recording, {}).setdefault(placement.frame, []).append(placement.box)
    restored = alone = 0
    first = 0
    for path in recorder.files:
        count = len(list(VideoTranscoder(path).frames()))
        out = tmp_path / f"{path.stem}-frames"
        code = main(["unmask", str(path), "--vault", str(tmp_path / "vault"), "--keys", str(tmp_path / "keys"),
                     "--identity", str(tmp_path / "ivan.id"), "--case", "C-5", "--reason", "test", "-o", str(out)])
        sealed = records.get(path.stem, {})
        assert (code == 0) == bool(sealed)
        for frame, boxes in sealed.items():
            image = read_image(out / f"{frame - first:06d}.png")
            for at, (x, y, w, h) in enumerate(boxes):
                if y > image.shape[0] * 0.1 and y + h < image.shape[0] * 0.9:  # clear of the watermark bands
                    bound = restored_psnr((x, y, w, h), boxes[:at] + boxes[at + 1 :])  # others overlapping it
                    assert psnr(frames[frame][y : y + h, x : x + w], image[y : y + h, x : x + w]) >= bound
                    restored += 1
                    alone += bound == MIN_PSNR
        first += count
    assert first == len(frames)  # the recordings hold every frame, blanked ones included
    assert restored >= 10 and alone >= 5, (restored, alone)  # 211 and 82 (2026-12-07)
    assert os.path.exists(tmp_path / "vault" / "audit.log")


def test_recorder_keeps_every_frame_at_the_camera_s_own_rate(tmp_path, clip):
    from gateway.frames import Released

    frames = clip[0][:20]
    recorder = Recorder(tmp_path, "cam")  # a 30 fps camera
    output = CameraOutput("cam", ("h264",), recorder)
    for index, image in enumerate(frames):
        output(Released("cam", index, index / 30, "redacted", image, image.shape))
    output(Released("cam", 20, 20 / 30, "dropped", None, frames[0].shape))
    output.close()
    (path,) = recorder.files
    decoded = list(VideoTranscoder(path).frames())
    assert len(decoded) == 21 and (decoded[-1].image.astype(int) - BLANK_LEVEL).__abs__().max() < 8
    assert abs(decoded[-1].time - 20 / 30) < 1e-3


def test_recorder_takes_its_rate_from_the_camera_not_a_guess(tmp_path, clip):
    """Keyframes every two seconds of the camera's own time (where a player can start, and where
    unmask can seek), however fast the camera sends: the rate is measured from its frames."""
    from gateway.frames import Released

    image = clip[0][0]
    for fps in (30, 12):
        recorder = Recorder(tmp_path / str(fps), "cam")
        output = CameraOutput("cam", ("h264",), recorder)
        for index in range(5 * fps):
            output(Released("cam", index, index / fps, "redacted", image, image.shape))
        output.close()
        assert output.rendition("h264").fps == pytest.approx(fps)
        (path,) = recorder.files
        with av.open(str(path)) as container:
            keyframes = [i for i, packet in enumerate(container.demux(video=0)) if packet.is_keyframe]
        assert keyframes == list(range(0, 5 * fps, 2 * fps)), f"{fps} fps: keyframes at {keyframes}"


def test_frames_the_source_lost_leave_no_gap_in_the_released_numbering(clip):
    frames, faces, detectors = clip
    pipeline = CameraPipeline("cam", RedactSeal(POLICY), [], holdback=1.5, analyzer_factory=lambda p: Analyzer(p, detectors))
    released = []
    pipeline.sinks.append(released.append)
    pipeline.start()
    for number, source_index in enumerate((0, 1, 2, 7, 8, 30, 31, 32)):  # the source skipped some
        pipeline.offer(Item(source_index, number / FPS, frames[number].copy(), time.monotonic()))
        time.sleep(1 / FPS)
    time.sleep(2.0)
    pipeline.tick(time.monotonic() + 10)
    pipeline.stop()
    assert [r.index for r in released] == list(range(8))
    assert [r.time for r in released] == [n / FPS for n in range(8)]


def test_frames_after_a_detection_frame_lost_in_the_queue_wait_for_the_next_one():
    """A detection frame dropped from a full queue (the worker never sees it), then a scene cut: the
    frames after the lost detection frame must not be decided from tracks older than the gap.
    Every released frame masks the face of its own scene; the others leave blanked."""
    from gateway.frames import Released
    from redaction.regions import Region

    cut, stride = 20, 3
    faces = {"a": Region("face", 10, 10, 30, 30, 0.9), "b": Region("face", 100, 60, 40, 40, 0.9)}
    release_worker = threading.Event()

    class Scripted:
        classes = ("face",)

        def _face(self, image):
            number = int(image[0, 0, 0])
            if number == 9:
                release_worker.wait(10)  # the worker stalls here while frames 10..21 pile up
            return [faces["a" if number < cut else "b"]]

        def detect(self, image):
            return self._face(image)

        def detect_boxes(self, image, boxes, sweep=False, heights=None):
            return [f for f in self._face(image) if any(bx < f.x + f.w and f.x < bx + bw and by < f.y + f.h and f.y < by + bh
                                                          for bx, by, bw, bh in boxes)]

        def roi_finest(self, width, height):
            return True

    class Recorded(RedactSeal):
        def __init__(self, policy):
            super().__init__(policy)
            self.regions = {}

        def apply(self, index, time_, image, regions):
            self.regions[index] = list(regions)
            return super().apply(index, time_, image, regions)

    policy = parse_policy({"classes": {"plate": {"enabled": False}, "face": {"margin": 0.0}},
                           "detection": {"stride": stride, "persist": 0.2}})
    step = Recorded(policy)
    released: list[Released] = []
    pipeline = CameraPipeline("cam", step, [released.append], holdback=30.0, queue_frames=3,
                              analyzer_factory=lambda p: Analyzer(p, {"face": Scripted()}))
    pipeline.start()
    while not pipeline.stats.warm:
        time.sleep(0.01)
    rng = np.random.default_rng(0)
    scenes = {"a": rng.integers(0, 256, (120, 160, 3), np.uint8), "b": rng.integers(0, 256, (120, 160, 3), np.uint8)}
    for number in range(30):
        image = scenes["a" if number < cut else "b"].copy()
        image[104:116, 4 * number : 4 * number + 12] = 255  # something moves: each detection frame looks
        image[0, 0, 0] = number
        pipeline.offer(Item(number, number / 10, image, time.monotonic()))
        if number == 21:
            time.sleep(0.2)
            release_worker.set()  # frames 10..18 were dropped from the queue meanwhile
        time.sleep(0.02)
    time.sleep(1.0)
    pipeline.tick(time.monotonic() + 60)
    pipeline.stop()
    assert [r.index for r in released] == list(range(30))
    assert pipeline.stats.dropped >= 3  # detection frames among them
    for item in released:
        if item.state != "redacted":
            continue
        face = faces["a" if item.index < cut else "b"]
        assert any(r.x <= face.x and r.y <= face.y and r.x + r.w >= face.x + face.w and r.y + r.h >= face.y + face.h
                   for r in step.regions[item.index]), f"frame {item.index} released without its scene's face"


def test_a_worker_that_fails_is_restarted_with_backoff_and_its_frames_blanked(clip, monkeypatch):
    """An error escaping the worker (here: the detector failing to load, twice) costs frames, never the camera."""
    import gateway.faults

    monkeypatch.setattr(gateway.faults, "FIRST_BACKOFF", 0.5)  # 0.5 s, then 1 s: past the 0.8 s hold-back
    frames, faces, detectors = clip
    attempts = []

    def flaky(policy):
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            raise OSError("injected: the model file could not be opened")
        return Analyzer(policy, detectors)

    pipeline = CameraPipeline("cam", RedactSeal(POLICY), [], holdback=0.8, analyzer_factory=flaky)
    released = run(frames, pipeline, tail=1.5)
    check_fail_closed(released, frames, faces)
    faults = pipeline.worker_faults
    assert len(attempts) == 3 and faults.errors == 2 and faults.recoveries == 1 and faults.reason is None
    assert attempts[2] - attempts[1] >= 2 * (attempts[1] - attempts[0]) * 0.9  # the wait doubled
    assert released[0].state != "redacted" and sum(r.state == "redacted" for r in released) >= 10


def test_faults_log_once_per_burst_and_back_off():
    from gateway.faults import LOG_INTERVAL, MAX_BACKOFF, Faults

    now = [100.0]
    faults = Faults("camera cam: sealing", clock=lambda: now[0])
    assert faults.due() and faults.wait() == 0.0
    waits = []
    for _ in range(8):
        faults.failed(OSError("disk"))
        waits.append(faults.wait())
        assert not faults.due()
        now[0] += waits[-1]
        assert faults.due()
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    assert faults.errors == 8 and faults.reason == "OSError: disk"
    faults.recovered()
    assert faults.reason is None and faults.recoveries == 1 and faults.due()
    faults.failed("again")
    assert faults.wait() == 1.0  # a new burst starts from the first backoff
    assert LOG_INTERVAL <= MAX_BACKOFF


def test_faults_do_not_flood_the_log(caplog):
    from gateway.faults import Faults

    now = [0.0]
    faults = Faults("camera cam: recording", clock=lambda: now[0])
    with caplog.at_level("ERROR"):
        for _ in range(1000):  # a failure per frame for 33 s at 30 fps
            faults.failed(OSError("No space left on device"))
            now[0] += 1 / 30
    assert 1 <= len(caplog.records) <= 5
    assert "recording failed" in caplog.records[0].getMessage()
    assert "still failing" in caplog.records[-1].getMessage()


def test_a_switch_that_keeps_the_detection_settings_loads_no_model(clip):
    """A policy that changes only zones (or methods, grants) shares the running detectors: the switch
    costs no model load; one that changes a detection setting gets new detectors."""
    frames, faces, detectors = clip
    built = []

    def factory(policy):
        built.append(policy)
        return Analyzer(policy, detectors)

    pipeline = CameraPipeline("cam", RedactSeal(POLICY), [], holdback=1.0, analyzer_factory=factory)
    zoned = POLICY.model_copy(update={"zones": parse_policy(
        {"zones": {"door": {"polygon": [[0, 0], [0.2, 0], [0.2, 0.2]]}}}).zones})
    stricter = parse_policy({**POLICY.model_dump(mode="json"), "classes": {"plate": {"enabled": False},
                                                                        "face": {"threshold": 0.6}}})
    pipeline.start()
    try:
        for index, image in enumerate(frames[:3]):
            pipeline.offer(Item(index, index / FPS, image.copy(), time.monotonic()))
        deadline = time.monotonic() + 30
        while not pipeline.stats.warm:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(built) == 1
        pipeline.activate(zoned, timeout=0.1)
        assert len(built) == 1  # shared
        pipeline.offer(Item(3, 3 / FPS, frames[3].copy(), time.monotonic()))
        deadline = time.monotonic() + 10
        while pipeline.policy is not zoned:
            assert time.monotonic() < deadline, "the worker never adopted the zoned policy"
            time.sleep(0.05)
        pipeline.activate(stricter, timeout=0.1)
        assert len(built) == 2 and built[-1] is stricter
    finally:
        pipeline.stop()
