"""Per-layer cost of a model: data types, operation counts, energy (QTools-equivalent),
model size in bits, EBOPs and the FPGA estimate, in one pass over the traced layers.

Layer rules (hetq's choices where QTools has none are marked *):
  dense / conv1d* / conv2d / depthwise: multiplier(weight, input) -> accumulator
      (+ceil(log2 fan-in)) -> + bias (adder rule) -> output (or the fused activation's type;
      a float one keeps the accumulator's, as QTools);
      op count = MACs (conv: Ho Wo Co Kh Kw Ci / groups; depthwise: Ho Wo Co Kh Kw*);
  separable conv*: the depthwise part, then the optional depthwise activation, then the
      pointwise 1x1 part with the bias; energies and counts add up;
  folded dense/conv batch norm*: the folded weights with the layer's quantizers;
  QActivation / float activations: the quantizer's type (float activations: fp32 in a trial,
      the reference accumulator type in reference mode or with `float_as`), no operations;
  an unquantized dense/conv layer in a trial: fp32 weights (hetq's default, deliberately;
      QTools: quantized_bits(8,0,1)), or with `float_as` (QTools' hybrid models) weights of
      that type and reference-accumulator outputs;
  dense: a Linear acts on the last axis, once per position along the others;
  batch norm (unfolded)*: one multiply (by the precomputed gamma/sqrt(var + eps): the inverse
      quantizer's type, else gamma's or fp32) and one add (beta's type) per element; the
      stored parameters counted (inverse or gamma and variance, beta and mean; affine=False
      stores no gamma and beta); QTools costs a divider gamma / stddev first; an unquantized
      one with `float_as` as the weight layers (parameters of that type,
      reference-accumulator outputs);
  average pooling*: an accumulator over the window on the input type, then a multiplier by
      the average quantizer's type (or fp32; an unquantized one with `float_as` as the weight
      layers: that type, reference-accumulator outputs); global average pooling over H*W,
      adaptive average pooling over PyTorch's windows (H/Ho x W/Wo where they divide; else
      the accumulator of the largest window, each window's own additions);
  Flatten / Dropout / Identity / MaxPool: the input type passes through, no operations;
      Dropout and Identity cost nothing and are transparent (a model starting or ending with
      one has the next or previous layer as its input or output layer);
  any other layer: a warning naming it, then pass-through;
  a layer whose output is no tensor (LSTM, GRU: a tuple): a warning naming it, left out;
  a forward that does more than call its layers one after another (F.relu, a residual `+ x`,
      torch.cat, a parent's own arithmetic): a warning naming the first such place; those
      operations are not costed (layers take the type of the layer called before).
EBOPs* (weights only; biases in ebops_bias): the sum over nonzero weights of weight bits x
input bits, element by element where the weight quantizer is per channel or per weight and
where a QActivation with per-feature bits feeds a dense layer (otherwise the widest type).
The multipliers' energy, the parameter bits and the FPGA estimate's multipliers are counted
the same way (each weight's multiplier at its own operands' widths); the layer's types and its
accumulator (so the FPGA estimate's adders and registers) use the widest member of such
quantizers.
Energy summation (QTools' include_energy): weight layers count inputs + parameters + op_cost,
activation layers their outputs, batch norm its parameters, pooling* and max pooling their
op_cost, pass-through layers their inputs (Dropout and Identity nothing: QTools removes
Dropout).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..quant.base import eval_mode
from ..quant.layers import QActivation, QDepthwiseConv2d, QLayer, QSeparableConv2d
from ..quant.norm import QBatchNorm, _FoldedBatchnorm
from ..quant.pooling import QAveragePooling2d, QGlobalAveragePooling2d
from .energy import acc_energy, fp_add, fpm_add, fpm_mul, mem_access, op_energy
from .graph import traced
from .qtypes import FLOAT, FP32, NAMED, QType, accumulator, adder, multiplier, qtype_of

FLOAT_ACTS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Softmax, nn.Hardswish,
              nn.GELU, nn.SiLU, nn.ELU)
# identities at inference: no cost, and not the model's input or output layer (QTools removes
# Dropout from its graph)
TRANSPARENT = (nn.modules.dropout._DropoutNd, nn.Identity)
PASS = (nn.Flatten, nn.Unflatten) + TRANSPARENT
MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class Settings:
    source: QType = NAMED["int8"]
    reference: QType | None = None  # weights in reference mode (int8, ...); None: trial
    reference_accumulator: QType = NAMED["int32"]
    weights_on_memory: str = "sram"
    activations_on_memory: str = "sram"
    min_sram_size: float = 0.0
    rd_wr_on_io: bool = False
    # trial mode: an unquantized layer's weights as this type, its outputs and float
    # activations as reference_accumulator (QTools' keras_quantizer / keras_accumulator for
    # hybrid models); None: fp32
    float_as: QType | None = None


@dataclass
class LayerCost:
    name: str
    type: str
    input: QType
    output: QType
    weight: QType | None = None
    bias: QType | None = None
    multiplier: str | None = None
    accumulator: QType | None = None
    op_count: int = 0
    energy: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("inputs", "outputs", "parameters", "op_cost"), 0.0))
    include: tuple[str, ...] = ("inputs", "parameters", "op_cost")
    param_bits: int = 0
    act_bits: int = 0
    ebops: int = 0
    ebops_bias: int = 0
    fpga: dict[str, float] = field(default_factory=dict)
    precision: str = ""

    @property
    def total(self) -> float:
        return sum(self.energy[k] for k in self.include)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "layer_type": self.type, "precision": self.precision,
            "input_quantizer": self.input.to_dict(), "output_quantizer": self.output.to_dict(),
            "weight_quantizer": self.weight.to_dict() if self.weight else None,
            "bias_quantizer": self.bias.to_dict() if self.bias else None,
            "multiplier": self.multiplier,
            "accumulator": self.accumulator.to_dict() if self.accumulator else None,
            "operation_count": self.op_count,
            "energy": {k: round(v, 2) for k, v in self.energy.items()},
            "energy_total": round(self.total, 2), "included": list(self.include),
            "param_bits": self.param_bits, "act_bits": self.act_bits, "ebops": self.ebops,
            "ebops_bias": self.ebops_bias, "fpga": self.fpga,
        }


def _numel(shape) -> int:
    return int(math.prod(shape)) if shape else 1


def _wtype(q, s: Settings) -> QType:
    if s.reference is not None:
        return s.reference
    if q is None and s.float_as is not None:
        return s.float_as
    return qtype_of(q)


class _Ctx:
    def __init__(self, s: Settings, first: str, last: str):
        self.s, self.first, self.last = s, first, last
        self.x_bits: torch.Tensor | None = None  # per-feature input widths, when known

    def act_mode(self, name, which):
        edge = (which == "in" and name == self.first) or (which == "out" and name == self.last)
        if edge:
            return "dram" if self.s.rd_wr_on_io else "sram"
        return self.s.activations_on_memory

    def mem(self, bits, mode):
        return mem_access(bits, mode, self.s.min_sram_size, self.s.rd_wr_on_io)


def _io_energy(lc: LayerCost, node, ctx: _Ctx):
    lc.energy["inputs"] = ctx.mem(_numel(node.in_shape) * lc.input.bits,
                                  ctx.act_mode(node.name, "in"))
    lc.energy["outputs"] = ctx.mem(_numel(node.out_shape) * lc.output.bits,
                                   ctx.act_mode(node.name, "out"))
    lc.act_bits = _numel(node.out_shape) * lc.output.bits


def _mac_part(lc: LayerCost, ctx: _Ctx, x_t: QType, wq, bq, w: torch.Tensor,
              b: torch.Tensor | None, n_add: int, positions: int, out_q=None):
    """One multiply-accumulate stage: sets types, counts, energies; returns the output type."""
    s = ctx.s
    w_t = _wtype(wq, s)
    mult = multiplier(w_t, x_t)
    acc = accumulator(mult.output, n_add)
    b_t = None
    if b is not None:
        b_t = _wtype(bq, s)
        acc = adder(acc, b_t)
    if s.reference is not None or (wq is None and s.float_as is not None):
        acc = s.reference_accumulator
    ops = w.numel() * positions
    lc.op_count += ops
    wb, xb = _element_bits(w, wq, w_t, x_t, ctx)
    if mult.kind == "mul" and (wb.dim() or xb.dim()):
        # per-weight / per-feature widths: each multiplier at its own operands' widths (the
        # fixed x fixed rule, gate bits sqrt(w bits * x bits)), the accumulator as one type
        gate = torch.sqrt(torch.broadcast_to(wb * xb, w.shape))
        vals, counts = torch.unique(gate, return_counts=True)
        mul = sum(c * fpm_mul(v) for v, c in zip(vals.tolist(), counts.tolist()))
        lc.energy["op_cost"] += positions * (mult.gate_factor * mul
                                             + w.numel() * acc_energy(acc))
    else:
        lc.energy["op_cost"] += ops * op_energy(mult, acc)
    wbits = int(round(float(torch.broadcast_to(wb, w.shape).sum())))
    lc.param_bits += wbits + (b.numel() * b_t.bits if b is not None else 0)
    lc.energy["parameters"] += ctx.mem(wbits, s.weights_on_memory)
    if b is not None:
        lc.energy["parameters"] += ctx.mem(b.numel() * b_t.bits, s.weights_on_memory)
    nz = (w.detach() != 0).to(torch.float64)
    lc.ebops += positions * int(round(float((nz * wb * xb).sum())))
    if b is not None:
        lc.ebops_bias += b.numel() * positions * b_t.bits
    lc.weight, lc.bias, lc.multiplier, lc.accumulator = w_t, b_t, mult.kind, acc
    from .fpga import layer_estimate

    est = layer_estimate(w, w_t, acc, positions, n_add, wb, xb)
    for k, v in est.items():
        lc.fpga[k] = lc.fpga.get(k, 0) + v
    return _fused(out_q, acc, s)


def _fused(q, acc: QType, s: Settings) -> QType:
    """Output type of a weight layer with built-in activation `q`: its type; a float one
    (activation="relu") keeps the accumulator's type, as QTools does (it was fp32, which
    made the next layer an fp32 multiply)."""
    if q is None or (getattr(q, "kind", None) == "float" and s.reference is None):
        return acc
    return NAMED_OUT(q, s)


def _element_bits(w: torch.Tensor, wq, w_t: QType, x_t: QType,
                  ctx: _Ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight bits, input bits) as float64 tensors that broadcast against `w`: each weight's
    own width where its quantizer is tensor-valued, each input feature's (along the second
    axis of a dense weight) after a per-feature QActivation; 0-dim tensors of the layer's
    types otherwise."""
    wb = None
    if ctx.s.reference is None and w_t.mode != FLOAT:
        wb = wq.bits_elements(w.shape) if hasattr(wq, "bits_elements") else None
    if wb is None:
        wb = torch.tensor(float(w_t.bits), dtype=torch.float64)
    xb = None
    if w.dim() == 2 and ctx.x_bits is not None and ctx.x_bits.numel() == w.shape[1]:
        xb = ctx.x_bits.reshape(1, -1)
    if xb is None:
        xb = torch.tensor(float(x_t.bits), dtype=torch.float64)  # fp16: 16, fp32: 32
    return wb, xb


