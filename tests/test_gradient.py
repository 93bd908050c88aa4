"""Gradient-based bit-widths: beta ramp, Pareto checkpoints, surrogate gradient, export."""

import copy
import dataclasses
import html
import importlib.util
import math
import re
import shutil
import time

import pytest
import torch
import torch.nn.functional as F

from hetq.cost import cost
from hetq.data import get_dataset
from hetq.export import IntegerModel
from hetq.models import build
from hetq.search.gradient import (
    BetaController,
    FrontPoint,
    GradientBitsMLP,
    ParetoCheckpoints,
    beta_at,
    ebops_target_at,
    polish,
    polish_front,
    to_hetq_model,
    train_gradient,
    train_gradient_runs,
    weight_widths,
)
from hetq.search.gradient.model import _int_bits, _round_f, _surrogate
from hetq.search.gradient.training import Polished
from hetq.train import evaluate


def test_beta_ramp_is_geometric():
    assert beta_at(0, 101, 1e-6, 1e-4) == pytest.approx(1e-6)
    assert beta_at(50, 101, 1e-6, 1e-4) == pytest.approx(1e-5)
    assert beta_at(100, 101, 1e-6, 1e-4) == pytest.approx(1e-4)
    assert beta_at(500, 101, 1e-6, 1e-4) == pytest.approx(1e-4)  # clamped
    assert beta_at(0, 1, 1e-6, 1e-4) == 1e-4


def test_ebops_target_is_log_linear_in_two_legs():
    t = [ebops_target_at(x, 1e5, 1e3, 1e2, 0.5) for x in (0, 0.25, 0.5, 0.75, 1.0, 1.5, -1)]
    assert t == pytest.approx([1e5, 1e4, 1e3, 10 ** 2.5, 1e2, 1e2, 1e5])
    assert ebops_target_at(0.3, 1e5, 1e3, 1e2, 0.0) == pytest.approx(10 ** (3 - 0.3))


def test_beta_controller_integrates_log_error():
    c = BetaController(1e-4, gain=0.1, hi=1e-3)
    assert c.update(2000, 1000) == pytest.approx(1e-4 * 2 ** 0.1)  # above target: up
    c2 = BetaController(1e-4, gain=0.1)
    assert c2.update(250, 1000) == pytest.approx(1e-4 * 0.25 ** 0.1)  # below: down
    for _ in range(1000):
        c.update(1e6, 1)
    assert c.beta == pytest.approx(1e-3)  # clamped at hi
    with pytest.raises(ValueError, match="beta0=1.0"):
        BetaController(1.0, hi=0.1)


def test_pareto_checkpoints_keep_only_non_dominated():
    k = ParetoCheckpoints()
    assert k.offer(FrontPoint(0, 0, 0.70, 5000, {"a": 1}))
    assert k.offer(FrontPoint(1, 0, 0.65, 1000, {"a": 2}))
    assert not k.offer(FrontPoint(2, 0, 0.64, 2000, {"a": 3}))  # dominated by epoch 1
    assert not k.offer(FrontPoint(3, 0, 0.65, 1000, {"a": 4}))  # equal: not added
    assert k.offer(FrontPoint(4, 0, 0.71, 4000, {"a": 5}))  # dominates epoch 0
    assert [(p.epoch, p.ebops) for p in k.points] == [(1, 1000), (4, 4000)]


def test_weight_widths_vectors():
    q = torch.tensor([0.0, 1.0, -1.0, 0.5, 0.75, 3.0, -0.375, 8.0, 6.0])
    # 1 -> code 1 (1 bit + sign); 0.75 -> code 3 (2 + 1); -0.375 -> code 3; 8 -> 1; 6 -> 3
    assert weight_widths(q).tolist() == [0, 2, 2, 2, 3, 3, 3, 2, 3]


def test_surrogate_value_and_gradients():
    x = torch.tensor([0.3, -1.1], requires_grad=True)
    f = torch.tensor(2.0, requires_grad=True)
    q = torch.round(x.detach() * 4) / 4
    y = _surrogate(x, q, f)
    assert torch.equal(y.detach(), q)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]
    err = (q - x.detach()).sum()
    assert f.grad.item() == pytest.approx(-math.log(2) * err.item())


def test_clipped_values_give_f_no_gradient():
    """More frac bits cannot shrink the error of a value clipped at the top of its range, so
    it gives f no gradient (it used to push f up without end: a heavy-tailed input with
    --input-quantile 0.95 reached f > 100, and then NaN, once its grid step underflowed)."""
    from hetq.search.gradient.model import _ActQ, _InputQ

    x = torch.tensor([0.3, -1.1, 2.6], requires_grad=True)
    f = torch.tensor(2.0, requires_grad=True)
    q = torch.clamp(torch.round(x.detach() * 4) / 4, -1.0, 0.75)
    y = _surrogate(x, q, f, torch.tensor([False, True, True]))
    assert torch.equal(y.detach(), q)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]  # (the inputs' gradient is unchanged)
    assert f.grad.item() == pytest.approx(-math.log(2) * (q[0] - x[0]).item())
    # an input feature with range [-1, 1) (integer 0): only 0.3 is in range
    inq = _InputQ(1, 2.0, torch.zeros(1))
    xs = torch.tensor([[0.3], [1.7], [-2.4]])
    inq(xs).sum().backward()
    assert inq.f.grad.item() == pytest.approx(-math.log(2) * (0.25 - 0.3))
    # a neuron with a quantile range (integer 1: top 2 - 0.25) and its clipped outputs
    act = _ActQ(1, 2.0)
    act.max_seen.fill_(2.0)
    act.frozen = True
    act(torch.tensor([[1.3], [5.0]])).sum().backward()
    assert act.f.grad.item() == pytest.approx(-math.log(2) * (1.25 - 1.3))


def _small_setup():
    data = get_dataset("synthetic")
    torch.manual_seed(0)
    f = build("jet_mlp", n_in=data.n_features, n_out=data.n_classes, widths=(16, 8))
    return data, f


def test_ebops_soft_matches_exact_at_integer_f():
    data, f = _small_setup()
    X, _ = data.tensors("train")
    g = GradientBitsMLP(f, X, f0=4.0)
    assert g.ebops() == 0  # no activation ranges yet: every neuron is off, the model constant
    g.train()
    with torch.no_grad():
        g(X)  # track the ranges
    assert g.ebops() == int(round(float(g.soft_ebops().detach())))
    assert g.ebops() > 0
    # HGQ1's count: no sign bit (one bit less per nonzero weight, times its input width),
    # nor the trailing zero bits of a weight's code
    lower = 0
    for d, src in g._inputs():
        bx = src.widths()
        bx = bx if bx.dim() == 1 else bx.expand(d.weight.shape[1])
        lower += float(((d.qweight() != 0).float() * bx.unsqueeze(0)).sum())
    assert g.ebops(hgq1=True) < g.ebops() - int(round(lower))  # some codes end in 0


def test_training_front_and_exact_export():
    data, f = _small_setup()
    g, res = train_gradient(f, data, epochs=6, batch_size=256, beta0=1e-4, beta1=1e-2,
                              bits_lr=0.05, progress=False)
    assert len(res.history) == 6 and res.front
    # the front is sorted by EBOPs with strictly increasing accuracy
    eb = [p.ebops for p in res.front]
    acc = [p.val_accuracy for p in res.front]
    assert eb == sorted(eb) and all(a < b for a, b in zip(acc, acc[1:]))
    # pressure on EBOPs: the last epoch is cheaper than the first
    assert res.history[-1]["ebops"] < res.history[0]["ebops"]
    m = _assert_front_exports_exactly(g, res.front, data)
    assert 0 <= evaluate(m, data)["accuracy"] <= 1


def _assert_front_exports_exactly(g, front, data):
    """Each front point as an ordinary hetq model computes what `g` computes, the integer
    engine bit-exactly, and `g`'s exact EBOPs are the recorded ones; returns the last model."""
    X, _ = data.tensors("test")
    for p in front:
        m = to_hetq_model(g, p.state)
        g.load_state_dict(p.state)
        g.eval()
        with torch.no_grad():
            assert torch.equal(m(X), g(X))
        assert IntegerModel(m, (data.n_features,)).compare(X).exact
        assert g.ebops() == p.ebops
        # the exported model's declared types cost the same EBOPs in hetq's cost model
        assert cost(m, (data.n_features,)).summary()["ebops"] == p.ebops
    return m


@pytest.mark.parametrize("granularity,activations", [("weight", "neuron"),
                                                     ("channel", "neuron"),
                                                     ("layer", "neuron"),
                                                     ("weight", "layer")])
def test_granularity_shares_bit_widths_and_exports_exactly(granularity, activations, tmp_path):
    """granularity: one trainable weight bit-width per weight, per output neuron (channel) or
    per layer; activations: per input feature and neuron, or one type for the inputs and one
    per activation layer. Soft and exact EBOPs agree at integer bits, every front point
    exports exactly, and with per-layer activations every tensor has one fixed-point type,
    so hls4ml takes the model (its C simulation is bit-exact; before, no gradient point could
    go to hls4ml)."""
    from hetq.export.hls import export_hls4ml, layer_list

    data, f = _small_setup()
    X, _ = data.tensors("train")
    g = GradientBitsMLP(f, X, f0=4.0, granularity=granularity, activations=activations)
    want = {"weight": (16, 16), "channel": (16, 1), "layer": (1, 1)}[granularity]
    assert tuple(g.body[0].f.shape) == want
    assert g.inq.f.dim() == g.body[1].f.dim() == (0 if activations == "layer" else 1)
    g.train()
    with torch.no_grad():
        g(X)
    assert g.ebops() == int(round(float(g.soft_ebops().detach()))) > 0
    g, res = train_gradient(f, data, epochs=6, batch_size=256, beta0=1e-4, beta1=1e-2,
                            bits_lr=0.05, granularity=granularity, activations=activations,
                            progress=False)
    m = _assert_front_exports_exactly(g, res.front, data)
    eng = IntegerModel(m, (data.n_features,))
    assert ("cast/feature" in {s.kind for s in eng.steps}) == (activations == "neuron")
    if activations == "layer":
        layer_list(eng)  # every step has one type
        if shutil.which("g++") and importlib.util.find_spec("hls4ml"):
            _, rep = export_hls4ml(eng, tmp_path / "hls", data.tensors("test")[0][:300])
            assert rep.samples == 300 and rep.exact, rep.line()
    for kw, msg in (({"granularity": "neuron"}, "granularity='neuron'; expected one of weight, "
                                                 "channel, layer"),
                    ({"activations": "weight"}, "activations='weight'; expected one of "
                                                "neuron, layer")):
        with pytest.raises(ValueError, match=msg):
            GradientBitsMLP(f, X, **kw)


