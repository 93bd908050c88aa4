"""Binary and ternary quantizers (deterministic and stochastic).

binary:   k = sign(x) (sign(0) = +1), or (k + 1) / 2 with use_01; output scale * k with
          scale = 1 (alpha None), alpha, or the least-squares per-channel scale
          LS(x, k) = mean(x k) / mean(k k) ('auto'; po2 of it for 'auto_po2').
ternary:  q = sign(x) * (|x| >= t), t = threshold or 0.33 (alpha None / number); output
          alpha * q. 'auto'/'auto_po2': per channel s = 2 max|x| / 3, then
          `number_of_unrolls` rounds of q = sign(x) * (|round(x / s)| >= 1), s = LS(x, q);
          output s * q with the last round's q (as in the reference: q is not refit to s).
Gradients: with alpha None the surrogate tanh(x) (gradient 1 - tanh(x)**2), else identity.
Per-channel scales reduce over every axis but 0 (PyTorch's output channel; QKeras uses the last
axis); binary's `scale_axis` overrides it, `min/max_po2_exponent` clip the 'auto_po2' exponent.

Stochastic versions sample only in training mode (`module.train()`); in eval mode they equal
the deterministic quantizer with the same alpha.

Deliberate difference: QKeras' `stochastic_ternary` fails in training unless alpha is a string
(it relies on layers switching a kernel's alpha None to 'auto_po2', which hetq does not do).
hetq accepts alpha None (and numbers) in training: the sampling threshold is then the fixed
threshold (0.33 by default) in input units with std 1, and the output scale is alpha (1 when
None), so training samples and the eval-mode `ternary` agree in expectation. (Fitting the scale
with the 'auto' loop for alpha None would make training outputs s*q while eval outputs q.)

Types: ternary with alpha None/1 is `FixedType(2, 2)` (values -1, 0, 1); binary {0, 1}
(use_01) is `FixedType(1, 1, signed=False)`; +-1 binary has no ap_fixed grid without 0, so
its `fixed_type()` is None and `values()` lists [-a, a].
"""

from __future__ import annotations

import torch

from .base import EPS, Quantizer, check_positive, check_scale, register, ste
from .fixed import FixedType
from .fixed_point import _log2_int
from .scale import least_squares_scale, po2, reduce_axes

_ALPHAS = "None, a number, a tensor, 'auto' or 'auto_po2'"


def _check_alpha(name, alpha):
    if isinstance(alpha, str) and alpha not in ("auto", "auto_po2"):
        raise ValueError(f"{name}: alpha={alpha!r}; expected {_ALPHAS}")
    check_scale(name, alpha)


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _channel_std(x: torch.Tensor) -> torch.Tensor:
    """Per-output-channel standard deviation (whole tensor for rank 1) plus eps, as the
    reference's K.std: the population's (N - 1 made a one-element channel's nan, and every
    sample -1)."""
    axes = reduce_axes(x, None)
    return (x.std(dim=axes, keepdim=True, correction=0) if axes else x.std(correction=0)) + EPS


def _sampling_sigmoid(use_real_sigmoid: bool):
    return torch.sigmoid if use_real_sigmoid else (lambda v: torch.clamp(0.5 * v + 0.5, 0, 1))


def _out_with_gradient(x, xq, alpha):
    """tanh surrogate gradient for alpha None, identity otherwise."""
    return ste(torch.tanh(x), xq) if alpha is None else ste(x, xq)


def _alpha_bound(alpha) -> float:
    """max(1, |alpha|) for a numeric alpha, 1 otherwise (the Clip constraint's bound)."""
    if alpha is None or isinstance(alpha, str):
        return 1.0
    a = float(alpha.abs().max()) if isinstance(alpha, torch.Tensor) else abs(float(alpha))
    return max(1.0, a)


def _scaled_type(width, integer, signed, alpha) -> FixedType | None:
    if isinstance(alpha, (str, torch.Tensor)):
        return None
    shift = 0 if alpha is None else _log2_int(alpha)
    return None if shift is None else FixedType(width, integer + shift, signed)


