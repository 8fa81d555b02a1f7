"""``serve`` end to end: CPU per 720p30 camera, glass-to-glass latency, cost of extra viewers.

    python perf/bench_gateway.py [--seconds 15] [--warmup 5] [--cameras 1,2,3,4] [--scenes fixed,moving]
                                 [--policies default] [--policy LABEL=FILE.yaml ...]
                                 [--holdback-ms MS] [--queue-frames 16] [--no-record] [--latency-policy default]
                                 [--no-latency] [--fanout]

Three kinds of process, so that only the gateway's own work counts as gateway CPU: GStreamer
RTSP cameras (tests/rtsp_camera.py under /usr/bin/python3) serving 1280x720 30 fps H.264 clips
in a loop; the gateway (``serve`` with recording, sealing and WHEP, as the command line runs
it) in a child process; aiortc WHEP viewers, one per camera, in another. The gateway's CPU is
read from /proc over a fixed window after a warm-up and split by stage (each gateway thread is
renamed for the kernel, and the native threads it starts -- onnxruntime, FFmpeg and x264
workers -- inherit its name); frame outcomes come from its /metrics.

1. CPU per camera with 1 to 4 cameras for each policy (default: the built-in default policy, a
   camera with no ``policy:``, with the camera's default hold-back) on two scenes: a fixed
   camera over a walkway (OpenCV's vtest fitted to 720p, every 10 fps frame shown once at 30
   fps: the usual surveillance case) and a bus-mounted camera in a street (MOT17-13 at 720p:
   every pixel changes); whether every camera runs in real time with no frame blanked or
   dropped in the window (the target: two cameras on the fixed scene).
2. Glass-to-glass latency: the fixed camera's walkway whose frames carry their number in a block code (drawn
   below the scene) goes through the gateway to a viewer that reads the code off every decoded
   frame. The gateway stamps when each frame was decoded from the camera (``arrived``),
   released, pushed to the WHEP rendition and encoded; the viewer when the frame's last RTP
   packet arrived and when aiortc handed over the decoded frame. All are ``time.monotonic()``,
   one clock for every process on this machine, with the default policy.
3. Cost of each extra viewer: measured in isolation by perf/bench_whep.py (pointed to), or
   here with ``--fanout`` (1 vs 4 viewers on one camera).

The machine is shared: every window also prints how busy the machine was and how much of it
went to work outside the benchmark, and CPU figures are compared with the first run's. Its speed
also drifts from hour to hour, and machines of one kind differ: a probe (each model on one fixed
input) is timed before and after the runs, so that runs of different hours or machines can be told
apart. Both models are timed because they do not move together: on an AVX2-only CPU (no 8-bit
dot-product instructions) the int8 face model took about three times as long as on the AVX-512
machines of earlier runs (37 ms at 640x352, against about 11), the float plate model as long.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))
sys.path.insert(0, str(ROOT / "tests"))

from _gateway_peers import (  # noqa: E402
    FPS,
    HEIGHT,
    WIDTH,
    make_coded_clip,
    make_fixed_clip,
    make_street_clip,
    viewers_process,
)
from _gateway_process import STAGE_NOTES, gateway_process  # noqa: E402

from keys import KeyDirectory, PrivateIdentity  # noqa: E402

NO_PLATES = {"plate": {"enabled": False}}
PRESETS = {
    "default": None,  # the built-in default: cameras with no policy file
    "faces": {"classes": NO_PLATES},  # the built-in default, faces only
}
SCENES = {
    "fixed": ("fixed camera over a walkway (OpenCV vtest fitted to 720p, 10 fps frames at 30 fps)",
              lambda work: make_fixed_clip(work / "walkway.mp4")),
    "moving": ("bus-mounted camera in a street (MOT17-13 at 720p: every pixel changes)",
               lambda work: make_street_clip(work / "street.mp4", 8.0)),
}
#: cameras that must run in real time with nothing blanked, per scene (the issue's target; the
#: stretch goals are four fixed and two moving cameras)
TARGETS = {"fixed": 2, "moving": 1}
TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
_spawn = multiprocessing.get_context("spawn")

# -- measuring it from outside ------------------------------------------------------------------------


def _ticks(stat: str) -> int:
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def process_cpu(pid: int) -> float:
    """CPU seconds of a process (its exited threads included)."""
    try:
        return _ticks(Path(f"/proc/{pid}/stat").read_text()) / TICK
    except OSError:
        return 0.0


def stage_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the live threads of a process, summed by kernel thread name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        out[name] = out.get(name, 0.0) + _ticks(stat) / TICK
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK, sum(values[:8]) / TICK


def scrape(port: int, token: str) -> dict[str, dict[str, float]]:
    """Per camera: frame outcomes and detector counters from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    cameras: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            camera = sample.labels.get("camera")
            if camera is None:
                continue
            if sample.name == "privacy_gateway_frames_total":
                cameras.setdefault(camera, {})[sample.labels["state"]] = sample.value
            elif sample.name in ("privacy_gateway_detections_total", "privacy_gateway_detector_seconds_total",
                                 "privacy_gateway_source_errors_total", "privacy_gateway_detector_errors_total",
                                 "privacy_gateway_sealer_cpu_seconds_total", "privacy_gateway_sealer_refused_frames_total"):
                cameras.setdefault(camera, {})[sample.name.removeprefix("privacy_gateway_")] = sample.value
            elif sample.name == "privacy_gateway_sink_skipped_total":
                cameras.setdefault(camera, {})["skipped " + sample.labels["sink"]] = sample.value
    return cameras