def test_negative_activation_frac_bits_export_exactly():
    """Neurons with grid steps of 2, 4, 8 (f < 0) are rescaled by powers of two on export:
    integer == bits in the exported activation, weights scaled both sides, same outputs."""
    data, f = _small_setup()
    X, _ = data.tensors("train")
    with torch.no_grad():  # large first-layer ranges: room for coarse steps
        f[0].weight.mul_(32.0)
        f[0].bias.mul_(32.0)
    g = GradientBitsMLP(f, X, f0=4.0)
    acts = [m for m in g.body if type(m).__name__ == "_ActQ"]
    with torch.no_grad():
        g.train()
        g(X)  # track the activation ranges
        acts[0].f.copy_(torch.tensor([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, -1.0, -2.0] * 2))
        acts[1].f.copy_(torch.tensor([-2.0, 0.0, -1.0, 3.0, -1.0, -2.0, 0.0, 1.0]))
        # the first layer's ranges are large enough that the rescaled neurons stay on
        assert bool(((acts[0].integer + acts[0].f) >= 1).all())
        assert int(((acts[1].integer + acts[1].f) >= 1).sum()) >= 4
    g.eval()
    eb = g.ebops()
    m = to_hetq_model(g)
    Xt, _ = data.tensors("test")
    with torch.no_grad():
        assert torch.equal(m(Xt), g(Xt))
        # the hidden values are the same up to each neuron's power of two
        h_g = g.body[1](g.body[0](g.inq(Xt)))
        h_m = m[2](m[1](m[0](Xt)))
        s = (-acts[0].f).clamp_min(0)
        live = acts[0].integer + acts[0].f >= 1
        assert torch.equal(h_m[:, live] * 2.0 ** s[live], h_g[:, live])
    q = m[2].activation_quantizer
    b, i = torch.as_tensor(q.bits), torch.as_tensor(q.integer)
    assert bool((i[s > 0] == b[s > 0]).all())  # rescaled neurons: step 1
    # negative f saves bits: width integer + f
    assert torch.equal(acts[0].widths()[live], (acts[0].integer + acts[0].f)[live])
    assert g.ebops() == eb == int(round(float(g.soft_ebops().detach())))
    assert IntegerModel(m, (data.n_features,)).compare(Xt).exact


def test_inputs_below_the_floor_keep_f_minus_1_then_get_pruned():
    """Input f below -1 is not exportable (integer <= bits): such a feature keeps its f = -1
    grid until its width would fall below 2 bits, then it is pruned: always 0, 0 bits, its
    first-layer weights zero on export, outputs unchanged."""
    data, f = _small_setup()
    X, _ = data.tensors("train")
    g = GradientBitsMLP(f, X, f0=4.0)
    n = data.n_features
    with torch.no_grad():
        g.inq.integer.copy_(torch.tensor([3.0, 2.0, 1.0] + [2.0] * (n - 3)))
        fs = torch.full((n,), 3.0)
        fs[:6] = torch.tensor([-2.0, -2.0, -1.0, -1.0, -3.0, 0.0])
        g.inq.f.copy_(fs)
    # widths: [3 at the floor, pruned, pruned (1 bit), 2, pruned, 3, 6, ...]
    w = g.inq.widths()
    assert w[:7].tolist() == [3.0, 0.0, 0.0, 2.0, 0.0, 3.0, 6.0]
    fr, pruned = g.inq.grid()
    assert pruned.tolist()[:7] == [False, True, True, False, True, False, False]
    assert fr[0] == -1.0  # f = -2 rounds to -2, used as -1
    xin = torch.tensor([[5.3, 1.7, 0.9, -3.1, 2.2, 0.3] + [0.0] * (n - 6)])
    q = g.inq(xin)[0, :6]
    assert q.tolist() == [6.0, 0.0, 0.0, -4.0, 0.0, 0.0]  # step 2 (f=-1), pruned: 0; f=0: 0
    # the soft width keeps falling below the floor, so the EBOPs pressure goes on
    assert g.inq.widths(soft=True).detach()[:2].tolist() == [2.0, 1.0]
    g.eval()
    m = to_hetq_model(g)
    Xt, _ = data.tensors("test")
    with torch.no_grad():
        assert torch.equal(m(Xt), g(Xt))
    assert bool((m.fc1.weight[:, pruned] == 0).all())
    assert IntegerModel(m, (data.n_features,)).compare(Xt).exact
    # pruned features cost nothing: exact EBOPs from the widths above
    fc1 = g.body[0]
    qw = fc1.qweight().detach()
    wb = (qw != 0).double() * F.relu(_int_bits(qw) + _round_f(fc1.f) + 1).double()
    assert float((wb[:, pruned] * w[pruned].double()).sum()) == 0.0
    assert float((wb[:, ~pruned]).sum()) > 0


def test_controller_steers_ebops_to_the_target():
    data, f = _small_setup()
    _, res = train_gradient(f, data, epochs=30, batch_size=256, beta0=1e-5, lr=1e-2,
                            bits_lr=0.05, target=(1500, 600), knee_time=0.3, gain=0.05,
                            progress=False)
    eb = [h["ebops"] for h in res.history]
    assert eb[0] > 5000  # starts far above the knee (about 9,400 at f0 = 6)
    last = sum(eb[-3:]) / 3
    assert 600 / 1.6 < last < 600 * 1.6  # ends near the end target
    assert any(p.ebops < 1000 for p in res.front)
    with pytest.raises(ValueError, match="end <= knee"):
        train_gradient(f, data, epochs=1, target=(100, 600), progress=False)


def test_controller_steers_the_exact_ebops(monkeypatch):
    """The controller was given the soft EBOPs, which also count weights into neurons that
    cannot change the output: steered to END, the EBOPs reported and exported fell far below
    it (a jet MLP steered to 800 ended at 0). It now gets the soft count scaled by the exact
    / soft ratio of the last epoch's end, so at each epoch's first step it sees about the
    exact EBOPs that epoch ended with."""
    from hetq.search.gradient import training

    seen = []
    real = training.BetaController.update

    def update(self, ebops, target):
        seen.append(ebops)
        return real(self, ebops, target)
    monkeypatch.setattr(training.BetaController, "update", update)
    data, f = _small_setup()
    _, res = train_gradient(f, data, epochs=12, batch_size=256, beta0=1e-5, lr=1e-2,
                            bits_lr=0.05, target=(1500, 300), gain=0.05, progress=False)
    steps = len(seen) // len(res.history)
    pairs = [(seen[(k + 1) * steps], h["ebops"]) for k, h in enumerate(res.history[:-1])
             if h["ebops"] > 0]
    assert pairs and all(abs(s / e - 1) < 0.01 for s, e in pairs), pairs


def test_parallel_runs_merge_their_fronts():
    data, f = _small_setup()
    kw = dict(epochs=4, batch_size=256, beta0=1e-4, beta1=1e-2, bits_lr=0.05)
    g, res = train_gradient_runs(f, data, runs=2, workers=2, progress=False, **kw)
    assert {h["run"] for h in res.history} == {0, 1}
    assert not any(p.polished for p in res.front)
    assert len(res.history) == 8
    # run 0 is the same training as train_gradient with seed 0 (same batches, same steps)
    _, alone = train_gradient(f, data, seed=0, progress=False, **kw)
    assert [h["val_accuracy"] for h in res.history if h["run"] == 0] == pytest.approx(
        [h["val_accuracy"] for h in alone.history], abs=0.02)
    _, by_name = train_gradient(f, "synthetic", seed=0, progress=False, **kw)  # as --data
    assert by_name.history == alone.history
    # the merged front is non-dominated, sorted, and its points convert exactly
    eb = [p.ebops for p in res.front]
    acc = [p.val_accuracy for p in res.front]
    assert eb == sorted(eb) and all(a < b for a, b in zip(acc, acc[1:]))
    X, _ = data.tensors("val")
    for p in res.front:
        g.load_state_dict(p.state)
        assert g.ebops() == p.ebops
        m = to_hetq_model(g, p.state)
        assert evaluate(m, data, split="val")["accuracy"] == pytest.approx(p.val_accuracy)
    with pytest.raises(ValueError, match="runs must be >= 1"):
        train_gradient_runs(f, data, runs=0)


def test_process_start_comes_out_of_the_time_budget(monkeypatch):
    """A run that starts at once trains for its budget minus the time since submission (the
    worker process's start), so the wall time stays within the budget; a queued run keeps
    its whole budget."""
    import hetq.search.gradient.runs as gm

    seen = []
    monkeypatch.setattr(gm, "train_gradient", lambda f, d, **kw: seen.append(kw["time_budget"]))
    threads = torch.get_num_threads()
    t = time.time()
    monkeypatch.setattr(gm.time, "time", lambda: t)  # (a clock that stands still: no test
    try:                                             # of wall-clock time)
        gm._one_run(None, None, 1, {"time_budget": 100.0}, submitted=t - 30.0)
        gm._one_run(None, None, 1, {"time_budget": 100.0}, submitted=None)
        gm._one_run(None, None, 1, {"time_budget": 100.0}, submitted=t - 500.0)
    finally:
        torch.set_num_threads(threads)  # _one_run sets the worker's threads
    assert seen == [70.0, 100.0, 1.0]


