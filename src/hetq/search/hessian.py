"""Hessian-aware bit allocation (HAWQ-V2/V3 style): a whole front of configurations in seconds.

1. `hessian_traces`: for each quantizable tensor T (kernel and bias of every Linear/Conv layer,
   the output of every activation layer) the average Hessian trace tr(H_TT) / numel(T) of the
   batch-mean loss on the float model, by Hutchinson's method: tr(H) = E[v^T H v] over
   Rademacher vectors v (entries +-1), with H v from double back-propagation (no Hessian is
   materialised). Each tensor gets its own product H_TT v (its Hessian block alone: the
   cross-block terms of one product over all tensors vanish on average but would swamp small
   tensors such as biases in variance). Iterations stop when every running mean moved by
   less than `tol` (relative) in one iteration.
   Activation traces are per sample: tr(H_aa) / numel(a) x batch size, i.e. the trace of one
   sample's loss w.r.t. its own activations, per element. `top_eigenvalue`: the largest
   eigenvalue of each tensor's Hessian block by power iteration.
2. `sensitivities`: the second-order loss increase of each candidate quantizer Q,
       weights:      Omega = max(trace, 0) x ||Q(W) - W||^2
       activations:  Omega = max(trace, 0) x mean over samples of ||Q(z) - act(z)||^2
   (z: the activation layer's input; Q replaces the layer, so Q(z) - act(z) is the error of
   its output), summed over the layers a search parameter (group) controls.
3. `cost_table`: the cost (energy pJ, bits, EBOPs, LUT) as a function of the choices. The
   cost model is a sum of per-layer rows; each row depends on a few groups (a weight layer's
   energy on its kernel, its bias and the activation feeding it, which set the multiplier and
   accumulator widths; its EBOPs on kernel bits x input bits), found by varying one group at a
   time from a base configuration. Rows of one group are tabulated per choice, rows of
   several groups per joint choice (large tables only when the row is not a sum of one-group
   terms); random configurations built from scratch then check the table against the cost
   model. Linearising the jet MLP's energy (EBOPs) around one configuration instead errs by up
   to ~50 % (~300 %), so the joint tables matter.
4. `allocate`: one choice per group minimising sum Omega subject to cost <= budget, an integer
   linear program solved exactly by `scipy.optimize.milp` (HiGHS): binary x[g, c] one-hot per
   group; a joint row's cost enters through continuous z[row, a] whose marginals equal the x
   (exact for binary x). Among equally good choices the cheapest is taken. `sweep` solves it
   for log-spaced budgets between the cheapest configuration and the unconstrained optimum.
5. `hessian_prior`: all of it on a search space, returning Optuna parameter dicts for
   `study.enqueue_trial(params)` (`HessianPrior.params`) and the hetq models they build.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..quant import get_quantizer
from ..quant.layers import QLayer
from .build import build_candidate
from .space import ACTIVATION_TYPES, LINEAR_TYPES, Candidate, SearchSpace

WEIGHT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d)
GOALS = ("energy", "bits", "ebops", "lut", "dsp")
SMALL_TABLE = 256  # joint tables up to this size are always tabulated (no additivity probe)


# -- Hutchinson traces -----------------------------------------------------------------------
@dataclass
class Traces:
    """Average Hessian traces: `params` {"<layer>.weight": tr/numel}, `activations`
    {"<module>": per-sample tr/numel of its output}; `iterations` run, `converged` (tol met)."""

    params: dict[str, float]
    activations: dict[str, float]
    iterations: int
    converged: bool
    seconds: float

    def __getitem__(self, name: str) -> float:
        return self.params[name] if name in self.params else self.activations[name]


def _as_batches(batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(batches, tuple) and len(batches) == 2 and torch.is_tensor(batches[0]):
        return [batches]
    out = list(batches)
    if not out:
        raise ValueError("no batches: expected (x, y) or an iterable of (x, y) pairs")
    return out


def quantizable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Kernel and bias of every Linear/Conv1d/Conv2d module, by parameter name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_MODULES):
            out[f"{name}.weight"] = m.weight
            if m.bias is not None:
                out[f"{name}.bias"] = m.bias
    return out


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules a search space quantizes as activations (ReLU, Tanh, ..., Identity)."""
    return {n: m for n, m in model.named_modules()
            if n and isinstance(m, ACTIVATION_TYPES + LINEAR_TYPES)}