def NAMED_OUT(q, s: Settings) -> QType:  # noqa: N802 - reads as a type constructor
    """Output type of an activation quantizer (reference mode: the reference accumulator)."""
    if s.reference is not None:
        return s.reference_accumulator
    if q is None or getattr(q, "kind", None) == "float":
        return FP32 if s.float_as is None else s.reference_accumulator
    return qtype_of(q)


def _weight_layer(node, m, x_t, ctx: _Ctx) -> LayerCost:
    lc = LayerCost(node.name, type(m).__name__, x_t, x_t)
    out_shape = node.out_shape
    positions = _numel(out_shape[1:]) if len(out_shape) > 1 else 1
    if isinstance(m, QSeparableConv2d):
        ws = m.quantized_weights()
        q = m.quantizers
        k = m.kernel_size[0] * m.kernel_size[1]
        t = _mac_part(lc, ctx, x_t, q["depthwise"], None, ws["depthwise"], None, k, positions,
                      out_q=q["depthwise_activation"] if q["depthwise_activation"] else None)
        t = _mac_part(lc, ctx, t, q["pointwise"], q["bias"], ws["pointwise"], ws.get("bias"),
                      m.pointwise_weight.shape[1], positions)
        lc.output = _fused(q["activation"], t, ctx.s)
        lc.precision = _precision(m)
    else:
        if isinstance(m, QLayer):
            ws = m.quantized_weights()
            q = m.quantizers
            wq = q.get("kernel") or q.get("depthwise")
            w, b, bq = ws.get("kernel", ws.get("depthwise")), ws.get("bias"), q.get("bias")
            act_q = q.get("activation")
            lc.precision = _precision(m)
        else:
            w, b, wq, bq, act_q = m.weight, m.bias, None, None, None
            lc.precision = "float"
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) or (isinstance(m, _FoldedBatchnorm)
                                                     and w.dim() > 2):
            n_add = _numel(w.shape[1:])
            if isinstance(m, QDepthwiseConv2d):
                n_add = _numel(w.shape[2:])
        else:
            n_add = w.shape[1]
            # a Linear acts on the last axis: every position along the others is one more
            # matrix-vector product (it counted one, whatever the input's shape)
            positions = _numel(out_shape[:-1])
        t = _mac_part(lc, ctx, x_t, wq, bq, w, b, n_add, positions)
        lc.output = _fused(act_q, t, ctx.s)
    _io_energy(lc, node, ctx)
    return lc