def test_polish_keeps_the_bits_and_never_raises_ebops():
    data, f = _small_setup()
    g, res = train_gradient(f, data, epochs=6, batch_size=256, beta0=1e-4, beta1=1e-2,
                            bits_lr=0.05, progress=False)
    X, _ = data.tensors("val")
    gained = 0
    for p in res.front:
        q = polish(g, p, data, epochs=3, lr=3e-3)
        if q is p:  # no epoch beat the point: it comes back unchanged
            continue
        gained += 1
        assert q.polished and q.val_accuracy > p.val_accuracy and q.ebops <= p.ebops
        a, b = copy.deepcopy(g), copy.deepcopy(g)
        a.load_state_dict(p.state)
        b.load_state_dict(q.state)
        for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
            if n.endswith(".f") or n == "f":
                assert torch.equal(x, y)  # frac bits frozen
        for da, db in zip(a._inputs(), b._inputs()):
            wa, wb = da[0].qweight().detach(), db[0].qweight().detach()
            assert not bool(((wa == 0) & (wb != 0)).any())  # pruned weights stay pruned
            ia = torch.floor(torch.log2(wa.abs().clamp_min(1e-30)))
            ib = torch.floor(torch.log2(wb.abs().clamp_min(1e-30)))
            assert bool((ib[wb != 0] <= ia[wb != 0]).all())  # no integer bit added
            assert torch.equal(da[1].widths(), db[1].widths())  # activation/input widths
        b.eval()
        assert b.ebops() == q.ebops
        m = to_hetq_model(g, q.state)
        assert evaluate(m, data, split="val")["accuracy"] == pytest.approx(q.val_accuracy)
    assert gained >= 1
    # polish_front: the Pareto front of the original and polished points
    front = polish_front(g, res.front, data, epochs=2, lr=3e-3, progress=False)
    for k, p in enumerate(front):
        assert not any(o.val_accuracy >= p.val_accuracy and o.ebops <= p.ebops
                       for j, o in enumerate(front) if j != k)
    assert any(p.polished for p in front)
    assert polish_front(g, res.front, data, epochs=2, seconds=0.0, progress=False) == \
        sorted(res.front, key=lambda p: p.ebops)  # no time: nothing polished
    for kw, msg in (({"epochs": 0}, "epochs must be >= 1, got 0"),
                    ({"epochs": 2.5}, "epochs must be a whole number, got 2.5 (float)"),
                    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
                    ({"lr": 0.0}, "lr must be a learning rate > 0, got 0.0")):
        with pytest.raises(ValueError, match=re.escape(msg)):  # (lr 0 did nothing, unsaid)
            polish(g, res.front[0], data, **kw)