@dataclass
class Mark:
    at: float
    cpu: float
    stages: dict[str, float]
    busy: float
    total: float
    others: dict[str, float]
    metrics: dict[str, dict[str, float]]
    viewed: list[int]  # frames decoded so far, per viewer


@dataclass
class Window:
    """What happened between two marks."""

    seconds: float
    cameras: int
    cpu: float  # gateway CPU seconds
    stages: dict[str, float]
    machine: float  # busy fraction of all cores
    others: dict[str, float]  # CPU seconds of the viewer and camera processes
    frames: dict[str, dict[str, float]]  # per camera: in, released, blanked, dropped, late, detections ...
    viewer_fps: list[float]
    start: float = 0.0
    end: float = 0.0

    @property
    def core_pct(self) -> float:
        return 100 * self.cpu / self.seconds

    @property
    def elsewhere(self) -> float:
        """Cores used by processes other than the gateway, its viewers and cameras."""
        return max(0.0, self.machine * CORES - (self.cpu + sum(self.others.values())) / self.seconds)


class Run:
    """One gateway configuration with its viewers: start, warm up, measure windows, stop."""

    def __init__(self, work: Path, label: str, urls: dict[str, str], policy: Path | None, camera: dict,
                 viewers_per_camera: int = 1, probe: bool = False, peers: dict[str, int] | None = None):
        """``camera``: settings every camera gets (holdback_ms, queue_frames, record); ``peers``: name -> pid
        of the camera processes, whose CPU is reported beside the gateway's."""
        self.label, self.urls, self.probe, self.peers = label, urls, probe, peers or {}
        directory = Path(tempfile.mkdtemp(prefix="run-", dir=work))
        policy_key = {} if policy is None else {"policy": str(policy)}  # None: the built-in default
        config = {"cameras": {name: {"source": url, **policy_key, **camera} for name, url in urls.items()},
                  "storage": {"data_dir": str(directory / "data")},
                  "listen": {"host": "127.0.0.1", "port": 0}}
        # the site's people, public halves only (the benchmark unmasks nothing): an officer whose token
        # watches and reads /metrics, an investigator the policies seal to
        people = KeyDirectory.init(directory / "data" / "keys")
        for name, role in (("officer", "privacy-officer"), ("investigator", "investigator")):
            people.add(PrivateIdentity.generate(name, [role]).public)
        self.config = directory / "gateway.yaml"
        self.config.write_text(json.dumps(config))
        self.conn, child = _spawn.Pipe()
        self.process = _spawn.Process(target=gateway_process, args=(str(self.config), child, probe), daemon=True)
        self.viewer_conn, viewer_child = _spawn.Pipe()
        self.viewers = _spawn.Process(target=viewers_process, args=(viewer_child, viewers_per_camera, probe),
                                      daemon=True)
        self.records: dict | None = None
        self.viewed: list = []

    def __enter__(self) -> Run:
        self.process.start()
        self.viewers.start()  # imports aiortc while the gateway loads its models
        try:
            self.port, self.token = self._expect(self.conn, "ready", 180)
            self._healthy(120)
            self.viewer_conn.send(([f"http://127.0.0.1:{self.port}/whep/{name}" for name in self.urls], self.token))
            self._expect(self.viewer_conn, None, 90, want="ready")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _expect(self, conn, kind, timeout, want=None):
        if not conn.poll(timeout):
            raise RuntimeError(f"{self.label}: no answer within {timeout} s")
        message = conn.recv()
        if want is not None:
            if message != want:
                raise RuntimeError(f"{self.label}: expected {want!r}, got {message!r}")
            return message
        if message[0] != kind:
            raise RuntimeError(f"{self.label}: gateway failed:\n{message[1]}")
        return message[1]

    def _healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError:
                pass  # 503 until every camera is warm and connected
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: gateway not healthy within {timeout} s")
            time.sleep(0.25)

    def mark(self) -> Mark:
        at, cpu, stages = time.monotonic(), process_cpu(self.process.pid), stage_cpu(self.process.pid)
        busy, total = machine_busy()
        others = {"viewers": process_cpu(self.viewers.pid)}
        others.update({name: process_cpu(pid) for name, pid in self.peers.items()})
        metrics = scrape(self.port, self.token)
        self.viewer_conn.send("mark")
        return Mark(at, cpu, stages, busy, total, others, metrics, self.viewer_conn.recv())

    def measure(self, warmup: float, seconds: float) -> Window:
        time.sleep(warmup)
        a = self.mark()
        time.sleep(seconds)
        b = self.mark()
        wall = b.at - a.at
        frames = {camera: {key: value - a.metrics.get(camera, {}).get(key, 0.0) for key, value in counters.items()}
                  for camera, counters in b.metrics.items()}
        return Window(wall, len(self.urls), b.cpu - a.cpu,
                      {name: value - a.stages.get(name, 0.0) for name, value in b.stages.items()},
                      (b.busy - a.busy) / (b.total - a.total),
                      {name: value - a.others.get(name, 0.0) for name, value in b.others.items()},
                      frames, [(y - x) / wall for x, y in zip(a.viewed, b.viewed)], a.at, b.at)

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError, EOFError):  # a process that died has said why on stderr
            if self.viewers.is_alive():
                self.viewer_conn.send("stop")
                if self.viewer_conn.poll(60):
                    self.viewed = json.loads(self.viewer_conn.recv())
        with contextlib.suppress(OSError, EOFError):
            if self.process.is_alive():
                self.conn.send("stop")
                while self.conn.poll(90):
                    kind, payload = self.conn.recv()
                    if kind == "done":
                        self.records = payload
                        break
        for process in (self.viewers, self.process):
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()


