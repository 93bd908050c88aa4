"""Quantizers: the reference's test vectors (qkeras-spec §1), gradients, strings, types."""

import math

import pytest
import torch

from hetq.quant import FixedType, get_quantizer, quantizer_names
from hetq.quant.observers import get_integer_bits

T = torch.tensor
X9 = [-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 4.0, 10.0]


def q(spec):
    return get_quantizer(spec)


def close(a, b):
    return torch.allclose(a.double(), T(b).double(), atol=1e-6)


# -- test vectors of the reference --------------------------------------------------------
@pytest.mark.parametrize("spec,inp,out", [
    ("quantized_bits(6,2,0)", X9, [-3, -2, -1, -0.5, 0, 0.5, 1, 3.875, 3.875]),
    ("quantized_bits(6,2,0,keep_negative=False)", X9, [0, 0, 0, 0, 0, 0.5, 1, 3.9375, 3.9375]),
    ("quantized_bits(6,2,1)", [-10, -4, -1, -0.5, 0, 0.5, 1, 4, 10],
     [-3.875, -3.875, -1, -0.5, 0, 0.5, 1, 3.875, 3.875]),
    ("quantized_relu(6,2)", [-3, 0, 2.5625, 3.3671875, 1.5625, 1.046875, 0.054688],
     [0, 0, 2.5625, 3.375, 1.5625, 1.0625, 0.0625]),
    ("quantized_hswish(6,2,0)", X9, [0, -0.375, -0.375, -0.25, 0, 0.25, 0.625, 3.875, 3.875]),
    ("quantized_tanh(4,symmetric=True)", [-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75],
     [-0.875, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75]),
    ("quantized_tanh(4,symmetric=True,use_real_tanh=True)",
     [-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75],
     [-0.75, -0.625, -0.5, -0.25, 0, 0.25, 0.5, 0.625]),
    ("quantized_sigmoid(6,symmetric=True)", [-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75],
     [0.015625, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875]),
    ("ternary(10,5)", [-11, -7, -4, -1, 0, 1, 4, 10], [-10, -10, 0, 0, 0, 0, 0, 10]),
    ("quantized_relu_po2(3,4,log2_rounding='floor')", [-7, -0.12, -0.03, 0, 0.01, 5],
     [0.0625] * 5 + [4]),
])
def test_reference_vectors(spec, inp, out):
    assert close(q(spec)(T(inp)), out)


def test_auto_po2_vector_and_scale():
    x = T([[0.23, 2.76, 0.1, 0.33], [0.53, 0.16, 0.3, 1.43]])
    expected = T([[0.25, 3.0, 0.09375, 0.25], [0.4375, 0, 0.21875, 1.5]])
    for integer, scale in ((2, [0.125, 1, 0.0625, 0.5]), (1, [0.25, 2, 0.125, 1.0])):
        qa = q(f"quantized_bits(4,{integer},alpha='auto_po2')")
        # hetq's channel axis is 0 (PyTorch layout): feed the Keras-shaped tensor transposed
        assert torch.equal(qa(x.T).T, expected)
        assert qa.scale.flatten().tolist() == scale
        # or keep the Keras layout and name the channel axis
        qk = q(f"quantized_bits(4,{integer},alpha='auto_po2',scale_axis=-1)")
        assert torch.equal(qk(x), expected)


def test_get_integer_bits_vector():
    expected = {3.5: 2, 3.751: 3, 8.0: 4, 0.999: 1, 0.9375: 0, 1.875: 1}
    for mx, bits in expected.items():
        assert get_integer_bits(0.0, mx, 4, symmetric=False, keep_negative=False,
                                is_clipping=False) == bits, mx


def test_po2_ranges_and_zero():
    p = q("quantized_po2(4)")
    assert (p.min_exp, p.max_exp) == (-4, 3)
    mags = p(T([1e-9, 0.01, 0.3, 7.0, 100.0])).tolist()
    assert mags == [2 ** -4, 2 ** -4, 0.25, 8.0, 8.0]  # zero maps to 2**min_exp, never 0
    # max_value <= 1 frees the exponent sign bit (3 exponent bits), and saturates magnitudes
    p1 = q("quantized_po2(4,1)")
    assert (p1.min_exp, p1.max_exp) == (-8, 7)
    assert p1(T([5.0, -0.004])).tolist() == [1.0, -(2 ** -8)]
    r = q("quantized_relu_po2(4)")
    assert (r.min_exp, r.max_exp) == (-8, 7)
    assert q("quantized_relu_po2(4,max_value=2)")(T([5.0])).item() == 2.0


