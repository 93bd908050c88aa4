"""Hessian-aware bit allocation (HAWQ-V2/V3 style): a whole front of configurations in seconds.

1. `hessian_traces`: the average Hessian trace (trace / numel) of the loss with respect to each
   weight tensor and each activation (ReLU output), by Hutchinson's method: Rademacher vectors
   v, Hessian-vector products by double back-propagation, E[v^T H v] = tr(H); iterations stop
   when the running mean of every tensor moves by less than `tol` (relative). No Hessian is
   materialised. `top_eigenvalue` gives the largest eigenvalue by power iteration.
2. Sensitivity of each candidate quantizer: Omega = mean trace x ||Q(W) - W||^2 (weights) and
   mean trace x sum over the batch of ||Q(a) - a||^2 (activations, a = the ReLU output,
   Q the activation quantizer applied to the ReLU input) — the second-order loss increase.
3. `allocate`: one candidate per search parameter minimising sum Omega subject to a cost
   budget, an integer linear program (`scipy.optimize.milp`). Costs (energy, bits, EBOPs) are
   the cost model's marginal cost of each choice against a base configuration: exact for bits,
   a linearisation for energy/EBOPs (a product of weight and input widths); `sweep` reports
   each configuration's true cost from the cost model.
4. `sweep` over log-spaced budgets gives distinct configurations from cheapest to richest;
   `hessian_prior` returns them as Optuna parameter dicts (`study.enqueue_trial`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..quant import get_quantizer
from .space import Candidate, SearchSpace


# -- Hutchinson traces -----------------------------------------------------------------------
def _loss_and_acts(model, x, y, act_modules):
    acts = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, o))
             for n, m in act_modules.items()]
    try:
        loss = F.cross_entropy(model(x), y)
    finally:
        for h in hooks:
            h.remove()
    return loss, acts


def hessian_traces(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, tol: float = 1e-2,
                   max_iter: int = 200, min_iter: int = 10, seed: int = 0,
                   activations: bool = True) -> dict[str, float]:
    """{"<layer>.weight": mean trace, ..., "<relu>": mean trace per activation element}."""
    model = model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    act_modules = {n: m for n, m in model.named_modules() if isinstance(m, nn.ReLU)} \
        if activations else {}
    gen = torch.Generator().manual_seed(seed)
    sums = {k: 0.0 for k in list(params) + list(act_modules)}
    means_prev = None
    loss, acts = _loss_and_acts(model, x, y, act_modules)
    names = list(params) + list(acts)
    tensors = list(params.values()) + [acts[n] for n in acts]
    grads = torch.autograd.grad(loss, tensors, create_graph=True)
    it = 0
    for it in range(1, max_iter + 1):
        vs = [torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1 for t in tensors]
        hv = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=True)
        for n, h, v in zip(names, hv, vs):
            sums[n] += float((h * v).sum())
        means = {n: sums[n] / it for n in names}
        if means_prev is not None and it >= min_iter:
            rel = max(abs(means[n] - means_prev[n]) / (abs(means[n]) + 1e-12) for n in names)
            if rel < tol:
                break
        means_prev = means
    out = {}
    for n, t in zip(names, tensors):
        out[n] = sums[n] / it / t.numel()
    out["_iterations"] = it
    return out


def top_eigenvalue(model: nn.Module, x, y, param: str, iters: int = 50, tol: float = 1e-4,
                   seed: int = 0) -> float:
    """Largest Hessian eigenvalue for one parameter tensor, by power iteration."""
    p = dict(model.named_parameters())[param]
    loss = F.cross_entropy(model(x), y)
    (g,) = torch.autograd.grad(loss, [p], create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(p.shape, generator=gen)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        (hv,) = torch.autograd.grad(g, [p], grad_outputs=v, retain_graph=True)
        new = float((hv * v).sum())
        v = hv / (hv.norm() + 1e-30)
        if abs(new - lam) <= tol * max(abs(new), 1e-12):
            return new
        lam = new
    return lam


# -- sensitivities and costs -----------------------------------------------------------------
@torch.no_grad()
def _perturbation(model, x, layer: str, fld: str, spec: str, relu_inputs) -> float:
    q = get_quantizer(spec).eval()
    mods = dict(model.named_modules())
    if fld in ("kernel", "bias"):
        t = mods[layer].weight if fld == "kernel" else mods[layer].bias
        if t is None:
            return 0.0
        return float(((q(t) - t) ** 2).sum())
    a_in = relu_inputs[layer]
    return float(((q(a_in) - F.relu(a_in)) ** 2).sum())


def sensitivities(space: SearchSpace, model: nn.Module, traces: dict, x: torch.Tensor,
                  ) -> dict[str, dict[str, float]]:
    """{param name: {choice: Omega}} summed over the parameter's target layers/fields."""
    relus = {n: m for n, m in model.named_modules() if isinstance(m, nn.ReLU)}
    relu_inputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: relu_inputs.__setitem__(n, i[0]))
             for n, m in relus.items()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for p in space.params:
        out[p.name] = {}
        for c in p.choices:
            total = 0.0
            for layer, fld in p.targets:
                key = {"kernel": f"{layer}.weight", "bias": f"{layer}.bias"}.get(fld, layer)
                tr = traces.get(key)
                if tr is None:
                    continue
                # activation perturbations are summed over the batch while the loss is a
                # batch mean: the trace per element already carries the 1/batch factor
                total += tr * _perturbation(model, x, layer, fld, c, relu_inputs)
            out[p.name][c] = max(total, 0.0)
    return out


