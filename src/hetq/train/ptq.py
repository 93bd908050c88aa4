"""Post-training quantization (the paper's baseline): fixed point of a trained float model.

Per tensor, the integer bits come from the observed range (weights: the tensor itself;
activations: the outputs seen on calibration data) with `get_integer_bits`, and the fractional
bits are whatever is left of the total width:
    weights/biases  quantized_bits(W, I, alpha=1)    (I excludes the sign bit)
    ReLU outputs    quantized_relu(W, I)             (unsigned)
    ReLU6 outputs   quantized_relu(W, I, relu_upper_bound=6, is_quantized_clip=False) where
                    the grid goes past 6 (QKeras' clip: it keeps the cap; the integer engine
                    runs it exactly, QONNX and hls4ml have no such clip and refuse it)
No retraining happens; compare with QAT to see how much training with the quantizers buys.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant.base import eval_mode
from ..quant.convert import ACTIVATION_MODULES, QuantConfig, quantize_model
from ..quant.observers import MinMaxObserver, get_integer_bits


@torch.no_grad()
def ptq_config(model: nn.Module, calibration: torch.Tensor, bits: int,
               quantize_activations: bool = True) -> QuantConfig:
    """The per-layer PTQ config of `model` for a total width `bits`."""
    if not 2 <= bits <= 32:
        raise ValueError(f"PTQ takes 2 to 32 bits, got {bits}" + (
            "" if bits < 2 else " (a float32 model keeps 24 significant bits: wider types "
                                "change nothing)"))
    entries: dict[str, dict[str, str]] = {}
    observers: dict[str, MinMaxObserver] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fields = {}
            for fld, t in (("kernel", m.weight), ("bias", m.bias)):
                if t is None:
                    continue
                if not bool(torch.isfinite(t).all()):  # (an OverflowError traceback)
                    raise ValueError(f"layer {name!r}: its {fld} holds non-finite values "
                                     "(inf or NaN); PTQ needs a model with finite weights")
                i = get_integer_bits(float(t.min()), float(t.max()), bits, True, True)
                fields[fld] = f"quantized_bits({bits},{i},alpha=1)"
            entries[name] = fields
        elif quantize_activations and isinstance(m, (nn.ReLU, nn.ReLU6)):
            obs = observers[name] = MinMaxObserver()
            hooks.append(m.register_forward_hook(lambda mod, inp, out, o=obs: o(out)))
    try:
        with eval_mode(model):
            model(calibration)
    finally:
        for h in hooks:
            h.remove()
    mods = dict(model.named_modules())
    for name, obs in observers.items():
        top = max(obs.max, 0.0)
        six = isinstance(mods[name], nn.ReLU6)
        i = get_integer_bits(0.0, min(top, 6.0) if six else top, bits, True,
                             keep_negative=False)
        # a ReLU6 keeps its cap (a plain quantized_relu(8,3) went up to 7.97): QKeras' clip
        # at relu_upper_bound, where the grid goes past 6
        cap = ",relu_upper_bound=6,is_quantized_clip=False" if six and \
            2.0 ** i - 2.0 ** (i - bits) > 6.0 else ""
        entries[name] = {"activation": f"quantized_relu({bits},{i}{cap})"}
        if cap:
            import warnings

            warnings.warn(f"layer {name!r} (ReLU6) keeps its cap at 6 as "
                          f"{entries[name]['activation']}, which the integer engine runs "
                          "exactly but the QONNX and hls4ml exports do not take (they have no "
                          "such clip); for firmware, train with nn.ReLU in its place",
                          stacklevel=3)  # (past torch.no_grad's wrapper)
    return QuantConfig(entries)


def ptq(model: nn.Module, calibration: torch.Tensor, bits: int,
        quantize_activations: bool = True) -> nn.Module:
    """A fixed-point copy of a trained float model (see the module docstring)."""
    cfg = ptq_config(model, calibration, bits, quantize_activations)
    return quantize_model(model, cfg).eval()


__all__ = ["ACTIVATION_MODULES", "ptq", "ptq_config"]
