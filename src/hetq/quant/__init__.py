"""Quantizers with QKeras semantics, fixed-point types, quantized layers and model conversion."""

from .activations import quantized_sigmoid, quantized_tanh, quantized_ulaw
from .base import Activation, Quantizer, get_quantizer, parse_spec, quantizer_names
from .binary import binary, stochastic_binary, stochastic_ternary, ternary
from .fixed import FixedType
from .fixed_point import quantized_bits, quantized_hswish, quantized_relu
from .po2 import quantized_po2, quantized_relu_po2

__all__ = [
    "Activation",
    "FixedType",
    "Quantizer",
    "binary",
    "get_quantizer",
    "parse_spec",
    "quantized_bits",
    "quantized_hswish",
    "quantized_po2",
    "quantized_relu",
    "quantized_relu_po2",
    "quantized_sigmoid",
    "quantized_tanh",
    "quantized_ulaw",
    "quantizer_names",
    "stochastic_binary",
    "stochastic_ternary",
    "ternary",
]
