"""Hessian-aware allocation: Hutchinson traces vs the exact Hessian, the ILP, the sweep."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hetq.data import get_dataset
from hetq.models import build
from hetq.search.hawq import (
    allocate,
    hessian_prior,
    hessian_traces,
    marginal_costs,
    sensitivities,
    top_eigenvalue,
)
from hetq.search.space import SearchSpace
from hetq.train import fit


def _tiny():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(64, 4)
    y = torch.randint(0, 3, (64,))
    return m, x, y


def _exact_trace(m, x, y, name):
    p = dict(m.named_parameters())[name]

    def f(w):
        return F.cross_entropy(torch.func.functional_call(m, {name: w}, (x,)), y)
    h = torch.autograd.functional.hessian(f, p.detach())
    return float(h.reshape(p.numel(), p.numel()).diagonal().sum()) / p.numel()


def test_hutchinson_matches_exact_trace_within_5_percent():
    m, x, y = _tiny()
    tr = hessian_traces(m, x, y, tol=1e-4, max_iter=3000, min_iter=500, activations=False)
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        exact = _exact_trace(m, x, y, name)
        assert tr[name] == pytest.approx(exact, rel=0.05), name


def test_top_eigenvalue_matches_exact():
    m, x, y = _tiny()
    p = dict(m.named_parameters())["2.weight"]

    def f(w):
        return F.cross_entropy(torch.func.functional_call(m, {"2.weight": w}, (x,)), y)
    h = torch.autograd.functional.hessian(f, p.detach()).reshape(p.numel(), p.numel())
    exact = float(torch.linalg.eigvalsh(h).max())
    assert top_eigenvalue(m, x, y, "2.weight", iters=500, tol=1e-7) == pytest.approx(exact,
                                                                                   rel=1e-3)


def test_ilp_hand_checkable_instance():
    omegas = {"a": {"a4": 1.0, "a8": 0.1}, "b": {"b2": 5.0, "b4": 2.0, "b8": 0.5},
              "c": {"c1": 3.0, "c8": 0.0}}
    costs = {"a": {"a4": 4, "a8": 8}, "b": {"b2": 2, "b4": 4, "b8": 8},
             "c": {"c1": 1, "c8": 8}}

    def brute(budget):
        best = None
        for combo in itertools.product(*[list(omegas[g]) for g in omegas]):
            cost = sum(costs[g][c] for g, c in zip(omegas, combo))
            om = sum(omegas[g][c] for g, c in zip(omegas, combo))
            if cost <= budget and (best is None or om < best[0]):
                best = (om, dict(zip(omegas, combo)))
        return best[1]

    for budget in (7, 10, 13, 16, 17, 20, 24):
        assert allocate(omegas, costs, budget) == brute(budget), budget
    # by hand: budget 13 -> a4 + b8 + c1 (4 + 8 + 1, Omega 4.5) beats a8 + b4 + c1 (5.1)
    assert allocate(omegas, costs, 13) == {"a": "a4", "b": "b8", "c": "c1"}
    with pytest.raises(ValueError, match="below the cheapest configuration's cost 7"):
        allocate(omegas, costs, 6)


def test_prior_on_jet_mlp():
    data = get_dataset("jets-sim")
    torch.manual_seed(0)
    f = build("jet_mlp")
    fit(f, data, epochs=2, progress=False)
    space = SearchSpace(f)
    pr = hessian_prior(space, f, data, goal="bits", n=6, samples=512, tol=5e-2)
    assert pr.traces["_iterations"] >= 10
    assert len(pr.allocations) >= 3
    # bits are additive: the ILP cost equals the cost model's; budgets give nondecreasing cost
    # and nonincreasing total Omega along the sweep
    costs = [a.cost for a in pr.allocations]
    omegas = [a.omega for a in pr.allocations]
    assert costs == sorted(costs)
    assert all(o1 >= o2 - 1e-12 for o1, o2 in zip(omegas, omegas[1:]))
    for a in pr.allocations:
        assert a.cost <= a.budget + 1e-6
        cand = space.candidate(a.params)  # params accepted by the space (enqueue-able)
        assert set(a.params) == {p.name for p in space.params}
        assert cand.quant_config["fc1"]["kernel"] == a.params["fc1/kernel"]


def test_sensitivity_grows_with_fewer_bits():
    data = get_dataset("jets-sim")
    torch.manual_seed(0)
    f = build("jet_mlp")
    fit(f, data, epochs=1, progress=False)
    x, y = data.tensors("train")
    x, y = x[:256], y[:256]
    space = SearchSpace(f)
    tr = hessian_traces(f, x, y, tol=5e-2)
    om = sensitivities(space, f, tr, x)
    k = om["fc2/kernel"]
    assert k["binary(alpha='auto_po2')"] > k["quantized_bits(4,0,1,alpha=1.0)"] > \
        k["quantized_bits(8,0,1,alpha=1.0)"] > 0
    base, mc = marginal_costs(space, f, (16,), "bits")
    assert base > 0 and mc["fc2/kernel"]["quantized_bits(8,0,1,alpha=1.0)"] - \
        mc["fc2/kernel"]["quantized_bits(4,0,1,alpha=1.0)"] == 4 * 64 * 32
