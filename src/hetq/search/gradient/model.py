"""The trainable-bit-width MLP of the gradient strategy: per-feature input quantizers,
per-neuron activation quantizers and per-weight dense layers, each with trainable
fractional bits, and its differentiable EBOPs (see `hetq.search.gradient`)."""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ACT_GRANULARITIES, GRANULARITIES

LN2 = math.log(2.0)


def _surrogate(x: torch.Tensor, q: torch.Tensor, f: torch.Tensor,
               clipped: torch.Tensor | None = None) -> torch.Tensor:
    """Forward value q; gradient 1 to x and -ln2 * (q - x) to f, except from the values
    `clipped` at the top of the range: more frac bits do not shrink that error, and it would
    push f up without end (a heavy-tailed input whose weights are all pruned has no EBOPs
    pressure against it, so its grid step underflowed to 0 and training turned to NaN)."""
    err = (q - x).detach()
    ferr = err if clipped is None else torch.where(clipped, torch.zeros_like(err), err)
    return x + err + (f - f.detach()) * (-LN2 * ferr)


def _int_bits(v: torch.Tensor, tiny: float = 1e-30) -> torch.Tensor:
    """Magnitude integer bits of each value, floor(log2 |v|) + 1, so that |v| <= 2**i - step
    never clips; |v| below `tiny` counts as `tiny` (zeros are masked by the callers)."""
    return torch.floor(torch.log2(v.abs().clamp_min(tiny))) + 1



def _round_f(f: torch.Tensor, lo: float | None = None) -> torch.Tensor:
    r = torch.round(f.detach())
    return r if lo is None else r.clamp_min(lo)


def weight_widths(q: torch.Tensor) -> torch.Tensor:
    """Width of the smallest signed fixed type holding each value (0 for zeros)."""
    a = q.detach().abs().to(torch.float64)
    out = torch.zeros_like(a)
    nz = a > 0
    if nz.any():
        v = a[nz]
        # frac bits needed: smallest f with v * 2**f integer; magnitude bits of that code
        f = torch.zeros_like(v)
        code = v.clone()
        for _ in range(64):
            frac_part = code - torch.floor(code)
            need = frac_part != 0
            if not need.any():
                break
            code = torch.where(need, code * 2, code)
            f = f + need.to(f.dtype)
        # strip trailing zero bits of integer codes (v >= 1 with even codes)
        for _ in range(64):
            even = (torch.remainder(code, 2) == 0) & (code > 0)
            if not even.any():
                break
            code = torch.where(even, code / 2, code)
        out[nz] = torch.floor(torch.log2(code)) + 1 + 1  # magnitude bits + sign
    return out


