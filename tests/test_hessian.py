"""Hessian-aware allocation: Hutchinson traces vs the exact Hessian, sensitivities, the exact
cost table, the ILP against brute force, the budget sweep and the Optuna prior."""

import copy
import itertools

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hetq.cost import cost
from hetq.models import build
from hetq.quant import get_quantizer
from hetq.quant.convert import quantize_model
from hetq.search.build import build_candidate
from hetq.search.hessian import (
    CostTable,
    allocate,
    cost_table,
    hessian_prior,
    hessian_traces,
    sensitivities,
    sweep,
    top_eigenvalue,
)
from hetq.search.space import SearchSpace


def _tiny():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(64, 4)
    y = torch.randint(0, 3, (64,))
    return m, x, y


def _exact_param_trace(m, x, y, name):
    p = dict(m.named_parameters())[name]

    def f(w):
        return F.cross_entropy(torch.func.functional_call(m, {name: w}, (x,)), y)
    h = torch.autograd.functional.hessian(f, p.detach())
    return float(h.reshape(p.numel(), p.numel()).diagonal().sum()) / p.numel()


def _exact_activation_trace(m, x, y):
    """Per sample and element: tr(H w.r.t. the ReLU output of the batch-mean loss) / numel x N."""
    a = torch.relu(m[0](x)).detach()
    h = torch.autograd.functional.hessian(lambda a: F.cross_entropy(m[2](a), y), a)
    return float(h.reshape(a.numel(), a.numel()).diagonal().sum()) / a.numel() * len(x)


def test_hutchinson_matches_exact_trace_within_5_percent():
    m, x, y = _tiny()
    tr = hessian_traces(m, F.cross_entropy, (x, y), tol=1e-6, max_iter=1500, seed=0)
    assert tr.iterations == 1500 and not tr.converged
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert tr.params[name] == pytest.approx(_exact_param_trace(m, x, y, name), rel=0.05)
    assert tr.activations["1"] == pytest.approx(_exact_activation_trace(m, x, y), rel=0.05)
    # two half batches estimate the same traces (losses averaged by batch size)
    halves = [(x[:32], y[:32]), (x[32:], y[32:])]
    tr2 = hessian_traces(m, F.cross_entropy, halves, tol=1e-6, max_iter=1000, seed=1,
                         activations=False)
    for name in tr.params:
        assert tr2.params[name] == pytest.approx(_exact_param_trace(m, x, y, name), rel=0.05)
    assert m.training  # mode restored
    # (max_iter=0 gave every trace 0.0; a negative tolerance was taken)
    # (and tol='0.1' was a TypeError, max_iter=True one iteration)
    for kw, msg in (({"max_iter": 0}, r"max_iter=0; expected a whole number >= 1"),
                    ({"tol": -1.0}, r"tol=-1.0; expected a relative tolerance >= 0"),
                    ({"tol": "0.1"}, r"tol='0.1'; expected a relative tolerance >= 0"),
                    ({"max_iter": True}, r"max_iter=True; expected a whole number >= 1")):
        with pytest.raises(ValueError, match=msg):
            hessian_traces(m, F.cross_entropy, (x, y), **kw)


def test_traces_stop_at_tolerance_and_reject_quantized_models():
    m, x, y = _tiny()
    m[0].bias.requires_grad_(False)  # frozen tensors are traced too, and left frozen
    tr = hessian_traces(m, F.cross_entropy, (x, y), tol=0.05, min_iter=5, max_iter=500)
    assert tr.converged and 5 <= tr.iterations < 500
    assert tr.params["0.bias"] > 0 and not m[0].bias.requires_grad and m[0].weight.requires_grad
    with pytest.raises(ValueError, match="no modules named"):
        hessian_traces(m, F.cross_entropy, (x, y), activations=["relu9"])
    q = quantize_model(m, {"0": {"kernel": "quantized_bits(4,0,1)"}})
    with pytest.raises(ValueError, match="float model; layer '0' is quantized"):
        hessian_traces(q, F.cross_entropy, (x, y))


def test_the_tolerance_bounds_each_traces_standard_error():
    """tol is the relative standard error every estimate reaches before the iterations
    stop: the defaults (5%, at most 200) converge on a small model, and the number of
    iterations grows as 1/tol**2. (It was HAWQ's "the running mean moved by < tol"; at the
    default 1e-3 that never stopped before max_iter, here nor on the jet MLP.)"""
    m, x, y = _tiny()
    loose = hessian_traces(m, F.cross_entropy, (x, y))
    assert loose.converged and 20 <= loose.iterations < 200
    tight = hessian_traces(m, F.cross_entropy, (x, y), tol=0.02, max_iter=5000)
    assert tight.converged and 3 < tight.iterations / loose.iterations < 15
    for name in tight.params:  # within 4 standard errors
        assert tight.params[name] == pytest.approx(_exact_param_trace(m, x, y, name), rel=0.08)