# -- reporting ----------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return f"p50 {1000 * statistics.median(values):6.1f} ms  p95 {1000 * cuts[18]:6.1f} ms"


def real_time(window: Window) -> tuple[bool, str]:
    """Every camera took the camera's 30 fps and released all of it redacted (no blank, no drop)."""
    problems = []
    for camera, f in sorted(window.frames.items()):
        fps_in = f.get("in", 0) / window.seconds
        if fps_in < 0.95 * FPS:
            problems.append(f"{camera} took {fps_in:.1f} fps")
        if f.get("blanked", 0) or f.get("dropped", 0):
            problems.append(f"{camera} blanked {f.get('blanked', 0):.0f}, dropped {f.get('dropped', 0):.0f}")
    return not problems, "; ".join(problems)


def print_window(label: str, window: Window, baseline: Window | None) -> None:
    per_camera = window.core_pct / window.cameras
    ratio = f", {per_camera / (baseline.core_pct / baseline.cameras):.2f}x the baseline's" if baseline else ""
    peers = ", ".join(f"{name} {100 * cpu / window.seconds:.0f}" for name, cpu in window.others.items())
    print(f"  {label}: {per_camera:5.1f} % of a core per camera{ratio} ({window.core_pct:.1f} % in all); machine "
          f"{100 * window.machine:.0f} % busy of {CORES} cores; other processes, % of a core: {peers}, "
          f"everything else {100 * window.elsewhere:.0f}")
    if window.elsewhere > 0.25:
        print(f"    NOTE: work outside this benchmark took {100 * window.elsewhere:.0f} % of a core in this window")
    for camera, f in sorted(window.frames.items()):
        detections = f.get("detections_total", 0)
        mean = f"{1000 * f.get('detector_seconds_total', 0) / detections:4.0f} ms" if detections else "   - ms"
        skipped = ", ".join(f"{k.rsplit('-', 1)[-1]} {v:.0f}" for k, v in sorted(f.items()) if k.startswith("skipped "))
        print(f"    {camera}: in {f.get('in', 0):4.0f} ({f.get('in', 0) / window.seconds:4.1f} fps)  "
              f"released {f.get('released', 0):4.0f}  blanked {f.get('blanked', 0):4.0f}  "
              f"dropped {f.get('dropped', 0):4.0f}  late {f.get('late', 0):3.0f}  |  "
              f"{detections / window.seconds:4.1f} detections/s, {mean} each (wall)  |  "
              f"sealing {100 * f.get('sealer_cpu_seconds_total', 0) / window.seconds:4.1f} % of a core, "
              f"{f.get('sealer_refused_frames_total', 0):.0f} refused  |  sinks skipped: {skipped}")
    print(f"    viewers decoded: {', '.join(f'{fps:.1f}' for fps in window.viewer_fps)} fps")
    named = sum(window.stages.values())
    parts = sorted(window.stages.items(), key=lambda kv: -kv[1])
    shown = [f"{name} {100 * cpu / window.seconds:.1f}" for name, cpu in parts if cpu >= 0.005 * window.seconds]
    print(f"    by stage, % of a core (all cameras): {', '.join(shown)}, "
          f"exited threads {100 * max(0.0, window.cpu - named) / window.seconds:.1f}")
    ok, why = real_time(window)
    print(f"    real time with nothing blanked or dropped: {'yes' if ok else 'NO (' + why + ')'}")


