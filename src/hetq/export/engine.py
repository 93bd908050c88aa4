"""Integer engine: a trained hetq model run on integer codes with ap_fixed semantics.

`IntegerModel(model, input_shape, input_type=...)` compiles a model into a chain of integer
steps (`hetq.export.steps`), one layer after another in the order its forward calls them: a
model whose forward does anything else (F.relu, a residual `+ x`, torch.cat, a reshape or
arithmetic outside its layers, an LSTM's tuple) is refused (`hetq.cost.graph.Chain`). Every
tensor between steps is an int64 tensor of codes plus a `FixedType` (value = code * 2**-frac):

* the input is cast to `input_type` (or to the model's first `QActivation`);
* dense / conv1d / conv2d / depthwise / separable / folded batch-norm layers multiply integer
  codes by integer weight codes and add the aligned bias codes; the accumulator is an exact
  fixed type whose frac bits are those of the product and whose width comes from interval
  propagation over the input type and the actual weights (so it never overflows);
* quantized_bits / quantized_relu activations are ap_fixed casts of the accumulator codes
  (round half to even, saturate) done with integer shifts;
* other elementwise quantizers (tanh, sigmoid, po2, relu_po2, binary, ternary, leaky relu, ...)
  are a lookup: the quantizer evaluated at the exact value of each input code, which is what a
  table over the input grid holds;
* average pooling sums codes and multiplies by the quantized 1/area; max pooling, ReLU, flatten,
  dropout and identity keep the grid.

Softmax is not part of the engine: it returns the integer logits; the class probabilities are
the float softmax of those exact logits (hls4ml's table-based softmax is an approximation the
export does not use, so the firmware's output is the logits too).

The reference the engine is compared with is the PyTorch model evaluated in float64 on inputs
on the input grid. Float32 evaluation is exact too while every accumulator fits 24 bits (e.g.
6-bit models); 16-bit models (the paper's BF) need float64 for the sums to be exact.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..cost.graph import as_input_shape, traced
from ..quant.base import check_module, eval_mode
from ..quant.fixed import FixedType, smallest_fixed_type
from ..quant.layers import (
    QActivation,
    QConv1d,
    QConv2d,
    QDense,
    QDepthwiseConv2d,
    QLayer,
    QSeparableConv2d,
)
from ..quant.norm import QBatchNorm, _FoldedBatchnorm
from ..quant.pooling import QAveragePooling2d, QGlobalAveragePooling2d
from .steps import (
    CastStep,
    ExportError,
    KeepStep,
    PoolStep,
    ScaleShiftStep,
    Step,
    TableStep,
    TensorCastStep,
    WeightStep,
    code_range,
    codes_of,
    tensor_cast_types,
    type_for_range,
)

MAX_EXACT_BITS = 53  # codes are multiplied in float64: exact while sums stay below 2**53
# modules whose outputs are on their input's grid (dropout: every kind, an identity at
# inference; Dropout2d and Unflatten were refused as "float ... on the datapath")
GRID_KEEPING = (nn.ReLU, nn.Flatten, nn.Unflatten, nn.Identity, nn.modules.dropout._DropoutNd,
                nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


# -- compilation -----------------------------------------------------------------------------
def _exact(ft: FixedType, what: str, fix: str = "narrow the quantizer") -> FixedType:
    """`ft`, or an ExportError if it is wider than the engine computes exactly."""
    if ft.width > MAX_EXACT_BITS:
        raise ExportError(f"{what}: {ft} is {ft.width} bits wide; the integer engine is exact "
                          f"up to {MAX_EXACT_BITS}-bit types ({fix})")
    return ft


def quantizer_cast_type(q) -> FixedType | None:
    """The FixedType whose ap_fixed cast IS the quantizer (None: not a plain cast)."""
    if q is None or not getattr(q, "is_scalar", False):
        return None
    if getattr(q, "use_stochastic_rounding", False) or getattr(q, "qnoise_factor", 1.0) != 1.0:
        return None
    name = getattr(q, "name", "")
    if name == "quantized_bits":
        if q.alpha not in (None, 1, 1.0) or (q.keep_negative and q.bits < 2):
            return None
        return q.fixed_type()
    if name == "quantized_relu":
        if q.negative_slope or q.use_sigmoid or q._clips_at_bound():  # (the bound: a table)
            return None
        return q.fixed_type()
    return None


def _weight_type(q, values: torch.Tensor, what: str) -> FixedType:
    if q is None:
        raise ExportError(f"{what} is float (no quantizer): quantize it (e.g. "
                          f"quantized_bits(8,0,alpha=1)) for a bit-exact export")
    _refuse_noisy(q, what)
    ft = q.fixed_type() if hasattr(q, "fixed_type") else None
    if ft is not None:
        _exact(ft, what)
    if ft is None or not ft.contains(values):
        ft = _values_type(q, values, what, "a scale that is not a power of two?; use "
                                           "alpha='auto_po2' or alpha=1")
        if getattr(q, "name", None) == "quantized_bits" and isinstance(q.alpha, str) and \
                q.alpha == "auto" and ft.width > q.bits:
            # (with 2 bits its weights are +-max|w| itself, float32 values that a 24-bit
            # type holds: exported as 24-bit weights, costed as 2-bit ones; scales that
            # happen to be powers of two are exact at the quantizer's bits)
            raise ExportError(f"{what}: quantizer {q} scales its weights by alpha='auto', a "
                              f"scale that is not a power of two here: the weights need {ft}, "
                              f"not {q.bits} bits; use alpha='auto_po2' or alpha=1")
    return ft


def _values_type(q, values: torch.Tensor, what: str, why: str) -> FixedType:
    """The smallest fixed-point type of a quantizer's `values`; an ExportError naming the
    layer and quantizer when they need more than 32 bits or lie on no binary grid (the
    latter was a bare 'values are not on a binary fixed-point grid'). `why`: the likely
    cause, for quantizers other than powers of two."""
    try:
        ft = smallest_fixed_type(values)
    except ValueError:
        ft = None
    if ft is not None and ft.width <= 32:
        return ft
    need = f"{ft.width}-bit fixed point" if ft is not None else "more than 52 fraction bits"
    if noise := _noisy(q):
        why = noise
    elif getattr(q, "name", None) == "quantized_ulaw":
        why = "mu-law companded values are logarithms, on no short binary grid"
    elif getattr(q, "kind", None) == "po2":
        e = torch.log2(values.detach().double().abs()[values != 0])
        span = f" span 2**{int(e.min())} to 2**{int(e.max())}, and" if e.numel() else ""
        why = (f"a power-of-two quantizer's values{span} values near 0 take its smallest "
               "power; give it fewer bits")
    raise ExportError(f"{what}: quantizer {q} gives values that need {need} ({why})")


def _noisy(q) -> str:
    """Why quantizer `q`'s values lie on no grid, if it is its qnoise_factor ('' if not)."""
    f = getattr(q, "qnoise_factor", 1.0)
    if f == 1.0:
        return ""
    return (f"its qnoise_factor={f:g} mixes the float values into the quantized ones "
            "(x + qnoise_factor * (q(x) - x)); set qnoise_factor=1 for deployment")


