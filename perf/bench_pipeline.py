"""Frames per second of ``privacy-gateway redact`` next to the ``deface`` command line.

    python perf/bench_pipeline.py [--clip FILE] [--seconds S]

Both run as command lines on the same clip in this run, end to end (model load, decode,
detect, redact, encode). Ours runs faces only (what deface does) with the built-in default
policy and with detection on every third frame (config/policies/video-fast.yaml), and
faces + plates with the default policy. Prints fps and the ratio to deface.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "videos" / "MOT17-13-SDP_raw_h264.mp4"


def cut(source: Path, seconds: float, target: Path) -> int:
    """Copy the first ``seconds`` of the video stream (no re-encode); returns the frame count."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            if packet.pts is not None and packet.pts * stream.time_base >= seconds and packet.is_keyframe:
                break
            packet.stream = out
            dst.mux(packet)
    with av.open(str(target)) as check:
        return sum(1 for _ in check.decode(video=0))


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the excerpt to process")
    args = parser.parse_args()
    deface = shutil.which("deface") or str(Path(sys.executable).with_name("deface"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = work / "clip.mp4"
        frames = cut(args.clip, args.seconds, clip)
        faces_only = work / "faces.yaml"
        faces_only.write_text("classes:\n  plate:\n    enabled: false\n")
        faces_stride = work / "faces-stride3.yaml"
        faces_stride.write_text("classes:\n  plate:\n    enabled: false\ndetection:\n  stride: 3\n")
        runs = {
            "deface (CenterFace, threshold 0.2)": [deface, str(clip), "-o", str(work / "deface.mp4")],
            "privacy-gateway redact, faces only": [sys.executable, "-m", "gateway.cli", "redact", str(clip),
                                                   "-o", str(work / "faces.mp4"), "--policy", str(faces_only)],
            "privacy-gateway redact, faces only, stride 3": [sys.executable, "-m", "gateway.cli", "redact", str(clip),
                                                            "-o", str(work / "stride.mp4"), "--policy", str(faces_stride)],
            "privacy-gateway redact, faces + plates": [sys.executable, "-m", "gateway.cli", "redact", str(clip),
                                                       "-o", str(work / "all.mp4")],
        }
        print(f"clip: {args.clip.name}, first {args.seconds:g} s, {frames} frames")
        seconds = {name: timed(command) for name, command in runs.items()}
    base = frames / seconds["deface (CenterFace, threshold 0.2)"]
    for name, elapsed in seconds.items():
        fps = frames / elapsed
        print(f"{name}: {elapsed:.1f} s, {fps:.2f} fps, {fps / base:.2f}x deface")
    print("target: faces only >= 3x deface's fps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
