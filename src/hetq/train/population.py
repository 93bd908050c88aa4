"""Population training: K candidate models of one MLP family trained in one batched pass.

For tiny models a training step costs per-step overhead (Python, kernel launches, the
optimizer loop), not arithmetic. `Population` stacks K members' weights with a leading
candidate dimension (`[K, out, in]`, batched matmul) and trains them together; each member
keeps its own quantizers, width, learning rate, early stopping and best-epoch restore, and
`extract(k)` gives back an ordinary hetq model with the member's weights.

Quantizers: members whose quantizer for a field is a plain `quantized_bits` /
`quantized_relu` (scalar bits/integer, fixed alpha) are quantized in ONE call with
tensor-valued bits/integer of shape [K, 1, 1] (the reason the core accepts tensor-valued
quantizer parameters); every other kind (ternary, binary, po2, auto-scaled, ...) is applied
per member to its own slice (grouping). Grouping costs one call per distinct member; the
alternative, computing every kind over the whole stack and selecting, costs one call per
kind over K members — `benchmarks/population.py` measures both on a mixed population and
grouping was faster on the jet MLP (it does not waste K-fold work on auto-scaled quantizers).

Widths: members with fewer units are masked to the largest width (masked rows and columns
are zero and get zero gradients). Finished members (early stopping, or a search pruner
saying stop) leave the stack at the end of the epoch, so they stop costing updates.

Equivalence: with the same seed (same batch order) a member trained in a population follows
the same trajectory as `hetq.train.fit` on that model alone, up to float rounding (Adam is
elementwise and the summed loss keeps the members' gradients independent); quantization
can amplify rounding differences when a value sits on a rounding boundary.

Supported layers: Linear/QDense (incl. their activation quantizer), QActivation, ReLU,
Identity/Dropout/Flatten. Anything else raises a ValueError naming the layer.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.layers import QActivation

_PLAIN_KINDS = ("quantized_bits", "quantized_relu")


def _is_plain(q) -> bool:
    """A quantizer that can be batched with tensor-valued bits/integer."""
    if q is None or getattr(q, "name", None) not in _PLAIN_KINDS or not q.is_scalar:
        return False
    if getattr(q, "use_stochastic_rounding", False) or q.qnoise_factor != 1.0 or not q.use_ste:
        return False
    if q.name == "quantized_bits":
        return q.alpha in (None, 1, 1.0) and q.bits - (1 if q.keep_negative else 0) > 0
    return not q.negative_slope and not q.use_sigmoid and q.is_quantized_clip


def _plain_key(q) -> tuple:
    """Everything but bits/integer must agree for members to share one batched quantizer."""
    cfg = q.get_config()
    cfg.pop("bits", None)
    cfg.pop("integer", None)
    return (q.name, tuple(sorted((k, repr(v)) for k, v in cfg.items())))


class _BatchedPlain(nn.Module):
    """The fast path of `quantized_bits` / `quantized_relu` with per-member constants of shape
    [K, 1, ...]: the same operations in the same order as the scalar fast path, so each
    member's values are bit-identical to its own quantizer's."""

    def __init__(self, quantizers: list, dims: int):
        super().__init__()
        self.kind = quantizers[0].name
        consts = [q.fast_constants() for q in quantizers]
        shape = [len(quantizers)] + [1] * dims
        cols = list(zip(*consts))
        for name, col in zip(("c0", "c1", "c2", "c3")[:len(cols)], cols):
            self.register_buffer(name, torch.tensor(col, dtype=torch.float32).view(shape))

    def forward(self, x):
        if self.kind == "quantized_bits":  # (inv, lo, hi, step)
            return _BitsSTE.apply(x, self.c0, self.c1, self.c2, self.c3)
        return _ReluSTE.apply(x, self.c0, self.c1, self.c2)  # (inv, step, top)


class _BitsSTE(torch.autograd.Function):
    """clip(round(x * inv), lo, hi) * step, gradient identity (in place on one temporary;
    for [K, B, F] stacks one Function beats the half dozen autograd nodes of the scalar
    path)."""

    @staticmethod
    def forward(ctx, x, inv, lo, hi, step):
        return (x * inv).round_().clamp_(lo, hi).mul_(step)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None, None


class _ReluSTE(torch.autograd.Function):
    """round(clip(x, 0, top) * inv) * step; gradient 1 strictly inside (0, top) (hardtanh's)."""

    @staticmethod
    def forward(ctx, x, inv, step, top):
        ctx.save_for_backward((x > 0) & (x < top))
        return torch.clamp(x, torch.zeros_like(top), top).mul_(inv).round_().mul_(step)

    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g * inside, None, None, None


class _FieldQuantizer(nn.Module):
    """Quantizes a stacked [K, ...] tensor with each member's quantizer."""

    def __init__(self, quantizers: list, dims: int):
        super().__init__()
        self.dims = dims  # rank of one member's tensor (broadcast shape [K, 1, ...])
        self.set_members(quantizers)

    def set_members(self, quantizers: list):
        self.members = list(quantizers)
        K = len(quantizers)
        self.none = all(q is None for q in quantizers)
        plain = [k for k, q in enumerate(quantizers) if _is_plain(q)]
        groups: dict[tuple, list[int]] = {}
        for k in plain:
            groups.setdefault(_plain_key(quantizers[k]), []).append(k)
        self.batched = []  # (member indices, batched quantizer)
        for idx in groups.values():
            qs = [quantizers[k] for k in idx]
            if all(q.fast_constants() for q in qs):
                self.batched.append((idx, _BatchedPlain(qs, self.dims)))
                continue
            q0 = qs[0]
            cfg = q0.get_config()
            shape = [len(idx)] + [1] * self.dims
            cfg["bits"] = torch.tensor([float(q.bits) for q in qs]).view(shape)
            cfg["integer"] = torch.tensor([float(q.integer) for q in qs]).view(shape)
            self.batched.append((idx, type(q0)(**cfg)))
        covered = {k for idx, _ in self.batched for k in idx}
        self.single = [(k, q) for k, q in enumerate(quantizers)
                       if q is not None and k not in covered]
        self.identity = [k for k, q in enumerate(quantizers) if q is None]
        self.all_batched = len(self.batched) == 1 and len(self.batched[0][0]) == K

    def forward(self, x: torch.Tensor, slicer=None) -> torch.Tensor:
        if self.none:
            return x
        if self.all_batched:
            return self.batched[0][1](x)
        out = [None] * len(self.members)
        for idx, q in self.batched:
            y = q(x[idx])
            for j, k in enumerate(idx):
                out[k] = y[j]
        for k, q in self.single:
            xs = x[k] if slicer is None else slicer(x, k)
            out[k] = q(xs) if slicer is None else _unslice(x[k], q(xs))
        for k in self.identity:
            out[k] = x[k]
        return torch.stack(out)


def _unslice(full: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """`part` (a leading block of `full`'s shape) padded with zeros to `full`'s shape."""
    if part.shape == full.shape:
        return part
    pad = []
    for a, b in zip(reversed(full.shape), reversed(part.shape)):
        pad += [0, a - b]
    return F.pad(part, pad)


@dataclass
class _Member:
    model: nn.Module  # the original (template) model; extraction copies it
    widths: list[int]  # output units of each dense layer


class PopDense(nn.Module):
    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        K = len(layers)
        n_out = max(m.out_features for m in layers)
        n_in = max(m.in_features for m in layers)
        self.weight = nn.Parameter(torch.zeros(K, n_out, n_in))
        self.has_bias = layers[0].bias is not None
        if any((m.bias is not None) != self.has_bias for m in layers):
            raise ValueError("population members differ in having a bias")
        self.bias = nn.Parameter(torch.zeros(K, n_out)) if self.has_bias else None
        mask = torch.zeros(K, n_out, n_in)
        with torch.no_grad():
            for k, m in enumerate(layers):
                o, i = m.weight.shape
                self.weight[k, :o, :i] = m.weight
                mask[k, :o, :i] = 1
                if self.has_bias:
                    self.bias[k, :o] = m.bias
        self.register_buffer("mask", mask)
        self.shapes = [tuple(m.weight.shape) for m in layers]
        q = [getattr(m, "quantizers", {}) for m in layers]
        self.kq = _FieldQuantizer([d.get("kernel") for d in q], 2)
        self.bq = _FieldQuantizer([d.get("bias") for d in q], 1)
        self.aq = _FieldQuantizer([d.get("activation") for d in q], 2)
        self.masked = not bool(mask.all())

    def _slicer(self, which):
        shapes = self.shapes

        def cut(x, k):
            o, i = shapes[k]
            return x[k, :o, :i] if which == "w" else x[k, :o]
        return cut

    def forward(self, x):  # x [K, B, in]
        w = self.kq(self.weight, self._slicer("w"))
        if self.masked:
            w = w * self.mask
        y = torch.bmm(x, w.transpose(1, 2))
        if self.has_bias:
            b = self.bq(self.bias, self._slicer("b"))
            if self.masked:
                b = b * self.mask[:, :, 0]
            y = y + b.unsqueeze(1)
        return self.aq(y)

    def keep(self, idx: list[int]):
        with torch.no_grad():
            self.weight = nn.Parameter(self.weight.detach()[idx].clone())
            if self.has_bias:
                self.bias = nn.Parameter(self.bias.detach()[idx].clone())
        self.mask = self.mask[idx]
        self.shapes = [self.shapes[k] for k in idx]
        for fq in (self.kq, self.bq, self.aq):
            fq.set_members([fq.members[k] for k in idx])


class PopAct(nn.Module):
    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        kinds = {type(m) for m in modules}
        if kinds <= {nn.ReLU}:
            self.fq = None
        elif kinds <= {QActivation, nn.ReLU}:  # float ReLU members: ReLU on their slice
            self.fq = _FieldQuantizer([m.activation_quantizer if isinstance(m, QActivation)
                                       else nn.ReLU() for m in modules], 2)
        else:
            raise ValueError(f"population members differ at an activation: "
                             f"{sorted(k.__name__ for k in kinds)}")

    def forward(self, x):
        return torch.relu(x) if self.fq is None else self.fq(x)

    def keep(self, idx):
        if self.fq is not None:
            self.fq.set_members([self.fq.members[k] for k in idx])


class Population(nn.Module):
    """K members (ordinary hetq or float MLPs with the same layer sequence) stacked."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("a population needs at least one member")
        seqs = [list(m.named_children()) for m in models]
        names = [n for n, _ in seqs[0]]
        for k, s in enumerate(seqs[1:], 1):
            if [n for n, _ in s] != names:
                raise ValueError(f"member {k} has layers {[n for n, _ in s]}, member 0 has "
                                 f"{names}: population members must share the layer sequence")
        self.names = names
        self.templates = [copy.deepcopy(m).cpu().eval() for m in models]
        layers = []
        for j, name in enumerate(names):
            mods = [s[j][1] for s in seqs]
            if all(isinstance(m, nn.Linear) for m in mods):
                layers.append(PopDense(mods))
            elif all(isinstance(m, (QActivation, nn.ReLU)) for m in mods):
                layers.append(PopAct(mods))
            elif all(isinstance(m, (nn.Identity, nn.Dropout, nn.Flatten)) for m in mods):
                layers.append(nn.Identity())
            else:
                kinds = sorted({type(m).__name__ for m in mods})
                raise ValueError(f"layer {name!r} ({', '.join(kinds)}) is not supported by "
                                 "population training (Linear/QDense, QActivation, ReLU)")
        self.layers = nn.ModuleList(layers)
        self.ids = list(range(len(models)))  # original member index of each stack row
        dense = [m for m in self.layers if isinstance(m, PopDense)]
        self.n_in = max(s[1] for s in dense[0].shapes)
        self.n_out = [s[0] for s in dense[-1].shapes]

    @property
    def size(self) -> int:
        return len(self.ids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in] (shared by all members) -> logits [K, B, out_max]."""
        h = x.unsqueeze(0).expand(self.size, -1, -1)
        for layer in self.layers:
            h = layer(h)
        return h

    def keep(self, rows: list[int]):
        """Keep only the given stack rows (finished members leave)."""
        for layer in self.layers:
            if hasattr(layer, "keep"):
                layer.keep(rows)
        self.ids = [self.ids[r] for r in rows]
        self.n_out = [self.n_out[r] for r in rows]

    @torch.no_grad()
    def member_state(self, row: int) -> dict[str, torch.Tensor]:
        """The state dict of the member in stack row `row` (its own shapes)."""
        tpl = self.templates[self.ids[row]]
        sd = {k: v.clone() for k, v in tpl.state_dict().items()}
        for name, layer in zip(self.names, self.layers):
            if isinstance(layer, PopDense):
                o, i = layer.shapes[row]
                sd[f"{name}.weight"] = layer.weight[row, :o, :i].detach().clone()
                if layer.has_bias:
                    sd[f"{name}.bias"] = layer.bias[row, :o].detach().clone()
        return sd

    def extract(self, row: int) -> nn.Module:
        """Stack row `row` as an ordinary hetq model (identical weights and outputs)."""
        m = copy.deepcopy(self.templates[self.ids[row]])
        m.load_state_dict(self.member_state(row))
        return m.eval()


# -- training ----------------------------------------------------------------------------------
class _BatchedAdam:
    """Adam over stacked parameters with a learning rate per member (row)."""

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8):
        self.params = list(params)
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, lr: torch.Tensor):
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(self.b1).add_(g, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
            step = (lr.view([-1] + [1] * (p.dim() - 1)) / bc1)
            p.sub_(step * m / denom)

    def keep(self, rows, params):
        self.m = [m[rows].clone() for m in self.m]
        self.v = [v[rows].clone() for v in self.v]
        self.params = list(params)

    def zero_grad(self):
        for p in self.params:
            p.grad = None


@dataclass
class MemberResult:
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = -1
    stopped_early: bool = False
    stopped_by_report: bool = False
    state: dict | None = None  # final (best-restored) state dict


def fit_population(models: list[nn.Module], data, *, epochs: int = 30, batch_size: int = 1024,
                   lr: float | list[float] = 1e-3, patience: int | None = None, seed: int = 0,
                   schedule: str = "cosine", report=None, restore_best: bool = True,
                   ) -> list[MemberResult]:
    """Train K models together (same batch order as `fit(seed=seed)`); the models are
    updated in place with their trained (best-restored) weights.

    report: called as report(k, epoch, val_metrics) for member k after each epoch; a True
        return value (or a raised exception) stops that member (e.g. an Optuna pruner).
    """
    from .loop import Classify, _split_tensors

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    K = len(models)
    lrs = [float(lr)] * K if isinstance(lr, (int, float)) else [float(v) for v in lr]
    if len(lrs) != K:
        raise ValueError(f"{len(lrs)} learning rates for {K} members")
    if schedule not in ("cosine", "none"):
        raise ValueError(f"schedule {schedule!r}; expected 'cosine' or 'none'")
    task = Classify()
    Xtr, ytr = _split_tensors(data, "train", task, "cpu")
    Xva, yva = _split_tensors(data, "val", task, "cpu")
    pop = Population(models)
    opt = _BatchedAdam(pop.parameters())
    base_lr = torch.tensor(lrs)
    results = [MemberResult() for _ in range(K)]
    best = [None] * K
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = Xtr.shape[0]
    for epoch in range(epochs):
        if pop.size == 0:
            break
        pop.train()
        factor = 0.5 * (1 + math.cos(math.pi * epoch / epochs)) if schedule == "cosine" else 1.0
        lr_now = base_lr[pop.ids] * factor
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = Xtr[idx], ytr[idx]
            out = pop(xb)  # [K, B, C]
            if len(set(pop.n_out)) == 1:  # one call: sum over members of their batch means
                loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.repeat(pop.size),
                                       reduction="none").view(pop.size, -1).mean(1).sum()
            else:
                loss = sum(F.cross_entropy(out[r, :, :pop.n_out[r]], yb)
                           for r in range(pop.size))
            opt.zero_grad()
            loss.backward()
            opt.step(lr_now)
        pop.eval()
        stop_rows = []
        with torch.no_grad():
            # validation of every member, batched, in chunks (bounded memory for large K)
            vout = torch.cat([pop(Xva[i:i + 4096]) for i in range(0, len(Xva), 4096)], dim=1)
            for r, k in enumerate(pop.ids):
                logits = vout[r, :, :pop.n_out[r]]
                val = {"loss": float(F.cross_entropy(logits, yva)),
                       "accuracy": float((logits.argmax(1) == yva).float().mean())}
                res = results[k]
                res.history.append({"epoch": epoch, **{f"val_{a}": b for a, b in val.items()}})
                if val["loss"] < res.best_val_loss:
                    res.best_val_loss, res.best_epoch = val["loss"], epoch
                    if restore_best:
                        best[k] = pop.member_state(r)
                stop = False
                if report is not None:
                    try:
                        stop = bool(report(k, epoch, val))
                    except Exception:  # noqa: BLE001 - a pruner's way of saying stop
                        stop = True
                    res.stopped_by_report = stop
                if patience is not None and epoch - res.best_epoch >= patience:
                    res.stopped_early = stop = True
                if stop:
                    stop_rows.append(r)
        for r in stop_rows:
            k = pop.ids[r]
            results[k].state = best[k] if restore_best and best[k] is not None \
                else pop.member_state(r)
        if stop_rows:
            rows = [r for r in range(pop.size) if r not in stop_rows]
            pop.keep(rows)
            opt.keep(rows, pop.parameters())
    for r, k in enumerate(pop.ids):
        results[k].state = best[k] if restore_best and best[k] is not None \
            else pop.member_state(r)
    for k, m in enumerate(models):
        m.load_state_dict(results[k].state)
        m.eval()
    return results


def time_population(models, data, epochs=1, batch_size=1024) -> float:
    t = time.perf_counter()
    fit_population(models, data, epochs=epochs, batch_size=batch_size, restore_best=False)
    return time.perf_counter() - t