def summarize(results: dict[tuple[str, int], Window], target: int | None = None) -> None:
    base = next(iter(results.values()))
    base_pct = base.core_pct / base.cameras
    print("\n  policy          cameras  % core/camera  vs first  blanked  dropped  viewer fps  "
          "real time, nothing blanked")
    print("  (blanked and dropped: share of the frames released in the window)")
    for (label, count), w in results.items():
        frames = sum(f.get(k, 0) for f in w.frames.values() for k in ("released", "blanked", "dropped")) or 1
        blanked = sum(f.get("blanked", 0) for f in w.frames.values()) / frames
        dropped = sum(f.get("dropped", 0) for f in w.frames.values()) / frames
        print(f"  {label:15s} {count:7d}  {w.core_pct / count:13.1f}  {w.core_pct / count / base_pct:7.2f}x"
              f"  {100 * blanked:6.1f}%  {100 * dropped:6.1f}%  {min(w.viewer_fps):10.1f}  "
              f"{'yes' if real_time(w)[0] else 'NO'}")
    for label in dict.fromkeys(label for label, _ in results):
        fits = [count for (other, count), w in results.items() if other == label and real_time(w)[0]]
        print(f"  {label}: {max(fits) if fits else 0} camera(s) in real time with nothing blanked or dropped")
    if target is not None:  # with the built-in default policy (faces and plates)
        window = results.get(("default", target))
        print(f"  target, {target} camera{'s' if target > 1 else ''} with the built-in default in real time with "
              "nothing blanked: " + ("not run" if window is None else "met" if real_time(window)[0] else "NOT met"))


