"""Track fragmentation and duplicate boxes, as ``privacy-gateway detect --json`` reports them.

    python perf/eval_tracks.py [--policy FILE] [--clips a.mp4,b.mp4]

Per clip and class: regions per frame, distinct track ids, and same-frame pairs of boxes of
one class overlapping with IoU > 0.3 (the same object masked, and sealed, twice). Per clip, the
main subject of each shot (Hamilton's performer; see :func:`main_subject`): the tracks covering
it, when they change, and which changes are not at a scene cut (a cut may start a new subject,
nothing else should). Times are the stream's (its first frame at 0): the Hamilton clip's cuts at
0.67, 2.74 and 7.04 s are its container's 1.52, 3.59 and 7.89 s. Clips
default to the bundled sample (``config/samples/vtest-10s.mp4``: about seven walking people)
and ``../shared/data/videos/short_hamilton_clip.mp4`` (one performer, three scene cuts).
The command line runs as a user runs it (its own process, the policy's stride and tracking).

Then identities: the synthetic clip of ``tests/identity_support.py`` (real faces crossing over a
real street photo, 24 px and 90 px) through a stream with the policy's faces: IDF1 on the faces,
IDF1 with the detector's false positives counted, and identity switches per face.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIPS = [ROOT / "config" / "samples" / "vtest-10s.mp4", ROOT.parent / "shared" / "data" / "videos" / "short_hamilton_clip.mp4"]
OVERLAP = 0.3


def iou_pairs(boxes: np.ndarray) -> int:
    """Pairs of boxes (x, y, w, h) with IoU above :data:`OVERLAP`."""
    if len(boxes) < 2:
        return 0
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    iw = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
    ih = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
    inter = iw * ih
    area = boxes[:, 2] * boxes[:, 3]
    iou = inter / np.maximum(area[:, None] + area[None] - inter, 1e-9)
    return int(np.triu(iou > OVERLAP, 1).sum())


def measure(clip: Path, policy: Path | None) -> dict[str, dict[str, float]]:
    command = [sys.executable, "-m", "gateway.cli", "detect", str(clip), "--json"]
    if policy is not None:
        command += ["--policy", str(policy)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    frames = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    stats: dict[str, dict[str, float]] = {}
    for cls in ("face", "plate"):
        tracks: set[int] = set()
        regions = pairs = 0
        for frame in frames:
            own = [r for r in frame["regions"] if r["class"] == cls]
            regions += len(own)
            tracks.update(r["track"] for r in own if r.get("track") is not None)
            pairs += iou_pairs(np.array([r["box"] for r in own], np.float64).reshape(-1, 4))
        count = max(1, len(frames))
        stats[cls] = {"frames": len(frames), "regions_per_frame": regions / count, "tracks": len(tracks),
                      "overlapping_pairs_per_frame": pairs / count}
    cuts = scene_cuts(clip)
    subject = main_subject(frames, cuts)
    changes, last, fresh = [], (None, None), starts_of(frames, cuts)
    # a change across frames where the subject is not covered counts; a subject picked after the last
    # one left is somebody else (not a change), unless a cut started it
    for frame, (track, who) in zip(frames, subject):
        if track is not None:
            if last[0] is not None and track != last[0] and (who == last[1] or frame["pts"] in fresh):
                changes.append(round(frame["pts"], 2))
            last = (track, who)
    stats["face"]["cuts"] = [round(frames[i]["pts"], 2) for i in cuts if i < len(frames)]
    stats["face"]["subject_tracks"] = len({t for t, _ in subject if t is not None})
    stats["face"]["subject_changes"] = changes
    stats["face"]["subject_changes_off_cuts"] = [t for t in changes if not _at_cut(t, stats["face"]["cuts"])]
    return stats


#: a thumbnail's mean grey difference from the frame before it above this is a cut (measured on the
#: Hamilton clip: its three cuts 28-31 grey levels, a head moving close to the camera at most 14)
CUT_DIFFERENCE = 20.0
#: a subject change this soon after a cut (the frames up to the next detection frame) is the cut's
AFTER_CUT = 0.25


def scene_cuts(clip: Path) -> list[int]:
    """The frames that start a new shot, by the mean difference of consecutive 64x36 grey thumbnails
    (a measure of its own, not the engine's :mod:`redaction.cuts`)."""
    import cv2

    capture = cv2.VideoCapture(str(clip))
    cuts, previous, index = [], None, 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        thumb = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (64, 36), interpolation=cv2.INTER_AREA)
        if previous is not None and float(np.abs(thumb.astype(np.float32) - previous).mean()) > CUT_DIFFERENCE:
            cuts.append(index)
        previous, index = thumb.astype(np.float32), index + 1
    return cuts


