"""Population training: K candidate MLPs of one layer sequence trained in one batched pass.

For tiny models a training step costs per-step overhead (Python, kernel launches, the
optimiser loop) more than arithmetic. `Population` stacks K members: the weights of a dense
layer are one `[K, out, in]` parameter (biases `[K, out]`) and a step is one batched matmul
(`torch.baddbmm`) per layer for all members, so the overhead is paid once for K.

* Quantizers: each member keeps its own. Per layer field (kernel, bias, activation) members are
  grouped by quantizer kind. Plain `quantized_bits` / `quantized_relu` members (scalar
  arguments, fixed alpha, deterministic) form ONE group whatever their bits/integer: these
  become per-member tensors (the [G, 1] constants 2**(bits - integer), grid step and clip
  bounds derived from them), so one call quantizes the whole group, with exactly the values
  and gradients each member's own quantizer gives (and the values of the core quantizer with
  tensor-valued bits/integer of shape [G, 1, 1]). Other element-wise quantizers (ternary,
  binary with a fixed alpha, po2, float activations) are grouped by identical configuration
  and called once on their stacked rows. Quantizers that reduce over the tensor
  (alpha='auto'/'auto_po2' scales) or draw random numbers run per member on its own unpadded
  slice. Mixed kinds in one field: the groups are gathered, computed and scattered back
  (`mixed="group"`, the default), or every group is computed over the whole stack and rows
  are selected with `torch.where` (`mixed="select"`). `benchmarks/population.py` times both on
  a population with five kinds and two widths: grouping was faster (about 1.1x per epoch at
  K = 16 on 2 CPU cores; select does each element-wise kind's work for all K rows), so it is
  the default.
* Widths: members with fewer units are zero-padded to the largest width; a 0/1 mask on the
  quantized weights and biases keeps the padding at zero, in the forward pass and in the
  gradients, so a padded member computes exactly what it computes alone.
* Training (`fit_population`) follows `hetq.train.fit` member by member: the same batch order
  for the same seed, the summed loss (each member's parameters get only their own loss's
  gradient), Adam/AdamW with per-member learning rate, schedule and weight decay, per-member
  magnitude pruning (sparsity masks), early stopping and best-epoch restore. A member that is
  finished (early stopping, or a search pruner saying stop) leaves the stack at the end of the
  epoch, so it stops costing compute.
* `extract(pop, k)` gives member k back as an ordinary hetq model with identical weights.

Equivalence: with the same seed a member trained in a population follows the trajectory of
`fit` on that model alone up to float rounding (batched matmuls may sum in another order);
quantization can turn such a rounding difference into a grid step when a weight sits on a
rounding boundary, so compare after a few steps or compare trajectories statistically.
Stochastic quantizers and dropout draw their random numbers in another order than `fit`.

Supported: `nn.Sequential` members made of `nn.Linear` / `QDense` (`QLinear`), `QActivation`
(also on the input), element-wise `torch.nn` activations (ReLU, Tanh, Sigmoid, ...),
Identity, Flatten (before the first dense layer), Dropout. Anything else raises a ValueError
naming the layer.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..quant.base import Activation, Quantizer
from ..quant.layers import QActivation, QDense
from .loop import TrainResult, _train_val_tensors, resolve_device
from .metrics import classification_metrics, per_class_metrics
from .tasks import Classify

__all__ = ["MemberResult", "Population", "extract", "fit_population"]

_DENSE = (nn.Linear, QDense)
_ELEMENTWISE_NN = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                   nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
                   nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.PReLU)


# -- quantizers over a stack ----------------------------------------------------------------
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
    """round(clip(x, 0, top) * inv) * step with the gradient 1 strictly inside (0, top): the
    values and the (hardtanh) gradient of `quantized_relu`'s fast path, with [G, 1] constants.

    Computed on t = x * inv (exact: inv is a power of two) against hi = top * inv = m - 1.
    The gradient mask is v = min(t, hi - t) > 0, which is exact (a float difference has the
    sign of the exact one), applied with one fused `threshold_backward`. Measured slower here:
    boolean masks, a tensor-bounded `clamp`, and `hardtanh` per run of members with equal
    bounds."""

    @staticmethod
    def forward(ctx, x, inv, step, hi):
        t = x.reshape(inv.shape[0], -1) * inv
        v = torch.sub(hi, t)
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


# -- stacked layers -------------------------------------------------------------------------
class _Dense(nn.Module):
    """K dense layers as one: y = act(x Qk(W)^T + Qb(b)) with W [K, out, in], b [K, out]."""

    def __init__(self, layers: list[nn.Linear], name: str, mixed: str):
        super().__init__()
        self.name = name
        K = len(layers)
        self.shapes = [tuple(m.weight.shape) for m in layers]
        n_out = max(o for o, _ in self.shapes)
        n_in = max(i for _, i in self.shapes)
        self.has_bias = layers[0].bias is not None
        if any((m.bias is not None) != self.has_bias for m in layers):
            raise ValueError(f"layer {name!r}: population members differ in having a bias")
        dev = layers[0].weight.device
        w = torch.zeros(K, n_out, n_in, device=dev)
        pad = torch.zeros(K, n_out, n_in, device=dev)
        b = torch.zeros(K, n_out, device=dev)
        for k, m in enumerate(layers):
            o, i = self.shapes[k]
            w[k, :o, :i] = m.weight.detach()
            pad[k, :o, :i] = 1.0
            if self.has_bias:
                b[k, :o] = m.bias.detach()
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b) if self.has_bias else None
        self.padded = not bool(pad.all())
        self.register_buffer("pad", pad if self.padded else None)
        q = [getattr(m, "quantizers", {}) for m in layers]
        self.kq = _Field([d.get("kernel") for d in q],
                         [(slice(0, o), slice(0, i)) for o, i in self.shapes], 2, mixed)
        self.bq = _Field([d.get("bias") for d in q], [(slice(0, o),) for o, _ in self.shapes],
                         1, mixed)
        self.aq = _Field([d.get("activation") for d in q],
                         [(slice(None), slice(0, o)) for o, _ in self.shapes], 2, mixed)

    def extra_repr(self) -> str:
        return (f"{self.name!r}, K={len(self.shapes)}, [out, in] per member {self.shapes}"
                + (", padded" if self.padded else ""))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [K, B, in] or [B, in] (shared)
        w = self.kq(self.weight)
        if self.padded:
            w = w * self.pad
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(w.shape[0], -1, -1)
        if not self.has_bias:
            return self.aq(torch.bmm(x, w.transpose(1, 2)))
        b = self.bq(self.bias)
        if self.padded:
            b = b * self.pad[:, :, 0]
        return self.aq(torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)))


class _Act(nn.Module):
    """K element-wise activations (QActivation quantizers or torch.nn activations)."""

    def __init__(self, modules: list[nn.Module], widths: list[int | None], mixed: str):
        super().__init__()
        self.K = len(modules)
        fns = [m.activation_quantizer if isinstance(m, QActivation) else m for m in modules]
        self.f = _Field(fns, [(slice(None), slice(0, w)) for w in widths], 2, mixed)

    def forward(self, x):
        if x.dim() == 2:  # the shared input (an input quantizer): one copy per member
            x = x.unsqueeze(0).expand(self.K, -1, -1).contiguous()
        return self.f(x)


class _Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


def _stack_layer(name: str, mods: list[nn.Module], widths: list[int] | None, mixed: str):
    types = sorted({type(m).__name__ for m in mods})
    if all(type(m) in _DENSE for m in mods):
        return _Dense(mods, name, mixed)
    if all(isinstance(m, (nn.Identity, nn.Flatten)) for m in mods):
        return None
    if all(isinstance(m, nn.Dropout) for m in mods):
        ps = {m.p for m in mods}
        if len(ps) > 1:
            raise ValueError(f"layer {name!r}: members' dropout rates differ ({sorted(ps)})")
        return _Dropout(ps.pop()) if ps != {0.0} else None
    if all(isinstance(m, QActivation) or _is_elementwise(m) for m in mods):
        return _Act(mods, widths or [None] * len(mods), mixed)
    raise ValueError(f"layer {name!r} ({', '.join(types)}) is not supported by population "
                     "training (supported: Linear/QDense, QActivation, element-wise torch.nn "
                     "activations, Identity, Flatten, Dropout)")


class Population(nn.Module):
    """K members (ordinary hetq or float `nn.Sequential` MLPs with the same layer names and
    types, widths may differ) stacked with a leading member dimension.

    forward(x [B, in]) -> logits [K, B, out_max] (member k's own outputs: [:, :, :n_out[k]]).
    `ids[r]` is the original index of the member in stack row r (rows leave with `keep`).
    mixed: how quantizers of different kinds in one layer field run: "group" or "select"
    (see the module docstring).
    """

    def __init__(self, models: list[nn.Module], mixed: str = "group"):
        super().__init__()
        if not models:
            raise ValueError("a population needs at least one member")
        self.mixed = mixed
        # by member index: what extraction copies (the stack holds the weights)
        self.templates = [copy.deepcopy(m).cpu().eval() for m in models]
        self._stack([copy.deepcopy(t) for t in self.templates], list(range(len(models))))

    def _stack(self, models: list[nn.Module], ids: list[int]) -> None:
        for k, m in zip(ids, models):
            if not isinstance(m, nn.Sequential):
                raise ValueError(f"member {k} is a {type(m).__name__}; population members must "
                                 "be nn.Sequential models")
        seqs = [list(m.named_children()) for m in models]
        names = [n for n, _ in seqs[0]]
        for k, s in zip(ids[1:], seqs[1:]):
            if [n for n, _ in s] != names:
                raise ValueError(f"member {k} has layers {[n for n, _ in s]}, member {ids[0]} "
                                 f"has {names}: population members must share the layer sequence")
        layers, widths, flatten_first = [], None, False
        for j, name in enumerate(names):
            mods = [s[j][1] for s in seqs]
            layer = _stack_layer(name, mods, widths, self.mixed)
            if isinstance(layer, _Dense):
                widths = [o for o, _ in layer.shapes]
            elif layer is None and widths is None and isinstance(mods[0], nn.Flatten):
                flatten_first = True
            layers.append(layer if layer is not None else nn.Identity())
        dense = [m for m in layers if isinstance(m, _Dense)]
        if not dense:
            raise ValueError("population members have no dense layer")
        self.layers = nn.ModuleList(layers)
        self.flatten_first = flatten_first
        self.ids = list(ids)
        self.n_out = [o for o, _ in dense[-1].shapes]

    @property
    def size(self) -> int:
        return len(self.ids)

    def dense(self) -> dict[str, _Dense]:
        return {m.name: m for m in self.layers if isinstance(m, _Dense)}

    def stacked_parameters(self) -> list[nn.Parameter]:
        """The trained parameters: every dense layer's [K, out, in] weight and [K, out] bias."""
        out = []
        for layer in self.dense().values():
            out += [layer.weight] + ([layer.bias] if layer.has_bias else [])
        return out

    def extra_repr(self) -> str:
        return f"members={self.ids}, mixed={self.mixed!r}"

    def forward(self, x: torch.Tensor, per_member: bool = False) -> torch.Tensor:
        """x [B, ...] shared by all members, or (per_member) [K, B, ...], one batch per
        member -> [K, B, out_max]."""
        h = x.flatten(2 if per_member else 1) if self.flatten_first else x
        for layer in self.layers:
            h = layer(h)
        return h

    def keep(self, rows: list[int]) -> None:
        """Keep only the given stack rows (finished members leave the stack)."""
        dev = self.stacked_parameters()[0].device
        was = self.training
        self._stack([self.member_model(r) for r in rows], [self.ids[r] for r in rows])
        self.to(dev).train(was)

    @torch.no_grad()
    def member_state(self, row: int) -> dict[str, torch.Tensor]:
        """The state dict of the member in stack row `row` (its own shapes, on the CPU)."""
        sd = {k: v.detach().clone() for k, v in self.templates[self.ids[row]].state_dict().items()}
        for layer in self.dense().values():
            o, i = layer.shapes[row]
            sd[f"{layer.name}.weight"] = layer.weight[row, :o, :i].detach().cpu().clone()
            if layer.has_bias:
                sd[f"{layer.name}.bias"] = layer.bias[row, :o].detach().cpu().clone()
        return sd

    def member_model(self, row: int) -> nn.Module:
        """Stack row `row` as an ordinary model (CPU, eval mode)."""
        m = copy.deepcopy(self.templates[self.ids[row]])
        m.load_state_dict(self.member_state(row))
        return m.eval()

    def extract(self, k: int) -> nn.Module:
        """Member k (its index in the list the population was built from) as an ordinary hetq
        model with identical weights, hence identical outputs."""
        if k not in self.ids:
            raise ValueError(f"member {k} is not in the population (members: {self.ids})")
        return self.member_model(self.ids.index(k))


def extract(pop: Population, k: int) -> nn.Module:
    """Member k of `pop` as an ordinary hetq model (see `Population.extract`)."""
    return pop.extract(k)


# -- training -------------------------------------------------------------------------------
class _Adam:
    """Adam / AdamW over stacked [K, ...] parameters with a learning rate and weight decay per
    member row; the operations of `torch.optim.Adam`'s single-tensor path in the same order
    (Adam is element-wise, so members stay independent)."""

    def __init__(self, params, decoupled: bool, betas=(0.9, 0.999), eps=1e-8):
        self.params = list(params)
        self.decoupled = decoupled
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def plan(self, lrs: list[float], wds: list[float], steps: int):
        """Per-step, per-member constants of the next `steps` steps, built on the host in
        double precision as `torch.optim.Adam` does (-lr / (1 - beta1**t), AdamW's
        1 - lr * wd) and sent to the device once, so the steps never wait on the host."""
        dev = self.params[0].device
        ts = range(self.t + 1, self.t + steps + 1)
        neg = torch.tensor([[-lr / (1 - self.b1 ** t) for lr in lrs] for t in ts], device=dev)
        decay = None
        if any(wds):
            row = [1 - lr * wd for lr, wd in zip(lrs, wds)] if self.decoupled else wds
            decay = torch.tensor(row, device=dev)
        return neg, decay

    @torch.no_grad()
    def step(self, neg_step: torch.Tensor, decay: torch.Tensor | None) -> None:
        """One step; neg_step [K] and decay [K] (or None) are one row of `plan`."""
        self.t += 1
        bc2_sqrt = (1 - self.b2 ** self.t) ** 0.5
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            if g is None:
                continue
            shape = [-1] + [1] * (p.dim() - 1)
            if decay is not None:
                if self.decoupled:
                    p.mul_(decay.view(shape))
                else:
                    g = g.addcmul(p, decay.view(shape))
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.addcdiv_(m * neg_step.view(shape), denom)

    def keep(self, rows: list[int], params: list[nn.Parameter]) -> None:
        """Keep the state of the given member rows; `params` are the re-packed parameters."""
        self.m = [m[rows].clone() for m in self.m]
        self.v = [v[rows].clone() for v in self.v]
        self.params = list(params)


def _lr_table(lr: float, epochs: int, schedule: str) -> list[float]:
    """The learning rate of each epoch as `fit`'s `CosineAnnealingLR(T_max=epochs)` (eta_min 0)
    steps it: the same recursive formula, so the same floats."""
    out = [lr]
    for e in range(1, epochs if schedule == "cosine" else 0):
        out.append((1 + math.cos(math.pi * e / epochs))
                   / (1 + math.cos(math.pi * (e - 1) / epochs)) * (out[-1] - 0.0) + 0.0)
    return out + [lr] * (epochs - len(out))


def _per_member(name: str, value, K: int, kind=float) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != K:
            raise ValueError(f"{name}: {len(value)} values for {K} members")
        return [v if v is None else kind(v) for v in value]
    return [value if value is None else kind(value)] * K


@dataclass
class MemberResult(TrainResult):
    """`TrainResult` of one member, plus how it ended and its final state dict."""

    stopped_by_report: bool = False  # a report (search pruner) stopped it
    stop_reason: str = ""  # why it left before the last epoch
    diverged: bool = False  # non-finite training loss (`fit` raises FloatingPointError)
    sparsity: dict[str, float] = field(default_factory=dict)
    state: dict | None = field(default=None, repr=False)


class _Sparsity:
    """Per-member magnitude pruning with `MagnitudePruner`'s schedule and masks."""

    def __init__(self, pop: Population, targets: list, epochs: int, ramp_fraction: float):
        dense = pop.dense()
        self.targets = [dict(t or {}) for t in targets]
        for k, t in enumerate(self.targets):
            for name, s in t.items():
                if name not in dense:
                    raise ValueError(f"member {k}: sparsity given for {name!r}, which is not a "
                                     f"dense layer (dense layers: {sorted(dense)})")
                if not 0.0 <= s < 1.0:
                    raise ValueError(f"member {k}: sparsity for {name!r} must be in [0, 1), "
                                     f"got {s!r}")
        self.layers = sorted({n for t in self.targets for n, s in t.items() if s > 0})
        self.epochs, self.ramp = epochs, ramp_fraction
        self.masks: dict[str, torch.Tensor] = {}  # [K, out, in], set after the first epoch

    @torch.no_grad()
    def apply(self, pop: Population) -> None:
        dense = pop.dense()
        for name, mask in self.masks.items():
            dense[name].weight.mul_(mask)

    @torch.no_grad()
    def on_epoch_end(self, pop: Population, epoch: int) -> None:
        if not self.layers:
            return
        # the schedule and the masks are MagnitudePruner's own functions (imported here only:
        # hetq.search builds on hetq.train, not the other way round)
        from ..search.sparsity import magnitude_mask, polynomial_sparsity

        dense = pop.dense()
        for name in self.layers:
            layer = dense[name]
            mask = self.masks.get(name, torch.ones_like(layer.weight))
            for r, k in enumerate(pop.ids):
                final = self.targets[k].get(name, 0.0)
                if final > 0:
                    o, i = layer.shapes[r]
                    s = polynomial_sparsity(final, epoch, self.epochs, self.ramp)
                    mask[r, :o, :i] = magnitude_mask(layer.weight[r, :o, :i], s)
            self.masks[name] = mask
        self.apply(pop)

    def keep(self, rows: list[int]) -> None:
        self.masks = {n: m[rows].clone() for n, m in self.masks.items()}

    def member_masks(self, pop: Population, row: int) -> dict[str, torch.Tensor]:
        dense = pop.dense()
        out = {}
        for name, mask in self.masks.items():
            o, i = dense[name].shapes[row]
            if self.targets[pop.ids[row]].get(name, 0.0) > 0:
                out[name] = mask[row, :o, :i].cpu()
        return out


def fit_population(models, data, *, epochs: int = 30, batch_size: int = 1024,
                   lr: float | list[float] = 1e-3, optimizer: str = "adam",
                   weight_decay: float | list[float] = 0.0, schedule: str = "cosine",
                   patience: int | list[int | None] | None = None,
                   seed: int | list[int] = 0, sparsity: list[dict | None] | None = None,
                   ramp_fraction: float = 0.7, task=None, report=None,
                   restore_best: bool = True, device="cpu", val_metrics: str = "task",
                   mixed: str = "group") -> list[MemberResult]:
    """Train K members together; member k as `fit(models[k], data, ...)` with its own values.

    models: a list of K models (updated in place with their trained weights) or a
        `Population` (updated in place; all K members are back in it at the end).
    lr, weight_decay, patience, seed: one value for all members or a list of K. Members with
        the same seed share each batch (one input tensor); different seeds give each member
        its own batch order (the inputs are gathered per member).
    sparsity: per member None or {layer: final sparsity}: magnitude pruning with the schedule
        of `hetq.search.sparsity.MagnitudePruner` (masks at each epoch end, applied after
        every step; the final masks are applied to the restored best weights).
    report: called as report(k, epoch, val_metrics) after each of member k's epochs; a True
        return value or a raised exception (recorded in `stop_reason`) stops member k (an Optuna
        pruner). A stopped member keeps its weights of that epoch, as `fit` does when its
        report raises.
    val_metrics: "task" (every metric of the task, as `fit`) or "fast" (loss and accuracy).
    mixed: "group" or "select", how quantizers of different kinds in one layer run (module
        docstring). optimizer, schedule, task, device, restore_best: as in `fit`.
    Returns one `MemberResult` per member, in the order given.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if optimizer not in ("adam", "adamw"):
        raise ValueError(f"optimizer {optimizer!r}; expected 'adam' or 'adamw'")
    if schedule not in ("cosine", "none"):
        raise ValueError(f"schedule {schedule!r}; expected 'cosine' or 'none'")
    if val_metrics not in ("task", "fast"):
        raise ValueError(f"val_metrics {val_metrics!r}; expected 'task' or 'fast'")
    given_pop = isinstance(models, Population)
    pop = models if given_pop else Population(models, mixed=mixed)
    if given_pop and pop.ids != list(range(pop.size)):
        raise ValueError("the population has lost members; train a complete population")
    K = pop.size
    if sparsity is not None and len(sparsity) != K:
        raise ValueError(f"sparsity: {len(sparsity)} entries for {K} members")
    stacked = {id(p) for p in pop.stacked_parameters()}
    other = [n for n, p in pop.named_parameters() if p.requires_grad and id(p) not in stacked]
    if other:
        raise ValueError(f"population training trains dense weights and biases only; "
                         f"trainable quantizer/activation parameters found: {other}")
    lrs = _per_member("lr", lr, K)
    wds = _per_member("weight_decay", weight_decay, K)
    pats = _per_member("patience", patience, K, int)
    seeds = _per_member("seed", seed, K, int)
    sparse = _Sparsity(pop, sparsity if sparsity is not None else [None] * K, epochs,
                       ramp_fraction)
    task = task or Classify()
    dev = resolve_device(device)
    pop.to(dev)
    Xtr, ytr, Xva, yva = _train_val_tensors(data, task, dev)
    classes = list(getattr(data, "classes", []))
    yva_np = yva.cpu().numpy()
    lr_tables = [_lr_table(v, epochs, schedule) for v in lrs]
    opt = _Adam(pop.stacked_parameters(), decoupled=optimizer == "adamw")
    gens = {s: torch.Generator().manual_seed(s) for s in sorted(set(seeds))}
    torch.manual_seed(seeds[0])  # stochastic quantizers draw from the global generator
    results = [MemberResult() for _ in range(K)]
    best: list[dict | None] = [None] * K
    final: list[dict | None] = [None] * K
    n = Xtr.shape[0]
    t0 = time.perf_counter()
    fast_ce = type(task) is Classify  # its loss is _cross_entropy's

    def finish(r: int, k: int, restore: bool) -> None:
        res = results[k]
        state = best[k] if restore and restore_best and best[k] is not None \
            else pop.member_state(r)
        masks = sparse.member_masks(pop, r)
        if restore and restore_best and best[k] is not None:
            for name, mask in masks.items():  # MagnitudePruner.apply() after the restore
                state[f"{name}.weight"] = state[f"{name}.weight"] * mask
        final[k] = state
        res.state = state
        res.seconds = time.perf_counter() - t0
        w = {name: state[f"{name}.weight"] for name in masks}
        res.sparsity = {name: float((v == 0).float().mean()) for name, v in w.items()}

    for epoch in range(epochs):
        if pop.size == 0:
            break
        ids = list(pop.ids)
        Ka = len(ids)
        pop.train()
        neg_steps, decay = opt.plan([lr_tables[k][epoch] for k in ids], [wds[k] for k in ids],
                                    (n + batch_size - 1) // batch_size)
        # one permutation per distinct seed, from that seed's generator (members only leave,
        # so each generator has drawn one permutation per epoch, as in `fit`)
        perms = {s: torch.randperm(n, generator=gens[s]) for s in sorted({seeds[k] for k in ids})}
        shared = len(perms) == 1
        perm = next(iter(perms.values())) if shared else \
            torch.stack([perms[seeds[k]] for k in ids])
        perm = perm.to(dev)
        total = torch.zeros(Ka, device=dev)
        for j, i in enumerate(range(0, n, batch_size)):
            if shared:
                idx = perm[i:i + batch_size]
                xb, yb = Xtr[idx], ytr[idx]
            else:
                idx = perm[:, i:i + batch_size]
                xb, yb = Xtr[idx], ytr[idx]  # [Ka, B, ...], [Ka, B]
            B = idx.shape[-1]
            out = pop(xb, per_member=not shared)
            if fast_ce and len(set(pop.n_out)) == 1:
                per = _cross_entropy(out, yb)
            else:
                per = torch.stack([task.loss(out[r, :, :pop.n_out[r]],
                                             xb if shared else xb[r],
                                             yb if shared else yb[r]) for r in range(Ka)])
            opt.zero_grad()
            per.sum().backward()
            opt.step(neg_steps[j], decay)
            if sparse.masks:
                sparse.apply(pop)
            total += per.detach() * B
        sparse.on_epoch_end(pop, epoch)
        train_loss = (total / n).tolist()
        vals = _validate(pop, Xva, yva, yva_np, task, classes, val_metrics)
        stop_rows = []
        for r, k in enumerate(ids):
            res, val = results[k], vals[r]
            res.history.append({"epoch": epoch, "loss": train_loss[r],
                                **{f"val_{a}": b for a, b in val.items()}})
            if not math.isfinite(train_loss[r]):
                res.diverged = True
                res.stop_reason = f"training loss {train_loss[r]} at epoch {epoch}"
                stop_rows.append((r, False))
                continue
            if val["loss"] < res.best_val_loss:
                res.best_val_loss, res.best_epoch = val["loss"], epoch
                if restore_best:
                    best[k] = pop.member_state(r)
            if report is not None:
                try:
                    stop = bool(report(k, epoch, val))
                    why = f"report returned True after epoch {epoch}"
                except Exception as e:  # noqa: BLE001 - fit's report raises to stop a trial
                    stop, why = True, f"report raised {e!r} after epoch {epoch}"
                if stop:
                    res.stopped_by_report, res.stop_reason = True, why
                    stop_rows.append((r, False))
                    continue
            if pats[k] is not None and epoch - res.best_epoch >= pats[k]:
                res.stopped_early = True
                res.stop_reason = f"no better validation loss for {pats[k]} epoch(s)"
                stop_rows.append((r, True))
        for r, restore in stop_rows:
            finish(r, ids[r], restore)
        if stop_rows:  # re-pack: the stopped members leave the stack and the optimiser
            gone = {r for r, _ in stop_rows}
            rows = [r for r in range(Ka) if r not in gone]
            sparse.keep(rows)
            if rows:
                pop.keep(rows)
                opt.keep(rows, pop.stacked_parameters())
            else:
                pop.ids = []  # nobody left; the stack is rebuilt or dropped below
    for r, k in enumerate(pop.ids):
        finish(r, k, True)
    if given_pop:  # every member back in the stack, with its final weights
        ms = []
        for k in range(K):
            m = copy.deepcopy(pop.templates[k])
            m.load_state_dict(final[k])
            ms.append(m)
        pop._stack(ms, list(range(K)))
        pop.to(dev)
    else:
        for k, m in enumerate(models):
            m.load_state_dict(final[k])
            m.eval()
    pop.eval()
    return results


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each member, [K, B, C] logits, labels [B] or [K, B] -> [K]:
    logsumexp(z) - z_y with z = logits - max. Written out because `F.cross_entropy` over
    [K * B, 5] (a softmax over 5 classes per row) measured 3x slower here."""
    K, B, _ = logits.shape
    z = logits - logits.detach().amax(-1, keepdim=True)
    idx = (y.view(1, B, 1).expand(K, B, 1) if y.dim() == 1 else y.view(K, B, 1))
    return (z.exp().sum(-1).log() - z.gather(-1, idx).squeeze(-1)).mean(1)


@torch.no_grad()
def _validate(pop: Population, Xva, yva, yva_np, task, classes, how: str
              ) -> list[dict[str, float]]:
    """Each member's validation metrics and loss, as `hetq.train.loop.evaluate_tensors` gives
    them (`how="fast"`: loss, and accuracy for classification)."""
    pop.eval()
    Ka, N = pop.size, Xva.shape[0]
    # about 16k rows of activations per chunk (K x chunk): 8192 samples per chunk, as `fit`
    # uses, measured 2.5x (K = 16) to 3x (K = 64) slower (tensors far larger than the caches)
    batch_size = min(8192, max(256, 16384 // Ka))
    classify = type(task) is Classify and len(set(pop.n_out)) == 1
    total = torch.zeros(Ka, device=Xva.device)
    outs = []
    for i in range(0, N, batch_size):
        xb, yb = Xva[i:i + batch_size], yva[i:i + batch_size]
        out = pop(xb)  # [Ka, b, C]
        if classify:
            total += _cross_entropy(out, yb) * xb.shape[0]
        else:
            total += torch.stack([task.loss(out[r, :, :pop.n_out[r]], xb, yb)
                                  for r in range(Ka)]) * xb.shape[0]
        outs.append(out if how == "task" or classify else None)
    loss = (total / max(1, N)).tolist()
    if how == "fast":
        if not classify:
            return [{"loss": v} for v in loss]
        logits = torch.cat(outs, 1)
        acc = (logits.argmax(-1) == yva).float().mean(1).tolist()
        return [{"accuracy": a, "loss": v} for a, v in zip(acc, loss)]
    if classify:
        probs = torch.softmax(torch.cat(outs, 1), dim=-1).float().cpu()
        res = _classification_metrics(probs, yva_np, classes, task.fpr)
    else:
        res = []
        for r in range(Ka):
            s = torch.cat([task.scores(o[r, :, :pop.n_out[r]], Xva[i:i + batch_size])
                           .float().cpu() for o, i in zip(outs, range(0, N, batch_size))])
            res.append(task.metrics(s.numpy(), yva_np, classes))
    for m, v in zip(res, loss):
        m["loss"] = v
    return res


def _classification_metrics(probs: torch.Tensor, y: np.ndarray, classes: list[str],
                            fpr: float) -> list[dict[str, float]]:
    """`hetq.train.metrics.classification_metrics` of K members, probs [K, N, C].

    Its cost is sorting: 2 C stable argsorts of N scores per member. Here one multi-threaded
    `torch.sort` orders every member's class scores; the metric functions then get presorted
    columns, where their own stable argsort is nearly free. The ROC points sit at the last
    index of each distinct score, which the order within ties does not change, so the values
    are exactly those of `classification_metrics`."""
    if not torch.isfinite(probs).all():  # NaN sorts differently in torch and numpy
        return [classification_metrics(p.numpy(), y, classes, fpr) for p in probs]
    srt = torch.sort(probs.transpose(1, 2), dim=-1, descending=True)
    values, order = srt.values.numpy(), srt.indices.numpy()
    pred = probs.argmax(-1).numpy()
    out = []
    for r in range(probs.shape[0]):
        m = {"accuracy": float((pred[r] == y).mean())}
        m.update(per_class_metrics(lambda k, lab, r=r: (values[r, k], lab[order[r, k]]),
                                   y, classes, fpr))
        out.append(m)
    return out