def test_top_eigenvalue_matches_exact():
    m, x, y = _tiny()
    p = dict(m.named_parameters())["2.weight"]

    def f(w):
        return F.cross_entropy(torch.func.functional_call(m, {"2.weight": w}, (x,)), y)
    h = torch.autograd.functional.hessian(f, p.detach()).reshape(p.numel(), p.numel())
    ev = torch.linalg.eigvalsh(h)
    exact = float(ev[ev.abs().argmax()])
    lam = top_eigenvalue(m, F.cross_entropy, (x, y), ["2.weight"], max_iter=500, tol=1e-8)
    assert lam["2.weight"] == pytest.approx(exact, rel=1e-3)


def test_sensitivity_is_trace_times_quantization_error():
    m, x, y = _tiny()
    space = SearchSpace(m, limit={"0": [["quantized_bits(2,0,1)", "quantized_bits(6,0,1)"],
                                        ["quantized_bits(8,3,1)"]],
                                  "1": [["quantized_relu(3,1)", "quantized_relu(8,2)"]]})
    tr = hessian_traces(m, F.cross_entropy, (x, y), max_iter=50)
    om = sensitivities(space, m, tr, (x, y))
    assert set(om) == {"0/kernel", "1/activation"}
    w = m[0].weight.detach()
    for spec in ("quantized_bits(2,0,1)", "quantized_bits(6,0,1)"):
        err = float(((get_quantizer(spec)(w) - w) ** 2).sum())
        assert om["0/kernel"][spec] == pytest.approx(tr.params["0.weight"] * err, rel=1e-6)
    z = m[0](x).detach()
    for spec in ("quantized_relu(3,1)", "quantized_relu(8,2)"):
        err = float(((get_quantizer(spec)(z) - torch.relu(z)) ** 2).sum()) / len(x)
        assert om["1/activation"][spec] == pytest.approx(tr.activations["1"] * err, rel=1e-6)
    # fewer bits, larger sensitivity
    assert om["0/kernel"]["quantized_bits(2,0,1)"] > 10 * om["0/kernel"]["quantized_bits(6,0,1)"]


# hand-checkable instance: 3 groups, costs in bits
OMEGAS = {"a": {"a4": 1.0, "a8": 0.1}, "b": {"b2": 5.0, "b4": 2.0, "b8": 0.5},
          "c": {"c1": 3.0, "c8": 0.0}}
COSTS = {"a": {"a4": 4, "a8": 8}, "b": {"b2": 2, "b4": 4, "b8": 8}, "c": {"c1": 1, "c8": 8}}


def _brute(omegas, cost_of, budget):
    best = None
    for combo in itertools.product(*[list(omegas[g]) for g in omegas]):
        cfg = dict(zip(omegas, combo))
        om = sum(omegas[g][c] for g, c in cfg.items())
        if cost_of(cfg) <= budget and (best is None or om < best[0] - 1e-12):
            best = (om, cfg)
    return best[1]


def test_ilp_hand_checkable_instance():
    # budget 13: a4 + b8 + c1 (cost 4 + 8 + 1, Omega 1 + 0.5 + 3 = 4.5) beats a8 + b4 + c1
    # (13, Omega 5.1) and a4 + b4 + c1 (9, Omega 6.0); c8 costs 7 more than c1 and needs 20
    assert allocate(OMEGAS, COSTS, 13) == {"a": "a4", "b": "b8", "c": "c1"}
    assert allocate(OMEGAS, COSTS, 7) == {"a": "a4", "b": "b2", "c": "c1"}
    assert allocate(OMEGAS, COSTS, 24) == {"a": "a8", "b": "b8", "c": "c8"}
    additive = CostTable(COSTS)
    for budget in range(7, 26):
        assert allocate(OMEGAS, COSTS, budget) == _brute(OMEGAS, additive, budget), budget