@register
class binary(Quantizer):
    """+-1 (or {0, 1} with use_01), times a scale. See the module docstring."""

    name = "binary"
    kind = "binary"
    positional = ()

    def __init__(self, use_01=False, alpha=None, use_stochastic_rounding=False, scale_axis=None,
                 min_po2_exponent=None, max_po2_exponent=None):
        super().__init__()
        _check_alpha(self.name, alpha)
        if use_01 not in (False, True):  # catches binary('auto'): use_01 comes first
            raise ValueError(f"{self.name}: use_01={use_01!r} must be True or False (pass the "
                             "scale as alpha=...)")
        limits = min_po2_exponent is not None or max_po2_exponent is not None
        if limits and not (isinstance(alpha, str) and alpha == "auto_po2"):
            raise ValueError(f"{self.name}: min/max_po2_exponent need alpha='auto_po2', got "
                             f"alpha={alpha!r}")
        for key, value in dict(use_01=use_01, alpha=alpha,
                               use_stochastic_rounding=use_stochastic_rounding,
                               scale_axis=scale_axis, min_po2_exponent=min_po2_exponent,
                               max_po2_exponent=max_po2_exponent).items():
            self._set_arg(key, value)
        self.bits = 1
        self.kind = "binary01" if use_01 else "binary"

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_stochastic_rounding and self.training:
            f = 2.0 * torch.clamp(x.abs().max(), max=1.0).clamp_min(EPS)
            p = 0.125
            y = torch.floor(x / f / p + torch.rand_like(x)) * p
            rnd = _sign(torch.rand_like(x) - 0.5)
            k = torch.where(y == 0, rnd, _sign(y))
        else:
            k = _sign(x)
        return (k + 1.0) / 2.0 if self.use_01 else k

    def _scale(self, x, k):
        if self.alpha is None:
            return 1.0
        if not isinstance(self.alpha, str):
            return self.alpha
        s = least_squares_scale(x, k, reduce_axes(x, self.scale_axis))
        if self.alpha == "auto_po2":
            return po2(s, self.min_po2_exponent, self.max_po2_exponent)
        return s

    def forward(self, x):
        with torch.no_grad():
            k = self._codes(x)
            s = self._scale(x, k)
            if isinstance(self.alpha, str):
                self.scale = s.detach()
            xq = s * k
        return _out_with_gradient(x, xq, self.alpha)

    def fixed_type(self):
        """ap_ufixed<1,1> ({0, 1}) for use_01 (shifted by a power-of-two alpha); None for +-1:
        no ap_fixed grid holds -1 and +1 without 0 (`values()` lists them)."""
        if self.use_01:
            return _scaled_type(1, 1, False, self.alpha)
        return None

    def values(self):
        if isinstance(self.alpha, (str, torch.Tensor)):
            return None
        a = 1.0 if self.alpha is None else float(self.alpha)
        return torch.tensor([0.0, a] if self.use_01 else [-a, a], dtype=torch.float64)

    def max(self):
        return _alpha_bound(self.alpha)

    def min(self):
        return 0.0 if self.use_01 else -self.max()


@register
class stochastic_binary(binary):
    """Training: +1 with probability sigmoid(temperature * x / std), else -1 (std per channel
    for string alpha, else 1), times the least-squares scale; identity gradient. Eval: binary."""

    name = "stochastic_binary"
    positional = ("alpha",)
    stochastic = True

    def __init__(self, alpha=None, temperature=6.0, use_real_sigmoid=True):
        super().__init__(False, alpha)
        check_positive(self.name, "temperature", temperature)
        self.temperature = temperature
        self._set_arg("use_real_sigmoid", use_real_sigmoid)

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        with torch.no_grad():
            std = _channel_std(x) if isinstance(self.alpha, str) else 1.0
            p = _sampling_sigmoid(self.use_real_sigmoid)(self.temperature * x / std)
            q = torch.where(torch.rand_like(x) < p, 1.0, -1.0).to(x.dtype)
            s = self._scale(x, _sign(x))
            if isinstance(self.alpha, str):
                self.scale = s.detach()
            xq = s * q
        return ste(x, xq)


