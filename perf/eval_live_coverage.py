"""Live coverage: what the released frames of a live camera mask, against per-frame thorough detection.

    python perf/eval_live_coverage.py [--policy FILE] [--clips a.mp4,b.avi] [--every N] [--holdback-ms MS]

Each clip in ../shared/data/videos goes through the code path ``serve`` uses: a real-time
:class:`~gateway.ingest.FileSource` (the clip played once at its own rate), the camera's
:class:`~gateway.live.CameraPipeline` with its hold-back and watchdog, motion-gated detection,
tracking and the one redact step; the regions redacted on every released frame are recorded.
The reference is ``config/policies/thorough.yaml`` detecting every frame on its own (faces at
0.5x, 1x and 2x, plates), computed once and cached (``--cache``).

Reported per clip, counted on released (redacted) frames only:
* confident coverage: the reference regions with score >= 0.5 that the frame's redaction
  covers (>= 80 % of the box masked, the project's rule); target >= 0.995 on every clip;
* low-score coverage: the same for the reference's regions under 0.5 (reported apart);
* blanked and dropped shares (a blanked frame is not coverage), the blanked frames split into
  those before the first released frame (a stream's start: its first two looks read the whole
  frame at full quality, and the frames of the first wait for the second), those after the last
  (the clip ended before their detection frame came) and those in between (the camera fell
  behind): only the last say that the machine could not keep up;
* over-mask: the share of the frame masked outside everything the reference would mask, its
  boxes with thorough's margins (target <= 5 %): so that masking whole moving areas does not
  pass. Also shown against the bare boxes ("vs boxes"), where a margin on a close-up face counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.frames import SourceFrame  # noqa: E402
from gateway.ingest import FileSource  # noqa: E402
from gateway.live import CameraPipeline, watch  # noqa: E402
from gateway.sealing import RedactSeal  # noqa: E402
from redaction import Analyzer, Region, coverage_mask, default_threads, load_policy  # noqa: E402
from redaction.faces import INT8_MODEL  # noqa: E402
from redaction.fusion import FUSED_SHA256  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "videos"
THOROUGH = ROOT / "config" / "policies" / "thorough.yaml"
CONFIDENT = 0.5
COVERED = 0.8


class Recorded(RedactSeal):
    """The redact step, noting the regions it redacts on each frame."""

    def __init__(self, policy) -> None:
        super().__init__(policy)
        self.regions: dict[int, list[Region]] = {}

    def apply(self, index, time, image, regions):
        self.regions[index] = list(regions)
        return super().apply(index, time, image, regions)


def reference(clip: Path, every: int, cache: Path) -> dict[int, list[tuple[str, list[float], float]]]:
    """Per frame (every ``every``-th), thorough's raw detections ``(class, box, score)``; cached."""
    policy = load_policy(THOROUGH)
    models = [hashlib.sha256(INT8_MODEL.read_bytes()).hexdigest(), FUSED_SHA256]  # a rebuilt model finds others
    key = hashlib.sha256(json.dumps([policy.model_dump(mode="json"), clip.stat().st_size, every, 3, models]).encode())
    path = cache / f"{clip.stem}-{key.hexdigest()[:16]}.json"
    if path.exists():
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    analyzer = Analyzer(policy)
    classes = policy.classes.enabled()
    found: dict[int, list] = {}
    started = time.monotonic()
    with av.open(str(clip)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % every == 0:  # each detector's own boxes (after its NMS), not merged:
                # a union of two boxes of one face is not the face, and would be harder to cover
                image = frame.to_ndarray(format="bgr24")
                found[index] = [(r.cls, list(r.box), r.score) for detector in analyzer.detectors.values()
                                for r in detector.detect(image)
                                if r.cls in classes and r.score >= classes[r.cls].threshold]
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found))
    print(f"  reference for {clip.name}: {len(found)} frames in {time.monotonic() - started:.0f} s", flush=True)
    return found


