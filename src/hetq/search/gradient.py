"""Gradient-based bit-widths (HGQ style): one training run yields a Pareto front.

Every weight has its own trainable fractional bit count f (per weight), every input feature
its own (per feature), every hidden neuron its own (per_neuron=False: one per layer), where
f < 0 is allowed (grid steps of 2, 4, ... for neurons with a large range). Forward values use
the rounded f; the gradient reaches f through a surrogate of the quantization error
(d err / d f = -ln 2 * err, the error shrinking by half per extra bit). Integer bits come from
the values (weights) or from ranges: inputs from a quantile of the training data, activations
from a quantile recomputed after every epoch (or HGQ1's tracked maxima), values above the
range saturating. The loss is
cross-entropy + beta * EBOPs, with EBOPs differentiable in f and beta ramped geometrically
from `beta0` to `beta1` over training; a weight whose f drops below its magnitude's exponent
rounds to zero and stops costing anything, so pruning is learned too; so does an input
feature whose width would fall below 2 bits (it is then always 0).

After every epoch a callback measures the exact (rounded) EBOPs and the validation accuracy
and keeps each non-dominated (accuracy, EBOPs) state. `polish` then fine-tunes a front point's
weights at its frozen bits (its EBOPs can only fall). `to_hetq_model` turns a state into an
ordinary hetq model: `QActivation(quantized_bits(bits=[...], integer=[...]))` for the inputs
(per-feature tensors), `QDense` with per-weight tensor-valued `quantized_bits` kernels whose
stored weights are the quantized ones, `quantized_relu(b, i)` activations (neurons with f < 0
rescaled by powers of two, so that integer <= bits). The integer engine
and the QONNX export run it bit-exactly; hls4ml needs one input type (see `hetq.export.hls`).

EBOPs here = sum over nonzero weights of (weight width) x (width of its input), biases
excluded; a weight's width is i + f + 1 (HGQ's count plus the sign bit: i the integer bits of
its quantized value, f its own frac bits), an input's the width of its type (sign included for
the signed inputs). `weight_widths` gives the (never larger) minimal widths of the values.
"""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

LN2 = math.log(2.0)


