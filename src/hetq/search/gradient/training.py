"""Training the bit-widths with the weights (beta ramp or controller, Pareto snapshots)
and polishing front points at frozen bits."""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import signal
import time
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from ...quant.base import eval_mode
from ...train.loop import keeps_global_rng
from .model import GradientBitsMLP, _ActQ, _DenseQ, _int_bits, _round_f


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
    p = next(teacher.parameters(), None)
    like = {} if p is None else {"dtype": p.dtype, "device": p.device}
    try:
        with torch.no_grad(), eval_mode(teacher):
            logits = torch.cat([teacher(X[i:i + 8192].to(**like)).cpu()
                                for i in range(0, len(X), 8192)]).float()
    except RuntimeError as e:
        raise ValueError(f"the teacher does not take rows of {X.shape[1]} features: "
                         f"{str(e).splitlines()[0]}") from None
    if logits.dim() != 2 or logits.shape[0] != len(X) or int(y.max()) >= logits.shape[1]:
        raise ValueError(f"the teacher gives outputs of shape {tuple(logits.shape)} for "
                         f"{len(X)} rows; expected ({len(X)}, classes >= {int(y.max()) + 1})")
    hard = F.one_hot(y.long(), logits.shape[1]).float()
    return (1.0 - distill) * hard + distill * torch.softmax(logits, 1)


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
    diverged: bool = False  # non-finite weights or bit-widths ended training (in any run)


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


FRONT_SAVE_EVERY = 30.0  # seconds between two writes of a front file during training