def run_live(clip: Path, policy, holdback: float) -> tuple[dict[int, str], dict[int, list[Region]], tuple[int, int]]:
    """The clip through a live pipeline in real time: (state per clip frame, regions per clip frame, size)."""
    step = Recorded(policy)
    states: dict[int, str] = {}
    source_of: dict[int, int] = {}  # pipeline index -> clip frame index
    # the analyzer a camera alone on this machine gets in serve (gateway.live.Runtime: every core for
    # its detection, so with faces and plates a model on each, side by side)
    pipeline = CameraPipeline("eval", step, [lambda item: states.__setitem__(item.index, item.state)],
                              holdback=holdback, analyzer_factory=partial(Analyzer, cores=default_threads()))
    pipeline.start()
    while not pipeline.stats.warm:  # a camera starts warm in serve too (after its first seconds)
        time.sleep(0.05)
    stop = threading.Event()

    ticker = threading.Thread(target=watch, args=(lambda: [pipeline], stop), daemon=True)
    ticker.start()
    offered = [0]

    def emit(frame: SourceFrame) -> None:
        source_of[offered[0]] = frame.index
        offered[0] += 1
        pipeline.offer(frame)

    source = FileSource("eval", clip, loop=False, realtime=True)
    source.start(emit)
    while source.stats.connected or offered[0] == 0:
        time.sleep(0.1)
    source.stop()
    deadline = time.monotonic() + 2 * holdback + 5
    while len(states) < offered[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    ticker.join()
    pipeline.stop()
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        size = (stream.codec_context.width, stream.codec_context.height)
    by_frame_state = {source_of[i]: s for i, s in states.items() if i in source_of}
    by_frame_regions = {source_of[i]: r for i, r in step.regions.items() if i in source_of}
    if source.stats.dropped:
        print(f"  note: the source dropped {source.stats.dropped} decoded frames (emit fell behind)")
    return by_frame_state, by_frame_regions, size


def score(clip: Path, policy, every: int, holdback: float, cache: Path, misses: list | None = None) -> dict:
    """Coverage of ``clip`` (see the module docstring); ``misses``: filled with the confident
    reference regions not covered, ``(frame, class, box, score, share covered)``."""
    ref = reference(clip, every, cache)
    margins = {cls: getattr(load_policy(THOROUGH).classes, cls).margin for cls in ("face", "plate")}
    states, regions, (width, height) = run_live(clip, policy, holdback)
    classes = set(policy.classes.enabled())
    counts = {(kind, cls): [0, 0] for kind in ("confident", "low") for cls in ("face", "plate")}
    over, over_boxes, redacted_frames = 0.0, 0.0, 0
    over_by = {cls: 0.0 for cls in ("face", "plate")}  # over-mask by the class of the masking region
    for index, found in ref.items():
        if states.get(index) != "redacted":
            continue
        redacted_frames += 1
        mask = coverage_mask(regions.get(index, []), width, height)
        outside = mask & ~coverage_mask([Region(cls, *box, value).with_margin(margins[cls])
                                          for cls, box, value in found], width, height)
        bare = mask.copy()
        for cls, box, value in found:
            own = coverage_mask([Region(cls, *box, value)], width, height)
            bare &= ~own
            pixels = own.sum()
            if pixels == 0 or cls not in classes:  # a class the policy does not redact is not counted
                continue
            kind = counts["confident" if value >= CONFIDENT else "low", cls]
            kind[1] += 1
            covered = (mask & own).sum() / pixels
            kind[0] += covered >= COVERED
            if misses is not None and value >= CONFIDENT and covered < COVERED:
                misses.append((index, cls, [round(v) for v in box], round(value, 2), round(float(covered), 2)))
        over += outside.mean()
        over_boxes += bare.mean()
        for cls in over_by:
            own_mask = coverage_mask([r for r in regions.get(index, []) if r.cls == cls], width, height)
            over_by[cls] += (own_mask & outside).mean()
    total = {kind: [sum(counts[kind, cls][i] for cls in ("face", "plate")) for i in (0, 1)]
             for kind in ("confident", "low")}
    frames = len(states) or 1
    start, end, between = blanked_where(states)
    result = {
        "clip": clip.name, "frames": len(states), "reference_frames": len(ref),
        "confident": total["confident"], "low": total["low"],
        "by_class": {f"{kind} {cls}": value for (kind, cls), value in counts.items()},
        "blanked": (start + end + between) / frames,
        "blanked_frames": {"start": start, "end": end, "between": between},
        "dropped": sum(s == "dropped" for s in states.values()) / frames,
        "over_mask": over / max(redacted_frames, 1),
        "over_mask_vs_boxes": over_boxes / max(redacted_frames, 1),
        "over_mask_by_class": {cls: value / max(redacted_frames, 1) for cls, value in over_by.items()},
    }
    c, l = total["confident"], total["low"]
    print(f"{clip.name:34s} confident {c[0]:5d}/{c[1]:5d} = {c[0] / max(c[1], 1):.4f}  "
          f"low-score {l[0]:5d}/{l[1]:5d} = {l[0] / max(l[1], 1):.3f}  blanked {100 * result['blanked']:5.1f} %  "
          f"dropped {100 * result['dropped']:4.1f} %  over-mask {100 * result['over_mask']:.2f} % "
          f"(vs boxes {100 * result['over_mask_vs_boxes']:.2f} %)", flush=True)
    print("    " + "  ".join(f"{kind} {cls} {a}/{b}" for (kind, cls), (a, b) in counts.items() if b)
          + "  over-mask by " + ", ".join(f"{cls} {100 * v:.2f} %" for cls, v in result["over_mask_by_class"].items())
          + f"  blanked frames: {start} at the start, {end} at the end, {between} in between", flush=True)
    return result


def blanked_where(states: dict[int, str]) -> tuple[int, int, int]:
    """The blanked frames of a run (state per clip frame): before the first released frame, after the
    last, and in between (all of them at the start when none was released)."""
    released = [index for index, state in states.items() if state == "redacted"]
    blanked = [index for index, state in states.items() if state == "blanked"]
    if not released:
        return len(blanked), 0, 0
    first, last = min(released), max(released)
    start = sum(index < first for index in blanked)
    end = sum(index > last for index in blanked)
    return start, end, len(blanked) - start - end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, help="the live policy (default: built-in)")
    parser.add_argument("--clips", help="comma-separated file names under ../shared/data/videos (default: all)")
    parser.add_argument("--every", type=int, default=1, help="reference on every N-th frame (default: every frame)")
    parser.add_argument("--holdback-ms", type=int, default=500, help="the camera's hold-back (default: its default)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "privacy-gateway" / "coverage", help="where thorough references are kept")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--misses", action="store_true", help="list the confident regions not covered")
    args = parser.parse_args()
    policy = load_policy(args.policy)
    clips = [DATA / name for name in args.clips.split(",")] if args.clips else sorted(
        p for p in DATA.iterdir() if p.suffix in (".mp4", ".avi"))
    print(f"policy: {args.policy or 'built-in default'}; hold-back {args.holdback_ms} ms; reference: thorough "
          f"on every {'' if args.every == 1 else f'{args.every}th '}frame; {os.cpu_count()} cores")
    results = []
    for clip in clips:
        misses: list | None = [] if args.misses else None
        results.append(score(clip, policy, args.every, args.holdback_ms / 1000, args.cache, misses))
        for miss in misses or ():
            print("    missed: frame %d %s box %s score %.2f covered %.2f" % miss)
    worst = min(r["confident"][0] / max(r["confident"][1], 1) for r in results)
    print(f"worst confident coverage {worst:.4f} (target >= 0.995); largest over-mask "
          f"{100 * max(r['over_mask'] for r in results):.2f} % (target <= 5 %); largest blanked share "
          f"{100 * max(r['blanked'] for r in results):.1f} %, of frames in between released ones "
          f"{100 * max(r['blanked_frames']['between'] / max(r['frames'], 1) for r in results):.1f} %")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=int))  # numpy integers among the counts
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