def _surrogate(x: torch.Tensor, q: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Forward value q; gradient 1 to x and -ln2 * (q - x) to f."""
    err = (q - x).detach()
    return x + err + (f - f.detach()) * (-LN2 * err)


def _int_bits(v: torch.Tensor, tiny: float = 1e-30) -> torch.Tensor:
    """Magnitude integer bits of each value, floor(log2 |v|) + 1, so that |v| <= 2**i - step
    never clips; |v| below `tiny` counts as `tiny` (zeros are masked by the callers)."""
    return torch.floor(torch.log2(v.abs().clamp_min(tiny))) + 1


def _val_accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Classification accuracy of `model` (in eval mode) on (X, y)."""
    model.eval()
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def _targets(X: torch.Tensor, y: torch.Tensor, teacher: nn.Module | None,
             distill: float) -> torch.Tensor:
    """The training targets: the labels y, or with a `teacher` the rows of
    (1 - distill) * one_hot(y) + distill * softmax(teacher(X)), for `F.cross_entropy` with
    class probabilities (knowledge distillation at temperature 1, computed once)."""
    if teacher is None:
        return y
    if not (0.0 < distill <= 1.0):
        raise ValueError(f"distill must be in (0, 1], got {distill}")
    was = teacher.training
    teacher.eval()
    with torch.no_grad():
        logits = torch.cat([teacher(X[i:i + 8192]) for i in range(0, len(X), 8192)]).float()
    teacher.train(was)
    if logits.dim() != 2 or logits.shape[0] != len(X) or int(y.max()) >= logits.shape[1]:
        raise ValueError(f"the teacher gives outputs of shape {tuple(logits.shape)} for "
                         f"{len(X)} rows; expected ({len(X)}, classes >= {int(y.max()) + 1})")
    hard = F.one_hot(y.long(), logits.shape[1]).float()
    return (1.0 - distill) * hard + distill * torch.softmax(logits, 1)


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
        super().__init__()
        self.f = nn.Parameter(torch.full((n,), float(f0)))
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
        q = torch.minimum(torch.maximum(torch.round(x / step) * step, -top), top - step)
        q = torch.where(pruned, torch.zeros_like(q), q)
        return _surrogate(x, q, self.f)

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
        return _surrogate(y, torch.minimum(qn, top), self.f)

    def widths(self, soft: bool = False) -> torch.Tensor:
        f = self.f.clamp_min(self.F_MIN) if soft else _round_f(self.f, self.F_MIN)
        i = self.i if (soft and hasattr(self, "i")) else self.integer
        return F.relu(i + f)


class _DenseQ(nn.Module):
    """Dense layer with per-weight trainable frac bits; biases on a fixed frac grid."""

    def __init__(self, lin: nn.Linear, f0: float, bias_frac: int):
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = nn.Parameter(lin.bias.detach().clone())
        self.f = nn.Parameter(torch.full_like(self.weight, float(f0)))
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


class GradientBitsMLP(nn.Module):
    """A float MLP (Linear/ReLU chain, e.g. `jet_mlp`) with trainable bit-widths."""

    def __init__(self, float_model: nn.Module, x_train: torch.Tensor, f0: float = 6.0,
                 bias_frac: int = 8, per_neuron: bool = True, input_quantile: float = 0.999,
                 act_quantile: float | None = None):
        super().__init__()
        mods = [m for m in float_model.children()]
        names = [n for n, _ in float_model.named_children()]
        if not mods or not isinstance(mods[0], nn.Linear):
            raise ValueError("the gradient strategy needs an MLP of Linear/ReLU layers starting "
                             f"with a Linear; got {type(mods[0]).__name__ if mods else 'nothing'}")
        for name, q in (("input_quantile", input_quantile), ("act_quantile", act_quantile)):
            if q is not None and not (0.0 < float(q) <= 1.0):
                raise ValueError(f"{name}={q!r}; expected a fraction in (0, 1], e.g. 0.99 "
                                 "(1: the largest value seen)")
        # input ranges from a high quantile: rare outliers saturate instead of costing a bit
        top = torch.quantile(x_train.abs().float(), input_quantile, dim=0).clamp_min(2.0 ** -8)
        self.inq = _InputQ(x_train.shape[1], f0, torch.ceil(torch.log2(top)))
        layers = OrderedDict()
        width = x_train.shape[1]
        for n, m in zip(names, mods):
            if isinstance(m, nn.Linear):
                layers[n] = _DenseQ(m, f0, bias_frac)
                width = m.out_features
            elif isinstance(m, nn.ReLU):
                layers[n] = _ActQ(width, f0, per_neuron)
            else:
                raise ValueError(f"{n}: {type(m).__name__} is not supported by the gradient "
                                 "strategy (Linear and ReLU layers only)")
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
    def ebops(self, weight_sign: bool = True) -> int:
        """Exact EBOPs of the rounded model as `to_hetq_model` exports it: the sum over the
        nonzero weights into useful neurons of their exported width times their input's
        width, so the hetq cost of the exported model is the same number.
        weight_sign=False leaves out the weights' sign bit, as HGQ1 counts (`kernel_bw`:
        "negative sign not considered for kernel"), for comparing with figures measured
        that way; hetq's own count includes it."""
        total = 0.0
        for (d, src), floor, useful in zip(self._inputs(), self._floors(), self._useful()):
            bx = src.widths()
            bx = bx if bx.dim() == 1 else bx.expand(d.weight.shape[1])
            w = self._widths(d, floor, soft=False).double()
            if not weight_sign:
                w = (w - 1.0).clamp_min(0.0)
            total += float((w * bx.double().unsqueeze(0))[useful].sum())
        return int(round(total))


# -- training --------------------------------------------------------------------------------
@dataclass
class FrontPoint:
    epoch: int
    beta: float
    val_accuracy: float
    ebops: int
    state: dict = field(repr=False, default_factory=dict)
    run: int = 0  # which training run (train_gradient_runs) produced it
    polished: bool = False  # weights fine-tuned at these bits after training (`polish`)


@dataclass
class GradientResult:
    front: list[FrontPoint]
    history: list[dict]
    seconds: float
    interrupted: bool = False  # stopped by Ctrl-C: the front holds what was reached
    stopped_early: bool = False  # stop_below ended training (in any run)


def beta_at(step: int, total: int, beta0: float, beta1: float) -> float:
    """Geometric ramp from beta0 (step 0) to beta1 (last step)."""
    if total <= 1:
        return beta1
    t = min(max(step / (total - 1), 0.0), 1.0)
    return beta0 * (beta1 / beta0) ** t


class ParetoCheckpoints:
    """Keeps every non-dominated (accuracy up, EBOPs down) snapshot seen so far."""

    def __init__(self):
        self.points: list[FrontPoint] = []

    def offer(self, point: FrontPoint, model: nn.Module | None = None) -> bool:
        for p in self.points:
            if p.val_accuracy >= point.val_accuracy and p.ebops <= point.ebops:
                return False  # dominated (or equal)
        self.points = [p for p in self.points
                       if not (point.val_accuracy >= p.val_accuracy and point.ebops <= p.ebops)]
        if model is not None and not point.state:
            point.state = copy.deepcopy(model.state_dict())
        self.points.append(point)
        self.points.sort(key=lambda p: p.ebops)
        return True


def ebops_target_at(frac: float, start: float, knee: float, end: float,
                    knee_time: float) -> float:
    """The EBOPs target of the controller at `frac` (0..1) of training: log-linear from
    `start` to `knee` over the first `knee_time` of training, then from `knee` to `end`."""
    frac = min(max(frac, 0.0), 1.0)
    if knee_time > 0 and frac < knee_time:
        a, b, t = start, knee, frac / knee_time
    else:
        a, b = knee, end
        t = 1.0 if knee_time >= 1 else (frac - knee_time) / (1.0 - knee_time)
    return math.exp(math.log(a) + (math.log(b) - math.log(a)) * t)


class BetaController:
    """Drives beta so that the model's EBOPs follow a target (HGQ2's BetaPID does this with a
    PID; this is an integral controller in log space): after each step
    log(beta) += gain * (log(EBOPs) - log(target)), so beta grows while the model is above
    its target and shrinks below it. Training then spends its time where the target says,
    instead of where a fixed ramp happens to put the model."""

    def __init__(self, beta0: float, gain: float = 0.005, lo: float = 1e-9, hi: float = 1.0):
        if not (lo <= beta0 <= hi):
            raise ValueError(f"beta0={beta0} is outside the controller's range [{lo}, {hi}]")
        if gain <= 0:
            raise ValueError(f"gain must be > 0, got {gain}")
        self.log_beta, self.gain = math.log(beta0), gain
        self.lo, self.hi = math.log(lo), math.log(hi)

    @property
    def beta(self) -> float:
        return math.exp(self.log_beta)

    def update(self, ebops: float, target: float) -> float:
        err = math.log(max(ebops, 1.0)) - math.log(max(target, 1.0))
        self.log_beta = min(max(self.log_beta + self.gain * err, self.lo), self.hi)
        return self.beta


def train_gradient(float_model: nn.Module, data, *, epochs: int = 200, batch_size: int = 1024,
                   lr: float = 3e-3, beta0: float = 1e-7, beta1: float = 1e-4, f0: float = 6.0,
                   bits_lr: float | None = None, per_neuron: bool = True, seed: int = 0,
                   time_budget: float | None = None,
                   target: tuple[float, float] | None = None, knee_time: float = 0.3,
                   gain: float = 0.005, compile: bool = False,
                   stop_below: float | None = None, input_quantile: float = 0.99,
                   act_quantile: float | None = 0.99, learn_integer: bool = True,
                   teacher: nn.Module | None = None, distill: float = 1.0,
                   progress: bool = True) -> tuple[GradientBitsMLP, GradientResult]:
    """Train bit-widths and weights together; returns the model and the Pareto snapshots.

    bits_lr: Adam learning rate of the frac-bit parameters (default `lr`); one bit moves
    after about 1/bits_lr steps, so short runs want a larger one.
    time_budget: seconds; training stops when it is spent (or after `epochs`), and beta is
    then ramped over the budget's wall time instead of over the steps.
    target: None ramps beta geometrically from beta0 to beta1. (knee, end) instead lets a
    `BetaController` (starting at beta0, with `gain`) steer the EBOPs along
    `ebops_target_at`: from the initial model's EBOPs down to `knee` in the first
    `knee_time` of training, then down to `end` in the rest, so the front between knee and
    end gets most of the training.
    compile: run the forward and backward pass through `torch.compile` (about twice the
    steps per second on one CPU thread for the jet MLP, after a compilation of about 30 s
    that counts against time_budget; the clock ramp starts after it). Only full batches are
    used then (one shape). If compiling fails, training goes on eagerly with a warning.
    stop_below: stop once the validation accuracy has stayed below this for 5 epochs in the
    second half of training (beta only grows: the model is past the part of the front that
    is wanted); `GradientResult.stopped_early` says so.
    learn_integer: the hidden neurons' integer bits are trained too (`_ActQ.learn_integer`),
    starting from the act_quantile range. On the simulated jets (16-32-16-5, 245 s) it raised
    the hypervolume from 0.582-0.599 to 0.613-0.634 (5 runs each), mostly below 600 EBOPs
    (0.60 test accuracy at 159-176 EBOPs where the quantile ranges needed 335-363); at
    1,000 EBOPs it gave no gain (0.649-0.656 against 0.652-0.659).
    input_quantile: each input feature's integer bits cover this quantile of |x| on the
    training set; larger values saturate.
    act_quantile: each hidden neuron's integer bits cover this quantile of its output on 8,192
    training rows, recomputed after every epoch (larger values saturate); None: the largest
    output of the last epoch (HGQ1's way). On the simulated jets (16-32-16-5, 245 s) both at
    0.99 gave hypervolume 0.582-0.599 and 0.652-0.659 test accuracy at <= 1,000 EBOPs (5 runs)
    against 0.573-0.595 and 0.650-0.658 (7 runs) with maxima and inputs at 0.999.
    teacher: a float model; its softmax on the training rows (computed once) becomes the
    targets, `distill` x the teacher's probabilities + (1 - distill) x the one-hot labels
    (knowledge distillation at temperature 1; the validation accuracy that picks the front
    points still uses the labels). `polish` takes the same. On the simulated jets a 64-32-32
    teacher (0.679 test accuracy) for the 16-32-16-5 start (245 s) gave 0.6541-0.6563 test
    accuracy at <= 1,000 EBOPs (4 runs) against 0.6505 in the same session and 0.650-0.655
    in six earlier runs; the hypervolume stayed 0.617-0.632. The start model as its own
    teacher gave no gain (0.6521, one run).
    """
    import warnings

    from tqdm import tqdm

    from ..train.loop import Classify, _train_val_tensors

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not (0 < beta0 <= beta1):
        raise ValueError(f"need 0 < beta0 <= beta1, got beta0={beta0}, beta1={beta1}")
    if target is not None:
        knee, end = (float(v) for v in target)
        if not (0 < end <= knee):
            raise ValueError(f"target=(knee, end) needs 0 < end <= knee, got {target}")
        if not (0.0 <= knee_time < 1.0):
            raise ValueError(f"knee_time must be in [0, 1), got {knee_time}")
    torch.manual_seed(seed)
    task = Classify()
    Xtr, ytr, Xva, yva = _train_val_tensors(data, task, "cpu")
    Ttr = _targets(Xtr, ytr, teacher, distill)
    calib = None  # rows for the per-epoch quantile ranges (only without learned integers)
    if act_quantile is not None and not learn_integer:
        pick = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(seed))[:8192]
        calib = Xtr[pick]
    # learned integer bits start from the act_quantile range (from the largest value if None)
    start_q = 1.0 if (learn_integer and act_quantile is None) else act_quantile
    model = GradientBitsMLP(float_model.cpu(), Xtr, f0=f0, per_neuron=per_neuron,
                            input_quantile=input_quantile, act_quantile=start_q)
    if learn_integer:
        for m in model.modules():
            if isinstance(m, _ActQ):
                m.learn_integer()
    bits = {n for n, _ in model.named_parameters()
            if n == "f" or n.endswith(".f") or n.endswith(".i")}
    fs = [p for n, p in model.named_parameters() if n in bits]
    ws = [p for n, p in model.named_parameters() if n not in bits]
    groups = [{"params": ws, "lr": lr},
              {"params": fs, "lr": bits_lr if bits_lr is not None else lr}]
    try:  # the fused CPU kernel (torch >= 2.4) makes a step of this small model ~15% faster
        opt = torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(seed)
    n = len(Xtr)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    if compile and n >= batch_size:
        steps_per_epoch = n // batch_size  # full batches only: one compiled shape
    total = epochs * steps_per_epoch
    keeper = ParetoCheckpoints()
    history = []

    def fwd_bwd(xb, yb, beta_t):
        soft = model.soft_ebops()
        loss = F.cross_entropy(model(xb), yb) + beta_t * soft
        loss.backward()
        return soft.detach()

    step_fn = torch.compile(fwd_bwd) if compile else fwd_bwd
    t0 = time.time()
    ramp_t0, ramp_len = t0, time_budget  # the clock ramp starts after compiling
    bar = tqdm(range(epochs), disable=not progress, desc="gradient bits", unit="epoch")
    step = 0
    ctl = BetaController(beta0, gain) if target is not None else None
    start = float(model.ebops()) if target is not None else 0.0
    interrupted = stopped_early = False
    try:
        for ep in bar:
            model.train()
            perm = torch.randperm(n, generator=gen)
            beta = beta0
            for s in range(steps_per_epoch):
                idx = perm[s * batch_size:(s + 1) * batch_size]
                # progress through training: by the clock (the ramp ends with the budget) or steps
                frac = (min(max(time.time() - ramp_t0, 0.0) / ramp_len, 1.0)
                        if time_budget is not None else step / max(total - 1, 1))
                if ctl is not None:
                    beta = ctl.beta
                elif time_budget is not None:
                    beta = beta0 * (beta1 / beta0) ** frac
                else:
                    beta = beta_at(step, total, beta0, beta1)
                opt.zero_grad(set_to_none=True)
                bt = torch.tensor(beta)  # a tensor: a new beta does not recompile
                if step == 0 and step_fn is not fwd_bwd:
                    try:
                        soft = step_fn(Xtr[idx], Ttr[idx], bt)
                    except Exception as e:  # no compiler, unsupported platform, ...
                        warnings.warn(f"torch.compile failed ({type(e).__name__}: "
                                      f"{str(e)[:200]}); training without it", stacklevel=2)
                        step_fn = fwd_bwd
                        opt.zero_grad(set_to_none=True)
                        soft = fwd_bwd(Xtr[idx], Ttr[idx], bt)
                    if time_budget is not None:
                        ramp_t0 = time.time()
                        ramp_len = max(time_budget - (ramp_t0 - t0), 1e-3)
                else:
                    soft = step_fn(Xtr[idx], Ttr[idx], bt)
                opt.step()
                if ctl is not None:
                    goal = ebops_target_at(frac, start, knee, end, knee_time)
                    ctl.update(float(soft), goal)
                step += 1
            if calib is not None:
                model.calibrate(calib)
            elif not learn_integer:  # (learned: the ranges are parameters)
                for m in model.modules():
                    if isinstance(m, _ActQ):
                        m.reset_range()
            acc = _val_accuracy(model, Xva, yva)
            eb = model.ebops()
            history.append({"epoch": ep, "beta": beta, "val_accuracy": acc, "ebops": eb})
            keeper.offer(FrontPoint(ep, beta, acc, eb), model)
            bar.set_postfix(acc=f"{acc:.4f}", ebops=eb, front=len(keeper.points))
            if time_budget is not None and time.time() - t0 > time_budget:
                break
            if (stop_below is not None and frac >= 0.5 and len(history) >= 5
                    and all(h["val_accuracy"] < stop_below for h in history[-5:])):
                stopped_early = True
                break
    except KeyboardInterrupt:  # keep what was reached: the front so far is returned
        interrupted = True
        model.eval()
    return model, GradientResult(keeper.points, history, time.time() - t0, interrupted,
                                 stopped_early)


