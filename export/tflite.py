"""Write a folded graph as a .tflite flatbuffer, directly: full-integer, or with the float32
ops of a float target (float32 or fp16 weights) and QUANTIZE / DEQUANTIZE between the two.

No converter sits in between, so every activation scale and zero point, every integer weight
and every weight scale in the file is exactly the graph's (a converter re-derives them: docs/decisions.md, "Export"). Only ai-edge-litert's generated schema and ``flatbuffers`` are needed.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb

from export.ir import Graph, Op, QTensor
from export.reference import const_scale
from export.targets import TARGETS, Target

__all__ = ["to_tflite"]


_B = fb.BuiltinOperator
_VERSIONS = {_B.CONV_2D: 3, _B.DEPTHWISE_CONV_2D: 3, _B.ADD: 2, _B.MUL: 2, _B.MEAN: 2, _B.HARD_SWISH: 1,
             _B.QUANTIZE: 2, _B.PAD: 2, _B.MINIMUM: 2, _B.RESHAPE: 1}
_VERSIONS_FLOAT = {_B.DEQUANTIZE: 2}  # int8 -> float32; every float op else version 1
_ACT = {"none": fb.ActivationFunctionType.NONE, "relu": fb.ActivationFunctionType.RELU,
        "relu_n1_to_1": fb.ActivationFunctionType.RELU_N1_TO_1,
        "relu_0_to_1": fb.ActivationFunctionType.RELU}  # float: RELU, then MINIMUM with 1 (_clamp_one)


class _Writer:
    def __init__(self) -> None:
        self.buffers = [fb.BufferT()]
        self.tensors: list[Any] = []
        self.index: dict[str, int] = {}
        self.ops: list[Any] = []
        self.codes: list[int] = []

    def tensor(self, name: str, shape, dtype: int, scale=None, zp=None, dim: int = 0, data: bytes | None = None) -> int:
        t = fb.TensorT()
        t.name, t.shape, t.type = name, np.asarray(shape, np.int32), dtype
        t.buffer = 0
        if data is not None:
            b = fb.BufferT()
            b.data = np.frombuffer(data, np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(scale)]
            q.zeroPoint = [int(z) for z in np.atleast_1d(zp if zp is not None else 0)]
            if len(q.zeroPoint) == 1 and len(q.scale) > 1:
                q.zeroPoint = q.zeroPoint * len(q.scale)
            q.quantizedDimension = dim
            t.quantization = q
        self.tensors.append(t)
        self.index[name] = len(self.tensors) - 1
        return self.index[name]

    def act(self, t: QTensor, name: str | None = None) -> int:
        if t.is_float:
            return self.tensor(name or t.name, t.shape, fb.TensorType.FLOAT32)
        return self.tensor(name or t.name, t.shape, fb.TensorType.INT8, t.scale, t.zero_point)

    def op(self, code: int, inputs: list[int], outputs: list[int], opt_type: int = 0, opt: Any = None,
           version: int | None = None, is_float: bool = False) -> None:
        key = (code, version or (_VERSIONS_FLOAT.get(code, 1) if is_float else _VERSIONS[code]))
        if key not in self.codes:
            self.codes.append(key)
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes.index(key), inputs, outputs
        if opt is not None:
            o.builtinOptionsType, o.builtinOptions = opt_type, opt
        self.ops.append(o)

    def const_i32(self, name: str, values) -> int:
        v = np.asarray(values, np.int32)
        return self.tensor(name, v.shape, fb.TensorType.INT32, data=v.tobytes())

    def const_f32(self, name: str, values) -> int:
        v = np.asarray(values, np.float32)
        return self.tensor(name, v.shape, fb.TensorType.FLOAT32, data=v.tobytes())

    def float_weight(self, name: str, w: np.ndarray, fp16: bool) -> int:
        """A float conv's weights: float32, or float16 widened by a DEQUANTIZE at load time."""
        if not fp16:
            return self.const_f32(name, w)
        h = self.tensor(f"{name}.fp16", w.shape, fb.TensorType.FLOAT16, data=np.asarray(w, np.float16).tobytes())
        out = self.tensor(name, w.shape, fb.TensorType.FLOAT32)
        self.op(_B.DEQUANTIZE, [h], [out], version=3)
        return out

    def finish(self, inputs: list[int], outputs: list[int], meta: dict[str, Any]) -> bytes:
        sg = fb.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = self.tensors, inputs, outputs, self.ops, "main"
        m = fb.ModelT()
        m.version, m.description, m.subgraphs, m.buffers = 3, "qfa-toolkit integer export", [sg], self.buffers
        codes = []
        for code, ver in self.codes:
            c = fb.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), ver
            codes.append(c)
        m.operatorCodes = codes
        b = fb.BufferT()
        b.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
        m.buffers.append(b)
        md = fb.MetadataT()
        md.name, md.buffer = "qfa", len(m.buffers) - 1
        m.metadata = [md]
        builder = flatbuffers.Builder(1 << 16)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _pack_int4(q: np.ndarray) -> bytes:
    flat = q.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.int8(0))
    lo, hi = flat[0::2].astype(np.uint8) & 0x0F, flat[1::2].astype(np.uint8) & 0x0F
    return (lo | (hi << 4)).astype(np.uint8).tobytes()


