"""Unmask throughput: frames per second restored from the vault, against a copy and a decode.

    python perf/bench_unmask.py [--frames N] [--repeats R] [--budget S] [--originals high|lossless]

Seals N real 720p frames (20 regions 24-112 px wide per frame, tracks 1-20 on every frame,
30 fps, 10 s segments) into a fresh key directory and vault with keys/seal.py, then unmasks the
recording with keys/unmask.py as one investigator: everything, and one track of the 20 (each
restored region checked: within the PSNR bound in high mode, bit-exact in lossless). A track's
box jumps to a random place and size every frame (10 layouts cycling): the worst case for
clips coded as video, which is what ``restore`` decodes. It
times sealing (to disk, fsync included), the plan (chain, log and records verified and read:
the ``Unmask`` constructor), and ``restore`` on each redacted frame, and prints restore fps
against two baselines measured in this run: a plain NumPy paste of the same 20 crops (the
floor any restore pays), and decoding the redacted frames as 720p H.264 with PyAV (what an
unmask of a video pays anyway; restore/decode > 1 means unmasking is not the bottleneck).
Restore runs on one thread; the decoder uses FFmpeg's threads (2 cores here), as the CLI does.
Every restore pass needs a fresh plan (``restore`` consumes its frames), so each unmask case
repeats only while it stays within ``--budget`` seconds; it always runs at least once.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from _cosigner import local_cosigner  # noqa: E402
from bench_seal import boxes, frames  # noqa: E402

from keys import Grant, KeyDirectory, PrivateIdentity, Sealed, Sealer, Selection, Unmask, VaultStore  # noqa: E402
from keys.clips import MIN_PSNR, psnr  # noqa: E402

FPS = 30
FRAME_US = 33_333
TOLERANCE_US = 16_000
ONE_TRACK = 7


class Clip:
    """N frames cycling a few real ones: originals, their boxes and crops, and redacted copies."""

    def __init__(self, count: int) -> None:
        self.images = frames()
        rng = np.random.default_rng(7)
        self.layout = [boxes(rng) for _ in self.images]
        self.crops = [[im[y:y + h, x:x + w].copy() for x, y, w, h in bs] for im, bs in zip(self.images, self.layout)]
        self.redacted = []
        for im, bs in zip(self.images, self.layout):
            out = im.copy()
            for x, y, w, h in bs:
                out[y:y + h, x:x + w] = 0
            self.redacted.append(out)
        self.count = count

    def at(self, frame: int) -> int:
        return frame % len(self.images)


def seal(store: VaultStore, directory: KeyDirectory, camera: str, clip: Clip, originals: str) -> tuple[Sealer, float]:
    """Seal the whole clip as one recording; returns the sealer and the seconds it took."""
    start = time.perf_counter()
    policy = {"version": 1, "storage": {"originals": originals}}
    with Sealer(store, directory.signer, camera, policy, {"face": Grant(("investigator",))},
                directory.identities, segment_seconds=10.0) as sealer:
        for frame in range(clip.count):
            i = clip.at(frame)
            sealer.add(frame, frame * FRAME_US, [Sealed(t + 1, "face", box, crop) for t, (box, crop)
                                                 in enumerate(zip(clip.layout[i], clip.crops[i]))])
    return sealer, time.perf_counter() - start


def unmask(store, ref, selection: Selection, identity: PrivateIdentity, clip: Clip,
           check) -> tuple[float, float, float, int]:
    """One unmask of the recording: (plan s, authorize s, restore s summed over frames, regions)."""
    start = time.perf_counter()
    job = Unmask(store, ref, selection, [identity])
    planned = time.perf_counter()
    job.authorize("BENCH-1", "unmask throughput benchmark", "memory", True)
    authorized = time.perf_counter()
    restoring = 0.0
    for frame in range(clip.count):
        image = clip.redacted[clip.at(frame)].copy()
        begin = time.perf_counter()
        job.restore(frame, frame / FPS, image, tolerance_us=TOLERANCE_US)
        restoring += time.perf_counter() - begin
        if frame < len(clip.images):
            check(clip.at(frame), image)
    if job.unused:
        raise SystemExit(f"{job.unused} selected regions were never restored")
    return planned - start, authorized - planned, restoring, job.restored


def repeated(run, repeats: int, budget: float) -> list:
    """Up to ``repeats`` results of ``run()``, no more once ``budget`` seconds are spent (at least one)."""
    results, start = [], time.perf_counter()
    while len(results) < repeats and (not results or time.perf_counter() - start < budget):
        results.append(run())
    return results


def paste(clip: Clip) -> float:
    """The floor: the same crops pasted into a copy of each redacted frame (paste time only)."""
    pasting = 0.0
    for frame in range(clip.count):
        i = clip.at(frame)
        image = clip.redacted[i].copy()
        begin = time.perf_counter()
        for (x, y, w, h), crop in zip(clip.layout[i], clip.crops[i]):
            image[y:y + h, x:x + w] = crop
        pasting += time.perf_counter() - begin
    return pasting


def encode(clip: Clip) -> bytes:
    """The redacted clip as the gateway writes it: H.264 (libx264 veryfast, crf 18) in MP4."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in range(clip.count):
            video = av.VideoFrame.from_ndarray(clip.redacted[clip.at(frame)], format="bgr24")
            video.pts = frame
            out.mux(stream.encode(video))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def decode(data: bytes) -> tuple[float, int]:
    """Decode to BGR ndarrays (what restore works on), FFmpeg threads as VideoTranscoder sets them
    (gateway/files/video.py: ``thread_type = "AUTO"``)."""
    start = time.perf_counter()
    count = 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            np.ascontiguousarray(frame.to_ndarray(format="bgr24"))
            count += 1
    return time.perf_counter() - start, count