class FrontFile:
    """The front reached so far, written to `path` (whole or not at all) when it first has
    points, then at most every `every` seconds while it changes, and at the end
    (`update(force=True)`): a training killed outright (SIGKILL, out of memory) loses at most
    that much. `read_front_file` reads it back. Nothing is
    written when `path` is None. A write that fails (full disk) is warned about once and
    training goes on."""

    FORMAT = "hetq gradient front 1"

    def __init__(self, path, model: GradientBitsMLP, every: float = FRONT_SAVE_EVERY):
        from pathlib import Path

        self.path = None if path is None else Path(path)
        self.model, self.every = model, every
        self.last, self.warned = -math.inf, False  # (the first: at once)
        self.saved: tuple[FrontPoint, ...] = ()  # the points last written (kept: no id reuse)

    def update(self, points: list[FrontPoint], epochs: int, force: bool = False) -> None:
        """Write `points` unless they are the ones written last, or (unless `force`) the
        last write is less than `every` seconds old."""
        if self.path is None or (len(points) == len(self.saved)
                                 and all(p is q for p, q in zip(points, self.saved))):
            return
        if not force and time.time() - self.last < self.every:
            return
        from ...files import torch_save_whole

        payload = {"format": self.FORMAT, "structure": self.model.structure, "epochs": epochs,
                   "points": [{f.name: getattr(p, f.name) for f in fields(FrontPoint)}
                              for p in points]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch_save_whole(payload, self.path)
        except OSError as e:
            if not self.warned:
                import warnings

                warnings.warn(f"could not save the front so far to {self.path} ({e}); "
                              "the work goes on, its front is kept in memory", stacklevel=3)
                self.warned = True
        self.last, self.saved = time.time(), tuple(points)


def read_front_file(path) -> tuple[dict, list[FrontPoint]]:
    """(structure, points) of a `FrontFile`; a file that is not one is named in a
    ValueError."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != FrontFile.FORMAT:
            raise ValueError(f"format {payload.get('format')!r}")
        return payload["structure"], [FrontPoint(**p) for p in payload["points"]]
    except Exception as e:
        raise ValueError(f"{path} is not a readable gradient-strategy front file "
                         f"({type(e).__name__}: {e})") from None


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


def bits_optimizer(model: GradientBitsMLP, lr: float,
                   bits_lr: float | None = None) -> torch.optim.Adam:
    """Adam over the weights and biases at `lr` and the bit-width parameters (frac bits f,
    learned integer bits i) at `bits_lr` (default `lr`)."""
    bits = {n for n, _ in model.named_parameters()
            if n == "f" or n.endswith(".f") or n.endswith(".i")}
    fs = [p for n, p in model.named_parameters() if n in bits]
    ws = [p for n, p in model.named_parameters() if n not in bits]
    groups = [{"params": ws, "lr": lr},
              {"params": fs, "lr": bits_lr if bits_lr is not None else lr}]
    try:  # the fused CPU kernel (torch >= 2.4) makes a step of this small model ~15% faster
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(groups)


def loss_step(model: GradientBitsMLP):
    """The training step's forward and backward pass, fwd_bwd(xb, targets, beta) ->
    soft EBOPs (detached): loss = cross_entropy(model(xb), targets) + beta * soft EBOPs
    (beta a 0-dim tensor, so that a new value does not recompile a `torch.compile`d step)."""
    def fwd_bwd(xb, yb, beta_t):
        soft = model.soft_ebops()
        loss = F.cross_entropy(model(xb), yb) + beta_t * soft
        loss.backward()
        return soft.detach()

    return fwd_bwd


def _check_training(epochs, batch_size, lr, seed, bits_lr=None) -> None:
    """The errors `fit` gives for bad counts, learning rates (a negative one trained the
    wrong way without a word) and seeds."""
    from ...train.loop import check_counts, check_hyperparameters, check_seed

    check_counts(epochs=epochs, batch_size=batch_size)
    check_seed(seed)
    check_hyperparameters(lr, 0.0, None)
    if bits_lr is not None and (isinstance(bits_lr, bool) or not isinstance(
            bits_lr, numbers.Real) or not 0.0 < bits_lr < math.inf):
        raise ValueError(f"bits_lr must be a learning rate > 0, got {bits_lr!r}")


@keeps_global_rng
def train_gradient(float_model: nn.Module, data, *, epochs: int = 200, batch_size: int = 1024,
                   lr: float = 3e-3, beta0: float = 1e-7, beta1: float = 1e-4, f0: float = 6.0,
                   bits_lr: float | None = None, per_neuron: bool = True, seed: int = 0,
                   time_budget: float | None = None,
                   target: tuple[float, float] | None = None, knee_time: float = 0.3,
                   gain: float = 0.005, compile: bool = False,
                   stop_below: float | None = None, input_quantile: float = 0.99,
                   act_quantile: float | None = 0.99, learn_integer: bool = True,
                   teacher: nn.Module | None = None, distill: float = 1.0,
                   granularity: str = "weight", activations: str = "neuron",
                   front_file=None, save_every: float = FRONT_SAVE_EVERY,
                   progress: bool = True) -> tuple[GradientBitsMLP, GradientResult]:
    """Train bit-widths and weights together; returns the model and the Pareto snapshots.

    front_file: a path where the front reached so far is saved while it changes, at most
    every `save_every` seconds, and at the end (`FrontFile`; `read_front_file`), so that a
    training killed outright loses at most that much.

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
    stop_below: stop once half of training is done and the validation accuracy was below
    this in each of the last 5 epochs (beta only grows: the model is past the part of the
    front that is wanted); `GradientResult.stopped_early` says so.
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
    granularity, activations: what shares one trainable bit-width (`GradientBitsMLP`):
    weights per "weight", "channel" or "layer"; inputs and activations per "neuron" or
    "layer" (one fixed-point type per tensor, as hls4ml needs).
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

    from ...progress import bar as progress_bar
    from ...train.loop import Classify, _train_val_tensors, as_dataset

    data = as_dataset(data)
    _check_training(epochs, batch_size, lr, seed, bits_lr=bits_lr)
    if time_budget is not None and not float(time_budget) > 0:
        raise ValueError(f"time_budget={time_budget!r}; expected seconds > 0 (None: no limit)")
    if not (0 < beta0 <= (beta1 if target is None else 1.0)):  # (target: no ramp to beta1)
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
    last = [m for m in float_model.modules() if isinstance(m, nn.Linear)][-1:]
    classes = int(max(int(ytr.max()), int(yva.max()))) + 1
    if last and last[0].out_features < classes:
        raise ValueError(f"the model gives {last[0].out_features} outputs, and the data have "
                         f"{classes} classes; build it with one output per class")
    Ttr = _targets(Xtr, ytr, teacher, distill)
    calib = None  # rows for the per-epoch quantile ranges (only without learned integers)
    if act_quantile is not None and not learn_integer:
        pick = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(seed))[:8192]
        calib = Xtr[pick]
    # learned integer bits start from the act_quantile range (from the largest value if None)
    start_q = 1.0 if (learn_integer and act_quantile is None) else act_quantile
    model = GradientBitsMLP.rebuild(float_model, Xtr, dict(
        f0=f0, per_neuron=per_neuron, input_quantile=input_quantile, act_quantile=start_q,
        granularity=granularity, activations=activations, learn_integer=learn_integer))
    opt = bits_optimizer(model, lr, bits_lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(Xtr)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    if compile and n >= batch_size:
        steps_per_epoch = n // batch_size  # full batches only: one compiled shape
    total = epochs * steps_per_epoch
    keeper = ParetoCheckpoints()
    history = []
    saver = FrontFile(front_file, model, save_every)

    fwd_bwd = loss_step(model)
    step_fn = torch.compile(fwd_bwd) if compile else fwd_bwd
    t0 = time.time()
    ramp_t0, ramp_len = t0, time_budget  # the clock ramp starts after compiling
    # (a budget with the epochs uncapped, 1,000,000: no total, whose ETA read 715 hours)
    bar = progress_bar(total=epochs if time_budget is None or epochs < 100_000 else None,
                       disable=not progress, unit="epoch",
                       desc="gradient bits" + (f" ({time_budget:.0f} s budget)"
                                               if time_budget is not None else ""))
    step = 0
    ctl = BetaController(beta0, gain) if target is not None else None
    start = float(model.ebops()) if target is not None else 0.0
    # the controller steers the EBOPs reported and exported (`ebops`), from the soft count of
    # each step times their ratio at the last epoch's end: the soft count also has weights
    # into neurons that cannot change the output, and steered alone it ended far below END
    exact_per_soft = 1.0
    interrupted = stopped_early = diverged = False
    try:
        for ep in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=gen)
            beta = beta0
            for s in range(steps_per_epoch):
                idx = perm[s * batch_size:(s + 1) * batch_size]
                # progress through training: by the clock (the ramp ends with the budget) or
                # steps, whichever ends training first (an epoch cap reached before the
                # budget ended the ramp near its start)
                frac = step / max(total - 1, 1)
                if time_budget is not None:
                    frac = max(frac, min(max(time.time() - ramp_t0, 0.0) / ramp_len, 1.0))
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
                    ctl.update(float(soft) * exact_per_soft, goal)
                step += 1
            if not all(bool(torch.isfinite(t).all()) for t in model.parameters()):
                warnings.warn(f"gradient training diverged in epoch {ep} (weights or bit-widths "
                              "are no longer finite numbers); it stops there, and the front "
                              "reached before is kept", stacklevel=2)
                diverged = True
                break
            if calib is not None:
                model.calibrate(calib)
            elif not learn_integer:  # (learned: the ranges are parameters)
                for m in model.modules():
                    if isinstance(m, _ActQ):
                        m.reset_range()
            acc = _val_accuracy(model, Xva, yva)
            eb = model.ebops()
            if ctl is not None:
                with torch.no_grad():
                    s = float(model.soft_ebops())
                exact_per_soft = eb / s if s > 0 else 1.0
            history.append({"epoch": ep, "beta": beta, "val_accuracy": acc, "ebops": eb})
            keeper.offer(FrontPoint(ep, beta, acc, eb), model)
            saver.update(keeper.points, len(history))
            bar.set_postfix(acc=f"{acc:.4f}", ebops=eb, front=len(keeper.points), refresh=False)
            bar.update(1)
            if time_budget is not None and time.time() - t0 > time_budget:
                break
            if (stop_below is not None and frac >= 0.5 and len(history) >= 5
                    and all(h["val_accuracy"] < stop_below for h in history[-5:])):
                stopped_early = True
                break
    except KeyboardInterrupt:  # keep what was reached: the front so far is returned
        interrupted = True
        model.eval()
    bar.close()
    try:
        saver.update(keeper.points, len(history), force=True)
    except KeyboardInterrupt:  # (a second Ctrl-C: the front is still returned)
        interrupted = True
    return model, GradientResult(keeper.points, history, time.time() - t0, interrupted,
                                 stopped_early, diverged)


class PolishInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during `polish`: `point` is the best it reached (or the point
    it started from)."""

    def __init__(self, point: FrontPoint):
        super().__init__()
        self.point = point


class Polished(list):
    """`polish_front`'s points; `interrupted`: Ctrl-C or SIGTERM ended the polish early."""

    interrupted = False


@keeps_global_rng
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
    no new epoch starts. Ctrl-C (SIGTERM under `interrupts_save`) raises `PolishInterrupted`
    with the best point reached so far."""
    from ...train.loop import Classify, _train_val_tensors, as_dataset

    data = as_dataset(data)
    _check_training(epochs, batch_size, lr, seed)
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
    interrupted = False
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
        interrupted = True
    result = point
    if best_state is not None:
        g.load_state_dict(best_state)
        result = FrontPoint(point.epoch, point.beta, best, g.ebops(), best_state, point.run,
                            polished=True)
    if interrupted:  # (the caller must stop too, not go on to its next point)
        raise PolishInterrupted(result)
    return result


def _polish_one(gmodel, point, data, kwargs: dict):
    """A worker process's polish (top level: spawned processes import it)."""
    from ...cli import interrupts_save

    torch.set_num_threads(1)
    with interrupts_save((signal.SIGINT, signal.SIGTERM)):
        try:
            return polish(gmodel, point, data, **kwargs)
        except PolishInterrupted as e:  # (the parent, interrupted too, stops the others)
            return e.point


