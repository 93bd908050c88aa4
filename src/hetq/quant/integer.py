"""Integer view of trained weights: integer codes and the scale that reproduce the
fake-quantized weights exactly, `codes * scale == quantized_weights()[field]` bit for bit.

* fixed-point quantizers (incl. power-of-two numeric alpha, ternary/binary with alpha None or a
  power of two, po2 quantizers): one scale, the LSB of the quantizer's `FixedType`;
* auto-scaled quantizers (alpha 'auto'/'auto_po2'): one scale per output channel, e.g.
  `quantized_bits(alpha='auto_po2')` gives scale = channel scale * 2**(integer - bits + 1);
* anything else on a binary grid: the smallest `FixedType` that holds the values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .fixed import FixedType, smallest_fixed_type
from .layers import QLayer


@dataclass
class IntegerTensor:
    codes: torch.Tensor  # int64
    scale: torch.Tensor  # broadcastable to codes
    fixed_type: FixedType | None

    def dequantize(self) -> torch.Tensor:
        return self.codes.to(self.scale.dtype) * self.scale


def _channel_scale(q, wq: torch.Tensor) -> torch.Tensor | None:
    s = getattr(q, "scale", None)
    if not isinstance(s, torch.Tensor):
        return None
    if q.name in ("quantized_bits", "quantized_hswish"):
        kn = 1 if q.keep_negative else 0
        s = s * 2.0 ** (q.integer - q.bits + kn)
    return s.to(wq.dtype)


def integer_tensor(q, wq: torch.Tensor) -> IntegerTensor:
    """Codes and scale of the fake-quantized tensor `wq` produced by quantizer `q`."""
    wq = wq.detach()
    ft = q.fixed_type() if q is not None and hasattr(q, "fixed_type") else None
    if ft is not None:
        scale = torch.tensor(ft.step, dtype=wq.dtype)
        codes = wq / scale
        if torch.equal(codes, torch.round(codes)):
            return IntegerTensor(codes.to(torch.int64), scale, ft)
    s = _channel_scale(q, wq) if q is not None else None
    if s is not None:
        codes = torch.where(s != 0, wq / s, torch.zeros_like(wq))
        if torch.equal(codes, torch.round(codes)) and torch.equal(codes * s, wq):
            return IntegerTensor(codes.to(torch.int64), s, None)
    ft = smallest_fixed_type(wq)
    scale = torch.tensor(ft.step, dtype=wq.dtype)
    return IntegerTensor(torch.round(wq / scale).to(torch.int64), scale, ft)


def integer_weights(layer: QLayer) -> dict[str, IntegerTensor]:
    """{field: IntegerTensor} for every weight tensor of a quantized layer."""
    with torch.no_grad():
        wqs = layer.quantized_weights()
    quantizers = layer.quantizers
    return {fld: integer_tensor(quantizers.get(fld), wq) for fld, wq in wqs.items()}


def integer_model_weights(model: nn.Module) -> dict[str, dict[str, IntegerTensor]]:
    return {name: integer_weights(m) for name, m in model.named_modules()
            if isinstance(m, QLayer) and name and m.quantized_weights()}
