"""Integer engine (exact vs PyTorch for every layer type), QONNX round trip, hls4ml C-sim."""

import importlib.util
import re
import shutil
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from hetq.export import ExportError, IntegerModel, shift_codes
from hetq.models import build
from hetq.models.jet import PRESETS
from hetq.quant.convert import quantize_model
from hetq.quant.fixed import FixedType
from hetq.quant.layers import (
    QActivation,
    QConv1d,
    QConv2d,
    QDense,
    QDepthwiseConv2d,
    QSeparableConv2d,
)
from hetq.quant.norm import QBatchNorm, QConv2dBatchnorm, QDenseBatchnorm
from hetq.quant.pooling import QAveragePooling2d, QGlobalAveragePooling2d

IN16 = "ap_fixed<16,6,AP_RND_CONV,AP_SAT>"
HETERO = {  # a searched-style heterogeneous config (per-layer names)
    "fc1": {"kernel": "quantized_bits(4,0,alpha=1)", "bias": "quantized_bits(8,3,alpha=1)"},
    "relu1": {"activation": "quantized_relu(5,1)"},
    "fc2": {"kernel": "ternary(alpha=1)", "bias": "quantized_bits(6,2,alpha=1)"},
    "relu2": {"activation": "quantized_relu(3,0)"},
    "fc3": {"kernel": "quantized_bits(2,0,alpha=1)", "bias": "quantized_bits(4,1,alpha=1)"},
    "relu3": {"activation": "quantized_relu(7,2)"},
    "output": {"kernel": "quantized_bits(8,1,alpha='auto_po2')",
               "bias": "quantized_bits(8,3,alpha=1)"},
}


def jet(preset, seed=0):
    torch.manual_seed(seed)
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    return quantize_model(build("jet_mlp"), cfg).eval()


def jets_x(n=3000, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g) * 2


# -- integer casts ---------------------------------------------------------------------------
@pytest.mark.parametrize("rounding", ["TRN", "TRN_ZERO", "RND", "RND_ZERO", "RND_MIN_INF",
                                      "RND_INF", "RND_CONV"])
@pytest.mark.parametrize("overflow", ["WRAP", "SAT", "SAT_SYM", "SAT_ZERO"])
def test_shift_codes_equals_fixedtype_cast(rounding, overflow):
    codes = torch.arange(-700, 701, dtype=torch.int64)  # frac 5 -> cast to frac 2, 6 bits
    ft = FixedType(6, 4, True, rounding, overflow)
    want = ft.to_codes(codes.double() / 32).to(torch.int64)
    assert torch.equal(shift_codes(codes, 5, ft), want)


def test_shift_codes_half_even_vectors():
    ft = FixedType(8, 8, True, "RND_CONV", "SAT")  # integers
    codes = torch.tensor([1, 3, 5, 7, -1, -3, -5, 6])  # frac 1: .5, 1.5, 2.5, 3.5, ...
    assert shift_codes(codes, 1, ft).tolist() == [0, 2, 2, 4, 0, -2, -2, 3]


def _exact_cast(c: int, frac_in: int, ft: FixedType) -> int:
    """The cast of code `c` (at `frac_in` frac bits) to `ft`, in exact rationals."""
    import math
    from fractions import Fraction

    x = Fraction(c) * Fraction(2) ** (ft.frac - frac_in)
    fl, half = math.floor(x), Fraction(1, 2)
    r, neg = x - fl, x < 0
    up = {"TRN": False, "TRN_ZERO": neg and r != 0, "RND": r >= half, "RND_MIN_INF": r > half,
          "RND_INF": r > half or (r == half and not neg),
          "RND_ZERO": r > half or (r == half and neg),
          "RND_CONV": r > half or (r == half and fl % 2 == 1)}[ft.rounding]
    y, lo, hi = fl + int(up), ft.min_code, ft.max_code
    if ft.overflow == "WRAP":
        return (y - lo) % (1 << ft.width) + lo
    if ft.overflow == "SAT_ZERO":
        return 0 if not lo <= y <= hi else y
    return min(max(y, lo), hi)


def test_shift_codes_of_any_shift_length_match_exact_arithmetic():
    """Long shifts: codes * 2**s wrapped around int64 before the saturation (ap_fixed<8,60>
    inputs cast to quantized_bits(8,0) gave 0 where they saturate at +-1, and a flipped
    sign at ap_fixed<50,50>), and 1 << k for k >= 63 was an OverflowError traceback."""
    import random

    rng = random.Random(0)
    modes = ["TRN", "TRN_ZERO", "RND", "RND_MIN_INF", "RND_INF", "RND_ZERO", "RND_CONV"]
    for _ in range(600):
        ft = FixedType(rng.randint(2, 53), rng.randint(-70, 70), rng.random() < 0.7,
                       rng.choice(modes), rng.choice(["WRAP", "SAT", "SAT_SYM", "SAT_ZERO"]))
        frac_in = rng.randint(-70, 120)
        cs = [rng.randint(-(1 << 52), 1 << 52) >> rng.randint(0, 52) for _ in range(12)]
        cs += [0, 1, -1, (1 << 52) - 1, -(1 << 52)]
        got = shift_codes(torch.tensor(cs, dtype=torch.int64), frac_in, ft).tolist()
        assert got == [_exact_cast(c, frac_in, ft) for c in cs], (ft, frac_in)
    eng = IntegerModel(nn.Sequential(QActivation("quantized_bits(8,0)")).eval(), (1,),
                       "ap_fixed<8,60,AP_RND_CONV,AP_SAT>")
    assert eng(torch.tensor([[2.0 ** 58], [-2.0 ** 58]])).flatten().tolist() == [0.9921875, -1.0]


# -- engine vs PyTorch -----------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["q6", "bf", "hetero"])
def test_jet_mlp_bit_exact(preset):
    m = jet(HETERO if preset == "hetero" else preset)
    eng = IntegerModel(m, (16,), IN16)
    x = jets_x()
    rep = eng.compare(x)
    assert rep.samples == 3000 and rep.mismatched_samples == 0 and rep.max_abs_diff == 0.0
    # outputs really are model outputs (not a trivial zero network)
    assert eng(x).abs().sum() > 0
    # float32 PyTorch too for narrow models
    if preset != "bf":
        y32 = m(eng.on_grid(x).float()).detach()
        assert eng.compare(x, y32).exact


def test_jet_accumulator_types():
    eng = IntegerModel(jet("q6"), (16,), IN16)
    fc2 = [s for s in eng.steps if s.name == "fc2"][0]
    # 6-bit activations (frac 6) x 6-bit weights (frac 5) -> frac 11
    assert fc2.out_type.frac == 11
    assert str(eng.steps[1].out_type) == "ap_ufixed<6,0,AP_RND_CONV,AP_SAT>"
    assert eng.output_type.frac == 11


def _check(model, shape, input_type=IN16, n=200, scale=2.0):
    torch.manual_seed(3)
    model.eval()
    x = torch.randn(n, *shape) * scale
    eng = IntegerModel(model, shape, input_type)
    rep = eng.compare(x)
    assert rep.mismatched_samples == 0, rep.line()
    assert eng(x).abs().sum() > 0
    return eng


def _warm_bn(model, shape):
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(64, *shape))
    model.eval()


def test_conv1d_and_flatten_dense():
    torch.manual_seed(0)
    m = nn.Sequential(
        QConv1d(2, 4, 3, padding=1, kernel_quantizer="quantized_bits(5,1,alpha=1)",
                bias_quantizer="quantized_bits(6,2,alpha=1)",
                activation="quantized_relu(6,2)"),
        nn.Flatten(),
        QDense(4 * 10, 3, kernel_quantizer="quantized_bits(4,0,alpha='auto_po2')",
               bias_quantizer="quantized_bits(8,3,alpha=1)"))
    _check(m, (2, 10), "ap_fixed<8,3,AP_RND_CONV,AP_SAT>")


def test_conv2d_depthwise_separable_pooling():
    torch.manual_seed(0)
    m = nn.Sequential(OrderedDict([
        ("conv", QConv2d(1, 4, 3, stride=1, padding=1,
                         kernel_quantizer="quantized_bits(4,0,1,alpha='auto_po2')",
                         bias_quantizer="quantized_bits(6,2,alpha=1)")),
        ("act", QActivation("quantized_relu(4,1)")),
        ("dw", QDepthwiseConv2d(4, 3, depth_multiplier=2, padding=1,
                                depthwise_quantizer="quantized_bits(5,1,alpha=1)",
                                bias_quantizer="quantized_bits(5,1,alpha=1)",
                                activation="quantized_bits(8,3)")),
        ("sep", QSeparableConv2d(8, 6, 3, depthwise_quantizer="quantized_bits(4,0,alpha=1)",
                                 pointwise_quantizer="quantized_bits(4,0,alpha='auto_po2')",
                                 bias_quantizer="quantized_bits(4,1,alpha=1)",
                                 depthwise_activation="quantized_tanh(6,symmetric=True)",
                                 activation="quantized_relu(5,2)")),
        ("pool", QAveragePooling2d(2, average_quantizer="quantized_bits(8,0,alpha=1)",
                                   activation="quantized_bits(8,2)")),
        ("relu", nn.ReLU()),
        ("gap", QGlobalAveragePooling2d(average_quantizer="quantized_bits(8,0,alpha=1)")),
    ]))
    eng = _check(m, (1, 8, 8), "ap_fixed<8,2,AP_RND_CONV,AP_SAT>")
    kinds = [s.kind for s in eng.steps]
    assert kinds.count("conv2d") == 4 and "table" in kinds and kinds.count("avgpool") == 2


def test_folded_and_plain_batchnorm():
    torch.manual_seed(0)
    m = nn.Sequential(
        QDenseBatchnorm(6, 8, kernel_quantizer="quantized_bits(6,1,alpha=1)",
                        bias_quantizer="quantized_bits(8,3,alpha=1)",
                        activation="quantized_relu(6,2)"),
        QBatchNorm(8, inverse_quantizer="quantized_bits(6,2,alpha=1)",
                   beta_quantizer="quantized_bits(6,2,alpha=1)",
                   mean_quantizer="quantized_bits(6,2,alpha=1)"),
        QActivation("quantized_bits(8,3)"))
    _warm_bn(m, (6,))
    _check(m, (6,))
    c = nn.Sequential(QConv2dBatchnorm(2, 3, 3, kernel_quantizer="quantized_bits(6,1,alpha=1)",
                                       bias_quantizer="quantized_bits(8,3,alpha=1)",
                                       activation="quantized_relu(6,2)"))
    _warm_bn(c, (2, 5, 5))
    _check(c, (2, 5, 5))


@pytest.mark.parametrize("act", [
    "quantized_tanh(4)", "quantized_sigmoid(5)", "quantized_po2(4,2)",
    "quantized_relu_po2(4,2)", "binary(alpha=1)", "ternary(alpha=1)",
    "quantized_relu(6,2,negative_slope=0.25)", "quantized_bits(6,2,alpha=0.5)",
    "quantized_relu(4,1,use_sigmoid=1)", "quantized_hswish(8,3)",
    "quantized_relu(4,2,relu_upper_bound=2.125,is_quantized_clip=False)"])
def test_table_activations(act):
    torch.manual_seed(0)
    m = nn.Sequential(QDense(4, 6, kernel_quantizer="quantized_bits(6,1,alpha=1)",
                             bias_quantizer="quantized_bits(6,1,alpha=1)"),
                      QActivation(act),
                      QDense(6, 2, kernel_quantizer="quantized_bits(5,1,alpha=1)",
                             bias_quantizer="quantized_bits(5,1,alpha=1)"))
    _check(m, (4,), scale=3.0)


