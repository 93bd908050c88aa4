"""Resize the weight layers of a model (width search).

Width search changes the number of units/filters of weight layers; `resize_model` rebuilds
the chain of weight layers with the new sizes (the next layer's inputs and any batch norm
follow) and warm-starts it from the float weights. A narrower layer keeps its most
important units (`keep="magnitude"`, the default): unit j scores
||W_in[j]|| * |BN scale_j| * ||W_out[:, j]||, the size of its incoming weights times that of
its outgoing ones, i.e. a bound on how much it can move the next layer; the kept units stay
in their original order. `keep="first"` keeps the first units instead (AutoQKeras' choice).
A wider layer keeps every old unit in front; the extra units keep PyTorch's default
initialisation.
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


def new_width(n: int, multiplier: float) -> int:
    """The resized unit count, max(int(n * f), 1) as in AutoQKeras."""
    return max(int(n * multiplier), 1)


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm))]


def _in_columns(units: torch.Tensor, in_old: int, prev_out: int) -> torch.Tensor:
    """Input columns of a layer that belong to the given units of the previous weight layer
    (a Flatten from channels-first convolutions gives each channel in_old // prev_out)."""
    r = in_old // prev_out
    return (units.view(-1, 1) * r + torch.arange(r).view(1, -1)).reshape(-1)


def _unit_scores(chain, k: int) -> torch.Tensor:
    """Importance of each output unit of weight layer chain[k] (see the module docstring)."""
    _, m = chain[k]
    w = m.weight.detach().flatten(1)
    score = w.norm(dim=1)
    j = k + 1
    if j < len(chain) and isinstance(chain[j][1], nn.modules.batchnorm._BatchNorm):
        bn = chain[j][1]
        if bn.track_running_stats and bn.running_var is not None:
            scale = (bn.running_var.detach() + bn.eps).rsqrt()
            if bn.affine:
                scale = scale * bn.weight.detach().abs()
            score = score * scale
        j += 1
    if j < len(chain):
        nxt = chain[j][1].weight.detach()
        n_out = score.numel()
        in_old = nxt.shape[1]
        if in_old % n_out == 0:
            cols = nxt.transpose(0, 1).reshape(n_out, in_old // n_out, -1)
            score = score * cols.flatten(1).norm(dim=1)
    return score


def resize_model(model: nn.Module, widths: dict[str, float], keep: str = "magnitude") -> nn.Module:
    """A copy of `model` with the units/filters of the named layers scaled by `widths`.

    Supports chains of nn.Linear / nn.Conv1d / nn.Conv2d (in module order), with batch norms
    between them and a Flatten from convolutions to dense layers. Multipliers of 1 are no-ops.
    keep: which units a narrower layer keeps, "magnitude" (default) or "first".
    """
    if keep not in ("magnitude", "first"):
        raise ValueError(f"keep={keep!r}; expected 'magnitude' or 'first'")
    if not any(f != 1.0 for f in widths.values()):
        return copy.deepcopy(model)
    model = copy.deepcopy(model)
    names = dict(model.named_modules())
    for n in widths:
        if n not in names:
            raise ValueError(f"width multiplier for unknown layer {n!r}")
    chain = _weight_layers(model)
    prev_units = None  # kept old units of the previous weight layer (None: all of them)
    prev_out_old = prev_out_new = None
    with torch.no_grad():
        for k, (name, m) in enumerate(chain):
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                is_lin = isinstance(m, nn.Linear)
                in_old = m.in_features if is_lin else m.in_channels
                out_old = m.out_features if is_lin else m.out_channels
                in_cols = torch.arange(in_old)
                in_new = in_old
                if prev_out_old is not None and prev_out_new != prev_out_old:
                    if in_old % prev_out_old:
                        raise ValueError(f"cannot resize the input of layer {name!r}: "
                                         f"{in_old} inputs after {prev_out_old} outputs")
                    in_new = in_old // prev_out_old * prev_out_new  # Flatten keeps H*W
                    in_cols = _in_columns(prev_units, in_old, prev_out_old)
                out_new = new_width(out_old, widths.get(name, 1.0))
                units = torch.arange(min(out_new, out_old))
                if out_new < out_old and keep == "magnitude":
                    units = torch.topk(_unit_scores(chain, k), out_new).indices.sort().values
                if in_new == in_old and out_new == out_old:
                    prev_out_old, prev_out_new, prev_units = out_old, out_new, units
                    continue
                if is_lin:
                    new = nn.Linear(in_new, out_new, bias=m.bias is not None)
                else:
                    if m.groups != 1:
                        raise ValueError(f"cannot resize grouped convolution {name!r}")
                    new = type(m)(in_new, out_new, m.kernel_size, m.stride, m.padding,
                                  m.dilation, 1, m.bias is not None, m.padding_mode)
                src = m.weight[units][:, in_cols]
                new.weight[:src.shape[0], :src.shape[1]] = src
                if m.bias is not None:
                    new.bias[:len(units)] = m.bias[units]
                _set_module(model, name, new)
                prev_out_old, prev_out_new, prev_units = out_old, out_new, units
            elif prev_out_new is not None and prev_out_new != m.num_features:
                new = type(m)(prev_out_new, m.eps, m.momentum, m.affine, m.track_running_stats)
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, attr) is not None:
                        getattr(new, attr)[:len(prev_units)] = getattr(m, attr)[prev_units]
                _set_module(model, name, new)
    return model
