"""Resize the weight layers of a model (width search).

Width search changes the number of units/filters of weight layers; `resize_model` rebuilds
the chain of weight layers with the new sizes (the next layer's inputs and any batch norm
follow) and warm-starts it from the float weights: the overlapping block of every weight
tensor is copied, extra units keep PyTorch's default initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent = root
    *path, last = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)


def _copy_overlap(dst: torch.Tensor, src: torch.Tensor) -> None:
    idx = tuple(slice(0, min(a, b)) for a, b in zip(dst.shape, src.shape))
    dst[idx] = src[idx]


def new_width(n: int, multiplier: float) -> int:
    """The resized unit count, max(int(n * f), 1) as in AutoQKeras."""
    return max(int(n * multiplier), 1)


def resize_model(model: nn.Module, widths: dict[str, float]) -> nn.Module:
    """A copy of `model` with the units/filters of the named layers scaled by `widths`.

    Supports chains of nn.Linear / nn.Conv1d / nn.Conv2d (in module order), with batch norms
    between them and a Flatten from convolutions to dense layers. Multipliers of 1 are no-ops.
    """
    if not any(f != 1.0 for f in widths.values()):
        return copy.deepcopy(model)
    model = copy.deepcopy(model)
    names = dict(model.named_modules())
    for n in widths:
        if n not in names:
            raise ValueError(f"width multiplier for unknown layer {n!r}")
    prev_out_old = prev_out_new = None
    with torch.no_grad():
        for name, m in list(model.named_modules()):
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                is_lin = isinstance(m, nn.Linear)
                in_old = m.in_features if is_lin else m.in_channels
                out_old = m.out_features if is_lin else m.out_channels
                in_new = in_old
                if prev_out_old is not None and prev_out_new != prev_out_old:
                    if in_old % prev_out_old:
                        raise ValueError(f"cannot resize the input of layer {name!r}: "
                                         f"{in_old} inputs after {prev_out_old} outputs")
                    in_new = in_old // prev_out_old * prev_out_new  # Flatten keeps H*W
                out_new = new_width(out_old, widths.get(name, 1.0))
                if in_new == in_old and out_new == out_old:
                    prev_out_old, prev_out_new = out_old, out_new
                    continue
                if is_lin:
                    new = nn.Linear(in_new, out_new, bias=m.bias is not None)
                else:
                    if m.groups != 1:
                        raise ValueError(f"cannot resize grouped convolution {name!r}")
                    new = type(m)(in_new, out_new, m.kernel_size, m.stride, m.padding,
                                  m.dilation, 1, m.bias is not None, m.padding_mode)
                _copy_overlap(new.weight, m.weight)
                if m.bias is not None:
                    _copy_overlap(new.bias, m.bias)
                _set_module(model, name, new)
                prev_out_old, prev_out_new = out_old, out_new
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and prev_out_new is not None \
                    and prev_out_new != m.num_features:
                new = type(m)(prev_out_new, m.eps, m.momentum, m.affine, m.track_running_stats)
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, attr) is not None:
                        _copy_overlap(getattr(new, attr), getattr(m, attr))
                _set_module(model, name, new)
    return model
