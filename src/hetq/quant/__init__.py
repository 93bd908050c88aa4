"""Quantizers with QKeras semantics, fixed-point types, quantized layers and model conversion."""

from .base import Activation, Quantizer, get_quantizer, parse_spec, quantizer_names
from .fixed import FixedType
from .fixed_point import quantized_bits, quantized_hswish, quantized_relu

__all__ = [
    "Activation",
    "FixedType",
    "Quantizer",
    "get_quantizer",
    "parse_spec",
    "quantized_bits",
    "quantized_hswish",
    "quantized_relu",
    "quantizer_names",
]