def test_ilp_with_omegas_over_many_orders_of_magnitude_and_bad_inputs():
    """The tie-breaking second solve capped Omega within 1e-9 of the optimum, but the
    solver's tolerance is absolute: with Omegas from 1e3 to 1e-6 it let a cheaper, worse
    choice through (Omega 1.5e-4 at cost 6 instead of 1.11e-4 at 8). NaN or -inf budgets
    returned the unconstrained optimum; bad tables gave numpy/scipy errors, or dropped a
    group's cost."""
    import math

    om = {"a": {"2": 1e3, "8": 1e-4}, "b": {"4": 2e-5, "8": 1e-5}, "c": {"4": 3e-5, "8": 1e-6}}
    co = {"a": {"2": 1, "8": 4}, "b": {"4": 1, "8": 2}, "c": {"4": 1, "8": 2}}
    table = CostTable(co)
    for budget in (100, 8, 7, 6, 5):
        assert allocate(om, co, budget) == _brute(om, table, budget), budget
    assert allocate(om, co, math.inf) == {"a": "8", "b": "8", "c": "8"}
    for args, msg in (((om, co, float("nan")), "budget is NaN"),
                      ((om, co, -math.inf), "budget -inf is infeasible: the minimum "
                                            "achievable cost is 3"),
                      (({"a": {}}, {"a": {}}, 10), "group 'a' has no choices"),
                      (({"a": {"2": 1}}, {"a": {"2": 1}, "b": {"2": 100}}, 10),
                       r"cost groups \['b'\] have no omegas"),
                      (({"a": {"2": float("nan")}}, {"a": {"2": 1}}, 10),
                       r"group 'a' has an Omega that is not a finite number: \{'2': nan\}")):
        with pytest.raises(ValueError, match=msg):
            allocate(*args)


def test_ilp_with_joint_cost_table_matches_brute_force():
    # a product term (multiplier width = a bits x b bits) as the cost model has for a layer
    bits = {"a4": 4, "a8": 8, "b2": 2, "b4": 4, "b8": 8}
    table = CostTable({"a": {"a4": 0.0, "a8": 0.0}, "b": {"b2": 0.0, "b4": 0.0, "b8": 0.0},
                      "c": {"c1": 1.0, "c8": 8.0}},
                      [(("a", "b"), {(ca, cb): float(bits[ca] * bits[cb])
                                     for ca in ("a4", "a8") for cb in ("b2", "b4", "b8")})])
    assert table({"a": "a8", "b": "b4", "c": "c1"}) == 33.0
    for budget in (9, 17, 20, 33, 40, 41, 48, 65, 72):
        assert allocate(OMEGAS, table, budget) == _brute(OMEGAS, table, budget), budget


def test_infeasible_budget_names_the_minimum_cost():
    with pytest.raises(ValueError, match="minimum achievable cost is 7"):
        allocate(OMEGAS, COSTS, 6.5)
    with pytest.raises(ValueError, match="choices"):
        allocate(OMEGAS, {"a": COSTS["a"], "b": COSTS["b"]}, 10)


def test_sweep_is_a_front():
    rng = np.random.default_rng(0)
    omegas = {f"g{i}": {f"c{j}": float(rng.random()) for j in range(4)} for i in range(6)}
    costs = {g: {c: float(rng.integers(1, 20)) for c in ch} for g, ch in omegas.items()}
    front = sweep(omegas, costs, n=15)
    assert len(front) >= 3
    c = [a.cost for a in front]
    o = [a.omega for a in front]
    assert c == sorted(c) and all(o1 > o2 for o1, o2 in zip(o, o[1:]))
    assert c[0] == sum(min(v.values()) for v in costs.values())  # the cheapest configuration
    assert o[-1] == pytest.approx(sum(min(v.values()) for v in omegas.values()))
    for a in front:
        assert a.cost <= a.budget + 1e-9
        assert a.omega == pytest.approx(sum(omegas[g][ch] for g, ch in a.params.items()))


def test_cost_table_is_exact_on_the_jet_mlp():
    f = build("jet_mlp")
    space = SearchSpace(f)
    rng = np.random.default_rng(1)
    configs = [{p.name: p.choices[rng.integers(len(p.choices))] for p in space.params}
               for _ in range(4)]
    for goal, key in (("ebops", "ebops"), ("bits", "bits"), ("energy", "energy_pj")):
        table = cost_table(space, f, goal, (16,), check=0)
        for cfg in configs:
            # eval mode: stochastic quantizers are deterministic (nonzero weight counts)
            model = build_candidate(f, space.candidate(cfg)).eval()
            true = cost(model, (16,)).summary()[key]
            # energy_pj is truncated to whole pJ by the report
            assert table(cfg) == pytest.approx(true, abs=1.0 if goal == "energy" else 1e-6)
    # EBOPs of a weight layer depend on its kernel and its input's activation jointly
    assert ("relu1/activation", "fc2/kernel") in [k for k, _ in table.joint] or \
        ("relu1/activation", "fc2/kernel", "fc2/bias") in [k for k, _ in table.joint]