def test_training_and_polish_give_the_global_random_stream_back():
    """train_gradient and polish seeded torch's global generator and left it so: every model
    built after them started from the same weights."""
    data, f = _small_setup()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    g, res = train_gradient(f, data, epochs=2, batch_size=512, progress=False, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    polish(g, res.front[-1], data, epochs=1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_and_polish_save_the_front_they_reached(tmp_path, monkeypatch):
    """A front file holds the front so far: written when the first point comes, then at most
    every save_every seconds, and at the end; it reads back as the same points, and a
    model rebuilt from its structure takes their states."""
    import hetq.files
    from hetq.search.gradient.training import read_front_file

    data, f = _small_setup()
    writes = []
    real = hetq.files.write_whole
    monkeypatch.setattr(hetq.files, "write_whole",
                        lambda path, *a: writes.append(path) or real(path, *a))
    path = tmp_path / "fronts" / "run_0.pt"
    g, res = train_gradient(f, data, epochs=6, batch_size=256, beta0=1e-4, beta1=1e-2,
                            bits_lr=0.05, progress=False, front_file=path, save_every=1e9)
    assert writes == [path, path]  # the first point at once, then the end's
    structure, points = read_front_file(path)
    assert structure == g.structure and structure["learn_integer"] is True
    assert [(p.epoch, p.ebops, p.val_accuracy) for p in points] == \
        [(p.epoch, p.ebops, p.val_accuracy) for p in res.front]
    X, _ = data.tensors("train")
    r = GradientBitsMLP.rebuild(f, X, structure)
    for p, q in zip(points, res.front):
        assert all(torch.equal(p.state[k], q.state[k]) for k in q.state)
        r.load_state_dict(p.state)
        assert r.ebops() == p.ebops
    writes.clear()
    polished = polish_front(g, res.front, data, epochs=2, lr=3e-3, progress=False,
                            front_file=tmp_path / "fronts" / "polished.pt", save_every=0.0)
    assert len(writes) >= sum(p.polished for p in polished) >= 1  # one per better point
    _, points = read_front_file(tmp_path / "fronts" / "polished.pt")
    assert [(p.ebops, p.val_accuracy, p.polished) for p in points] == \
        [(p.ebops, p.val_accuracy, p.polished) for p in polished]
    # a front file that cannot be written: a warning, and training goes on
    (tmp_path / "file").write_text("")
    with pytest.warns(UserWarning, match=r"could not save the front so far to .*file/run_0\.pt "
                                         r"\(.*\); the work goes on, its front is kept in "
                                         r"memory"):
        _, res2 = train_gradient(f, data, epochs=2, batch_size=512, progress=False,
                                 front_file=tmp_path / "file" / "run_0.pt", save_every=0.0)
    assert res2.front
    (tmp_path / "junk.pt").write_bytes(b"not a front")
    with pytest.raises(ValueError, match=r"junk\.pt is not a readable gradient-strategy front "
                                         r"file \("):
        read_front_file(tmp_path / "junk.pt")


def test_polish_front_starts_with_the_most_accurate(monkeypatch):
    import hetq.search.gradient.training as gm

    seen = []
    monkeypatch.setattr(gm, "polish", lambda g, p, data, **kw: seen.append(p.ebops) or p)
    pts = [FrontPoint(k, 0.0, acc, eb) for k, (acc, eb) in
           enumerate([(0.3, 10), (0.6, 200), (0.5, 50), (0.7, 900)])]
    front = gm.polish_front(None, pts, None, progress=False)
    assert seen == [900, 200, 50, 10]  # with a time limit the near-chance end waits
    assert [p.ebops for p in front] == [10, 50, 200, 900]

    # Ctrl-C while the pool polishes: the queued points are cancelled, the front kept
    import concurrent.futures as cf

    class Pool:
        futs = []

        def submit(self, *a):
            self.futs.append(cf.Future())
            return self.futs[-1]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cf, "wait", interrupted)
    front = gm.polish_front(None, pts, None, pool=Pool(), progress=False)
    assert len(Pool.futs) == 4 and all(f.cancelled() for f in Pool.futs)
    assert [p.ebops for p in front] == [10, 50, 200, 900]


def test_ctrl_c_stops_the_polish_and_keeps_what_it_reached(monkeypatch):
    """polish() swallowed Ctrl-C (and SIGTERM, taken as Ctrl-C) and returned, so polish_front
    went on with every other point: a batch system's SIGTERM did nothing, and its SIGKILL
    then lost the whole front, unsaved."""
    import hetq.search.gradient.training as gm

    data, f = _small_setup()
    g, res = train_gradient(f, data, epochs=4, batch_size=256, beta0=1e-4, beta1=1e-2,
                            progress=False)
    p = res.front[-1]
    calls = []

    def val_accuracy(*a):  # epoch 1 beats the point; Ctrl-C during epoch 2's evaluation
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 1.0

    monkeypatch.setattr(gm, "_val_accuracy", val_accuracy)
    with pytest.raises(gm.PolishInterrupted) as e:
        gm.polish(g, p, data, epochs=5)
    assert e.value.point.polished and e.value.point.val_accuracy == 1.0
    # polish_front stops at once, keeps the interrupted point's best, and says so
    seen = []

    def polish(g, point, data, **kw):
        seen.append(point.ebops)
        if len(seen) == 2:
            raise gm.PolishInterrupted(FrontPoint(point.epoch, 0.0, 0.95, point.ebops - 1,
                                                  polished=True))
        return point

    monkeypatch.setattr(gm, "polish", polish)
    pts = [FrontPoint(k, 0.0, acc, eb) for k, (acc, eb) in
           enumerate([(0.3, 10), (0.6, 200), (0.5, 50), (0.7, 900)])]
    front = gm.polish_front(None, pts, None, progress=False)
    assert seen == [900, 200] and front.interrupted
    assert [(p.ebops, p.polished) for p in front] == [(10, False), (50, False), (199, True)]
    assert not gm.polish_front(None, pts[:1], None, progress=False).interrupted


def test_stop_below_ends_training_and_gives_the_time_to_the_polish(monkeypatch):
    import hetq.search.gradient.runs as gm

    data, f = _small_setup()
    kw = dict(batch_size=256, beta0=1e-4, beta1=1e-3, progress=False)
    _, res = train_gradient(f, data, epochs=40, stop_below=1.01, **kw)  # never reached
    # stops in the second half of training, after 5 epochs below: epoch 20 ends past half
    assert res.stopped_early and len(res.history) == 21
    _, res = train_gradient(f, data, epochs=40, stop_below=0.0, **kw)
    assert not res.stopped_early and len(res.history) == 40
    # with a time budget, the time a stopped run leaves goes to the polish
    seen = {}

    def fake_polish_front(g, points, data, seconds=None, **k):
        seen["seconds"], seen["at"] = seconds, time.time()
        return Polished(points)

    monkeypatch.setattr(gm, "polish_front", fake_polish_front)
    t0 = time.time()
    _, res = train_gradient_runs(f, data, epochs=100_000, time_budget=6.0, stop_below=1.01,
                                 polish_epochs=1, polish_time=5.0, **kw)
    # (the run stops about 1 s after half its budget; under a heavy load it can take all 6 s,
    # leaving nothing, so the test asserts the sum rather than a spare > 0)
    spare = max(0.0, t0 + 6.0 - seen["at"])
    assert res.stopped_early and seen["seconds"] == pytest.approx(5.0 + spare, abs=0.3)


def test_compiled_training_matches_eager():
    """torch.compile'd steps give the same training as eager ones (full batches in both)."""
    data, f = _small_setup()
    n = len(data.tensors("train")[0])
    # one full batch per epoch: the same steps with and without compiling
    kw = dict(epochs=4, batch_size=n, beta0=1e-4, beta1=1e-3, bits_lr=0.05, progress=False)
    _, eager = train_gradient(f, data, **kw)
    _, comp = train_gradient(f, data, compile=True, **kw)
    assert [h["ebops"] for h in comp.history] == pytest.approx(
        [h["ebops"] for h in eager.history], rel=0.02)
    assert [h["val_accuracy"] for h in comp.history] == pytest.approx(
        [h["val_accuracy"] for h in eager.history], abs=0.02)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(fn, *a, **k):
        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    data, f = _small_setup()
    kw = dict(epochs=2, batch_size=256, beta0=1e-4, beta1=1e-3, progress=False)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
        _, res = train_gradient(f, data, compile=True, **kw)
    assert len(res.history) == 2 and res.front


def test_ctrl_c_returns_the_front_reached(monkeypatch):
    data, f = _small_setup()
    calls = {"n": 0}
    real = GradientBitsMLP.ebops

    def ebops(self, *a, **k):  # the user presses Ctrl-C during the 4th epoch's measurement
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(GradientBitsMLP, "ebops", ebops)
    g, res = train_gradient(f, data, epochs=50, batch_size=256, beta0=1e-4, beta1=1e-2,
                            progress=False)
    assert res.interrupted
    assert len(res.history) == 3  # three finished epochs, their front kept
    assert res.front and all(p.state for p in res.front)
    assert {p.epoch for p in res.front} <= {0, 1, 2}


def test_diverged_training_stops_with_a_warning_and_keeps_its_front(monkeypatch):
    """Weights that turn NaN (a diverged run) end training with a warning; the front reached
    before is kept (the exact EBOPs used to fail with "cannot convert float NaN to integer",
    a traceback from inside)."""
    from hetq.search.gradient import training

    data, f = _small_setup()
    real = training.bits_optimizer
    steps = {"n": 0}

    def poisoned(model, lr, bits_lr=None):
        opt = real(model, lr, bits_lr)
        step = opt.step

        def poisoning_step(*a, **k):
            out = step(*a, **k)
            steps["n"] += 1
            if steps["n"] == 3 * 17 + 5:  # in the 4th epoch (4,200 rows / 256: 17 steps)
                with torch.no_grad():
                    model.body.fc1.weight[0, 0] = float("nan")
            return out

        opt.step = poisoning_step
        return opt

    monkeypatch.setattr(training, "bits_optimizer", poisoned)
    with pytest.warns(UserWarning, match=r"gradient training diverged in epoch \d+ \(weights or "
                                         r"bit-widths are no longer finite numbers\); it stops "
                                         r"there, and the front reached before is kept"):
        g, res = train_gradient(f, data, epochs=50, batch_size=256, beta0=1e-4, beta1=1e-2,
                                progress=False)
    assert res.diverged and len(res.history) == 3 and res.front  # 3 epochs finished
    for p in res.front:
        assert all(bool(torch.isfinite(t).all()) for t in p.state.values()
                   if t.is_floating_point())
    _assert_front_exports_exactly(g, res.front, data)


def test_rejects_non_mlp():
    """Models the strategy cannot take are named: a bias-free Linear failed with
    "'NoneType' object has no attribute 'detach'", ReLU, ReLU trained and then failed to
    export (KeyError 'w'), Linear, Linear and too few outputs failed inside torch."""
    from torch.nn import Linear, ReLU, Sequential, Tanh

    data, f = _small_setup()
    X, _ = data.tensors("train")
    what = ("the gradient strategy needs an MLP of Linear layers (with biases) and ReLUs, "
            "Linear, ReLU, Linear, ..., Linear; ")
    for model, msg in (
            (Sequential(Tanh()), "0: Tanh is not supported by the gradient strategy (Linear "
                                 "and ReLU layers only)"),
            (Sequential(Linear(16, 8, bias=False), ReLU(), Linear(8, 5)),
             what + "0 has no bias (nn.Linear(..., bias=False))"),
            (Sequential(Linear(16, 8), ReLU(), ReLU(), Linear(8, 5)),
             what + "layer 2 (2) is a ReLU where a Linear was expected"),
            (Sequential(Linear(16, 8), Linear(8, 5)),
             what + "layer 1 (1) is a Linear where a ReLU was expected"),
            (Sequential(Linear(16, 8), ReLU()),
             what + "it ends with 1 (ReLU) instead of a Linear (the outputs)"),
            (Sequential(Linear(7, 8), ReLU(), Linear(8, 5)),
             "0 takes 7 inputs, but the data have 16 features"),
            (Sequential(Linear(16, 8), ReLU(), Linear(9, 5)),
             "2 takes 9 inputs, but the layer before gives 8"),
            (Sequential(), what + "got a Sequential without layers")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            GradientBitsMLP(model, X)
    with pytest.raises(ValueError, match=re.escape(
            "the model gives 3 outputs, and the data have 5 classes; build it with one output "
            "per class")):
        train_gradient(Sequential(Linear(16, 8), ReLU(), Linear(8, 3)), data, epochs=1,
                       progress=False)
    for kw, msg in (({"batch_size": 0}, "batch_size must be >= 1, got 0"),
                    ({"time_budget": 0}, "time_budget=0; expected seconds > 0"),
                    # (a negative lr trained the wrong way, without a word)
                    ({"lr": -1.0}, "lr must be a learning rate > 0, got -1.0"),
                    ({"bits_lr": float("nan")}, "bits_lr must be a learning rate > 0, got nan"),
                    ({"seed": 2 ** 70}, "seed must be a whole number from 0 to 2**63 - 1")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            train_gradient(f, data, epochs=1, progress=False, **kw)


def test_strategy_writes_loadable_front_checkpoints(tmp_path):
    from hetq import load
    from hetq.search.config import SearchConfig
    from hetq.search.gradient import run_gradient_strategy

    # two runs in two processes, beta steered by the controller
    cfg = SearchConfig(data="synthetic", strategy="gradient", epochs=3, float_epochs=1,
                       batch_size=256, beta0=1e-5, ebops_target=[20000, 5000],
                       gradient_runs=2, polish_epochs=2, learn_integer=False,
                       model_kwargs={"n_in": 16, "n_out": 5})
    # (learn_integer off: with it this tiny run's front is one point at 0.999 validation
    # accuracy, which a polish cannot beat, so no point would be marked polished)
    rows = run_gradient_strategy(cfg, tmp_path, progress=False)
    assert rows and all(r.ebops > 0 for r in rows)
    assert any(r.point.polished for r in rows)  # polished in the runs' processes
    assert {r.point.run for r in rows} <= {0, 1}
    assert SearchConfig.load(tmp_path / "search.yaml").ebops_target == [20000, 5000]
    with pytest.raises(ValueError, match="ebops_target"):
        SearchConfig(ebops_target=[500, 2000])
    with pytest.raises(ValueError, match="gradient_runs must be >= 1"):
        SearchConfig(gradient_runs=0)
    with pytest.raises(ValueError, match="polish_epochs must be >= 0"):
        SearchConfig(polish_epochs=-1)
    with pytest.raises(ValueError, match="stop_below=1.5; expected an accuracy"):
        SearchConfig(stop_below=1.5)
    data = get_dataset("synthetic")
    m = load(rows[-1].path)  # an ordinary hetq model in a checkpoint
    assert evaluate(m, data)["accuracy"] == pytest.approx(rows[-1].test_accuracy)


def test_reruns_say_what_they_replace_and_keep_to_the_float_model_settings(tmp_path, capsys,
                                                                          monkeypatch):
    """Found by a probe of the gradient strategy as a user: a rerun with another --seed,
    --lr or --batch-size reused the float model trained with the earlier ones (search.yaml
    then said otherwise); a finished rerun replaced the earlier front without a word before
    it began; an interrupted run's summary said 'then the polish' though none ran; Ctrl-C
    in the float training printed only 'interrupted'."""
    import hetq.search.driver as driver
    import hetq.search.gradient.strategy as G
    from hetq.cli import main
    from hetq.search.config import SearchConfig
    from hetq.search.driver import OtherSettings
    from hetq.search.gradient import GradientResult, run_gradient_strategy

    cfg = SearchConfig(data="synthetic:n=600,seed=1", strategy="gradient", epochs=2,
                       float_epochs=1, batch_size=256, model_kwargs={"widths": [8]})
    rows = run_gradient_strategy(cfg, tmp_path, progress=False)
    for change in ({"seed": 1}, {"lr": 1e-2}, {"batch_size": 128}):
        with pytest.raises(OtherSettings, match=f"holds a float model for other settings "
                                                f"\\({next(iter(change))}: "):
            run_gradient_strategy(dataclasses.replace(cfg, **change), tmp_path, progress=False)
    capsys.readouterr()
    real = G.train_gradient_runs
    front = []

    def interrupted(*a, **k):
        g, res = real(*a, **{**k, "polish_epochs": 0})
        front.extend(res.front)
        return g, GradientResult(res.front, res.history, res.seconds, interrupted=True)
    monkeypatch.setattr(G, "train_gradient_runs", interrupted)
    run_gradient_strategy(dataclasses.replace(cfg, polish_epochs=3), tmp_path)
    out = capsys.readouterr().out
    assert (f"note: {tmp_path / 'gradient'} holds a front of {len(rows)} point"
            f"{'s' * (len(rows) != 1)}; this run replaces it when it finishes (if it is "
            "interrupted, the points of both that no other beats are kept)") in out
    assert front and "gradient strategy: 2 epochs in " in out and "polish" not in \
        out.split("gradient strategy: 2 epochs")[1].splitlines()[0]

    def stopped(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(driver, "train_float_model", stopped)
    argv = ["search", "--strategy", "gradient", "--data", "synthetic:n=600,seed=1",
            "--float-epochs", "1", "--out", str(tmp_path / "new")]
    assert main(argv) == 130
    assert capsys.readouterr().err == (
        "search stopped while it trained its float model: nothing is kept yet; rerun the "
        "same command to start it\ninterrupted\n")
    # with a float model there and no teacher to train, it was "its float teacher"
    (tmp_path / "new").mkdir()
    shutil.copy(tmp_path / "float.pt", tmp_path / "new" / "float.pt")
    monkeypatch.setattr(G, "train_gradient_runs", stopped)
    assert main(argv) == 130
    assert capsys.readouterr().err.startswith(
        "search stopped before its training began: the float model is kept in ")


def test_time_budget_alone_and_ebops_target_with_betas(tmp_path, capsys):
    """`--time-budget 600` alone trained 10 epochs (the default --epochs cap) in seconds;
    with --ebops-target, beta0 above beta1 was refused by the ramp's check (there is no
    ramp) and a --beta1 given was dropped without a word."""
    from hetq.cli import main
    from hetq.search.cli import GRADIENT_EPOCH_CAP
    from hetq.search.config import SearchConfig

    out = tmp_path / "g"
    assert main(["search", "--strategy", "gradient", "--data", "synthetic:n=600,seed=1",
                 "--model-widths", "8", "--float-epochs", "1", "--time-budget", "1",
                 "--polish-epochs", "0", "--ebops-target", "1000", "100", "--beta0", "1e-2",
                 "--beta1", "5e-3", "--out", str(out), "--no-progress"]) == 0
    saved = SearchConfig.load(out / "search.yaml")
    assert (saved.epochs, saved.time_budget, saved.beta0) == (GRADIENT_EPOCH_CAP, 1.0, 1e-2)
    assert saved.beta1 == SearchConfig.beta1  # (not used: not recorded)
    assert ("note: not used: --beta1 (--ebops-target steers beta instead of the ramp)"
            in capsys.readouterr().err)
    with pytest.raises(ValueError, match=r"beta0=0.01, beta1=0.001; expected 0 < beta0 <= "):
        SearchConfig(beta0=1e-2)  # (the ramp's check, without a target)
    with pytest.raises(ValueError, match=r"beta0=2; with ebops_target it is the controller"):
        SearchConfig(beta0=2, ebops_target=[1000, 100])


def test_the_ramp_ends_with_the_epoch_cap_or_the_budget_whichever_comes_first():
    """With a time budget, the ramp followed the clock alone: an epoch cap reached first
    ended training with beta near beta0 (1.03e-6 of a ramp to 1e-3), and the front near
    the float model's EBOPs."""
    data, f = _small_setup()
    _, res = train_gradient(f, data, epochs=4, batch_size=256, beta0=1e-6, beta1=1e-3,
                            time_budget=1e6, progress=False)
    assert res.history[-1]["beta"] == pytest.approx(1e-3)
    _, res = train_gradient(f, data, epochs=4, batch_size=256, beta0=1e-6, beta1=1e-3,
                            progress=False)  # (without a budget, as before)
    assert res.history[-1]["beta"] == pytest.approx(1e-3)


def test_an_interruption_before_the_first_point_keeps_the_earlier_front(tmp_path, capsys,
                                                                        monkeypatch):
    """Ctrl-C or SIGTERM before a rerun's first epoch ended replaced the earlier front with
    an empty one."""
    import hetq.search.gradient.strategy as G
    from hetq.search.config import SearchConfig
    from hetq.search.gradient import GradientResult, run_gradient_strategy

    cfg = SearchConfig(data="synthetic:n=600,seed=1", strategy="gradient", epochs=2,
                       float_epochs=1, batch_size=256, model_kwargs={"widths": [8]})
    rows = run_gradient_strategy(cfg, tmp_path, progress=False)
    before = sorted(p.name for p in (tmp_path / "gradient").iterdir())
    assert rows and len(before) == len(rows)
    monkeypatch.setattr(G, "train_gradient_runs", lambda *a, **k: (
        None, GradientResult([], [], 0.1, interrupted=True)))
    assert run_gradient_strategy(cfg, tmp_path, progress=False) == []
    assert (f"gradient strategy: interrupted before its first front point; the earlier front "
            f"in {tmp_path / 'gradient'} is kept") in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "gradient").iterdir()) == before


@pytest.fixture
def runs_kwargs(monkeypatch):
    """The keyword arguments of the last `train_gradient_runs` call (which still runs)."""
    import hetq.search.gradient.strategy as G

    seen = {}
    real = G.train_gradient_runs

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(G, "train_gradient_runs", spy)
    return seen


def test_search_cli_passes_bits_lr_to_training(tmp_path, capsys, runs_kwargs):
    from hetq.cli import main
    from hetq.search.config import SearchConfig

    seen = runs_kwargs
    out = tmp_path / "g"
    assert main(["search", "--strategy", "gradient", "--data",
                 "synthetic:n=1500,features=16,classes=5", "--epochs", "2", "--float-epochs",
                 "1", "--batch-size", "256", "--lr", "0.003", "--bits-lr", "0.02",
                 "--polish-epochs", "0", "--out", str(out), "--no-progress"]) == 0
    assert seen["lr"] == 0.003 and seen["bits_lr"] == 0.02
    assert SearchConfig.load(out / "search.yaml").bits_lr == 0.02
    table = capsys.readouterr().out
    assert "EBOPs" in table and str(out / "gradient" / "point_000.pt") in table
    with pytest.raises(ValueError, match="bits_lr must be > 0, got -0.01"):
        SearchConfig(bits_lr=-0.01)
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        SearchConfig(lr=0)


def test_search_cli_model_widths_start_the_gradient_strategy_from_a_smaller_mlp(tmp_path, capsys):
    from hetq.cli import main
    from hetq.search.config import SearchConfig
    from hetq.search.report import write_gradient_html_report
    from hetq.train.checkpoint import load

    out = tmp_path / "g"
    assert main(["search", "--strategy", "gradient", "--model-widths", "8", "4", "--data",
                 "synthetic:n=1500,features=16,classes=5", "--epochs", "2", "--float-epochs",
                 "1", "--batch-size", "256", "--polish-epochs", "0", "--out", str(out),
                 "--no-progress"]) == 0
    assert SearchConfig.load(out / "search.yaml").model_kwargs == {"widths": [8, 4]}
    shapes = [tuple(m.weight.shape) for m in load(out / "float.pt").modules()
              if isinstance(m, torch.nn.Linear)]
    assert shapes == [(8, 16), (4, 8), (5, 4)]
    point = load(out / "gradient" / "point_000.pt")
    # its costs take the search's --source (default int8), as the other strategies' do
    from hetq.cost import cost
    from hetq.train.checkpoint import read

    want = cost(point, (16,), source_quantizer=SearchConfig().source_quantizer).summary()
    assert read(out / "gradient" / "point_000.pt")["metrics"]["costs"] == want
    # --granularity / --activation-granularity: recorded; the points have one input type
    lay = tmp_path / "layer"
    assert main(["search", "--strategy", "gradient", "--model-widths", "8", "4", "--data",
                 "synthetic:n=1500,features=16,classes=5", "--epochs", "2", "--float-epochs",
                 "1", "--batch-size", "256", "--polish-epochs", "0", "--granularity",
                 "channel", "--activation-granularity", "layer", "--out", str(lay),
                 "--no-progress"]) == 0
    cfg = SearchConfig.load(lay / "search.yaml")
    assert (cfg.granularity, cfg.activation_granularity) == ("channel", "layer")
    assert load(lay / "gradient" / "point_000.pt")[0].quantizers["activation"].is_scalar
    assert [tuple(m.weight.shape) for m in point.modules() if hasattr(m, "weight")
            and m.weight is not None and m.weight.dim() == 2] == shapes
    printed = capsys.readouterr().out
    # `hetq report` of the run re-prints its front table from the saved points
    assert main(["report", str(out), "--no-html"]) == 0
    table = capsys.readouterr().out
    assert table.strip() and table.strip() in printed
    assert table.splitlines()[-1].startswith("energy: QTools-equivalent 45 nm Horowitz model")
    assert not (out / "report.html").exists()
    # ...and by default writes the HTML page: the front and each point's EBOPs by layer
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out == table + f"HTML report: {out / 'report.html'}\n"
    page = (out / "report.html").read_text()
    assert html.escape(table.strip()) in page and 'src="layers.png"' in page
    assert (out / "pareto.png").stat().st_size > 0 and (out / "layers.png").stat().st_size > 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part")]
    assert "ended without saving" not in page and "still training" not in page
    assert "points on the front; beta 1e-06 to 0.001, weight" in page
    # the points are described by the settings saved with them: search.yaml is the last
    # run's, which a rerun killed before its first point had rewritten
    from hetq.search.gradient import saved_gradient_rows
    from hetq.search.gradient.strategy import run_settings
    from hetq.search.report import _trained_with

    saved_cfg = (out / "search.yaml").read_text()
    cfg = SearchConfig.load(out / "search.yaml")
    orig = run_settings(cfg)
    cfg.ebops_target, cfg.granularity = [2000.0, 300.0], "layer"
    cfg.save(out / "search.yaml")
    assert "points on the front; beta 1e-06 to 0.001, weight bit-widths per weight" in \
        write_gradient_html_report(out).read_text().replace("\n", " ")
    rows = saved_gradient_rows(out)
    assert {repr(r.settings) for r in rows} == {repr(orig)}
    rows[0].settings = run_settings(cfg)  # (with --ebops-target the ramp is unused)
    assert _trained_with(rows[:1], None, "") == (
        "beta set by a controller for EBOPs from 2000 to 300 (starting at 1e-06), weight "
        "bit-widths per layer, activations per neuron, 1 run(s)")
    other = copy.copy(rows[0])
    other.settings = orig
    assert _trained_with([rows[0], other], None, "") == (
        "its points come from 2 runs with other settings (a rerun that was interrupted keeps "
        "the earlier points its own do not beat)")
    for r in rows:
        r.settings = None  # (point files of older versions: search.yaml, unless a later run)
    assert _trained_with(rows, cfg, "").startswith("beta set by a controller")
    assert _trained_with(rows, cfg, "A later run") == (
        "the settings they were trained with are not recorded (older point files)")
    assert _trained_with([], cfg, "").startswith("beta set by a controller")  # (no points)
    (out / "search.yaml").write_text(saved_cfg)
    # a later run killed before it saved its front: the page says whose points it shows
    from hetq.search.gradient.strategy import PROGRESS

    (out / PROGRESS).mkdir(exist_ok=True)
    (out / PROGRESS / "run_0.pt").write_bytes(b"x")
    with pytest.warns(UserWarning, match="ended without saving it"):
        page = write_gradient_html_report(out).read_text()
    assert ("A later run ended without saving its front (killed?); these are the earlier "
            "run&#x27;s points") in page
    shutil.rmtree(out / PROGRESS)
    assert main(["report", str(out), "--no-html", "--storage", "x.journal"]) == 0
    assert "--storage is not used" in capsys.readouterr().err
    # trials-based commands explain where a gradient run's models are
    assert main(["retrain", str(out), "--trial", "0"]) == 2
    assert (f"{out} is a gradient-strategy run: it has no trials, but front points "
            f"{out / 'gradient' / 'point_NNN.pt'} (`hetq report {out}` lists them; `hetq "
            "export`, `hetq evaluate` and `hetq cost` take one of those files; there is "
            "nothing to retrain: the strategy fine-tunes them at their bits itself, "
            "--polish-epochs)") in capsys.readouterr().err
    for cmd in ("evaluate", "cost"):  # (they suggested float.pt, the float reference)
        assert main([cmd, str(out)]) == 2
        assert f"{out} is a gradient-strategy run: it has no trials, but front points " in \
            capsys.readouterr().err
    assert main(["worker", "--study", "hetq", "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.endswith(
        f"{out} is a gradient-strategy run: it trains within its own `hetq search` (--runs "
        "processes), and has no study for workers to join\n")
    # a rerun in the folder replaces the front whole: no point file of the earlier run stays
    stale = out / "gradient" / "point_050.pt"
    shutil.copy(out / "gradient" / "point_000.pt", stale)
    n = len(list((out / "gradient").glob("point_*.pt")))
    assert main(["search", "--strategy", "gradient", "--model-widths", "8", "4", "--data",
                 "synthetic:n=1500,features=16,classes=5", "--epochs", "2", "--float-epochs",
                 "1", "--batch-size", "256", "--polish-epochs", "0", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"replaced the earlier front in {out / 'gradient'} ({n} points)" in printed
    points = sorted((out / "gradient").glob("point_*.pt"))
    assert not stale.exists() and not (out / "gradient.partial").exists()
    assert [str(p) for p in points] == re.findall(r"\S+point_\d{3}\.pt", printed)
    # a folder holding a search of another strategy is refused before any work
    other = tmp_path / "optuna"
    other.mkdir()
    SearchConfig(strategy="optuna").save(other / "search.yaml")
    assert main(["search", "--strategy", "gradient", "--out", str(other), "--no-progress"]) == 2
    assert capsys.readouterr().err.endswith(f"{other} holds a search with --strategy optuna; "
                                            "use another --out for the gradient strategy\n")
    assert sorted(p.name for p in other.iterdir()) == ["search.yaml"]
    assert SearchConfig.load(other / "search.yaml").strategy == "optuna"
    # the saved float model is reused by a rerun in that folder: another architecture is refused
    assert main(["search", "--strategy", "gradient", "--model-widths", "8", "8", "--data",
                 "synthetic:n=1500,features=16,classes=5", "--float-epochs", "1", "--out",
                 str(out), "--no-progress"]) == 2
    assert ("holds a float model for other settings (--batch-size: 256, now 1024, "
            "--model-widths: 8 4, now 8 8); use another --out") in capsys.readouterr().err
    # (a float model trained at another batch size, too)
    assert main(["search", "--strategy", "gradient", "--model-widths", "8", "4", "--data",
                 "synthetic:n=1500,features=16,classes=5", "--float-epochs", "5", "--out",
                 str(out), "--batch-size", "256", "--no-progress"]) == 2
    assert "holds a float model for other settings (--float-epochs: 1, now 5)" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "--strategy", "gradient", "--model-widths", "8", "0"])
    assert "expected an integer >= 1, got '0'" in capsys.readouterr().err


def _ramp_model():
    """1 input -> 2 ReLU neurons (x, 2x) -> 2 outputs; inputs 0.00 .. 9.94 plus 5 outliers at 50."""
    f = torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        f[0].weight.copy_(torch.tensor([[1.0], [2.0]]))
        f[0].bias.zero_()
        f[2].weight.copy_(torch.tensor([[1.0, -0.5], [-1.0, 0.25]]))
        f[2].bias.zero_()
    x = torch.cat([torch.arange(995) / 100.0, torch.full((5,), 50.0)]).unsqueeze(1)
    return f, x


def test_activation_ranges_from_a_quantile_saturate_the_outliers():
    f, x = _ramp_model()
    # maxima (HGQ1): the 5 outliers cost each neuron 3 integer bits more
    gm = GradientBitsMLP(f, x, f0=2.0, input_quantile=1.0)
    gm.train()
    gm(x)
    assert gm.inq.integer.tolist() == [6.0]  # |x| <= 50 < 2**6
    assert gm.body[1].integer.tolist() == [6.0, 7.0]
    # act_quantile 0.99 on 1,000 rows: the 10th largest (the 5 outliers, then 9.94 .. 9.90,
    # which the input grid of step 2**-2 rounds to 10)
    g = GradientBitsMLP(f, x, f0=2.0, input_quantile=1.0, act_quantile=0.99)
    act = g.body[1]
    assert act.max_seen.tolist() == [10.0, 20.0]
    assert act.integer.tolist() == [4.0, 5.0]
    assert act.widths().tolist() == [6.0, 7.0]  # 2 bits fewer each than with maxima
    # 2 bits less on the inputs of the output weights (1, -1 | -0.5, 0.25: 4, 4 | 3, 2 bits)
    assert gm.ebops() - g.ebops() == 2 * (4 + 4 + 3 + 2)
    # training steps leave the ranges alone; `calibrate` (after each epoch) sets them
    g.train()
    g(x / 2)
    assert act.max_seen.tolist() == [10.0, 20.0]
    g.calibrate(x / 2)
    assert act.max_seen.tolist() == [5.0, 10.0] and act.integer.tolist() == [3.0, 4.0]
    g.calibrate(x)
    g.eval()
    with torch.no_grad():
        h = act(g.body[0](g.inq(x)))
        # the outliers (50, 100) saturate at the top of each grid: 2**4 - 2**-2, 2**5 - 2**-2
        assert h[-1].tolist() == [15.75, 31.75]
        assert h[:995].max(0).values.tolist() == [10.0, 20.0]
        m = to_hetq_model(g)
        assert torch.equal(m(x), g(x))
    assert IntegerModel(m, (1,)).compare(x).exact
    # inputs: the 0.99 quantile of |x| (9.89) needs 4 integer bits, the outliers 6
    assert GradientBitsMLP(f, x, input_quantile=0.99).inq.integer.tolist() == [4.0]


def test_ebops_count_what_the_export_declares():
    """Weights into a neuron that cannot change the output cost nothing (the export zeroes
    them), and a weight whose frac bits the export's rescaling pushes below -1 pays for the
    wider type the export declares; the hetq cost of the exported model is the same number."""
    f = torch.nn.Sequential(torch.nn.Linear(1, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        f[0].weight.copy_(torch.tensor([[1.0], [2.0], [1.0]]))
        f[0].bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
        f[2].weight.copy_(torch.tensor([[1.0, -0.5, 0.0], [-1.0, 0.25, 0.0]]))  # 3rd: no use
        f[2].bias.zero_()
    x = (torch.arange(995) / 100.0).unsqueeze(1)
    g = GradientBitsMLP(f, x, f0=2.0, input_quantile=1.0)  # inputs: 4 + 2 + sign = 7 bits
    act, fc2 = g.body[1], g.body[2]
    g.train()
    with torch.no_grad():
        g(x)  # ranges 10, 20, 10.5: 4, 5, 4 integer bits
        act.f.copy_(torch.tensor([-2.0, 2.0, 2.0]))  # neuron 0: step 4, exported x 2**-2
        fc2.f[:, 0] = 0.0  # its outgoing 1, -1: 2 bits, but f 0 - 2 < -1 once rescaled
    assert g.inq.widths().tolist() == [7.0] and act.widths().tolist() == [2.0, 7.0, 6.0]
    # fc1: 7 x (4 + 5), the third neuron's row left out; fc2: 2 x (3 + 3) + 7 x (3 + 2)
    assert g.ebops() == 7 * (4 + 5) + 2 * (3 + 3) + 7 * (3 + 2) == 110
    # HGQ1's exact count: every weight here is +-2**k, one significant bit and no sign
    assert g.ebops(hgq1=True) == 7 * (1 + 1) + 2 * (1 + 1) + 7 * (1 + 1) == 32
    # the training pressure still counts the useless row (7 x 4), so it goes on removing it
    assert float(g.soft_ebops().detach()) == 110 + 7 * 4
    g.eval()
    m = to_hetq_model(g)
    with torch.no_grad():
        assert torch.equal(m(x), g(x))
    assert m[1].weight[2].item() == 0.0 and m[1].bias[2].item() == 0.0
    assert m[3].weight[:, 0].tolist() == [4.0, -4.0]  # scaled by 2**2: f -2 -> type f -1
    assert torch.as_tensor(m[3].quantizers["kernel"].bits)[:, 0].tolist() == [3.0, 3.0]
    assert cost(m, (1,)).summary()["ebops"] == 110
    assert IntegerModel(m, (1,)).compare(x).exact


def test_training_with_quantile_ranges_exports_exactly():
    data, f = _small_setup()
    g, res = train_gradient(f, data, epochs=4, batch_size=256, beta0=1e-4, beta1=1e-2,
                            bits_lr=0.05, act_quantile=0.99, input_quantile=0.99,
                            learn_integer=False, progress=False)
    assert len(res.history) == 4 and res.front
    _assert_front_exports_exactly(g, res.front, data)


def test_quantiles_are_checked(tmp_path, capsys):
    from hetq.cli import main
    from hetq.search.config import SearchConfig

    f, x = _ramp_model()
    with pytest.raises(ValueError, match=r"act_quantile=1.5; expected a fraction in \(0, 1\]"):
        GradientBitsMLP(f, x, act_quantile=1.5)
    with pytest.raises(ValueError, match=r"input_quantile=0; expected a fraction in \(0, 1\]"):
        GradientBitsMLP(f, x, input_quantile=0)
    with pytest.raises(ValueError, match="calibrate needs act_quantile"):
        GradientBitsMLP(f, x).calibrate(x)
    with pytest.raises(ValueError, match=r"search act_quantile=0.0; expected a fraction"):
        SearchConfig(act_quantile=0.0)
    with pytest.raises(ValueError, match=r"search input_quantile=None; expected a value \(not "
                                         r"null; the default is 0.99\)"):
        SearchConfig(input_quantile=None)
    with pytest.raises(SystemExit):
        main(["search", "--strategy", "gradient", "--act-quantile", "2"])
    assert "expected a fraction in (0, 1] or 'max', got '2'" in capsys.readouterr().err
    # 'max' is the HGQ1 way (None); the settings reach search.yaml
    out = tmp_path / "g"
    assert main(["search", "--strategy", "gradient", "--data",
                 "synthetic:n=1500,features=16,classes=5", "--epochs", "2", "--float-epochs",
                 "1", "--batch-size", "256", "--polish-epochs", "0", "--act-quantile", "max",
                 "--input-quantile", "0.95", "--no-learn-integer", "--out", str(out),
                 "--no-progress"]) == 0
    cfg = SearchConfig.load(out / "search.yaml")
    assert cfg.act_quantile is None and cfg.input_quantile == 0.95 and not cfg.learn_integer
    assert SearchConfig().learn_integer  # the default


def test_learned_integer_bits_get_gradient_from_clipped_values():
    """learn_integer: the neurons' integer bits become a parameter; a value clipped at the
    top of the range (2**i - step) passes d/di = ln2 * 2**i to it and nothing to the input,
    a value inside passes 1 to the input and nothing to i; soft and exact EBOPs agree."""
    f, x = _ramp_model()
    g = GradientBitsMLP(f, x, f0=2.0, input_quantile=1.0, act_quantile=0.99)
    act = g.body[1]
    act.learn_integer()
    assert act.i.tolist() == [4.0, 5.0] and act.integer.tolist() == [4.0, 5.0]
    y = torch.tensor([[3.0, 3.0], [20.0, 40.0]], requires_grad=True)
    out = act(y)
    assert out.tolist() == [[3.0, 3.0], [15.75, 31.75]]
    out.sum().backward()
    assert y.grad.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert act.i.grad.tolist() == pytest.approx([math.log(2) * 16, math.log(2) * 32])
    # widths follow the rounded integer bits; at integer values soft EBOPs are exact
    with torch.no_grad():
        act.i.copy_(torch.tensor([2.6, 5.2]))
    assert act.integer.tolist() == [3.0, 5.0] and act.widths().tolist() == [5.0, 7.0]
    with torch.no_grad():
        act.i.copy_(torch.tensor([3.0, 5.0]))
    assert g.ebops() == int(round(float(g.soft_ebops().detach())))


def test_training_with_learned_integer_bits_exports_exactly_and_polish_keeps_them():
    data, f = _small_setup()
    g, res = train_gradient(f, data, epochs=5, batch_size=256, beta0=1e-4, beta1=1e-2,
                            bits_lr=0.05, learn_integer=True, progress=False)
    assert res.front
    _assert_front_exports_exactly(g, res.front, data)
    ints = {tuple(tuple(torch.round(v).tolist()) for k, v in p.state.items() if k.endswith(".i"))
            for p in res.front}
    assert len(ints) > 1  # the integer bits did train: they differ along the front
    best = res.front[-1]
    pol = polish(g, best, data, epochs=2)
    for k in best.state:
        if k.endswith(".i") or k.endswith(".f"):
            assert torch.equal(pol.state[k], best.state[k])
    assert pol.ebops <= best.ebops


class _ConstTeacher(torch.nn.Module):
    """A 'teacher' that gives every row the same logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_distillation_targets_mix_teacher_probabilities_and_labels():
    from hetq.search.gradient.training import _targets

    teacher = torch.nn.Linear(2, 3)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        teacher.bias.zero_()
    teacher.train()
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([2, 0, 1])
    t = _targets(X, y, teacher, 0.25)
    e = math.e
    p1 = torch.tensor([e, 1.0, e]) / (2 * e + 1)  # logits (1, 0, 1)
    p2 = torch.tensor([1.0, e**2, e**2]) / (1 + 2 * e**2)  # logits (0, 2, 2)
    want = torch.stack([0.75 * torch.tensor([0.0, 0.0, 1.0]) + 0.25 / 3,
                        0.75 * torch.tensor([1.0, 0.0, 0.0]) + 0.25 * p1,
                        0.75 * torch.tensor([0.0, 1.0, 0.0]) + 0.25 * p2])
    assert torch.allclose(t, want, atol=1e-6)
    assert torch.allclose(t.sum(1), torch.ones(3))
    assert teacher.training  # its mode is given back
    assert _targets(X, y, None, 0.25) is y  # no teacher: the labels themselves
    with pytest.raises(ValueError, match=r"distill must be in \(0, 1\], got 0"):
        _targets(X, y, teacher, 0)
    with pytest.raises(ValueError, match=r"outputs of shape \(3, 2\) for 3 rows; expected "
                                         r"\(3, classes >= 3\)"):
        _targets(X, y, _ConstTeacher([0.0, 1.0]), 1.0)


def test_training_and_polish_follow_the_teacher():
    """A teacher that always says class 2 (distill 1): the model learns to say class 2 too,
    whatever the labels; the labels alone teach it otherwise."""
    data, f = _small_setup()
    X, y = data.tensors("val")
    kw = dict(epochs=4, batch_size=256, beta0=1e-9, beta1=1e-9, progress=False)
    teacher = _ConstTeacher([0.0, 0.0, 6.0, 0.0, 0.0])
    g, res = train_gradient(f, data, teacher=teacher, **kw)
    g.eval()
    with torch.no_grad():
        said = g(X).argmax(1)
    assert float((said == 2).float().mean()) > 0.99
    g2, _ = train_gradient(f, data, **kw)
    g2.eval()
    with torch.no_grad():
        said2 = g2(X).argmax(1)
    assert float((said2 == 2).float().mean()) < 0.5
    # polish: trained on the labels, a point polished towards the teacher only loses
    # validation accuracy, so it comes back unchanged; towards the labels it gains
    p = max(train_gradient(f, data, **kw)[1].front, key=lambda q: q.val_accuracy)
    assert polish(g2, p, data, epochs=2, lr=1e-2, teacher=teacher) is p
    assert polish(g2, p, data, epochs=2, lr=1e-2).val_accuracy > p.val_accuracy


def test_teacher_reaches_the_polish(monkeypatch):
    import hetq.search.gradient.runs as gm
    import hetq.search.gradient.training as gt

    seen = {}
    monkeypatch.setattr(gt, "polish", lambda g, p, data, **kw: seen.update(kw) or p)
    teacher = _ConstTeacher([0.0, 1.0])
    gt.polish_front(None, [FrontPoint(0, 0.0, 0.5, 10)], None, teacher=teacher, distill=0.5,
                    progress=False)
    assert seen["teacher"] is teacher and seen["distill"] == 0.5
    # train_gradient_runs hands its teacher to the training and to the polish
    got = {}
    monkeypatch.setattr(gm, "train_gradient", lambda f, d, **kw: got.update(kw) or (
        None, gm.GradientResult([FrontPoint(0, 0.0, 0.5, 10)], [], 0.0)))
    monkeypatch.setattr(gm, "polish_front", lambda g, pts, d, **kw: got.update(
        polish=kw) or Polished(pts))
    gm.train_gradient_runs(None, None, polish_epochs=1, teacher=teacher, distill=0.25,
                           progress=False)
    assert got["teacher"] is teacher and got["distill"] == 0.25
    assert got["polish"]["teacher"] is teacher and got["polish"]["distill"] == 0.25


def test_search_cli_distils_from_a_wider_teacher(tmp_path, capsys, runs_kwargs):
    from hetq.cli import main
    from hetq.search.config import SearchConfig
    from hetq.train.checkpoint import load

    seen = runs_kwargs
    out = tmp_path / "g"
    args = ["search", "--strategy", "gradient", "--model-widths", "8", "--data",
            "synthetic:n=1500,features=16,classes=5", "--epochs", "2", "--float-epochs", "1",
            "--batch-size", "256", "--polish-epochs", "1", "--out", str(out), "--no-progress"]
    assert main(args + ["--teacher-widths", "12", "6", "--distill", "0.5"]) == 0
    shapes = [tuple(m.weight.shape) for m in seen["teacher"].modules()
              if isinstance(m, torch.nn.Linear)]
    assert shapes == [(12, 16), (6, 12), (5, 6)] and seen["distill"] == 0.5
    saved = load(out / "teacher.pt")
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(),
                                                 seen["teacher"].state_dict().values()))
    cfg = SearchConfig.load(out / "search.yaml")
    assert cfg.teacher_widths == [12, 6] and cfg.distill == 0.5
    capsys.readouterr()
    # a rerun in that folder reuses the teacher; another one is refused
    assert main(args + ["--teacher-widths", "12"]) == 2
    assert "teacher.pt is a teacher 'jet_mlp' with {'n_in': 16, 'n_out': 5, 'widths': [12, 6]}, " \
           "now 'jet_mlp' with {'n_in': 16, 'n_out': 5, 'widths': [12]}" in \
           capsys.readouterr().err
    # without --teacher-widths, the labels
    assert main(args) == 0 and seen["teacher"] is None
    with pytest.raises(ValueError, match=r"teacher_widths=\[8, 0\]; expected a list of "
                                         "positive hidden-layer widths"):
        SearchConfig(teacher_widths=[8, 0])
    with pytest.raises(ValueError, match=r"distill=1.5; expected a weight in \(0, 1\]"):
        SearchConfig(distill=1.5)


def test_saved_front_points_are_read_back_in_number_order(tmp_path):
    """point_NNN files were read back in name order: point_1000 came between point_100 and
    point_101 once a front had more than 1,000 points."""
    from torch import nn

    from hetq.search.gradient import saved_gradient_rows
    from hetq.train.checkpoint import save_module

    for k in (2, 100, 101, 999, 1000):
        save_module(tmp_path / "gradient" / f"point_{k:03d}.pt", nn.Linear(1, 1), metrics={
            "test": {"accuracy": 0.5}, "ebops": k, "val_accuracy": 0.5, "epoch": k, "beta": 0.0,
            "polished": False, "costs": {"energy_pj": 1.0, "lut": 1.0}})
    assert [r.ebops for r in saved_gradient_rows(tmp_path)] == [2, 100, 101, 999, 1000]
    # a later run's front, saved while it trained and then killed, is pointed out
    (tmp_path / "gradient.progress").mkdir()
    (tmp_path / "gradient.progress" / "run_0.pt").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"gradient\.progress holds the front of a later run "
                                         r"that ended without saving it \(killed\?\); these are "
                                         r"the earlier run's points\. Run the same `hetq "
                                         r"search` command again to save that front"):
        assert len(saved_gradient_rows(tmp_path)) == 5
    # another checkpoint copied among the points (`hetq report` was a KeyError traceback)
    save_module(tmp_path / "gradient" / "point_006.pt", nn.Linear(1, 1), metrics={"loss": 1})
    with pytest.raises(ValueError, match=r"point_006.pt is not a gradient-strategy front point "
                                         r"\(its metrics have no 'epoch'\); move it out of "):
        saved_gradient_rows(tmp_path)


def test_models_and_values_the_strategy_cannot_take_are_named():
    """Found by probing the Python API: bias_frac=0 exported biases of 1 where the model had
    0 (a 1-bit quantized_bits), a negative or fractional one failed only at the export; a
    model whose forward also scaled its inputs lost that step without a word; a float64
    model, a teacher of the wrong width and numpy inputs failed inside torch."""
    from torch import nn

    from hetq.search.gradient import to_hetq_model

    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        f[2].bias.fill_(0.2)
    X = torch.randn(100, 3)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=re.escape(
                f"bias_frac={bad!r}; expected a whole number of fractional bits >= 0")):
            GradientBitsMLP(f, X, bias_frac=bad)
    g = GradientBitsMLP(f, X, bias_frac=0, act_quantile=0.99).eval()
    m = to_hetq_model(g)  # biases round to 0 on the integer grid, and stay 0 in the export
    assert torch.equal(m(X), g(X)) and torch.equal(m[-1].bias_quantizer(m[-1].bias),
                                                   torch.zeros(2))
    for bad, msg in ((float("nan"), "f0=nan; expected the starting fractional bits"),):
        with pytest.raises(ValueError, match=re.escape(msg)):
            GradientBitsMLP(f, X, f0=bad)
    with pytest.raises(ValueError, match=re.escape(
            "x_train: expected a 2-D float tensor of (samples, features), got torch.float32 "
            "of shape (100,)")):
        GradientBitsMLP(f, X[:, 0])
    assert torch.equal(GradientBitsMLP(f, X.numpy())(X), GradientBitsMLP(f, X)(X))

    class Scaled(nn.Sequential):
        def forward(self, x):
            return super().forward(x / 100.0)

    with pytest.raises(ValueError, match=r"Scaled\.forward computes something other than its "
                                         r"layers in order"):
        GradientBitsMLP(Scaled(*f), X)
    # a float64 model trains (its data were float32) and the teacher is named
    data = get_dataset("synthetic:n=600,features=3,classes=2", progress=False)
    d64 = copy.deepcopy(f).double()
    gm, res = train_gradient(d64, data, epochs=2, batch_size=128, progress=False)
    assert res.front and next(d64.parameters()).dtype == torch.float64
    with pytest.raises(ValueError, match=r"the teacher does not take rows of 3 features: "
                                         r"mat1 and mat2 shapes cannot be multiplied"):
        train_gradient(f, data, epochs=1, teacher=nn.Linear(5, 2), progress=False)


def test_a_recovered_front_is_merged_with_the_earlier_saved_one(tmp_path):
    """A run killed early left a front of one epoch-0 point; the next run saved it in place
    of the finished run's better front. Recovery now keeps the earlier points that no
    recovered one beats, and drops the recovered points an earlier one beats."""
    from types import SimpleNamespace

    from hetq.search.config import SearchConfig
    from hetq.search.gradient.strategy import _save_front, saved_gradient_rows

    data = get_dataset("synthetic:n=600,seed=1")
    torch.manual_seed(0)
    fm = build("jet_mlp", widths=[8])
    x = torch.as_tensor(data.tensors("train")[0])
    g = GradientBitsMLP(fm, x)
    ctx, config = SimpleNamespace(data=data), SearchConfig(source_quantizer="int8")

    def point(epoch, val, ebops):
        return FrontPoint(epoch, 1e-6, val, ebops, state=copy.deepcopy(g.state_dict()))

    rows, earlier = _save_front(g, [point(2, 0.6, 5), point(1, 0.9, 10)], ctx, config, tmp_path)
    assert earlier == 0 and [r.point.epoch for r in rows] == [2, 1]
    rows, earlier = _save_front(g, [point(3, 0.5, 20), point(4, 0.95, 30)], ctx, config,
                                tmp_path, merge=True)
    assert earlier == 2
    saved = saved_gradient_rows(tmp_path)  # epoch 3 (0.5 at 20 EBOPs) is beaten by epoch 1
    assert [(r.point.epoch, r.point.val_accuracy, r.ebops) for r in saved] == \
        [(2, 0.6, 5), (1, 0.9, 10), (4, 0.95, 30)]
    assert [r.path for r in rows] == [r.path for r in saved]
    assert sorted(p.name for p in (tmp_path / "gradient").iterdir()) == \
        ["point_000.pt", "point_001.pt", "point_002.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradient"]
    rows, _ = _save_front(g, [point(5, 0.5, 20)], ctx, config, tmp_path)  # a finished run
    assert [r.point.epoch for r in saved_gradient_rows(tmp_path)] == [5]  # replaces them


def test_an_interrupted_rerun_merges_its_front_with_the_earlier_one(tmp_path, capsys,
                                                                   monkeypatch):
    """Ctrl-C a minute into a rerun replaced a finished run's front with the few points the
    rerun had reached."""
    import hetq.search.gradient.strategy as G
    from hetq.search.config import SearchConfig
    from hetq.search.gradient import GradientResult, run_gradient_strategy

    cfg = SearchConfig(data="synthetic:n=600,seed=1", strategy="gradient", epochs=3,
                       float_epochs=1, batch_size=256, polish_epochs=0,
                       model_kwargs={"widths": [8]})
    rows = run_gradient_strategy(cfg, tmp_path, progress=False)
    assert len(rows) >= 2
    capsys.readouterr()
    real = G.train_gradient_runs
    worst = min(rows, key=lambda r: r.point.val_accuracy)

    def interrupted(*a, **k):  # the rerun reached one point, dominated by the earlier front
        g, res = real(*a, **k)
        p = copy.copy(res.front[0])
        p.val_accuracy, p.ebops = worst.point.val_accuracy - 0.01, worst.ebops + 1
        return g, GradientResult([p], res.history[:1], 0.1, interrupted=True)

    monkeypatch.setattr(G, "train_gradient_runs", interrupted)
    again = run_gradient_strategy(cfg, tmp_path, progress=False)
    out = capsys.readouterr().out
    assert (f"merged with the earlier front in {tmp_path / 'gradient'} ({len(rows)} points): "
            f"{len(rows)} points on the front") in out, out
    assert [(r.point.val_accuracy, r.ebops, r.test_accuracy) for r in again] == \
        [(r.point.val_accuracy, r.ebops, r.test_accuracy) for r in rows]
    assert sorted(p.name for p in (tmp_path / "gradient").iterdir()) == \
        [f"point_{k:03d}.pt" for k in range(len(rows))]


def test_an_unreadable_earlier_front_is_set_aside_not_lost(tmp_path, monkeypatch):
    """A damaged earlier point file made the merge fail, and with it the saving of the
    interrupted run's points; the earlier front is now kept aside, unread."""
    import hetq.search.gradient.strategy as G
    from hetq.search.config import SearchConfig
    from hetq.search.gradient import GradientResult, run_gradient_strategy

    cfg = SearchConfig(data="synthetic:n=600,seed=1", strategy="gradient", epochs=2,
                       float_epochs=1, batch_size=256, polish_epochs=0,
                       model_kwargs={"widths": [8]})
    rows = run_gradient_strategy(cfg, tmp_path, progress=False)
    (tmp_path / "gradient" / "point_000.pt").write_bytes(b"damaged")
    before = sorted(p.name for p in (tmp_path / "gradient").iterdir())
    real = G.train_gradient_runs
    monkeypatch.setattr(G, "train_gradient_runs", lambda *a, **k: (
        lambda g, res: (g, GradientResult(res.front, res.history, 0.1, interrupted=True)))(
            *real(*a, **k)))
    with pytest.warns(UserWarning) as seen:
        again = run_gradient_strategy(cfg, tmp_path, progress=False)
    aside = tmp_path / "gradient.unread"
    assert any(str(w.message) == (
        f"the earlier front in {tmp_path / 'gradient'} could not be read ({tmp_path / 'gradient'}"
        "/point_000.pt is not a readable hetq checkpoint (could not find MARK)); it is kept as "
        f"{aside}, not merged with the new points") for w in seen), [str(w.message) for w in seen]
    assert sorted(p.name for p in aside.iterdir()) == before
    assert len(again) == len(rows)
    assert sorted(p.name for p in (tmp_path / "gradient").iterdir()) == \
        [f"point_{k:03d}.pt" for k in range(len(again))]
