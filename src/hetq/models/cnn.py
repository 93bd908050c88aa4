"""The quantized CNN of the seed slides (QKeras tutorial style), for 8x8 digits.

QConv2D(18, 3x3, stochastic_ternary kernel, ternary bias) -> quantized_relu(3)
-> QSeparableConv2D(32, 3x3, depthwise quantized_bits(4,0,1), pointwise quantized_bits(3,0,1),
   bias quantized_bits(3), depthwise activation quantized_tanh(6)) -> quantized_relu(3)
-> Flatten -> QDense(classes, quantized_bits(3), quantized_bits(3)) -> quantized_bits(20,5).
The softmax of the slides is applied by the loss (cross-entropy on these logits) and by
`predict`; it does not change the argmax.

Every kernel quantizer carries alpha='auto_po2' explicitly: QKeras silently switches kernel
quantizers with alpha=None to 'auto_po2' (so that is what the slides' model trained with);
hetq never switches, and with plain fixed point the small initial weights (e.g. +-0.04 in the
dense layer against a 3-bit step of 0.25) would all round to 0. QKeras'
`quantized_tanh(6,2,1)` of the slides has no integer argument any more; the 6-bit symmetric
quantized_tanh is used.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..quant.layers import QActivation, QConv2d, QDense, QSeparableConv2d
from .jet import check_sizes


def cnn_digits(in_channels: int = 1, image_size: int = 8, n_classes: int = 10,
               filters: int = 18, sep_filters: int = 32) -> nn.Sequential:
    """The small quantized CNN of the QKeras examples for 8x8 digits: a ternary 3x3
    convolution, a separable 3x3 convolution, then a dense classifier, quantized as built."""
    check_sizes("cnn_digits", in_channels=(in_channels, 1), n_classes=(n_classes, 1),
                filters=(filters, 1), sep_filters=(sep_filters, 1),
                image_size=(image_size, 5))  # (two valid 3x3 convolutions take 4 pixels)
    in_channels, image_size, n_classes = int(in_channels), int(image_size), int(n_classes)
    filters, sep_filters = int(filters), int(sep_filters)
    side = image_size - 4  # two valid 3x3 convolutions
    return nn.Sequential(OrderedDict([
        ("conv", QConv2d(in_channels, filters, 3,
                         kernel_quantizer="stochastic_ternary(alpha='auto_po2')",
                         bias_quantizer="ternary")),
        ("act1", QActivation("quantized_relu(3)")),
        ("sepconv", QSeparableConv2d(filters, sep_filters, 3,
                                     depthwise_quantizer="quantized_bits(4,0,1,alpha='auto_po2')",
                                     pointwise_quantizer="quantized_bits(3,0,1,alpha='auto_po2')",
                                     bias_quantizer="quantized_bits(3)",
                                     depthwise_activation="quantized_tanh(6,symmetric=True)")),
        ("act2", QActivation("quantized_relu(3)")),
        ("flatten", nn.Flatten()),
        ("dense", QDense(sep_filters * side * side, n_classes,
                         kernel_quantizer="quantized_bits(3,0,alpha='auto_po2')",
                         bias_quantizer="quantized_bits(3)")),
        ("logits", QActivation("quantized_bits(20,5)")),
    ]))