def test_cost_table_finds_a_dependency_hidden_at_the_first_choices():
    """A first kernel choice that rounds every weight to zero made that layer's EBOPs 0
    whatever its input's activation: the table took the activations as free (a configuration
    budgeted at 102 EBOPs cost 272), and the ILP picked the widest ones."""
    torch.manual_seed(0)
    f = build("jet_mlp", widths=[8, 4])
    qc = {"kernel": {"quantized_bits(2,1,1,alpha=1.0)": 2, "quantized_bits(4,0,1,alpha=1.0)": 4},
          "bias": {"quantized_bits(8,3,1)": 8},
          "activation": {"quantized_relu(3,1)": 3, "quantized_relu(8,2)": 8}}
    space = SearchSpace(f, qc)
    first = build_candidate(f, space.candidate({p.name: p.choices[0] for p in space.params}))
    assert cost(first.eval(), (16,)).summary()["ebops"] == 0  # (the hiding place)
    table = cost_table(space, f, "ebops", (16,), check=0)
    rng = np.random.default_rng(0)
    for _ in range(6):
        cfg = {p.name: p.choices[rng.integers(len(p.choices))] for p in space.params}
        model = build_candidate(f, space.candidate(cfg)).eval()
        assert table(cfg) == cost(model, (16,)).summary()["ebops"]


def test_hessian_prior_gives_params_the_space_and_optuna_accept():
    from hetq.data import get_dataset

    data = get_dataset("jets-sim")
    torch.manual_seed(0)
    f = build("jet_mlp")
    space = SearchSpace(f)
    pr = hessian_prior(space, f, data, goal="ebops", n=6, samples=256, max_iter=30)
    assert set(pr.seconds) == {"traces", "sensitivities", "costs", "ilp"}
    assert pr.costs.max_error == 0.0
    assert len(pr.allocations) >= 2
    costs = [a.cost for a in pr.allocations]
    omegas = [a.omega for a in pr.allocations]
    assert costs == sorted(costs) and omegas == sorted(omegas, reverse=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for params in pr.params:
        assert set(params) == {p.name for p in space.params}
        study.enqueue_trial(params)
    for params, model, a in zip(pr.params, pr.models(f), pr.allocations):
        trial = study.ask(space.distributions())
        assert trial.params == params
        cand = space.suggest(trial)
        assert cand.quant_config["fc2"]["kernel"] == params["fc2/kernel"]
        # the models are ordinary hetq models costing what the ILP said
        assert cost(model.eval(), (16,)).summary()["ebops"] == a.cost


def test_a_configuration_that_costs_nothing_is_not_swept():
    """With EBOPs or LUTs the cheapest configuration could be a dead network (every weight
    rounded to zero): its trial failed, and a sampled one took its place."""
    omegas = {"g0": {"zero": 10.0, "a": 1.0, "a2": 0.5},
              "g1": {"zero": 10.0, "b": 1.0, "b2": 0.25}}
    costs = {"g0": {"zero": 0.0, "a": 3.0, "a2": 6.0}, "g1": {"zero": 0.0, "b": 4.0, "b2": 8.0}}
    front = sweep(omegas, costs, n=20)
    assert [a.cost for a in front][:1] != [0.0] and all(a.cost > 0 for a in front)
    assert front[-1].params == {"g0": "a2", "g1": "b2"}


def test_the_sweep_starts_from_the_cheapest_configuration_that_computes_something():
    """With EBOPs or LUTs the cheapest configuration costs 0 (a dead network), and the sweep
    fell back to linear budgets from 0: its first budget gave nothing, and the cheap end of
    the front was never reached (a 116k-EBOPs first configuration where TPE found 49k).
    --prior-configs 1 gave no configuration at all. Budgets are now log-spaced from the
    cheapest live configuration; n=1 is the unconstrained optimum; DSP costs of 0 are
    ordinary; max_cost caps the budgets; NaN budgets and a bad n are refused."""
    omegas = {"g0": {"zero": 10.0, "a": 1.0, "a2": 0.5, "a3": 0.2},
              "g1": {"zero": 10.0, "b": 1.0, "b2": 0.25, "b3": 0.1}}
    costs = {"g0": {"zero": 0.0, "a": 1.0, "a2": 10.0, "a3": 100.0},
             "g1": {"zero": 0.0, "b": 1.0, "b2": 10.0, "b3": 100.0}}
    front = sweep(omegas, costs, n=5)
    # budgets log-spaced from 1 (a or b alone: the cheapest live configuration) to 200 (a3
    # and b3: the optimum); at 14.1, a + b2 (Omega 1.25) beats a2 + b (1.5)
    assert [round(a.budget, 2) for a in front] == [1.0, 3.76, 14.14, 53.18, 200.0]
    assert [a.cost for a in front] == [1.0, 2.0, 11.0, 20.0, 200.0]
    assert sweep(omegas, costs, n=1)[0].params == {"g0": "a3", "g1": "b3"}
    capped = sweep(omegas, costs, n=5, max_cost=20.0)
    assert max(a.budget for a in capped) == 20.0 and max(a.cost for a in capped) <= 20.0
    assert sweep(omegas, costs, n=5, max_cost=0.5) == []  # only the dead network fits
    # DSPs: 0 is an ordinary cost, and the least-Omega configuration at 0 is the answer
    dsp = {g: dict.fromkeys(ch, 0.0) for g, ch in omegas.items()}
    assert [a.params for a in sweep(omegas, dsp, n=4, zero_is_dead=False)] == \
        [{"g0": "a3", "g1": "b3"}]
    assert sweep(omegas, dsp, n=4) == []
    for n in (0, -3, 2.5, "3", True):
        with pytest.raises(ValueError, match=rf"sweep: n={n!r}; expected a number of budgets"):
            sweep(omegas, costs, n=n)
    with pytest.raises(ValueError, match=r"sweep: budget nan is not a number"):
        sweep(omegas, costs, budgets=[float("nan")])


def test_hessian_prior_checks_samples_and_gives_the_random_stream_back():
    from hetq.data import get_dataset

    data = get_dataset("synthetic:n=600,seed=3")
    f = build("jet_mlp", widths=[8])
    space = SearchSpace(f)
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match=rf"hessian_prior: samples={bad!r}; expected"):
            hessian_prior(space, f, data, goal="ebops", n=3, samples=bad)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    pr = hessian_prior(space, f, data, goal="ebops", n=3, samples=128, max_iter=10)
    assert torch.equal(torch.get_rng_state(), state) and pr.allocations