def _at_cut(time: float, cuts: list[float]) -> bool:
    return any(-0.05 <= time - cut <= AFTER_CUT for cut in cuts)


#: the main subject not covered for this long has left: the next one picked is somebody else
GONE = 1.0


def starts_of(frames: list[dict], cuts: list[int]) -> set[float]:
    """The times of the frames of ``frames`` up to :data:`AFTER_CUT` after each cut."""
    starts = [frames[i]["pts"] for i in cuts if i < len(frames)]
    return {f["pts"] for f in frames if any(0 <= f["pts"] - start <= AFTER_CUT for start in starts)}


def main_subject(frames: list[dict], cuts: list[int]) -> list[tuple[int | None, int]]:
    """Per frame, the track of the main subject (Hamilton's performer) and which subject it is (a
    count): the largest confident face (score >= 0.5) at the start of each shot (up to
    :data:`AFTER_CUT` after its cut, while the tracker learns the new shot), then the face box that
    best overlaps the subject's box on the frame before (IoU > 0.3): the same person, whichever
    track covers them. None where the subject is not covered; after :data:`GONE` seconds of that,
    the next one picked is another subject."""
    fresh_at = starts_of(frames, cuts)
    out: list[tuple[int | None, int]] = []
    box, seen, who = None, 0.0, 0
    for frame in frames:
        faces = [r for r in frame["regions"] if r["class"] == "face" and r.get("track") is not None]
        if box is not None and frame["pts"] - seen > GONE:
            box = None
        if box is None or frame["pts"] in fresh_at:
            confident = [r for r in faces if r["score"] >= 0.5]
            pick = max(confident, key=lambda r: r["box"][2] * r["box"][3], default=None)
            who += pick is not None and box is None
        else:
            candidates = np.array([r["box"] for r in faces], np.float64).reshape(-1, 4)
            overlap = _ious(np.array(box, np.float64), candidates)
            pick = faces[int(overlap.argmax())] if len(faces) and overlap.max() > 0.3 else None
        if pick is not None:
            box, seen = pick["box"], frame["pts"]
        out.append((None if pick is None else pick["track"], who))
    return out


def _ious(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    return inter / np.maximum(box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter, 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, help="policy file (default: the built-in default)")
    parser.add_argument("--clips", help="comma-separated clip paths (default: the two clips above)")
    args = parser.parse_args()
    clips = [Path(c) for c in args.clips.split(",")] if args.clips else CLIPS
    print(f"policy: {args.policy or 'built-in default'}")
    for clip in clips:
        stats = measure(clip, args.policy)
        for cls, s in stats.items():
            print(f"{clip.name:28s} {cls:5s} {s['frames']:4d} frames  {s['regions_per_frame']:6.1f} regions/frame  "
                  f"{s['tracks']:5d} tracks  {s['overlapping_pairs_per_frame']:5.2f} overlapping pairs/frame "
                  f"(IoU > {OVERLAP})")
        face = stats["face"]
        changes, off = face["subject_changes"], face["subject_changes_off_cuts"]
        print(f"{'':28s} scene cuts at {face['cuts']} s; each shot's main subject: {face['subject_tracks']} tracks, "
              f"{len(changes)} changes" + (f" at {changes} s" if len(changes) <= 10 else "")
              + f", {len(off)} not at a cut" + (f" ({off} s)" if off and len(off) <= 10 else ""))
    identities(args.policy)
    return 0


def identities(policy_path: Path | None) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from identity_support import crossing_clip, idf1, on_truth, switches, track_clip

    from redaction import Policy, load_policy

    policy = Policy() if policy_path is None else load_policy(policy_path)
    policy = policy.model_copy(update={"classes": policy.classes.model_copy(
        update={"plate": policy.classes.plate.model_copy(update={"enabled": False})})})
    clip = crossing_clip(ROOT.parent / "shared" / "data")
    predicted = track_clip(clip, policy)
    faces = on_truth(clip.truth, predicted)
    print(f"synthetic crossings ({len(clip.frames)} frames, 4 faces, {clip.crossings} crossings): "
          f"IDF1 on the faces {idf1(clip.truth, faces):.3f} (target >= 0.9), with false positives "
          f"{idf1(clip.truth, predicted):.3f}; tracks on the faces {len({t for f in faces for t in f})}; "
          f"switches per face {switches(clip.truth, predicted)}")


if __name__ == "__main__":
    sys.exit(main())
