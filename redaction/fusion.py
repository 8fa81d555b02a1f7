"""How ``redaction/models/ppocrv4-det-fused.onnx`` is built from rapidocr's PP-OCRv4 text detector.

    python -m redaction.fusion [--out FILE]

PP-OCRv4's detector with two of its export's patterns rewritten into what onnxruntime fuses
(the same function, to float rounding: at most 1e-5 apart on the probability map).

The Paddle export spells each hard-swish out as ``Add(3) -> Clip(0, 6) -> Mul(x) -> Div(6)``
(24 of them) and follows 28 convolutions with a scalar ``Mul`` and ``Add`` (its learnable
affine layers), which onnxruntime neither fuses nor runs in its blocked (NCHWc) layout, so
every one of them is a pass over a feature map plus two layout conversions. A hard-swish
becomes ``x * HardSigmoid(x)`` (two passes), and a scalar affine after a convolution is folded
into its weights and bias (none). 0.85-0.90x the time on one core at 512x320, 960x544 and
320x192 inputs.

The rewrite imports onnx, which took a second of every start-up that loads the plate detector
(most of it loading ``ml_dtypes``): the rewritten model ships in ``redaction/models/``, derived
from rapidocr-onnxruntime's Apache-2.0 weights, and :func:`redaction.plates.det_model` reads it
when the installed model is the one it was built from (else it rewrites that one in memory).
``tests/test_plates.py`` checks the shipped file against the installed model's output.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
from pathlib import Path

import numpy as np

#: the model onnxruntime runs: rapidocr's, rewritten by :func:`fuse` (Apache-2.0 like its source),
#: its SHA-256, and that of the model it was built from (rapidocr-onnxruntime 1.4.4's)
FUSED_MODEL = Path(__file__).with_name("models") / "ppocrv4-det-fused.onnx"
FUSED_SHA256 = "5f8013601427315a816c3a1af2d592a88fcd39137721d7ce571e385782475b75"
FUSED_FROM = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"


def source_model() -> bytes:
    """PP-OCRv4's detector as rapidocr ships it."""
    return importlib.resources.files("rapidocr_onnxruntime").joinpath("models/ch_PP-OCRv4_det_infer.onnx").read_bytes()


def fuse(source: bytes) -> bytes:
    """The serialised model ``source`` (PP-OCRv4's detector) with the two rewrites above (imports onnx)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(source)
    graph = model.graph
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    constants.update((t.name, numpy_helper.to_array(t)) for t in graph.initializer)
    producer = {output: node for node in graph.node for output in node.output}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def scalar(name: str) -> float | None:
        value = constants.get(name)
        return None if value is None or value.size != 1 else float(value.reshape(()))

    def only_user(name: str, op: str):
        found = users.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    replaced: dict[int, list] = {}  # node id -> the nodes taking its place
    dropped: set[int] = set()
    for clip in (n for n in graph.node if n.op_type == "Clip" and len(n.input) == 3):
        add = producer.get(clip.input[0])
        if (add is None or add.op_type != "Add" or scalar(add.input[1]) != 3.0 or only_user(add.output[0], "Clip") is None
                or scalar(clip.input[1]) != 0.0 or scalar(clip.input[2]) != 6.0):
            continue
        x = add.input[0]
        mul = only_user(clip.output[0], "Mul")
        div = mul and only_user(mul.output[0], "Div")
        if mul is None or set(mul.input) != {x, clip.output[0]} or div is None or scalar(div.input[1]) != 6.0:
            continue
        gate = helper.make_node("HardSigmoid", [x], [clip.output[0] + "/hardsigmoid"], alpha=1 / 6, beta=0.5)
        replaced[id(add)] = [gate, helper.make_node("Mul", [x, gate.output[0]], [div.output[0]])]
        dropped |= {id(clip), id(mul), id(div)}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        mul = only_user(conv.output[0], "Mul")
        factor = [scalar(i) for i in mul.input if i != conv.output[0]] if mul is not None else []
        if len(factor) != 1 or factor[0] is None or conv.input[1] not in constants:
            continue
        weight = constants[conv.input[1]]
        bias = constants[conv.input[2]] if len(conv.input) > 2 else np.zeros(weight.shape[0], weight.dtype)
        weight, bias, output = weight * factor[0], bias * factor[0], mul.output[0]
        dropped.add(id(mul))
        add = only_user(output, "Add")
        shift = [scalar(i) for i in add.input if i != output] if add is not None else []
        if len(shift) == 1 and shift[0] is not None:
            bias, output = bias + shift[0], add.output[0]
            dropped.add(id(add))
        names = (conv.output[0] + "/weight", conv.output[0] + "/bias")
        graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip((weight, bias), names))
        folded = helper.make_node("Conv", [conv.input[0], *names], [output], name=conv.name)
        folded.attribute.extend(conv.attribute)
        replaced[id(conv)] = [folded]
    nodes = [new for node in graph.node if id(node) not in dropped for new in replaced.get(id(node), [node])]
    used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.op_type != "Constant" or n.output[0] in used)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the rewritten PP-OCRv4 text detector.")
    parser.add_argument("--out", type=Path, default=FUSED_MODEL, help=f"where to write it (default: {FUSED_MODEL})")
    args = parser.parse_args(argv)
    source = source_model()
    model = fuse(source)
    args.out.write_bytes(model)
    print(f"{args.out}: sha256 {hashlib.sha256(model).hexdigest()}, "
          f"from rapidocr's model with sha256 {hashlib.sha256(source).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