def _refuse_noisy(q, what: str):
    """An ExportError for weights of a quantizer with qnoise_factor < 1: they were exported
    at whatever width their floats need, or refused as 'a scale tie'."""
    if noise := _noisy(q):
        raise ExportError(f"{what}: quantizer {q} gives weights on no fixed-point grid: "
                          f"{noise}")


def _element_type(q, what: str) -> FixedType:
    ft = q.fixed_type() if hasattr(q, "fixed_type") else None
    if ft is None:
        vals = q.values() if hasattr(q, "values") else None
        if vals is None:
            if getattr(q, "kind", None) == "float":  # QActivation("relu"), activation="tanh"
                raise ExportError(f"{what}: the activation {q} is float (not quantized); "
                                  "give it a quantizer, e.g. quantized_relu(6,0) for relu or "
                                  "quantized_tanh(8) for tanh")
            if not getattr(q, "is_scalar", True):  # (said to be 'alpha=auto statistics')
                raise ExportError(
                    f"{what}: quantizer {q} has per-feature (tensor) parameters, which the "
                    "integer engine runs only as plain casts: quantized_bits with alpha 1 or "
                    "None and every signed member of at least 2 bits, or quantized_relu "
                    "without a slope, sigmoid or bound clip")
            raise ExportError(f"{what}: quantizer {q} has no finite set of output values "
                              "(e.g. alpha='auto' statistics); it cannot run as a table")
        ft = _values_type(q, vals, what, "a bound or scale that is not a short binary "
                                         "fraction, such as relu_upper_bound=0.3?")
    return ft


