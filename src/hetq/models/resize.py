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
import math

import torch
from torch import nn

from ..quant.layers import QSeparableConv2d
from ..quant.norm import _FoldedBatchnorm


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent = root
    *path, last = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)


def new_width(n: int, multiplier: float) -> int:
    """The resized unit count, max(int(n * f), 1) as in AutoQKeras, less its float artefact
    (100 * 0.29 is 28.999999999999996 in floating point: 29 units here, not 28)."""
    if isinstance(multiplier, bool) or not (isinstance(multiplier, (int, float))
                                            and math.isfinite(multiplier) and multiplier > 0):
        raise ValueError(f"width multiplier {multiplier!r}; expected a number > 0")
    return max(int(n * multiplier + 1e-9), 1)


RESIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, QSeparableConv2d)


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (*RESIZABLE, nn.modules.batchnorm._BatchNorm))]


def resizable_layers(model: nn.Module) -> list[str]:
    """The layers whose width `resize_model` can change, in module order (the last one is
    the output layer, which a width search leaves as it is)."""
    return [n for n, m in _weight_layers(model) if isinstance(m, RESIZABLE)]


def _sizes(m: nn.Module) -> tuple[int, int]:
    """(inputs, outputs): features of a Linear, channels of a convolution."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return m.in_channels, m.out_channels


def _unit_weight(m: nn.Module) -> torch.Tensor:
    """The weight whose rows are the layer's output units, and whose columns its inputs (a
    separable convolution's pointwise weight, its inputs in blocks of depth_multiplier)."""
    return m.pointwise_weight if isinstance(m, QSeparableConv2d) else m.weight