def test_weights_binary_ternary_po2():
    torch.manual_seed(0)
    m = nn.Sequential(
        QDense(5, 7, kernel_quantizer="ternary(alpha='auto_po2')", bias_quantizer="binary"),
        QActivation("quantized_relu(4,1)"),
        QDense(7, 7, kernel_quantizer="binary(alpha='auto_po2')",
               bias_quantizer="quantized_po2(4,1)"),
        QActivation("quantized_relu(4,1)"),
        QDense(7, 3, kernel_quantizer="quantized_po2(5,1)",
               bias_quantizer="quantized_bits(6,2,alpha=1)"))
    _check(m, (5,))


def test_model_with_input_quantizer_needs_no_input_type():
    torch.manual_seed(0)
    m = nn.Sequential(QActivation("quantized_bits(10,3)"),
                      QDense(4, 3, kernel_quantizer="quantized_bits(6,1,alpha=1)",
                             bias_quantizer="quantized_bits(6,1,alpha=1)"))
    eng = IntegerModel(m, (4,))
    assert eng.input_type == FixedType(10, 4, True, "RND_CONV", "SAT")
    assert eng.compare(torch.randn(100, 4) * 8).exact


def _strided(stride):
    torch.manual_seed(0)
    return nn.Sequential(
        QConv2d(1, 2, 3, stride=stride, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                bias_quantizer="quantized_bits(4,0,alpha=1)"),
        QGlobalAveragePooling2d(average_quantizer="quantized_bits(8,0,alpha=1)")).eval()


def test_a_model_differing_only_in_its_settings_gets_its_own_trace():
    """The trace cache was keyed on names, types and weight shapes only: after a stride-1
    model, a stride-2 one (or one given another stride in place) reused its trace, and the
    engine pooled over the wrong area (50 of 50 samples wrong; exact in a fresh process)."""
    x = torch.randn(50, 1, 8, 8)
    t = "ap_fixed<8,3,AP_RND_CONV,AP_SAT>"
    for first, second in ((1, 2), (2, 1)):
        IntegerModel(_strided(first), (1, 8, 8), t)
        eng = IntegerModel(_strided(second), (1, 8, 8), t)
        assert eng.steps[1].detail["area"] == (36 if second == 1 else 9)
        rep = eng.compare(x)
        assert rep.exact and rep.samples == 50, rep.line()
    m = _strided(1)
    IntegerModel(m, (1, 8, 8), t)
    m[0].stride = (2, 2)  # the same model, changed in place
    assert IntegerModel(m, (1, 8, 8), t).compare(x).exact


# -- bad input -------------------------------------------------------------------------------
def test_float_input_is_a_clear_error():
    with pytest.raises(ExportError, match=r"fc1: the model's input is float.*input_type"):
        IntegerModel(jet("q6"), (16,))


def test_inputs_of_another_shape_or_kind():
    """Inputs may be an array or nested lists (the same outputs as the tensor); a shape other
    than (N, *input_shape), a single sample included, is a clear error, not torch's."""
    eng = IntegerModel(jet("q6"), 16, IN16)  # an int input shape is (16,)
    assert eng.input_shape == (16,)
    x = jets_x()[:50]
    assert torch.equal(eng(x.numpy()), eng(x)) and torch.equal(eng(x.tolist()), eng(x))
    assert eng.compare(x.numpy()).exact
    for bad in (x[0], x[:, :15]):
        shape = re.escape(str(tuple(bad.shape)))
        with pytest.raises(ValueError, match=rf"inputs of shape {shape}; this IntegerModel "
                                             r"takes a batch of samples of shape \(16,\), i.e. "
                                             r"\(N, 16\)"):
            eng(bad)


def test_non_finite_inputs_empty_batches_and_other_outputs_are_named(tmp_path):
    """NaN inputs (and inf under a wrapping type) cast to garbage int64 codes and ran
    silently; an empty batch or `other` outputs of another shape failed inside torch."""
    eng = IntegerModel(jet("q6"), (16,), "ap_fixed<16,6>")
    x = jets_x()[:6].clone()
    assert eng(x[:0]).shape == (0, 5)
    x[2, 3], x[4, 0] = float("nan"), float("-inf")
    for run in (eng, eng.run_codes, eng.compare):
        with pytest.raises(ValueError, match=r"^inputs with NaN or infinite values in 2 of 6 "
                                             r"samples \(the first: row 2\); a fixed-point input "
                                             "has neither: clean or clip them first$"):
            run(x)
    with pytest.raises(ValueError, match="^compare needs at least one sample; got an empty"):
        eng.compare(x[:0])
    with pytest.raises(ValueError, match=r"the outputs to compare have shape \(3, 5\); "
                                         r"expected the engine's, \(6, 5\)"):
        eng.compare(jets_x()[:6], torch.zeros(3, 5))
    assert eng.compare(jets_x()[:6], eng(jets_x()[:6]).reshape(30)).exact  # flat is fine
    with pytest.raises(ValueError, match=r"input_type=16; expected a FixedType, a string"):
        IntegerModel(jet("q6"), (16,), 16)
    from hetq.export.hls import export_hls4ml
    from hetq.export.qonnx import to_qonnx

    for f, who in ((to_qonnx, "to_qonnx"), (export_hls4ml, "export_hls4ml")):
        with pytest.raises(ValueError, match=rf"^{who} needs an IntegerModel, e.g. "
                                             r"hetq.export.IntegerModel\(model, input_shape, "
                                             r"input_type\); got Sequential$"):
            f(jet("q6"), tmp_path / "out")  # the model itself instead of its engine
    assert not (tmp_path / "out").exists()


def test_types_wider_than_the_engine_computes_exactly_are_named():
    """A 100-bit weight type failed with an OverflowError from inside the type's cast (such
    a quantizer is now refused: at most 64 bits); types over 53 bits are an ExportError
    naming them."""
    wide = quantize_model(build("jet_mlp"), {"fc1": {"kernel": "quantized_bits(60,0,1)"}})
    with pytest.raises(ExportError, match=r"fc1.kernel: ap_fixed<60,1,AP_RND_CONV,AP_SAT_SYM> is "
                                          r"60 bits wide; the integer engine is exact up to "
                                          r"53-bit types \(narrow the quantizer\)"):
        IntegerModel(wide, (16,), IN16)
    with pytest.raises(ExportError, match=r"the input type: ap_fixed<60,6> is 60 bits wide; .*"
                                          r"\(give a narrower input_type, CLI --input-type\)"):
        IntegerModel(jet("q6"), (16,), "ap_fixed<60,6>")
    # types that fit, but whose exact products and sums would not: the accumulator's type
    wide_acc = quantize_model(build("jet_mlp"), {"fc1": {"kernel": "quantized_bits(30,0,1)",
                                                         "bias": "quantized_bits(30,0,1)"}})
    with pytest.raises(ExportError, match=r"^fc1: the exact accumulator: ap_fixed<\d+,\d+> is "
                                          r"(5[4-9]|[6-9]\d) bits wide; the integer engine is "
                                          r"exact up to 53-bit types \(narrow the input or "
                                          r"weight types\)$"):
        IntegerModel(wide_acc, (16,), "ap_fixed<30,6>")


def test_batchnorm_and_pooling_outputs_wider_than_53_bits_are_named():
    """A batch norm's x * inverse + shift and an average pooling's sum * (1/area) were never
    held to the 53-bit limit: a 48-bit input times a 24-bit inverse wrapped in int64 (108020.87
    for x = 300000 * 1.2345 = 370164.87), and a 2x2 pool of 53-bit codes was summed in float64
    (a 60-bit type). Both are refused like the weighted layers' accumulators."""
    bn = QBatchNorm(1, inverse_quantizer="quantized_bits(24,4,alpha=1)",
                    beta_quantizer="quantized_bits(8,2,alpha=1)",
                    mean_quantizer="quantized_bits(8,2,alpha=1)")
    with torch.no_grad():
        bn.weight.fill_(1.2345)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
    m = nn.Sequential(bn).eval()
    with pytest.raises(ExportError, match=r"^0: the exact accumulator: ap_fixed<67,21> is 67 bits "
                                          r"wide; the integer engine is exact up to 53-bit types "
                                          r"\(narrow the input type or the batch-norm "
                                          r"quantizers\)$"):
        IntegerModel(m, (1,), "ap_fixed<48,20,AP_RND_CONV,AP_SAT>")
    eng = IntegerModel(m, (1,), "ap_fixed<24,20,AP_RND_CONV,AP_SAT>")  # 43 bits: exact
    x = torch.tensor([[300000.0], [-1.5]], dtype=torch.float64)
    assert eng(x).flatten().tolist() == eng.reference(x).flatten().tolist() == \
        [370164.87121582031, -1.8508243560791016]
    pool = nn.Sequential(QAveragePooling2d(2, average_quantizer="quantized_bits(8,0,alpha=1)"))
    with pytest.raises(ExportError, match=r"^0: the exact accumulator: ap_fixed<60,30> is 60 bits "
                                          r"wide; the integer engine is exact up to 53-bit types "
                                          r"\(narrow the input type or the average_quantizer\)$"):
        IntegerModel(pool.eval(), (1, 2, 2), "ap_fixed<53,30,AP_RND_CONV,AP_SAT>")


def test_float_layer_on_datapath_is_named():
    m = jet("q6")
    m.relu2 = nn.Tanh()
    with pytest.raises(ExportError, match=r"relu2: float Tanh on the datapath"):
        IntegerModel(m, (16,), IN16)
    m = jet("q6")
    m.fc2.bias_quantizer = None
    with pytest.raises(ExportError, match=r"fc2.bias is float .*quantize it"):
        IntegerModel(m, (16,), IN16)
    with pytest.raises(ExportError, match=r"fc1: float Linear"):
        IntegerModel(build("jet_mlp"), (16,), IN16)


def test_unquantized_batchnorm_is_named():
    m = nn.Sequential(QDense(4, 4, kernel_quantizer="quantized_bits(6,1,alpha=1)",
                             bias_quantizer="quantized_bits(6,1,alpha=1)"), QBatchNorm(4))
    _warm_bn(m, (4,))
    with pytest.raises(ExportError, match=r"1: batch-norm scale/shift are not on a fixed"):
        IntegerModel(m, (4,), IN16)