def _stochastic(q) -> bool:
    return bool(getattr(q, "use_stochastic_rounding", False)) or \
        getattr(q, "name", "").startswith("stochastic_")


def _act_step(name: str, q, in_type: FixedType) -> Step:
    if _stochastic(q):
        raise ExportError(f"{name}: stochastic quantizer {q} is random at training time and "
                          "deterministic at inference; replace it by its deterministic form")
    ft = quantizer_cast_type(q)
    if ft is not None:
        return CastStep(name, "cast", _exact(ft, name), {"quantizer": str(q)})
    types = tensor_cast_types(q)
    if types is not None:
        for t in types:
            _exact(t, name)
        frac = max(t.frac for t in types)
        lo = min(t.min_code << (frac - t.frac) for t in types)
        hi = max(t.max_code << (frac - t.frac) for t in types)
        out = type_for_range(lo, hi, frac)
        if not any(t.signed for t in types):
            out = FixedType(out.width - 1, out.integer - 1, False)
        return TensorCastStep(name, "cast/feature", out, {"quantizer": str(q)}, types=types)
    if isinstance(getattr(q, "alpha", None), str):
        raise ExportError(f"{name}: activation quantizer {q} uses data-dependent scales "
                          f"(alpha={q.alpha!r}: one scale per batch row, from its values); use a "
                          "fixed alpha for deployment (hetq search --deployable searches only "
                          "exportable activations)")
    # the table runs in float64, so its values are listed in float64 (a float32 list of
    # mu-law values fit a 25-bit type, and the float64 run then failed the comparison)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ft = _element_type(q, name)
    finally:
        torch.set_default_dtype(dtype)
    step = TableStep(name, "table", ft, {"quantizer": str(q)},
                     quantizer=copy.deepcopy(q).double().eval())
    # its outputs over the input grid (all of it up to 16 bits, else 65,537 points across
    # it), now: not a failure on the first use (the run still checks every value)
    lo, hi = code_range(in_type)
    codes = (torch.arange(lo, hi + 1, dtype=torch.int64) if hi - lo <= 1 << 16 else
             torch.unique(torch.linspace(lo, hi, (1 << 16) + 1, dtype=torch.float64)
                          .round().to(torch.int64)))
    try:
        step.run(codes, in_type)
    except ExportError:
        fix = _noisy(q) or ("it cannot run bit-exactly: use a quantized_bits or "
                            "quantized_relu activation")
        raise ExportError(f"{name}: quantizer {q} gives values on no fixed-point grid "
                          f"that holds them all (its outputs on the {in_type} inputs); "
                          f"{fix}") from None
    return step


def _acc_type(name, w_codes, w_type, b_codes, b_type, in_type, reduce_dims) -> FixedType:
    """Exact accumulator type by interval propagation (per output channel, worst case)."""
    frac = in_type.frac + w_type.frac
    if b_type is not None:
        frac = max(frac, b_type.frac)
    xlo, xhi = code_range(in_type)
    w = w_codes.to(torch.float64)
    hi = torch.clamp(torch.maximum(w * xhi, w * xlo), min=0).sum(dim=reduce_dims)
    lo = torch.clamp(torch.minimum(w * xhi, w * xlo), max=0).sum(dim=reduce_dims)
    sh = float(1 << (frac - in_type.frac - w_type.frac))
    hi, lo = hi * sh, lo * sh
    if b_codes is not None:
        # (in float64: an int64 shift overflowed for inputs with ~60 more fraction bits)
        b = b_codes.to(torch.float64) * math.ldexp(1.0, frac - b_type.frac)
        hi, lo = hi + b, lo + b
    return _exact(type_for_range(int(lo.min()), int(hi.max()), frac),
                  f"{name}: the exact accumulator", "narrow the input or weight types")


