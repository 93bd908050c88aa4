"""QONNX export: an ONNX graph with QONNX `Quant` nodes, from the integer engine's types.

Every fixed-point tensor gets a `Quant` node (domain `qonnx.custom_op.general`) with a
power-of-two scale 2**-frac, zero point 0, bit width, signed, narrow (AP_SAT_SYM of a signed
type) and rounding mode (RND_CONV -> ROUND, TRN -> FLOOR, TRN_ZERO -> DOWN, RND_INF -> HALF_UP,
RND_ZERO -> HALF_DOWN); weights and biases are initializers followed by their `Quant` node.
Dense layers are `MatMul` + `Add`, convolutions `Conv` (groups for depthwise), unsigned
activations `Relu` + `Quant(signed=0)`, `nn.Flatten()` is `Flatten(axis=1)` (other start/end
dims: a `Reshape`). Per-feature types (the gradient strategy's inputs and neurons) are one
`Quant` with a scale per feature, followed by each feature's saturation bounds (`Max`,
`Min`). qonnx's Quant outputs float32, so a quantized type wider than 24 bits
(an input or activation type, or weight values beyond float32's mantissa) is refused rather
than rounded. Accumulators are exact: the graph is float32 when every accumulator fits 24 bits
and float64 otherwise; convolutions run in float32 either way (onnxruntime has no float64
Conv), so a convolution whose accumulator is wider than 24 bits is refused. Run it with
`run_qonnx` (the qonnx package's own executor) and compare with the engine.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..quant.fixed import FixedType
from .engine import IntegerModel, check_engine
from .steps import CastStep, ExportError, KeepStep, PoolStep, TensorCastStep, WeightStep

QONNX_DOMAIN = "qonnx.custom_op.general"
QONNX_COVERS = ("it covers dense and conv layers, activations that are plain casts "
                "(quantized_bits, quantized_relu), ReLU, max and quantized average pooling, "
                "flatten/unflatten, dropout and identity")
FLOAT32_BITS = 24  # float32's significand: what a Quant node's float32 output holds exactly
ROUNDING = {"RND_CONV": "ROUND", "TRN": "FLOOR", "TRN_ZERO": "DOWN", "RND_INF": "HALF_UP",
            "RND_ZERO": "HALF_DOWN"}


def _require():
    try:
        import onnx  # noqa: F401
        import qonnx  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ExportError("QONNX export needs the export extra: pip install 'hetq[export]'") \
            from e


class _Builder:
    def __init__(self, dtype):
        from onnx import TensorProto
        self.np_dtype = dtype
        self.elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base, value) -> str:
        from onnx import numpy_helper
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), n))
        return n

    def node(self, op, inputs, base, domain=None, **attrs) -> str:
        from onnx import helper
        out = self.name(base)
        kw = {"domain": domain} if domain else {}
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **kw, **attrs))
        return out

    def conv(self, x: str, others: list[str], nm: str, op: str, **attrs) -> str:
        """A `Conv` of `x` with `others` (weights, bias: float32 initializers in a float64
        graph); a float64 graph runs it in float32, between two `Cast`s, as onnxruntime has
        no float64 Conv (the caller checks that its sums fit float32)."""
        from onnx import TensorProto

        f32 = self.np_dtype == np.float64
        if f32:
            x = self.node("Cast", [x], f"{nm}_float32", to=TensorProto.FLOAT)
        x = self.node("Conv", [x, *others], f"{nm}_{op}", **attrs)
        return self.node("Cast", [x], f"{nm}_float64", to=self.elem) if f32 else x

    @staticmethod
    def _rounding(mode: str, what: str) -> str:
        """The QONNX rounding mode of a FixedType rounding mode."""
        if mode not in ROUNDING:
            raise ExportError(f"{what}: rounding {mode} has no QONNX rounding mode "
                              f"(supported: {', '.join(ROUNDING)})")
        return ROUNDING[mode]

    def _quant_node(self, x: str, scale, width: int, signed: bool, narrow: bool,
                    rounding_mode: str, float32: bool = False) -> str:
        """A `Quant` node (scale: one, or a row of one per feature), cast back to a float64
        graph's type unless `float32` (an operand of a float32 `Conv`)."""
        ins = [x, self.const("scale", scale), self.const("zeropt", 0.0),
               self.const("bitwidth", float(width))]
        q = self.node("Quant", ins, "quant", QONNX_DOMAIN, signed=int(signed),
                      narrow=int(narrow), rounding_mode=rounding_mode)
        # Quant outputs float32 (exact: types <= 24 bits)
        if self.np_dtype == np.float64 and not float32:
            q = self.node("Cast", [q], "cast", to=self.elem)
        return q

    @staticmethod
    def _float32_type(ft: FixedType, what: str) -> None:
        """An ExportError if values of type `ft` may not survive a Quant's float32 output."""
        if ft.width > FLOAT32_BITS:
            raise ExportError(f"{what}: values of type {ft} need more than float32's "
                              f"{FLOAT32_BITS}-bit mantissa, which QONNX's Quant nodes output; "
                              f"narrow the type to {FLOAT32_BITS} bits or fewer")

    def quant(self, x: str, ft: FixedType, what: str, values_checked: bool = False,
              float32: bool = False) -> str:
        """A `Quant` node casting `x` to `ft` (values_checked: the values are known to be
        exact in float32, as checked weights are, so `ft` may be wider than 24 bits)."""
        mode = self._rounding(ft.rounding, what)
        if ft.overflow not in ("SAT", "SAT_SYM"):
            raise ExportError(f"{what}: overflow {ft.overflow} ({ft}); QONNX Quant saturates, "
                              "so the type must use AP_SAT or AP_SAT_SYM")
        if ft.signed and ft.width == 1:  # (qonnx: a signed 1-bit Quant is bipolar, +-1)
            raise ExportError(f"{what}: a 1-bit signed type ({ft}: the values -{ft.step:g} and "
                              "0) has no QONNX Quant, which reads signed 1-bit as bipolar; use "
                              "2 bits or an unsigned type")
        if not values_checked:
            self._float32_type(ft, what)
        # narrow drops the most negative code of a signed type (AP_SAT_SYM); an unsigned
        # AP_SAT_SYM type saturates at 0 and 2**W - 1 as AP_SAT does (qonnx's narrow would
        # lower its top code to 2**W - 2)
        narrow = ft.signed and ft.overflow == "SAT_SYM"
        return self._quant_node(x, ft.step, ft.width, ft.signed, narrow, mode, float32)

    def feature_quant(self, x: str, types: list[FixedType], what: str) -> str:
        """Per-feature types over the last axis of a (N, features) tensor: one `Quant` with a
        scale per feature at the widest width (its clamp holds every feature's range), then
        each feature's own saturation bounds (`Max`, `Min`). Rounding then saturating, as the
        engine's per-feature cast does."""
        rounding = {t.rounding for t in types}
        if len(rounding) != 1 or any(t.overflow not in ("SAT", "SAT_SYM") for t in types):
            raise ExportError(f"{what}: per-feature types {sorted(map(str, set(types)))} need "
                              "one rounding mode and AP_SAT/AP_SAT_SYM saturation")
        mode = self._rounding(rounding.pop(), what)
        for t in types:  # (codes beyond a feature's own type are clamped to its bounds next)
            self._float32_type(t, what)
        signed = any(t.signed for t in types)
        width = max(t.width + int(signed and not t.signed) for t in types)
        q = self._quant_node(x, [[t.step for t in types]], width, signed, False, mode)
        lo = self.typed_const("low", [[t.min_code * t.step for t in types]])
        hi = self.typed_const("high", [[t.max_code * t.step for t in types]])
        return self.node("Min", [self.node("Max", [q, lo], "max"), hi], "min")

    def typed_const(self, base, value) -> str:
        """A constant in the graph's own float type (operands of Max/Min)."""
        from onnx import numpy_helper
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=self.np_dtype), n))
        return n

    def int_const(self, base, value) -> str:
        """An int64 constant (the shape operand of a `Reshape`)."""
        from onnx import numpy_helper
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), n))
        return n

    def weight(self, codes: torch.Tensor, ft: FixedType, base: str, float32: bool = False) -> str:
        # weights sit exactly on their grid; their Quant node records the precision (it
        # saturates and rounds to nearest, which leaves grid values unchanged)
        vals = (codes.to(torch.float64) * ft.step).numpy()
        if not np.array_equal(vals.astype(np.float32).astype(np.float64), vals):
            raise ExportError(f"{base}: weights of type {ft} need more than float32's 24-bit "
                              "mantissa, which QONNX's initializers and Quant nodes use; "
                              "narrow the weight type to 24 bits or fewer")
        if ft.signed and ft.width == 1:  # (weights all -1, binary say: the same values in 2
            ft = FixedType(2, ft.integer + 1, True)  # bits, which a Quant node can express)
        grid = FixedType(ft.width, ft.integer, ft.signed, "RND_CONV", "SAT")
        return self.quant(self.const(base, vals), grid, base, values_checked=True,
                          float32=float32)


