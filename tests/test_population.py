"""Population training: K members trained together equal K separate `fit` runs."""

import copy

import pytest
import torch
from torch import nn

from hetq.data import get_dataset
from hetq.data.dataset import Dataset
from hetq.models import build
from hetq.models.jet import PRESETS
from hetq.models.resize import resize_model
from hetq.quant import quantized_bits, quantized_relu
from hetq.quant.convert import quantize_model
from hetq.quant.layers import QActivation, QDense
from hetq.search.sparsity import MagnitudePruner
from hetq.train import fit
from hetq.train.metrics import classification_metrics
from hetq.train.population import Population, extract, fit_population
from hetq.train.population.fit import _classification_metrics
from hetq.train.population.quantizers import _Plain

HETERO = {  # a ternary layer, an auto_po2-scaled layer and different bit widths in one model
    "fc1": {"kernel": "ternary(alpha=1)", "bias": "quantized_bits(8,3,alpha=1)"},
    "ReLU": {"activation": "quantized_relu(4,1)"},
    "fc2": {"kernel": "quantized_bits(4,0,alpha=1)"},
    "fc3": {"kernel": "quantized_bits(3,0,alpha=1)"},
    "output": {"kernel": "quantized_bits(8,1,alpha='auto_po2')"},
}
EPOCHS = 3


