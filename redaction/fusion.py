"""How ``redaction/models/ppocrv4-det-fused.onnx`` is built from rapidocr's PP-OCRv4 text detector.

    python -m redaction.fusion [--out FILE]

PP-OCRv4's detector with five of its export's patterns rewritten into what onnxruntime fuses
(the same function, to float rounding: at most 4e-5 apart on the probability map).

The Paddle export spells each hard-swish out as ``Add(3) -> Clip(0, 6) -> Mul(x) -> Div(6)``
(24 of them) and follows 28 convolutions and 24 hard-swishes with a scalar ``Mul`` and ``Add``
(its learnable affine layers), which onnxruntime neither fuses nor runs in its blocked (NCHWc)
layout, so every one of them is a pass over a feature map plus two layout conversions. A
hard-swish becomes ``x * HardSigmoid(x)`` (which onnxruntime fuses into the convolution before
it), a scalar affine right after a convolution is folded into its weights and bias, and one
after a hard-swish into the 1x1 convolutions it feeds (10 of them), or else becomes a depthwise
1x1 convolution, which stays in the blocked layout (14). On one core, against the export:
0.85-0.90x the time with the first two rewrites, 0.70-0.80x with all three (0.89-0.91x the first
two's; 512x320, 960x544, 1280x736 and 320x192 inputs).

Two more rewrites take passes out of the neck and the head. Each of the neck's eight residual
squeeze-and-excitations, ``x + x * HardSigmoid(z)``, becomes ``x * Clip(z', 1, 2)`` with the
gate's slope and offset (plus one) folded into the convolution that makes ``z``, which then
carries the Clip: one Add over a feature map less each. The head's bias Adds after its two
transposed convolutions, and the batch normalisation after the first, are folded into their
weights. Against the three rewrites alone, on this AVX2 CPU (2026-12-07, nine interleaved
pairs): 0.94-0.98x the time on one core and 0.94-0.97x on two, the probability map within
6e-7 of theirs on random inputs. (A transposed 2x2 convolution written as a 1x1 convolution and
a ``DepthToSpace`` was 1.06-1.19x slower: not kept.)

The rewrite imports onnx, which took a second of every start-up that loads the plate detector
(most of it loading ``ml_dtypes``): the rewritten model ships in ``redaction/models/``, derived
from rapidocr-onnxruntime's Apache-2.0 weights, and :func:`redaction.plates.det_model` reads it
when the installed model is the one it was built from (else it rewrites that one in memory).
``tests/test_plates.py`` checks the shipped file against the installed model's output.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

#: the model onnxruntime runs: rapidocr's, rewritten by :func:`fuse` (Apache-2.0 like its source),
#: its SHA-256, and that of the model it was built from (rapidocr-onnxruntime 1.4.4's)
FUSED_MODEL = Path(__file__).with_name("models") / "ppocrv4-det-fused.onnx"
FUSED_SHA256 = "a40a425195ae4759271dc4e42c458a5fdb166b80efdeec627cf35cbbc5ea89ab"
FUSED_FROM = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"


def source_model() -> bytes:
    """PP-OCRv4's detector as rapidocr ships it, read without importing rapidocr (whose imports,
    shapely and its OCR pipeline, took a quarter of a second of every start-up)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("rapidocr-onnxruntime is not installed: it ships the plate detector's weights")
    return (Path(spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx").read_bytes()


def fuse(source: bytes) -> bytes:
    """The serialised model ``source`` (PP-OCRv4's detector) with the rewrites above (imports onnx)."""
    import onnx

    model = onnx.load_from_string(source)
    _hard_swish_and_affine_after_conv(model.graph)
    _affine_after_activation(model.graph)
    _residual_gates(model.graph)
    _bias_and_norm_into_deconvolutions(model.graph)
    return model.SerializeToString()


class _Graph:
    """Look-ups over a graph's nodes, and the means to replace some of them."""

    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
        self.constants.update((t.name, numpy_helper.to_array(t)) for t in graph.initializer)
        self.producer = {output: node for node in graph.node for output in node.output}
        self.users: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.users.setdefault(name, []).append(node)
        self.replaced: dict[int, list] = {}  # node id -> the nodes taking its place
        self.dropped: set[int] = set()

    def scalar(self, name: str) -> float | None:
        value = self.constants.get(name)
        return None if value is None or value.size != 1 else float(value.reshape(()))

    def only_user(self, name: str, op: str):
        found = self.users.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def affine(self, mul) -> tuple[str, float, float, object] | None:
        """``mul`` and the node after it as a scalar affine ``x * scale + shift``: (x, scale, shift,
        the Add), or None (a missing shift is 0, and then the Add is None)."""
        factors = [self.scalar(i) for i in mul.input]
        if len(factors) != 2 or factors.count(None) != 1:
            return None
        variable = factors.index(None)
        x, scale = mul.input[variable], factors[1 - variable]
        add = self.only_user(mul.output[0], "Add")
        shift = [self.scalar(i) for i in add.input if i != mul.output[0]] if add is not None else []
        if len(shift) != 1 or shift[0] is None:
            return x, scale, 0.0, None
        return x, scale, shift[0], add

    def conv(self, conv, inputs: list[str], weight: np.ndarray, bias: np.ndarray, outputs: list[str] | None = None, **attributes):
        """A convolution like ``conv`` (its attributes, unless given) with new weights and bias."""
        from onnx import helper, numpy_helper

        taken = {t.name for t in self.graph.initializer}
        stem = (outputs or conv.output)[0]
        while stem + "/weight" in taken:  # a convolution rewritten twice keeps both names apart
            stem += "'"
        names = (stem + "/weight", stem + "/bias")
        self.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip((weight, bias), names))
        node = helper.make_node("Conv", [*inputs, *names], list(outputs or conv.output), name=conv.name, **attributes)
        if not attributes:
            node.attribute.extend(conv.attribute)
        return node

    def weights(self, conv) -> tuple[np.ndarray, np.ndarray]:
        weight = self.constants[conv.input[1]]
        return weight, self.constants[conv.input[2]] if len(conv.input) > 2 else np.zeros(weight.shape[0], weight.dtype)

    def commit(self) -> None:
        """Put the replacements in place and drop what nothing uses any more."""
        graph = self.graph
        nodes = [new for node in graph.node if id(node) not in self.dropped for new in self.replaced.get(id(node), [node])]
        used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
        del graph.node[:]
        graph.node.extend(n for n in nodes if n.op_type != "Constant" or n.output[0] in used)
        kept = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _hard_swish_and_affine_after_conv(graph) -> None:
    """Each hard-swish as ``x * HardSigmoid(x)``; each scalar affine right after a convolution
    folded into its weights and bias."""
    from onnx import helper

    g = _Graph(graph)
    for clip in (n for n in graph.node if n.op_type == "Clip" and len(n.input) == 3):
        add = g.producer.get(clip.input[0])
        if (add is None or add.op_type != "Add" or g.scalar(add.input[1]) != 3.0 or g.only_user(add.output[0], "Clip") is None
                or g.scalar(clip.input[1]) != 0.0 or g.scalar(clip.input[2]) != 6.0):
            continue
        x = add.input[0]
        mul = g.only_user(clip.output[0], "Mul")
        div = mul and g.only_user(mul.output[0], "Div")
        if mul is None or set(mul.input) != {x, clip.output[0]} or div is None or g.scalar(div.input[1]) != 6.0:
            continue
        gate = helper.make_node("HardSigmoid", [x], [clip.output[0] + "/hardsigmoid"], alpha=1 / 6, beta=0.5)
        g.replaced[id(add)] = [gate, helper.make_node("Mul", [x, gate.output[0]], [div.output[0]])]
        g.dropped |= {id(clip), id(mul), id(div)}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        mul = g.only_user(conv.output[0], "Mul")
        found = g.affine(mul) if mul is not None and conv.input[1] in g.constants else None
        if found is None:
            continue
        _, scale, shift, add = found
        weight, bias = g.weights(conv)
        g.dropped |= {id(mul)} | ({id(add)} if add is not None else set())
        g.replaced[id(conv)] = [g.conv(conv, [conv.input[0]], weight * scale, bias * scale + shift,
                                       [(add or mul).output[0]])]
    g.commit()


def _affine_after_activation(graph) -> None:
    """Each scalar affine after an activation (PP-OCRv4's hard-swishes): folded into the
    convolutions after it where all of them are 1x1 without padding (``Conv(W, b)(s*y + t)`` is
    ``Conv(s*W, b + t*sum(W))(y)``: exact, as no padded zero enters), else a depthwise 1x1
    convolution, which onnxruntime runs in its blocked layout with the convolutions around it."""
    g = _Graph(graph)
    for mul in [n for n in graph.node if n.op_type == "Mul"]:
        found = g.affine(mul)
        if found is None or found[3] is None or g.producer.get(found[0]) is None or g.producer[found[0]].op_type == "Conv":
            continue
        x, scale, shift, add = found
        after = g.users.get(add.output[0], [])
        if after and all(_pointwise(g, conv, add.output[0]) for conv in after):
            for conv in after:
                weight, bias = g.weights(conv)
                g.replaced[id(conv)] = [g.conv(conv, [x], weight * scale, bias + shift * weight.sum(axis=(1, 2, 3)))]
        else:
            channels = _channels(g, x)
            if channels is None:
                continue
            g.replaced[id(mul)] = [g.conv(mul, [x], np.full((channels, 1, 1, 1), scale), np.full(channels, shift),
                                          [add.output[0]], group=channels, kernel_shape=[1, 1])]
        g.dropped.add(id(add))
        if id(mul) not in g.replaced:
            g.dropped.add(id(mul))
    g.commit()


def _residual_gates(graph) -> None:
    """Each residual squeeze-and-excitation of the neck, ``x + x * HardSigmoid(z)`` with ``z`` a
    convolution's output, as ``x * Clip(z', 1, 2)``: ``1 + clip(a*z + b, 0, 1)`` is
    ``clip(a*z + b + 1, 1, 2)``, and ``a*z + b + 1`` is the convolution with its weights scaled by
    ``a`` and its bias by ``a``, plus ``b + 1``. onnxruntime fuses the Clip into that convolution,
    and a pass over a feature map (the Add) is gone."""
    from onnx import helper, numpy_helper

    g = _Graph(graph)
    for mul in [n for n in graph.node if n.op_type == "Mul"]:
        gate = next((g.producer[i] for i in mul.input if i in g.producer and g.producer[i].op_type == "HardSigmoid"), None)
        if gate is None or len(g.users[gate.output[0]]) != 1:
            continue
        x = next((i for i in mul.input if i != gate.output[0]), None)
        add = g.only_user(mul.output[0], "Add")
        conv = g.producer.get(gate.input[0])
        if (x is None or add is None or set(add.input) != {x, mul.output[0]} or conv is None or conv.op_type != "Conv"
                or conv.input[1] not in g.constants or len(g.users[conv.output[0]]) != 1 or gate.input[0] == x):
            continue
        slope, offset = _attribute(gate, "alpha", 0.2), _attribute(gate, "beta", 0.5)
        weight, bias = g.weights(conv)
        gain = g.conv(conv, [conv.input[0]], weight * slope, bias * slope + offset + 1.0, [gate.output[0] + "/gain"])
        bounds = [gate.output[0] + "/gain/low", gate.output[0] + "/gain/high"]
        graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), n) for v, n in zip((1.0, 2.0), bounds))
        clip = helper.make_node("Clip", [gain.output[0], *bounds], [gate.output[0] + "/plus-one"])
        g.replaced[id(conv)] = [gain, clip]
        g.replaced[id(add)] = [helper.make_node("Mul", [x, clip.output[0]], list(add.output), name=add.name)]
        g.dropped |= {id(gate), id(mul)}
    g.commit()


