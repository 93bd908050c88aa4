"""Quantized layers: drop-in `torch.nn` modules with QKeras' quantizer arguments.

Every weight layer computes  y = act(op(x, Qk(W)) + Qb(b))  with fake-quantized weights; inputs
are not quantized (put a `QActivation` in front). Quantizers may be objects or strings.

Deliberate difference from QKeras: a kernel quantizer with `alpha=None` stays plain fixed
point. QKeras silently switches it to per-channel `alpha='auto_po2'` inside its layers; hetq
never does (write `alpha='auto_po2'` if you want the scales).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import get_quantizer
from .fixed import FixedType


def _q(spec):
    return get_quantizer(spec)


class QLayer:
    """Mixin: quantizer bookkeeping shared by every hetq layer.

    `quantizer_fields` names the layer's quantizer slots; each is stored as an attribute
    `<field>_quantizer` (None when the field is not quantized).
    """

    quantizer_fields: tuple[str, ...] = ()

    def _init_quantizers(self, **specs):
        for fld, spec in specs.items():
            if fld not in self.quantizer_fields:
                raise ValueError(f"{type(self).__name__} has no {fld!r} quantizer; its fields are "
                                 f"{', '.join(self.quantizer_fields)}")
            q = _q(spec)
            if fld == "bias" and q is not None and getattr(self, "bias", None) is None \
                    and not getattr(self, "folded_bias", False):
                raise ValueError(f"{type(self).__name__}: bias_quantizer={spec!r} given but the "
                                 "layer has no bias (bias=False)")
            setattr(self, f"{fld}_quantizer", q)

    @property
    def quantizers(self) -> dict[str, nn.Module | None]:
        return {f: getattr(self, f"{f}_quantizer", None) for f in self.quantizer_fields}

    def fixed_types(self) -> dict[str, FixedType | None]:
        return {f: (q.fixed_type() if q is not None and hasattr(q, "fixed_type") else None)
                for f, q in self.quantizers.items()}

    def get_quantization_config(self) -> dict[str, str]:
        cfg = {f: str(q) for f, q in self.quantizers.items() if q is not None}
        for attr in ("out_features", "out_channels"):
            if hasattr(self, attr):
                cfg["units" if attr == "out_features" else "filters"] = getattr(self, attr)
        return cfg

    def _act(self, y):
        a = self.activation_quantizer
        return y if a is None else a(y)

    def _quantizer_repr(self) -> str:
        return ", ".join(f"{f}={q}" for f, q in self.quantizers.items() if q is not None)


def _qw(quantizer, w):
    return w if quantizer is None else quantizer(w)


class _WeightLayer(QLayer):
    """kernel + bias + activation layers whose op is `self._op(x, w, b)`."""

    quantizer_fields = ("kernel", "bias", "activation")

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        out = {"kernel": _qw(self.kernel_quantizer, self.weight)}
        if self.bias is not None:
            out["bias"] = _qw(self.bias_quantizer, self.bias)
        return out

    def forward(self, x):
        w = self.weight if self.kernel_quantizer is None else self.kernel_quantizer(self.weight)
        b = self.bias
        if b is not None and self.bias_quantizer is not None:
            b = self.bias_quantizer(b)
        return self._act(self._op(x, w, b))



class QDense(_WeightLayer, nn.Linear):
    """Quantized `nn.Linear`: y = act(x Qk(W)^T + Qb(b))."""

    def __init__(self, in_features, out_features, bias=True, kernel_quantizer=None,
                 bias_quantizer=None, activation=None, device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._init_quantizers(kernel=kernel_quantizer, bias=bias_quantizer, activation=activation)

    def _op(self, x, w, b):
        return F.linear(x, w, b)


QLinear = QDense


class QConv1d(_WeightLayer, nn.Conv1d):
    """Quantized `nn.Conv1d` (all of its arguments, plus the quantizers)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", kernel_quantizer=None,
                 bias_quantizer=None, activation=None, device=None, dtype=None):
        nn.Conv1d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias, padding_mode, device, dtype)
        self._init_quantizers(kernel=kernel_quantizer, bias=bias_quantizer, activation=activation)

    def _op(self, x, w, b):
        return self._conv_forward(x, w, b)


