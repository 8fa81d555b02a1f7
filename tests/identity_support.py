"""Tracking quality against known identities: a synthetic clip of real faces, and IDF1.

``crossing_clip`` pastes real faces (from ``faces_dlib_examples``, the annotated box grown by
half for context) onto a real street photo, moving in pairs along crossing paths: the later
face of a pair passes over the earlier one (an occlusion), once with small faces (10-30 px)
and once with large ones (60-120 px). Every frame comes with the ground truth: identity ->
face box.

``idf1`` is the identity F1 of Ristani et al. (2016): ground-truth and predicted trajectories
are matched one to one so as to maximise the frames on which the predicted box is on the
ground-truth face; IDF1 = 2 IDTP / (ground-truth boxes + predicted boxes). "On" is the
project's coverage rule (the box covers >= 80 % of the face), not an IoU: between detection
frames the tracker deliberately masks more than the face (the path it may have taken), and a
24 px face in a 40 px mask is covered, not missed. motmetrics
computes it too, but its 1.4.0 release calls ``np.asfarray``, which NumPy 2 removed.
``on_truth`` keeps the predicted boxes on a ground-truth face (the identities under test; the
rest are detector false positives), and ``switches`` counts, per identity, how often the track
matched to it changes (CLEAR MOT's identity switches, as motmetrics counts them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from redaction.regions import iou_matrix

Box = tuple[float, float, float, float]

#: (image, annotation index) of the faces used, one per identity: frontal, well lit
FACES = [("2008_002506.jpg", 0), ("2008_002506.jpg", 2), ("2008_001009.jpg", 0), ("2009_004587.jpg", 0)]
BACKGROUND = ("plates_romania_dashcam", "dayride_type1_001_t1055.jpg")


@dataclass
class Clip:
    frames: list[np.ndarray]
    truth: list[dict[int, Box]]  # per frame: identity -> face box
    fps: float
    crossings: int


def _patch(data: Path, name: str, index: int) -> tuple[np.ndarray, Box]:
    """A face with half its size again of context around it, and the face box inside the patch."""
    image = cv2.imread(str(data / "faces_dlib_examples" / "images" / name))
    boxes = json.loads((data / "faces_dlib_examples" / "annotations.json").read_text())[name]
    x, y, w, h = boxes[index]
    pad = w // 4
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(image.shape[1], x + w + pad), min(image.shape[0], y + h + pad)
    return image[y0:y1, x0:x1].copy(), (x - x0, y - y0, w, h)


def crossing_clip(data: Path, seconds: float = 4.0, fps: float = 25.0, size=(960, 540)) -> Clip:
    """Two pairs of faces crossing: 24 px faces along the top, 90 px faces along the bottom."""
    width, height = size
    background = cv2.imread(str(data / BACKGROUND[0] / "images" / BACKGROUND[1]))
    background = cv2.resize(background, (width, height), interpolation=cv2.INTER_AREA)
    patches = [_patch(data, name, index) for name, index in FACES]
    # identity -> (face side in px, start x, end x, y of the face's top edge)
    paths = {1: (24, 150, 750, 120), 2: (24, 750, 150, 126), 3: (90, 100, 760, 330), 4: (90, 760, 100, 342)}
    count = round(seconds * fps)
    frames, truth = [], []
    for i in range(count):
        f = i / (count - 1)
        image = background.copy()
        boxes: dict[int, Box] = {}
        for identity, (side, start, end, top) in paths.items():  # later identities are drawn on top
            patch, (fx, fy, fw, fh) = patches[identity - 1]
            scale = side / fw
            scaled = cv2.resize(patch, None, fx=scale, fy=scale,
                                interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            x = round(start + f * (end - start) - fx * scale)
            y = round(top - fy * scale)
            ph, pw = scaled.shape[:2]
            image[y : y + ph, x : x + pw] = scaled
            boxes[identity] = (x + fx * scale, y + fy * scale, fw * scale, fh * scale)
        # an occluded face is not ground truth while less than half of it shows
        for hidden, front in ((1, 2), (3, 4)):
            a, b = np.array([boxes[hidden]]), np.array([boxes[front]])
            ax0, ay0, aw, ah = boxes[hidden]
            bx0, by0, bw, bh = boxes[front]
            iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
            ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
            if iw * ih > 0.5 * aw * ah and iou_matrix(a, b)[0, 0] > 0:
                del boxes[hidden]
        frames.append(image)
        truth.append(boxes)
    return Clip(frames, truth, fps, crossings=2)


def covers(faces: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``[i, j]``: the share of face ``i``'s area inside box ``j`` (boxes ``x, y, w, h``)."""
    iw = np.clip(np.minimum(faces[:, None, 0] + faces[:, None, 2], boxes[None, :, 0] + boxes[None, :, 2])
                 - np.maximum(faces[:, None, 0], boxes[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(faces[:, None, 1] + faces[:, None, 3], boxes[None, :, 1] + boxes[None, :, 3])
                 - np.maximum(faces[:, None, 1], boxes[None, :, 1]), 0, None)
    return iw * ih / np.maximum(faces[:, None, 2] * faces[:, None, 3], 1e-12)


def idf1(truth: list[dict[int, Box]], predicted: list[dict[int, Box]], threshold: float = 0.8) -> float:
    """Identity F1 of predicted trajectories (per frame: track -> box) against the truth."""
    gt_ids = sorted({g for frame in truth for g in frame})
    pr_ids = sorted({p for frame in predicted for p in frame})
    if not gt_ids or not pr_ids:
        return 0.0
    gi, pi = {g: k for k, g in enumerate(gt_ids)}, {p: k for k, p in enumerate(pr_ids)}
    together = np.zeros((len(gt_ids), len(pr_ids)))
    for gt_frame, pr_frame in zip(truth, predicted):
        if not gt_frame or not pr_frame:
            continue
        g_keys, p_keys = list(gt_frame), list(pr_frame)
        share = covers(np.array([gt_frame[k] for k in g_keys], np.float64),
                       np.array([pr_frame[k] for k in p_keys], np.float64))
        for a, b in zip(*np.nonzero(share >= threshold)):
            together[gi[g_keys[a]], pi[p_keys[b]]] += 1
    rows, cols = linear_sum_assignment(-together)
    idtp = together[rows, cols].sum()
    boxes_gt = sum(len(frame) for frame in truth)
    boxes_pr = sum(len(frame) for frame in predicted)
    return float(2 * idtp / (boxes_gt + boxes_pr))


def on_truth(truth: list[dict[int, Box]], predicted: list[dict[int, Box]], threshold: float = 0.1) -> list[dict[int, Box]]:
    """The predicted boxes that overlap a ground-truth box of their frame (IoU >= ``threshold``):
    what tracking is judged on. The others are the detector's false positives on the background,
    masked all the same (when unsure, redact), and counted apart."""
    out = []
    for gt_frame, pr_frame in zip(truth, predicted):
        if not gt_frame or not pr_frame:
            out.append({})
            continue
        p_keys = list(pr_frame)
        iou = iou_matrix(np.array([pr_frame[k] for k in p_keys], np.float64),
                         np.array(list(gt_frame.values()), np.float64))
        out.append({k: pr_frame[k] for k, row in zip(p_keys, iou) if row.max() >= threshold})
    return out


def switches(truth: list[dict[int, Box]], predicted: list[dict[int, Box]], threshold: float = 0.8) -> dict[int, int]:
    """Per identity: how many times the track matched to it changed, counted as CLEAR MOT (and
    motmetrics' ``num_switches``) counts them: a box matches a face it covers (>= ``threshold`` of
    it); the match an identity had last is kept while its track still covers it, the others are
    made one to one by IoU; a switch is an identity matched to another track than it was last.
    While one face passes behind another, both masks cover the front face: the front face keeps
    its own track; the better-fitting one does not take it over for a frame."""
    last: dict[int, int] = {}
    changed = {g: 0 for frame in truth for g in frame}
    for gt_frame, pr_frame in zip(truth, predicted):
        if not pr_frame or not gt_frame:
            continue
        g_keys, p_keys = list(gt_frame), list(pr_frame)
        faces = np.array([gt_frame[g] for g in g_keys], np.float64)
        boxes = np.array([pr_frame[p] for p in p_keys], np.float64)
        valid = covers(faces, boxes) >= threshold
        matched: dict[int, int] = {}
        for i, g in enumerate(g_keys):  # the correspondences still valid are kept
            p = last.get(g)
            if p in pr_frame and valid[i, p_keys.index(p)] and p not in matched.values():
                matched[g] = p
        rows = [i for i, g in enumerate(g_keys) if g not in matched]
        cols = [j for j, p in enumerate(p_keys) if p not in matched.values()]
        if rows and cols:
            iou = iou_matrix(faces[rows], boxes[cols])
            cost = np.where(valid[np.ix_(rows, cols)], -iou, 1.0)
            for r, c in zip(*linear_sum_assignment(cost)):
                if cost[r, c] < 1.0:
                    matched[g_keys[rows[r]]] = p_keys[cols[c]]
        for g, p in matched.items():
            if g in last and last[g] != p:
                changed[g] += 1
            last[g] = p
    return changed


def track_clip(clip: Clip, policy) -> list[dict[int, Box]]:
    """Per frame of ``clip``: track -> face box, as a stream with ``policy`` releases them (a mask
    without a track gets a negative key of its own: it is no identity)."""
    from redaction import Analyzer, Frame, StreamRedactor

    stream = StreamRedactor(Analyzer(policy), rate=clip.fps)
    decided = [d for i, image in enumerate(clip.frames) for d in stream.push(Frame(i, i / clip.fps, image))]
    decided += stream.flush()
    predicted: list[dict[int, Box]] = [{} for _ in clip.frames]
    untracked = 0
    for decision in decided:
        for region in decision.regions:
            if region.cls != "face":
                continue
            if region.track is None:  # masked, with no identity (a start's whole-frame look): its own trajectory
                untracked -= 1
            predicted[decision.frame.index][untracked if region.track is None else region.track] = region.box
    return predicted
