"""Power-of-two quantizers: `quantized_po2` (signed) and `quantized_relu_po2` (unsigned).

Output = sign * 2**e with e = round(log2|x|) ("rnd") or floor ("floor"); with
quadratic_approximation e = 2 * round(log2 sqrt|x|) (even exponents). e is clipped to
[min_exp, max_exp]; |x| < eps maps to 2**min_exp (a po2 quantizer never outputs exact 0).
An exponent sign bit is needed iff max_value is None or > 1:

    quantized_po2(bits):       e_bits = bits - 1 - need_sign,  min_exp = -2**e_bits,
                               max_exp = 2**e_bits - 1
    quantized_relu_po2(bits):  min_exp = -2**(bits - need_sign), max_exp = 2**(bits-need_sign)-1

max_value saturates |x| before taking the exponent. Gradient: identity (quantized_po2) or the
surrogate relu(x, slope) saturated at max_value (quantized_relu_po2).
"""

from __future__ import annotations

import math

import torch

from .base import EPS, Quantizer, check_bits, register, ste
from .fixed import FixedType, smallest_fixed_type


class _Po2Base(Quantizer):
    kind = "po2"

    def _init_common(self, bits, max_value, use_stochastic_rounding, quadratic_approximation,
                     log2_rounding, qnoise_factor, use_ste):
        check_bits(self.name, bits)
        if max_value is not None and max_value < 0:
            raise ValueError(f"{self.name}: max_value={max_value!r} must be >= 0")
        if log2_rounding not in ("rnd", "floor"):
            raise ValueError(f"{self.name}: log2_rounding={log2_rounding!r}; expected 'rnd' or "
                             "'floor'")
        if isinstance(bits, torch.Tensor):
            raise ValueError(f"{self.name}: tensor-valued bits are not supported for po2 "
                             "quantizers (the exponent range is a Python-level constant)")
        for key, value in dict(
            bits=bits, max_value=max_value, use_stochastic_rounding=use_stochastic_rounding,
            quadratic_approximation=quadratic_approximation, log2_rounding=log2_rounding,
            qnoise_factor=qnoise_factor, use_ste=use_ste,
        ).items():
            self._set_arg(key, value)

    @property
    def need_exponent_sign(self) -> int:
        return 1 if self.max_value is None or self.max_value > 1 else 0

    def _exp_range(self) -> tuple[int, int]:  # pragma: no cover - per subclass
        raise NotImplementedError

    @property
    def min_exp(self) -> int:
        return self._exp_range()[0]

    @property
    def max_exp(self) -> int:
        lo, hi = self._exp_range()
        if self.quadratic_approximation and hi % 2:
            hi -= 1  # even exponents only
        return hi

    def _exponent(self, mag: torch.Tensor) -> torch.Tensor:
        """Clipped exponent of magnitudes `mag` (>= 0)."""
        if self.max_value is not None:
            mag = torch.clamp(mag, max=float(self.max_value))
        small = mag < EPS
        safe = torch.where(small, torch.ones_like(mag), mag)
        if self.quadratic_approximation:
            e = 2.0 * torch.round(torch.log2(torch.sqrt(safe)))
        elif self.log2_rounding == "floor":
            e = torch.floor(torch.log2(safe))
        else:
            e = torch.round(torch.log2(safe))
        if self.use_stochastic_rounding and self.training:
            lo = torch.floor(torch.log2(safe))
            p_lo = 2.0 ** lo
            u = p_lo + torch.rand_like(safe) * p_lo  # uniform in [2**lo, 2**(lo+1)]
            e = torch.where(u <= safe, lo + 1.0, lo)  # E[2**e] == mag
        e = torch.clamp(e, float(self.min_exp), float(self.max_exp))
        return torch.where(small, torch.full_like(e, float(self.min_exp)), e)

    def values(self) -> torch.Tensor:
        step = 2 if self.quadratic_approximation else 1
        exps = range(self.min_exp, self.max_exp + 1)
        mags = [math.ldexp(1.0, e) for e in exps if not self.quadratic_approximation
                or e % step == 0 or e == self.min_exp]
        neg = [-m for m in mags] if self._signed_values() else []
        return torch.tensor(sorted(neg + mags), dtype=torch.float64)

    def _signed_values(self) -> bool:  # pragma: no cover - per subclass
        raise NotImplementedError

    def fixed_type(self) -> FixedType | None:
        v = self.values()
        if self.max_exp - self.min_exp > 48:
            return None
        return smallest_fixed_type(v, signed=self._signed_values())

    def max(self) -> float:
        return max(1.0, float(self.max_value) if self.max_value else math.ldexp(1.0,
                                                                               self.max_exp))


@register
class quantized_po2(_Po2Base):
    """Signed power of two: sign(x) * 2**e (sign(0) = +1), identity gradient."""

    name = "quantized_po2"
    positional = ("bits", "max_value")
    min_positional = 1

    def __init__(self, bits=8, max_value=None, use_stochastic_rounding=False,
                 quadratic_approximation=False, log2_rounding="rnd", qnoise_factor=1.0,
                 use_ste=True):
        super().__init__()
        self._init_common(bits, max_value, use_stochastic_rounding, quadratic_approximation,
                          log2_rounding, qnoise_factor, use_ste)

    def _exp_range(self):
        e_bits = int(self.bits) - 1 - self.need_exponent_sign
        return -(2 ** e_bits), 2 ** e_bits - 1

    def _signed_values(self) -> bool:
        return True

    def forward(self, x):
        with torch.no_grad():
            sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
            xq = sign * torch.exp2(self._exponent(x.abs()))
            q = self.qnoise_factor
            if q != 1.0:
                xq = (1 - q) * x + q * xq
        return ste(x, xq) if self.use_ste else xq

    def min(self) -> float:
        return -self.max()


@register
class quantized_relu_po2(_Po2Base):
    """Unsigned power of two of relu(x) (negative inputs give 2**min_exp, not 0); with
    negative_slope, x < 0 gives -2**e(slope * |x|). Gradient of relu(x, slope) saturated at
    max_value."""

    name = "quantized_relu_po2"
    positional = ("bits", "max_value")
    min_positional = 1

    def __init__(self, bits=8, max_value=None, negative_slope=0, use_stochastic_rounding=False,
                 quadratic_approximation=False, log2_rounding="rnd", qnoise_factor=1.0,
                 use_ste=True):
        super().__init__()
        self._init_common(bits, max_value, use_stochastic_rounding, quadratic_approximation,
                          log2_rounding, qnoise_factor, use_ste)
        self.negative_slope = negative_slope

    def _exp_range(self):
        e_bits = int(self.bits) - self.need_exponent_sign
        return -(2 ** e_bits), 2 ** e_bits - 1

    def _signed_values(self) -> bool:
        return bool(self.negative_slope)

    def forward(self, x):
        slope = self.negative_slope
        with torch.no_grad():
            pos = torch.exp2(self._exponent(torch.relu(x)))
            if slope:
                neg = -torch.exp2(self._exponent(slope * torch.relu(-x)))
                xq = torch.where(x >= 0, pos, neg)
            else:
                xq = pos
        xu = torch.where(x > 0, x, slope * x) if slope else torch.relu(x)
        if self.max_value is not None:
            xu = torch.clamp(xu, max=float(self.max_value))
        q = self.qnoise_factor
        if q != 1.0:
            xq = (1 - q) * xu.detach() + q * xq
        return ste(xu, xq) if self.use_ste else xq

    def min(self) -> float:
        return -self.max() if self.negative_slope else 0.0