def _adaptive_windows(n_in: int, n_out: int) -> list[int]:
    """Window sizes of adaptive pooling from `n_in` to `n_out` positions along one axis."""
    return [-(-(j + 1) * n_in // n_out) - j * n_in // n_out for j in range(n_out)]


def _precision(m: QLayer) -> str:
    return ", ".join(f"{f}={q}" for f, q in m.quantizers.items() if q is not None) or "float"


def _layer(node, x_t: QType, ctx: _Ctx) -> LayerCost:
    m = node.module
    s = ctx.s
    if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, QSeparableConv2d)):
        return _weight_layer(node, m, x_t, ctx)
    if isinstance(m, QActivation) or isinstance(m, FLOAT_ACTS):
        q = m.activation_quantizer if isinstance(m, QActivation) else None
        lc = LayerCost(node.name, type(m).__name__, x_t, NAMED_OUT(q, s),
                       include=("outputs",), precision=str(q) if q is not None else "float")
        _io_energy(lc, node, ctx)
        return lc
    if isinstance(m, (QBatchNorm, nn.modules.batchnorm._BatchNorm)):
        # y = x * scale + shift, the scale gamma / sqrt(var + eps) precomputed per channel
        # (at the inverse quantizer's type where there is one, else the gamma's); QTools
        # instead costs a divider gamma / stddev before the multiplier (see the README)
        q = m.quantizers if isinstance(m, QBatchNorm) else {}
        fields = ("gamma", "beta", "mean", "variance")
        g_t, be_t, mean_t, var_t = (_wtype(q.get(f), s) for f in fields)
        stored = {"gamma": g_t, "beta": be_t, "mean": mean_t, "variance": var_t}
        if q.get("inverse") is not None:  # (it excludes the gamma and variance quantizers)
            g_t = _wtype(q["inverse"], s)
            stored = {"inverse": g_t, "beta": be_t, "mean": mean_t}
        if not m.affine:
            stored.pop("gamma", None)
            stored.pop("beta")
        mult = multiplier(g_t, x_t)
        out = adder(mult.output, be_t)
        if s.reference is not None or (s.float_as is not None
                                       and not any(q.get(f) for f in (*fields, "inverse"))):
            out = s.reference_accumulator
        lc = LayerCost(node.name, type(m).__name__, x_t, out, weight=g_t, bias=be_t,
                       multiplier=mult.kind, include=("parameters",),
                       precision=_precision(m) if isinstance(m, QBatchNorm) else "float")
        n = _numel(node.in_shape)
        lc.op_count = n
        lc.energy["op_cost"] = n * op_energy(mult, out)
        c = m.num_features
        for t in stored.values():  # each stored parameter at its own type
            lc.energy["parameters"] += ctx.mem(c * t.bits, s.weights_on_memory)
            lc.param_bits += c * t.bits
        _io_energy(lc, node, ctx)
        return lc
    if isinstance(m, (QAveragePooling2d, QGlobalAveragePooling2d, nn.AvgPool2d,
                      nn.AdaptiveAvgPool2d)):
        n_out = _numel(node.out_shape)
        if isinstance(m, QGlobalAveragePooling2d):
            area = _numel(node.in_shape[1:])
            ops = n_out * area
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            # PyTorch's windows along each axis: [floor(j i / o), ceil((j + 1) i / o)), i.e.
            # i / o wide where o divides i; the accumulator over the largest window, the
            # additions window by window
            hs, ws = (_adaptive_windows(i, o) for i, o in zip(node.in_shape[-2:],
                                                              node.out_shape[-2:]))
            area = max(hs) * max(ws)
            ops = _numel(node.out_shape[:-2]) * sum(hs) * sum(ws)
        else:
            ks = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            area = ks[0] * ks[1]
            ops = n_out * area
        acc = accumulator(x_t if x_t.mode != FLOAT else FP32, area)
        q = m.quantizers if isinstance(m, QLayer) else {}
        # (an unquantized one as the weight layers: float_as/reference types and outputs;
        # it was an fp32 multiply, and every layer after it costed as fp32, with float_as too)
        avg_t = _wtype(q.get("average"), s)
        mult = multiplier(avg_t, acc)
        out = mult.output if s.reference is None and (
            q.get("average") is not None or s.float_as is None) else s.reference_accumulator
        if q.get("activation") is not None:
            out = NAMED_OUT(q["activation"], s)
        lc = LayerCost(node.name, type(m).__name__, x_t, out, accumulator=acc,
                       multiplier=mult.kind, include=("op_cost",),
                       precision=_precision(m) if isinstance(m, QLayer) else "float")
        lc.op_count = ops
        # a window's additions into the accumulator, then one multiply by 1/area per output
        add = fp_add(acc.bits) if acc.mode == FLOAT else fpm_add(acc.bits)
        lc.energy["op_cost"] = ops * add + n_out * (op_energy(mult, acc) - add)
        _io_energy(lc, node, ctx)
        return lc
    if isinstance(m, PASS + MAXPOOL):
        include = (("op_cost",) if isinstance(m, MAXPOOL) else
                   () if isinstance(m, TRANSPARENT) else ("inputs",))
        lc = LayerCost(node.name, type(m).__name__, x_t, x_t, include=include,
                       precision="pass-through")
        _io_energy(lc, node, ctx)
        return lc
    warnings.warn(f"cost model: no rule for layer {node.name!r} ({type(m).__name__}); costed "
                  "as a pass-through (input type, no operations)", stacklevel=3)
    lc = LayerCost(node.name, type(m).__name__, x_t, x_t, include=(), precision="no rule")
    _io_energy(lc, node, ctx)
    return lc


