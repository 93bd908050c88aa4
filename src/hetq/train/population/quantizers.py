"""Quantizers over a stack of members: grouped per kind, one call per group (see
`hetq.train.population`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...quant.base import Activation, Quantizer
from ...quant.layers import QDense

_DENSE = (nn.Linear, QDense)
_ELEMENTWISE_NN = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                   nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
                   nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.PReLU)



def _is_plain(q) -> bool:
    """quantized_bits / quantized_relu on their fast path: batched with [G, 1] constants."""
    return (type(q).__name__ in ("quantized_bits", "quantized_relu")
            and isinstance(q, Quantizer) and bool(q.fast_constants()))


def _is_elementwise(q) -> bool:
    """True when q applied to a stack [G, ...] equals the stack of q on each member: no
    reduction over the tensor (string alpha), no random numbers, scalar arguments."""
    if isinstance(q, nn.PReLU):
        return False  # trainable per-member parameter
    if isinstance(q, _ELEMENTWISE_NN):
        return True
    if isinstance(q, Activation):
        return q.name != "softmax"
    if not isinstance(q, Quantizer) or not q.is_scalar or q.stochastic:
        return False
    return not (getattr(q, "use_stochastic_rounding", False)
                or isinstance(getattr(q, "alpha", None), str))


def _group_key(q) -> tuple:
    """Members whose quantizers share this key are quantized in one call."""
    if _is_plain(q):  # bits / integer may differ: they become [G, 1] tensors
        cfg = {k: v for k, v in q.get_config().items() if k not in ("bits", "integer")}
        return ("plain", type(q).__name__, repr(sorted(cfg.items())))
    return ("same", type(q).__name__, str(q) if isinstance(q, Quantizer) else repr(q))


class _BitsSTE(torch.autograd.Function):
    """clip(round(x * inv), lo, hi) * step with identity gradient: `quantized_bits`' fast path
    (the same operations in the same order, so the same values) with [G, 1] constants on x
    viewed as [G, -1] (row-wise broadcasting is TensorIterator's fast case; [G, 1, 1] against
    [G, B, F] and a tensor-bounded `clamp` measured several times slower)."""

    @staticmethod
    def forward(ctx, x, inv, lo, hi, step):
        t = (x.reshape(inv.shape[0], -1) * inv).round_()
        torch.maximum(t, lo, out=t)
        torch.minimum(t, hi, out=t)
        return t.mul_(step).view(x.shape)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None, None


class _ReluSTE(torch.autograd.Function):
    """round(clip(x, 0, top) * inv) * step with the gradient 1 on (0, top]: the values and
    the gradient of `quantized_relu`'s fast path (QKeras'), with [G, 1] constants.

    Computed on t = x * inv (exact: inv is a power of two) against hi = top * inv = m - 1.
    The gradient mask is v = min(t, up - t) > 0, up the next float above hi (t <= hi exactly
    when t < up), which is exact (a float difference has the sign of the exact one), applied
    with one fused `threshold_backward`. Measured slower here:
    boolean masks, a tensor-bounded `clamp`, and `hardtanh` per run of members with equal
    bounds."""

    @staticmethod
    def forward(ctx, x, inv, step, hi):
        t = x.reshape(inv.shape[0], -1) * inv
        v = torch.sub(torch.nextafter(hi, torch.full_like(hi, math.inf)), t)
        torch.minimum(t, v, out=v)
        ctx.save_for_backward(v)
        y = t.clamp_min_(0.0)
        torch.minimum(y, hi, out=y)
        return y.round_().mul_(step).view(x.shape)

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        gx = torch.ops.aten.threshold_backward(g.reshape(v.shape), v, 0.0)
        return gx.view(g.shape), None, None, None


class _Plain(nn.Module):
    """G plain fixed-point quantizers as one: bits and integer become [G, 1] tensors of the
    fast-path constants (inv = 2**(bits - keep_negative - integer), the clip bounds, the grid
    step), derived once from each member's own quantizer."""

    def __init__(self, quantizers: list):
        super().__init__()
        self.kind = type(quantizers[0]).__name__
        consts = [q.fast_constants() for q in quantizers]
        if self.kind == "quantized_relu":  # (inv, step, top) -> (inv, step, hi = top * inv)
            consts = [(inv, step, top * inv) for inv, step, top in consts]
        for name, col in zip(("c0", "c1", "c2", "c3"), zip(*consts)):
            self.register_buffer(name, torch.tensor(col, dtype=torch.float32).view(-1, 1))

    def extra_repr(self) -> str:
        return f"{self.kind}, G={self.c0.shape[0]}"

    def forward(self, x):
        if self.kind == "quantized_bits":  # (inv, lo, hi, step)
            return _BitsSTE.apply(x, self.c0, self.c1, self.c2, self.c3)
        return _ReluSTE.apply(x, self.c0, self.c1, self.c2)  # (inv, step, hi)