class Pruned(Exception):
    pass


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is as fast, and immune to OpenMP barrier stalls on a loaded
    machine (both the population and the reference runs use it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    """A small slice of the embedded jets sample: 4 steps of 256 per epoch."""
    d = get_dataset("jets-sim")
    return Dataset("jets-small", d.X_train[:1024], d.y_train[:1024], d.X_val[:600],
                   d.y_val[:600], d.X_test[:600], d.y_test[:600], d.features, d.classes)


def members():
    """Seven jet MLPs: fixed point at two widths of bits, the heterogeneous model (ternary,
    auto_po2), float, a narrower model, one that a search pruner stops after epoch 0, and a
    float one that early stopping ends."""
    torch.manual_seed(0)
    f = build("jet_mlp")
    return [quantize_model(f, PRESETS["q6"]), quantize_model(f, PRESETS["bf"]),
            quantize_model(f, HETERO), copy.deepcopy(f),
            quantize_model(resize_model(f, {"fc1": 0.5, "fc2": 0.75}), PRESETS["q6"]),
            quantize_model(f, PRESETS["q6"]), copy.deepcopy(f)]


# per member: lr, seed (batch order), sparsity, weight decay, patience
# member 6 (EARLY): a learning rate too small to change any float32 weight, so its validation
# loss stays the same and patience 1 stops it after its second epoch
LR = [1e-3, 2e-3, 1e-3, 3e-3, 1e-3, 2e-3, 1e-30]
SEED = [0, 0, 0, 0, 1, 0, 0]
SPARSITY = [None, {"fc1": 0.5, "fc2": 0.25}, None, None, {"fc2": 0.3}, None, None]
WD = [0.0, 0.0, 1e-3, 0.0, 0.0, 0.0, 0.0]
PATIENCE = [None, None, None, None, None, None, 1]
EARLY = 6
PRUNED = 5  # the report stops this member after epoch 0


def _params(m):
    return dict(m.state_dict())


def _max_diff(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    return max(float((pa[k].float() - pb[k].float()).abs().max()) for k in pa)


@pytest.fixture(scope="module")
def trained(data):
    pop_models, seq_models = members(), members()
    calls = []

    def report(k, epoch, val):
        calls.append((k, epoch))
        return k == PRUNED and epoch == 0

    res = fit_population(pop_models, data, epochs=EPOCHS, batch_size=256, lr=LR, seed=SEED,
                         sparsity=SPARSITY, weight_decay=WD, patience=PATIENCE, report=report)
    seq = []
    for k, m in enumerate(seq_models):
        pruner = MagnitudePruner(m, SPARSITY[k], EPOCHS) if SPARSITY[k] else None

        def raise_at_0(epoch, val, k=k):
            if k == PRUNED and epoch == 0:
                raise Pruned
        try:
            seq.append(fit(m, data, epochs=EPOCHS, batch_size=256, lr=LR[k], seed=SEED[k],
                           weight_decay=WD[k], patience=PATIENCE[k], pruner=pruner,
                           report=raise_at_0, progress=False))
        except Pruned:
            seq.append(None)
    return pop_models, seq_models, res, seq, calls


def test_population_weights_equal_separate_trainings(trained):
    pop_models, seq_models, res, _, _ = trained
    start = members()
    for k, (a, b) in enumerate(zip(pop_models, seq_models)):
        assert _max_diff(a, b) < 1e-5, k
        if k != EARLY:
            assert _max_diff(a, start[k]) > 1e-3, k  # the weights really moved


def test_population_outputs_and_metrics_equal_separate_trainings(trained, data):
    pop_models, seq_models, res, seq, _ = trained
    x, _ = data.tensors("test")
    for k, (a, b) in enumerate(zip(pop_models, seq_models)):
        with torch.no_grad():
            assert torch.allclose(a(x), b(x), atol=1e-5), k
        if seq[k] is None:
            continue
        assert res[k].best_epoch == seq[k].best_epoch
        assert res[k].stopped_early == seq[k].stopped_early
        assert len(res[k].history) == len(seq[k].history)
        for ra, rb in zip(res[k].history, seq[k].history):
            assert ra.keys() == rb.keys()
            for key in ra:
                assert ra[key] == pytest.approx(rb[key], abs=1e-5), (k, key)
    assert "val_auc_mean" in res[0].history[0]  # every metric of the task, as fit reports


def test_early_stopped_pruned_and_sparse_members(trained):
    pop_models, seq_models, res, seq, calls = trained
    assert res[EARLY].stopped_early and len(res[EARLY].history) == 2
    assert res[EARLY].best_epoch == 0 and seq[EARLY].stopped_early
    assert res[PRUNED].stopped_by_report and len(res[PRUNED].history) == 1
    assert not res[0].stopped_by_report and len(res[0].history) == EPOCHS
    # a finished member costs nothing more: no further epochs, no further reports
    assert (PRUNED, 1) not in calls and (EARLY, 1) in calls and (EARLY, 2) not in calls
    assert (0, EPOCHS - 1) in calls
    # the sparsity masks: exactly the final sparsity, the same zeros as MagnitudePruner's
    assert res[1].sparsity == pytest.approx({"fc1": 0.5, "fc2": 0.25}, abs=1e-3)
    for k, name in ((1, "fc1"), (1, "fc2"), (4, "fc2")):
        wa = getattr(pop_models[k], name).weight
        wb = getattr(seq_models[k], name).weight
        assert torch.equal(wa == 0, wb == 0), (k, name)
    assert res[0].sparsity == {}


def test_a_stopped_member_leaves_the_stack(data, monkeypatch):
    from hetq.train.population import layers as population

    sizes = []
    forward = population._Dense.forward

    def spy(self, x):
        if self.name == "fc1" and self.training:
            sizes.append(self.weight.shape[0])
        return forward(self, x)

    monkeypatch.setattr(population._Dense, "forward", spy)
    res = fit_population(members()[:3], data, epochs=2, batch_size=512,
                         report=lambda k, epoch, val: k == 1)
    assert sizes == [3, 3, 2, 2]  # 2 steps per epoch; member 1 left after epoch 0
    assert [r.stopped_by_report for r in res] == [False, True, False]
    assert "report returned True after epoch 0" in res[1].stop_reason


def test_a_report_that_cannot_be_written_is_an_error_not_a_stop(data):
    """Any error of report() stopped the member as pruned: a full disk under the study's
    journal became a trial stopped 'by report'."""
    import errno

    def full(k, epoch, val):
        raise OSError(errno.ENOSPC, "No space left on device", "study.journal")

    with pytest.raises(OSError, match="No space left on device"):
        fit_population(members()[:2], data, epochs=1, batch_size=512, report=full)


def test_extract_is_exact():
    ms = members()
    pop = Population(ms)
    x = torch.randn(300, 16)
    with torch.no_grad():
        out = pop(x)
        for k, m in enumerate(ms):
            e = extract(pop, k)
            assert type(e) is type(m)
            assert [type(a) for a in e.modules()] == [type(a) for a in m.modules()]
            assert all(torch.equal(a, b) for a, b in zip(_params(e).values(),
                                                         _params(m).values()))
            assert torch.equal(e(x), m(x))
            assert torch.equal(out[k, :, :pop.n_out[k]], m(x))


def test_train_a_population_object_then_extract(data):
    a, b = members()[:3], members()[:3]
    pop = Population(a)
    fit_population(pop, data, epochs=1, batch_size=256, lr=LR[:3])
    fit_population(b, data, epochs=1, batch_size=256, lr=LR[:3])
    assert pop.size == 3
    for k in range(3):
        assert torch.equal(extract(pop, k).fc1.weight, b[k].fc1.weight)
        assert _max_diff(a[k], members()[k]) == 0  # the models given stay untouched


def test_select_and_group_give_the_same_values_and_gradients():
    ms = members()
    pops = [Population(ms, mixed="group"), Population(ms, mixed="select")]
    x = torch.randn(64, 16)
    outs, grads = [], []
    for p in pops:
        p.train()
        out = p(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([q.grad for q in p.stacked_parameters()])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(g, h) for g, h in zip(*grads))


def test_batched_fixed_point_equals_each_member_and_tensor_bits():
    """One call with [K, 1] constants gives each member's own values and gradients, and the
    values of the core quantizer with tensor-valued bits/integer [K, 1, 1]."""
    bits, integer = [3, 4, 6, 8], [0, 1, 2, 0]
    x = torch.randn(4, 32, 16) * 3
    for k, (b, i) in enumerate(zip(bits, integer)):  # grid points, the relu's top among them
        x[k].view(-1)[:300] = torch.arange(300) * 2.0 ** (i - b)  # (its gradient there was 0)
    x.requires_grad_()
    for cls in (quantized_bits, quantized_relu):
        qs = [cls(b, i) for b, i in zip(bits, integer)]
        y = _Plain(qs)(x)
        y.backward(torch.arange(x.numel(), dtype=torch.float32).view(x.shape))
        g = x.grad.clone()
        x.grad = None
        for k, q in enumerate(qs):
            xk = x[k].detach().clone().requires_grad_()
            yk = q(xk)
            yk.backward(torch.arange(x.numel(), dtype=torch.float32).view(x.shape)[k])
            assert torch.equal(y[k], yk), (cls.name, k)
            assert torch.equal(g[k], xk.grad), (cls.name, k)
        tensor_q = cls(torch.tensor(bits, dtype=torch.float32).view(4, 1, 1),
                       torch.tensor(integer, dtype=torch.float32).view(4, 1, 1))
        with torch.no_grad():
            assert torch.equal(y, tensor_q(x)), cls.name


def test_batched_validation_metrics_equal_classification_metrics():
    """One sort for all members gives exactly (==) the metrics of each member alone, ties in
    the scores included."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 2000, 5, generator=g) * 3, dim=-1)
    probs[1] = (probs[1] * 16).round() / 16  # many ties
    y = torch.randint(0, 5, (2000,), generator=g).numpy()
    classes = ["g", "q", "t", "w", "z"]
    got = _classification_metrics(probs, y, classes, 1e-2)
    for r in range(3):
        assert got[r] == classification_metrics(probs[r].numpy(), y, classes, 1e-2)


def test_unsupported_layers_and_mismatches_are_named():
    a = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm1d\) is not supported"):
        Population([a, copy.deepcopy(a)])
    b = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="must share the layer sequence"):
        Population([a, b])
    # input quantizers, and a quantized activation and a float one in the same layer
    c = nn.Sequential(QActivation("quantized_bits(6,2,alpha=1)"), QDense(4, 3),
                      QActivation("quantized_relu(4,1)"), nn.Linear(3, 2))
    d = nn.Sequential(QActivation("quantized_bits(4,1,alpha=1)"), QDense(4, 3), nn.Tanh(),
                      nn.Linear(3, 2))
    pop = Population([c, d])
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(pop(x)[1], d(x)) and torch.equal(pop(x)[0], c(x))
    with pytest.raises(ValueError, match="sparsity given for 'fc9'"):
        fit_population(members()[:2], None, sparsity=[{"fc9": 0.5}, None])
    # fit's checks of the training settings, naming the member when given per member
    with pytest.raises(ValueError, match=r"lr must be a learning rate > 0, got nan \(member 1\)"):
        fit_population(members()[:2], None, lr=[1e-3, float("nan")])
    with pytest.raises(ValueError, match=r"patience must be >= 1 epoch \(or None: never stop "
                                         r"early\), got 0$"):
        fit_population(members()[:2], None, patience=0)
    with pytest.raises(ValueError, match=r"weight_decay must be >= 0, got -1.0 \(member 0\)"):
        fit_population(members()[:2], None, weight_decay=[-1.0, 0.0])
    # ... all of them, as given (epochs 2.5 was a TypeError, patience 1.5 and seed 1.7 became
    # 1, seed -1 and lr '0.1' were taken, seed 2**64 failed inside torch)
    for kwargs, msg in ((dict(epochs=2.5), r"epochs must be a whole number, got 2.5 \(float\)"),
                        (dict(batch_size=True), "batch_size must be a whole number, got True"),
                        (dict(patience=1.5), r"patience must be a whole number of epochs "
                                             r"\(or None\), got 1.5"),
                        (dict(seed=1.7), r"seed must be a whole number from 0 to 2\*\*63 - 1, "
                                         "got 1.7$"),
                        (dict(seed=[0, -1]), r"got -1 \(member 1\)$"),
                        (dict(seed=2 ** 64), "got 18446744073709551616$"),
                        (dict(lr="0.1"), r"lr must be a number, got '0.1' \(str\)")):
        with pytest.raises(ValueError, match=msg):
            fit_population(members()[:2], None, **kwargs)
    # numpy and 0-d tensor scalars are numbers (np.int64 seeds failed inside torch)
    import numpy as np

    from hetq.data import get_dataset

    small = get_dataset("synthetic:n=300,seed=2")
    res = fit_population(members()[3:5], small, epochs=1, batch_size=128,
                         seed=list(np.arange(2)), lr=torch.tensor(1e-3, dtype=torch.float64))
    ref = fit_population(members()[3:5], small, epochs=1, batch_size=128, seed=[0, 1], lr=1e-3)
    assert all(torch.equal(a.state[k], b.state[k]) for a, b in zip(res, ref) for k in a.state)
    with pytest.raises(ValueError, match=r"got -1 \(member 1\)$"):  # (an array is per member)
        fit_population(members()[:2], None, seed=np.array([0, -1]))
    one, two = members()[3], members()[3]  # (fit took np.int64 past its check, then failed
    fit(one, small, epochs=np.int64(1), batch_size=128, seed=np.int64(1),  # inside torch,
        lr=torch.tensor(1e-3, dtype=torch.float64), progress=False)  # and refused a tensor lr)
    fit(two, small, epochs=1, batch_size=128, seed=1, lr=1e-3, progress=False)
    assert _max_diff(one, two) == 0.0


def test_members_that_do_not_fit_the_data_or_float32_are_named(data):
    """Each member is zero-padded to the widest in the stack: one of another input width, or
    with more outputs than classes, trained without a word (on the first features, or as a
    7-way classifier); a float64 member trained in float32."""
    small = build("jet_mlp", n_in=8, widths=[8, 8, 8])
    with pytest.raises(ValueError, match=r"member 1: the model does not take the samples of "
                                         r"jets-small \(shape \(16,\)\)"):
        fit_population([members()[0], small], data, epochs=1)
    seven = build("jet_mlp", n_out=7)
    with pytest.raises(ValueError, match=r"member 1: classify task: the model gives outputs of "
                                         r"shape \(7,\) per sample; the data has 5 classes"):
        fit_population([members()[0], seven], data, epochs=1)
    with pytest.raises(ValueError, match=r"member 0 has torch.float64 parameters; a population "
                                         r"trains in float32: convert it \(.float\(\)\)"):
        Population([members()[0].double()])


def test_progress_shows_the_epochs_of_a_population(data, capsys):
    """A search with --population printed nothing while a batch trained (minutes)."""
    fit_population(members()[:2], data, epochs=2, batch_size=512, progress=True)
    err = capsys.readouterr().err
    assert "population of 2:   0% 0/2" in err and "population of 2: 100% 2/2" in err
    fit_population(members()[:2], data, epochs=1, batch_size=512)
    assert capsys.readouterr().err == ""


def test_a_last_batch_of_one_sample_joins_the_one_before_as_in_fit(data):
    """fit merges a one-sample last batch into the batch before (`batch_bounds`); the
    population took an extra step on the one sample (weights 3e-3 apart after 2 epochs)."""
    n = len(data.y_train)
    batch = (n - 1) // 3
    assert n % batch == 1
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))
    b = copy.deepcopy(a)
    fit(a, data, epochs=2, batch_size=batch, seed=3, progress=False)
    res = fit_population([b], data, epochs=2, batch_size=batch, seed=3)
    b.load_state_dict(res[0].state)
    assert _max_diff(a, b) < 1e-6 and _max_diff(a, copy.deepcopy(b).requires_grad_()) < 1e-6


def test_search_with_population_counts_exactly(tmp_path):
    from hetq.search.config import SearchConfig
    from hetq.search.driver import run_search
    from hetq.search.results import load_run, trial_model
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
