"""The moved-camera watch on real clips: false alarms on fixed cameras, detection times of simulated changes.

    python perf/eval_moved.py [--after 5] [--period 1] [--zone]

Runs :class:`gateway.live.moved.Judge`, the decision the live watch makes, on one sample per
``period`` seconds of media time of the clips in ../shared/data/videos (looped to at least
``--length`` seconds), exactly as it runs on a camera's released frames:

* fixed cameras (opencv_vtest: a walkway, 80 s; MOT20-08: a dense café crowd; MOT20-05: a dense
  night crowd): any hold is a false alarm;
* the moving camera (MOT17-13, on a bus): when it is first held;
* simulated changes at ``--at`` seconds into each fixed clip: re-aims (the picture shifted by
  2-20 % of its width or height, cropped to 80 %, rotated 3 and 6 degrees), a cover (a dark
  frame, a grey card), a defocus (Gaussian blur of sigma 0.25-1 % of the width), and changes that
  must *not* count (lights dimmed to half, sensor noise): the time from the change to the hold.
  Changes too small to matter either way (a 2 % shift, a 3 degree roll, the lightest blur) are
  reported but not judged; a line marked ``<--`` is an outcome other than expected.

``--zone`` adds a solid zone over 12 % of the frame to the policy, as a camera with zones releases
it (the measures leave zones out). Prints one line per clip and change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.config import ViewCheck
from gateway.files import VideoTranscoder
from gateway.live.moved import Judge
from gateway.live.views import sample
from redaction import parse_policy, redact_frame

VIDEOS = ROOT.parent / "shared" / "data" / "videos"
FIXED = ("opencv_vtest.avi", "MOT20-08_raw_shorter.mp4", "MOT20-05_raw_even_shorter.mp4")
MOVING = "MOT17-13-SDP_raw_h264.mp4"
ZONE = {"zones": {"window": {"polygon": [[0.62, 0.08], [0.92, 0.08], [0.92, 0.48], [0.62, 0.48]]}},
        "classes": {"plate": {"enabled": False}}}


def shifted(fx: float, fy: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        move = np.float32([[1, 0, fx * w], [0, 1, fy * h]])
        return cv2.warpAffine(image, move, (w, h), borderMode=cv2.BORDER_REPLICATE)
    return change


def cropped(share: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        cw, ch = int(w * share), int(h * share)
        x, y = (w - cw) // 3, (h - ch) // 3
        return cv2.resize(image[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    return change


def rotated(degrees: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        turn = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        return cv2.warpAffine(image, turn, (w, h), borderMode=cv2.BORDER_REPLICATE)
    return change


def blurred(share: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda image: cv2.GaussianBlur(image, (0, 0), share * image.shape[1])


def dark(image: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(int(image[0, 0, 0]))
    return np.clip(image * 0.04 + rng.normal(0, 1.5, image.shape), 0, 255).astype(np.uint8)


def card(image: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(int(image[0, 0, 0]))
    return np.clip(150 + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)


def dimmed(image: np.ndarray) -> np.ndarray:
    return (image * 0.5).astype(np.uint8)


def noisy(image: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(int(image[0, 0, 0]))
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


#: (name, change, must it be held? None: either is right: too small a change to matter either way)
CHANGES = [
    ("shift 2 % right", shifted(0.02, 0), None), ("shift 4 % right", shifted(0.04, 0), True),
    ("shift 6 % right", shifted(0.06, 0), True), ("shift 10 % right", shifted(0.10, 0), True),
    ("shift 5 % down", shifted(0, 0.05), True), ("shift 20 % left", shifted(-0.2, 0), True),
    ("crop to 80 % (zoom)", cropped(0.8), True), ("rotate 3 degrees", rotated(3), None), ("rotate 6 degrees", rotated(6), True),
    ("cover: dark frame", dark, True), ("cover: grey card", card, True),
    ("defocus sigma 0.25 % of width", blurred(0.0025), None), ("defocus sigma 0.5 %", blurred(0.005), True),
    ("defocus sigma 1 %", blurred(0.01), True),
    ("lights dimmed to half", dimmed, False), ("sensor noise sigma 8", noisy, False),
]


def frames(name: str, period: float, length: float):
    """(media time, image) every ``period`` s, the clip looped until ``length`` s."""
    at, offset = 0.0, 0.0
    while at < length:
        last = 0.0
        for frame in VideoTranscoder(VIDEOS / name).frames():
            if offset + frame.time >= at:
                yield at, frame.image
                at += period
                if at >= length:
                    return
            last = frame.time
        offset += last + 1 / 25


def run(name: str, settings: ViewCheck, policy, period: float, length: float,
        change=None, at: float = 0.0) -> tuple[float | None, list[float]]:
    """The first time the judge holds the camera (None: never) and the comparisons it made."""
    judge = Judge(settings, policy)
    judge.rebase(0.0)
    seen = []
    for t, image in frames(name, period, length):
        if change is not None and t >= at:
            image = change(image)
        if policy.zones:
            redact_frame(image, [], policy)
        found = judge.add(sample(image), t)
        if judge.last is not None:
            seen.append(judge.last)
        if found is not None:
            return t, seen[-1].as_dict()
    return None, seen[-1].as_dict() if change is not None else seen


def _measures(c: dict) -> str:
    return (f"shift {c['shift'][0]:+.1%} {c['shift'][1]:+.1%}, correlation {c['correlation']:.2f}, "
            f"contrast {c['contrast']:.2f}, sharpness {c['sharpness']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--after", type=float, default=ViewCheck().after_s, help="view_check.after_s")
    parser.add_argument("--period", type=float, default=ViewCheck().period_s, help="view_check.period_s")
    parser.add_argument("--length", type=float, default=30.0, help="seconds of each fixed clip (looped)")
    parser.add_argument("--at", type=float, default=10.0, help="when the simulated change happens")
    parser.add_argument("--zone", action="store_true", help="a zone over 12 %% of the frame")
    args = parser.parse_args()
    settings = ViewCheck(after_s=args.after, period_s=args.period)
    policy = parse_policy(ZONE if args.zone else {"classes": {"plate": {"enabled": False}}})
    print(f"after_s {settings.after_s}, period_s {settings.period_s}, max_shift {settings.max_shift}, "
          f"min_correlation {settings.min_correlation}, min_contrast {settings.min_contrast}, "
          f"min_sharpness {settings.min_sharpness}; zones: {list(policy.zones) or 'none'}")
    failures = 0
    for name in FIXED:
        length = 80.0 if name == "opencv_vtest.avi" else args.length
        held, seen = run(name, settings, policy, args.period, length)
        if held is not None:
            print(f"{name}: fixed, {length:.0f} s: FALSE ALARM at {held:.0f} s: {_measures(seen)}")
        else:
            print(f"{name}: fixed, {length:.0f} s: no hold; lowest correlation {min(c.correlation for c in seen):.2f}, "
                  f"largest shift {max(max(map(abs, c.shift)) for c in seen):.1%}, lowest contrast "
                  f"{min(c.contrast for c in seen):.2f}, sharpness {min(c.sharpness for c in seen):.2f}")
        failures += held is not None
        for label, change, must in CHANGES:
            held, last = run(name, settings, policy, args.period, args.at + 30.0, change, args.at)
            took = None if held is None else held - args.at
            ok = must is None or (took is not None) == must
            failures += not ok
            outcome = f"held after {took:4.1f} s" if took is not None else "not held"
            print(f"  {label:32s} {outcome:18s} {_measures(last)}"
                  f"{'' if ok else '  <-- ' + ('missed' if must else 'false alarm')}")
    held, _ = run(MOVING, settings, policy, args.period, 30.0)
    print(f"{MOVING}: moving camera: {f'held at {held:.0f} s' if held is not None else 'never held'}")
    print(f"{failures} outcome(s) other than expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