class _InputQ(nn.Module):
    """Per-feature signed quantizer of the inputs with trainable frac bits. A feature whose
    width would fall below 2 bits is pruned (always 0, costs nothing): a 1-bit signed type is
    not a plain grid, and widths below the integer bits (f < -1) are not exportable, so
    between the f = -1 floor and pruning the feature keeps its f = -1 grid while the soft
    width (and with it the EBOPs pressure) goes on falling."""

    def __init__(self, n: int, f0: float, integer: torch.Tensor):
        super().__init__()  # integer: per feature (n,), or one for all () (activations layer)
        self.f = nn.Parameter(torch.full(integer.shape, float(f0)))
        self.register_buffer("integer", integer.clone())  # magnitude integer bits (no sign)

    F_MIN = -24.0  # only a bound; quantized_bits needs integer <= bits, so f >= -1 is used

    def grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(frac bits used, pruned) per feature, from the rounded f."""
        fr = _round_f(self.f, self.F_MIN)
        return fr.clamp_min(-1.0), (self.integer + fr + 1.0) < 2.0

    def forward(self, x):
        fr, pruned = self.grid()
        step = torch.pow(2.0, -fr)
        top = torch.pow(2.0, self.integer)
        grid = torch.round(x / step) * step
        q = torch.minimum(torch.maximum(grid, -top), top - step)
        q = torch.where(pruned, torch.zeros_like(q), q)
        return _surrogate(x, q, self.f, (q != grid) & ~pruned)

    def widths(self, soft: bool = False) -> torch.Tensor:
        if soft:
            return F.relu(self.integer + self.f.clamp_min(self.F_MIN) + 1.0)  # sign included
        fr, pruned = self.grid()
        return torch.where(pruned, torch.zeros_like(fr), self.integer + fr + 1.0)


class _ActQ(nn.Module):
    """ReLU then an unsigned quantizer with trainable frac bits per neuron (or one per layer);
    integer bits from the tracked maximum of each neuron, from a quantile (`frozen`, ranges
    set by `GradientBitsMLP.calibrate`), or trainable (`learn_integer`)."""

    F_MIN = -24.0  # only a bound against overflow: a neuron with integer + f <= 0 is off

    def __init__(self, n: int, f0: float, per_neuron: bool = True):
        super().__init__()
        shape = (n,) if per_neuron else ()
        self.f = nn.Parameter(torch.full(shape, float(f0)))
        self.register_buffer("max_seen", torch.zeros(shape))  # range used (last epoch's)
        self.register_buffer("epoch_max", torch.zeros(shape))  # range of the running epoch
        self.frozen = False  # polishing: the range (so the integer bits) stays as it is

    def reset_range(self):
        """End of epoch (HGQ's ResetMinMax): the range becomes this epoch's maximum, so
        integer bits also shrink when activations do."""
        if float(self.epoch_max.max()) > 0:
            self.max_seen.copy_(self.epoch_max)
        self.epoch_max.zero_()

    def learn_integer(self):
        """From now on the integer bits are a trainable parameter `i` (HGQ2's trainable
        integer bits), starting at the present range's; forward uses round(i) (straight
        through), a value clipped at the top 2**i - step passes d/di = ln2 * 2**i to it (and
        nothing to its input), while the EBOPs term pulls i down: each neuron learns how
        much saturation it can afford."""
        self.i = nn.Parameter(self.integer.clone())

    @property
    def integer(self) -> torch.Tensor:
        if hasattr(self, "i"):
            return torch.round(self.i.detach())
        return torch.ceil(torch.log2(self.max_seen.clamp_min(2.0 ** -8)))

    def forward(self, x):
        y = F.relu(x)
        learned = hasattr(self, "i")
        if self.training and not self.frozen and not learned:
            with torch.no_grad():
                m = y.amax(dim=0) if self.max_seen.dim() else y.max()
                self.max_seen.copy_(torch.maximum(self.max_seen, m))
                self.epoch_max.copy_(torch.maximum(self.epoch_max, m))
        # f may go below 0 (grid steps of 2, 4, ...: a neuron with a large range and little
        # precision costs few bits); `to_hetq_model` rescales such neurons by powers of two
        # so that the exported quantized_relu has integer <= bits
        fr = _round_f(self.f, self.F_MIN)
        step = torch.pow(2.0, -fr)
        qn = torch.round(y / step) * step
        if learned:  # round(i) straight through; clipped values give gradient to i only
            ii = self.i + (torch.round(self.i) - self.i).detach()
            top = (torch.pow(2.0, ii) - step).clamp_min(0.0)
            return torch.where(qn > top.detach(), top.expand_as(y), _surrogate(y, qn, self.f))
        top = (torch.pow(2.0, self.integer) - step).clamp_min(0.0)
        return _surrogate(y, torch.minimum(qn, top), self.f, qn > top)

    def widths(self, soft: bool = False) -> torch.Tensor:
        f = self.f.clamp_min(self.F_MIN) if soft else _round_f(self.f, self.F_MIN)
        i = self.i if (soft and hasattr(self, "i")) else self.integer
        return F.relu(i + f)


class _DenseQ(nn.Module):
    """Dense layer with trainable frac bits per weight, per output neuron (channel) or one for
    the layer (they broadcast over the weights); biases on a fixed frac grid."""

    SHAPES = {"weight": lambda w: w.shape, "channel": lambda w: (w.shape[0], 1),
              "layer": lambda w: (1, 1)}

    def __init__(self, lin: nn.Linear, f0: float, bias_frac: int, granularity: str = "weight"):
        super().__init__()
        # float32 whatever the float model's dtype (its data are float32)
        self.weight = nn.Parameter(lin.weight.detach().float().cpu().clone())
        self.bias = nn.Parameter(lin.bias.detach().float().cpu().clone())
        self.f = nn.Parameter(torch.full(self.SHAPES[granularity](self.weight), float(f0)))
        self.bias_frac = bias_frac

    def qweight(self):
        fr = _round_f(self.f)
        step = torch.pow(2.0, -fr)
        q = torch.round(self.weight / step) * step
        return _surrogate(self.weight, q, self.f)

    def qbias(self):
        s = 2.0 ** -self.bias_frac
        q = torch.round(self.bias / s) * s
        return self.bias + (q - self.bias).detach()

    def forward(self, x):
        return F.linear(x, self.qweight(), self.qbias())


def check_mlp(float_model: nn.Module, n_features: int | None = None) -> None:
    """A ValueError naming what is wrong unless `float_model` is an MLP the gradient strategy
    takes: Linear layers with biases, each but the last followed by one ReLU, each taking
    the previous one's outputs (and `n_features` inputs, when given)."""
    what = ("the gradient strategy needs an MLP of Linear layers (with biases) and ReLUs, "
            "Linear, ReLU, Linear, ..., Linear")
    items = list(float_model.named_children())
    if not items:
        raise ValueError(f"{what}; got a {type(float_model).__name__} without layers")
    prev = n_features
    for k, (n, m) in enumerate(items):
        want = nn.Linear if k % 2 == 0 else nn.ReLU
        if not isinstance(m, want):
            if not isinstance(m, (nn.Linear, nn.ReLU)):
                raise ValueError(f"{n}: {type(m).__name__} is not supported by the gradient "
                                 "strategy (Linear and ReLU layers only)")
            raise ValueError(f"{what}; layer {k} ({n}) is a {type(m).__name__} where a "
                             f"{want.__name__} was expected")
        if isinstance(m, nn.Linear):
            if m.bias is None:
                raise ValueError(f"{what}; {n} has no bias (nn.Linear(..., bias=False))")
            if prev is not None and m.in_features != prev:
                raise ValueError(f"{n} takes {m.in_features} inputs, but "
                                 + (f"the data have {prev} features" if k == 0 else
                                    f"the layer before gives {prev}"))
            prev = m.out_features
    if not isinstance(items[-1][1], nn.Linear):
        raise ValueError(f"{what}; it ends with {items[-1][0]} "
                         f"({type(items[-1][1]).__name__}) instead of a Linear (the outputs)")