def test_a_forward_that_is_not_its_layers_one_after_another_is_refused():
    """The engine runs the traced layers one after another: what a forward did outside them
    (F.relu and a residual `+ x`, a parent's arithmetic, torch.cat, a reshape, an LSTM's
    tuple) was dropped without a word, and the engine computed another function (100 of 100
    samples wrong) or failed inside torch on its first run."""
    import torch.nn.functional as F

    k = dict(kernel_quantizer="quantized_bits(4,0,alpha=1)",
             bias_quantizer="quantized_bits(4,0,alpha=1)")

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = QDense(4, 4, **k), QDense(4, 3, **k)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)) + x)

    class Doubled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = QDense(4, 4, **k)

        def forward(self, x):
            return self.fc(x) * 2

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = QDense(4, 2, **k), QDense(4, 2, **k)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], dim=1)

    class Reshaped(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = QConv2d(1, 2, 3, **k), QDense(8, 3, **k)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = nn.LSTM(4, 4, batch_first=True), QDense(4, 3, **k)

        def forward(self, x):
            return self.fc(self.lstm(x)[0][:, -1])

    torch.manual_seed(1)
    for m, shape, why in (
            (Residual(), (4,), "the input of 'fc2' is not the output of 'fc1'"),
            (nn.Sequential(QDense(4, 4, **k), Doubled()), (4,),
             "the model's output is not the output of '1.fc'"),
            (Concat(), (4,), "the input of 'b' is not the output of 'a'"),
            (Reshaped(), (1, 4, 4), "the output of 'conv' is reshaped from (2, 2, 2) to (8,) "
                                    "before 'fc'"),
            (Recurrent(), (5, 4), "'lstm' (LSTM) returns a tuple, not a tensor")):
        with pytest.raises(ExportError, match=rf"^{type(m).__name__}: its forward does more "
                                              "than call its layers one after another "
                                              rf"\({re.escape(why)}\), which the export "
                                              "cannot follow; write it as a chain of layers"):
            IntegerModel(m.eval(), shape, IN16)

    class Nested(nn.Module):  # not an nn.Sequential, but its layers one after another
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(QDense(4, 4, **k), nn.ReLU(inplace=True))
            self.head = QDense(4, 3, **k)

        def forward(self, x):
            return self.head(self.body(x))

    eng = _check(Nested(), (4,))
    assert [s.name for s in eng.steps] == ["body.0", "body.1", "head"]


def test_dense_on_sequences_tensor_alpha_and_scales_off_the_grid():
    """A dense layer on an (L, features) input added its bias along axis 1 instead of the
    last: NOT bit-exact, or a shape error from inside (after a Conv1d); a tensor alpha on an
    activation ended in 'Boolean value of Tensor ... is ambiguous'; a kernel scale of 0.3
    was refused as 'a scale tie; retrain briefly', which retraining cannot mend."""
    from hetq.quant import quantized_bits
    from hetq.quant.layers import QConv1d

    k = "quantized_bits(6,1,alpha=1)"
    torch.manual_seed(0)
    for m, shape in ((nn.Sequential(QDense(6, 4, kernel_quantizer=k, bias_quantizer=k)), (4, 6)),
                     (nn.Sequential(QDense(6, 5, kernel_quantizer=k, bias_quantizer=k)), (4, 6)),
                     (nn.Sequential(QConv1d(3, 4, 3, kernel_quantizer=k, bias_quantizer=k),
                                    QDense(6, 2, kernel_quantizer=k, bias_quantizer=k)), (3, 8))):
        rep = IntegerModel(m.eval(), shape, IN16).compare(torch.randn(50, *shape) * 2)
        assert rep.exact and rep.samples == 50
    alpha = quantized_bits(4, 0, alpha=torch.tensor([1.0, 0.5, 2.0, 0.25]))
    m = nn.Sequential(QDense(4, 4, kernel_quantizer=k, bias_quantizer=k), QActivation(alpha))
    with pytest.raises(ExportError, match=r"^1: quantizer quantized_bits\(4,0,alpha=\[1.0 0.5 "):
        IntegerModel(m.eval(), (4,), IN16)
    # a table whose values no fixed-point type holds (ulaw) was accepted, then failed on its
    # first run with 'values are not all representable in ap_fixed<25,1>' (its values were
    # listed in float32, the table runs in float64); also after a narrow input type, whose
    # few outputs the check below passed
    for first in (QDense(4, 3, kernel_quantizer=k, bias_quantizer=k),
                  QActivation("quantized_bits(2,1)")):
        m = nn.Sequential(first, QActivation("quantized_ulaw(4)"))
        with pytest.raises(ExportError, match=r"^1: quantizer quantized_ulaw\(4\) gives values "
                                             r"that need 53-bit fixed point \(mu-law companded "
                                             r"values are logarithms"):
            IntegerModel(m.eval(), (4,), IN16)
    m = nn.Sequential(QDense(4, 3, kernel_quantizer="quantized_bits(4,0,alpha=0.3)",
                             bias_quantizer=k))
    with pytest.raises(ExportError, match=r"0.kernel: quantizer quantized_bits\(4,0,alpha=0.3\) "
                                         r"gives weights on no fixed-point grid \(a scale that "
                                         r"is not a power of two\); use alpha=1"):
        IntegerModel(m.eval(), (4,), IN16)


def test_nan_outputs_are_not_bit_exact():
    """`compare` counted NaN outputs as matching ('mismatches 0 max |diff| nan bit-exact')."""
    eng = IntegerModel(jet("q6"), (16,), IN16)
    x = jets_x(10)
    theirs = eng(x).clone()
    assert eng.compare(x, theirs).exact
    theirs[3, 1] = float("nan")
    rep = eng.compare(x, theirs)
    assert (rep.mismatched_samples, rep.mismatched_values) == (1, 1) and not rep.exact
    assert rep.line().endswith("NOT bit-exact")


def test_bad_input_type_string():
    with pytest.raises(ValueError, match="cannot parse fixed-point type 'fixed16'"):
        IntegerModel(jet("q6"), (16,), "fixed16")


def test_an_input_type_with_more_integer_bits_than_its_width_is_costed():
    """ap_fixed<4,8> (a grid step of 16) is a legal type: the export checked it bit-exactly,
    then failed on the cost table with "bad quantizer 'quantized_bits(4,7,alpha=1)'", a string
    the user never typed."""
    from hetq.export.cli import export_model

    lines = []
    with pytest.warns(UserWarning, match=r"lie outside the input type ap_fixed<4,8>'s range "
                                         r"\[-128, 112\]"):  # (inputs x 40: some do)
        res = export_model(jet("q6"), jets_x(200) * 40, "ap_fixed<4,8>", out=lines.append)
    assert all(r.exact for r in res["reports"])
    assert str(res["engine"].input_type) == "ap_fixed<4,8>"
    fc1 = next(lc for lc in res["cost"].layers if lc.name == "fc1")
    assert fc1.input.bits == 4


def test_export_source_errors(tmp_path):
    from hetq.export.cli import resolve_source
    from hetq.search.config import SearchConfig
    from hetq.train import save

    ckpt = tmp_path / "m.pt"
    save(ckpt, build("jet_mlp"), model_name="jet_mlp")
    model, label = resolve_source(str(ckpt), None)
    assert label == str(ckpt) and isinstance(model, nn.Module)
    for args, option in (((str(ckpt), "3"), "--trial"), ((str(ckpt), None, "x.journal"),
                                                          "--storage")):
        with pytest.raises(ValueError, match=rf"{option} is for a search run folder; .*m\.pt "
                                             rf"is a checkpoint file \(leave {option} out\)"):
            resolve_source(*args)
    with pytest.raises(ValueError, match="is a folder with neither a model.pt .* nor a search "
                                         r"run \(search.yaml\)"):
        resolve_source(str(tmp_path), None)
    run = tmp_path / "run"
    run.mkdir()
    SearchConfig().save(run / "search.yaml")
    with pytest.raises(ValueError, match="is a search run folder; give --trial N"):
        resolve_source(str(run), None)
    trained = tmp_path / "train"  # the folder `hetq train` writes: its model.pt
    save(trained / "model.pt", build("jet_mlp"), model_name="jet_mlp")
    assert resolve_source(str(trained), None)[1] == str(trained / "model.pt")
    # a folder without a search is refused without writing anything into it
    with pytest.raises(ValueError, match="is not a search run folder"):
        resolve_source(str(tmp_path), "best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "run", "train"]


# -- QONNX -----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["q6", "bf", "hetero"])
def test_qonnx_round_trip_exact(preset, tmp_path):
    pytest.importorskip("qonnx")
    from hetq.export.qonnx import check_qonnx, run_qonnx, to_qonnx
    eng = IntegerModel(jet(HETERO if preset == "hetero" else preset), (16,), IN16)
    path = tmp_path / "m.onnx"
    proto = to_qonnx(eng, path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Quant") == 1 + 4 * 2 + 3 and ops.count("MatMul") == 4
    quant0 = proto.graph.node[0]
    attrs = {a.name: a for a in quant0.attribute}
    assert attrs["rounding_mode"].s == b"ROUND" and attrs["signed"].i == 1
    x = jets_x(500)
    assert check_qonnx(eng, path, x).exact
    assert run_qonnx(path, eng.on_grid(x).numpy()).shape == (500, 5)


def test_qonnx_conv_exact(tmp_path):
    pytest.importorskip("qonnx")
    from hetq.export.qonnx import check_qonnx, to_qonnx
    torch.manual_seed(0)
    m = nn.Sequential(
        QConv2d(1, 3, 3, padding=1, kernel_quantizer="quantized_bits(4,0,1,alpha='auto_po2')",
                bias_quantizer="quantized_bits(6,2,alpha=1)", activation="quantized_relu(4,1)"),
        QDepthwiseConv2d(3, 3, stride=2, depthwise_quantizer="quantized_bits(5,1,alpha=1)",
                         bias_quantizer="quantized_bits(5,1,alpha=1)",
                         activation="quantized_bits(8,3)"),
        nn.Flatten(), QDense(12, 4, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                             bias_quantizer="quantized_bits(4,0,alpha=1)")).eval()
    eng = IntegerModel(m, (1, 6, 6), "ap_fixed<8,2,AP_RND_CONV,AP_SAT>")
    proto = to_qonnx(eng, tmp_path / "c.onnx")
    assert [n.op_type for n in proto.graph.node].count("Conv") == 2
    assert check_qonnx(eng, proto, torch.randn(100, 1, 6, 6) * 2).exact


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_qonnx_conv_padding_same_and_valid_exact(tmp_path):
    """padding='same' and 'valid' were refused by the QONNX export ('give explicit padding
    numbers'); 'same' with an even kernel pads one more at the end, as torch does."""
    pytest.importorskip("qonnx")
    from hetq.export.qonnx import check_qonnx, to_qonnx
    torch.manual_seed(0)
    m = nn.Sequential(
        QConv2d(1, 2, (4, 3), padding="same", dilation=(1, 2),
                kernel_quantizer="quantized_bits(4,0,alpha=1)",
                bias_quantizer="quantized_bits(6,2,alpha=1)", activation="quantized_relu(4,1)"),
        QConv2d(2, 2, 2, padding="valid", kernel_quantizer="quantized_bits(4,0,alpha=1)",
                bias_quantizer="quantized_bits(6,2,alpha=1)", activation="quantized_relu(4,1)"),
        nn.Flatten(), QDense(50, 3, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                             bias_quantizer="quantized_bits(4,0,alpha=1)")).eval()
    eng = IntegerModel(m, (1, 6, 6), "ap_fixed<8,2,AP_RND_CONV,AP_SAT>")
    proto = to_qonnx(eng, tmp_path / "s.onnx")
    pads = [[list(a.ints) for a in n.attribute if a.name == "pads"][0]
            for n in proto.graph.node if n.op_type == "Conv"]
    assert pads == [[1, 2, 2, 2], [0, 0, 0, 0]]  # totals 1*(4-1) = 3 and 2*(3-1) = 4
    assert check_qonnx(eng, proto, torch.randn(200, 1, 6, 6) * 2).exact


def test_qonnx_pooling_exact(tmp_path):
    """Max pooling (padded, ceil mode, adaptive), quantized average pooling (windows and
    global) and Unflatten were refused by the QONNX export; each now matches the engine."""
    pytest.importorskip("qonnx")
    from hetq.export.qonnx import check_qonnx, to_qonnx
    torch.manual_seed(0)
    k = dict(kernel_quantizer="quantized_bits(4,0,alpha=1)",
             bias_quantizer="quantized_bits(6,2,alpha=1)")
    avg = "quantized_bits(8,0,alpha=1)"
    windows = nn.Sequential(
        QConv2d(1, 3, 3, padding=1, activation="quantized_bits(6,2)", **k),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),  # 7x7 -> 4x4
        QAveragePooling2d(3, stride=1, padding=1, average_quantizer=avg,
                          activation="quantized_bits(8,2)"),  # 1/9: not a power of two
        nn.AdaptiveMaxPool2d(2),  # 4x4 -> 2x2
        nn.Flatten(), nn.Unflatten(1, (3, 4)), nn.MaxPool1d(2),  # (N, 3, 2)
        nn.Flatten(), QDense(6, 3, **k)).eval()
    eng = IntegerModel(windows, (1, 7, 7), "ap_fixed<8,2,AP_RND_CONV,AP_SAT>")
    proto = to_qonnx(eng, tmp_path / "w.onnx")
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MaxPool") == 3 and ops.count("Conv") == 2 and "Reshape" in ops
    x = torch.randn(300, 1, 7, 7) * 2
    assert check_qonnx(eng, proto, x).exact
    pooled = nn.Sequential(
        QConv2d(1, 4, 3, activation="quantized_relu(5,2)", **k),
        QGlobalAveragePooling2d(average_quantizer=avg), QDense(4, 3, **k)).eval()
    eng = IntegerModel(pooled, (1, 6, 6), "ap_fixed<8,2,AP_RND_CONV,AP_SAT>")
    proto = to_qonnx(eng, tmp_path / "g.onnx")
    assert "ReduceSum" in [n.op_type for n in proto.graph.node]
    assert check_qonnx(eng, proto, torch.randn(300, 1, 6, 6) * 2).exact
    gmax = nn.Sequential(QConv2d(1, 2, 3, activation="quantized_relu(5,2)", **k),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), QDense(2, 2, **k)).eval()
    eng = IntegerModel(gmax, (1, 5, 5), "ap_fixed<8,2,AP_RND_CONV,AP_SAT>")
    proto = to_qonnx(eng, tmp_path / "m.onnx")
    assert "ReduceMax" in [n.op_type for n in proto.graph.node]
    assert check_qonnx(eng, proto, torch.randn(300, 1, 5, 5) * 2).exact
    # a float64 graph (22-bit weights: a 30-bit accumulator), 1-d pooling with dilation
    wide = dict(k, kernel_quantizer="quantized_bits(22,0,alpha=1)")
    m1 = nn.Sequential(QConv1d(1, 2, 3, activation="quantized_relu(5,2)", **k),
                       nn.MaxPool1d(3, stride=2, padding=1, dilation=2), nn.AdaptiveMaxPool1d(1),
                       nn.Flatten(), QDense(2, 2, **wide)).eval()
    eng = IntegerModel(m1, (1, 12), "ap_fixed<8,2,AP_RND_CONV,AP_SAT>")
    proto = to_qonnx(eng)
    assert proto.graph.input[0].type.tensor_type.elem_type == 11  # DOUBLE
    assert check_qonnx(eng, proto, torch.randn(300, 1, 12) * 2).exact
    windows[-1] = QDense(6, 3, **wide).eval()
    eng = IntegerModel(windows, (1, 7, 7), "ap_fixed<8,2,AP_RND_CONV,AP_SAT>")
    proto = to_qonnx(eng)
    assert proto.graph.input[0].type.tensor_type.elem_type == 11
    assert check_qonnx(eng, proto, x).exact
    # ceil_mode where torch drops the last window (it would start in the padding), which
    # ONNX's ceil_mode keeps: the graph had another shape
    for pool, shape in ((nn.MaxPool2d(1, stride=2, ceil_mode=True), (1, 6, 6)),
                        (nn.MaxPool1d(4, 3, padding=2, ceil_mode=True), (1, 10)),
                        (nn.MaxPool2d(2, 2, padding=1, ceil_mode=True), (1, 7, 5))):
        conv = (QConv2d if len(shape) == 3 else QConv1d)(
            1, 2, 1, activation="quantized_bits(6,2)", **k)
        n = nn.Sequential(conv, pool)(torch.zeros(1, *shape)).numel()
        m = nn.Sequential(conv, pool, nn.Flatten(), QDense(n, 2, **k)).eval()
        eng = IntegerModel(m, shape, "ap_fixed<8,2,AP_RND_CONV,AP_SAT>")
        assert check_qonnx(eng, to_qonnx(eng), torch.randn(100, *shape) * 2).exact, pool
    uneven = nn.Sequential(QConv2d(1, 2, 3, activation="quantized_relu(5,2)", **k),
                           nn.AdaptiveMaxPool2d(2), nn.Flatten(), QDense(8, 2, **k)).eval()
    eng = IntegerModel(uneven, (1, 7, 7), "ap_fixed<8,2,AP_RND_CONV,AP_SAT>")
    with pytest.raises(ExportError, match=r"^1: AdaptiveMaxPool2d\(output_size=2\) on inputs "
                       r"of size \[5, 5\]: the QONNX export takes adaptive max pooling to "
                       "sizes that divide the input"):
        to_qonnx(eng)


@pytest.mark.parametrize("wide", [False, True])
def test_qonnx_per_feature_types_exact(wide, tmp_path):
    """Per-feature input and neuron types (what gradient-strategy points export): each
    feature saturates at its own bounds, signed and unsigned, in a float32 graph and (with a
    wide hidden layer) a float64 one; hls4ml needs one type per layer and says so."""
    pytest.importorskip("qonnx")
    from hetq.export.hls import layer_list
    from hetq.export.qonnx import check_qonnx, to_qonnx
    from hetq.quant.fixed_point import quantized_bits, quantized_relu

    torch.manual_seed(0)
    bits, integer = torch.tensor([2.0, 4, 6, 8]), torch.tensor([0.0, 1, 3, 2])
    hidden = quantized_relu(bits=torch.tensor([3.0, 5, 2]), integer=torch.tensor([1.0, 2, 0]))
    m = nn.Sequential(
        QActivation(quantized_bits(bits=bits, integer=integer, alpha=1)),
        QDense(4, 3, kernel_quantizer=f"quantized_bits({20 if wide else 4},1,alpha=1)",
               bias_quantizer="quantized_bits(4,1,alpha=1)"),
        QActivation(hidden),
        QDense(3, 2, kernel_quantizer="quantized_bits(4,0,alpha=1)",
               bias_quantizer="quantized_bits(4,0,alpha=1)")).eval()
    eng = IntegerModel(m, (4,))
    assert [s.kind for s in eng.steps] == ["cast/feature", "dense", "cast/feature", "dense"]
    proto = to_qonnx(eng, tmp_path / "f.onnx")
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Max") == ops.count("Min") == 2
    assert (proto.graph.input[0].type.tensor_type.elem_type == 11) == wide  # 11: DOUBLE
    x = torch.randn(2000, 4) * 6  # most features saturate on some rows
    assert check_qonnx(eng, proto, x).exact
    with pytest.raises(ExportError, match="cast/feature steps are not supported by the hls4ml "
                                          "export"):
        layer_list(eng)


def test_per_feature_input_types_round_raw_inputs_once():
    """With per-feature input types the engine rounded a raw input to the finest feature grid
    first, then to its own: 0.26 went to 0.25, then (a tie) to 0 on a 0.5 grid, where the
    model gives 0.5; the check fed PyTorch the once-rounded input, so it said bit-exact."""
    from hetq.quant.fixed_point import quantized_bits

    q = quantized_bits(bits=torch.tensor([4.0, 8.0]), integer=torch.tensor([2.0, 2.0]), alpha=1)
    m = nn.Sequential(QActivation(q)).eval()
    eng = IntegerModel(m, (2,))
    x = torch.tensor([[0.26, 0.0], [-0.26, 0.0], [0.74, 0.0]])
    assert eng(x)[:, 0].tolist() == [0.5, -0.5, 0.5]
    torch.manual_seed(0)
    x = torch.randn(3000, 2) * 3
    assert torch.equal(eng(x), m(x).double())


def test_a_format_that_cannot_express_a_layer_still_leaves_the_engine_check(tmp_path):
    """`hetq export --qonnx` of a model with a table activation (quantized_relu_po2, as a
    default search picks) stopped with the QONNX error before printing the engine's
    bit-exactness check; the message did not say how to search models it can export."""
    from hetq.export.cli import export_model

    torch.manual_seed(0)
    m = nn.Sequential(QDense(4, 6, kernel_quantizer="quantized_bits(6,1,alpha=1)",
                             bias_quantizer="quantized_bits(6,1,alpha=1)"),
                      QActivation("quantized_relu_po2(4,2)"),
                      QDense(6, 2, kernel_quantizer="quantized_bits(5,1,alpha=1)",
                             bias_quantizer="quantized_bits(5,1,alpha=1)")).eval()
    lines = []
    with pytest.raises(ExportError) as e:
        export_model(m, torch.randn(300, 4) * 3, IN16, qonnx=tmp_path / "m.onnx",
                     out=lines.append)
    assert str(e.value) == (f"--qonnx {tmp_path / 'm.onnx'} not written: 1: table steps are "
                            "not supported by the QONNX export (it covers dense and conv "
                            "layers, activations that are plain casts (quantized_bits, "
                            "quantized_relu), ReLU, max and quantized average pooling, "
                            "flatten/unflatten, dropout and identity); the integer engine "
                            "still runs it; `hetq search --deployable` searches "
                            "only exportable activations")
    engine = [ln for ln in lines if "PyTorch (float64)" in ln]
    assert len(engine) == 1 and "mismatches     0" in engine[0] and "bit-exact" in engine[0]
    assert not (tmp_path / "m.onnx").exists()
    # a 1-bit signed input type: qonnx reads such a Quant as bipolar (+-1), so the graph was
    # written and then reported NOT bit-exact on most samples; it is refused by name
    with pytest.raises(ExportError, match=r"input: a 1-bit signed type \(ap_fixed<1,0,AP_RND_CONV,"
                                         r"AP_SAT>: the values -0.5 and 0\) has no QONNX Quant"), \
            pytest.warns(UserWarning, match=r"input values \(\d+\.\d%\) lie outside"):
        export_model(m[2:], torch.randn(300, 6), "ap_fixed<1,0,AP_RND_CONV,AP_SAT>",
                     qonnx=tmp_path / "m1.onnx", out=lines.append)
    # weights with more significant bits than float32 holds: written as float32, they gave
    # 'QONNX ... mismatches 50 ... NOT bit-exact'; refused by name
    wide = nn.Sequential(QDense(4, 3, kernel_quantizer="quantized_bits(28,2,alpha=1)",
                                bias_quantizer="quantized_bits(8,2,alpha=1)")).double().eval()
    with torch.no_grad():
        wide[0].weight.uniform_(-3.9, 3.9)
    with pytest.raises(ExportError, match=r"weights of type ap_fixed<28,3,AP_RND_CONV,AP_SAT> "
                                         r"need more than float32's 24-bit mantissa"):
        export_model(wide, torch.randn(50, 4, dtype=torch.float64), IN16,
                     qonnx=tmp_path / "w.onnx", out=lines.append)


def test_qonnx_convolutions_run_in_float32():
    """onnxruntime has no float64 Conv: a convolution with a 25-bit accumulator (or any one in
    a graph made float64 by a wide dense layer) failed in the executor with NOT_IMPLEMENTED.
    A convolution is exact in float32 up to 24-bit accumulators: a wider one is refused by
    name; a narrow one in a float64 graph runs in float32 between two Casts."""
    pytest.importorskip("qonnx")
    from hetq.export.qonnx import check_qonnx, to_qonnx
    torch.manual_seed(0)
    wide = nn.Sequential(QConv1d(1, 1, 3, kernel_quantizer="quantized_bits(10,0,alpha=1)",
                                 bias_quantizer="quantized_bits(10,0,alpha=1)")).eval()
    with pytest.raises(ExportError, match=re.escape(
            "0: the exact accumulator ap_fixed<25,6> is 25 bits wide; a QONNX Conv is exact up "
            "to 24-bit accumulators (float32), and onnxruntime, the qonnx executor, has no "
            "float64 Conv (narrow the input or weight types)")):
        to_qonnx(IntegerModel(wide, (1, 8), IN16))
    m = nn.Sequential(
        QConv1d(1, 2, 3, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                bias_quantizer="quantized_bits(4,0,alpha=1)", activation="quantized_bits(8,3)"),
        nn.Flatten(), QDense(12, 2, kernel_quantizer="quantized_bits(20,1,alpha=1)",
                             bias_quantizer="quantized_bits(8,2,alpha=1)")).eval()
    eng = IntegerModel(m, (1, 8), "ap_fixed<8,3,AP_RND_CONV,AP_SAT>")
    acc = {s.kind: s.out_type.width for s in eng.steps if s.kind in ("conv1d", "dense")}
    assert acc["conv1d"] <= 24 < acc["dense"]
    proto = to_qonnx(eng)
    assert proto.graph.input[0].type.tensor_type.elem_type == 11  # DOUBLE
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    producers = {n.output[0]: n for n in proto.graph.node}
    assert producers[conv.input[0]].op_type == "Cast"
    assert [producers[i].op_type for i in conv.input[1:]] == ["Quant", "Quant"]  # float32
    assert check_qonnx(eng, proto, torch.randn(500, 1, 8) * 3).exact


def test_export_model_reports_qonnx_failures_and_still_runs_hls4ml(tmp_path, monkeypatch):
    """An onnxruntime error in the QONNX step (the float64 Conv above) escaped `hetq export`
    as a NotImplemented traceback: no report, no hls4ml step. A refused graph and an executor
    failure are now each one clause of the run's ExportError, after the report."""
    pytest.importorskip("qonnx")
    pytest.importorskip("hls4ml")
    import hetq.export.qonnx as hq
    from hetq.export.cli import export_model

    torch.manual_seed(0)
    wide = nn.Sequential(QConv1d(1, 1, 3, kernel_quantizer="quantized_bits(10,0,alpha=1)",
                                 bias_quantizer="quantized_bits(10,0,alpha=1)")).eval()
    lines = []
    with pytest.raises(ExportError) as e:
        export_model(wide, torch.randn(50, 1, 8), IN16, qonnx=tmp_path / "c.onnx",
                     hls4ml=tmp_path / "c_hls", compile=False, out=lines.append)
    assert str(e.value) == (
        f"--qonnx {tmp_path / 'c.onnx'} not written: 0: the exact accumulator ap_fixed<25,6> "
        "is 25 bits wide; a QONNX Conv is exact up to 24-bit accumulators (float32), and "
        "onnxruntime, the qonnx executor, has no float64 Conv (narrow the input or weight "
        f"types); --hls4ml {tmp_path / 'c_hls'} not written: hls4ml export supports flat "
        "(MLP) inputs; got input shape (1, 8)")
    assert any("PyTorch (float64)" in ln and "bit-exact" in ln for ln in lines)
    # a graph the executor cannot run (no such graph is known now): written, reported, and
    # the hls4ml project still written
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    def fails(*args, **kw):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : Node (x) Op (Conv) [ShapeInferenceError]\n"
                   "more detail")
    monkeypatch.setattr(hq, "run_qonnx", fails)
    m = nn.Sequential(QDense(4, 3, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                             bias_quantizer="quantized_bits(4,0,alpha=1)")).eval()
    lines = []
    with pytest.raises(ExportError) as e:
        export_model(m, torch.randn(50, 4), IN16, qonnx=tmp_path / "d.onnx",
                     hls4ml=tmp_path / "d_hls", compile=False, out=lines.append)
    assert str(e.value) == (
        f"--qonnx {tmp_path / 'd.onnx'} written but not checked: the qonnx executor "
        "(onnxruntime) cannot run the graph: Fail: [ONNXRuntimeError] : 1 : FAIL : Node (x) "
        "Op (Conv) [ShapeInferenceError]")
    assert (tmp_path / "d.onnx").is_file() and (tmp_path / "d_hls").is_dir()
    assert f"hls4ml project (Vivado, io_parallel, latency): {tmp_path / 'd_hls'}" in lines
    assert any("PyTorch (float64)" in ln and "bit-exact" in ln for ln in lines)