@register
class ternary(Quantizer):
    """{-1, 0, +1} times a scale, with a threshold. See the module docstring."""

    name = "ternary"
    kind = "ternary"
    positional = ("alpha", "threshold")

    def __init__(self, alpha=None, threshold=None, use_stochastic_rounding=False,
                 number_of_unrolls=5):
        super().__init__()
        _check_alpha(self.name, alpha)
        if isinstance(alpha, str) and threshold is not None:
            raise ValueError(f"{self.name}: threshold must be None with alpha={alpha!r} (the "
                             "threshold follows the fitted scale)")
        if threshold is not None:  # (a negative one mapped 0 to 1)
            check_positive(self.name, "threshold", threshold, zero=True)
        for key, value in dict(alpha=alpha, threshold=threshold,
                               use_stochastic_rounding=use_stochastic_rounding,
                               number_of_unrolls=number_of_unrolls).items():
            self._set_arg(key, value)
        self.bits = 2

    def _auto_scale(self, x, rounding=True):
        """(s, q): the fitted scale and the codes of the last pass. As in the reference, q
        comes from the scale before the last least-squares update (the output is s * q)."""
        axes = reduce_axes(x, None)
        m = x.abs().amax(dim=axes, keepdim=True) if axes else x.abs().max()
        s = (2.0 * m / 3.0).clamp_min(EPS)
        if self.alpha == "auto_po2":
            s = po2(s)

        def codes(s):
            if rounding:
                return _sign(x) * (torch.round(x / s).abs() >= 1).to(x.dtype)
            return _sign(x) * (x.abs() >= s / 2).to(x.dtype)

        q = None
        for _ in range(self.number_of_unrolls):
            q = codes(s)
            s = least_squares_scale(x, q, axes).clamp_min(EPS)
            if self.alpha == "auto_po2":
                s = po2(s)
        return s, codes(s) if q is None else q

    def forward(self, x):
        with torch.no_grad():
            if isinstance(self.alpha, str):
                s, q = self._auto_scale(x)
                self.scale = s.detach()
                xq = s * q
            else:
                t = 0.33 if self.threshold is None else self.threshold
                xs = x
                if self.use_stochastic_rounding and self.training:
                    xs = x + (torch.rand_like(x) - 0.5) * (2.0 * t)
                # (sign(0) = 0: with threshold 0, a zero stays 0, not +alpha)
                q = torch.where(xs.abs() >= t, torch.sign(xs), torch.zeros_like(xs))
                xq = q if self.alpha is None else self.alpha * q
        return _out_with_gradient(x, xq, self.alpha)

    def fixed_type(self):
        return _scaled_type(2, 2, True, self.alpha)

    def values(self):
        if isinstance(self.alpha, (str, torch.Tensor)):
            return None
        a = 1.0 if self.alpha is None else float(self.alpha)
        return torch.tensor([-a, 0.0, a], dtype=torch.float64)

    def max(self):
        return _alpha_bound(self.alpha)

    def min(self):
        return -self.max()


@register
class stochastic_ternary(ternary):
    """Training: q = (q0 + q1) / 2 with q0, q1 = +-1 sampled with p0 = sigmoid(temp (xn - T)),
    p1 = sigmoid(temp (xn + T)), xn = x / std, T = s / (2 std); output s * q. Eval: ternary."""

    name = "stochastic_ternary"
    positional = ("alpha", "threshold")
    stochastic = True

    def __init__(self, alpha=None, threshold=None, temperature=8.0, use_real_sigmoid=True,
                 number_of_unrolls=5):
        super().__init__(alpha, threshold, False, number_of_unrolls)
        check_positive(self.name, "temperature", temperature)
        self.temperature = temperature
        self._set_arg("use_real_sigmoid", use_real_sigmoid)

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        with torch.no_grad():
            if isinstance(self.alpha, str):
                s, _ = self._auto_scale(x, rounding=False)
                self.scale = s.detach()
                std = _channel_std(x)
                thr = s / (2.0 * std)
            else:
                s = 1.0 if self.alpha is None else self.alpha
                std = 1.0
                thr = 0.33 if self.threshold is None else self.threshold
            xn = x / std
            sig = _sampling_sigmoid(self.use_real_sigmoid)
            p0 = sig(self.temperature * (xn - thr))
            p1 = sig(self.temperature * (xn + thr))
            q0 = torch.where(torch.rand_like(x) < p0, 1.0, -1.0)
            q1 = torch.where(torch.rand_like(x) < p1, 1.0, -1.0)
            xq = s * ((q0 + q1) / 2.0).to(x.dtype)
        return _out_with_gradient(x, xq, self.alpha)