def to_qonnx(eng: IntegerModel, path: str | Path | None = None, dtype=None):
    """The engine's program as a QONNX `onnx.ModelProto` (written to `path` if given)."""
    check_engine(eng, "to_qonnx")
    _require()
    import onnx
    from onnx import helper

    if dtype is None:
        widest = max([eng.input_type.width] + [s.out_type.width for s in eng.steps])
        dtype = np.float32 if widest <= 24 else np.float64
    b = _Builder(dtype)
    # a per-feature input quantizer (the gradient strategy's) is the first step itself: a
    # Quant to the finest grid before it rounded raw inputs twice, as the engine does not
    x = "global_in" if eng._feature_cast is not None else \
        b.quant("global_in", eng.input_type, "input")
    for i, step in enumerate(eng.steps):
        nm = step.name.replace(".", "_")
        if isinstance(step, WeightStep):
            conv = step.kind != "dense"
            if conv and step.out_type.width > FLOAT32_BITS:
                raise ExportError(
                    f"{step.name}: the exact accumulator {step.out_type} is "
                    f"{step.out_type.width} bits wide; a QONNX Conv is exact up to "
                    f"{FLOAT32_BITS}-bit accumulators (float32), and onnxruntime, the qonnx "
                    "executor, has no float64 Conv (narrow the input or weight types)")
            # a float64 graph (a wide dense layer elsewhere) runs convolutions in float32
            f32 = conv and b.np_dtype == np.float64
            w = b.weight(step.w_codes, step.w_type, f"{nm}_weight", f32)
            if step.kind == "dense":
                wt = b.node("Transpose", [w], f"{nm}_wT", perm=[1, 0])
                x = b.node("MatMul", [x, wt], f"{nm}_matmul")
                if step.b_codes is not None:
                    x = b.node("Add", [x, b.weight(step.b_codes, step.b_type, f"{nm}_bias")],
                               f"{nm}_add")
            else:
                bias = [] if step.b_codes is None else [
                    b.weight(step.b_codes, step.b_type, f"{nm}_bias", f32)]
                x = b.conv(x, [w, *bias], nm, "conv", **_conv_attrs(step))
        elif isinstance(step, CastStep):
            if not step.out_type.signed:
                x = b.node("Relu", [x], f"{nm}_relu")
            x = b.quant(x, step.out_type, step.name)
        elif isinstance(step, TensorCastStep):
            if not any(t.signed for t in step.types):
                x = b.node("Relu", [x], f"{nm}_relu")
            x = b.feature_quant(x, step.types, step.name)
        elif isinstance(step, KeepStep):
            kind = step.kind
            if kind == "relu":
                x = b.node("Relu", [x], f"{nm}_relu")
            elif kind == "flatten":
                x = _flatten(b, x, step, _shape_before(eng, i), nm)
            elif kind == "unflatten":  # (0: the batch dimension as it is)
                x = b.node("Reshape", [x, b.int_const(
                    f"{nm}_shape", [0, *_shape_before(eng, i + 1)[1:]])], f"{nm}_reshape")
            elif kind in ("identity", "dropout"):
                continue
            elif "maxpool" in kind:
                x = _max_pool(b, x, step, _shape_before(eng, i), nm)
            else:
                raise ExportError(f"{step.name}: {kind} is not supported by the QONNX export "
                                  f"({QONNX_COVERS}); the integer engine still runs it")
        elif isinstance(step, PoolStep):
            x = _avg_pool(b, x, step, _shape_before(eng, i), nm)
        else:
            hint = ("; `hetq search --deployable` searches only exportable activations"
                    if step.kind == "table" else "")
            raise ExportError(f"{step.name}: {step.kind} steps are not supported by the QONNX "
                              f"export ({QONNX_COVERS}); the integer engine still runs "
                              f"it{hint}")
    inp = helper.make_tensor_value_info("global_in", b.elem, ["N", *eng.input_shape])
    out = helper.make_tensor_value_info(x, b.elem, None)
    graph = helper.make_graph(b.nodes, "hetq_model", [inp], [out], initializer=b.inits)
    model = helper.make_model(graph, producer_name="hetq",
                              opset_imports=[helper.make_opsetid("", 13),
                                             helper.make_opsetid(QONNX_DOMAIN, 1)])
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes
    model = ModelWrapper(model).transform(InferShapes()).model
    if path is not None:
        from ..files import write_whole

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # whole or not at all: a full disk left a corrupt file where the earlier one was
        write_whole(path, lambda tmp: onnx.save(model, str(tmp)))
    return model