@torch.no_grad()
def check_chain(float_model: nn.Module, x: torch.Tensor) -> None:
    """A ValueError unless `float_model` computes what its layers do one after the other on
    a few rows of `x`: the gradient strategy rebuilds a model from its layers alone, and a
    forward that also scales the inputs (say) was dropped without a word."""
    from ...train.loop import _float_dtype

    p = next(float_model.parameters(), None)
    probe = x[:16].to(dtype=_float_dtype(float_model),
                      device=p.device if p is not None else None)
    chain = probe
    for m in float_model.children():
        chain = m(chain)
    try:
        out = float_model(probe)
    except RuntimeError as e:
        raise ValueError(f"the model does not take rows of {x.shape[1]} features: "
                         f"{str(e).splitlines()[0]}") from None
    if out.shape != chain.shape or not torch.allclose(out, chain, rtol=1e-4, atol=1e-5):
        raise ValueError(f"{type(float_model).__name__}.forward computes something other "
                         "than its layers in order (Linear, ReLU, ..., Linear); the gradient "
                         "strategy rebuilds the model from those layers alone and would drop "
                         "the rest. Move that step into the data (or into an nn.Sequential "
                         "of the layers)")


class GradientBitsMLP(nn.Module):
    """A float MLP (Linear/ReLU chain, e.g. `jet_mlp`) with trainable bit-widths.

    granularity: what shares one trainable weight bit-width: every weight its own ("weight",
    the default), the weights into one neuron ("channel"), or a layer's weights ("layer").
    activations: "neuron" (default): every input feature and hidden neuron has its own type;
    "layer": the inputs share one (the widest feature's range) and each activation layer one,
    so every tensor between the layers has a single fixed-point type, as hls4ml needs (the
    weights are constants: their per-weight widths are fine there). per_neuron=False alone
    gives per-layer activations with per-feature inputs."""

    def __init__(self, float_model: nn.Module, x_train: torch.Tensor, f0: float = 6.0,
                 bias_frac: int = 8, per_neuron: bool = True, input_quantile: float = 0.999,
                 act_quantile: float | None = None, granularity: str = "weight",
                 activations: str = "neuron"):
        super().__init__()
        if isinstance(bias_frac, bool) or not isinstance(bias_frac, numbers.Integral) or \
                bias_frac < 0:
            raise ValueError(f"bias_frac={bias_frac!r}; expected a whole number of fractional "
                             "bits >= 0 (biases cost no EBOPs: a fine grid is free)")
        if isinstance(f0, bool) or not isinstance(f0, numbers.Real) or not math.isfinite(f0):
            raise ValueError(f"f0={f0!r}; expected the starting fractional bits, a finite "
                             "number (e.g. 6)")
        if not torch.is_tensor(x_train):
            x_train = torch.as_tensor(np.asarray(x_train))
        if x_train.dim() != 2 or not x_train.is_floating_point() or len(x_train) == 0:
            raise ValueError(f"x_train: expected a 2-D float tensor of (samples, features), got "
                             f"{x_train.dtype} of shape {tuple(x_train.shape)}")
        x_train = x_train.float().cpu()
        for name, value, allowed in (("granularity", granularity, GRANULARITIES),
                                     ("activations", activations, ACT_GRANULARITIES)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}; expected one of {', '.join(allowed)}")
        self._settings = dict(f0=float(f0), bias_frac=int(bias_frac), per_neuron=bool(per_neuron),
                              input_quantile=input_quantile, act_quantile=act_quantile,
                              granularity=granularity, activations=activations)
        per_neuron = per_neuron and activations != "layer"
        self.granularity, self.activations = granularity, activations
        check_mlp(float_model, x_train.shape[1])
        check_chain(float_model, x_train)
        mods = [m for m in float_model.children()]
        names = [n for n, _ in float_model.named_children()]
        for name, q in (("input_quantile", input_quantile), ("act_quantile", act_quantile)):
            if q is not None and not (0.0 < float(q) <= 1.0):
                raise ValueError(f"{name}={q!r}; expected a fraction in (0, 1], e.g. 0.99 "
                                 "(1: the largest value seen)")
        # input ranges from a high quantile: rare outliers saturate instead of costing a bit
        top = torch.quantile(x_train.abs().float(), input_quantile, dim=0).clamp_min(2.0 ** -8)
        integer = torch.ceil(torch.log2(top))
        self.inq = _InputQ(x_train.shape[1], f0,
                           integer.max() if activations == "layer" else integer)
        layers = OrderedDict()
        width = x_train.shape[1]
        for n, m in zip(names, mods):  # (Linear, ReLU, ..., Linear: `check_mlp`)
            if isinstance(m, nn.Linear):
                layers[n] = _DenseQ(m, f0, bias_frac, granularity)
                width = m.out_features
            else:
                layers[n] = _ActQ(width, f0, per_neuron)
        self.body = nn.Sequential(layers)
        # None: each neuron's range is the largest value of the last epoch (HGQ1's
        # ResetMinMax); a fraction: that quantile on a calibration sample, set by `calibrate`
        # (after each epoch), values above it saturating: a few outliers no longer cost a
        # neuron an integer bit
        self.act_quantile = act_quantile
        if act_quantile is not None:
            for m in self.body:
                if isinstance(m, _ActQ):
                    m.frozen = True  # ranges come from `calibrate`, not the forward passes
            self.calibrate(x_train)

    def forward(self, x):
        return self.body(self.inq(x))

    @property
    def structure(self) -> dict:
        """What `rebuild` needs besides a float model and data to make a model that takes
        this one's states: the constructor's settings and whether the neurons' integer bits
        are learned (plain values: they are saved with the front files)."""
        learned = any(hasattr(m, "i") for m in self.body if isinstance(m, _ActQ))
        return {**self._settings, "learn_integer": learned}

    @classmethod
    def rebuild(cls, float_model: nn.Module, x_train: torch.Tensor,
                structure: dict) -> GradientBitsMLP:
        """A model of the given `structure` (see `structure`) from `float_model`; its
        `load_state_dict` takes the states of the model that structure came from."""
        settings = dict(structure)
        learn = settings.pop("learn_integer", False)
        model = cls(float_model, x_train, **settings)
        if learn:
            for m in model.body:
                if isinstance(m, _ActQ):
                    m.learn_integer()
        return model

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor):
        """Activation ranges from the `act_quantile` of each neuron's ReLU output on `x`
        (values above it saturate), layer by layer through the quantized model: the k-th
        largest value, k = ceil((1 - act_quantile) * len(x))."""
        if self.act_quantile is None:
            raise ValueError("calibrate needs act_quantile (this model tracks maxima instead)")
        was = self.training
        self.eval()
        x = self.inq(x)
        for m in self.body:
            if isinstance(m, _ActQ):
                y = F.relu(x)
                y = y if m.max_seen.dim() else y.reshape(-1, 1)
                # topk: ~30x faster than torch.quantile here, once per epoch
                k = max(1, math.ceil((1.0 - self.act_quantile) * len(y)))
                m.max_seen.copy_(torch.topk(y, k, dim=0).values[-1].reshape(m.max_seen.shape))
            x = m(x)
        self.train(was)

    def _inputs(self):
        """(dense layer, widths of its inputs as a function(soft)) pairs."""
        prev = self.inq
        for m in self.body:
            if isinstance(m, _DenseQ):
                yield m, prev
            else:
                prev = m

    def _shifts(self) -> dict[int, torch.Tensor]:
        """Body index of each activation -> the power of two `to_hetq_model` rescales its
        neurons by: -f for a neuron with frac bits f < 0 that is on, else 0."""
        out = {}
        for k, m in enumerate(self.body):
            if isinstance(m, _ActQ):
                f = _round_f(m.f, m.F_MIN)
                out[k] = torch.where(m.widths() >= 1, (-f).clamp_min(0.0), torch.zeros_like(f))
        return out

    def _floors(self) -> list[torch.Tensor]:
        """Per dense layer (out x in), the lowest frac bits its weights' exported types can
        have. The export rescales a neuron with frac bits s < 0 (incoming rows by 2**s,
        outgoing columns by 2**-s), and a weight type has at least f = -1 (quantized_bits
        needs integer <= bits), so a weight costs int_bits + max(f, floor) + 1 bits with
        floor = -1 - (its row's shift) + (its column's shift)."""
        shift = self._shifts()
        zero = torch.zeros(())
        out = []
        for k, d in enumerate(self.body):
            if isinstance(d, _DenseQ):
                n_out, n_in = d.weight.shape
                row = shift.get(k + 1, zero).expand(n_out).unsqueeze(1)
                col = shift.get(k - 1, zero).expand(n_in).unsqueeze(0)
                out.append(-1.0 - row + col)
        return out

    @torch.no_grad()
    def _useful(self) -> list[torch.Tensor]:
        """Per dense layer, whether each output neuron can change the model's output: every
        output does; a hidden neuron needs bits and a nonzero weight into a useful neuron of
        the next layer. `to_hetq_model` zeroes the weights into the others, and `ebops`
        leaves them out."""
        items = list(self.body)
        out, need = [], None
        for k in range(len(items) - 1, -1, -1):
            d = items[k]
            if not isinstance(d, _DenseQ):
                continue
            n_out = d.weight.shape[0]
            useful = torch.ones(n_out, dtype=torch.bool) if need is None else need
            nxt = items[k + 1] if k + 1 < len(items) else None
            if isinstance(nxt, _ActQ):  # a neuron with no bits is off
                useful = useful & (nxt.widths() >= 1).expand(n_out)
            out.append(useful)
            need = (d.qweight()[useful] != 0).any(0)
        return out[::-1]

    def _widths(self, d: _DenseQ, floor: torch.Tensor, soft: bool) -> torch.Tensor:
        """Weight widths as exported: integer bits of the quantized value (detached) +
        max(f, floor) + sign, 0 where the weight rounds to zero (HGQ's count with the sign
        bit and the export's floor); soft: differentiable in f, exact at integer f."""
        q = d.qweight().detach()
        f = d.f.clamp_min(-24.0) if soft else _round_f(d.f)
        return (q != 0).to(q.dtype) * F.relu(_int_bits(q) + torch.maximum(f, floor) + 1.0)

    def soft_ebops(self) -> torch.Tensor:
        """Differentiable EBOPs (the training pressure). Equal to `ebops` at integer frac
        bits, except that weights into neurons that cannot change the output are still
        counted here, so the pressure goes on removing them."""
        total = torch.zeros(())
        for (d, src), floor in zip(self._inputs(), self._floors()):
            bx = src.widths(soft=True)
            bx = bx if bx.dim() == 1 else bx.expand(d.weight.shape[1])
            total = total + (self._widths(d, floor, soft=True) * bx.unsqueeze(0)).sum()
        return total

    @torch.no_grad()
    def ebops(self, hgq1: bool = False) -> int:
        """Exact EBOPs of the rounded model as `to_hetq_model` exports it: the sum over the
        nonzero weights into useful neurons of their exported width times their input's
        width, so the hetq cost of the exported model is the same number.
        hgq1=True: each weight counted as HGQ1's exact EBOPs count it (`get_bits_exact` ->
        `get_arr_bits`), for comparing with figures measured that way: only the bits from
        its highest to its lowest set bit, without sign (`weight_widths` - 1), so 0.5, 1
        and 4 cost 1 bit and 0.75 costs 2; hetq's own count is the width of the type the
        weight is exported with, sign included (0.5 on a 2**-4 grid: 5 bits)."""
        total = 0.0
        for (d, src), floor, useful in zip(self._inputs(), self._floors(), self._useful()):
            bx = src.widths()
            bx = bx if bx.dim() == 1 else bx.expand(d.weight.shape[1])
            w = ((weight_widths(d.qweight()) - 1.0).clamp_min(0.0) if hgq1 else
                 self._widths(d, floor, soft=False).double())
            total += float((w * bx.double().unsqueeze(0))[useful].sum())
        return int(round(total))