def what_fits(window: Window, stride: int, holdback: float, cameras: int | None = None) -> str:
    """Which stride the measured costs allow ``cameras`` cameras (default: the window's), on an otherwise
    idle machine (an estimate, not a measurement).

    An overloaded window misleads both ways: its cameras blank most frames, so their sealers idle
    (everything but analysis looks cheaper than with every frame released), and their detection
    frames come further apart than asked, so more has changed at each (a detection looks dearer:
    two fixed cameras 222 ms of CPU, one that kept up 156 ms). So the estimate is also made from a
    window whose cameras kept up, scaled to more cameras (whose models then run one after the other,
    which costs more CPU than side by side: this one is optimistic about analysis)."""
    cameras = cameras or window.cameras
    detections = sum(f.get("detections_total", 0) for f in window.frames.values())
    if not detections:
        return "no detection ran in the window: nothing to estimate from"
    analyse = window.stages.get("analyse", 0.0)
    per_detection = analyse / detections  # CPU: detecting, tracking, redacting (the sealer has its thread)
    rest = (window.cpu - analyse) / window.seconds / window.cameras  # cores per camera for everything else
    peers = sum(window.others.values()) / window.seconds / window.cameras * cameras  # viewers and cameras
    spare = (0.9 * CORES - peers) / cameras - rest  # 10 % headroom
    # throughput: one detection per `stride` frames within the spare CPU; hold-back: a group's first
    # frame waits for the rest of its group, then for the detection (the worker allows 1.25x its cost)
    source = ("this window" if cameras == window.cameras else
              f"the {window.cameras}-camera window, which kept up (every frame released)")
    costs = (f"estimate for {cameras} camera(s) from {source}: everything but analysis takes "
             f"{100 * rest:.0f} % of a core per camera, analysis {1000 * per_detection:.0f} ms CPU per detection, "
             f"which leaves {100 * max(spare, 0):.0f} % of a core per camera for it")
    if 1.25 * per_detection >= holdback:
        return (f"{costs}; one detection alone outlasts the {1000 * holdback:.0f} ms hold-back's budget, so no "
                f"stride fits: detection must get cheaper (a smaller detection.face.max_side, one onnxruntime "
                f"thread per camera) or the hold-back longer")
    if spare <= 0:
        return f"{costs}: everything but analysis takes all the machine has, so no stride fits"
    low = FPS * per_detection / spare
    high = 1 + FPS * (holdback - 1.25 * per_detection)
    verdict = ("a stride in between should fit" if math.ceil(low) <= math.floor(high) else
               "no stride fits: detection or the rest must get cheaper, or the hold-back longer")
    return (f"{costs}: keeping up needs stride >= {low:.1f}, the {1000 * holdback:.0f} ms hold-back allows "
            f"stride <= {high:.1f} (now {stride}): {verdict}")


def align(records: dict, viewed: list) -> tuple[int | None, str]:
    """The offset from the viewer's pts to the gateway's (both 90 kHz), so blanked frames match too.

    The viewer's pts counts from the first frame it decoded. The offset is read off the frames
    whose code was readable (redacted ones: the code names the clip frame, the nearest earlier
    release of that code the gateway's frame) or, if too few were, taken from the first packet
    the gateway sent to the viewer.
    """
    arrived, released = records["arrived"], records["released"]
    by_code: dict[int, list[tuple[float, int]]] = {}
    for pts, (state, at) in released.items():
        code = arrived.get(pts, (0.0, None))[1]
        if state == "redacted" and code is not None:
            by_code.setdefault(code, []).append((at, pts))
    offsets = []
    for code, pts, _, decoded_at in viewed:
        earlier = [(at, gateway) for at, gateway in by_code.get(code, []) if at <= decoded_at < at + 2.0]
        if earlier:
            offsets.append(max(earlier)[1] - pts)
    if len(offsets) >= 5:
        return statistics.mode(offsets), f"by the codes of {len(offsets)} redacted frames"
    if records["first_sent"]:
        return records["first_sent"][0], "by the first packet sent to the viewer"
    return None, "not at all: no readable code and no first packet"