def test_the_solver_prints_nothing_on_stdout(capfd):
    """HiGHS printed 'HighsMipSolverData::transformNewIntegerFeasibleSolution
    tmpSolver.run();' to the process's stdout on this instance (Omegas over 8 decades),
    into the middle of the search's output."""
    import json
    from pathlib import Path

    case = json.loads((Path(__file__).parent / "highs_diagnostic_case.json").read_text())
    print("before", flush=True)
    choice = allocate(case["omegas"], case["costs"], case["budget"])
    print("after", flush=True)
    assert capfd.readouterr().out == "before\nafter\n"
    assert choice == _brute(case["omegas"], CostTable(case["costs"]), case["budget"])


def test_bad_data_and_arguments_are_named_and_a_float64_model_works():
    """Found by probing the Python API: a NaN input gave NaN traces (the ILP then blamed an
    Omega), samples of the wrong width, a float64 model and an empty batch failed inside
    torch, a string of activations was read letter by letter, batch_size=0 was taken as
    one batch and top_eigenvalue(max_iter=0) gave 0.0."""
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    x, y = torch.randn(100, 6), torch.randint(0, 5, (100,))
    f64 = copy.deepcopy(f).double()
    a = hessian_prior(SearchSpace(f), f, (x, y), goal="ebops", n=3, max_iter=30)
    b = hessian_prior(SearchSpace(f64), f64, (x, y), goal="ebops", n=3, max_iter=30)
    assert [al.params for al in a.allocations] == [al.params for al in b.allocations]
    for name, v in a.traces.params.items():
        assert b.traces.params[name] == pytest.approx(v, rel=1e-4)
    bad = x.clone()
    bad[7, 2] = float("nan")
    for call, msg in (
            (lambda: hessian_traces(f, F.cross_entropy, (bad, y)),
             r"batch 0 has inputs that are not finite numbers \(row 7: \[.*nan"),
            (lambda: hessian_traces(f, F.cross_entropy, [(x, y), (x[:0], y[:0])]),
             "batch 1 is empty"),
            (lambda: hessian_traces(f, F.cross_entropy, (torch.randn(10, 7), y[:10])),
             r"the model does not take these samples \(shape \(7,\)\): mat1 and mat2"),
            (lambda: hessian_traces(f, F.cross_entropy, (x, y), activations="1"),
             r"activations='1'; expected True, False or a list of module names, e\.g\. "
             r"\['1'\]"),
            (lambda: top_eigenvalue(f, F.cross_entropy, (x, y), max_iter=0),
             r"max_iter=0; expected a whole number >= 1"),
            (lambda: hessian_prior(SearchSpace(f), f, (x, y), goal="ebops", batch_size=0),
             r"hessian_prior: batch_size=0; expected a number of samples >= 1")):
        with pytest.raises(ValueError, match=msg):
            call()
