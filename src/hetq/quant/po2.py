"""Power-of-two quantizers: `quantized_po2` (signed) and `quantized_relu_po2` (unsigned).

Output = sign * 2**e with e = round(log2|x|) ("rnd") or floor ("floor"); with
quadratic_approximation e = 2 * round(log2 sqrt|x|) (2 * floor(...) with "floor"; even
exponents). e is clipped to [min_exp, max_exp]; |x| < eps maps to 2**min_exp (a po2
quantizer never outputs exact 0).
An exponent sign bit is needed iff max_value is None or > 1:

    quantized_po2(bits):       e_bits = bits - 1 - need_sign,  min_exp = -2**e_bits,
                               max_exp = 2**e_bits - 1
    quantized_relu_po2(bits):  min_exp = -2**(bits - need_sign), max_exp = 2**(bits-need_sign)-1

(max_exp is made even with quadratic_approximation.) max_value saturates |x| before taking
the exponent. Stochastic rounding (training mode only; "floor" takes precedence over it, as
in the reference) picks one of the two neighbouring exponents lo < hi with
P(hi) = (|x| - 2**lo) / (2**hi - 2**lo), so that E[2**e] = |x|.
Gradient: identity (quantized_po2) or the surrogate relu(x, slope) saturated at max_value
(quantized_relu_po2).

`bits` and `max_value` may be tensors that broadcast against the input (then `min_exp` and
`max_exp` are tensors too, and `values()` / `fixed_type()` are None).
"""

from __future__ import annotations

import math

import torch

from .base import EPS, Quantizer, check_bits, check_qnoise, exp2, no_gradient, register, ste
from .fixed import FixedType, smallest_fixed_type


def _clamp(e: torch.Tensor, lo, hi) -> torch.Tensor:
    """clamp with bounds that are numbers or tensors (torch.clamp wants both of one kind)."""
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        lo_t = torch.as_tensor(lo, dtype=e.dtype, device=e.device)
        hi_t = torch.as_tensor(hi, dtype=e.dtype, device=e.device)
        return torch.maximum(torch.minimum(e, hi_t), lo_t)
    return torch.clamp(e, float(lo), float(hi))