def test_auto_scales_match_their_expectation():
    torch.manual_seed(0)
    m = 4.0
    x = (torch.rand(8, 20000) * 2 - 1) * m
    b = q("binary(alpha='auto')")
    b(x)
    assert b.scale.mean().item() == pytest.approx(m / 2, rel=0.02)
    t = q("ternary(alpha='auto')")
    t(x)
    assert t.scale.mean().item() == pytest.approx((m + m / 3) / 2, rel=0.02)


# -- gradients ------------------------------------------------------------------------------
def grad_of(spec, values, train=False):
    x = T(values, requires_grad=True)
    qq = q(spec)
    qq.train(train)
    qq(x).sum().backward()
    return x.grad.tolist()


def test_gradients_of_the_straight_through_estimators():
    # quantized_bits: identity everywhere, also far outside the range
    assert grad_of("quantized_bits(4,0,1)", [-10.0, 0.3, 10.0]) == [1.0, 1.0, 1.0]
    assert grad_of("quantized_bits(4,0,1,alpha='auto_po2')", [-1.0, 0.3, 2.0]) == [1, 1, 1]
    # quantized_relu(4,1): max = 2 - 2**-2 = 1.75; 1 on (0, max], 0 above, 0 below 0
    assert grad_of("quantized_relu(4,1)", [-1.0, 0.5, 1.7, 3.0]) == [0.0, 1.0, 1.0, 0.0]
    # leaky: the slope below 0
    assert grad_of("quantized_relu(4,1,negative_slope=0.25)", [-1.0, 0.5, 3.0]) == [0.25, 1, 0]
    # binary/ternary with alpha None: tanh surrogate; with alpha: identity
    g = grad_of("binary", [0.5, -2.0])
    assert g == pytest.approx([1 - math.tanh(0.5) ** 2, 1 - math.tanh(2.0) ** 2])
    assert grad_of("ternary(alpha=1)", [0.5, -2.0]) == [1.0, 1.0]
    # quantized_tanh: through the hard tanh clip -> 0 outside [-1, 1]
    assert grad_of("quantized_tanh(4)", [-2.0, 0.3, 2.0]) == [0.0, 1.0, 0.0]
    # po2: identity; relu_po2: relu surrogate saturating at max_value
    assert grad_of("quantized_po2(4)", [-3.0, 0.2]) == [1.0, 1.0]
    assert grad_of("quantized_relu_po2(4,max_value=2)", [-1.0, 1.0, 3.0]) == [0.0, 1.0, 0.0]


# -- tensor-valued parameters ---------------------------------------------------------------
def test_tensor_bits_equal_scalar_quantizers_row_by_row():
    torch.manual_seed(1)
    x = torch.randn(5, 40) * 3
    bits = T([2.0, 3.0, 4.0, 6.0, 8.0]).view(-1, 1)
    integer = T([0.0, 1.0, 1.0, 2.0, 0.0]).view(-1, 1)
    for name in ("quantized_bits", "quantized_relu"):
        out = get_quantizer(f"{name}(4,0)")
        vec = type(out)(bits=bits, integer=integer)
        y = vec(x)
        for i in range(5):
            ref = type(out)(int(bits[i]), int(integer[i]))(x[i])
            assert torch.equal(y[i], ref), (name, i)


def test_population_dimension_broadcasts():
    torch.manual_seed(2)
    w = torch.randn(16, 8)
    bits = T([3.0, 5.0, 8.0]).view(3, 1, 1)
    y = q("quantized_bits(4,0,1)").__class__(bits=bits, integer=0, symmetric=1)(w)
    assert y.shape == (3, 16, 8)
    for k, b in enumerate((3, 5, 8)):
        assert torch.equal(y[k], q(f"quantized_bits({b},0,1)")(w))


# -- stochastic quantizers --------------------------------------------------------------------
def test_stochastic_quantizers_sample_only_in_training():
    torch.manual_seed(3)
    x = torch.randn(64, 32) * 0.5
    for spec, det in (("stochastic_ternary", "ternary"), ("stochastic_binary", "binary"),
                      ("stochastic_ternary('auto')", "ternary('auto')")):
        s = q(spec)
        s.train()
        a, b = s(x), s(x)
        assert not torch.equal(a, b), spec
        s.eval()
        assert torch.equal(s(x), q(det)(x)), spec
    sr = q("quantized_bits(4,0,1,use_stochastic_rounding=True)")
    sr.train()
    v = torch.full((20000,), 0.3)
    assert sr(v).mean().item() == pytest.approx(0.3, abs=0.01)  # unbiased in expectation
    sr.eval()
    assert torch.equal(sr(v), q("quantized_bits(4,0,1)")(v))