def _check_float(model: nn.Module):
    for n, m in model.named_modules():
        if isinstance(m, QLayer):
            raise ValueError(f"Hessian traces are taken on the float model; layer {n!r} is "
                             f"quantized ({type(m).__name__})")


@contextmanager
def _differentiable_eval(model: nn.Module, params: Mapping[str, torch.Tensor]):
    """Eval mode (batch norm statistics, no dropout), gradients on for `params`; restored."""
    was_training = model.training
    req = {n: p.requires_grad for n, p in params.items()}
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)
        for n, p in params.items():
            p.requires_grad_(req[n])


def _forward_capture(model, x, acts: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """model(x) and the output tensor of each module in `acts` (each must run once)."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name, out):
        if name in seen:
            raise ValueError(f"activation module {name!r} runs more than once per forward "
                             "pass; give each use its own module")
        seen[name] = out

    hs = [m.register_forward_hook(lambda mod, i, o, n=n: hook(n, o)) for n, m in acts.items()]
    try:
        out = model(x)
    finally:
        for h in hs:
            h.remove()
    return out, seen


class _Graphs:
    """Per batch: loss gradients w.r.t. the parameters and the activation outputs, kept with
    their graphs (create_graph=True) so Hessian-vector products can be taken repeatedly."""

    def __init__(self, model, loss_fn, batches, params: dict, acts: dict):
        dev = next(model.parameters()).device
        self.params, self.act_names, self.items = params, list(acts), []
        n_total = sum(len(x) for x, _ in batches)
        for x, y in batches:
            x, y = x.to(dev), y.to(dev)
            out, seen = _forward_capture(model, x, acts)
            loss = loss_fn(out, y)
            missing = [n for n in acts if n not in seen]
            if missing:
                raise ValueError(f"activation modules {missing} did not run in the forward pass")
            tensors = list(params.values()) + [seen[n] for n in self.act_names]
            grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            self.items.append((tensors, [grads[i] for i in live], live, len(x) / n_total,
                               len(x)))

    @staticmethod
    def block_hvp(item, i: int, v: torch.Tensor) -> torch.Tensor | None:
        """H_ii v for tensor i of one batch: its own Hessian block, none of the cross terms
        (None where the loss is at most linear in it)."""
        tensors, grads, live, _, _ = item
        if i not in live:
            return None
        (h,) = torch.autograd.grad(grads[live.index(i)], [tensors[i]], grad_outputs=v,
                                   retain_graph=True, allow_unused=True)
        return h


def _rademacher(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    v = torch.randint(0, 2, t.shape, generator=gen, dtype=torch.int8)
    return (v.to(t.dtype) * 2 - 1).to(t.device)


def hessian_traces(model: nn.Module, loss_fn: Callable, batches, *, tol: float = 1e-3,
                   max_iter: int = 200, min_iter: int = 20, seed: int = 0,
                   activations: bool | Iterable[str] = True) -> Traces:
    """Average Hessian trace of every quantizable tensor by Hutchinson's method.

    Args:
        model: the float model (no quantized layers); it is evaluated in eval mode.
        loss_fn: loss_fn(model(x), y) -> scalar batch mean (e.g. `F.cross_entropy`).
        batches: (x, y) or an iterable of (x, y); their losses are averaged by batch size.
        tol: stop when every running mean moved by less than tol x |mean| in one iteration
            (after `min_iter` iterations; at most `max_iter`).
        activations: True for every activation module, False for none, or module names.
    """
    t0 = time.perf_counter()
    _check_float(model)
    batches = _as_batches(batches)
    params = quantizable_params(model)
    if activations is True or activations is False:
        acts = activation_modules(model) if activations else {}
    else:
        mods = dict(model.named_modules())
        unknown = [n for n in activations if n not in mods]
        if unknown:
            raise ValueError(f"activations: no modules named {unknown} in the model")
        acts = {n: mods[n] for n in activations}
    with _differentiable_eval(model, params):
        graphs = _Graphs(model, loss_fn, batches, params, acts)
        names = list(params) + list(acts)
        sums = np.zeros(len(names))
        prev, it, converged = None, 0, False
        gen = torch.Generator().manual_seed(seed)
        n_p = len(params)
        for it in range(1, max_iter + 1):
            est = np.zeros(len(names))
            for item in graphs.items:
                tensors, _, _, w, n_b = item
                for i, t in enumerate(tensors):
                    v = _rademacher(t, gen)
                    h = graphs.block_hvp(item, i, v)
                    if h is None:
                        continue
                    val = float((h * v).sum())
                    # parameters: trace of the size-weighted mean loss; activations: per
                    # sample and element (x batch size / numel), averaged over batches
                    est[i] += w * (val if i < n_p else val * n_b / max(t.numel(), 1))
            sums += est
            means = sums / it
            if prev is not None and it >= min_iter and np.all(
                    np.abs(means - prev) <= tol * np.abs(means)):
                converged = True
                break
            prev = means
    numel = [p.numel() for p in params.values()] + [1] * len(acts)
    means = sums / max(it, 1) / np.array(numel, float)
    vals = {n: float(v) for n, v in zip(names, means)}
    return Traces({n: vals[n] for n in params}, {n: vals[n] for n in acts}, it, converged,
                  time.perf_counter() - t0)


def top_eigenvalue(model: nn.Module, loss_fn: Callable, batches, names: Iterable[str] | None
                   = None, *, max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
                   ) -> dict[str, float]:
    """Largest-magnitude eigenvalue of each parameter's Hessian block, by power iteration
    (v <- H v / ||H v||, lambda = v^T H v; stops when lambda moves by < tol relative)."""
    _check_float(model)
    batches = _as_batches(batches)
    allp = dict(model.named_parameters())
    names = list(names) if names is not None else list(quantizable_params(model))
    unknown = [n for n in names if n not in allp]
    if unknown:
        raise ValueError(f"top_eigenvalue: no parameters named {unknown}")
    params = {n: allp[n] for n in names}
    out = {}
    gen = torch.Generator().manual_seed(seed)
    with _differentiable_eval(model, params):
        graphs = _Graphs(model, loss_fn, batches, params, {})
        for i, (name, p) in enumerate(params.items()):
            v = torch.randn(p.shape, generator=gen).to(p)
            v = v / v.norm()
            lam = 0.0
            for _ in range(max_iter):
                hv = torch.zeros_like(p)
                for item in graphs.items:
                    h = graphs.block_hvp(item, i, v)
                    if h is not None:
                        hv += item[3] * h
                new = float((hv * v).sum())
                v = hv / hv.norm().clamp_min(1e-30)
                done = abs(new - lam) <= tol * abs(new)
                lam = new
                if done:
                    break
            out[name] = lam
    return out


# -- sensitivities -----------------------------------------------------------------------------
def _trace_key(layer: str, fld: str) -> str:
    return {"kernel": f"{layer}.weight", "bias": f"{layer}.bias"}.get(fld, layer)


@torch.no_grad()
def _activation_io(model, batches, names) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """{module: [(input z, output act(z)) per batch]} on the float model (eval mode)."""
    mods = dict(model.named_modules())
    io: dict[str, list] = {n: [] for n in names}
    pending: dict[str, torch.Tensor] = {}
    hs = []
    for n in names:
        # the input is cloned before the layer runs: an in-place ReLU overwrites it
        hs.append(mods[n].register_forward_pre_hook(
            lambda m, i, n=n: pending.__setitem__(n, i[0].detach().clone())))
        hs.append(mods[n].register_forward_hook(
            lambda m, i, o, n=n: io[n].append((pending.pop(n), o.detach().clone()))))
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        for x, _ in batches:
            model(x.to(dev))
    finally:
        model.train(was_training)
        for h in hs:
            h.remove()
    return io


@torch.no_grad()
def sensitivities(space: SearchSpace, model: nn.Module, traces: Traces, batches,
                  ) -> dict[str, dict[str, float]]:
    """{parameter name: {choice: Omega}}, Omega summed over the parameter's layers/fields."""
    batches = _as_batches(batches)
    mods = dict(model.named_modules())
    act_layers = sorted({layer for p in space.params for layer, f in p.targets
                         if f not in ("kernel", "bias")})
    io = _activation_io(model, batches, act_layers) if act_layers else {}
    n_samples = sum(len(x) for x, _ in batches)
    err: dict[tuple[str, str, str], float] = {}

    def error(layer, fld, spec):
        key = (layer, fld, spec)
        if key not in err:
            q = get_quantizer(spec).eval()
            if fld in ("kernel", "bias"):
                t = mods[layer].weight if fld == "kernel" else mods[layer].bias
                err[key] = float(((q(t) - t) ** 2).sum())
            else:
                err[key] = sum(float(((q(z) - a) ** 2).sum()) for z, a in io[layer]) / n_samples
        return err[key]

    out = {}
    for p in space.params:
        out[p.name] = {}
        for c in p.choices:
            total = 0.0
            for layer, fld in p.targets:
                k = _trace_key(layer, fld)
                if k not in traces.params and k not in traces.activations:
                    raise ValueError(f"no Hessian trace for {k!r} (parameter {p.name!r}); "
                                     "compute traces with activations=True on the same model")
                total += max(traces[k], 0.0) * error(layer, fld, c)
            out[p.name][c] = total
    return out


# -- costs -------------------------------------------------------------------------------------
@dataclass
class CostTable:
    """cost(config) = const + sum_g unary[g][config[g]] + sum_k table_k[config restricted to
    groups_k]; `joint` is a list of (groups, {choices tuple: cost}). `max_error`: the largest
    relative difference from the cost model seen on the check configurations (None: unchecked).
    """

    unary: dict[str, dict[str, float]]
    joint: list[tuple[tuple[str, ...], dict[tuple[str, ...], float]]] = field(
        default_factory=list)
    const: float = 0.0
    goal: str = ""
    max_error: float | None = None

    def __call__(self, config: Mapping[str, str]) -> float:
        total = self.const + sum(self.unary[g][config[g]] for g in self.unary)
        for groups, table in self.joint:
            total += table[tuple(config[g] for g in groups)]
        return total

    def __repr__(self) -> str:
        sizes = [len(t) for _, t in self.joint]
        return (f"CostTable(goal={self.goal!r}, {len(self.unary)} groups, joint tables "
                f"{sizes}, const={self.const:.6g}, max_error={self.max_error})")


def _rows(report, goal: str) -> np.ndarray:
    if goal == "energy":
        return np.array([lc.total for lc in report.layers])
    if goal == "ebops":
        return np.array([float(lc.ebops) for lc in report.layers])
    if goal in ("lut", "dsp"):
        return np.array([float(lc.fpga.get(goal, 0.0)) for lc in report.layers])
    if goal == "bits":
        s = report.summary()
        return np.array([s["param_bits"], s["act_bits"]])
    raise ValueError(f"goal {goal!r}; expected one of {', '.join(GOALS)}")


class _Evaluator:
    """Cost rows of configurations: one built model whose quantizers are swapped in place
    (fast), and `fresh` for a model built from scratch by `build_candidate` (the check)."""

    def __init__(self, space, float_model, goal, input_shape, cost_kwargs):
        from ..cost import cost

        self.space, self.float_model, self.goal = space, float_model, goal
        self._cost = lambda m: cost(m, input_shape, **cost_kwargs)
        base = {p.name: p.choices[0] for p in space.params}
        self.model = build_candidate(float_model, space.candidate(base)).eval()
        self.mods = dict(self.model.named_modules())
        self.count = 0

    def rows(self, config: Mapping[str, str]) -> np.ndarray:
        for p in self.space.params:
            for layer, fld in p.targets:
                setattr(self.mods[layer], f"{fld}_quantizer",
                        get_quantizer(config[p.name]).eval())
        self.count += 1
        return _rows(self._cost(self.model), self.goal)

    def fresh(self, config: Mapping[str, str]) -> float:
        m = build_candidate(self.float_model, self.space.candidate(config)).eval()
        return float(_rows(self._cost(m), self.goal).sum())


def cost_table(space: SearchSpace, float_model: nn.Module, goal: str = "energy",
               input_shape=None, *, max_table: int = 1024, probes: int = 4, check: int = 3,
               seed: int = 0, **cost_kwargs) -> CostTable:
    """Tabulate the cost model over the space's quantizer parameters (see the module doc).

    A row depending on several groups gets a joint table unless the table would be large
    (> SMALL_TABLE entries) and the row is additive over its groups on `probes` random
    configurations, or it would have more than `max_table` entries; those rows are sums of
    one-group terms measured from the base configuration (first choices). `check` random
    configurations built from scratch measure the table's error (`max_error`; a warning when
    above 1e-9). Keyword arguments go to `hetq.cost.cost` (e.g. source_quantizer).
    """
    if goal not in GOALS:
        raise ValueError(f"goal {goal!r}; expected one of {', '.join(GOALS)}")
    ev = _Evaluator(space, float_model, goal, input_shape, cost_kwargs)
    groups = {p.name: p.choices for p in space.params}
    base = {g: ch[0] for g, ch in groups.items()}
    seen: list[tuple[dict, np.ndarray]] = []
    r0 = ev.rows(base)
    seen.append((base, r0))
    deps: list[set[str]] = [set() for _ in r0]
    single: dict[tuple[str, str], np.ndarray] = {}
    for g, choices in groups.items():
        single[(g, choices[0])] = r0
        for c in choices[1:]:
            cfg = {**base, g: c}
            r = ev.rows(cfg)
            seen.append((cfg, r))
            single[(g, c)] = r
            for i in np.flatnonzero(np.abs(r - r0) > 1e-9 * np.maximum(1.0, np.abs(r0))):
                deps[i].add(g)
    order = list(groups)
    rng = np.random.default_rng(seed)

    def additive(i, cfg):
        return r0[i] + sum(single[(g, cfg[g])][i] - r0[i] for g in deps[i])

    # large joint tables cost one evaluation per entry: rows that are sums of one-group terms
    # on random probes (model size in bits) do without
    multi = [i for i, d in enumerate(deps)
             if len(d) > 1 and math.prod(len(groups[g]) for g in d) > SMALL_TABLE]
    nonadditive: set[int] = set()
    for _ in range(probes if multi else 0):
        cfg = {g: ch[rng.integers(len(ch))] for g, ch in groups.items()}
        r = ev.rows(cfg)
        seen.append((cfg, r))
        nonadditive |= {i for i in multi
                        if abs(r[i] - additive(i, cfg)) > 1e-9 * max(1.0, abs(r[i]))}
    unary = {g: dict.fromkeys(ch, 0.0) for g, ch in groups.items()}
    const = 0.0
    joint_rows: dict[tuple[str, ...], list[int]] = {}
    for i, d in enumerate(deps):
        key = tuple(g for g in order if g in d)
        size = math.prod(len(groups[g]) for g in key)
        if len(key) == 0:
            const += r0[i]
        elif len(key) == 1 or (i in multi and i not in nonadditive) or size > max_table:
            # one group: exact; additive on the probes, or too many joint choices: linear
            const += r0[i]
            for g in key:
                for c in groups[g]:
                    unary[g][c] += single[(g, c)][i] - r0[i]
        else:
            joint_rows.setdefault(key, []).append(i)
    tables = {key: {} for key in joint_rows}

    def record(cfg, r):
        for key, idx in joint_rows.items():
            a = tuple(cfg[g] for g in key)
            if a not in tables[key]:
                tables[key][a] = float(r[idx].sum())

    for cfg, r in seen:
        record(cfg, r)
    # cover every joint choice of every multi-group row with as few configurations as we can:
    # rows on disjoint groups are filled in by the same configuration
    todo = {key: [a for a in itertools.product(*(groups[g] for g in key)) if a not in tables[key]]
            for key in joint_rows}
    while any(todo.values()):
        cfg: dict[str, str] = {}
        for key in sorted(todo, key=lambda k: -len(todo[k])):
            for j, a in enumerate(todo[key]):
                if all(cfg.get(g, c) == c for g, c in zip(key, a)):
                    cfg.update(zip(key, a))
                    todo[key].pop(j)
                    break
        cfg = {**base, **cfg}
        record(cfg, ev.rows(cfg))
        for key in todo:
            todo[key] = [a for a in todo[key] if a not in tables[key]]
    table = CostTable(unary, [(k, tables[k]) for k in joint_rows], float(const), goal)
    if check:
        errs = []
        for _ in range(check):
            cfg = {g: ch[rng.integers(len(ch))] for g, ch in groups.items()}
            true = ev.fresh(cfg)
            errs.append(abs(table(cfg) - true) / max(1.0, abs(true)))
        table.max_error = float(max(errs))
        if table.max_error > 1e-9:
            warnings.warn(f"cost table for goal {goal!r} differs from the cost model by up to "
                          f"{table.max_error:.2%} (rows linearised or a missed dependency); "
                          "the ILP optimises the table", stacklevel=2)
    return table


# -- ILP ---------------------------------------------------------------------------------------
class _Problem:
    """Variables: x[g, c] (binary, one-hot per group), then z[k, a] per joint table entry."""

    def __init__(self, omegas: Mapping[str, Mapping[str, float]], costs):
        from scipy.sparse import coo_array

        table = costs if isinstance(costs, CostTable) else CostTable(
            {g: dict(v) for g, v in costs.items()})
        self.groups = list(omegas)
        if not self.groups:
            raise ValueError("allocate: no groups to choose for")
        for g in self.groups:
            if g not in table.unary or set(table.unary[g]) != set(omegas[g]):
                raise ValueError(f"allocate: group {g!r} has choices {sorted(omegas[g])} in "
                                 f"omegas but {sorted(table.unary.get(g, {}))} in costs")
        stray = {g for key, _ in table.joint for g in key} - set(self.groups)
        if stray:
            raise ValueError(f"allocate: cost table groups {sorted(stray)} have no omegas")
        self.table = table
        self.x = [(g, c) for g in self.groups for c in omegas[g]]
        pos = {gc: j for j, gc in enumerate(self.x)}
        om, co = [omegas[g][c] for g, c in self.x], [table.unary[g][c] for g, c in self.x]
        rows, cols, vals, r = [], [], [], 0
        for g in self.groups:
            for c in omegas[g]:
                rows.append(r)
                cols.append(pos[(g, c)])
                vals.append(1.0)
            r += 1
        n = len(self.x)
        for key, entries in table.joint:
            marg = {}
            for g in key:
                for c in omegas[g]:
                    marg[(g, c)] = r
                    rows.append(r)
                    cols.append(pos[(g, c)])
                    vals.append(-1.0)
                    r += 1
            for a, v in entries.items():
                for g, c in zip(key, a):
                    rows.append(marg[(g, c)])
                    cols.append(n)
                    vals.append(1.0)
                om.append(0.0)
                co.append(v)
                n += 1
        self.n_one_hot = len(self.groups)
        self.A = coo_array((vals, (rows, cols)), shape=(r, n)).tocsr()
        self.omega, self.cost = np.array(om, float), np.array(co, float)
        self.integrality = np.r_[np.ones(len(self.x)), np.zeros(n - len(self.x))]

    def solve(self, objective: np.ndarray, bounds: list[tuple[np.ndarray, float]] = ()):
        """argmin objective . v subject to the structure and each (coef . v <= ub); None if
        infeasible."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        eq = np.r_[np.ones(self.n_one_hot), np.zeros(self.A.shape[0] - self.n_one_hot)]
        cons = [LinearConstraint(self.A, eq, eq)]
        for coef, ub in bounds:
            s = max(np.abs(coef).max(), 1e-300)
            cons.append(LinearConstraint(coef[None, :] / s, -np.inf, ub / s))
        s = max(np.abs(objective).max(), 1e-300)
        res = milp(objective / s, constraints=cons, integrality=self.integrality,
                   bounds=Bounds(0, 1), options={"mip_rel_gap": 1e-9})
        if res.x is None:
            return None
        chosen = np.round(res.x[:len(self.x)]).astype(bool)
        return {g: c for (g, c), on in zip(self.x, chosen) if on}

    def omega_of(self, choice) -> float:
        return float(sum(self.omega[self.x.index((g, c))] for g, c in choice.items()))

    def best(self, budget: float = math.inf) -> dict[str, str] | None:
        """Least Omega within budget; among equal Omega, the cheapest (a second solve)."""
        slack = 1e-9 * max(1.0, abs(budget)) if math.isfinite(budget) else 0.0
        cb = [(self.cost, budget - self.table.const + slack)] if math.isfinite(budget) else []
        first = self.solve(self.omega, cb)
        if first is None:
            return None
        om = self.omega_of(first)
        tie = self.solve(self.cost, cb + [(self.omega, om + 1e-9 * max(abs(om), 1e-300))])
        return tie or first

    def min_cost(self) -> float:
        return self.table(self.solve(self.cost))


def allocate(omegas: Mapping[str, Mapping[str, float]], costs, budget: float) -> dict[str, str]:
    """The choice per group minimising sum Omega subject to cost <= budget (an exact ILP).

    Args:
        omegas: {group: {choice: Omega}}.
        costs: {group: {choice: cost}} (additive) or a `CostTable` (from `cost_table`).
        budget: the cost limit (same units as costs).
    Raises ValueError naming the minimum achievable cost when no configuration fits.
    """
    prob = _Problem(omegas, costs)
    choice = prob.best(float(budget))
    if choice is None:
        raise ValueError(f"budget {budget:.6g} is infeasible: the minimum achievable cost is "
                         f"{prob.min_cost():.6g}")
    return choice


@dataclass
class Allocation:
    """One ILP configuration: {group: choice}, its total Omega and cost, the budget asked."""

    params: dict[str, str]
    omega: float
    cost: float
    budget: float


def sweep(omegas: Mapping[str, Mapping[str, float]], costs, n: int = 12,
          budgets: Iterable[float] | None = None) -> list[Allocation]:
    """Distinct ILP configurations over `n` budgets, log-spaced from the cheapest
    configuration's cost to the cost of the unconstrained optimum (or the given `budgets`;
    ones below the cheapest configuration are skipped); returned by increasing cost with
    strictly decreasing Omega (dominated ones dropped)."""
    prob = _Problem(omegas, costs)
    if budgets is None:
        lo = prob.min_cost()
        hi = prob.table(prob.best())
        budgets = np.geomspace(lo, hi, n) if lo > 0 and hi > lo else np.linspace(lo, hi, n)
    found = {}
    for b in budgets:
        choice = prob.best(float(b))
        if choice is None:
            continue
        key = tuple(sorted(choice.items()))
        if key not in found:
            found[key] = Allocation(choice, prob.omega_of(choice), prob.table(choice), float(b))
    front: list[Allocation] = []
    for a in sorted(found.values(), key=lambda a: (a.cost, a.omega)):
        if not front or a.omega < front[-1].omega:
            front.append(a)
    return front


# -- search prior ------------------------------------------------------------------------------
@dataclass
class HessianPrior:
    """The sweep's configurations for one space, with what they were computed from."""

    space: SearchSpace = field(repr=False)
    allocations: list[Allocation]
    traces: Traces = field(repr=False)
    omegas: dict[str, dict[str, float]] = field(repr=False)
    costs: CostTable = field(repr=False)
    seconds: dict[str, float]

    @property
    def params(self) -> list[dict[str, Any]]:
        """Optuna parameter dicts (quantizers, widths at the defaults the costs assumed), for
        `study.enqueue_trial(params)`."""
        return [prior_params(self.space, a.params) for a in self.allocations]

    def candidates(self) -> list[Candidate]:
        return [self.space.candidate(p) for p in self.params]

    def models(self, float_model: nn.Module) -> list[nn.Module]:
        return to_models(self.space, float_model, self.params)


