"""FPGA resource estimate for the hls4ml latency strategy (io_parallel, everything unrolled,
reuse factor 1). An estimate, not a synthesis result; every table says so.

Model, per dense/conv layer and per multiplication by a constant weight w (b_w weight bits,
b_x input bits):
  * w == 0 (pruned or quantized to zero): nothing;
  * |w| a power of two (incl. binary/ternary/po2 weights): a shift, no multiplier;
  * min(b_w, b_x) >= DSP_MIN_BITS: one DSP (Vivado maps wide products to DSP48 slices);
  * otherwise a LUT multiplier of LUT_PER_BIT_PRODUCT * b_w * b_x LUTs.
  b_w and b_x are each product's own widths where the quantizers are tensor-valued (per-weight
  kernels, per-feature inputs, as the gradient strategy exports), else the layer's types.
  Adder tree: per output, (number of nonzero products - 1) additions of the accumulator width,
  LUT_PER_ADDER_BIT LUTs per bit. Flip-flops: the layer's output register plus the pipeline
  registers of the adder tree, FF_PER_OUTPUT_BIT per output bit per pipeline stage.
  Latency: 1 cycle for the products plus ceil(log2(fan-in) / ADDER_LEVELS_PER_CYCLE) cycles
  for the adder tree per layer, at a 200 MHz clock (5 ns).
The constants are fitted to the published Coelho et al. 2021 figures (anchors.md: BF and Q6
jet taggers, VU9P, 200 MHz): benchmarks/cost_calibration.py prints the fit error. EBOPs
(HGQ) are reported next to it. HGQ's rule of thumb EBOPs ~ LUT + 55 DSP is for HGQ's own
EBOPs and its per-weight designs: for those two dense-layer taggers (hls4ml latency strategy,
uniform types) hetq's EBOPs are about 4x the published LUT + 55 DSP, so EBOPs compare designs
with one another here, not with a LUT budget.
"""

from __future__ import annotations

import math

import torch

from .qtypes import BINARY, BINARY01, PO2, TERNARY, QType

DSP_MIN_BITS = 10
LUT_PER_BIT_PRODUCT = 0.168
LUT_PER_ADDER_BIT = 0.309
FF_PER_OUTPUT_BIT = 0.85
ADDER_LEVELS_PER_CYCLE = 4.0
CLOCK_NS = 5.0


def _power_of_two_mask(w: torch.Tensor) -> torch.Tensor:
    a = w.abs()
    m, _ = torch.frexp(a)
    return (a > 0) & (m == 0.5)


def layer_estimate(w: torch.Tensor, w_t: QType, acc: QType, positions: int, n_add: int,
                   w_bits: torch.Tensor, x_bits: torch.Tensor) -> dict[str, float]:
    """LUT / DSP / FF / latency of one dense or conv stage (see the module docstring).
    `w_bits` / `x_bits`: the weights' / inputs' widths as tensors broadcasting against `w`
    (0-dim for one type; per weight / per feature for tensor-valued quantizers, as
    `cost.model._element_bits` gives them), so that each product is sized by its own
    operands."""
    w = w.detach()
    nz = w != 0
    if w_t.mode in (BINARY, BINARY01, TERNARY, PO2):
        real = torch.zeros_like(nz)
    else:
        real = nz & ~_power_of_two_mask(w)
    wb = torch.broadcast_to(w_bits.to(torch.float64), w.shape)
    xb = torch.broadcast_to(x_bits.to(torch.float64), w.shape)
    on_dsp = real & (torch.minimum(wb, xb) >= DSP_MIN_BITS)
    on_lut = real & ~on_dsp
    dsp = int(on_dsp.sum()) * positions
    mul_units = positions * float((wb * xb)[on_lut].sum())
    n_out = w.shape[0]
    per_out = nz.reshape(n_out, -1).sum(1).clamp_min(1) - 1
    adds = int(per_out.sum()) * positions
    add_units = adds * acc.bits
    stages = 1 + math.ceil(math.log2(max(n_add, 2)) / ADDER_LEVELS_PER_CYCLE)
    ff = n_out * positions * acc.bits * FF_PER_OUTPUT_BIT * stages
    return {"dsp": float(dsp), "lut": LUT_PER_BIT_PRODUCT * mul_units
            + LUT_PER_ADDER_BIT * add_units, "ff": float(ff), "cycles": float(stages),
            "lut_mul_units": float(mul_units), "lut_add_units": float(add_units)}


# published synthesis figures used for the fit (anchors.md §3, Coelho et al. 2021, VU9P)
ANCHORS = {"bf": {"dsp": 3830, "lut": 48321, "ff": 11900, "cycles": 9},
           "q6": {"dsp": 124, "lut": 39782, "ff": 8100, "cycles": 11}}

