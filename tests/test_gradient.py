"""Gradient-based bit-widths: beta ramp, Pareto checkpoints, surrogate gradient, export."""

import math

import pytest
import torch

from hetq.data import get_dataset
from hetq.export import IntegerModel
from hetq.models import build
from hetq.search.gradient import (
    FrontPoint,
    GradientBitsMLP,
    ParetoCheckpoints,
    _surrogate,
    beta_at,
    to_hetq_model,
    train_gradient,
    weight_widths,
)
from hetq.train import evaluate


def test_beta_ramp_is_geometric():
    assert beta_at(0, 101, 1e-6, 1e-4) == pytest.approx(1e-6)
    assert beta_at(50, 101, 1e-6, 1e-4) == pytest.approx(1e-5)
    assert beta_at(100, 101, 1e-6, 1e-4) == pytest.approx(1e-4)
    assert beta_at(500, 101, 1e-6, 1e-4) == pytest.approx(1e-4)  # clamped
    assert beta_at(0, 1, 1e-6, 1e-4) == 1e-4


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


def _small_setup():
    data = get_dataset("synthetic")
    torch.manual_seed(0)
    f = build("jet_mlp", n_in=data.n_features, n_out=data.n_classes, widths=(16, 8))
    return data, f


def test_ebops_soft_matches_exact_at_integer_f():
    data, f = _small_setup()
    X, _ = data.tensors("train")
    g = GradientBitsMLP(f, X, f0=4.0)
    assert g.ebops() == int(round(float(g.soft_ebops().detach())))
    assert g.ebops() > 0


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
    X, _ = data.tensors("test")
    for p in res.front:
        m = to_hetq_model(g, p.state)
        g.load_state_dict(p.state)
        g.eval()
        with torch.no_grad():
            assert torch.equal(m(X), g(X))  # the ordinary hetq model computes the same
        eng = IntegerModel(m, (data.n_features,))
        assert eng.compare(X).exact
        # exact EBOPs of the rounded model equal the recorded ones
        assert g.ebops() == p.ebops
    assert 0 <= evaluate(m, data)["accuracy"] <= 1


def test_rejects_non_mlp():
    data, _ = _small_setup()
    X, _ = data.tensors("train")
    with pytest.raises(ValueError, match="Linear/ReLU"):
        GradientBitsMLP(torch.nn.Sequential(torch.nn.Tanh()), X)


def test_strategy_writes_loadable_front_checkpoints(tmp_path):
    from hetq import load
    from hetq.search.config import SearchConfig
    from hetq.search.gradient import run_gradient_strategy

    cfg = SearchConfig(data="synthetic", strategy="gradient", epochs=3, float_epochs=1,
                       batch_size=256, beta0=1e-5, beta1=1e-3,
                       model_kwargs={"n_in": 16, "n_out": 5})
    rows = run_gradient_strategy(cfg, tmp_path, progress=False)
    assert rows and all(r.ebops > 0 for r in rows)
    data = get_dataset("synthetic")
    m = load(rows[-1].path)  # an ordinary hetq model in a checkpoint
    assert evaluate(m, data)["accuracy"] == pytest.approx(rows[-1].test_accuracy)