class _Po2Base(Quantizer):
    kind = "po2"
    value_sign_bits: int = 0  # bits spent on the sign of the value (1 for quantized_po2)

    def _init_common(self, bits, max_value, use_stochastic_rounding, quadratic_approximation,
                     log2_rounding, qnoise_factor, use_ste):
        check_bits(self.name, bits, 1 + self.value_sign_bits)
        check_qnoise(self.name, qnoise_factor)  # (3 or -2 mixed the values without a word)
        if max_value is not None:
            if isinstance(max_value, bool) or not isinstance(max_value,
                                                             (int, float, torch.Tensor)):
                raise ValueError(f"{self.name}: max_value={max_value!r} must be None or a number")
            lo = float(max_value.min()) if isinstance(max_value, torch.Tensor) else max_value
            if lo < 0:
                raise ValueError(f"{self.name}: max_value={max_value!r} must be >= 0")
        if log2_rounding not in ("rnd", "floor"):
            raise ValueError(f"{self.name}: log2_rounding={log2_rounding!r}; expected 'rnd' or "
                             "'floor'")
        for key, value in dict(
            bits=bits, max_value=max_value, use_stochastic_rounding=use_stochastic_rounding,
            quadratic_approximation=quadratic_approximation, log2_rounding=log2_rounding,
            qnoise_factor=qnoise_factor, use_ste=use_ste,
        ).items():
            self._set_arg(key, value)
        top = self.max_exp
        top = float(top.max()) if isinstance(top, torch.Tensor) else top
        if top > 127:  # (quantized_po2(13): 2**2047, an OverflowError traceback)
            raise ValueError(f"{self.name}: bits={bits!r} gives exponents up to {top:g}, beyond "
                             "float32's range (2**127); use fewer bits (power-of-two weights "
                             "need 8 or so)")

    @property
    def need_exponent_sign(self):
        """1 if max_value is None or > 1 (an exponent sign bit is needed), else 0; a tensor for
        tensor-valued max_value."""
        mv = self.max_value
        if mv is None:
            return 1
        if isinstance(mv, torch.Tensor):
            return (mv > 1).to(torch.get_default_dtype())
        return 1 if mv > 1 else 0

    def _exp_bits(self):
        return self.bits - self.value_sign_bits - self.need_exponent_sign

    @property
    def min_exp(self):
        """Smallest exponent, -2**e_bits (int, or a tensor for tensor-valued parameters)."""
        e = exp2(self._exp_bits())
        return -e if isinstance(e, torch.Tensor) else -int(e)

    @property
    def max_exp(self):
        """Largest exponent, 2**e_bits - 1 (made even with quadratic_approximation)."""
        e = exp2(self._exp_bits())
        hi = e - 1 if isinstance(e, torch.Tensor) else int(e) - 1
        if self.quadratic_approximation:
            hi = hi - (torch.remainder(hi, 2) if isinstance(hi, torch.Tensor) else hi % 2)
        return hi

    def _exponent(self, mag: torch.Tensor, stochastic: bool) -> torch.Tensor:
        """Clipped exponent of magnitudes `mag` (>= 0)."""
        if self.max_value is not None:
            mv = self.max_value
            mag = torch.minimum(mag, mv.to(mag.dtype)) if isinstance(mv, torch.Tensor) else \
                torch.clamp(mag, max=float(mv))
        small = mag < EPS
        safe = torch.where(small, torch.ones_like(mag), mag)
        log2 = torch.log2(safe)
        if self.log2_rounding == "floor":  # floor takes precedence (as in the reference)
            if self.quadratic_approximation:
                e = 2.0 * torch.floor(torch.log2(torch.sqrt(safe)))
            else:
                e = torch.floor(log2)
        elif stochastic:
            k = 2.0 if self.quadratic_approximation else 1.0
            lo = k * torch.floor(log2 / k)
            p_lo = torch.exp2(lo)
            u = p_lo + torch.rand_like(safe) * (torch.exp2(lo + k) - p_lo)
            e = torch.where(u <= safe, lo + k, lo)  # E[2**e] == mag
        elif self.quadratic_approximation:
            e = 2.0 * torch.round(torch.log2(torch.sqrt(safe)))
        else:
            e = torch.round(log2)
        lo_e, hi_e = self.min_exp, self.max_exp
        e = _clamp(e, lo_e, hi_e)
        lo_e = lo_e.to(e.dtype) if isinstance(lo_e, torch.Tensor) else float(lo_e)
        return torch.where(small, lo_e, e)

    def _stochastic_rounds(self) -> bool:
        """Stochastic rounding applies to log2_rounding='rnd' only (floor takes precedence)."""
        return bool(self.use_stochastic_rounding) and self.log2_rounding != "floor"

    def _stochastic_now(self) -> bool:
        return self._stochastic_rounds() and self.training

    def _magnitudes(self) -> torch.Tensor:
        """All reachable output magnitudes (float64, ascending): the exponents min_exp ..
        the exponent of max_value (or max_exp), even ones only with quadratic_approximation.
        Stochastic rounding may also round max_value up to the next (even) exponent, and a
        magnitude just above eps down to the exponent below it."""
        # eps: the smallest magnitude not sent to min_exp, whose exponent may lie below eps
        cands = [0.0, EPS] + [math.ldexp(1.0, e) for e in range(self.min_exp, self.max_exp + 1)]
        mv = self.max_value
        if mv is not None:
            cands.append(float(mv))
        e = self._exponent(torch.tensor(cands, dtype=torch.float64), stochastic=False)
        if self._stochastic_rounds():
            k = 2 if self.quadratic_approximation else 1
            # a magnitude just above eps may round down to the (even) exponent below eps,
            # which no candidate above reaches (those below eps go to min_exp)
            extra = [k * math.floor(math.log2(EPS) / k)]
            if mv is not None and mv >= EPS:
                extra.append(k * math.ceil(math.log2(mv) / k))
            extra = [min(max(x, self.min_exp), self.max_exp) for x in extra]
            e = torch.cat([e, torch.tensor([float(x) for x in extra], dtype=e.dtype)])
        return torch.exp2(torch.unique(e))

    def _signed_values(self) -> bool:  # pragma: no cover - per subclass
        raise NotImplementedError

    def values(self) -> torch.Tensor | None:
        """All reachable outputs (ascending; never 0), None for tensor-valued parameters."""
        if not self.is_scalar:
            return None
        mags = self._magnitudes()
        if self._signed_values():
            mags = torch.cat([-mags.flip(0), mags])
        return mags

    def fixed_type(self) -> FixedType | None:
        """Smallest FixedType holding every value (None when it would be wider than 50 bits or
        the parameters are tensors)."""
        if not self.is_scalar or self.max_exp - self.min_exp > 48:
            return None
        return smallest_fixed_type(self.values(), signed=self._signed_values())

    def max(self) -> float:
        """max(1, max_value or 2**max_exp) (the reference's bound)."""
        mv, top = self.max_value, exp2(self.max_exp)
        if isinstance(mv, torch.Tensor) or isinstance(top, torch.Tensor):
            top = torch.as_tensor(top, dtype=torch.float64)
            if mv is not None:
                mv = torch.as_tensor(mv, dtype=torch.float64)
                top = torch.where(mv > 0, mv, top)
            return max(1.0, float(top.max()))
        return max(1.0, float(mv) if mv else top)

    def _finish(self, x: torch.Tensor, xu: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        """qnoise mixing and the straight-through gradient of the surrogate `xu`."""
        q = self.qnoise_factor
        if not self.use_ste:  # gradient (1 - q) * d xu
            return (1 - q) * xu + q * xq if q != 1.0 else no_gradient(xu, xq)
        if q != 1.0:
            xq = (1 - q) * xu.detach() + q * xq
        return ste(xu, xq)


@register
class quantized_po2(_Po2Base):
    """Signed power of two: sign(x) * 2**e (sign(0) = +1), identity gradient."""

    name = "quantized_po2"
    positional = ("bits", "max_value")
    min_positional = 1
    value_sign_bits = 1

    def __init__(self, bits=8, max_value=None, use_stochastic_rounding=False,
                 quadratic_approximation=False, log2_rounding="rnd", qnoise_factor=1.0,
                 use_ste=True):
        super().__init__()
        self._init_common(bits, max_value, use_stochastic_rounding, quadratic_approximation,
                          log2_rounding, qnoise_factor, use_ste)

    def _signed_values(self) -> bool:
        return True

    def forward(self, x):
        with torch.no_grad():
            sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
            xq = sign * torch.exp2(self._exponent(x.abs(), self._stochastic_now()))
        return self._finish(x, x, xq)

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
    value_sign_bits = 0

    def __init__(self, bits=8, max_value=None, negative_slope=0, use_stochastic_rounding=False,
                 quadratic_approximation=False, log2_rounding="rnd", qnoise_factor=1.0,
                 use_ste=True):
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) \
                or negative_slope < 0:
            raise ValueError(f"{self.name}: negative_slope={negative_slope!r} must be a number "
                             ">= 0")
        self.negative_slope = negative_slope
        self._init_common(bits, max_value, use_stochastic_rounding, quadratic_approximation,
                          log2_rounding, qnoise_factor, use_ste)

    def _signed_values(self) -> bool:
        return bool(self.negative_slope)

    def forward(self, x):
        slope = self.negative_slope
        stochastic = self._stochastic_now()
        with torch.no_grad():
            xq = torch.exp2(self._exponent(torch.relu(x), stochastic))
            if slope:
                neg = -torch.exp2(self._exponent(slope * torch.relu(-x), stochastic))
                xq = torch.where(x >= 0, xq, neg)
        xu = torch.where(x > 0, x, slope * x) if slope else torch.relu(x)
        mv = self.max_value
        if mv is not None:
            # (not torch.minimum: its gradient at x == max_value is 0.5, clamp's is 1)
            if isinstance(mv, torch.Tensor):
                xu = torch.where(xu > mv, mv.to(xu.dtype), xu)
            else:
                xu = torch.clamp(xu, max=float(mv))
        return self._finish(x, xu, xq)

    def min(self) -> float:
        return -self.max() if self.negative_slope else 0.0