def layer_costs(model: nn.Module, input_shape, settings: Settings) -> list[LayerCost]:
    nodes, chain = traced(model, tuple(input_shape))
    for left_out in chain.left_out:
        warnings.warn(f"cost model: layer {left_out}; it is left out of the cost (no rule: "
                      "recurrent layers such as LSTM and GRU are not costed)", stacklevel=3)
    if chain.detour is not None:
        warnings.warn(f"cost model: the forward of {type(model).__name__} does more than call "
                      f"its layers one after another ({chain.detour}); what it does outside "
                      "its layers (functional calls, additions, concatenations, ...) is not "
                      "costed, and each layer is costed on the type of the layer called before "
                      "it", stacklevel=3)
    if not nodes:
        return []
    real = [n for n in nodes if not isinstance(n.module, TRANSPARENT)] or nodes
    ctx = _Ctx(settings, real[0].name, real[-1].name)
    x_t = settings.source
    out = []
    # eval: the deployed weights (stochastic quantizers round deterministically)
    with torch.no_grad(), eval_mode(model):
        for node in nodes:
            lc = _layer(node, x_t, ctx)
            out.append(lc)
            if isinstance(node.module, TRANSPARENT) or (
                    isinstance(node.module, nn.Flatten) and node.in_shape == node.out_shape):
                continue  # (a per-feature input width passes through too)
            x_t = lc.output
            ctx.x_bits = _feature_bits(node.module, lc.output, settings)
    return out


def _feature_bits(m, out_t: QType, s: Settings) -> torch.Tensor | None:
    """Per-feature widths of a tensor-valued QActivation (per-feature bits, or per-feature
    integer bits at one width: what the next dense layer multiplies by, feature by
    feature), else None."""
    if s.reference is not None or not isinstance(m, QActivation) or out_t.mode == FLOAT:
        return None
    q = m.activation_quantizer
    shape = q.tensor_shape() if hasattr(q, "tensor_shape") else None
    e = q.bits_elements(shape) if shape is not None else None
    return e.flatten() if e is not None and e.numel() > 1 else None