def _conv(w: _Writer, g: Graph, op: Op, target: Target, x: int, y: int) -> None:
    tin = g.tensors[op.inputs[0]]
    if op.pad and op.stride > 1:  # PyTorch pads symmetrically; TF 'SAME' at stride 2 does not
        xt = g.tensors[op.inputs[0]]
        n, h, wd, c = xt.shape
        padded = w.act(replace(xt, shape=(n, h + 2 * op.pad, wd + 2 * op.pad, c)), f"{op.output}.pad")
        pads = w.const_i32(f"{op.output}.paddings", [[0, 0], [op.pad, op.pad], [op.pad, op.pad], [0, 0]])
        w.op(_B.PAD, [x, pads], [padded], fb.BuiltinOptions.PadOptions, fb.PadOptionsT(), is_float=op.is_float)
        x, padding = padded, fb.Padding.VALID
    else:
        padding = fb.Padding.SAME if op.pad else fb.Padding.VALID
    int4 = target.int4_packs(op)
    if op.is_float:
        # fp16 for FP convs; the classifier's 8-bit grid weights stay exact in float32
        wt = w.float_weight(f"{op.output}.weight", op.real_weight(), target.fp == "float16" and op.fweight is not None)
        bt = w.const_f32(f"{op.output}.bias", op.bias)
    else:
        if int4 and (op.weight.min() < -8 or op.weight.max() > 7):
            raise ValueError(f"{op.layer}: weights exceed int4 (refined for int8 storage? refine_weights per target)")
        data = _pack_int4(op.weight) if int4 else op.weight.astype(np.int8).tobytes()
        wt = w.tensor(f"{op.output}.weight", op.weight.shape, fb.TensorType.INT4 if int4 else fb.TensorType.INT8,
                      op.w_scale, 0, dim=3 if op.depthwise else 0, data=data)
        bias, grid = op.int32_bias(tin.scale)
        bt = w.tensor(f"{op.output}.bias", bias.shape, fb.TensorType.INT32, grid, 0, data=bias.tobytes())
    if op.depthwise:
        opt = fb.DepthwiseConv2DOptionsT()
        opt.depthMultiplier = 1
        code, opt_type = _B.DEPTHWISE_CONV_2D, fb.BuiltinOptions.DepthwiseConv2DOptions
    else:
        opt = fb.Conv2DOptionsT()
        code, opt_type = _B.CONV_2D, fb.BuiltinOptions.Conv2DOptions
    opt.padding, opt.strideW, opt.strideH = padding, op.stride, op.stride
    opt.dilationWFactor = opt.dilationHFactor = 1
    opt.fusedActivationFunction = _ACT[op.act]
    w.op(code, [x, wt, bt], [y], opt_type, opt, version=7 if int4 else None, is_float=op.is_float)