@pytest.mark.parametrize("flatten,conv_in,op", [((2,), 2, "Reshape"),
                                                 ((1, 2), 6, "Reshape"),
                                                 ((2, 2), 2, None)])
def test_qonnx_flatten_keeps_its_start_and_end_dims(flatten, conv_in, op):
    """nn.Flatten(start_dim, end_dim) was always written as Flatten(axis=1), a 2-D result:
    Flatten(2) between a conv2d and a conv1d gave a graph onnxruntime refused. It is now a
    Reshape of those dims (or nothing, where torch merges none)."""
    pytest.importorskip("qonnx")
    from hetq.export.qonnx import run_qonnx, to_qonnx
    torch.manual_seed(0)
    k = dict(kernel_quantizer="quantized_bits(4,0,alpha=1)",
             bias_quantizer="quantized_bits(4,0,alpha=1)")
    m = nn.Sequential(QConv2d(1, 2, 1, **k), nn.Flatten(*flatten), QConv1d(conv_in, 1, 1, **k))
    if op is None:  # Flatten(2, 2) merges nothing: a conv2d follows
        m[2] = QConv2d(2, 1, 1, **k)
    eng = IntegerModel(m.eval(), (1, 3, 3), "ap_fixed<8,3,AP_RND_CONV,AP_SAT>")
    proto = to_qonnx(eng)
    x = torch.randn(20, 1, 3, 3) * 2
    want = eng(x)
    assert eng.compare(x).exact and want.abs().sum() > 0
    got = run_qonnx(proto, eng.on_grid(x).numpy())
    assert got.shape == tuple(want.shape) and torch.equal(torch.from_numpy(got).double(), want)
    ops = [n.op_type for n in proto.graph.node]
    assert "Flatten" not in ops and (op is None or ops.count(op) == 1)