def _conv_op(m: nn.Module, dims: int, groups: int):
    stride, padding, dilation = m.stride, m.padding, m.dilation
    fn = F.conv1d if dims == 1 else F.conv2d

    def op(x, w):
        return fn(x, w, None, stride, padding, dilation, groups)
    return op


def _conv_detail(m, groups) -> dict:
    return {"stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str)
            else list(m.padding),
            "dilation": list(m.dilation), "groups": int(groups)}


def _weight_step(name, m, wq, bq, kq, bq_q, op, in_type, reduce_dims, kind,
                 detail=None) -> WeightStep:
    wt = _weight_type(kq, wq, f"{name}.kernel")
    wc = codes_of(wq, wt, f"{name}.kernel")
    bc = bt = None
    if bq is not None:
        bt = _weight_type(bq_q, bq, f"{name}.bias")
        bc = codes_of(bq, bt, f"{name}.bias")
    acc = _acc_type(name, wc, wt, bc, bt, in_type, reduce_dims)
    return WeightStep(name, kind, acc, detail or {}, op=op, w_codes=wc, w_type=wt, b_codes=bc,
                      b_type=bt)


def _layer_steps(node, in_type: FixedType) -> list[Step]:
    """Integer steps for one traced leaf module, given its input type."""
    name, m = node.name, node.module
    steps: list[Step] = []

    def chain(step):
        steps.append(step)
        return step.out_type

    if isinstance(m, QActivation):
        chain(_act_step(name, m.activation_quantizer, in_type))
        return steps
    if isinstance(m, (QDense, QConv1d, QConv2d, QDepthwiseConv2d, _FoldedBatchnorm)):
        with torch.no_grad():
            wq = m.quantized_weights()
        kq = m.kernel_quantizer
        w = wq.get("kernel", wq.get("depthwise"))
        detail = None
        if isinstance(m, nn.Linear):
            op, dims, kind = (lambda x, w_: x @ w_.t()), (1,), "dense"
        else:
            detail = _conv_detail(m, m.groups)
            d = 1 if isinstance(m, nn.Conv1d) else 2
            op, dims, kind = _conv_op(m, d, m.groups), tuple(range(1, w.dim())), f"conv{d}d"
            if getattr(m, "padding_mode", "zeros") != "zeros":
                raise ExportError(f"{name}: padding_mode={m.padding_mode!r}; only zero "
                                  "padding is supported by the export")
        t = chain(_weight_step(name, m, w, wq.get("bias"), kq, m.bias_quantizer, op, in_type,
                               dims, kind, detail))
        if m.activation_quantizer is not None:
            chain(_act_step(f"{name}.activation", m.activation_quantizer, t))
        return steps
    if isinstance(m, QSeparableConv2d):
        with torch.no_grad():
            wq = m.quantized_weights()
        dw_op = _conv_op(m, 2, m.in_channels)
        t = chain(_weight_step(f"{name}.depthwise", m, wq["depthwise"], None,
                               m.depthwise_quantizer, None, dw_op, in_type, (1, 2, 3), "conv2d",
                               _conv_detail(m, m.in_channels)))
        if m.depthwise_activation_quantizer is not None:
            t = chain(_act_step(f"{name}.depthwise_activation",
                                m.depthwise_activation_quantizer, t))

        def pw_op(x, w):
            return F.conv2d(x, w)
        t = chain(_weight_step(f"{name}.pointwise", m, wq["pointwise"], wq.get("bias"),
                               m.pointwise_quantizer, m.bias_quantizer, pw_op, t, (1, 2, 3),
                               "conv2d", {"stride": [1, 1], "padding": [0, 0],
                                          "dilation": [1, 1], "groups": 1}))
        if m.activation_quantizer is not None:
            chain(_act_step(f"{name}.activation", m.activation_quantizer, t))
        return steps
    if isinstance(m, QBatchNorm):
        with torch.no_grad():
            inv, shift = m.folded_scale_shift(m.running_mean, m.running_var)
        try:
            it, st = smallest_fixed_type(inv), smallest_fixed_type(shift)
        except ValueError:
            it = st = None
        if it is None or it.width > 32 or st.width > 40:
            raise ExportError(f"{name}: batch-norm scale/shift are not on a fixed-point grid; "
                              "give it an inverse_quantizer and beta/mean quantizers, or fold "
                              "it into the layer before (quantize_model(fold_batchnorm=True))")
        ic, sc = codes_of(inv, it, name), codes_of(shift, st, name)
        frac = max(in_type.frac + it.frac, st.frac)
        xlo, xhi = code_range(in_type)
        i64 = ic.to(torch.float64) * float(1 << (frac - in_type.frac - it.frac))
        s64 = (sc * (1 << (frac - st.frac))).to(torch.float64)
        hi = torch.maximum(i64 * xhi, i64 * xlo) + s64
        lo = torch.minimum(i64 * xhi, i64 * xlo) + s64
        out = _exact(type_for_range(int(lo.min()), int(hi.max()), frac),
                     f"{name}: the exact accumulator",
                     "narrow the input type or the batch-norm quantizers")
        chain(ScaleShiftStep(name, "batchnorm", out, inv_codes=ic, inv_type=it,
                             shift_codes=sc, shift_type=st))
        return steps
    if isinstance(m, (QAveragePooling2d, QGlobalAveragePooling2d)):
        if isinstance(m, QAveragePooling2d):
            ks, stv, pd = m.kernel_size, m.stride, m.padding

            def pool(x):
                return F.avg_pool2d(x, ks, stv, pd, count_include_pad=True, divisor_override=1)
            area = m.area
        else:
            def pool(x):
                return x.sum(dim=(2, 3))
            area = node.in_shape[-1] * node.in_shape[-2]
        q = m.average_quantizer
        if q is None:
            raise ExportError(f"{name}: average pooling divides by the area in float; give it "
                              "an average_quantizer (e.g. quantized_bits(8,0,alpha=1))")
        detail = ({"area": area, "kernel": list(ks), "stride": list(stv), "padding": list(pd)}
                  if isinstance(m, QAveragePooling2d) else {"area": area, "global": True})
        a = q(torch.tensor(1.0 / area, dtype=torch.float64))
        at = _element_type(q, f"{name}.average")
        ac = int(codes_of(a, at, f"{name}.average"))
        lo, hi = code_range(in_type)
        frac = in_type.frac + at.frac
        # (the sum of codes is at most this wide too, |ac| >= 1, or multiplied by 0)
        out = _exact(type_for_range(min(0, lo * area * ac, hi * area * ac),
                                    max(0, lo * area * ac, hi * area * ac), frac),
                     f"{name}: the exact accumulator",
                     "narrow the input type or the average_quantizer")
        t = chain(PoolStep(name, "avgpool", out, detail, pool=pool, avg_codes=ac, avg_type=at))
        if m.activation_quantizer is not None:
            chain(_act_step(f"{name}.activation", m.activation_quantizer, t))
        return steps
    if isinstance(m, GRID_KEEPING):
        out = in_type
        if isinstance(m, nn.ReLU) and in_type.signed:
            out = FixedType(max(1, in_type.width - 1), in_type.integer - 1, False)
        kind = ("dropout" if isinstance(m, nn.modules.dropout._DropoutNd)
                else type(m).__name__.lower())
        steps.append(KeepStep(name, kind, out, module=m))
        return steps
    if isinstance(m, QLayer):
        raise ExportError(f"{name}: {type(m).__name__} is not supported by the integer engine")
    raise ExportError(
        f"{name}: float {type(m).__name__} on the datapath; replace it by a quantized layer "
        "(quantize_model) or a QActivation so every tensor has a fixed-point type")