def to_tflite(graph: Graph, target: Target | str = "tflite-int8", meta: dict[str, Any] | None = None) -> bytes:
    """The .tflite bytes of ``graph`` for ``target`` (NHWC input; int8, uint8 or float32 I/O as
    the graph's input and output tensors are)."""
    target = TARGETS[target] if isinstance(target, str) else target
    g = graph.validate()
    w = _Writer()
    tin = g.tensors[g.input]
    if target.io_dtype == "uint8" and not tin.is_float:
        xu = w.tensor("input_uint8", tin.shape, fb.TensorType.UINT8, tin.scale, tin.zero_point + 128)
        w.op(_B.QUANTIZE, [xu], [w.act(tin)])
        inputs = [xu]
    else:
        inputs = [w.act(tin)]
    for op in g.ops:
        out = g.tensors[op.output]
        clamp = out.qmax < 127 or op.act == "relu_0_to_1"
        y = w.act(out, f"{out.name}.unclamped" if clamp else None)
        args = [w.index[i] for i in op.inputs]
        fl = op.is_float
        if op.kind == "conv":
            _conv(w, g, op, target, args[0], y)
        elif op.kind in ("add", "addc"):
            if op.kind == "addc":
                c = np.asarray(op.const, np.float64).reshape((1,) * (4 - np.ndim(op.const)) + np.shape(op.const))
                if fl:
                    args.append(w.const_f32(f"{op.output}.const", c))
                else:
                    scale = const_scale(c, out.scale)
                    cq = np.round(c / scale).clip(-127, 127).astype(np.int8)
                    args.append(w.tensor(f"{op.output}.const", cq.shape, fb.TensorType.INT8, scale, 0, data=cq.tobytes()))
            opt = fb.AddOptionsT()
            opt.fusedActivationFunction = _ACT[op.act]
            w.op(_B.ADD, args, [y], fb.BuiltinOptions.AddOptions, opt, is_float=fl)
        elif op.kind == "mul":
            w.op(_B.MUL, args, [y], fb.BuiltinOptions.MulOptions, fb.MulOptionsT(), is_float=fl)
        elif op.kind == "mean":
            opt = fb.ReducerOptionsT()
            opt.keepDims = True
            w.op(_B.MEAN, args + [w.const_i32(f"{op.output}.axes", [1, 2])], [y], fb.BuiltinOptions.ReducerOptions, opt,
                 is_float=fl)
        elif op.kind == "hswish":
            w.op(_B.HARD_SWISH, args, [y], is_float=fl)
        elif op.kind == "requant":  # from int8 or float32
            w.op(_B.QUANTIZE, args, [y])
        elif op.kind == "dequant":
            w.op(_B.DEQUANTIZE, args, [y], is_float=True)
        else:  # pragma: no cover - validate() rejects unknown kinds
            raise ValueError(op.kind)
        if out.is_float and clamp:  # a float hard-sigmoid's top: MINIMUM with 1
            w.op(_B.MINIMUM, [y, w.const_f32(f"{out.name}.max", [1.0])], [w.act(out)], is_float=True)
        elif clamp:  # the b-bit grid's top: MINIMUM with a constant on the same quantization
            c = w.tensor(f"{out.name}.max", (1,), fb.TensorType.INT8, out.scale, out.zero_point,
                         data=np.array([out.qmax], np.int8).tobytes())
            w.op(_B.MINIMUM, [y, c], [w.act(out)])
    tout = g.tensors[g.output]
    n, c = tout.shape[0], int(np.prod(tout.shape[1:]))
    flat = w.act(replace(tout, shape=(n, c)), "logits")
    opt = fb.ReshapeOptionsT()
    opt.newShape = [n, c]
    w.op(_B.RESHAPE, [w.index[g.output], w.const_i32("logits.shape", [n, c])], [flat], fb.BuiltinOptions.ReshapeOptions, opt)
    outputs = [flat]
    if target.io_dtype == "uint8" and not tout.is_float:
        fu = w.tensor("logits_uint8", (n, c), fb.TensorType.UINT8, tout.scale, tout.zero_point + 128)
        w.op(_B.QUANTIZE, [flat], [fu])
        outputs = [fu]
    # The file's metadata: what the spec and target fix, nothing that depends on the weights'
    # values, so that a file's size is a function of (spec, target) (export.deploy.FileSize).
    file_meta = {k: v for k, v in {**g.meta, **(meta or {})}.items() if k != "weights_clipped"}
    return w.finish(inputs, outputs, {**file_meta, "target": target.name})