def _same(restored: np.ndarray, original: np.ndarray, lossless: bool) -> bool:
    """Bit-exact in lossless mode; within the high mode's PSNR bound otherwise."""
    return np.array_equal(restored, original) if lossless else psnr(original, restored) >= MIN_PSNR


def check_full(clip: Clip, lossless: bool):
    def check(i: int, image: np.ndarray) -> None:
        outside = np.ones(image.shape[:2], dtype=bool)
        for x, y, w, h in clip.layout[i]:
            outside[y:y + h, x:x + w] = False
            if not _same(image[y:y + h, x:x + w], clip.images[i][y:y + h, x:x + w], lossless):
                raise SystemExit(f"full unmask of frame {i}: region {(x, y, w, h)} is not the original")
        if not np.array_equal(image[outside], clip.images[i][outside]):
            raise SystemExit(f"full unmask of frame {i} changed pixels outside the regions")
    return check


def check_one(clip: Clip, track: int, lossless: bool):
    def check(i: int, image: np.ndarray) -> None:
        mine = np.zeros(image.shape[:2], dtype=bool)
        others = np.zeros_like(mine)
        for t, (x, y, w, h) in enumerate(clip.layout[i], start=1):
            (mine if t == track else others)[y:y + h, x:x + w] = True
        own = mine & ~others
        if not np.array_equal(image[~own], clip.redacted[i][~own]):
            raise SystemExit(f"one-track unmask of frame {i} restored other pixels than track {track}'s own")
        if not _same(image[own], clip.images[i][own], lossless):
            raise SystemExit(f"one-track unmask of frame {i}: track {track}'s pixels are not the original")
    return check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150, help="720p frames to seal and unmask (default 150)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each measurement; the best is kept")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds after which an unmask case stops repeating (default 20)")
    parser.add_argument("--originals", choices=("high", "lossless"), default="high",
                        help="the policy's storage.originals (default high, as the built-in policy)")
    parser.add_argument("--seal-repeats", type=int, default=1,
                        help="recordings sealed (the sealing time is the best; default 1: coding clips is slow)")
    args = parser.parse_args()
    if args.frames < 1 or args.repeats < 1:
        parser.error("--frames and --repeats must be >= 1")
    clip = Clip(args.frames)
    n = clip.count
    pixels = sum(c.size // 3 for cs in clip.crops for c in cs) / len(clip.crops)

    with tempfile.TemporaryDirectory(prefix="bench-unmask-") as tmp:
        work = Path(tmp)
        directory = KeyDirectory.init(work / "keys")
        identity = PrivateIdentity.generate("ivan", ["investigator"])
        directory.add(identity.public)
        with local_cosigner(work) as (cosigner, _):
            store = VaultStore.for_sealing(work / "vault", directory, cosigner, manages_access=True)

            # every repeat seals its own camera, so each unmask verifies a chain of exactly one recording
            sealed = [seal(store, directory, f"bench-{r}", clip, args.originals) for r in range(max(1, args.seal_repeats))]
            ref = sealed[0][0].ref
            sealing = min(seconds for _, seconds in sealed) / n
            vault = work / "vault"  # a local vault: docs/vault-format.md's layout
            vault_bytes = sum(p.stat().st_size for p in (vault / "segments" / "bench-0").glob("*.pgv"))
            vault_bytes += sum(p.stat().st_size for p in (vault / "keys" / "bench-0").glob("*.keys"))
            segments = len(store.segment_numbers("bench-0"))

            lossless = args.originals == "lossless"
            full = repeated(lambda: unmask(store, ref, Selection(), identity, clip, check_full(clip, lossless)),
                            args.repeats, args.budget)
            one = repeated(lambda: unmask(store, ref, Selection(tracks=frozenset({ONE_TRACK})), identity, clip,
                                          check_one(clip, ONE_TRACK, lossless)), args.repeats, args.budget)

    copied = min(paste(clip) for _ in range(args.repeats))
    video = encode(clip)
    decoded = [decode(video) for _ in range(args.repeats)]
    if any(count != n for _, count in decoded):
        raise SystemExit(f"decoded {decoded[0][1]} frames of {n}")

    plan = min(p for p, _, _, _ in full)
    authorize = min(a for _, a, _, _ in full)
    full_fps = n / min(r for _, _, r, _ in full)
    one_plan = min(p for p, _, _, _ in one)
    one_fps = n / min(r for _, _, r, _ in one)
    copy_fps = n / copied
    decode_fps = n / min(s for s, _ in decoded)
    end_to_end = n / min(p + a + r for p, a, r, _ in full)
    region_seconds = 20 * n / FPS

    print(f"{n} frames 1280x720 at {FPS} fps, 20 regions/frame ({pixels:.0f} px/frame), {segments} segment(s) of 10 s, "
          f"best of {args.repeats} (unmask: {len(full)} and {len(one)} run(s) within {args.budget:g} s)")
    print(f"{'sealing (to disk)':<34} {1000 * sealing:8.3f} ms/frame  {sealing * copy_fps:7.1f}x the paste baseline")
    print(f"{'plan (verify chain+log, read)':<34} {plan:8.3f} s        {vault_bytes / plan / 1e6:.1f} MB/s of vault; "
          f"one track {one_plan:.3f} s; authorize {1000 * authorize:.1f} ms")
    print(f"{'restore, all 20 tracks':<34} {full_fps:8.1f} fps      {copy_fps / full_fps:7.1f}x slower than paste, "
          f"{full_fps / decode_fps:5.2f}x decode")
    print(f"{'restore, 1 track of 20':<34} {one_fps:8.1f} fps      {one_fps / full_fps:7.1f}x all tracks, "
          f"{one_fps / decode_fps:5.2f}x decode")
    print(f"{'unmask all incl. plan+authorize':<34} {end_to_end:8.1f} fps      {end_to_end / decode_fps:5.2f}x decode")
    print(f"{'baseline: paste 20 crops (NumPy)':<34} {copy_fps:8.1f} fps")
    print(f"{'baseline: decode 720p H.264 (PyAV)':<34} {decode_fps:8.1f} fps      "
          f"({len(video) / n / 1000:.0f} kB/frame, libx264 veryfast crf 18, FFmpeg threads auto)")
    print(f"vault bytes per region-second at {FPS} fps ({args.originals}): {vault_bytes / region_seconds / 1e6:.3f} MB "
          f"(raw pixels {pixels * 3 / 20 * FPS / 1e6:.3f} MB: {vault_bytes / (pixels * 3 * n):.3f}x)")
    print("restore/decode > 1: unmasking a video is bound by decoding, not by the vault")
    return 0


if __name__ == "__main__":
    sys.exit(main())
