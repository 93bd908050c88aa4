"""Fixed-point quantizers: `quantized_bits`, `quantized_relu`, `quantized_hswish`.

Numerics follow QKeras (see the formulas in each docstring). Rounding is half-to-even
(`torch.round`), then saturation. Gradients are straight-through as in the reference.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import (
    EPS,
    MAX_BITS,
    Quantizer,
    check_bits,
    check_positive,
    check_qnoise,
    check_scale,
    check_whole,
    exp2,
    no_gradient,
    register,
    ste,
)
from .fixed import FixedType
from .scale import least_squares_scale, po2, reduce_axes


def stochastic_or_plain_round(y: torch.Tensor, stochastic: bool, training: bool) -> torch.Tensor:
    """round(y) half-to-even; in training with stochastic rounding, floor(y + U[0,1)) so that
    P(round up) = frac(y)."""
    if stochastic and training:
        return torch.floor(y + torch.rand_like(y))
    return torch.round(y)


def _round_clip_ste(x: torch.Tensor, inv: float, lo: float, hi: float,
                    step: float) -> torch.Tensor:
    """clip(round(x * inv), lo, hi) * step + (x - stop_gradient(x)): forward value exactly the
    quantized one, gradient identity. Written with in-place ops on one temporary: for tiny
    models the cost is allocations and kernel launches, not arithmetic (custom autograd
    Functions and `clamp` measured several times slower here)."""
    xd = x.detach()
    return (xd * inv).round_().clamp_(lo, hi).mul_(step).add_(x - xd)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _log2_int(v: float) -> int | None:
    """log2(v) if v is a positive power of two, else None."""
    if not _is_number(v) or v <= 0:
        return None
    m, e = math.frexp(v)
    return e - 1 if m == 0.5 else None


def _largest(v: Any) -> float:
    """v as a float; the largest element for a tensor."""
    return float(v.max()) if isinstance(v, torch.Tensor) else float(v)


def _check_integer(name: str, bits: Any, integer: Any) -> None:
    check_whole(name, "integer bits", integer)
    # element-wise: a population may pair large integer with large bits
    if isinstance(bits, torch.Tensor) or isinstance(integer, torch.Tensor):
        too_big = bool((torch.as_tensor(integer) > torch.as_tensor(bits)).any())
    else:
        too_big = float(integer) > float(bits)
    if too_big:
        raise ValueError(
            f"{name}: integer={integer!r} > bits={bits!r}; the integer bits must fit in the width "
            "(hetq rejects this, QKeras silently accepts it)"
        )
    lo = float(torch.as_tensor(integer).min())
    if lo < -MAX_BITS:  # (-1100: a ZeroDivisionError; -150: nan in float32)
        raise ValueError(f"{name}: integer={integer!r}; expected >= -{MAX_BITS} (values below "
                         f"2**-{MAX_BITS} underflow the float grid)")


@register
class quantized_bits(Quantizer):
    """Signed or unsigned fixed point, optionally with a per-channel scale `alpha`.

    Fixed path (alpha None or a number/tensor), with u = bits - keep_negative, m = 2**u,
    mi = 2**integer:
        k  = clip(round(x * m / mi), keep_negative * (symmetric - m), m - 1)
        xq = alpha * mi * k / m            (grid step 2**(integer - bits + keep_negative))
    and for u == 0 (1-bit signed) xq = alpha * sign(x), sign(0) = +1.

    Auto path (alpha 'auto' or 'auto_po2'): per output channel (PyTorch layout: axis 0 of a
    weight, unlike QKeras' last axis; `scale_axis` overrides) with x' = x / mi and
    L = 2**bits - 2 levels: s = 2 max|x'| / L; for 'auto_po2' s = po2(s), then five rounds of
    z = sign(x') min(floor(|x'|/s + 0.5), L/2), s = po2(LS(x', z)). Output mi * s * z.
    `self.scale` holds s * 2**(bits - keep_negative), the multiplier relative to the plain
    fixed-point grid.

    Gradient: identity everywhere (the clip sits inside the straight-through part).
    hetq never switches alpha=None to 'auto_po2' behind your back (QKeras does in layers).
    """

    name = "quantized_bits"
    kind = "fixed"
    positional = ("bits", "integer", "symmetric")
    min_positional = 2

    def __init__(
        self,
        bits=8,
        integer=0,
        symmetric=0,
        keep_negative=True,
        alpha=None,
        use_stochastic_rounding=False,
        scale_axis=None,
        qnoise_factor=1.0,
        use_ste=True,
        min_po2_exponent=None,
        max_po2_exponent=None,
        post_training_scale=None,
    ):
        super().__init__()
        check_bits(self.name, bits)
        _check_integer(self.name, bits, integer)
        if isinstance(alpha, str):
            if alpha not in ("auto", "auto_po2"):
                raise ValueError(
                    f"{self.name}: alpha={alpha!r} is not one of None, a number, a tensor, "
                    "'auto', 'auto_po2'"
                )
            symmetric = 1  # as in the reference: string alpha forces a symmetric grid
            if float(bits.min() if isinstance(bits, torch.Tensor) else bits) < 2:
                # L = 2**bits - 2 = 0 levels: the reference's scale is inf and its output NaN
                raise ValueError(
                    f"{self.name}: bits={bits!r} with alpha={alpha!r} has no levels to scale "
                    "(2**bits - 2 = 0; QKeras returns NaN); use bits >= 2, or "
                    f"binary(alpha={alpha!r}) for a scaled sign, or bits=1 with alpha=None or "
                    "a number")
        if (min_po2_exponent is not None or max_po2_exponent is not None) and \
                alpha != "auto_po2":
            raise ValueError(f"{self.name}: min/max_po2_exponent need alpha='auto_po2', got "
                             f"alpha={alpha!r}")
        if post_training_scale is not None and not isinstance(alpha, str):
            raise ValueError(f"{self.name}: post_training_scale needs alpha='auto' or 'auto_po2'")
        if (min_po2_exponent is not None and max_po2_exponent is not None
                and min_po2_exponent > max_po2_exponent):
            raise ValueError(f"{self.name}: min_po2_exponent={min_po2_exponent} is above "
                             f"max_po2_exponent={max_po2_exponent}")
        check_scale(self.name, alpha)
        if scale_axis is not None and (isinstance(scale_axis, bool)
                                       or not isinstance(scale_axis, int)):
            raise ValueError(f"{self.name}: scale_axis={scale_axis!r}; expected an axis "
                             "(a whole number) or None")
        if symmetric not in (0, 1):  # (True and False included)
            raise ValueError(f"{self.name}: symmetric={symmetric!r}; expected 0 or 1")
        check_qnoise(self.name, qnoise_factor)
        for key, value in dict(
            bits=bits, integer=integer, symmetric=symmetric, keep_negative=keep_negative,
            alpha=alpha, use_stochastic_rounding=use_stochastic_rounding, scale_axis=scale_axis,
            qnoise_factor=qnoise_factor, use_ste=use_ste, min_po2_exponent=min_po2_exponent,
            max_po2_exponent=max_po2_exponent, post_training_scale=post_training_scale,
        ).items():
            self._set_arg(key, value)

    # -- numerics ------------------------------------------------------------------------
    def _fixed(self, x: torch.Tensor) -> torch.Tensor:
        kn = 1 if self.keep_negative else 0
        u = self.bits - kn
        m = exp2(u)
        mi = exp2(self.integer)
        alpha = 1.0 if self.alpha is None else self.alpha
        rnd = stochastic_or_plain_round
        if isinstance(u, torch.Tensor) or isinstance(mi, torch.Tensor):
            lo = kn * (self.symmetric - m)
            k = torch.clamp(rnd(x * (m / mi), self.use_stochastic_rounding, self.training),
                            lo, m - 1)
            xq = k * (mi / m)
            if kn and isinstance(u, torch.Tensor):  # 1-bit signed members: alpha * sign(x)
                xq = torch.where(u == 0, torch.where(x >= 0, 1.0, -1.0).to(x.dtype), xq)
            return xq * alpha if self.alpha is not None else xq
        if u == 0:
            xq = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
        else:
            inv = m / mi
            lo = -m + self.symmetric if kn else 0.0
            k = rnd(x * inv, self.use_stochastic_rounding, self.training).clamp_(lo, m - 1)
            xq = k * (mi / m)
        return xq if self.alpha is None else xq * alpha

    def _auto(self, x: torch.Tensor) -> torch.Tensor:
        mi = exp2(self.integer)
        xs = x / mi
        levels = exp2(self.bits) - 2.0
        half = levels / 2.0
        axes = reduce_axes(x, self.scale_axis)
        m = exp2(self.bits - (1 if self.keep_negative else 0))
        ax = xs.abs()

        def codes(s):
            return torch.sign(xs) * torch.minimum(torch.floor(ax / s + 0.5),
                                                  torch.as_tensor(half, dtype=x.dtype))

        if self.post_training_scale is not None:
            s = torch.as_tensor(self.post_training_scale, dtype=x.dtype, device=x.device) / m
        else:
            if axes is None:  # rank-1: one scale for the max step
                s = 2.0 * ax.max() / levels
            else:
                s = 2.0 * ax.amax(dim=axes, keepdim=True) / levels
            # an all-zero channel (codes 0 whatever s is) only; a floor at eps coarsened the
            # grid of small channels (16 bits below max |x| = 3.3e-3)
            s = torch.where(s > 0, s, torch.full_like(s, EPS))  # (scale as it was: ~eps)
            if self.alpha == "auto_po2":
                s = self._po2(s)
                for _ in range(5):
                    s = self._po2(least_squares_scale(xs, codes(s), axes))
        z = codes(s)
        self.scale = (s * m).detach()
        return mi * s * z

    def _po2(self, s: torch.Tensor) -> torch.Tensor:
        return po2(s, self.min_po2_exponent, self.max_po2_exponent)

    def _fast_constants(self):
        """(inv, lo, hi, step) for plain scalar fixed point with deterministic rounding."""
        if not ((self.alpha is None or _is_number(self.alpha)) and self.is_scalar
                and self.qnoise_factor == 1.0 and self.use_ste
                and not self.use_stochastic_rounding
                and self.bits - (1 if self.keep_negative else 0) > 0):
            return False
        kn = 1 if self.keep_negative else 0
        m = exp2(self.bits - kn)
        mi = exp2(self.integer)
        lo = -m + self.symmetric if kn else 0.0
        step = mi / m if self.alpha is None else mi / m * self.alpha
        return (m / mi, float(lo), m - 1.0, step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.fast_constants()
        if c:
            return _round_clip_ste(x, *c)
        with torch.no_grad():
            xq = self._auto(x) if isinstance(self.alpha, str) else self._fixed(x)
        q = self.qnoise_factor
        if not self.use_ste:  # gradient 1 - q
            return (1 - q) * x + q * xq if q != 1.0 else no_gradient(x, xq)
        if q != 1.0:
            xq = (1 - q) * x + q * xq
        return ste(x, xq)

    # -- type information ----------------------------------------------------------------
    def fixed_type(self) -> FixedType | None:
        if not self.is_scalar or isinstance(self.alpha, str):
            return None
        shift = 0 if self.alpha is None else _log2_int(self.alpha)
        if shift is None:
            return None
        if self.keep_negative:
            if self.bits == 1:
                return None  # outputs +-alpha: a binary, not an ap_fixed grid
            return FixedType(int(self.bits), int(self.integer) + 1 + shift, True, "RND_CONV",
                             "SAT_SYM" if self.symmetric else "SAT")
        return FixedType(int(self.bits), int(self.integer) + shift, False, "RND_CONV", "SAT")

    def max(self) -> float:
        """max(1, 2**integer) (1 for 1-bit signed); the largest over tensor-valued members."""
        u = self.bits - (1 if self.keep_negative else 0)
        top = exp2(self.integer)
        if isinstance(u, torch.Tensor) or isinstance(top, torch.Tensor):
            top = torch.where(torch.as_tensor(u) > 0, torch.as_tensor(top, dtype=torch.float64),
                              1.0)
            return max(1.0, float(top.max()))
        return max(1.0, float(top)) if u > 0 else 1.0

    def min(self) -> float:
        return -self.max() if self.keep_negative else 0.0

    def values(self) -> torch.Tensor | None:
        ft = self.fixed_type()
        if ft is not None:
            return ft.values()
        if self.is_scalar and self.keep_negative and self.bits == 1 and not isinstance(
                self.alpha, str):
            a = 1.0 if self.alpha is None else float(self.alpha)
            return torch.tensor([-a, a], dtype=torch.float64)
        return None


@register
class quantized_hswish(quantized_bits):
    """Quantized hard swish: h = x * clip(x + relu_shift, 0, relu_upper_bound) / relu_upper_bound,
    then `quantized_bits(bits, integer, symmetric, keep_negative=True, alpha)` of h."""

    name = "quantized_hswish"
    positional = ("bits", "integer", "symmetric")

    def __init__(self, bits=8, integer=0, symmetric=0, alpha=None, use_stochastic_rounding=False,
                 scale_axis=None, qnoise_factor=1.0, relu_shift=3, relu_upper_bound=6):
        super().__init__(bits, integer, symmetric, True, alpha, use_stochastic_rounding,
                         scale_axis, qnoise_factor)
        check_positive(self.name, "relu_upper_bound", relu_upper_bound)  # (0 gave NaN)
        if isinstance(relu_shift, bool) or not isinstance(relu_shift, (int, float)) or \
                not math.isfinite(relu_shift):
            raise ValueError(f"{self.name}: relu_shift={relu_shift!r}; expected a number")
        self.relu_shift = relu_shift
        self.relu_upper_bound = relu_upper_bound

    def forward(self, x):
        h = x * torch.clamp(x + self.relu_shift, 0, self.relu_upper_bound) / self.relu_upper_bound
        return super().forward(h)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """QKeras' internal 'hard' sigmoid: clip(0.5 x + 0.5, 0, 1) (not Keras' 0.2 x + 0.5)."""
    return torch.clamp(0.5 * x + 0.5, 0.0, 1.0)


def smooth_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """clip(0.1875 x + 0.5, 0, 1)."""
    return torch.clamp(0.1875 * x + 0.5, 0.0, 1.0)


SIGMOIDS = {"hard": hard_sigmoid, "smooth": smooth_sigmoid, "real": torch.sigmoid}


@register
class quantized_relu(Quantizer):
    """Unsigned fixed-point ReLU (optionally leaky, or sigmoid-based).

    n = bits - (negative_slope != 0), m = 2**n, mi = 2**integer, step mf = 2**(integer - n):
        xq = mi * clip(round(x * m / mi) / m, 0, 1 - 1/m)        grid step mf, max mi - mf
    leaky: + clip(round(slope * x * m / mi) * mi / m, -slope * mi, 0).
    use_sigmoid: p = sigmoid(x / mi) * m, xq = mi * clip(2 round(p) / m - 1, 0, 1 - 1/m);
    leaky: + mi * slope * clip(2 round(slope * p) / (slope * m) - 1, -1, 0).
    Gradient ("clipped ReLU STE"): 1 on (0, mi - mf], slope below 0, 0 above the max.
    """

    name = "quantized_relu"
    kind = "fixed"
    positional = ("bits", "integer", "use_sigmoid")
    min_positional = 2

    def __init__(self, bits=8, integer=0, use_sigmoid=0, negative_slope=0.0,
                 use_stochastic_rounding=False, relu_upper_bound=None, is_quantized_clip=True,
                 qnoise_factor=1.0, use_ste=True, sigmoid="hard"):
        super().__init__()
        check_bits(self.name, bits)
        _check_integer(self.name, bits, integer)
        if negative_slope and _log2_int(negative_slope) is None:
            raise ValueError(f"{self.name}: negative_slope={negative_slope!r} must be 0 or a "
                             "power of two")
        if sigmoid not in SIGMOIDS:
            raise ValueError(f"{self.name}: sigmoid={sigmoid!r} not one of {sorted(SIGMOIDS)}")
        check_qnoise(self.name, qnoise_factor)
        if relu_upper_bound is not None:
            check_positive(self.name, "relu_upper_bound", relu_upper_bound)
        if negative_slope and float(torch.as_tensor(bits).min()) < 2:
            raise ValueError(f"{self.name}: bits={bits!r} with negative_slope="
                             f"{negative_slope!r} leaves no bits for the positive values (the "
                             "slope takes one); use bits >= 2")
        for key, value in dict(
            bits=bits, integer=integer, use_sigmoid=use_sigmoid, negative_slope=negative_slope,
            use_stochastic_rounding=use_stochastic_rounding, relu_upper_bound=relu_upper_bound,
            is_quantized_clip=is_quantized_clip, qnoise_factor=qnoise_factor, use_ste=use_ste,
            sigmoid=sigmoid,
        ).items():
            self._set_arg(key, value)

    def _fast_constants(self):
        """(inv, step, top) for the plain clipped ReLU with deterministic rounding."""
        if (self.negative_slope or self.use_sigmoid or not self.is_quantized_clip
                or not self.use_ste or self.qnoise_factor != 1.0
                or self.use_stochastic_rounding or not self.is_scalar):
            return False
        m, mi = exp2(self.bits), exp2(self.integer)
        return (m / mi, mi / m, mi - mi / m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.fast_constants()
        if c:
            # surrogate relu(x) up to top, then top (QKeras': gradient 1 on (0, top], which
            # hardtanh's (0, top) missed at top), plus the rounding as a detached correction;
            # clipping first equals QKeras' round-then-clip because 0 and top are on the grid
            inv, step, top = c
            # (x > top, not x <= top: a NaN stays NaN, it came out as top)
            xu = torch.where(x > top, top, torch.relu(x))
            xd = xu.detach()
            return (xd * inv).round_().mul_(step).add_(xu - xd)
        slope = self.negative_slope
        n = self.bits - (1 if slope else 0)
        m = exp2(n)
        mi = exp2(self.integer)
        top = mi - mi / m
        rnd = stochastic_or_plain_round
        sr, tr = self.use_stochastic_rounding, self.training
        with torch.no_grad():
            if self.use_sigmoid:
                p = SIGMOIDS[self.sigmoid](x / mi) * m
                v = (2.0 * torch.round(p) / m - 1.0).clamp_min(0.0)
                xq = mi * (torch.minimum(v, 1.0 - 1.0 / m) if isinstance(m, torch.Tensor)
                           else v.clamp_max(1.0 - 1.0 / m))
                if slope:
                    neg = (2.0 * torch.round(slope * p) / (slope * m) - 1.0).clamp(-1.0, 0.0)
                    xq = xq + mi * slope * neg
            else:
                inv = m / mi
                xq = torch.clamp(rnd(x * inv, sr, tr), torch.zeros_like(x), m - 1.0) * (mi / m) \
                    if isinstance(m, torch.Tensor) else \
                    torch.clamp(rnd(x * inv, sr, tr), 0.0, m - 1.0) * (mi / m)
                if slope:
                    zero = torch.zeros_like(mi) if isinstance(mi, torch.Tensor) else 0.0
                    neg = torch.clamp(rnd(slope * x * inv, sr, tr) / inv, -slope * mi, zero)
                    xq = xq + neg
            if self._clips_at_bound():  # (QKeras: the output too, not only the surrogate)
                xq = torch.minimum(xq, torch.as_tensor(self.relu_upper_bound, dtype=xq.dtype,
                                                       device=xq.device))
        # surrogate whose gradient the output takes
        if self.is_quantized_clip:
            if isinstance(top, torch.Tensor):  # keep the slope below 0 (leaky) here too
                xr = torch.where(x > 0, x, slope * x) if slope else torch.relu(x)
                xu = torch.where(x > top, top, xr)
            else:
                # (not clamp(x, 0, top): its gradient is 1 at 0 too, where QKeras' is 0)
                xu = torch.where(x > top, top, torch.relu(x) if not slope else
                                 torch.where(x > 0, x, slope * x))
        elif self.relu_upper_bound is not None:
            xu = torch.clamp(x, max=self.relu_upper_bound)
            xu = torch.where(xu > 0, xu, slope * xu) if slope else torch.relu(xu)
        else:
            xu = torch.where(x > 0, x, slope * x) if slope else torch.relu(x)
        q = self.qnoise_factor
        if not self.use_ste:  # gradient (1 - q) d xu
            return (1 - q) * xu + q * xq if q != 1.0 else no_gradient(xu, xq)
        if q != 1.0:
            xq = (1 - q) * xu.detach() + q * xq
        return ste(xu, xq)

    def _clips_at_bound(self) -> bool:
        """QKeras clips the output at relu_upper_bound when is_quantized_clip is off."""
        return bool(self.relu_upper_bound) and not self.is_quantized_clip

    def fixed_type(self) -> FixedType | None:
        ft = self._grid_type()
        if ft is None or not self._clips_at_bound():
            return ft
        # the clip at the bound: a bound between grid points is a value of no plain type
        vals, bound = self._grid_values(), float(self.relu_upper_bound)
        return ft if bound >= float(vals.max()) or bool((vals == bound).any()) else None

    def values(self) -> torch.Tensor | None:
        """All outputs; for the leaky ReLU exactly the grid points it reaches (its FixedType
        may be wider than `bits` to hold -slope * 2**integer); with the clip at
        relu_upper_bound, the grid's values clipped there."""
        vals = self._grid_values()
        if vals is None or not self._clips_at_bound():
            return vals
        return torch.unique(vals.clamp_max(float(self.relu_upper_bound)))

    def _grid_type(self) -> FixedType | None:
        if not self.is_scalar:
            return None
        b, i = int(self.bits), int(self.integer)
        # use_sigmoid: the grid has step 2 mi/m, but the clip at 1 - 1/m adds mi (1 - 1/m) on
        # top, so the type holding every value is the plain ap_ufixed<b, i>
        if self.negative_slope:
            # leaky: steps of 2**(i - n), n = b - 1, and the saturation value -slope * 2**i,
            # which lies below that grid's step when slope < 2**-n (then one more frac bit each)
            e = _log2_int(self.negative_slope)
            integer = max(i, i + e) + 1
            frac = max(b - 1 - i, -i - e)
            return FixedType(integer + frac, integer, True, "RND_CONV", "SAT")
        return FixedType(b, i, False, "RND_CONV", "SAT")

    def _grid_values(self) -> torch.Tensor | None:
        if not (self.is_scalar and self.negative_slope and not self.use_sigmoid):
            ft = self._grid_type()
            return None if ft is None else ft.values()
        m, mi, slope = 2.0 ** (int(self.bits) - 1), 2.0 ** int(self.integer), self.negative_slope
        step = mi / m
        pos = torch.arange(0, int(m), dtype=torch.float64) * step
        neg = torch.arange(math.ceil(-slope * m), 0, dtype=torch.float64) * step
        return torch.unique(torch.cat([neg, torch.tensor([-slope * mi], dtype=torch.float64),
                                       pos]))

    def max(self) -> float:
        return max(1.0, _largest(exp2(self.integer)))

    def min(self) -> float:
        return -self.negative_slope * _largest(exp2(self.integer)) if self.negative_slope else 0.0
