"""Scale helpers shared by auto-scaled quantizers (QKeras' 'auto' / 'auto_po2' alpha).

The observer math lives here, apart from the fake-quantization itself:

* `po2(s) = 2**round(log2(s + eps))`, optionally with the exponent clipped.
* `least_squares_scale(x, q) = mean(x * q) / (mean(q * q) + eps)` per channel: the scale
  that minimises ||x - scale * q||^2 (XNOR-Net style).
"""

from __future__ import annotations

import torch

from .base import EPS


def reduce_axes(x: torch.Tensor, scale_axis: int | None) -> tuple[int, ...] | None:
    """Axes (negative) to average over for a per-channel scale, or None for rank-1 tensors.

    hetq follows PyTorch's layout: the channel axis of a weight is axis 0 (output features /
    output channels), so the reduction runs over all other axes. `scale_axis` overrides the
    channel axis (QKeras uses the last axis, so pass `scale_axis=-1` for Keras-shaped data).
    """
    if x.dim() == 0:
        return None
    if scale_axis is not None and not -x.dim() <= scale_axis < x.dim():
        raise ValueError(f"scale_axis={scale_axis} is not an axis of a {x.dim()}-d tensor "
                         f"(expected {-x.dim()} to {x.dim() - 1})")  # (it wrapped around)
    if x.dim() == 1:  # (checked first: a 1-d tensor took any scale_axis without a word)
        return None
    axis = 0 if scale_axis is None else scale_axis % x.dim()
    # negative axes, so that the reduction still means the same axes of x when a tensor-valued
    # parameter (e.g. bits of shape [K, 1, 1]) adds leading population dimensions
    return tuple(d - x.dim() for d in range(x.dim()) if d != axis)


def po2(s: torch.Tensor, min_exponent=None, max_exponent=None) -> torch.Tensor:
    """Nearest power of two: 2**round(log2(s + eps)), exponent clipped to [min, max]."""
    e = torch.round(torch.log2(s + EPS))
    if min_exponent is not None or max_exponent is not None:
        e = torch.clamp(e, min=min_exponent, max=max_exponent)
    return torch.exp2(e)


def least_squares_scale(x: torch.Tensor, q: torch.Tensor, axes) -> torch.Tensor:
    """argmin_s ||x - s q||^2 per channel = mean(x q) / (mean(q q) + eps).

    `axes` None (rank-1 tensors): no averaging, each element gets its own scale.
    """
    if axes is None:
        return x * q / (q * q + EPS)
    return (x * q).mean(dim=axes, keepdim=True) / ((q * q).mean(dim=axes, keepdim=True) + EPS)