def polish(gmodel: GradientBitsMLP, point: FrontPoint, data, *, epochs: int = 10,
           lr: float = 1e-3, batch_size: int = 1024, seed: int = 0,
           deadline: float | None = None, teacher: nn.Module | None = None,
           distill: float = 1.0) -> FrontPoint:
    """Fine-tune the weights of a front point with its bits frozen (frac bits, activation
    ranges, which weights are zero, and no weight's integer bits may grow), so its EBOPs
    can only fall; returns the epoch with the best validation accuracy as a new point
    (`polished` True), or `point` itself when no epoch beat it. The beta ramp leaves the
    weights of the cheap points tuned for the wider bits they had a moment earlier; a few
    epochs at the final bits win back part of that. deadline: a `time.time()` after which
    no new epoch starts. Ctrl-C returns the best reached so far."""
    from ..train.loop import Classify, _train_val_tensors

    if epochs < 1:
        raise ValueError(f"polish epochs must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    Xtr, ytr, Xva, yva = _train_val_tensors(data, Classify(), "cpu")
    Ttr = _targets(Xtr, ytr, teacher, distill)
    g = copy.deepcopy(gmodel)
    g.load_state_dict(point.state)
    dense = [m for m in g.modules() if isinstance(m, _DenseQ)]
    for prm in g.parameters():
        prm.requires_grad_(False)
    for m in g.modules():
        if isinstance(m, _ActQ):
            m.frozen = True
    # after each step every weight is clamped to +-lim: 2**i0 - 2**-f, so it rounds to at
    # most that and its integer bits stay <= i0; 0 where it rounds to zero, so it stays pruned
    lim = []
    with torch.no_grad():
        for d in dense:
            d.weight.requires_grad_(True)
            d.bias.requires_grad_(True)
            q = d.qweight()
            lim.append(torch.where(q != 0,
                                   torch.pow(2.0, _int_bits(q)) - torch.pow(2.0, -_round_f(d.f)),
                                   torch.zeros_like(q)))
            d.weight.mul_(q != 0)
    params = [t for d in dense for t in (d.weight, d.bias)]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(Xtr)
    best, best_state = point.val_accuracy, None
    try:
        for _ in range(epochs):
            if deadline is not None and time.time() >= deadline:
                break
            g.train()
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, batch_size):
                idx = perm[s:s + batch_size]
                loss = F.cross_entropy(g(Xtr[idx]), Ttr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for d, li in zip(dense, lim):
                        d.weight.clamp_(-li, li)
            acc = _val_accuracy(g, Xva, yva)
            if acc > best:
                best, best_state = acc, copy.deepcopy(g.state_dict())
    except KeyboardInterrupt:
        pass
    if best_state is None:
        return point
    g.load_state_dict(best_state)
    return FrontPoint(point.epoch, point.beta, best, g.ebops(), best_state, point.run,
                      polished=True)


def _polish_one(gmodel, point, data, kwargs: dict):
    """A worker process's polish (top level: spawned processes import it)."""
    torch.set_num_threads(1)
    return polish(gmodel, point, data, **kwargs)


def polish_front(gmodel: GradientBitsMLP, points: list[FrontPoint], data, *,
                 epochs: int = 10, lr: float = 1e-3, seconds: float | None = None,
                 pool=None, progress: bool = True, teacher: nn.Module | None = None,
                 distill: float = 1.0) -> list[FrontPoint]:
    """`polish` each front point, most accurate first (in `pool`'s processes when given),
    until `seconds` are spent; returns the Pareto front of the original and polished points.
    Most accurate first: with a time limit, the near-chance points at the cheap end of a
    front (many, and of no use) are the ones left out."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from tqdm import tqdm

    todo = sorted(points, key=lambda p: (-p.val_accuracy, p.ebops))
    deadline = None if seconds is None else time.time() + seconds
    kw = dict(epochs=epochs, lr=lr, deadline=deadline, teacher=teacher, distill=distill)
    keeper = ParetoCheckpoints()
    for p in todo:
        keeper.offer(p)
    bar = tqdm(total=len(todo), disable=not progress, desc="polishing the front", unit="point")
    pending = set()
    try:
        if pool is None:
            for p in todo:
                if deadline is not None and time.time() >= deadline:
                    break
                keeper.offer(polish(gmodel, p, data, **kw))
                bar.update(1)
        else:
            pending = {pool.submit(_polish_one, gmodel, p, data, kw) for p in todo}
            while pending:
                done, pending = wait(pending, timeout=5.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    keeper.offer(fut.result())
                    bar.update(1)
    except KeyboardInterrupt:  # keep the points polished so far; drop the queued ones
        for fut in pending:
            fut.cancel()
    bar.close()
    return keeper.points


def _one_run(float_model, data, threads: int, kwargs: dict, submitted: float | None = None):
    """A worker process's training (top level: spawned processes import it). submitted: the
    `time.time()` of submission for a run that starts at once; starting the process
    (seconds: it imports torch) then comes out of its time_budget instead of adding to the
    wall time."""
    torch.set_num_threads(threads)
    if submitted is not None and kwargs.get("time_budget") is not None:
        kwargs = {**kwargs, "time_budget": max(kwargs["time_budget"] - (time.time() - submitted),
                                               1.0)}
    return train_gradient(float_model, data, progress=False, **kwargs)


def default_workers(runs: int) -> int:
    """Processes `train_gradient_runs` uses by default: one per run, at most one per core."""
    import os

    return min(runs, os.cpu_count() or 1)


def train_gradient_runs(float_model: nn.Module, data, *, runs: int = 1,
                        workers: int | None = None, seed: int = 0, progress: bool = True,
                        polish_epochs: int = 0, polish_lr: float = 1e-3,
                        polish_time: float | None = None,
                        **kwargs) -> tuple[GradientBitsMLP, GradientResult]:
    """`runs` independent `train_gradient` runs (seeds seed, seed + 1, ...) in `workers`
    processes at once, one torch thread each (default: one process per run, at most one per
    CPU core), their fronts merged into one. For this model size one thread per process runs
    about as many epochs as two threads in one, so two cores give two runs in the time of
    one, and runs differ enough (a run can lose a region of the front) that the merged front
    is better than either. kwargs: as `train_gradient` (time_budget applies to each run; for
    the runs that start at once it counts from the call, so starting the processes comes
    out of it).
    Returns a model to use with `to_hetq_model` and the merged result (each point's `run`
    says where it came from; the history entries carry "run" too).
    polish_epochs > 0: afterwards `polish_front` fine-tunes the merged front's points at
    their bits (Adam, `polish_lr`), most accurate first, in the same processes, for at most
    `polish_time` seconds (None: every point), plus whatever of time_budget the runs left
    when `stop_below` ended them early.
    Ctrl-C stops every run; the fronts reached so far are merged and returned."""
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    from tqdm import tqdm

    t0 = time.time()
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    workers = workers or default_workers(runs)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if polish_epochs < 0:
        raise ValueError(f"polish_epochs must be >= 0, got {polish_epochs}")
    polish_kw = dict(epochs=polish_epochs, lr=polish_lr, progress=progress,
                     **{k: kwargs[k] for k in ("teacher", "distill") if k in kwargs})
    budget = kwargs.get("time_budget")
    waves = -(-runs // workers)  # runs one after another in each process

    def polish_seconds():
        """polish_time, plus the training time that runs stopped early (stop_below) left."""
        if polish_time is None:
            return None
        spare = max(0.0, t0 + waves * budget - time.time()) if budget else 0.0
        return polish_time + spare

    if runs == 1 and workers == 1:
        model, res = train_gradient(float_model, data, seed=seed, progress=progress, **kwargs)
        if polish_epochs and res.front and not res.interrupted:
            res.front = polish_front(model, res.front, data, seconds=polish_seconds(),
                                     **polish_kw)
            res.seconds = time.time() - t0
        return model, res
    threads = max(1, (os.cpu_count() or 1) // workers)
    float_model = copy.deepcopy(float_model).cpu()
    results: dict[int, tuple[GradientBitsMLP, GradientResult]] = {}
    bar = tqdm(total=runs, disable=not progress, unit="run",
               desc=f"gradient bits: {runs} runs in {workers} processes"
                    + (f", {budget:.0f} s each" if budget else ""))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        now = time.time()
        futs = {pool.submit(_one_run, float_model, data, threads, {**kwargs, "seed": seed + r},
                            now if r < workers else None): r for r in range(runs)}
        pending = set(futs)
        interrupted = False
        while pending:
            try:
                done, pending = wait(pending, timeout=5.0, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:  # the workers got it too: they return their fronts
                interrupted = True
                continue
            for fut in done:
                results[futs[fut]] = fut.result()
                bar.update(1)
            bar.set_postfix(elapsed=f"{time.time() - t0:.0f}s")
        bar.close()
        keeper = ParetoCheckpoints()
        history = []
        for r in sorted(results):
            for p in results[r][1].front:
                p.run = r
                keeper.offer(p)
            history += [{**h, "run": r} for h in results[r][1].history]
        model = results[min(results)][0]  # every run builds the same structure
        interrupted = interrupted or any(res.interrupted for _, res in results.values())
        front = keeper.points
        if polish_epochs and front and not interrupted:
            front = polish_front(model, front, data, pool=pool, seconds=polish_seconds(),
                                 **polish_kw)
    if front:
        model.load_state_dict(front[-1].state)
    early = any(res.stopped_early for _, res in results.values())
    return model, GradientResult(front, history, time.time() - t0, interrupted, early)


# -- conversion to an ordinary hetq model ------------------------------------------------------

def to_hetq_model(gmodel: GradientBitsMLP, state: dict | None = None) -> nn.Sequential:
    """An ordinary hetq model computing exactly what `gmodel` (with `state`) computes.

    A hidden neuron whose frac bits went below 0 (grid step 2**s) is rescaled by powers of
    two: its incoming weights and bias by 2**-s, its outgoing weights by 2**s, its
    activation then has step 1 and integer == bits. Power-of-two scaling is exact, keeps
    every weight's width, and the model's outputs are bit-identical."""
    from ..quant.fixed_point import quantized_bits, quantized_relu
    from ..quant.layers import QActivation, QDense

    g = copy.deepcopy(gmodel)
    if state is not None:
        g.load_state_dict(state)
    g.eval()
    layers = OrderedDict()
    inq = g.inq
    _, dead = inq.grid()
    # a pruned feature is always 0: give it a 2-bit type and zero its fc1 weights
    bits = torch.where(dead, torch.full_like(inq.integer, 2.0), inq.widths())
    integer = torch.where(dead, torch.zeros_like(inq.integer), inq.integer)
    layers["input"] = QActivation(quantized_bits(bits=bits, integer=integer, alpha=1))
    # pass 1: the quantized values. Dense layers: weights w, their frac bits f, bias b and
    # the bias's extra frac bits from rescaling (bshift, per row); activations: integer i
    # and frac bits f (scalars per layer or one per neuron), off = neurons with no bits
    items = []
    with torch.no_grad():
        for name, m in g.body.named_children():
            if isinstance(m, _DenseQ):
                wq = m.qweight().detach().clone()
                items.append(dict(dense=True, name=name, w=wq, f=_round_f(m.f).clone(),
                                  b=m.qbias().detach().clone(),
                                  bshift=torch.zeros(wq.shape[0])))
            else:
                f = _round_f(m.f, m.F_MIN)
                i = m.integer.clone()
                if f.dim() == 0 and int(i + f) < 1:
                    raise ValueError(f"{name}: activation with {int(i + f)} bits (all zero); "
                                     "lower beta1")
                items.append(dict(dense=False, name=name, i=i, f=f, off=m.widths() < 1))
    # pass 2: zero the weights fed by dead inputs and those into neurons that cannot change
    # the output, rescale neurons with negative frac bits
    items[0]["w"][:, dead] = 0.0
    for it, useful in zip([it for it in items if it["dense"]], g._useful()):
        it["w"][~useful] = 0.0
        it["b"][~useful] = 0.0
    shifts = g._shifts()  # the powers of two that `ebops` counts the weights' types with
    for k, act in enumerate(items):
        if act["dense"]:
            continue
        prev, nxt = items[k - 1], items[k + 1] if k + 1 < len(items) else None
        off = act["off"]
        s = shifts[k]
        if nxt is not None:
            nxt["w"][:, off.expand(nxt["w"].shape[1]) if off.dim() == 0 else off] = 0.0
            col = s.expand(nxt["w"].shape[1]) if s.dim() == 0 else s
            nxt["w"] *= torch.pow(2.0, col).unsqueeze(0)
            nxt["f"] -= col.unsqueeze(0)
        row = s.expand(prev["w"].shape[0]) if s.dim() == 0 else s
        prev["w"] *= torch.pow(2.0, -row).unsqueeze(1)
        prev["f"] += row.unsqueeze(1)
        prev["b"] *= torch.pow(2.0, -row)
        prev["bshift"] += row
        act["i"], act["f"] = act["i"] - s, act["f"] + s
    # pass 3: the hetq layers
    with torch.no_grad():
        for it in items:
            name = it["name"]
            if it["dense"]:
                wq, bq = it["w"], it["b"]
                frw = it["f"].clamp_min(-1.0)  # same values on the finer grid (bits >= integer)
                iw = torch.maximum(_int_bits(wq, 2.0 ** -20), torch.zeros_like(wq) - frw + 1)
                wbits = (iw + frw + 1).clamp_min(2)
                bfrac = g.body._modules[name].bias_frac + int(it["bshift"].max())
                ib = float(_int_bits(bq, 2.0 ** -20).max().clamp_min(0))
                d = QDense(wq.shape[1], wq.shape[0],
                           kernel_quantizer=quantized_bits(bits=wbits, integer=wbits - 1 - frw,
                                                           alpha=1),
                           bias_quantizer=quantized_bits(int(ib) + bfrac + 1, int(ib), alpha=1))
                d.weight.copy_(wq)
                d.bias.copy_(bq)
                layers[name] = d
            else:
                i, f, off = it["i"], it["f"], it["off"]
                if f.dim() == 0:
                    layers[name] = QActivation(quantized_relu(int(i + f), int(i)))
                else:
                    # a neuron with no bits always outputs 0: 1-bit type (its weights are 0)
                    i = torch.where(off, torch.zeros_like(i), i)
                    b = torch.where(off, torch.ones_like(i), i + f)
                    layers[name] = QActivation(quantized_relu(bits=b, integer=i))
    return nn.Sequential(layers).eval()


# -- `hetq search --strategy gradient` ---------------------------------------------------------
@dataclass
class GradientRow:
    point: FrontPoint
    test_accuracy: float
    ebops: int
    energy_pj: float
    lut: float
    path: str


def saved_gradient_rows(out) -> list[GradientRow]:
    """The front of a finished gradient-strategy run, read back from its point files
    (`<out>/gradient/point_NNN.pt`), cheapest first."""
    from pathlib import Path

    from ..train.checkpoint import read

    rows = []
    for path in sorted((Path(out) / "gradient").glob("point_*.pt")):
        m = read(path)["metrics"]
        p = FrontPoint(m["epoch"], m["beta"], m["val_accuracy"], m["ebops"],
                       polished=m["polished"])
        rows.append(GradientRow(p, m["test"]["accuracy"], m["ebops"], m["costs"]["energy_pj"],
                                m["costs"]["lut"], str(path)))
    if not rows:
        raise ValueError(f"{out} is a gradient-strategy run without front points yet (no "
                         f"{Path(out) / 'gradient' / 'point_NNN.pt'}); run it to the end first")
    return rows


def _teacher(config, out, data, progress: bool) -> nn.Module:
    """The float teacher of a distilled gradient search: `config.model` with hidden widths
    `config.teacher_widths`, trained like the float reference and saved as
    <out>/teacher.pt, which a rerun in that folder reuses."""
    from ..train.checkpoint import load, read
    from .driver import train_float_model

    path = out / "teacher.pt"
    kwargs = {**config.model_kwargs, "widths": list(config.teacher_widths)}
    if path.exists():
        ckpt = read(path)
        if (ckpt.get("model"), ckpt.get("model_kwargs")) != (config.model, kwargs):
            raise ValueError(f"{path} is a teacher {ckpt.get('model')!r} with "
                             f"{ckpt.get('model_kwargs')!r}, now {config.model!r} with "
                             f"{kwargs!r}; use another --out")
        return load(path)
    teacher, metrics = train_float_model(config, data, path, kwargs, "the float teacher",
                                         progress)
    if progress:
        print(f"teacher {'-'.join(map(str, config.teacher_widths))}: validation accuracy "
              f"{metrics.get('accuracy', float('nan')):.4f}")
    return teacher


def run_gradient_strategy(config, out, progress: bool = True,
                          time_budget: float | None = None) -> list[GradientRow]:
    """Float model (trained or reused from the run folder), one HGQ-style training, then each
    Pareto point as an ordinary hetq model: test accuracy, cost, checkpoint under
    <out>/gradient/. Prints the front table."""
    from pathlib import Path

    from ..cost import cost
    from ..train import evaluate
    from ..train.checkpoint import save_module
    from .driver import changed_settings, start_run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the float model saved there is reused: it must be the same model on the same data
    changed = {k: v for k, v in changed_settings(config, out).items()
               if k in ("model", "model_kwargs", "data")}
    if changed and (out / "float.pt").exists():
        raise ValueError(f"{out} holds a float model for other settings ("
                         + ", ".join(f"{k}: {v!r}, now {getattr(config, k)!r}"
                                     for k, v in changed.items())
                         + "); use another --out")
    ctx = start_run(config, out, progress)
    teacher = _teacher(config, out, ctx.data, progress) if config.teacher_widths else None
    t0 = time.time()
    budget = time_budget if time_budget is not None else config.time_budget
    target = tuple(config.ebops_target) if config.ebops_target else None
    g, res = train_gradient_runs(
        ctx.float_model, ctx.data, runs=config.gradient_runs, epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, beta0=config.beta0, beta1=config.beta1,
        bits_lr=config.bits_lr, seed=config.seed, time_budget=budget, target=target,
        polish_epochs=config.polish_epochs, compile=config.gradient_compile,
        stop_below=config.stop_below, input_quantile=config.input_quantile,
        act_quantile=config.act_quantile, learn_integer=config.learn_integer,
        teacher=teacher, distill=config.distill, progress=progress)
    if res.interrupted:
        print("gradient strategy: interrupted; saving the front reached so far")
    rows = []
    shape = ctx.data.input_shape
    for k, p in enumerate(res.front):
        m = to_hetq_model(g, p.state)
        acc = evaluate(m, ctx.data)["accuracy"]
        s = cost(m, shape, source_quantizer="quantized_bits(16,5,alpha=1)").summary()
        path = out / "gradient" / f"point_{k:03d}.pt"
        save_module(path, m, data=ctx.data, metrics={
            "test": {"accuracy": acc}, "ebops": p.ebops, "val_accuracy": p.val_accuracy,
            "epoch": p.epoch, "beta": p.beta, "polished": p.polished, "costs": s})
        rows.append(GradientRow(p, acc, p.ebops, s["energy_pj"], s["lut"], str(path)))
    if progress:
        print("(epoch: where the point was saved during training; p: its weights then "
              "polished at frozen bits)")
        ref = ctx.reference.get("test", {}).get("accuracy")
        print(f"\ngradient strategy: {len(res.history)} epochs in {res.seconds:.1f} s, "
              f"front of {len(rows)} points (total {time.time() - t0:.1f} s); float test "
              f"accuracy {ref if ref is None else round(ref, 4)}")
        print(format_gradient_table(rows))
    return rows


def format_gradient_table(rows: list[GradientRow]) -> str:
    lines = [f"{'point':>5} {'epoch':>6} {'val acc':>8} {'test acc':>8} {'EBOPs':>8} "
             f"{'energy pJ':>9} {'LUT':>7}  checkpoint",
             "-" * 79]
    for k, r in enumerate(rows):
        ep = f"{r.point.epoch}{'p' if r.point.polished else ''}"
        lines.append(f"{k:>5} {ep:>6} {r.point.val_accuracy:>8.4f} "
                     f"{r.test_accuracy:>8.4f} {r.ebops:>8} {r.energy_pj:>9.1f} "
                     f"{r.lut:>7.0f}  {r.path}")
    return "\n".join(lines)