def test_qonnx_refuses_quantized_types_wider_than_float32():
    """qonnx's Quant outputs float32: a 30-bit input or activation type was rounded to 24
    significant bits in the float64 graph (1 + 2**-23 + 2**-24 came out 1 + 2**-22); such
    types are refused by name, as wide weights are. 24-bit types stay exact."""
    pytest.importorskip("qonnx")
    from hetq.export.qonnx import check_qonnx, to_qonnx
    from hetq.quant.fixed_point import quantized_bits

    def dense(act):
        m = nn.Sequential(QDense(1, 1, kernel_quantizer="quantized_bits(4,1,alpha=1)",
                                 bias_quantizer="quantized_bits(4,1,alpha=1)",
                                 activation=act)).eval()
        with torch.no_grad():
            m[0].weight.fill_(1.0)
            m[0].bias.zero_()
        return m

    eng = IntegerModel(dense("quantized_bits(30,5)"), (1,), "ap_fixed<30,6,AP_RND_CONV,AP_SAT>")
    x = torch.tensor([[1 + 2**-23 + 2**-24]], dtype=torch.float64)
    assert eng(x).item() == 1 + 2**-23 + 2**-24
    msg = ("need more than float32's 24-bit mantissa, which QONNX's Quant nodes output; narrow "
           "the type to 24 bits or fewer")
    with pytest.raises(ExportError, match=re.escape(
            f"input: values of type ap_fixed<30,6,AP_RND_CONV,AP_SAT> {msg}")):
        to_qonnx(eng)
    eng = IntegerModel(dense("quantized_bits(30,5)"), (1,), IN16)
    with pytest.raises(ExportError, match=re.escape(
            f"0.activation: values of type ap_fixed<30,6,AP_RND_CONV,AP_SAT> {msg}")):
        to_qonnx(eng)
    wide = quantized_bits(bits=torch.tensor([8.0, 26]), integer=torch.tensor([2.0, 2]), alpha=1)
    eng = IntegerModel(nn.Sequential(QDense(2, 2, kernel_quantizer="quantized_bits(4,1,alpha=1)",
                                            bias_quantizer="quantized_bits(4,1,alpha=1)"),
                                     QActivation(wide)), (2,), IN16)
    with pytest.raises(ExportError, match=re.escape(
            f"1: values of type ap_fixed<26,3,AP_RND_CONV,AP_SAT> {msg}")):
        to_qonnx(eng)
    # 24 bits: exact, also in a float64 graph (a 26-bit accumulator)
    eng = IntegerModel(dense("quantized_bits(24,5)"), (1,), "ap_fixed<24,6,AP_RND_CONV,AP_SAT>")
    proto = to_qonnx(eng)
    assert proto.graph.input[0].type.tensor_type.elem_type == 11  # DOUBLE
    x = torch.tensor([[1 + 2**-17], [-3 - 2**-18], [31.5 + 2**-18]], dtype=torch.float64)
    assert check_qonnx(eng, proto, x).exact


def test_qonnx_sat_sym_narrows_signed_types_only():
    """An unsigned AP_SAT_SYM input (ap_ufixed saturates at 2**W - 1 as AP_SAT does) was written
    as a narrow Quant, whose top code is 2**W - 2: 3.75 and 10 gave 1.75, not the engine's
    1.875. A signed AP_SAT_SYM type keeps narrow (its most negative code is dropped)."""
    pytest.importorskip("qonnx")
    from hetq.export.qonnx import run_qonnx, to_qonnx
    m = nn.Sequential(QDense(1, 1, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                             bias_quantizer="quantized_bits(4,0,alpha=1)")).eval()
    with torch.no_grad():
        m[0].weight.fill_(0.5)
        m[0].bias.zero_()
    x = torch.tensor([[3.75], [10.0], [-10.0], [1.25]])
    for in_type, want in (("ap_ufixed<4,2,AP_RND_CONV,AP_SAT_SYM>", [1.875, 1.875, 0.0, 0.625]),
                          ("ap_fixed<4,2,AP_RND_CONV,AP_SAT_SYM>", [0.875, 0.875, -0.875, 0.625])):
        eng = IntegerModel(m, (1,), in_type)
        proto = to_qonnx(eng)
        assert eng(x).flatten().tolist() == want
        assert run_qonnx(proto, eng.on_grid(x).numpy()).flatten().tolist() == want
        narrow = {a.name: a.i for a in proto.graph.node[0].attribute}["narrow"]
        assert narrow == int(in_type.startswith("ap_fixed"))


def test_qonnx_rejects_wrapping_input():
    pytest.importorskip("qonnx")
    from hetq.export.qonnx import to_qonnx
    eng = IntegerModel(jet("q6"), (16,), "ap_fixed<16,6>")
    with pytest.raises(ExportError, match=r"input: overflow WRAP .*AP_SAT"):
        to_qonnx(eng)


# -- hls4ml ----------------------------------------------------------------------------------
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@needs_gxx
@pytest.mark.parametrize("preset", ["q6", "hetero"])
def test_hls4ml_csim_exact(preset, tmp_path):
    pytest.importorskip("hls4ml")
    from hetq.export.hls import export_hls4ml
    eng = IntegerModel(jet(HETERO if preset == "hetero" else preset), (16,), IN16)
    x = jets_x(1000)
    hls_model, rep = export_hls4ml(eng, tmp_path / "hls", x)
    assert rep.samples == 1000 and rep.mismatched_samples == 0, rep.line()
    defines = (tmp_path / "hls" / "firmware" / "defines.h").read_text()
    assert "typedef ap_fixed<16,6,AP_RND_CONV,AP_SAT,0> input_t;" in defines
    assert str(eng.output_type) in defines  # the exact logits type, no 'auto'