def latency_report(window: Window, records: dict, viewed: list, holdback: float) -> None:
    arrived, released = records["arrived"], records["released"]
    pushed, encoded = records["pushed"], records["encoded"]
    in_window = {pts: r for pts, r in released.items() if window.start <= r[1] <= window.end and pts in arrived}
    states = [state for state, _ in in_window.values()]
    hold = [at - arrived[pts][0] for pts, (state, at) in in_window.items() if state == "redacted"]
    offset, how = align(records, viewed)
    to_push, to_enc, to_packet, to_decoded, total, seen, wrong = [], [], [], [], [], [], 0
    wire = []  # ingest -> last RTP packet at the viewer, redacted frames
    for code, viewer_pts, packet_at, decoded_at in viewed if offset is not None else ():
        pts = viewer_pts + offset
        if pts not in in_window:
            continue
        state, at = in_window[pts]
        if code is not None and code != arrived[pts][1]:
            wrong += 1  # the code disagrees with the alignment: not counted
            continue
        seen.append(state)
        to_decoded.append(decoded_at - at)
        if packet_at is not None:
            to_packet.append(packet_at - at)
        if pts in pushed:
            to_push.append(pushed[pts] - at)
        if pts in encoded:
            to_enc.append(encoded[pts] - at)
        if state == "redacted":
            total.append(decoded_at - arrived[pts][0])
            if packet_at is not None:
                wire.append(packet_at - arrived[pts][0])
    with_pixels = [pts for pts, (state, _) in in_window.items() if state != "dropped"]
    print(f"    released in the window: {states.count('redacted')} redacted, {states.count('blanked')} blanked, "
          f"{states.count('dropped')} dropped (no pixels); of the {len(with_pixels)} with pixels the WHEP rendition "
          f"got {sum(p in pushed for p in with_pixels)}, encoded {sum(p in encoded for p in with_pixels)}, "
          f"and the viewer decoded {seen.count('redacted')} redacted + {seen.count('blanked')} blanked")
    print(f"    (viewer frames matched to gateway frames {how}; readable codes that disagree: {wrong})")
    print(f"    ingest -> release, redacted (hold-back part)   {percentiles(hold)}")
    print(f"    release -> pushed to the WHEP rendition        {percentiles(to_push)}")
    print(f"    release -> WHEP encoded                        {percentiles(to_enc)}")
    print(f"    release -> last RTP packet at the viewer       {percentiles(to_packet)}")
    print(f"    release -> decoded by the viewer (aiortc)      {percentiles(to_decoded)}")
    print(f"    ingest -> last RTP packet at the viewer, redacted {percentiles(wire)}")
    print(f"    ingest -> decoded by the viewer, redacted      {percentiles(total)}")
    if len(wire) >= 2 and len(total) >= 2:
        beyond_wire = statistics.quantiles(wire, n=20, method="inclusive")[18] - holdback
        beyond_decoded = statistics.quantiles(total, n=20, method="inclusive")[18] - holdback
        print(f"    beyond the {1000 * holdback:.0f} ms hold-back, p95: {1000 * beyond_wire:+.0f} ms to the last packet "
              f"(where a browser starts decoding), {1000 * beyond_decoded:+.0f} ms to aiortc's decoded frame; "
              f"target <= 100 ms: {'met' if beyond_wire <= 0.1 else 'NOT met'} / "
              f"{'met' if beyond_decoded <= 0.1 else 'NOT met'}")
    print("    (the live renditions are paced: a frame leaves at its media time plus the largest release delay "
          "of the last 2 s, so 'release -> pushed' is that pacing, and the viewer gets an even 30 fps)")
    print("    ('ingest' is SourceFrame.arrived, the gateway's decode of the camera frame: the RTSP hop before it is "
          "not included. aiortc hands a frame to its decoder only when the next frame's first packet arrives, "
          "so 'decoded' includes a wait for the next frame that a browser, which uses the marker bit, does not have.)")


# -- main ---------------------------------------------------------------------------------------------


def write_policy(work: Path, label: str, spec) -> Path | None:
    if spec is None:
        return None
    if isinstance(spec, Path):
        return spec.resolve()
    path = work / f"policy-{re.sub(r'[^a-z0-9]+', '-', label.lower())}.yaml"
    path.write_text(json.dumps(spec))
    return path


def stride_of(policy: Path | None) -> int:
    """The policy's stride on these cameras (``detection.interval`` at their frame rate)."""
    from redaction import load_policy

    return load_policy(policy).detection.stride_at(FPS)