def _pad_to(part: torch.Tensor, shape) -> torch.Tensor:
    """`part` (a leading block of `shape`) zero-padded to `shape`."""
    if tuple(part.shape) == tuple(shape):
        return part
    pad = []
    for a, b in zip(reversed(shape), reversed(part.shape)):
        pad += [0, a - b]
    return F.pad(part, pad)


class _Field(nn.Module):
    """One quantizer field (kernel, bias or activation) of a stacked layer: maps [K, ...] to
    [K, ...] with member k's own quantizer on row k (None = identity)."""

    def __init__(self, fns: list, cuts: list[tuple], dims: int, mixed: str = "group"):
        super().__init__()
        if mixed not in ("group", "select"):
            raise ValueError(f"mixed={mixed!r}; expected 'group' or 'select'")
        K = len(fns)
        self.mixed = mixed
        self.identity = all(q is None for q in fns)
        keyed: dict[tuple, list[int]] = {}
        single: list[int] = []
        for k, q in enumerate(fns):
            if q is None:
                keyed.setdefault(("none",), []).append(k)
            elif _is_plain(q) or _is_elementwise(q):
                keyed.setdefault(_group_key(q), []).append(k)
            else:
                single.append(k)
        self.groups = []  # (rows, module or None for identity, cut or None)
        mods = []
        for key, rows in keyed.items():
            if key[0] == "plain":
                # select computes over all K rows: rows outside the group borrow a member's
                members = rows if mixed == "group" else \
                    [k if k in rows else rows[0] for k in range(K)]
                mod = _Plain([fns[k] for k in members])
            else:
                mod = None if key == ("none",) else fns[rows[0]]
            self.groups.append((rows, mod, None))
            mods.append(mod)
        for k in single:  # reduces over its tensor: its own slice, without the padding
            self.groups.append(([k], fns[k], cuts[k]))
            mods.append(fns[k])
        self.mods = nn.ModuleList([m for m in mods if m is not None])
        self.whole = len(self.groups) == 1 and self.groups[0][2] is None
        order = [k for rows, _, _ in self.groups for k in rows]
        self.register_buffer("inv", torch.argsort(torch.tensor(order)), persistent=False)
        for g, (rows, _, _) in enumerate(self.groups):
            self.register_buffer(f"rows{g}", torch.tensor(rows), persistent=False)
        sel = torch.zeros(len(self.groups), K, dtype=torch.bool)
        for g, (rows, _, _) in enumerate(self.groups):
            sel[g, rows] = True
        self.register_buffer("sel", sel.view([len(self.groups), K] + [1] * dims),
                             persistent=False)

    def extra_repr(self) -> str:
        def name(mod, cut):
            if mod is None:
                return "identity"
            if isinstance(mod, _Plain):
                return f"{mod.kind}[G]"
            return f"{mod}" + (" (own slice)" if cut is not None else "")
        return f"mixed={self.mixed!r}, " + "; ".join(
            f"{name(mod, cut)}: members {rows}" for rows, mod, cut in self.groups)

    def _apply_group(self, g: int, x: torch.Tensor) -> torch.Tensor:
        rows, mod, cut = self.groups[g]
        if cut is not None:  # one member, unpadded
            k = rows[0]
            y = mod(x[k][cut])
            return _pad_to(y, x.shape[1:]).unsqueeze(0)
        xs = x if self.mixed == "select" else x.index_select(0, getattr(self, f"rows{g}"))
        return xs if mod is None else mod(xs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        if self.whole:
            mod = self.groups[0][1]
            return x if mod is None else mod(x)
        if self.mixed == "group":
            parts = [self._apply_group(g, x) for g in range(len(self.groups))]
            return torch.cat(parts).index_select(0, self.inv)
        out = None
        singles = []
        for g, (_, _, cut) in enumerate(self.groups):
            if cut is not None:
                singles.append(g)
                continue
            y = self._apply_group(g, x)
            out = y if out is None else torch.where(self.sel[g], y, out)
        if out is None:
            out = x
        for g in singles:
            out = out.index_copy(0, getattr(self, f"rows{g}"), self._apply_group(g, x))
        return out