def _shape_before(eng: IntegerModel, index: int) -> tuple[int, ...]:
    """The shape (batch of one) of the tensor that `eng.steps[index]` takes."""
    c = torch.zeros((1, *eng.input_shape), dtype=torch.int64)
    for step, t in zip(eng.steps[:index], eng.step_inputs):
        c = step.run(c, t)
    return tuple(c.shape)


def _flatten(b: _Builder, x: str, step: KeepStep, shape: tuple[int, ...], nm: str) -> str:
    """nn.Flatten(start_dim, end_dim) on a tensor of `shape`: ONNX `Flatten(axis=1)` for the
    default (1, -1), which is what it computes (a 2-D result); otherwise a `Reshape` that
    keeps the dims before start_dim (0: copy), merges start..end (-1) and keeps those after."""
    rank = len(shape)
    start, end = step.module.start_dim % rank, step.module.end_dim % rank
    if start >= end:  # (nothing merged: torch returns the tensor as it is)
        return x
    if start == 1 and end == rank - 1:
        return b.node("Flatten", [x], f"{nm}_flatten", axis=1)
    target = [0] * start + [-1] + list(shape[end + 1:])
    return b.node("Reshape", [x, b.int_const(f"{nm}_shape", target)], f"{nm}_reshape")


def _max_pool(b: _Builder, x: str, step: KeepStep, shape: tuple[int, ...], nm: str) -> str:
    """MaxPool1d/2d as ONNX `MaxPool` (its padding, like torch's, never wins the max);
    AdaptiveMaxPool to size 1 as a `ReduceMax` over the spatial axes, kept as size 1, and to
    sizes that divide the input as a `MaxPool` of the quotient."""
    m = step.module
    dims = len(shape) - 2
    if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
        size = [m.output_size] * dims if isinstance(m.output_size, int) else list(m.output_size)
        size = [n if s is None else s for s, n in zip(size, shape[2:])]
        if m.return_indices or any(n % s for s, n in zip(size, shape[2:])):
            raise ExportError(f"{step.name}: {m} on inputs of size {list(shape[2:])}: the QONNX "
                              "export takes adaptive max pooling to sizes that divide the input "
                              "(its windows then do not overlap)")
        if all(s == 1 for s in size):  # (onnxruntime has no float64 GlobalMaxPool)
            return b.node("ReduceMax", [x], f"{nm}_max", axes=list(range(2, len(shape))),
                          keepdims=1)
        k = [n // s for s, n in zip(size, shape[2:])]
        return b.node("MaxPool", [x], f"{nm}_maxpool", kernel_shape=k, strides=k)
    if m.return_indices:
        raise ExportError(f"{step.name}: return_indices=True; the export takes max pooling "
                          "that returns its values only")
    def per_dim(v):
        return [v] * dims if isinstance(v, int) else list(v)

    k, st, dil, pad = (per_dim(m.kernel_size), per_dim(m.stride or m.kernel_size),
                       per_dim(m.dilation), per_dim(m.padding))
    # torch's output size; ceil_mode as padding at the end (ONNX's ceil_mode also keeps a
    # last window that starts in the padding, which torch drops: another shape)
    end = []
    for n, ki, si, di, pi in zip(shape[2:], k, st, dil, pad):
        span = n + 2 * pi - di * (ki - 1) - 1
        out = (-(-span // si) if m.ceil_mode else span // si) + 1
        if m.ceil_mode and (out - 1) * si >= n + pi:
            out -= 1
        end.append(max(pi, (out - 1) * si + di * (ki - 1) + 1 - n - pi))
        if end[-1] >= ki:
            raise ExportError(f"{step.name}: {m} on inputs of size {list(shape[2:])} needs "
                              f"{end[-1]} padding at the end, as much as its kernel, which "
                              "ONNX's MaxPool refuses")
    return b.node("MaxPool", [x], f"{nm}_maxpool", kernel_shape=k, strides=st, dilations=dil,
                  pads=pad + end)


def _avg_pool(b: _Builder, x: str, step: PoolStep, shape: tuple[int, ...], nm: str) -> str:
    """A quantized average pooling as the engine computes it: the window's sum (a depthwise
    `Conv` with a kernel of ones, zero padding counted, or a `ReduceSum` for the global
    pooling), times the quantized 1/area."""
    d = step.detail
    if d.get("global"):
        x = b.node("ReduceSum", [x, b.int_const(f"{nm}_axes", [2, 3])], f"{nm}_sum",
                   keepdims=0)
    else:
        if step.out_type.width > FLOAT32_BITS:
            raise ExportError(
                f"{step.name}: the exact window sum {step.out_type} is {step.out_type.width} "
                f"bits wide; a QONNX Conv sums exactly up to {FLOAT32_BITS} bits (float32), "
                "and onnxruntime has no float64 Conv (narrow the input type)")
        ones = b.const(f"{nm}_ones", np.ones((shape[1], 1, *d["kernel"])))
        x = b.conv(x, [ones], nm, "sum", kernel_shape=d["kernel"], strides=d["stride"],
                   pads=d["padding"] + d["padding"], group=shape[1])
    if step.avg_type is None:
        return x
    return b.node("Mul", [x, b.typed_const(f"{nm}_average",
                                           step.avg_codes * step.avg_type.step)], f"{nm}_mul")


def _conv_attrs(step: WeightStep) -> dict:
    d = step.detail
    kernel = list(step.w_codes.shape[2:])
    if d["padding"] == "valid":
        begin = end = [0] * len(kernel)
    elif d["padding"] == "same":  # (stride 1): as torch pads, the odd one at the end
        total = [dil * (k - 1) for dil, k in zip(d["dilation"], kernel)]
        begin = [t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin)]
    else:
        begin = end = list(d["padding"])
    return {"kernel_shape": kernel, "strides": list(d["stride"]),
            "dilations": list(d["dilation"]), "group": d["groups"], "pads": begin + end}


def run_qonnx(model_or_path, x: np.ndarray) -> np.ndarray:
    """Execute a QONNX model with the qonnx package's executor."""
    _require()
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    proto = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) \
        else model_or_path
    proto = copy.deepcopy(proto)
    # the exported batch dimension is symbolic; the executor wants it fixed
    del proto.graph.value_info[:]
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = len(x)
    for o in proto.graph.output:
        o.type.tensor_type.ClearField("shape")
    elem = proto.graph.input[0].type.tensor_type.elem_type
    mw = ModelWrapper(proto).transform(InferShapes())
    dtype = np.float64 if elem == onnx.TensorProto.DOUBLE else np.float32
    iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
    return execute_onnx(mw, {iname: np.asarray(x, dtype=dtype)})[oname]


def check_qonnx(eng: IntegerModel, model, x: torch.Tensor):
    """BitExactReport of the qonnx executor's outputs vs the engine on inputs `x`; an
    ExportError (the executor's first line) if onnxruntime cannot run the graph."""
    check_engine(eng, "check_qonnx")
    try:
        y = run_qonnx(model, eng.on_grid(x).numpy())
    except Exception as e:  # onnxruntime's errors derive from Exception only
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(f"the qonnx executor (onnxruntime) cannot run the graph: "
                          f"{type(e).__name__}: {first}") from e
    return eng.compare(x, torch.from_numpy(np.asarray(y, dtype=np.float64)), "QONNX (qonnx exec)")