def machine_speed(repeats: int = 15) -> tuple[float, float]:
    """Milliseconds the plate model takes on one fixed 352x256 input and the int8 face model on one
    fixed 640x352 input, one thread, median of ``repeats`` each.

    This machine's speed drifts by 10-20 % from hour to hour (every stage of the same code took that
    much longer), more than most changes measured here: printed before and after the runs, it says
    whether two runs of different hours can be compared."""
    import numpy as np

    from redaction.detector import create_session
    from redaction.faces import INT8_MODEL
    from redaction.plates import det_model

    rng = np.random.default_rng(0)
    medians = []
    # the face model's input is the uint8 picture since 2026-12-07 (0.94-0.98x the time of the float
    # input it had): face probes before that date read a few per cent higher for the same machine
    for model, shape in ((det_model(), (1, 3, 352, 256)), (INT8_MODEL, (1, 352, 640, 3))):
        session = create_session(model, 1)
        image = session.get_inputs()[0].type == "tensor(uint8)"
        values = rng.integers(0, 256, shape, dtype=np.uint8) if image else 255 * rng.random(shape, dtype=np.float32)
        feed = {session.get_inputs()[0].name: values}
        times = []
        for run in range(3 + repeats):
            start = time.perf_counter()
            session.run(None, feed)
            if run >= 3:  # the first runs warm the session up
                times.append(time.perf_counter() - start)
        medians.append(1000 * statistics.median(times))
    return medians[0], medians[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per configuration")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the viewers start, before measuring")
    parser.add_argument("--cameras", default="1,2,3,4", help="camera counts to run; the first is the baseline")
    parser.add_argument("--scenes", default="fixed,moving", help=f"camera scenes: {', '.join(SCENES)}")
    parser.add_argument("--policies", default="default", help=f"presets: {', '.join(PRESETS)}")
    parser.add_argument("--policy", action="append", default=[], metavar="LABEL=FILE",
                        help="also run this policy file (repeatable)")
    parser.add_argument("--holdback-ms", type=int, default=None, help="camera hold-back (default: the camera's own)")
    parser.add_argument("--queue-frames", type=int, default=16, help="camera queue_frames (the config default)")
    parser.add_argument("--no-record", action="store_true", help="cameras without recording (and its encode)")
    parser.add_argument("--no-latency", action="store_true", help="skip the glass-to-glass latency run")
    parser.add_argument("--latency-policy", default="default",
                        help="preset or LABEL of --policy for the latency run (one that releases redacted frames)")
    parser.add_argument("--fanout", action="store_true", help="measure 1 vs 4 viewers here too")
    args = parser.parse_args()
    counts = [int(c) for c in args.cameras.split(",")]
    policies: dict[str, object] = {name: PRESETS[name] for name in args.policies.split(",") if name}
    for item in args.policy:
        label, _, path = item.partition("=")
        policies[label] = Path(path)

    from rtsp_support import gstreamer_missing, rtsp_camera

    missing = gstreamer_missing()
    if missing:
        print(f"cannot run the RTSP camera: {missing}", file=sys.stderr)
        return 2
    import aiortc
    import av
    import onnxruntime

    from gateway.config import Camera

    holdback = (args.holdback_ms or Camera.model_fields["holdback_ms"].default) / 1000
    camera = {"queue_frames": args.queue_frames, "record": not args.no_record,
              **({"holdback_ms": args.holdback_ms} if args.holdback_ms else {})}
    print(f"serve end to end on {CORES} cores (load average {os.getloadavg()[0]:.2f} at start); "
          f"Python {sys.version.split()[0]}, aiortc {aiortc.__version__}, PyAV {av.__version__}, "
          f"onnxruntime {onnxruntime.__version__}")
    print(f"cameras: GStreamer RTSP servers, {WIDTH}x{HEIGHT} {FPS} fps H.264 (keyframe every 1 s, no B-frames), "
          f"looped; "
          f"gateway: recording {'off' if args.no_record else 'on'}, sealing on, hold-back {1000 * holdback:.0f} ms, "
          f"queue {args.queue_frames} frames, renditions h264+vp8; "
          f"one aiortc viewer per camera in a separate process; window {args.seconds:g} s after {args.warmup:g} s "
          f"warm-up")
    speed = machine_speed()
    print(f"machine speed probe (one thread, fixed inputs): plate model on 352x256 {speed[0]:.2f} ms, "
          f"int8 face model on 640x352 {speed[1]:.2f} ms")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        paths = {label: write_policy(work, label, spec) for label, spec in policies.items()}
        latency_policy = paths.get(args.latency_policy) or write_policy(work, args.latency_policy,
                                                                         PRESETS[args.latency_policy])
        results: dict[tuple[str, int], Window] = {}
        for scene in args.scenes.split(","):
            what, make = SCENES[scene]
            clip = make(work)
            with contextlib.ExitStack() as cameras:
                cams = [cameras.enter_context(rtsp_camera(clip, loop=True)) for _ in range(max(counts))]
                peers = {f"camera{i}": cam.pid for i, cam in enumerate(cams)}
                print(f"\n1. CPU per camera, {what}")
                print("   stages: " + "; ".join(f"{name} = {note}" for name, note in STAGE_NOTES.items()))
                scene_results: dict[tuple[str, int], Window] = {}
                for label, policy in paths.items():
                    shown = "built-in default" if policy is None else (
                        policy.read_text().strip() if label in PRESETS else policy)
                    print(f"{label}: {shown}")
                    for count in counts:
                        urls = {f"cam{i}": cams[i].url for i in range(count)}
                        with Run(work, f"{label} x{count}", urls, policy, camera, peers=peers) as run:
                            window = run.measure(args.warmup, args.seconds)
                        scene_results[label, count] = window
                        print_window(f"{count} camera{'s' if count > 1 else ''}", window,
                                     scene_results.get((label, counts[0])))
                    print(f"    {what_fits(scene_results[label, counts[-1]], stride_of(policy), holdback)}")
                    kept_up = [count for count in counts if real_time(scene_results[label, count])[0]]
                    if kept_up and max(kept_up) < counts[-1]:
                        print(f"    {what_fits(scene_results[label, max(kept_up)], stride_of(policy), holdback, counts[-1])}")
                if scene_results:
                    summarize(scene_results, TARGETS.get(scene))
                results.update({(f"{label} ({scene})", count): w for (label, count), w in scene_results.items()})

        if not args.no_latency:
            label = args.latency_policy
            print(f"\n2. Glass-to-glass latency ({label}, 1 camera; the walkway above a frame code; "
                  f"viewer in a separate process)")
            coded = make_coded_clip(work / "coded.mp4")
            with rtsp_camera(coded, loop=True) as cam:
                with Run(work, "latency", {"cam0": cam.url}, latency_policy, camera, probe=True,
                         peers={"camera": cam.pid}) as run:
                    window = run.measure(args.warmup, args.seconds)
                print_window("coded walkway", window, None)
                latency_report(window, run.records, run.viewed, holdback)

        print("\n3. Cost of each extra viewer")
        if args.fanout or not (ROOT / "perf" / "bench_whep.py").exists():
            label = args.latency_policy
            windows = {}
            with rtsp_camera(SCENES["fixed"][1](work), loop=True) as cam:
                for viewers in (1, 4):
                    windows[viewers] = results.get((f"{label} (fixed)", 1)) if viewers == 1 else None
                    if windows[viewers] is None:
                        with Run(work, f"fan-out x{viewers}", {"cam0": cam.url}, latency_policy, camera,
                                 viewers_per_camera=viewers, peers={"camera": cam.pid}) as run:
                            windows[viewers] = run.measure(args.warmup, args.seconds)
                print_window(f"{label}, 1 camera, {viewers} viewer{'s' if viewers > 1 else ''}", windows[viewers],
                             windows[1] if viewers > 1 else None)
            one, four = windows[1], windows[4]
            print(f"    {(four.core_pct - one.core_pct) / 3:+.1f} % of a core per extra viewer (detection varies by "
                  f"more than this between runs: perf/bench_whep.py measures it without detection)")
        else:
            print("  see perf/bench_whep.py: one shared encoder per camera, gateway CPU with 1, 3 and 5 viewers "
                  "measured in isolation (no detection noise); --fanout measures 1 vs 4 viewers here")
    after = machine_speed()
    print(f"\nmachine speed probe, plate / face model: {speed[0]:.2f} / {speed[1]:.2f} ms before the runs, "
          f"{after[0]:.2f} / {after[1]:.2f} ms after (compare runs of different hours or machines by it)")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