class QConv2d(_WeightLayer, nn.Conv2d):
    """Quantized `nn.Conv2d` (all of its arguments incl. groups, plus the quantizers)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", kernel_quantizer=None,
                 bias_quantizer=None, activation=None, device=None, dtype=None):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias, padding_mode, device, dtype)
        self._init_quantizers(kernel=kernel_quantizer, bias=bias_quantizer, activation=activation)

    def _op(self, x, w, b):
        return self._conv_forward(x, w, b)


class QDepthwiseConv2d(_WeightLayer, nn.Conv2d):
    """Depthwise convolution (groups = in_channels, out = in * depth_multiplier)."""

    quantizer_fields = ("depthwise", "bias", "activation")

    def __init__(self, in_channels, kernel_size, depth_multiplier=1, stride=1, padding=0,
                 dilation=1, bias=True, depthwise_quantizer=None, bias_quantizer=None,
                 activation=None, device=None, dtype=None):
        nn.Conv2d.__init__(self, in_channels, in_channels * depth_multiplier, kernel_size, stride,
                           padding, dilation, in_channels, bias, "zeros", device, dtype)
        self.depth_multiplier = depth_multiplier
        self._init_quantizers(depthwise=depthwise_quantizer, bias=bias_quantizer,
                              activation=activation)

    @property
    def kernel_quantizer(self):
        return self.depthwise_quantizer

    def quantized_weights(self):
        out = {"depthwise": _qw(self.depthwise_quantizer, self.weight)}
        if self.bias is not None:
            out["bias"] = _qw(self.bias_quantizer, self.bias)
        return out

    def _op(self, x, w, b):
        return self._conv_forward(x, w, b)


class QSeparableConv2d(QLayer, nn.Module):
    """Depthwise k x k (no bias) -> optional depthwise activation quantizer -> pointwise 1 x 1
    with bias -> optional activation. Weights: `depthwise_weight` [C, 1, k, k] (times
    depth_multiplier), `pointwise_weight` [O, C*dm, 1, 1], `bias` [O]."""

    quantizer_fields = ("depthwise", "pointwise", "bias", "depthwise_activation", "activation")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 depth_multiplier=1, bias=True, depthwise_quantizer=None,
                 pointwise_quantizer=None, bias_quantizer=None, depthwise_activation=None,
                 activation=None):
        super().__init__()
        dw = nn.Conv2d(in_channels, in_channels * depth_multiplier, kernel_size, stride,
                       padding, dilation, groups=in_channels, bias=False)
        pw = nn.Conv2d(in_channels * depth_multiplier, out_channels, 1, bias=bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (
            dw.kernel_size, dw.stride, dw.padding, dw.dilation)
        self.depth_multiplier = depth_multiplier
        self.depthwise_weight = dw.weight
        self.pointwise_weight = pw.weight
        self.bias = pw.bias
        self._init_quantizers(depthwise=depthwise_quantizer, pointwise=pointwise_quantizer,
                              bias=bias_quantizer, depthwise_activation=depthwise_activation,
                              activation=activation)

    def quantized_weights(self):
        out = {"depthwise": _qw(self.depthwise_quantizer, self.depthwise_weight),
               "pointwise": _qw(self.pointwise_quantizer, self.pointwise_weight)}
        if self.bias is not None:
            out["bias"] = _qw(self.bias_quantizer, self.bias)
        return out

    def forward(self, x):
        w = self.quantized_weights()
        y = F.conv2d(x, w["depthwise"], None, self.stride, self.padding, self.dilation,
                     self.in_channels)
        if self.depthwise_activation_quantizer is not None:
            y = self.depthwise_activation_quantizer(y)
        y = F.conv2d(y, w["pointwise"], w.get("bias"))
        return self._act(y)

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


class QActivation(QLayer, nn.Module):
    """y = quantizer(x): how activations (and inputs) are quantized."""

    quantizer_fields = ("activation",)

    def __init__(self, activation):
        super().__init__()
        if activation is None:
            raise ValueError("QActivation needs an activation quantizer, got None")
        self._init_quantizers(activation=activation)

    def forward(self, x):
        return self.activation_quantizer(x)

    def quantized_weights(self):
        return {}