def quiet_worker(parent: int | None = None):
    """Initializer of the worker processes: between tasks a worker ignores Ctrl-C and
    SIGTERM (one dying there would break the pool, and with it the other runs' results);
    its tasks take either as Ctrl-C, once (`interrupts_save`). parent: the pid of the
    process that started it; the worker dies with it."""
    from ...cli import die_with_parent, ignore_signal

    if parent is not None:
        die_with_parent(parent)
    signal.signal(signal.SIGINT, ignore_signal)
    signal.signal(signal.SIGTERM, ignore_signal)
    if hasattr(signal, "pthread_sigmask"):  # started with SIGINT blocked (`spawning`): from
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # now on it is ignored


@contextlib.contextmanager
def spawning():
    """Around `ProcessPoolExecutor.submit` calls that start worker processes: SIGINT is
    blocked in this thread, so a Ctrl-C cannot land inside the executor while it starts its
    processes and threads (a half-started executor then failed on shutdown with 'cannot join
    thread before it is started', exit 1). The signal stays pending and is raised when the
    block ends; the workers inherit the block (it survives fork and exec), so the same
    Ctrl-C, sent by a terminal to every process, does not kill one while it imports;
    `quiet_worker` unblocks it there."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def interrupt_workers(pool, queued=()) -> None:
    """Cancel the futures `queued` that have not started, and interrupt the tasks of `pool`'s
    worker processes (SIGTERM, taken as Ctrl-C), so that each returns what it reached now:
    needed when only this process got the signal (SIGTERM from `kill` or a batch system,
    `kill -INT`); after Ctrl-C in a terminal, which they got too, it is ignored. Only the
    pool's own processes (`ProcessPoolExecutor._processes`; none if a Python version lacks
    it), never other children of the caller."""
    import os

    for fut in queued:
        fut.cancel()
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except (OSError, TypeError):  # (it ended meanwhile; or not started: no pid)
            pass


def polish_front(gmodel: GradientBitsMLP, points: list[FrontPoint], data, *,
                 epochs: int = 10, lr: float = 1e-3, seconds: float | None = None,
                 pool=None, progress: bool = True, teacher: nn.Module | None = None,
                 distill: float = 1.0, front_file=None,
                 save_every: float = FRONT_SAVE_EVERY) -> Polished:
    """`polish` each front point, most accurate first (in `pool`'s processes when given),
    until `seconds` are spent; returns the Pareto front of the original and polished points.
    Most accurate first: with a time limit, the near-chance points at the cheap end of a
    front (many, and of no use) are the ones left out. Ctrl-C (or SIGTERM under
    `interrupts_save`) stops it: the points polished so far, and the best state of those in
    progress, are kept, and the result's `interrupted` is True. front_file: as
    `train_gradient`'s, the polished front so far."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from ...progress import bar as progress_bar

    todo = sorted(points, key=lambda p: (-p.val_accuracy, p.ebops))
    deadline = None if seconds is None else time.time() + seconds
    kw = dict(epochs=epochs, lr=lr, deadline=deadline, teacher=teacher, distill=distill)
    keeper = ParetoCheckpoints()
    for p in todo:
        keeper.offer(p)
    saver = FrontFile(front_file, gmodel, save_every)

    def offer(point):
        keeper.offer(point)
        saver.update(keeper.points, 0)

    bar = progress_bar(total=len(todo), disable=not progress, desc="polishing the front",
                       unit="point")
    pending = set()
    out = Polished()
    try:
        if pool is None:
            for p in todo:
                if deadline is not None and time.time() >= deadline:
                    break
                offer(polish(gmodel, p, data, **kw))
                bar.update(1)
        else:
            pending = {pool.submit(_polish_one, gmodel, p, data, kw) for p in todo}
            while pending:
                done, pending = wait(pending, timeout=5.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    offer(fut.result())
                    bar.update(1)
    except KeyboardInterrupt as e:  # keep the points polished so far; drop the queued ones
        out.interrupted = True
        if isinstance(e, PolishInterrupted):
            keeper.offer(e.point)
        if pool is not None:  # the running ones return their best within an epoch
            interrupt_workers(pool, pending)
            running = [f for f in pending if not f.cancelled()]
            try:
                for fut in (wait(running, timeout=30.0)[0] if running else ()):
                    if fut.exception() is None:
                        keeper.offer(fut.result())
            except KeyboardInterrupt:  # (a second Ctrl-C: what is kept so far is returned)
                pass
    bar.close()
    try:
        saver.update(keeper.points, 0, force=True)
    except KeyboardInterrupt:  # (a second Ctrl-C: the front is still returned)
        out.interrupted = True
    out.extend(keeper.points)
    return out
