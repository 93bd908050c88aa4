"""Bounded activation quantizers: `quantized_tanh`, `quantized_sigmoid`, `quantized_ulaw`.

quantized_tanh(bits):    m = 2**(bits-1); p = tanh(x) (use_real_tanh) or
                         2 * sigmoid_internal(x) - 1 (= clip(x, -1, 1) with the hard sigmoid);
                         y = clip(round(p m) / m, -1 + symmetric/m, 1 - 1/m)
quantized_sigmoid(bits): m = 2**bits; y = clip(round(sig(x) m) / m, symmetric/m, 1 - 1/m)
quantized_ulaw(bits, integer, symmetric, u): m = 2**(bits-1), mi = 2**integer;
                         r = 2 round(sigmoid_internal(x / mi) m) / m - 1;
                         c = sign(r) log(1 + u|r|) / log(1 + u); y = mi clip(c, -1 + sym/m, 1 - 1/m)
Gradients flow through the rounding (straight-through) and through the clip / tanh / sigmoid
(so they vanish outside the clip range).
"""

from __future__ import annotations

import math

import torch

from .base import Quantizer, check_bits, check_positive, exp2, register, ste
from .fixed import FixedType
from .fixed_point import SIGMOIDS, _largest, stochastic_or_plain_round


def _check_sigmoid(name, sigmoid):
    if sigmoid not in SIGMOIDS:
        raise ValueError(f"{name}: sigmoid={sigmoid!r} not one of {sorted(SIGMOIDS)}")


@register
class quantized_tanh(Quantizer):
    """Signed fixed point in [-1, 1 - 1/m] of tanh(x) (or the hard tanh clip(x, -1, 1))."""

    name = "quantized_tanh"
    kind = "fixed"
    positional = ("bits",)
    min_positional = 1

    def __init__(self, bits=8, use_stochastic_rounding=False, symmetric=False,
                 use_real_tanh=False, sigmoid="hard"):
        super().__init__()
        check_bits(self.name, bits, 2)
        _check_sigmoid(self.name, sigmoid)
        for key, value in dict(bits=bits, use_stochastic_rounding=use_stochastic_rounding,
                               symmetric=symmetric, use_real_tanh=use_real_tanh,
                               sigmoid=sigmoid).items():
            self._set_arg(key, value)

    def forward(self, x):
        m = exp2(self.bits - 1)
        p = torch.tanh(x) if self.use_real_tanh else 2.0 * SIGMOIDS[self.sigmoid](x) - 1.0
        lo = -1.0 + (1.0 if self.symmetric else 0.0) / m
        hi = 1.0 - 1.0 / m
        r = stochastic_or_plain_round(p.detach() * m, self.use_stochastic_rounding,
                                      self.training) / m
        return torch.clamp(ste(p, r), lo, hi)

    def fixed_type(self):
        if not self.is_scalar:
            return None
        return FixedType(int(self.bits), 1, True, "RND_CONV",
                         "SAT_SYM" if self.symmetric else "SAT")

    def max(self):
        return 1.0

    def min(self):
        return -1.0


@register
class quantized_sigmoid(Quantizer):
    """Unsigned fixed point in [symmetric/m, 1 - 1/m] of sigmoid(x), m = 2**bits."""

    name = "quantized_sigmoid"
    kind = "fixed"
    positional = ("bits",)
    min_positional = 1

    def __init__(self, bits=8, symmetric=False, use_real_sigmoid=False,
                 use_stochastic_rounding=False, sigmoid="hard"):
        super().__init__()
        check_bits(self.name, bits)
        _check_sigmoid(self.name, sigmoid)
        for key, value in dict(bits=bits, symmetric=symmetric, use_real_sigmoid=use_real_sigmoid,
                               use_stochastic_rounding=use_stochastic_rounding,
                               sigmoid=sigmoid).items():
            self._set_arg(key, value)

    def forward(self, x):
        m = exp2(self.bits)
        p = torch.sigmoid(x) if self.use_real_sigmoid else SIGMOIDS[self.sigmoid](x)
        r = stochastic_or_plain_round(p.detach() * m, self.use_stochastic_rounding,
                                      self.training) / m
        lo = (1.0 if self.symmetric else 0.0) / m
        return torch.clamp(ste(p, r), lo, 1.0 - 1.0 / m)

    def fixed_type(self):
        if not self.is_scalar:
            return None
        return FixedType(int(self.bits), 0, False, "RND_CONV", "SAT")

    def max(self):
        return 1.0

    def min(self):
        return 0.0


@register
class quantized_ulaw(Quantizer):
    """mu-law companded quantizer (outputs are not on a uniform grid: no FixedType)."""

    name = "quantized_ulaw"
    kind = "other"
    positional = ("bits", "integer", "symmetric")
    min_positional = 1

    def __init__(self, bits=8, integer=0, symmetric=0, u=255.0, sigmoid="hard"):
        super().__init__()
        check_bits(self.name, bits, 2)
        _check_sigmoid(self.name, sigmoid)
        check_positive(self.name, "u", u)  # (0 gave NaN, -1 a math domain error at forward)
        for key, value in dict(bits=bits, integer=integer, symmetric=symmetric, u=u,
                               sigmoid=sigmoid).items():
            self._set_arg(key, value)

    def _compand(self, r: torch.Tensor, m) -> torch.Tensor:
        """clip(sign(r) log(1 + u|r|) / log(1 + u), -1 + symmetric/m, 1 - 1/m)."""
        u = self.u
        log1p_u = torch.log1p(u.to(r.dtype)) if isinstance(u, torch.Tensor) else math.log1p(u)
        c = torch.sign(r) * torch.log1p(u * r.abs()) / log1p_u
        lo = -1.0 + (1.0 if self.symmetric else 0.0) / m
        hi = 1.0 - 1.0 / m
        return torch.clamp(c, lo, hi)  # bounds both numbers or both tensors

    def forward(self, x):
        m = exp2(self.bits - 1)
        mi = exp2(self.integer)
        p = SIGMOIDS[self.sigmoid](x / mi)
        r = 2.0 * ste(p * m, torch.round(p.detach() * m)) / m - 1.0
        return mi * self._compand(r, m)

    def values(self) -> torch.Tensor | None:
        """All outputs (ascending, float64), computed in the default dtype exactly as `forward`
        computes them: companding of r = 2k/m - 1, k = 0..m. None for tensor parameters."""
        if not self.is_scalar:
            return None
        m = exp2(self.bits - 1)
        r = 2.0 * torch.arange(0, int(m) + 1, dtype=torch.get_default_dtype()) / m - 1.0
        return torch.unique(exp2(self.integer) * self._compand(r, m)).to(torch.float64)

    def max(self):
        return _largest(exp2(self.integer))

    def min(self):
        return -self.max()
