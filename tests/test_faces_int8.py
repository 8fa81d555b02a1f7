"""The shipped int8 CenterFace: the file is the one documented, it rebuilds from its recipe, and it
finds the faces the float model finds."""

import hashlib
import re

import cv2
import numpy as np
import pytest

from redaction.faces import INT8_MODEL, CenterFaceDetector
from redaction.regions import iou_matrix

NOTE = INT8_MODEL.with_name("README.md")


def documented_sha256() -> str:
    return re.search(r"SHA-256: `([0-9a-f]{64})`", NOTE.read_text()).group(1)


def test_the_shipped_model_is_the_documented_one():
    assert hashlib.sha256(INT8_MODEL.read_bytes()).hexdigest() == documented_sha256()


def test_the_shipped_model_s_weights_fit_in_seven_bits():
    """Without 8-bit dot products (AVX2-only CPUs) onnxruntime adds pairs of uint8 x int8 products in
    16 bits, saturating for weights beyond +-64 (2 x 255 x 64 < 2^15): the model must compute the same
    on every CPU."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(INT8_MODEL)
    initializers = {i.name: i for i in model.graph.initializer}
    weights = [numpy_helper.to_array(initializers[node.input[0]]) for node in model.graph.node
               if node.op_type == "DequantizeLinear" and node.input[0] in initializers
               and initializers[node.input[0]].data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 30  # every convolution's
    assert min(int(w.min()) for w in weights) >= -64 and max(int(w.max()) for w in weights) <= 64


def boxes(detector: CenterFaceDetector, image: np.ndarray, score: float = 0.5) -> np.ndarray:
    return np.array([r.box for r in detector.detect(image) if r.score >= score], np.float64).reshape(-1, 4)


def test_int8_finds_the_faces_fp32_finds(data):
    """Every confident face of the float model on the group photos is found by the int8 one, in place."""
    fp32 = CenterFaceDetector(threshold=0.1, precision="fp32", threads=1)
    int8 = CenterFaceDetector(threshold=0.1, precision="int8", threads=1)
    checked = 0
    for path in sorted((data / "faces_dlib_examples" / "images").glob("*.jpg")):
        image = cv2.imread(str(path))
        want, got = boxes(fp32, image), boxes(int8, image, score=0.1)
        if len(want):
            assert len(got) and (iou_matrix(want, got).max(axis=1) >= 0.5).all(), path.name
            checked += len(want)
    assert checked >= 30


@pytest.mark.slow
def test_the_model_rebuilds_from_its_recipe(tmp_path, data):
    """``python -m redaction.int8`` rebuilds the shipped file: byte for byte with the onnxruntime it was
    built with, else (another version) a model whose detections match the shipped one's. Its last
    step, the BGR picture as the input, changes no output bit: the model before it, fed the float
    planes, answers exactly what the model after it answers fed the picture, on whole frames and
    on crops whose sides need padding."""
    from redaction.detector import create_session
    from redaction.faces import _INPUT, IMAGE_INPUT, blob, picture
    from redaction.int8 import SAMPLE, build

    rebuilt, before = tmp_path / "centerface-int8.onnx", tmp_path / "float-input.onnx"
    digest = build(rebuilt, data, float_input=before)
    floats, pictures = create_session(before, 1), create_session(rebuilt, 1)
    assert [i.name for i in pictures.get_inputs()] == [IMAGE_INPUT] and pictures.get_inputs()[0].type == "tensor(uint8)"
    import av

    with av.open(str(SAMPLE)) as container:
        images = [f.to_ndarray(format="bgr24") for i, f in enumerate(container.decode(video=0)) if i % 40 == 0]
    for image in [*images, *(image[37:301, 211:388] for image in images)]:
        want, got = floats.run(None, {_INPUT: blob(image)}), pictures.run(None, {IMAGE_INPUT: picture(image)})
        assert all(np.array_equal(a, b) for a, b in zip(want, got))
    if digest == documented_sha256():
        return
    shipped, again = (CenterFaceDetector(threshold=0.1, threads=1) for _ in range(2))
    again._session = pictures
    with av.open(str(SAMPLE)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 20:
                continue
            image = frame.to_ndarray(format="bgr24")
            a, b = boxes(shipped, image, 0.3), boxes(again, image, 0.3)
            assert len(a) == len(b) and (not len(a) or (iou_matrix(a, b).max(axis=1) >= 0.8).all())