def _bias_and_norm_into_deconvolutions(graph) -> None:
    """The head's bias ``Add`` after each transposed convolution, and the batch normalisation
    after the first, folded into its weights and bias: per output channel ``k = gamma /
    sqrt(var + eps)`` scales the weights (their second axis) and ``(b - mean) * k + beta`` is the
    bias (two passes over a map at half and at full input size each)."""
    from onnx import helper, numpy_helper

    g = _Graph(graph)
    for deconv in [n for n in graph.node if n.op_type == "ConvTranspose"]:
        add = g.only_user(deconv.output[0], "Add")
        shift = [g.constants.get(i) for i in add.input if i != deconv.output[0]] if add is not None else []
        if len(shift) != 1 or shift[0] is None or deconv.input[1] not in g.constants:
            continue
        weight = g.constants[deconv.input[1]].astype(np.float64)  # (in, out / group, kh, kw)
        if _attribute(deconv, "group", 1) != 1 or shift[0].size != weight.shape[1]:
            continue
        bias = g.constants[deconv.input[2]].astype(np.float64) if len(deconv.input) > 2 else np.zeros(weight.shape[1])
        bias = bias + shift[0].reshape(-1)
        output, folded = add.output[0], {id(add)}
        norm = g.only_user(output, "BatchNormalization")
        if norm is not None and all(i in g.constants for i in norm.input[1:5]):
            epsilon = _attribute(norm, "epsilon", 1e-5)
            gamma, beta, mean, variance = (g.constants[i].astype(np.float64) for i in norm.input[1:5])
            k = gamma / np.sqrt(variance + epsilon)
            weight, bias = weight * k.reshape(1, -1, 1, 1), (bias - mean) * k + beta
            output = norm.output[0]
            folded.add(id(norm))
        names = [deconv.output[0] + "/weight", deconv.output[0] + "/bias"]
        graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip((weight, bias), names))
        node = helper.make_node("ConvTranspose", [deconv.input[0], *names], [output], name=deconv.name)
        node.attribute.extend(deconv.attribute)
        g.replaced[id(deconv)] = [node]
        g.dropped |= folded
    g.commit()


def _attribute(node, name: str, default):
    """The value of ``node``'s attribute ``name``, or ``default`` where it has none."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _pointwise(g: _Graph, node, name: str) -> bool:
    """Whether ``node`` is a 1x1 convolution without padding of ``name`` with constant weights."""
    if node.op_type != "Conv" or node.input[0] != name or node.input[1] not in g.constants:
        return False
    pads, auto = _attribute(node, "pads", [0]), _attribute(node, "auto_pad", b"NOTSET")
    return g.constants[node.input[1]].shape[2:] == (1, 1) and not any(pads) and auto in (b"NOTSET", b"VALID")


def _channels(g: _Graph, name: str) -> int | None:
    """The channels of ``name``: those of the convolution it comes from through elementwise nodes."""
    node = g.producer.get(name)
    while node is not None and node.op_type in ("Mul", "HardSigmoid", "Relu", "Add", "Clip", "Div"):
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "Conv" or node.input[1] not in g.constants:
        return None
    return int(g.constants[node.input[1]].shape[0])


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
