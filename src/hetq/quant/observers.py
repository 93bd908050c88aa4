"""Observers: pick fixed-point integer bits from observed ranges (kept apart from the
fake-quantizers, as in torch.ao.quantization).

`get_integer_bits` follows QKeras' `_get_integer_bits` (used by its adaptive activation and
here by post-training quantization): with u = bits - keep_negative magnitude bits,

    i = max(0, ceil(log2 |v|))  for v = max (and min when signed),
    bumped by one if |v| > 2**i - 2**min(i - u, 0)  (v does not fit below the top code),
    (with is_clipping: i = max(0, round(log2 |v|)), no bump: saturate instead of widen),
    result = min(u, max(i_min, i_max)).
"""

from __future__ import annotations

import math

import torch


def _int_bits(v: float, u: int, is_clipping: bool, symmetric_lower: bool = False) -> int:
    v = abs(float(v))
    if v == 0.0:
        return 0
    if is_clipping:
        return max(0, round(math.log2(v)))
    i = max(0, math.ceil(math.log2(v)))
    top = 2.0 ** i - (2.0 ** min(i - u, 0) if not symmetric_lower else 0.0)
    if v > top:
        i += 1
    return i


def get_integer_bits(min_value: float, max_value: float, bits: int, symmetric: bool = True,
                     keep_negative: bool = True, is_clipping: bool = False) -> int:
    """Integer bits (sign excluded, QKeras convention) to hold [min_value, max_value]."""
    if not keep_negative:
        min_value, max_value = max(min_value, 0.0), max(max_value, 0.0)
    u = bits - (1 if keep_negative else 0)
    i_max = _int_bits(max_value, u, is_clipping)
    i_min = _int_bits(min_value, u, is_clipping, symmetric_lower=not symmetric) \
        if keep_negative else 0
    return min(u, max(i_min, i_max))


class MinMaxObserver:
    """Running min/max of the tensors it sees (calibration for post-training quantization)."""

    def __init__(self):
        self.min = math.inf
        self.max = -math.inf

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        return x

    def integer_bits(self, bits: int, keep_negative: bool = True) -> int:
        if self.min > self.max:
            raise ValueError("observer saw no data; run calibration batches first")
        return get_integer_bits(self.min, self.max, bits, True, keep_negative, False)
