"""Stacked layers and `Population`: K members as batched weights, and `extract` to get one
back as an ordinary hetq model."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ...quant.base import check_module
from ...quant.layers import QActivation
from .quantizers import _DENSE, _Field, _is_elementwise


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
        if not isinstance(models, (list, tuple)) or not models:
            raise ValueError("a population needs a list of at least one model, got "
                             + (f"{type(models).__name__}" if not isinstance(models, (list, tuple))
                                else "an empty list"))
        for k, m in enumerate(models):
            check_module(m, f"Population (member {k})")
            odd = sorted({str(p.dtype) for p in m.parameters()
                          if p.is_floating_point() and p.dtype != torch.float32})
            if odd:  # (the stack is float32: a float64 member trained in float32 unsaid)
                raise ValueError(f"member {k} has {', '.join(odd)} parameters; a population "
                                 "trains in float32: convert it (.float()), or train it alone "
                                 "with hetq.train.fit")
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
