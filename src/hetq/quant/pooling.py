"""Quantized average pooling (spec §2.5).

QAveragePooling2d: with an average quantizer, y = sum over the window(x) * Qavg(1 / A) (A = pool
area): the sum keeps full precision and only the reciprocal is quantized, as hardware does;
without one, the plain mean. QGlobalAveragePooling2d: y = sum_{H,W}(x) * Qavg(1 / (H W)),
output (N, C). Either may end with an activation quantizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .layers import QLayer


class _QPool(QLayer, nn.Module):
    quantizer_fields = ("average", "activation")

    def _scaled_sum(self, s: torch.Tensor, area: int) -> torch.Tensor:
        q = self.average_quantizer
        if q is None:
            return s / area
        return s * q(torch.tensor(1.0 / area, dtype=s.dtype, device=s.device))

    def quantized_weights(self):
        return {}


class QAveragePooling2d(_QPool):
    def __init__(self, kernel_size, stride=None, padding=0, average_quantizer=None,
                 activation=None):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)
        self._init_quantizers(average=average_quantizer, activation=activation)

    @property
    def area(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def forward(self, x):
        s = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                         count_include_pad=True, divisor_override=1)
        return self._act(self._scaled_sum(s, self.area))

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class QGlobalAveragePooling2d(_QPool):
    def __init__(self, average_quantizer=None, activation=None):
        super().__init__()
        self._init_quantizers(average=average_quantizer, activation=activation)

    def forward(self, x):
        s = x.sum(dim=(2, 3))
        return self._act(self._scaled_sum(s, x.shape[2] * x.shape[3]))
