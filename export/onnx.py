"""ONNX from the folded integer graph: QuantizeLinear/DequantizeLinear on every tensor (the
same scales, zero points and integer weights as the .tflite), or a float graph for onnx2tf.

Layout is NCHW (ONNX convention); the input is the real-valued image, quantized by the first
QuantizeLinear exactly as the sidecar tells an app to (including the zero-point shift).
"""
from __future__ import annotations

import numpy as np

from export.ir import Graph, QTensor
from export.reference import quantized_const

__all__ = ["to_onnx"]

OPSET = 17


def to_onnx(graph: Graph, qdq: bool = True) -> bytes:
    """ONNX bytes of ``graph``: with ``qdq`` the integer model in Q/DQ form (each tensor's value
    named ``<tensor>.dq``), else the float model (dequantized weights, no activation
    quantization) for converters that calibrate."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    g = graph.validate()
    nodes, inits = [], []
    counter = [0]

    def name(base: str) -> str:
        counter[0] += 1
        return f"{base}__{counter[0]}"

    def const(base: str, value: np.ndarray) -> str:
        n = name(base)
        inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def qdq_tensor(x: str, t: QTensor) -> str:
        """x (float) -> Q -> DQ on t's grid, then t's sub-8-bit clamp."""
        if not qdq:
            return x
        s = const(t.name + ".scale", np.array(t.scale, np.float32))
        z = const(t.name + ".zp", np.array(t.zero_point, np.int8))
        q, out = name(t.name + ".q"), t.name + ".dq"  # the tensor's value is named "<tensor>.dq"
        dq = name(t.name + ".deq") if t.qmax < 127 else out
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [q]))
        nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [dq]))
        if t.qmax < 127:
            hi = const(t.name + ".hi", np.array((t.qmax - t.zero_point) * t.scale, np.float32))
            nodes.append(helper.make_node("Min", [dq, hi], [out]))
        return out

    tin = g.tensors[g.input]
    n, h, w, c = tin.shape
    x = "input"
    if tin.shift:
        shifted = name("input.shift")
        nodes.append(helper.make_node("Add", [x, const("shift", np.array(tin.shift, np.float32))], [shifted]))
        x = shifted
    env = {g.input: qdq_tensor(x, tin)}
    for op in g.ops:
        args = [env[i] for i in op.inputs]
        y = name(op.output + ".f")
        if op.kind == "conv":
            wq = op.weight.astype(np.int8)
            wq = wq.transpose(3, 0, 1, 2) if op.depthwise else wq.transpose(0, 3, 1, 2)  # -> (O, I/g, kh, kw)
            if qdq:
                wi = const(op.output + ".w", wq)
                ws = const(op.output + ".ws", op.w_scale.astype(np.float32))
                wz = const(op.output + ".wz", np.zeros(len(op.w_scale), np.int8))
                wname = name(op.output + ".wdq")
                nodes.append(helper.make_node("DequantizeLinear", [wi, ws, wz], [wname], axis=0))
                bq, grid = op.int32_bias(g.tensors[op.inputs[0]].scale)
                bias = (bq * grid).astype(np.float32)
            else:
                wname = const(op.output + ".w", (wq * op.w_scale[:, None, None, None]).astype(np.float32))
                bias = op.bias.astype(np.float32)
            k = op.kernel
            nodes.append(helper.make_node("Conv", [args[0], wname, const(op.output + ".b", bias)], [y],
                                          kernel_shape=[k, k], strides=[op.stride] * 2, pads=[op.pad] * 4,
                                          group=int(op.weight.shape[3]) if op.depthwise else 1))
        elif op.kind in ("add", "addc"):
            other = args[1] if op.kind == "add" else const(op.output + ".c", np.asarray(
                quantized_const(op.const, g.tensors[op.output].scale) if qdq else op.const, np.float32).transpose(0, 3, 1, 2))
            nodes.append(helper.make_node("Add", [args[0], other], [y]))
        elif op.kind == "mul":
            nodes.append(helper.make_node("Mul", args, [y]))
        elif op.kind == "mean":
            nodes.append(helper.make_node("ReduceMean", args, [y], axes=[2, 3], keepdims=1))
        elif op.kind == "hswish":
            nodes.append(helper.make_node("HardSwish", args, [y]))
        elif op.kind == "requant":
            nodes.append(helper.make_node("Identity", args, [y]))
        if op.act == "relu":
            r = name(op.output + ".relu")
            nodes.append(helper.make_node("Relu", [y], [r]))
            y = r
        elif op.act == "relu_n1_to_1":
            r = name(op.output + ".clip")
            nodes.append(helper.make_node("Clip", [y, const("m1", np.array(-1, np.float32)),
                                                   const("p1", np.array(1, np.float32))], [r]))
            y = r
        env[op.output] = qdq_tensor(y, g.tensors[op.output])
    nodes.append(helper.make_node("Flatten", [env[g.output]], ["logits"], axis=1))
    tout = g.tensors[g.output]
    ncls = int(np.prod(tout.shape[1:]))
    model = helper.make_model(
        helper.make_graph(nodes, "qfa", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", ncls])], inits),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qfa-toolkit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