COST_KEY = {"energy": "energy_pj", "bits": "bits", "ebops": "ebops", "lut": "lut"}


def _config_cost(space, float_model, params, input_shape, goal) -> float:
    from ..cost import cost
    from .build import build_candidate

    m = build_candidate(float_model, space.candidate(params))
    return float(cost(m, input_shape).summary()[COST_KEY[goal]])


def marginal_costs(space: SearchSpace, float_model, input_shape, goal: str = "energy",
                   base: dict | None = None) -> tuple[float, dict[str, dict[str, float]]]:
    """(cost of `base`, {param: {choice: cost(base with param=choice) - cost(base)}})."""
    if goal not in COST_KEY:
        raise ValueError(f"goal {goal!r}; expected one of {', '.join(COST_KEY)}")
    base = dict(base or {p.name: p.choices[len(p.choices) // 2] for p in space.params})
    c0 = _config_cost(space, float_model, base, input_shape, goal)
    out = {}
    for p in space.params:
        out[p.name] = {}
        for c in p.choices:
            if c == base[p.name]:
                out[p.name][c] = 0.0
            else:
                out[p.name][c] = _config_cost(space, float_model, {**base, p.name: c},
                                              input_shape, goal) - c0
    return c0, out


# -- ILP ---------------------------------------------------------------------------------------
def allocate(omegas: dict[str, dict[str, float]], costs: dict[str, dict[str, float]],
             budget: float) -> dict[str, str]:
    """Choice per group minimising sum(Omega) with sum(cost) <= budget (an exact ILP)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    groups = list(omegas)
    if not groups:
        raise ValueError("allocate: no groups")
    idx = [(g, c) for g in groups for c in omegas[g]]
    n = len(idx)
    om = np.array([omegas[g][c] for g, c in idx], dtype=float)
    co = np.array([costs[g][c] for g, c in idx], dtype=float)
    least = sum(min(costs[g].values()) for g in groups)
    if budget < least - 1e-9:
        raise ValueError(f"budget {budget:.6g} is below the cheapest configuration's cost "
                         f"{least:.6g}")
    one_hot = np.zeros((len(groups), n))
    for j, (g, _) in enumerate(idx):
        one_hot[groups.index(g), j] = 1
    cons = [LinearConstraint(one_hot, 1, 1), LinearConstraint(co[None, :], -np.inf, budget)]
    scale = max(om.max(), 1e-30)
    res = milp(om / scale, constraints=cons, integrality=np.ones(n), bounds=Bounds(0, 1))
    if not res.success:
        raise ValueError(f"ILP failed: {res.message}")
    x = np.round(res.x).astype(int)
    return {g: c for (g, c), v in zip(idx, x) if v == 1}


@dataclass
class Allocation:
    params: dict[str, str]
    budget: float
    omega: float
    cost: float  # the cost model's cost of the configuration (not the linearisation)


def sweep(space, float_model, omegas, costs, base_cost, input_shape, goal="energy", n=12,
          ) -> list[Allocation]:
    """Distinct ILP configurations over n log-spaced budgets, cheapest first."""
    lo = sum(min(c.values()) for c in costs.values())
    hi = sum(max(c.values()) for c in costs.values())
    # budgets are relative to the base configuration; map to absolute for the log spacing
    alo, ahi = base_cost + lo, base_cost + hi
    if alo <= 0:
        budgets = np.linspace(lo, hi, n)
    else:
        budgets = np.geomspace(alo, ahi, n) - base_cost
    seen, out = set(), []
    for b in budgets:
        choice = allocate(omegas, costs, float(b) + 1e-9)
        key = tuple(sorted(choice.items()))
        if key in seen:
            continue
        seen.add(key)
        om = sum(omegas[g][c] for g, c in choice.items())
        true = _config_cost(space, float_model, choice, input_shape, goal)
        out.append(Allocation(choice, float(b) + base_cost, om, true))
    return out


@dataclass
class HessianPrior:
    allocations: list[Allocation]
    traces: dict
    seconds: dict  # phase -> wall seconds


def hessian_prior(space: SearchSpace, float_model: nn.Module, data, goal: str = "energy",
                  n: int = 12, samples: int = 2048, tol: float = 1e-2, seed: int = 0,
                  input_shape=None) -> HessianPrior:
    """Traces on `samples` training jets, sensitivities, marginal costs and an ILP sweep."""
    t0 = time.time()
    x, y = data.tensors("train")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[:samples]
    x, y = x[idx], y[idx]
    tr = hessian_traces(float_model, x, y, tol=tol, seed=seed)
    t1 = time.time()
    om = sensitivities(space, float_model, tr, x)
    t2 = time.time()
    shape = input_shape or tuple(x.shape[1:])
    c0, co = marginal_costs(space, float_model, shape, goal)
    t3 = time.time()
    allocs = sweep(space, float_model, om, co, c0, shape, goal, n)
    t4 = time.time()
    return HessianPrior(allocs, tr, {"traces": t1 - t0, "sensitivities": t2 - t1,
                                     "costs": t3 - t2, "ilp": t4 - t3})


def candidates_of(space: SearchSpace, prior: HessianPrior) -> list[Candidate]:
    return [space.candidate(a.params) for a in prior.allocations]


def _isfinite(v) -> bool:
    return isinstance(v, float) and math.isfinite(v)