# -- strings, configs, errors ---------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    "quantized_relu(3)", "quantized_bits(4,0,1,alpha='auto_po2')", "stochastic_ternary('auto')",
    "ternary", "quantized_relu_po2(6, quadratic_approximation=True)",
    "binary(alpha='auto_po2')", "quantized_bits(6,0,alpha=1)", "quantized_po2(4,1)",
    "quantized_tanh(6,symmetric=True)", "quantized_sigmoid(5)", "quantized_ulaw(8,1)",
    "quantized_hswish(6,2)", "binary(use_01=True)", "stochastic_binary(alpha='auto')",
    "quantized_relu(4,1,negative_slope=0.25)", "quantized_bits([4 5 6],0)",
])
def test_string_and_dict_round_trip(spec):
    a = q(spec)
    assert q(str(a)) == a
    assert str(q(str(a))) == str(a)
    assert q(a.to_dict()) == a


def test_canonical_strings():
    assert str(q("quantized_bits(6,0,alpha=1)")) == "quantized_bits(6,0,alpha=1)"
    assert str(q("quantized_relu(3)")) == "quantized_relu(3,0)"
    assert str(q("ternary")) == "ternary()"
    assert q("relu").name == "relu"  # float activations fall through


def test_every_registered_name_parses_bare():
    for name in quantizer_names():
        assert q(name).name == name


def test_bad_specs_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown quantizer 'quantised_bits'.*quantized_bits"):
        q("quantised_bits(4)")
    with pytest.raises(ValueError, match=r"bits must be >= 1, got 0"):
        q("quantized_bits(0,0)")
    with pytest.raises(ValueError, match=r"integer=9 > bits=4"):
        q("quantized_bits(4,9)")
    with pytest.raises(ValueError, match=r"bad arguments in 'quantized_relu\(4, foo=1\)'"):
        q("quantized_relu(4, foo=1)")
    with pytest.raises(ValueError, match="cannot parse"):
        q("quantized_bits(4,")
    with pytest.raises(ValueError, match="alpha='auto_p2'"):
        q("quantized_bits(4,0,alpha='auto_p2')")


# -- fixed types ----------------------------------------------------------------------------
def test_fixed_types_follow_ap_fixed_meaning():
    assert q("quantized_bits(6,0,alpha=1)").fixed_type() == FixedType(6, 1, True, "RND_CONV",
                                                                       "SAT")
    assert q("quantized_bits(8,3,1)").fixed_type() == FixedType(8, 4, True, "RND_CONV",
                                                                "SAT_SYM")
    assert q("quantized_bits(6,2,keep_negative=False)").fixed_type() == FixedType(
        6, 2, False, "RND_CONV", "SAT")
    assert q("quantized_relu(6,0)").fixed_type().to_hls() == "ap_ufixed<6,0,AP_RND_CONV,AP_SAT>"
    assert q("quantized_bits(4,0,alpha='auto_po2')").fixed_type() is None
    qb = q("quantized_bits(3,1)")
    assert qb.values().tolist() == [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    assert (qb.max(), qb.min()) == (2.0, -2.0)
    assert q("ternary").values().tolist() == [-1.0, 0.0, 1.0]
    ft = FixedType(6, 1)
    assert (ft.step, ft.min_value, ft.max_value) == (2 ** -5, -1.0, 1 - 2 ** -5)
    # ap_fixed defaults: truncate and wrap; QKeras-style: round half to even and saturate
    assert ft.cast(T([0.99, -3.0])).tolist() == [0.96875, -1.0]
    assert FixedType(6, 1, True, "TRN", "WRAP").cast(T([1.0])).tolist() == [-1.0]
    sat = FixedType(6, 1, True, "RND_CONV", "SAT")
    assert sat.cast(T([0.99, -3.0, 1.5 / 32, 2.5 / 32])).tolist() == [0.96875, -1.0, 2 / 32,
                                                                      2 / 32]


def test_no_silent_auto_po2_switch():
    # QKeras turns a kernel quantizer with alpha=None into alpha='auto_po2' inside layers;
    # hetq keeps plain fixed point, so the weights stay on the 2**-3 grid
    from hetq.quant.layers import QDense

    torch.manual_seed(4)
    layer = QDense(16, 8, kernel_quantizer="quantized_bits(4,0)")
    w = layer.quantized_weights()["kernel"]
    assert torch.equal(w * 8, torch.round(w * 8))
    assert torch.equal(w, q("quantized_bits(4,0)")(layer.weight))