def prior_params(space: SearchSpace, choice: Mapping[str, str]) -> dict[str, Any]:
    """A full Optuna parameter dict for an ILP choice: quantizer parameters as chosen, width
    parameters at the space's default (what the traces and costs were computed for); sparsity
    and learning rate are left for the sampler."""
    out = dict(choice)
    for n, (_, mults) in space.width_params.items():
        out[n] = 1.0 if 1.0 in mults else mults[0]
    return out


def to_models(space: SearchSpace, float_model: nn.Module, params_list) -> list[nn.Module]:
    """The hetq models (quantized copies of `float_model`) of Optuna parameter dicts."""
    return [build_candidate(float_model, space.candidate(p)) for p in params_list]


def _subset(data, samples: int, seed: int):
    if hasattr(data, "tensors"):
        x, y = data.tensors("train")
    elif isinstance(data, tuple) and len(data) == 2:
        x, y = data
    else:
        raise ValueError("data: expected a hetq Dataset or an (x, y) pair of tensors")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if samples and len(x) > samples:
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples]
        x, y = x[idx], y[idx]
    return x, y


def hessian_prior(space: SearchSpace, float_model: nn.Module, data, goal: str = "energy",
                  n: int = 12, *, loss_fn: Callable = F.cross_entropy, samples: int = 2048,
                  batch_size: int | None = None, input_shape=None, tol: float = 1e-3,
                  max_iter: int = 200, seed: int = 0, **cost_kwargs) -> HessianPrior:
    """Traces on `samples` training samples, sensitivities, the cost table and an ILP sweep.

    Args:
        space: the search space (built from `float_model`).
        float_model: the trained float model.
        data: a hetq Dataset (its train split) or an (x, y) pair of tensors.
        goal: "energy", "bits", "ebops", "lut" or "dsp".
        n: number of budgets in the sweep (distinct configurations may be fewer).
        loss_fn: loss_fn(model(x), y), a batch mean.
        batch_size: split the samples into batches (None: one batch).
        cost_kwargs: passed to `hetq.cost.cost` (e.g. source_quantizer="int8").
    """
    t0 = time.perf_counter()
    x, y = _subset(data, samples, seed)
    bs = batch_size or len(x)
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]
    traces = hessian_traces(float_model, loss_fn, batches, tol=tol, max_iter=max_iter,
                            seed=seed)
    t1 = time.perf_counter()
    omegas = sensitivities(space, float_model, traces, batches)
    t2 = time.perf_counter()
    if input_shape is None:
        input_shape = getattr(data, "input_shape", None) or tuple(x.shape[1:])
    costs = cost_table(space, float_model, goal, input_shape, seed=seed, **cost_kwargs)
    t3 = time.perf_counter()
    allocs = sweep(omegas, costs, n)
    t4 = time.perf_counter()
    return HessianPrior(space, allocs, traces, omegas, costs,
                        {"traces": t1 - t0, "sensitivities": t2 - t1, "costs": t3 - t2,
                         "ilp": t4 - t3})