def _init(shape, like: torch.Tensor, fan_in: int) -> torch.Tensor:
    """PyTorch's default initialisation of a Linear/Conv weight or bias (uniform within
    1/sqrt(fan_in)), in `like`'s dtype and device."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return torch.empty(shape, dtype=like.dtype, device=like.device).uniform_(-bound, bound)


def _resized(m: nn.Module, units: torch.Tensor, in_cols: torch.Tensor, in_new: int,
             out_new: int) -> nn.Module:
    """A copy of layer `m` (same class and quantizers, dtype and device) with `out_new`
    outputs, the kept `units` first, and `in_new` inputs, the kept input columns `in_cols`
    first; new entries initialised as PyTorch does."""
    new = copy.deepcopy(m)
    sep = isinstance(m, QSeparableConv2d)
    dm = m.depth_multiplier if sep else 1
    # a separable convolution's depthwise channels and pointwise columns: each input's dm
    cols = _in_columns(in_cols, m.in_channels * dm, m.in_channels) if sep else in_cols
    if sep:
        dw = _init((in_new * dm, *m.depthwise_weight.shape[1:]), m.depthwise_weight,
                   m.depthwise_weight[0].numel())
        dw[:len(cols)] = m.depthwise_weight[cols]
        new.depthwise_weight = nn.Parameter(dw)
    w = _unit_weight(m)
    shape = (out_new, in_new * dm, *w.shape[2:])
    fan_in = shape[1] * int(torch.Size(shape[2:]).numel())
    nw = _init(shape, w, fan_in)
    nw[:len(units), :len(cols)] = w[units][:, cols]
    setattr(new, "pointwise_weight" if sep else "weight", nn.Parameter(nw))
    if m.bias is not None:
        b = _init((out_new,), m.bias, fan_in)
        b[:len(units)] = m.bias[units]
        new.bias = nn.Parameter(b)
    if isinstance(m, nn.Linear):
        new.in_features, new.out_features = in_new, out_new
    else:
        new.in_channels, new.out_channels = in_new, out_new
    if isinstance(m, _FoldedBatchnorm):  # its batch norm's per-unit values go with the units
        _resize_norm_values(m, new, units, out_new, {"gamma": 1.0, "beta": 0.0,
                                                     "running_mean": 0.0, "running_var": 1.0})
    return new


def _resize_norm_values(m: nn.Module, new: nn.Module, units: torch.Tensor, n_new: int,
                        fresh: dict[str, float]) -> None:
    """`new`'s per-channel tensors named in `fresh` for `n_new` channels: `m`'s kept `units`
    first, new channels filled with their `fresh` value."""
    for attr, fill in fresh.items():
        t = getattr(m, attr)
        if t is None:
            continue
        v = torch.full((n_new,), fill, dtype=t.dtype, device=t.device)
        v[:len(units)] = t[units]
        setattr(new, attr, nn.Parameter(v) if isinstance(t, nn.Parameter) else v)


def _resized_norm(m: nn.modules.batchnorm._BatchNorm, units: torch.Tensor,
                  n_new: int) -> nn.Module:
    """A copy of batch norm `m` for `n_new` channels, the kept `units` first (new channels:
    scale 1, shift 0, mean 0, variance 1)."""
    new = copy.deepcopy(m)
    _resize_norm_values(m, new, units, n_new, {"weight": 1.0, "bias": 0.0,
                                               "running_mean": 0.0, "running_var": 1.0})
    new.num_features = n_new
    return new


def _check_no_unit_state(model: nn.Module) -> None:
    """Quantizers with per-unit or per-weight values (tensor bits, per-channel alpha) have
    the old layer's shape, which a resize would leave behind (the forward then failed on
    mismatched sizes): resize the float model, then quantize it (as checkpoints do)."""
    from ..quant.base import Quantizer

    for name, q in model.named_modules():
        if not isinstance(q, Quantizer):
            continue
        for t_name, t in (*q.named_parameters(recurse=False), *q.named_buffers(recurse=False)):
            if t.numel() > 1:
                raise ValueError(f"resize_model: quantizer {name} holds per-unit values "
                                 f"({t_name} of shape {tuple(t.shape)}), which a resize cannot "
                                 "carry over; resize the float model, then quantize it")


def _in_columns(units: torch.Tensor, in_old: int, prev_out: int) -> torch.Tensor:
    """Input columns of a layer that belong to the given units of the previous weight layer
    (a Flatten from channels-first convolutions gives each channel in_old // prev_out)."""
    r = in_old // prev_out
    return (units.view(-1, 1) * r + torch.arange(r).view(1, -1)).reshape(-1)


def _unit_scores(chain, k: int) -> torch.Tensor:
    """Importance of each output unit of weight layer chain[k] (see the module docstring)."""
    _, m = chain[k]
    w = _unit_weight(m).detach().flatten(1)
    score = w.norm(dim=1)
    if isinstance(m, _FoldedBatchnorm):  # the folded weight's rows: W scaled by gamma / sigma
        score = score * (m.gamma.detach().abs() * (m.running_var.detach() + m.eps).rsqrt())
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
        nxt = _unit_weight(chain[j][1]).detach()
        n_out = score.numel()
        in_old = nxt.shape[1]
        if in_old % n_out == 0:
            cols = nxt.transpose(0, 1).reshape(n_out, in_old // n_out, -1)
            score = score * cols.flatten(1).norm(dim=1)
    return score


def resize_model(model: nn.Module, widths: dict[str, float], keep: str = "magnitude") -> nn.Module:
    """A copy of `model` with the units/filters of the named layers scaled by `widths`.

    Supports chains of nn.Linear / nn.Conv1d / nn.Conv2d / QSeparableConv2d and their hetq
    forms (in module order), with batch norms between them and a Flatten from convolutions to
    dense layers; a resized layer keeps its class, quantizers, dtype and device. Multipliers of
    1 are no-ops.
    keep: which units a narrower layer keeps, "magnitude" (default) or "first".
    """
    if keep not in ("magnitude", "first"):
        raise ValueError(f"keep={keep!r}; expected 'magnitude' or 'first'")
    names = dict(model.named_modules())
    layers = resizable_layers(model)
    for n, f in widths.items():
        new_width(1, f)  # (the value's check)
        if n not in names:
            raise ValueError(f"width multiplier for unknown layer {n!r}")
        if f != 1 and n not in layers:
            raise ValueError(f"width multiplier {f} for layer {n!r} "
                             f"({type(names[n]).__name__}), whose width is not resizable; "
                             f"resizable: {', '.join(layers[:-1]) or '(none)'}")
        if f != 1 and n == layers[-1]:
            raise ValueError(f"width multiplier {f} for the output layer {n!r}: its width is "
                             "the number of outputs (classes), which stays as it is")
    if not any(f != 1.0 for f in widths.values()):
        return copy.deepcopy(model)
    _check_no_unit_state(model)
    model = copy.deepcopy(model)
    chain = _weight_layers(model)
    prev_units = None  # kept old units of the previous weight layer (None: all of them)
    prev_out_old = prev_out_new = None
    with torch.no_grad():
        for k, (name, m) in enumerate(chain):
            if isinstance(m, RESIZABLE):
                in_old, out_old = _sizes(m)
                in_cols = torch.arange(in_old)
                in_new = in_old
                if prev_out_old is not None and prev_out_new != prev_out_old:
                    if in_old % prev_out_old or (in_old != prev_out_old
                                                 and not isinstance(m, nn.Linear)):
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
                if getattr(m, "groups", 1) != 1:
                    raise ValueError(f"cannot resize grouped convolution {name!r}")
                _set_module(model, name, _resized(m, units, in_cols, in_new, out_new))
                prev_out_old, prev_out_new, prev_units = out_old, out_new, units
            elif prev_out_new is not None and prev_out_new != m.num_features:
                _set_module(model, name, _resized_norm(m, prev_units, prev_out_new))
    return model
