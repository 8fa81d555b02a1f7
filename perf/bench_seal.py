"""Cost of sealing region originals: per region and per 720p frame with 20 regions.

    python perf/bench_seal.py

Seals crops of real 720p frames (20 regions 24-112 px wide, ~100 k px per frame, as in
bench_kernels.py) with keys/record.py on one thread, and prints the time per region and per
frame against a plain memory copy of the same pixels (the floor any sealing must pay), and
the sealed bytes per region-second at 30 fps.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keys.record import Header, seal, track_key  # noqa: E402

CLIP = ROOT.parent / "shared" / "data" / "videos" / "MOT17-13-SDP_raw_h264.mp4"


def frames(n: int = 10) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(CLIP))
    out = []
    while len(out) < n:
        ok, frame = capture.read()
        if not ok:
            break
        out.append(cv2.resize(frame, (1280, 720)))
    return out


def boxes(rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    out = []
    for _ in range(20):
        w = int(rng.integers(24, 113))
        h = int(w * rng.uniform(1.0, 1.3))
        out.append((int(rng.integers(0, 1280 - w)), int(rng.integers(0, 720 - h)), w, h))
    return out


def best(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    images = frames()
    rng = np.random.default_rng(7)
    layout = [boxes(rng) for _ in images]
    crops = [[im[y:y + h, x:x + w].copy() for x, y, w, h in bs] for im, bs in zip(images, layout)]
    pixels = sum(c.size // 3 for c in crops[0])
    data_key = os.urandom(32)
    keys = {t: track_key(data_key, "bench", 1, t) for t in range(20)}

    def seal_all() -> int:
        size = 0
        for f, (bs, cs) in enumerate(zip(layout, crops)):
            for t, (box, crop) in enumerate(zip(bs, cs)):
                record = seal(keys[t], Header("bench", 1, f, f * 33_333, t, "face", box, 1), crop)
                size += len(record.to_bytes())
        return size

    def copy_all() -> None:
        for im, bs in zip(images, layout):
            for x, y, w, h in bs:
                im[y:y + h, x:x + w].copy()

    seal_all()
    sealed = best(seal_all) / len(images)
    copied = best(copy_all) / len(images)
    size = seal_all() / len(images)
    derive = best(lambda: [track_key(data_key, "bench", 1, t) for t in range(20)]) / 20
    print(f"{len(images)} frames 1280x720, 20 regions/frame, {pixels} px/frame sealed")
    print(f"seal per 720p frame: {1000 * sealed:.3f} ms (target <= 1 ms on one core); "
          f"plain copy of the same pixels {1000 * copied:.3f} ms (ratio {sealed / copied:.1f}x)")
    print(f"seal per region: {1e6 * sealed / 20:.1f} us; track key derivation (once per track and segment): "
          f"{1e6 * derive:.1f} us")
    print(f"sealed bytes per region-second at 30 fps: {size / 20 * 30 / 1e6:.2f} MB "
          f"(raw pixels, overhead {100 * (size / (pixels * 3) - 1):.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
