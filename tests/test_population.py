"""Population training: K members trained together equal K separate trainings."""

import copy

import pytest
import torch
from torch import nn

from hetq.data import get_dataset
from hetq.models import build
from hetq.models.jet import PRESETS
from hetq.models.resize import resize_model
from hetq.quant.convert import quantize_model
from hetq.train import fit
from hetq.train.population import Population, fit_population

HETERO = {
    "fc1": {"kernel": "ternary(alpha=1)", "bias": "quantized_bits(8,3,alpha=1)"},
    "ReLU": {"activation": "quantized_relu(4,1)"},
    "fc2": {"kernel": "quantized_bits(4,0,alpha=1)"},
    "fc3": {"kernel": "quantized_bits(3,0,alpha=1)"},
    "output": {"kernel": "quantized_bits(8,1,alpha='auto_po2')"},
}


@pytest.fixture(scope="module")
def data():
    return get_dataset("jets-sim")


def members():
    torch.manual_seed(0)
    f = build("jet_mlp")
    return [quantize_model(f, PRESETS["q6"]), quantize_model(f, PRESETS["bf"]),
            quantize_model(f, HETERO), copy.deepcopy(f),
            quantize_model(resize_model(f, {"fc1": 0.5, "fc2": 0.75}), PRESETS["q6"])]


def _max_param_diff(a, b):
    return max(float((pa - pb).abs().max()) for pa, pb in
               zip(a.state_dict().values(), b.state_dict().values()))


def test_population_equals_separate_trainings(data):
    pop_models, seq_models = members(), members()
    lrs = [1e-3, 2e-3, 1e-3, 3e-3, 1e-3]
    res = fit_population(pop_models, data, epochs=2, lr=lrs, seed=0)
    seq_res = [fit(m, data, epochs=2, lr=lr, seed=0, progress=False)
               for m, lr in zip(seq_models, lrs)]
    x, _ = data.tensors("test")
    for k, (a, b) in enumerate(zip(pop_models, seq_models)):
        assert _max_param_diff(a, b) < 1e-3, k
        with torch.no_grad():
            agree = (a(x).argmax(1) == b(x).argmax(1)).float().mean()
        assert agree > 0.999, k
        assert res[k].best_epoch == seq_res[k].best_epoch
        assert res[k].best_val_loss == pytest.approx(seq_res[k].best_val_loss, abs=1e-4)
        # the trained weights really moved
        assert _max_param_diff(a, members()[k]) > 1e-3


def test_pruned_member_stops_and_matches_a_shorter_training(data):
    pop_models, ref = members()[:3], members()[2]
    calls = []

    def report(k, epoch, val):
        calls.append((k, epoch))
        return k == 2 and epoch == 0  # the pruner stops member 2 after its first epoch

    res = fit_population(pop_models, data, epochs=3, lr=1e-3, seed=0, report=report)
    assert res[2].stopped_by_report and len(res[2].history) == 1
    assert len(res[0].history) == 3 and not res[0].stopped_by_report
    assert (2, 1) not in calls and (0, 2) in calls  # a stopped member costs nothing more
    fit(ref, data, epochs=1, lr=1e-3, seed=0, progress=False)
    assert _max_param_diff(pop_models[2], ref) < 1e-4


def test_extract_is_exact():
    ms = members()
    pop = Population(ms)
    x = torch.randn(300, 16)
    with torch.no_grad():
        out = pop(x)
        for r, m in enumerate(ms):
            e = pop.extract(r)
            assert type(e) is type(m)
            assert torch.equal(e(x), m(x))
            n = pop.n_out[r]
            assert torch.equal(out[r, :, :n], m(x))


def test_unsupported_layer_is_named():
    a = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    with pytest.raises(ValueError, match=r"layer '1' \(Tanh\) is not supported"):
        Population([a, copy.deepcopy(a)])
    b = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="must share the layer sequence"):
        Population([a, b])


def test_search_with_population_counts_exactly(tmp_path):
    from hetq.search.config import SearchConfig
    from hetq.search.driver import load_run, run_search, trial_model
    from hetq.train import evaluate

    cfg = SearchConfig(data="synthetic", trials=6, epochs=1, float_epochs=1, population=4,
                       model_kwargs={"n_in": 16, "n_out": 5})
    run_search(cfg, tmp_path, progress=False)
    _, study = load_run(tmp_path)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(study.trials) == 6 and len(done) == 6  # batches of 4 + 2, nothing extra
    assert len({str(t.params) for t in done}) >= 2
    data = get_dataset("synthetic")
    t = done[-1]
    m = trial_model(tmp_path, t.number)  # the stored weights reproduce the recorded metric
    assert evaluate(m, data, split="val")["accuracy"] == pytest.approx(
        t.user_attrs["metrics"]["val"]["accuracy"])
