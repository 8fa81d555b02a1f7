"""The detector seam and the shared onnxruntime session factory."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .regions import Region


@dataclass(frozen=True)
class Parts:
    """One detection cut into model calls that may run on any thread and in any order, each with
    about how many pixels its model reads (which says which to start first), and how their
    results, given back in the calls' order, make the detection's regions."""

    calls: list[tuple[Callable[[], Any], float]]
    combine: Callable[[list[Any]], list[Region]]

    def run(self) -> list[Region]:
        """The regions, the calls made one after the other on this thread."""
        return self.combine([call() for call, _ in self.calls])


def combined(looks: list[Parts], results: list[Any]) -> list[list[Region]]:
    """The regions of each of ``looks`` from the results of all their calls, in the order of
    ``[call for look in looks for call in look.calls]``."""
    found, at = [], 0
    for look in looks:
        found.append(look.combine(results[at : at + len(look.calls)]))
        at += len(look.calls)
    return found


class Detector(abc.ABC):
    """Finds regions of one or more classes in a BGR ``uint8`` frame of shape ``(H, W, 3)``.

    Implementations load and warm their model once, in ``__init__``; ``detect``,
    ``detect_boxes`` and the calls of ``parts`` must be safe to call from two threads at once (a
    camera's analysis shares its model calls out among its threads:
    :meth:`~redaction.engine.Analyzer.together`).
    """

    #: the region classes this detector reports
    classes: tuple[str, ...] = ()

    @abc.abstractmethod
    def detect(self, frame: np.ndarray) -> list[Region]:
        """Regions found in ``frame``, in frame pixel coordinates, without margin."""

    @abc.abstractmethod
    def detect_boxes(self, frame: np.ndarray, boxes: list[tuple[int, int, int, int]], sweep: bool = False,
                     heights: tuple[float, float] | None = None) -> list[Region]:
        """Regions found inside ``boxes`` (``x, y, w, h``, within the frame) of ``frame``, in frame
        pixels: what motion-gated detection looks at. ``sweep`` False: at the detector's
        region-of-interest scale (which may upscale, to find small faces); True: at the scale a
        whole-frame :meth:`detect` uses (a slice of the slow whole-frame sweep). ``heights``:
        ``(low, high)``, the frame-pixel heights of the regions sought (known regions looked at
        again); a detector with several passes may skip those that cannot find regions that tall.
        None: any height."""

    def parts(self, frame: np.ndarray, boxes: list[tuple[int, int, int, int]] | None = None, sweep: bool = False,
              heights: tuple[float, float] | None = None) -> Parts:
        """:meth:`detect` (``boxes`` None) or :meth:`detect_boxes` cut into model calls, so that a
        detection's threads can share out the calls of one large look rather than wait for the
        thread that has it. Default: one call, its pixels the frame's or the boxes' own."""
        if boxes is None:
            return Parts([(partial(self.detect, frame), float(frame.shape[0] * frame.shape[1]))], _only)
        return Parts([(partial(self.detect_boxes, frame, boxes, sweep, heights),
                       float(sum(w * h for _, _, w, h in boxes)))], _only)

    def roi_finest(self, width: int, height: int) -> bool:
        """Whether :meth:`detect_boxes` on changed regions looks at a ``width`` x ``height`` frame at
        least as closely as every whole-frame pass (then what a sweep found needs no second look
        at whole-frame scale when its pixels change). Default: no."""
        return False


def _only(results: list[list[Region]]) -> list[Region]:
    return results[0]


def default_threads() -> int:
    """onnxruntime intra-op threads: ``PRIVACY_GATEWAY_ORT_THREADS`` or every core."""
    env = os.environ.get("PRIVACY_GATEWAY_ORT_THREADS")
    if env:
        return max(1, int(env))
    return max(1, os.cpu_count() or 1)


def create_session(model: bytes | str | Path, threads: int | None = None) -> ort.InferenceSession:
    """One CPU inference session with a fixed thread count and full graph optimisation (which the
    int8 model needs: at lower levels it runs 1.5-4.5x slower).

    Its idle threads do not spin. Detection never has the cores to itself: two sessions used in
    turn (faces, then plates) would each take the core the busy one needs (a face + plate step took
    17-21 % less time without spinning, on 2 cores), and a video's decoder and encoder (a camera's
    other stages) run beside it (`redact` of MOT17-13's first 10 s, faces only: 4.5 s against
    5.4-5.9 s with spinning). Alone, spinning was no faster (CenterFace int8 on 960x540, two threads:
    23.1 ms against 22.8).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"expected a BGR uint8 frame of shape (H, W, 3), got "
            f"{getattr(frame, 'dtype', type(frame))} {getattr(frame, 'shape', '')}"
        )