class IntegerModel:
    """A hetq model compiled into integer steps (see the module docstring).

    input_type: the FixedType (or an `ap_fixed<...>` string) inputs are cast to; may be
    omitted when the model starts with a `QActivation` (its quantizer is then the input cast).
    """

    def __init__(self, model: nn.Module, input_shape, input_type: FixedType | str | None = None):
        check_module(model, "IntegerModel", values=True)
        self.input_shape = as_input_shape(input_shape)
        # float64 copy: the reference computation and the source of the integer weights
        self.model = copy.deepcopy(model).double().eval()
        # traced afresh: the chain check is on this model's own weights
        nodes, chain = traced(self.model, self.input_shape, fresh=True)
        if not nodes:
            held = sorted({type(m).__name__ for m in self.model.modules()
                           if not any(True for _ in m.children())})
            raise ExportError("the model has no layers to export" + (
                f" (it holds {', '.join(held)}, which the integer engine does not run)"
                if held else ""))
        if chain.broken() is not None:
            raise ExportError(
                f"{type(model).__name__}: its forward does more than call its layers one after "
                f"another ({chain.broken()}), which the export cannot follow; write it as a "
                "chain of layers (e.g. an nn.Sequential of hetq layers, nn.Flatten for a "
                "reshape)")
        if isinstance(input_type, str):
            input_type = FixedType.parse(input_type)
        elif input_type is not None and not isinstance(input_type, FixedType):
            raise ValueError(f"input_type={input_type!r}; expected a FixedType, a string such "
                             "as 'ap_fixed<16,6,AP_RND_CONV,AP_SAT>', or None (the model's "
                             "input quantizer)")
        first = nodes[0]
        self._feature_cast = None  # the per-feature input quantizer that makes the input codes
        if input_type is None:
            q = first.module.activation_quantizer if isinstance(first.module, QActivation) \
                else None
            input_type = quantizer_cast_type(q) if q is not None else None
            if input_type is None and q is not None and tensor_cast_types(q):
                # per-feature input types: the grid holding all of them
                ut = _act_step(first.name, q, FixedType(2, 1)).out_type
                input_type = FixedType(ut.width, ut.integer, ut.signed, "RND_CONV", "SAT")
                # each feature arrives in its own type: a raw input is cast by that type alone
                # (rounding it to the finest grid first, then to its own, rounds twice: 0.26
                # became 0.25 there, then a tie going to 0 in a 0.5 grid, not 0.5)
                self._feature_cast = q
            if input_type is None and q is not None and getattr(q, "kind", None) != "float":
                raise ExportError(  # (the model does start with a QActivation)
                    f"{first.name}: the input quantizer {q} is not a plain fixed-point cast "
                    "(quantized_bits with alpha=1, or quantized_relu), so it cannot set the "
                    "input precision; give one (input_type='ap_fixed<16,6,AP_RND_CONV,AP_SAT>',"
                    " CLI --input-type) or start the model with such a cast")
            if input_type is None:
                raise ExportError(
                    f"{first.name}: the model's input is float; give an input precision "
                    "(input_type='ap_fixed<16,6,AP_RND_CONV,AP_SAT>', CLI --input-type) or "
                    "start the model with a QActivation(quantized_bits(...)) input quantizer")
        self.input_type = _exact(input_type, "the input type",
                                 "give a narrower input_type, CLI --input-type")
        with eval_mode(model):
            self._check_weights(model)
        self.steps: list[Step] = []
        self.step_inputs: list[FixedType] = []
        t = input_type
        for node in nodes:
            for step in _layer_steps(node, t):
                self.steps.append(step)
                self.step_inputs.append(t)
                t = step.out_type
        self.output_type = t

    def _check_weights(self, model):
        """The float32 model's quantized weights equal the float64 copy's (same export); the
        caller puts the model in eval mode (in train mode it draws stochastic quantizers
        afresh)."""
        ref = dict(self.model.named_modules())
        for name, m in model.named_modules():
            if isinstance(m, QLayer) and name:
                with torch.no_grad():
                    a, b = m.quantized_weights(), ref[name].quantized_weights()
                for f in a:
                    q = m.quantizers.get(f)
                    _refuse_noisy(q, f"{name}.{f}")
                    if not torch.equal(a[f].detach().double(), b[f].detach()):
                        try:  # weights on no binary grid: a scale that is no power of two
                            on_grid = smallest_fixed_type(b[f].detach()).width <= 32
                        except ValueError:
                            on_grid = False
                        if not on_grid:
                            raise ExportError(
                                f"{name}.{f}: quantizer {q} gives weights on "
                                "no fixed-point grid (a scale that is not a power of two); use "
                                "alpha=1, a power-of-two alpha or alpha='auto_po2'")
                        n = int((a[f].detach().double() != b[f].detach()).sum())
                        ft = q.fixed_type() if hasattr(q, "fixed_type") else None
                        if isinstance(m, _FoldedBatchnorm):  # (its fixed scales are no help)
                            what = ("weights gamma / sigma * W" if f == "kernel" else
                                    "biases beta + gamma / sigma * (b - mean)")
                            why = (f"{n} of {a[f].numel()} folded {what} round differently: "
                                   "their float32 value is too coarse for this grid; use "
                                   f"fewer {f} bits, or a float64 model (model.double())")
                        elif ft is not None and ft.width > 24:
                            # (saturating at 2**integer in float32: its clamp bound rounds)
                            why = (f"{ft} is {ft.width} bits wide, more than float32's 24 "
                                   "significant bits, so float32 rounds or clips some weights "
                                   "differently; use at most 24 bits, or a float64 model "
                                   "(model.double())")
                        else:
                            why = "a scale tie; retrain briefly or use fixed scales"
                        raise ExportError(f"{name}.{f}: quantized weights differ between "
                                          f"float32 and float64 evaluation ({why})")
            if isinstance(m, QBatchNorm) and name and m.quantizers["inverse"] is not None:
                # its folded scale is rounded too (without an inverse quantizer it is on no
                # grid, which the layer's steps refuse by name)
                with torch.no_grad():
                    a, _ = m.folded_scale_shift(m.running_mean, m.running_var)
                    r = ref[name]
                    b, _ = r.folded_scale_shift(r.running_mean, r.running_var)
                if not torch.equal(a.detach().double(), b.detach()):
                    raise ExportError(
                        f"{name}: the folded batch-norm scale differs between float32 and "
                        "float64 evaluation (its inverse quantizer rounds a value on a tie "
                        "differently), so the float32 model is not the one exported; retrain "
                        "briefly, or evaluate the model in float64")

    # -- running ---------------------------------------------------------------------------
    def input_codes(self, x) -> torch.Tensor:
        """Cast float inputs (a tensor or array of shape (N, *input_shape)) to the input type
        (its rounding and overflow): int64 codes."""
        x = torch.as_tensor(x).detach()
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"inputs of shape {tuple(x.shape)}; this IntegerModel takes a batch "
                             f"of samples of shape {self.input_shape}, i.e. (N, "
                             f"{', '.join(map(str, self.input_shape))})")
        x = x.to(torch.float64).cpu()
        bad = ~torch.isfinite(x).flatten(1).all(dim=1)
        if bool(bad.any()):  # their casts have no defined code (NaN, or inf wrapped)
            raise ValueError(f"inputs with NaN or infinite values in {int(bad.sum())} of "
                             f"{len(x)} samples (the first: row {int(bad.nonzero()[0])}); a "
                             "fixed-point input has neither: clean or clip them first")
        return self.input_type.to_codes(self._features(x)).to(torch.int64)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 inputs through the model's own per-feature input quantizer, if any (its
        values lie on the input type's grid)."""
        if self._feature_cast is None:
            return x
        with torch.no_grad():
            return self._feature_cast(x)

    def outside_range(self, x: torch.Tensor) -> tuple[int, int]:
        """(values of `x` outside the input type's range, all values): those saturate or
        wrap in the cast, so the firmware sees other inputs than the model was trained on
        (after the model's own per-feature input quantizer, whose saturation is its own)."""
        x = self._features(x.to(torch.float64).cpu())
        t = self.input_type
        # (half a step of rounding beyond either end still lands on the end code)
        out = (x < t.min_value - t.step / 2) | (x > t.max_value + t.step / 2)
        return int(out.sum()), x.numel()

    def on_grid(self, x: torch.Tensor) -> torch.Tensor:
        """`x` cast to the input type, as float64 values."""
        return self.input_codes(x).to(torch.float64) * self.input_type.step

    def run_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Output codes (int64) for float inputs `x` (cast to the input type first)."""
        c = self.input_codes(x)
        for step, t in zip(self.steps, self.step_inputs):
            c = step.run(c, t)
        return c

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Output values (float64, exact) for inputs `x`."""
        return self.run_codes(x).to(torch.float64) * self.output_type.step

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The PyTorch model in float64 on the same (grid) inputs."""
        with torch.no_grad():
            return self.model(self.on_grid(x))

    def compare(self, x: torch.Tensor, other: torch.Tensor | None = None,
                label: str = "PyTorch (float64)") -> BitExactReport:
        """Engine outputs vs `other` (default: the PyTorch model) on inputs `x`."""
        mine = self(x)
        if not len(mine):
            raise ValueError("compare needs at least one sample; got an empty batch")
        if other is None:
            theirs = self.reference(x)
            if theirs.shape != mine.shape:  # (broadcast, they compared as if they matched)
                raise ExportError(f"the engine's outputs have shape {tuple(mine.shape)}, the "
                                  f"PyTorch model's {tuple(theirs.shape)}: the engine does "
                                  "not compute this model")
        else:
            theirs = torch.as_tensor(other).detach().to(torch.float64)
            if theirs.numel() != mine.numel():
                raise ValueError(f"the outputs to compare have shape {tuple(theirs.shape)}; "
                                 f"expected the engine's, {tuple(mine.shape)}")
            theirs = theirs.reshape(mine.shape)
        diff = (mine - theirs).abs().reshape(len(mine), -1)
        wrong = diff != 0  # (a NaN is not equal either: `diff > 0` let it pass as exact)
        bad = int(wrong.any(dim=1).sum())
        return BitExactReport(label, len(mine), bad, int(wrong.sum()),
                              float(diff.max()) if diff.numel() else 0.0)

    def layer_table(self) -> str:
        """One row per step: its kind and input/output (and weight) fixed-point types."""
        rows = [f"{'step':<24} {'kind':<10} {'in':<32} {'out':<32} weights"]
        for s, t in zip(self.steps, self.step_inputs):
            w = ""
            if isinstance(s, WeightStep):
                w = f"{s.w_type}" + (f", bias {s.b_type}" if s.b_type is not None else "")
            rows.append(f"{s.name:<24} {s.kind:<10} {str(t):<32} {str(s.out_type):<32} {w}")
        return "\n".join(rows)


@dataclass
class BitExactReport:
    against: str
    samples: int
    mismatched_samples: int
    mismatched_values: int
    max_abs_diff: float

    @property
    def exact(self) -> bool:
        return self.mismatched_samples == 0

    def line(self) -> str:
        verdict = "bit-exact" if self.exact else "NOT bit-exact"
        return (f"{self.against:<28} samples {self.samples:>6}  mismatches "
                f"{self.mismatched_samples:>5}  max |diff| {self.max_abs_diff:.3g}  {verdict}")


def check_engine(eng, who: str) -> IntegerModel:
    """`eng` if it is an IntegerModel; else a ValueError saying how to make one."""
    if isinstance(eng, IntegerModel):
        return eng
    raise ValueError(f"{who} needs an IntegerModel, e.g. hetq.export.IntegerModel(model, "
                     f"input_shape, input_type); got {type(eng).__name__}")