def test_hls4ml_names_of_an_nn_sequential_are_c_identifiers(tmp_path):
    """An nn.Sequential's layers are named "0", "1", ...: the project's defines.h declared
    `typedef ap_fixed<17,6> 0_accum_t;` and the C simulation did not compile. (The compile
    itself, with g++, was checked by hand: bit-exact on 500 samples.)"""
    pytest.importorskip("hls4ml")
    from hetq.export.hls import export_hls4ml, hls_name

    assert [hls_name(n) for n in ("0", "fc1", "body.3", "input", "a-b")] == [
        "layer_0", "fc1", "body_3", "input_cast", "a_b"]
    k = "quantized_bits(6,1,alpha=1)"
    m = nn.Sequential(QDense(8, 16, kernel_quantizer=k, bias_quantizer=k),
                      QActivation("quantized_relu(5,2)"),
                      QDense(16, 3, kernel_quantizer=k, bias_quantizer=k)).eval()
    export_hls4ml(IntegerModel(m, (8,), IN16), tmp_path / "hls", compile=False)
    defines = (tmp_path / "hls" / "firmware" / "defines.h").read_text()
    assert not re.findall(r"typedef [^;]* \d\w*;", defines)
    assert "layer_0" in defines and "layer_2" in defines


def test_hls4ml_project_folder_is_replaced_whole_or_kept(tmp_path):
    """An export into an earlier project replaces it whole (no stale firmware files or C-sim
    libraries of another model); a folder with other files is refused before anything is
    written; a failed export leaves no half project, and an earlier one as it was."""
    pytest.importorskip("hls4ml")
    from hetq.export.hls import export_hls4ml
    eng = IntegerModel(jet("q6"), (16,), IN16)
    d = tmp_path / "hls"
    export_hls4ml(eng, d, compile=False)
    assert (d / "hls4ml_config.yml").is_file() and (d / "firmware" / "parameters.h").is_file()
    (d / "firmware" / "hetq_model-0ld.so").write_text("a C-sim library of another model")
    (d / "notes.txt").write_text("x")
    export_hls4ml(eng, d, compile=False)
    assert (d / "firmware" / "parameters.h").is_file() and (d / "hls4ml_config.yml").is_file()
    assert not (d / "firmware" / "hetq_model-0ld.so").exists() and not (d / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hls"]  # no hls.previous left
    other = tmp_path / "mine"
    other.mkdir()
    (other / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=f"{other} is not empty and holds no hls4ml project"):
        export_hls4ml(eng, other, compile=False)
    assert [p.name for p in other.iterdir()] == ["data.csv"]
    conv = nn.Sequential(QConv1d(1, 2, 3, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                                 bias_quantizer="quantized_bits(4,0,alpha=1)")).eval()
    bad = IntegerModel(conv, (1, 6), IN16)
    (d / "notes.txt").write_text("kept")
    with pytest.raises(ExportError, match="hls4ml export supports flat"):
        export_hls4ml(bad, d, compile=False)
    assert (d / "notes.txt").read_text() == "kept" and (d / "hls4ml_config.yml").is_file()
    with pytest.raises(ExportError, match="hls4ml export supports flat"):
        export_hls4ml(bad, tmp_path / "new", compile=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hls", "mine"]


def test_an_hls4ml_folder_given_as_a_symlink_is_replaced_where_it_points(tmp_path):
    """--hls4ml LINK to an earlier project failed ('Cannot call rmtree on a symbolic link'),
    left LINK a real folder and the target marked as set aside, and every later export to
    LINK failed the same way."""
    pytest.importorskip("hls4ml")
    from hetq.export.hls import export_hls4ml
    eng = IntegerModel(jet("q6"), (16,), IN16)
    real, link = tmp_path / "real", tmp_path / "link"
    export_hls4ml(eng, real, compile=False)
    (real / "notes.txt").write_text("of the earlier project")
    link.symlink_to(real)
    for _ in range(2):
        export_hls4ml(eng, link, compile=False)
        assert link.is_symlink() and link.resolve() == real
        assert (real / "hls4ml_config.yml").is_file() and not (real / "notes.txt").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
        assert not list(real.glob("HETQ_*"))


def test_an_export_killed_midway_leaves_a_marked_project_and_the_next_restores_the_earlier(
        tmp_path, monkeypatch):
    """kill -9 while an export replaced an earlier project left the new, unchecked project
    in the folder (it looked finished) and the checked one in X.previous, which the next
    export deleted. The unfinished project is now marked, and the next export restores the
    earlier one (or removes an unfinished one that replaced nothing) before its own work."""
    pytest.importorskip("hls4ml")
    import hetq.export.hls as hls

    eng = IntegerModel(jet("q6"), (16,), IN16)
    d, aside = tmp_path / "hls", tmp_path / ".hls.hetq-previous"
    hls.export_hls4ml(eng, d, compile=False)
    assert not (d / hls.UNFINISHED).exists()
    checked = (d / "firmware" / "parameters.h").read_text()
    # the state a kill -9 leaves: the earlier project aside, the new one marked unfinished
    shutil.copytree(d, aside)
    (aside / hls.SET_ASIDE).write_text("x")
    (d / "firmware" / "parameters.h").write_text("the unchecked model")
    (d / hls.UNFINISHED).write_text("x")

    def fails(*a, **k):
        assert (d / hls.UNFINISHED).is_file()  # (marked while it is written)
        raise ExportError("stopped")
    monkeypatch.setattr(hls, "hls4ml_model", fails)
    with pytest.warns(UserWarning, match=r"an export killed before it had checked its project "
                                         r"left it here; the earlier project \(set aside in "
                                         r"\.hls\.hetq-previous\) is back"), \
            pytest.raises(ExportError, match="stopped"):
        hls.export_hls4ml(eng, d, compile=False)
    assert (d / "firmware" / "parameters.h").read_text() == checked
    assert not (d / hls.UNFINISHED).exists() and not aside.exists()
    assert not (d / hls.SET_ASIDE).exists()
    monkeypatch.undo()
    shutil.rmtree(d)  # killed with no earlier project: its unfinished one is removed
    (d / "firmware").mkdir(parents=True)
    (d / hls.UNFINISHED).write_text("x")
    with pytest.warns(UserWarning, match="removed the unfinished project of an export that "
                                         "was killed"):
        hls.export_hls4ml(eng, d, compile=False)
    assert (d / "firmware" / "parameters.h").read_text() == checked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hls"]
    # a folder of the user's at that name is not taken for a set-aside project (a user's
    # hls.previous was restored over the project, then deleted)
    aside.mkdir()
    (aside / "hls4ml_config.yml").write_text("mine")
    with pytest.raises(ExportError, match=r"\.hls\.hetq-previous is in the way"):
        hls.export_hls4ml(eng, d, compile=False)
    assert (aside / "hls4ml_config.yml").read_text() == "mine"
    mine = tmp_path / "hls.previous"
    aside.rename(mine)
    hls.export_hls4ml(eng, d, compile=False)
    assert (mine / "hls4ml_config.yml").read_text() == "mine"


def test_a_c_simulation_that_cannot_be_built_and_a_full_disk_are_named(tmp_path,
                                                                       monkeypatch):
    """Without g++, the hls4ml compile escaped `hetq export` (and the demo, after its whole
    search) as a traceback, with no bit-exactness report. The QONNX file was written in
    place: a full disk left a corrupt model.onnx where the earlier one had been."""
    pytest.importorskip("hls4ml")
    pytest.importorskip("qonnx")
    import errno

    import hls4ml
    import onnx

    from hetq.export.cli import export_model

    def no_compiler(self):
        raise Exception('Failed to compile project "hetq_model"')
    monkeypatch.setattr(hls4ml.model.graph.ModelGraph, "compile", no_compiler)
    lines = []
    with pytest.raises(ExportError) as e:
        export_model(jet("q6"), torch.randn(50, 16), IN16, hls4ml=tmp_path / "hls",
                     out=lines.append)
    assert str(e.value) == (
        f"--hls4ml {tmp_path / 'hls'} not written: the C simulation could not be built (Failed "
        'to compile project "hetq_model"; hls4ml compiles it with g++, which must be on the '
        "PATH); --no-compile writes the project without it")
    assert any("PyTorch (float64)" in ln and "bit-exact" in ln for ln in lines)
    assert not (tmp_path / "hls").exists()

    path = tmp_path / "model.onnx"
    path.write_bytes(b"the earlier model")
    real = onnx.save

    def disk_full(model, f, *a, **kw):
        with open(f, "wb") as fh:
            fh.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(onnx, "save", disk_full)
    with pytest.raises(OSError) as e:  # (the command prints it as one line)
        export_model(jet("q6"), torch.randn(50, 16), IN16, qonnx=path, out=lines.append)
    assert e.value.filename == str(path) and path.read_bytes() == b"the earlier model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    monkeypatch.setattr(onnx, "save", real)
    export_model(jet("q6"), torch.randn(50, 16), IN16, qonnx=path, out=lines.append)
    assert onnx.load(str(path)).graph.node


def test_hls4ml_rejects_conv_with_layer_name(tmp_path):
    pytest.importorskip("hls4ml")
    from hetq.export.hls import hls4ml_model
    m = nn.Sequential(QConv1d(1, 2, 3, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                              bias_quantizer="quantized_bits(4,0,alpha=1)")).eval()
    eng = IntegerModel(m, (1, 6), IN16)
    with pytest.raises(ExportError, match="hls4ml export supports flat"):
        hls4ml_model(eng, tmp_path)


def test_an_auto_scaled_activation_is_refused_naming_its_alpha_and_the_way_out():
    """The message said alpha='auto' for an 'auto_po2' activation (the default search's
    binary(alpha='auto_po2')) and did not say how to search models that export."""
    K = dict(kernel_quantizer="quantized_bits(4,0,alpha=1)",
             bias_quantizer="quantized_bits(4,0,alpha=1)")
    m = nn.Sequential(QActivation("quantized_bits(6,2)"), QDense(3, 3, **K),
                      QActivation("binary(alpha='auto_po2')")).eval()
    with pytest.raises(ExportError, match=re.escape(
            "2: activation quantizer binary(alpha='auto_po2') uses data-dependent scales "
            "(alpha='auto_po2': one scale per batch row, from its values); use a fixed alpha "
            "for deployment (hetq search --deployable searches only exportable activations)")):
        IntegerModel(m, (3,))


def test_a_batchnorm_scale_that_rounds_differently_in_float32_is_refused():
    """QBatchNorm's folded Q(gamma * rsqrt(var + eps)) was not compared between the float32
    model and the float64 copy: here float32 gives 0.25 and 0.5 for inputs 1 and 2, the
    engine 0.125 and 0.25, and nothing said so."""
    from hetq.quant.norm import QBatchNorm

    bn = QBatchNorm(1, inverse_quantizer="quantized_bits(6,2,alpha=1)",
                    beta_quantizer="quantized_bits(6,2,alpha=1)",
                    mean_quantizer="quantized_bits(6,2,alpha=1)")
    with torch.no_grad():
        bn.weight.fill_(0.13271503150463104)  # gamma / sqrt(0.5 + eps): a tie in float64
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(0.5)
    m = nn.Sequential(QActivation("quantized_bits(6,2)"), bn).eval()
    assert m(torch.tensor([[1.0], [2.0]])).flatten().tolist() == [0.25, 0.5]
    with pytest.raises(ExportError, match=re.escape(
            "1: the folded batch-norm scale differs between float32 and float64 evaluation")):
        IntegerModel(m, (1,))
    with torch.no_grad():
        bn.weight.fill_(0.2)  # no tie: exported and exact
    eng = IntegerModel(m, (1,))
    assert eng.compare(torch.linspace(-3, 3, 50)[:, None]).exact


def test_a_model_left_in_train_mode_with_stochastic_weights_exports():
    """A model left in train mode (a custom training loop's end) with stochastic_ternary
    weights was refused: 'quantized weights differ between float32 and float64 ... (a scale
    tie); retrain briefly' -- its train-mode quantizer drew new weights each call."""
    torch.manual_seed(0)
    m = nn.Sequential(QActivation("quantized_bits(8,3)"),
                      QDense(6, 4, kernel_quantizer="stochastic_ternary(alpha=1)",
                             bias_quantizer="quantized_bits(8,2,alpha=1)"),
                      QActivation("quantized_relu(6,0)"))
    m.train()
    eng = IntegerModel(m, (6,))
    assert m.training and eng.compare(torch.randn(200, 6) * 3).exact


def test_float_activations_and_an_input_quantizer_that_is_no_cast_are_named_as_such():
    """QActivation('relu') was refused as 'has no finite set of output values (e.g. alpha=
    'auto' statistics)'; a model starting with QActivation(quantized_bits(8,0,alpha=2)) was
    told to start with a QActivation(quantized_bits(...))."""
    K = dict(kernel_quantizer="quantized_bits(4,0,alpha=1)",
             bias_quantizer="quantized_bits(4,0,alpha=1)")
    with pytest.raises(ExportError, match=re.escape(
            "2: the activation relu is float (not quantized); give it a quantizer")):
        IntegerModel(nn.Sequential(QActivation("quantized_bits(6,2)"), QDense(3, 3, **K),
                                   QActivation("relu")).eval(), (3,))
    with pytest.raises(ExportError, match=re.escape(
            "0: the input quantizer quantized_bits(8,0,alpha=2) is not a plain fixed-point "
            "cast")):
        IntegerModel(nn.Sequential(QActivation("quantized_bits(8,0,alpha=2)"),
                                   QDense(3, 3, **K)).eval(), (3,))


def tiny_accumulator_model() -> nn.Module:
    """Weights that quantize to nearly 0: an accumulator of ap_fixed<2,-6>, then a cast."""
    torch.manual_seed(0)
    m = nn.Sequential(QActivation("quantized_bits(8,2,alpha=1)"),
                      QDense(4, 3, kernel_quantizer="quantized_bits(4,0,alpha=1)", bias=False),
                      QActivation("quantized_bits(4,0,alpha=1)")).eval()
    with torch.no_grad():
        m[1].weight.mul_(0.01)
    return m


def test_a_cast_after_a_tiny_accumulator_does_not_abort_the_c_simulation(tmp_path):
    """A layer whose weights quantize to (nearly) 0 has an accumulator such as ap_fixed<2,-6>;
    its cast to ap_fixed<4,1> reads a rounding bit above that type's top, and the C
    simulation's ap_types failed an assertion that killed the process (SIGABRT: no report,
    a half-written project left). The layer before is now widened by sign extension."""
    pytest.importorskip("hls4ml")
    from hetq.export.hls import export_hls4ml, layer_list

    eng = IntegerModel(tiny_accumulator_model(), (4,))
    _, rep = export_hls4ml(eng, tmp_path / "hls", torch.randn(200, 4))
    assert str(eng.steps[1].out_type) == "ap_fixed<2,-6>"
    assert rep.line().endswith("mismatches     0  max |diff| 0  bit-exact")
    # the widened types
    _, prec = layer_list(IntegerModel(tiny_accumulator_model(), (4,)))
    assert prec["layer_1"]["Precision"]["accum"] == "ap_fixed<6,-2>"  # was ap_fixed<2,-6>
    assert prec["layer_1"]["Precision"]["result"] == "ap_fixed<6,-2>"


def test_a_cast_after_a_cast_or_the_input_gets_a_widening_layer_of_its_own(tmp_path):
    """A cast reading a rounding bit above the previous cast's top widened that cast's result
    type, which moved its saturation bound: ap_ufixed<4,0> (top 0.9375) became
    ap_ufixed<5,1> (top 1.9375), and the C simulation gave 140 of 500 samples wrong. Such a
    cast, and one right after a too-narrow input type (refused before), now read through a
    linear layer that only widens."""
    pytest.importorskip("hls4ml")
    from hetq.export.hls import export_hls4ml, layer_list

    torch.manual_seed(0)
    m = nn.Sequential(QDense(2, 2, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                             bias_quantizer="quantized_bits(4,0,alpha=1)",
                             activation="quantized_relu(4,0)"),
                      QActivation("quantized_relu(2,2)")).eval()
    eng = IntegerModel(m, (2,), "ap_fixed<8,3,AP_RND_CONV,AP_SAT>")
    layers, prec = layer_list(eng)
    assert [(d["name"], d.get("activation")) for d in layers[2:]] == [
        ("layer_0_activation", "relu"), ("layer_1_room", "linear"), ("layer_1", "relu")]
    assert prec["layer_0_activation"]["Precision"]["result"] == \
        "ap_ufixed<4,0,AP_RND_CONV,AP_SAT>"  # (it was widened to <5,1>)
    assert prec["layer_1_room"]["Precision"]["result"] == "ap_ufixed<5,1,AP_RND_CONV,AP_SAT>"
    x = torch.randn(500, 2) * 3
    _, rep = export_hls4ml(eng, tmp_path / "hls", x)
    assert rep.line().endswith("samples    500  mismatches     0  max |diff| 0  bit-exact")
    narrow = IntegerModel(nn.Sequential(QActivation("quantized_bits(4,0,alpha=1)")), (4,),
                          "ap_fixed<2,-6>")
    layers, prec = layer_list(narrow)
    assert [d["name"] for d in layers] == ["x_in", "layer_0_room", "layer_0"]
    assert prec["layer_0_room"]["Precision"]["result"] == "ap_fixed<6,-2>"
    _, rep = export_hls4ml(narrow, tmp_path / "hls2", torch.randn(200, 4) * 0.01)
    assert rep.line().endswith("mismatches     0  max |diff| 0  bit-exact")


def test_qonnx_per_feature_inputs_raw_all_negative_binary_weights_and_huge_input_fractions():
    """Found by a probe of the export: (1) a per-feature input quantizer's QONNX graph put a
    Quant to the finest grid before it, rounding raw inputs twice (0.26 -> 0.25 -> 0 in a 0.5
    grid), which the check, fed on-grid inputs, did not see; (2) binary weights that are all
    -1 got a 1-bit signed type, which QONNX refused with advice the user could not follow;
    (3) an input type with ~100 fraction bits ended in an OverflowError traceback."""
    pytest.importorskip("qonnx")
    import numpy as np

    from hetq.export.qonnx import check_qonnx, run_qonnx, to_qonnx
    from hetq.quant.fixed_point import quantized_bits

    m = nn.Sequential(QActivation(quantized_bits(torch.tensor([3.0, 6.0]),
                                                 torch.tensor([1.0, 1.0]), alpha=1)),
                      QDense(2, 1, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                             bias_quantizer="quantized_bits(4,0,alpha=1)")).eval()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([[0.5, 0.25]]))
        m[1].bias.zero_()
    eng = IntegerModel(m, (2,))
    x = torch.tensor([[0.26, 0.26], [1.26, 0.1]], dtype=torch.float64)
    with torch.no_grad():
        expect = m.double()(x).flatten().tolist()
    assert expect == [0.3125, 0.78125] == eng(x).flatten().tolist()
    assert np.asarray(run_qonnx(to_qonnx(eng), x.numpy())).flatten().tolist() == expect

    neg = nn.Sequential(QActivation("quantized_bits(6,2,alpha=1)"),
                        QDense(3, 1, bias=False, kernel_quantizer="binary(alpha=1)")).eval()
    with torch.no_grad():
        neg[1].weight.copy_(-torch.rand(1, 3))
    e2 = IntegerModel(neg, (3,))
    assert check_qonnx(e2, to_qonnx(e2), torch.randn(50, 3)).exact

    wide = nn.Sequential(QDense(2, 1, kernel_quantizer="quantized_bits(4,0,alpha=1)",
                                bias_quantizer="quantized_bits(4,0,alpha=1)")).eval()
    with pytest.raises(ExportError, match=r"0: the exact accumulator: ap_fixed<1\d\d,-?\d> is "
                                          r"1\d\d bits wide; the integer engine is exact up to "
                                          r"53-bit types"):
        IntegerModel(wide, (2,), "ap_fixed<16,-100,AP_RND_CONV,AP_SAT>")


def test_the_c_simulation_runs_in_a_child_and_its_abort_is_a_named_error():
    """A failed assertion in hls4ml's C types aborts the process running the C simulation;
    it ran in this one, and the export, its report and a notebook's kernel died with it."""
    import os

    from hetq.export.hls import in_child

    y = in_child(lambda: np.arange(6.0).reshape(2, 3) / 3, "sim")
    assert y.dtype == np.float64 and y.tolist() == [[0, 1 / 3, 2 / 3], [1, 4 / 3, 5 / 3]]
    with pytest.raises(ExportError, match=r"^sim was killed by SIGABRT \(its own message"):
        in_child(os.abort, "sim")
    with pytest.raises(ExportError, match=r"^sim failed: ZeroDivisionError: division by zero$"):
        in_child(lambda: 1 / 0, "sim")
    with pytest.raises(ExportError, match=r"^sim ended without a result \(exit status 3\)$"):
        in_child(lambda: os._exit(3), "sim")


@needs_gxx
def test_an_abort_in_the_c_simulation_leaves_the_process_and_no_project(tmp_path, monkeypatch):
    """The tiny-accumulator cast above, with its widening switched off, still aborts inside
    ap_types: the export now raises ExportError and removes the half-written project."""
    pytest.importorskip("hls4ml")
    import hetq.export.hls as hls

    monkeypatch.setattr(hls, "_room_to_round", lambda *a: None)
    with pytest.raises(ExportError, match="hls4ml's C simulation was killed by SIGABRT"):
        hls.export_hls4ml(IntegerModel(tiny_accumulator_model(), (4,)), tmp_path / "hls",
                          torch.randn(200, 4))
    assert not (tmp_path / "hls").exists()


def test_folded_weights_too_fine_for_float32_are_refused_with_what_helps():
    """A folded batch norm's weights gamma / sigma * W are computed in float32; on a 24-bit
    grid a few round differently than in float64, and the refusal blamed a scale tie and
    advised fixed scales, which the model already had. It now says what helps."""
    torch.manual_seed(0)
    m = build("jet_mlp", batchnorm=True).train()
    for _ in range(5):
        m(torch.randn(256, 16))
    kq = "quantized_bits(24,5,alpha=1)"
    q = quantize_model(m, {"Dense": {"kernel": kq, "bias": kq}}, fold_batchnorm=True).eval()
    with pytest.raises(ExportError, match=r"^fc1.kernel: quantized weights differ between "
                                          r"float32 and float64 evaluation \(\d+ of 1024 folded "
                                          r"weights gamma / sigma \* W round differently: .* use "
                                          r"fewer kernel bits, or a float64 model"):
        IntegerModel(q, (16,), "ap_fixed<16,6>")


def test_refusals_name_their_cause():
    """Found by a fuzz of the export: a 2-bit alpha='auto' kernel (its weights +-max|w|,
    float32 values) and a kernel with qnoise_factor < 1 were exported as 24- to 32-bit
    weights, costed at their quantizer's bits; a 28-bit kernel that saturates (float32's
    clamp bound rounds up) and a folded batch norm's bias were refused as 'a scale tie' or
    as its kernel; a qnoise_factor activation was told to use quantized_bits, which it was;
    a model of float layers had 'no layers to export'."""
    def refused(m, shape, text):
        with pytest.raises(ExportError) as e:
            IntegerModel(m.eval(), shape, IN16)
        assert str(e.value) == text

    k = "quantized_bits(4,0,alpha=1)"
    torch.manual_seed(0)
    refused(nn.Sequential(QDense(4, 3, kernel_quantizer="quantized_bits(2,0,alpha='auto')",
                                 bias_quantizer=k)), (4,),
            "0.kernel: quantizer quantized_bits(2,0,1,alpha='auto') scales its weights by "
            "alpha='auto', a scale that is not a power of two here: the weights need "
            "ap_fixed<24,0>, not 2 bits; use alpha='auto_po2' or alpha=1")
    # scales that are powers of two are exact at the quantizer's bits (and were exported)
    for spec in ("quantized_bits(4,0,alpha='auto',post_training_scale=1.0)",
                 "quantized_bits(4,0,alpha='auto',post_training_scale=0.5)"):
        m = nn.Sequential(QDense(4, 3, kernel_quantizer=spec, bias_quantizer=k)).eval()
        eng = IntegerModel(m, (4,), IN16)
        assert eng.compare(torch.randn(30, 4)).exact and "<4," in eng.layer_table()
    noise = "quantized_bits(4,0,alpha=1,qnoise_factor=0.5)"
    why = ("its qnoise_factor=0.5 mixes the float values into the quantized ones (x + "
           "qnoise_factor * (q(x) - x)); set qnoise_factor=1 for deployment")
    refused(nn.Sequential(QDense(2, 1, kernel_quantizer=noise, bias_quantizer=k)), (2,),
            f"0.kernel: quantizer {noise} gives weights on no fixed-point grid: {why}")
    refused(nn.Sequential(QActivation("quantized_bits(4,0,qnoise_factor=0.5)")), (2,),
            "0: quantizer quantized_bits(4,0,qnoise_factor=0.5) gives values on no fixed-point "
            f"grid that holds them all (its outputs on the {FixedType.parse(IN16)} inputs); "
            f"{why}")
    wide = nn.Sequential(QDense(2, 1, bias=False, kernel_quantizer="quantized_bits(28,0,alpha=1)"))
    with torch.no_grad():
        wide[0].weight.copy_(torch.tensor([[3.0, -0.25]]))
    refused(wide, (2,), "0.kernel: quantized weights differ between float32 and float64 "
                        "evaluation (ap_fixed<28,1,AP_RND_CONV,AP_SAT> is 28 bits wide, more "
                        "than float32's 24 significant bits, so float32 rounds or clips some "
                        "weights differently; use at most 24 bits, or a float64 model "
                        "(model.double()))")
    assert IntegerModel(wide.double().eval(), (2,), IN16).compare(torch.randn(20, 2)).exact
    refused(nn.Sequential(nn.LSTM(4, 3)), (4,),
            "the model has no layers to export (it holds LSTM, which the integer engine does "
            "not run)")
    torch.manual_seed(0)
    m = build("jet_mlp", batchnorm=True).train()
    for _ in range(5):
        m(torch.randn(256, 16))
    kb = "quantized_bits(26,3,alpha=1)"
    q = quantize_model(m, {"Dense": {"kernel": k, "bias": kb}}, fold_batchnorm=True)
    with pytest.raises(ExportError, match=r"^fc1.bias: quantized weights differ between float32 "
                                          r"and float64 evaluation \(\d+ of 64 folded biases "
                                          r"beta \+ gamma / sigma \* \(b - mean\) round "
                                          r"differently: .* use fewer bias bits, or a float64 "):
        IntegerModel(q.eval(), (16,), IN16)


def test_quantizers_whose_values_need_too_many_bits_are_named():
    """po2 quantizers of QKeras's default 8 bits (values down to 2**-64) and a relu bound
    that is no short binary fraction raised a bare 'values are not on a binary fixed-point
    grid' naming no layer; a 53-bit table type was blamed on the next layer's accumulator,
    and a po2 weight layer with a zero weight was told to use alpha='auto_po2'."""
    def act(spec):
        return nn.Sequential(QActivation("quantized_bits(8,3)"), QActivation(spec),
                             QDense(3, 2, kernel_quantizer="quantized_bits(4,0,1,alpha=1)",
                                    bias_quantizer="quantized_bits(4,0,1,alpha=1)")).eval()

    with pytest.raises(ExportError, match=re.escape(
            "1: quantizer quantized_po2(8) gives values that need more than 52 fraction bits "
            "(a power-of-two quantizer's values span 2**-64 to 2**63, and values near 0 take "
            "its smallest power; give it fewer bits)")):
        IntegerModel(act("quantized_po2(8)"), (3,))
    assert IntegerModel(act("quantized_po2(4)"), (3,)).compare(torch.randn(40, 3)).exact
    for bound, need in ((0.3, "more than 52 fraction bits"), (2.1, "53-bit fixed point")):
        spec = f"quantized_relu(8,2,relu_upper_bound={bound},is_quantized_clip=False)"
        with pytest.raises(ExportError, match=re.escape(
                f"1: quantizer {spec} gives values that need {need} (a bound or scale that is "
                "not a short binary fraction")):
            IntegerModel(act(spec), (3,))
    m = nn.Sequential(QDense(3, 2, kernel_quantizer="quantized_po2(8)", bias=False)).eval()
    with torch.no_grad():
        m[0].weight[0, 0] = 0.0
    with pytest.raises(ExportError, match=r"^0.kernel: quantizer quantized_po2\(8\) gives values "
                                          r"that need more than 52 fraction bits \(a power-of-"
                                          r"two quantizer's values span 2\*\*-64 to"):
        IntegerModel(m, (3,), "ap_fixed<8,3,AP_RND_CONV,AP_SAT>")


def test_one_element_tensor_bits_apply_to_every_feature():
    """quantized_bits(tensor([6.]), tensor([2.])) broadcasts over the features in PyTorch;
    the engine kept one column ((5, 1) outputs against (5, 4), or a matmul shape error in
    the next layer), and compare broadcast the shapes instead of refusing them."""
    from hetq.export.qonnx import check_qonnx, to_qonnx
    from hetq.quant import quantized_bits

    torch.manual_seed(0)
    m = nn.Sequential(QDense(3, 4, kernel_quantizer="quantized_bits(6,1,alpha=1)", bias=False),
                      QActivation(quantized_bits(torch.tensor([6.0]), torch.tensor([2.0]),
                                                 alpha=1)),
                      QDense(4, 2, kernel_quantizer="quantized_bits(6,1,alpha=1)", bias=False))
    eng = IntegerModel(m.eval(), (3,), "ap_fixed<8,3,AP_RND_CONV,AP_SAT>")
    x = torch.randn(50, 3)
    assert eng(x).shape == (50, 2) and eng.compare(x).exact
    if importlib.util.find_spec("qonnx"):
        assert check_qonnx(eng, to_qonnx(eng), x).exact
    one_bit = quantized_bits(torch.tensor([4.0, 1.0, 4.0]), torch.tensor([0.0, 0.0, 0.0]),
                             alpha=1)  # (it was blamed on 'alpha=auto statistics')
    with pytest.raises(ExportError, match=r"^1: quantizer quantized_bits\(\[4.0 1.0 4.0\].* "
                                          r"has per-feature \(tensor\) parameters, which the "
                                          r"integer engine runs only as plain casts"):
        IntegerModel(nn.Sequential(QDense(3, 3, kernel_quantizer="quantized_bits(4,0,1,alpha=1)",
                                          bias=False), QActivation(one_bit)).eval(), (3,),
                     "ap_fixed<8,3>")
    eng.steps[-1:] = []  # (an engine that does not compute its model: refused, not compared)
    with pytest.raises(ExportError, match=r"^the engine's outputs have shape \(50, 4\), the "
                                          r"PyTorch model's \(50, 2\)"):
        eng.compare(x)


def test_cnn_layers_that_keep_the_grid_run_and_pools_that_do_not_fit_are_refused():
    """Found by a probe of the CNN path: Dropout2d, Unflatten and AdaptiveMaxPool2d were
    refused by the engine as 'float ... on the datapath'; quantize_model dropped an
    AvgPool2d's count_include_pad/ceil_mode/divisor_override (0.44 off, or another output
    shape); fold_batchnorm skipped a Conv1d + BatchNorm1d without a word; an
    AdaptiveAvgPool2d(1) became a (N, C) pooling before a 1x1 convolution silently."""
    import warnings

    from hetq.quant.convert import quantize_model

    k = "quantized_bits(4,0,alpha=1)"
    m = nn.Sequential(QActivation("quantized_bits(8,3)"),
                      QConv2d(1, 4, 3, kernel_quantizer=k, bias_quantizer=k),
                      QActivation("quantized_relu(4,2)"), nn.Dropout2d(0.3),
                      nn.AdaptiveMaxPool2d(2), nn.Flatten(), nn.Unflatten(1, (16,)),
                      QDense(16, 3, kernel_quantizer=k, bias_quantizer=k)).eval()
    eng = IntegerModel(m, (1, 6, 6))
    assert [s.kind for s in eng.steps][3:7] == ["dropout", "adaptivemaxpool2d", "flatten",
                                                "unflatten"]
    assert eng.compare(torch.randn(40, 1, 6, 6) * 2).exact
    cfg = {"AvgPool2d": {"average": "quantized_bits(24,0,alpha=1)"}}
    for pool, odd in ((nn.AvgPool2d(3, 2, 1, count_include_pad=False), "count_include_pad"),
                      (nn.AvgPool2d(2, ceil_mode=True), "ceil_mode=True"),
                      (nn.AvgPool2d(2, divisor_override=3), "divisor_override=3")):
        with pytest.raises(ValueError, match=rf"^layer '1': AvgPool2d\({odd}.*\) has no "
                                             r"quantized form"):
            quantize_model(nn.Sequential(nn.Conv2d(3, 3, 1), pool), cfg)
    with pytest.warns(UserWarning, match=r"^fold_batchnorm: layer '0' \(a Conv1d\) is not "
                                         r"folded with its batch norm"):
        quantize_model(nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4)),
                       {"Conv1d": {"kernel": k}}, fold_batchnorm=True)
    g = {"AdaptiveAvgPool2d": {"average": "quantized_bits(24,0,alpha=1)"}}
    with pytest.warns(UserWarning, match=r"AdaptiveAvgPool2d\(1\) becomes "
                                         r"QGlobalAveragePooling2d, whose output is \(N, C\)"):
        quantize_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1),
                                     nn.Conv2d(4, 10, 1)), g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a Flatten after it: the same model)
        quantize_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(4, 2)), g)


def test_inputs_the_models_own_input_quantizer_clips_are_not_warned():
    """The input-range warning counted the values a model's own input quantizer saturates,
    as it was trained to, as inputs the firmware would see otherwise (50.8% here)."""
    import warnings

    from hetq.export.cli import export_model

    m = nn.Sequential(QActivation("quantized_relu(8,3)"),
                      QDense(4, 2, kernel_quantizer="quantized_bits(4,0,1)",
                             bias_quantizer="quantized_bits(4,0,1)")).eval()
    x = torch.randn(800, 4) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = export_model(m, x, out=lambda line: None)
    assert all(r.exact for r in res["reports"])
    with pytest.warns(UserWarning, match=r"lie outside the input type ap_ufixed<8,3>'s range"):
        export_model(m, x, "ap_ufixed<8,3>", out=lambda line: None)  # (given: it is said)
