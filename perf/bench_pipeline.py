"""Frames per second of ``privacy-gateway redact`` next to the ``deface`` command line.

    python perf/bench_pipeline.py [--clip FILE] [--seconds S] [--rounds N]

Both run as command lines on the same clip in this run, end to end (model load, decode,
detect, redact, encode). Ours runs faces only (what deface does) with the built-in default
policy, with detection on every third frame (config/policies/video-fast.yaml), and with
that plus two frames detected at once; and faces + plates with the default policy. Prints fps and the ratio to deface.

With ``--rounds N`` every command runs N times, the rounds interleaved (deface, ours, deface, ours...),
and each ratio is the median of the rounds' own ratios: this machine's speed swings by a third
within minutes (deface took 41.5 and 54.6 s in two runs a few minutes apart), which one run of
each, minutes apart, reads as a change of ratio. The CPU seconds (user + system) of each command
are printed beside its wall time, with their ratio to deface's: the targets are on wall time,
and the CPU figure shows whether a change of ratio is the code's or the machine's scheduling.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from _recall import deface_regions  # noqa: E402

from gateway.files import copy_excerpt  # noqa: E402
CLIP = ROOT.parent / "shared" / "data" / "videos" / "MOT17-13-SDP_raw_h264.mp4"


def count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the command and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the excerpt to process")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every command, interleaved")
    args = parser.parse_args()
    deface = shutil.which("deface") or str(Path(sys.executable).with_name("deface"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = work / "clip.mp4"
        frames = count_frames(copy_excerpt(args.clip, clip, args.seconds))
        faces_only = work / "faces.yaml"
        faces_only.write_text("classes:\n  plate:\n    enabled: false\n")
        faces_stride = work / "faces-stride3.yaml"
        faces_stride.write_text("classes:\n  plate:\n    enabled: false\ndetection:\n  stride: 3\n")
        faces_workers = work / "faces-stride3-workers2.yaml"
        faces_workers.write_text("classes:\n  plate:\n    enabled: false\ndetection:\n  stride: 3\n  workers: 2\n"
                                 "  motion:\n    enabled: false\n")  # two workers need whole frames
        runs = {
            "deface (CenterFace, threshold 0.2)": [deface, str(clip), "-o", str(work / "deface.mp4")],
            "privacy-gateway redact, faces only": [sys.executable, "-m", "gateway.cli", "redact", str(clip),
                                                   "-o", str(work / "faces.mp4"), "--policy", str(faces_only)],
            "privacy-gateway redact, faces only, stride 3": [sys.executable, "-m", "gateway.cli", "redact", str(clip),
                                                            "-o", str(work / "stride.mp4"), "--policy", str(faces_stride)],
            "privacy-gateway redact, faces only, stride 3, 2 workers": [
                sys.executable, "-m", "gateway.cli", "redact", str(clip), "-o", str(work / "workers.mp4"),
                "--policy", str(faces_workers)],
            "privacy-gateway redact, faces + plates": [sys.executable, "-m", "gateway.cli", "redact", str(clip),
                                                       "-o", str(work / "all.mp4")],
        }
        print(f"clip: {args.clip.name}, first {args.seconds:g} s, {frames} frames, {args.rounds} round(s)")
        rounds = [{name: timed(command) for name, command in runs.items()} for _ in range(max(1, args.rounds))]
        deface_name = next(iter(runs))
        for name in runs:
            elapsed = statistics.median(r[name][0] for r in rounds)
            ratios = [r[deface_name][0] / r[name][0] for r in rounds]
            spread = f" (rounds {min(ratios):.2f}-{max(ratios):.2f}x)" if len(rounds) > 1 else ""
            cpu = statistics.median(r[name][1] for r in rounds)
            cpu_ratio = statistics.median(r[deface_name][1] / r[name][1] for r in rounds)
            print(f"{name}: {elapsed:.1f} s, {frames / elapsed:.2f} fps, {statistics.median(ratios):.2f}x deface{spread}; "
                  f"CPU {cpu:.1f} s, {cpu_ratio:.2f}x deface's")
        print("targets: faces + plates >= 3x deface's fps, faces only >= 5x, with recall no lower (perf/eval_recall.py, perf/eval_live_coverage.py)")
        agreement(clip, [1, 3])
    return 0


def agreement(clip: Path, strides: list[int]) -> None:
    """Recall against deface on the clip, which has no ground truth.

    Per frame, the faces deface masks (CenterFace at threshold 0.2, boxes grown 1.3x,
    ellipses) are compared with the regions our faces-only default releases: the share of
    deface's regions at least 80 % covered by ours, and the share of ours deface covers.
    """
    import numpy as np

    from redaction.engine import Analyzer, Frame, StreamRedactor
    from redaction.policy import parse_policy
    from redaction.regions import coverage_mask

    with av.open(str(clip)) as container:
        rate = float(container.streams.video[0].average_rate or 25)
        images = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    h, w = images[0].shape[:2]
    deface = deface_regions()
    theirs = [deface(im) for im in images]
    analyzer = Analyzer(parse_policy({"classes": {"plate": {"enabled": False}}}))
    for stride in strides:
        stream = StreamRedactor(analyzer, stride=stride)
        ours: dict[int, list] = {}
        for i, image in enumerate(images):
            for d in stream.push(Frame(i, i / rate, image)):
                ours[d.frame.index] = d.regions
        for d in stream.flush():
            ours[d.frame.index] = d.regions

        def covered(regions, by) -> tuple[int, int]:
            mask = coverage_mask(by, w, h)
            hits = sum(bool(mask[coverage_mask([r], w, h)].mean() >= 0.8) for r in regions)
            return hits, len(regions)

        a = np.sum([covered(theirs[i], ours[i]) for i in range(len(images))], axis=0)
        b = np.sum([covered(ours[i], theirs[i]) for i in range(len(images))], axis=0)
        print(f"stride {stride}: ours cover {a[0]}/{a[1]} = {a[0] / max(1, a[1]):.3f} of deface's regions; "
              f"deface covers {b[0]}/{b[1]} = {b[0] / max(1, b[1]):.3f} of ours")


if __name__ == "__main__":
    sys.exit(main())
