"""Property tests: outputs on the quantizer's grid, idempotent, at most 2**bits values."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hetq.quant import get_quantizer

finite = st.floats(-64, 64, allow_nan=False, width=32)
vectors = st.lists(finite, min_size=1, max_size=64)


def fixed_specs():
    bits = st.integers(1, 12)
    return st.one_of(
        st.builds(lambda b, i, s: f"quantized_bits({b},{min(i, b - 1)},{s},alpha=1)", bits,
                  st.integers(-2, 6), st.integers(0, 1)),
        st.builds(lambda b, i: f"quantized_bits({b},{min(i, b)},keep_negative=False)", bits,
                  st.integers(-2, 6)),
        st.builds(lambda b, i: f"quantized_relu({b},{min(i, b)})", bits, st.integers(-2, 6)),
        st.builds(lambda b: f"quantized_tanh({max(b, 2)})", bits),
        st.builds(lambda b: f"quantized_sigmoid({b})", bits),
        st.builds(lambda b: f"quantized_po2({max(b, 2)})", st.integers(2, 6)),
        st.builds(lambda b, m: f"quantized_relu_po2({b},{m})", st.integers(2, 6),
                  st.sampled_from([1, 2, 4, 8])),
        st.sampled_from(["ternary", "ternary(alpha=2)", "binary", "binary(use_01=True)",
                         "quantized_bits(1,0)"]),
    )


@settings(max_examples=150, deadline=None)
@given(spec=fixed_specs(), xs=vectors)
def test_on_grid_idempotent_and_few_values(spec, xs):
    q = get_quantizer(spec)
    q.eval()
    x = torch.tensor(xs, dtype=torch.float32)
    y = q(x)
    values = q.values()
    assert values is not None, spec
    grid = set(values.tolist())
    assert set(y.double().tolist()) <= grid, (spec, xs)
    bits = int(q.bits_value)
    assert len(grid) <= 2 ** max(bits, 1) or spec.startswith("ternary") or "po2" in spec, spec
    ft = q.fixed_type()
    if ft is not None:
        assert ft.contains(y), (spec, ft)
    # idempotent: every quantizer that is a projection onto its grid (not the sigmoid, which
    # maps its output again, nor binary {0,1}, which sends 0 to sign(0) = +1)
    if not spec.startswith("quantized_sigmoid") and "use_01" not in spec:
        assert torch.equal(q(y), y), (spec, xs)


@settings(max_examples=60, deadline=None)
@given(b=st.integers(2, 8), i=st.integers(0, 3), xs=st.lists(finite, min_size=4, max_size=32))
def test_auto_po2_codes_within_levels(b, i, xs):
    q = get_quantizer(f"quantized_bits({b},{min(i, b - 1)},alpha='auto_po2')")
    x = torch.tensor(xs).view(-1, 1).repeat(1, 3).T  # 3 channels
    y = q(x)
    scale = q.scale * 2.0 ** (q.integer - b + 1)
    codes = y / scale
    assert torch.equal(codes, torch.round(codes))
    assert codes.abs().max() <= 2 ** (b - 1) - 1
    # power-of-two channel scales
    e = torch.log2(q.scale)
    assert torch.equal(e, torch.round(e))
