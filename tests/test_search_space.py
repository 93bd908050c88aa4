"""Search space (limit semantics, Optuna parameters) and objectives (forgiving factor, Pareto)."""

import math
import re
import warnings
from collections import OrderedDict

import pytest
from torch import nn

from hetq.search.objectives import Constraints, ForgivingFactor, hypervolume_2d, pareto_front
from hetq.search.space import SearchSpace


def mlp():
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(16, 64)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(64, 32)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(32, 32)), ("relu3", nn.ReLU()),
        ("output", nn.Linear(32, 5)),
    ]))


# -- forgiving factor ------------------------------------------------------------------------
def test_forgiving_factor_reward_for_each_rate_step():
    ff = ForgivingFactor("energy", delta_p=8, delta_n=8, rate=2)
    # 4x cheaper = two halvings -> +16 %
    assert ff.delta(25.0, 100.0) == pytest.approx(0.16)
    assert ff.score(0.7, 25.0, 100.0) == pytest.approx(0.7 * 1.16)
    assert ff.delta(100.0, 100.0) == 0.0


def test_forgiving_factor_delta_n_penalises_growth():
    ff = ForgivingFactor("bits", delta_p=8, delta_n=4, rate=2)
    assert ff.delta(200.0, 100.0) == pytest.approx(-0.04)  # one doubling, delta_n = 4 %
    assert ff.delta(50.0, 100.0) == pytest.approx(0.08)  # one halving, delta_p = 8 %


def test_forgiving_factor_stress_applies_to_energy_goal_too():
    # the reference ignores stress for the energy goal (a bug); hetq applies it
    plain = ForgivingFactor("energy", 8, 8, 2, stress=1.0)
    stressed = ForgivingFactor("energy", 8, 8, 2, stress=0.5)
    assert plain.delta(25.0, 100.0) == pytest.approx(0.16)
    assert stressed.delta(25.0, 100.0) == pytest.approx(0.08)  # log2(50/25) = 1 step


def test_forgiving_factor_bad_values():
    with pytest.raises(ValueError, match="goal 'speed'"):
        ForgivingFactor("speed")
    with pytest.raises(ValueError, match="rate must be > 1"):
        ForgivingFactor(rate=1.0)
    with pytest.raises(ValueError, match="costs must be > 0"):
        ForgivingFactor().delta(0.0, 1.0)


def test_constraints():
    c = Constraints(min_reduction=4.0, max_metric_loss=0.05)
    # 5x reduction, 2 % loss -> both satisfied (values <= 0)
    v = c.values(0.686, 20.0, 100.0, 0.7)
    assert v[0] == pytest.approx(-1.0) and v[1] == pytest.approx(0.02 - 0.05)
    assert c.satisfied(0.686, 20.0, 100.0, 0.7)
    assert not c.satisfied(0.6, 20.0, 100.0, 0.7)  # 14 % loss
    assert not c.satisfied(0.7, 50.0, 100.0, 0.7)  # only 2x


def test_pareto_front_and_hypervolume():
    pts = [(0.70, 100.0), (0.65, 10.0), (0.60, 50.0), (0.72, 1000.0), (0.65, 10.0)]
    assert pareto_front(pts) == [1, 0, 3]
    # one point: rectangle [log10(10), log10(1000)] x [0.5, 0.7] = 2 * 0.2
    assert hypervolume_2d([(0.7, 10.0)], 1000.0, 0.5) == pytest.approx(0.4)
    # two points: [1,2] x 0.1 + [2,3] x 0.2
    hv = hypervolume_2d([(0.6, 10.0), (0.7, 100.0)], 1000.0, 0.5)
    assert hv == pytest.approx(0.1 + 0.2)
    assert hypervolume_2d([(0.4, 10.0)], 1000.0, 0.5) == 0.0
    assert math.isclose(hypervolume_2d([(0.7, 10.0)], 1000.0, 0.5, log_cost=False), 990 * 0.2)


# -- search space ----------------------------------------------------------------------------
def test_default_space_has_one_parameter_per_layer_field():
    space = SearchSpace(mlp())
    names = [p.name for p in space.params]
    assert names == ["fc1/kernel", "fc1/bias", "relu1/activation", "fc2/kernel", "fc2/bias",
                     "relu2/activation", "fc3/kernel", "fc3/bias", "relu3/activation",
                     "output/kernel", "output/bias"]
    assert len(space.params[0].choices) == 8  # the reference's default kernel map
    dists = space.distributions()
    assert set(dists) == set(names)


def test_limit_max_bits_regex_groups_and_types():
    limit = {
        "Dense": [4, 4],                 # type key (QKeras alias of Linear), padded with 8
        "^relu[12]$": [4],               # one shared choice for relu1 and relu2
        "output": [["quantized_bits(8,0,1,alpha=1.0)"], 8],  # exact name, explicit list
    }
    space = SearchSpace(mlp(), limit=limit)
    by_name = {p.name: p for p in space.params}
    assert set(by_name) == {"fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias", "fc3/kernel",
                            "fc3/bias", "^relu[12]$/activation", "output/bias"}
    assert by_name["^relu[12]$/activation"].targets == [("relu1", "activation"),
                                                       ("relu2", "activation")]
    # kernel candidates with bits <= 4
    assert set(by_name["fc1/kernel"].choices) == {
        "binary(alpha='auto_po2')", "stochastic_binary('auto_po2')",
        "ternary('auto_po2')", "stochastic_ternary('auto_po2')",
        "quantized_bits(2,1,1,alpha=1.0)", "quantized_bits(4,0,1,alpha=1.0)",
        "quantized_po2(4,1)"}
    # output kernel has one choice -> fixed, not a parameter; relu3 is matched by nothing -> float
    assert ("output", "kernel", "quantized_bits(8,0,1,alpha=1.0)") in space.fixed
    cand = space.candidate({"^relu[12]$/activation": "quantized_relu(3,1)"})
    assert cand.quant_config["relu1"] == {"activation": "quantized_relu(3,1)"}
    assert cand.quant_config["relu2"] == {"activation": "quantized_relu(3,1)"}
    assert "relu3" not in cand.quant_config
    assert cand.quant_config["output"]["kernel"] == "quantized_bits(8,0,1,alpha=1.0)"
    assert space.params_of(cand)["^relu[12]$/activation"] == "quantized_relu(3,1)"
    # a scalar is [kernel] (the rest padded), and bit counts may be floats from YAML
    same = SearchSpace(mlp(), limit={**limit, "Dense": 4.0})
    assert same.params[0].choices == by_name["fc1/kernel"].choices


def test_limit_default_only_pads_and_quantizes_no_layer_itself():
    """AutoQKeras (spec 5.3): layers whose type no key names and whose name no key matches
    stay float; "default" only pads the type keys' short lists. Here every layer no key
    matched was searched under "default"."""
    with pytest.warns(UserWarning, match=re.escape(
            "search space: layers 'relu1', 'relu2', 'relu3' match no limit key, so they stay "
            "float (as in AutoQKeras); add a key for them (a name, regex or layer type) to "
            "search them")):  # (it was said nowhere, and the model then cannot be exported)
        space = SearchSpace(mlp(), limit={"Linear": [8, 8, 4], "default": [2, 2, 2]})
    assert {p.name for p in space.params} == {f"{n}/{f}" for n in ("fc1", "fc2", "fc3",
                                                                   "output")
                                              for f in ("kernel", "bias")}
    padded = SearchSpace(mlp(), limit={"Linear": [2], "default": [8, 4, 4]})
    bias = {p.name: p for p in padded.params}["fc1/bias"]  # padded from "default": <= 4 bits
    assert set(bias.choices) == {"quantized_bits(4,0,1)", "quantized_po2(4,8)"}


def test_limit_key_matching_nothing_warns():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        SearchSpace(mlp(), limit={"Linear": [4], "^conv": [4]})
    assert any("'^conv' matches no layer" in str(x.message) for x in w)


def test_empty_space_and_bad_candidate_are_clear_errors():
    with pytest.raises(ValueError, match="search space is empty"):
        SearchSpace(nn.Sequential(nn.Flatten()))
    one = {"kernel": {"quantized_bits(4,0,1,alpha=1)": 4}, "bias": {"quantized_bits(4,0,1)": 4},
           "activation": {"quantized_relu(4,0)": 4}}
    with pytest.raises(ValueError, match="every field has a single choice"):
        SearchSpace(mlp(), quantization_config=one)
    with pytest.raises(ValueError, match="does not parse.*quantized_bitz"):
        SearchSpace(mlp(), quantization_config={"kernel": {"quantized_bitz(4)": 4}})
    with pytest.raises(ValueError, match="no kernel candidate fits"):
        SearchSpace(mlp(), limit={"Linear": [0]})


def test_width_and_sparsity_parameters():
    space = SearchSpace(mlp(), tune_filters="layer", sparsity=[0.0, 0.5],
                        learning_rates=[1e-3, 3e-3])
    d = space.distributions()
    # the classifier (last weight layer) never changes width
    assert {n for n in d if n.startswith("width/")} == {"width/fc1", "width/fc2", "width/fc3"}
    assert {n for n in d if n.startswith("sparsity/")} == {
        "sparsity/fc1", "sparsity/fc2", "sparsity/fc3", "sparsity/output"}
    c = space.candidate({"width/fc2": 0.5, "sparsity/fc1": 0.5, "lr": 3e-3})
    assert c.widths == {"fc1": 1.0, "fc2": 0.5, "fc3": 1.0}
    assert c.sparsity["fc1"] == 0.5 and c.lr == 3e-3
    block = SearchSpace(mlp(), tune_filters="block", tune_filters_exceptions="^fc3")
    assert block.width_params == {"width/block": (["fc1", "fc2"], (0.5, 0.75, 1.0, 1.5, 2.0))}


# -- sparsity and resizing -------------------------------------------------------------------
def test_polynomial_schedule_and_magnitude_mask():
    import torch

    from hetq.search.sparsity import MagnitudePruner, magnitude_mask, polynomial_sparsity

    assert polynomial_sparsity(0.5, 9, 10) == 0.5
    assert polynomial_sparsity(0.5, 0, 10, ramp_fraction=1.0) == pytest.approx(0.5 * (1 - 0.9**3))
    w = torch.tensor([[0.1, -0.5, 0.2], [0.05, 0.9, -0.3]])
    m = magnitude_mask(w, 0.5)
    assert m.tolist() == [[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    model = mlp()
    p = MagnitudePruner(model, {"fc1": 0.75, "fc2": 0.0}, epochs=4, ramp_fraction=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    p.attach(opt)
    for epoch in range(4):
        loss = model(torch.randn(8, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        p.on_epoch_end(epoch)
    assert p.sparsity() == {"fc1": 0.75}
    loss = model(torch.randn(8, 16)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()  # the step hook keeps masked weights at exactly zero
    assert (model.fc1.weight == 0).float().mean().item() == 0.75
    with pytest.raises(ValueError, match="not a weight layer"):
        MagnitudePruner(model, {"relu1": 0.5}, 3)


def test_resize_model_keeps_overlap_of_float_weights():
    import torch

    from hetq.models.resize import resize_model

    m = mlp()
    r = resize_model(m, {"fc1": 0.5, "fc2": 2.0}, keep="first")
    assert r.fc1.out_features == 32 and r.fc2.in_features == 32 and r.fc2.out_features == 64
    assert r.fc3.in_features == 64 and r.output.out_features == 5
    assert torch.equal(r.fc1.weight, m.fc1.weight[:32])
    assert torch.equal(r.fc2.weight[:32, :32], m.fc2.weight[:, :32])
    assert r(torch.randn(3, 16)).shape == (3, 5)
    assert m.fc1.out_features == 64  # the original is untouched


def test_resize_model_keeps_the_most_important_units():
    import torch

    from hetq.models.resize import resize_model

    torch.manual_seed(0)
    m = mlp()
    dead = torch.arange(0, 64, 2)  # every other fc1 unit: no input, no bias -> always 0
    with torch.no_grad():
        m.fc1.weight[dead] = 0
        m.fc1.bias[dead] = 0
    r = resize_model(m, {"fc1": 0.5})
    live = torch.arange(1, 64, 2)
    assert torch.equal(r.fc1.weight, m.fc1.weight[live])
    assert torch.equal(r.fc2.weight, m.fc2.weight[:, live])
    x = torch.randn(50, 16)
    assert torch.allclose(r(x), m(x), atol=1e-6)  # only dead units were dropped
    # a next layer that ignores some units makes them unimportant too
    m2 = mlp()
    with torch.no_grad():
        m2.fc3.weight[:, :16] = 0  # fc2 units 0..15 feed nothing
    r2 = resize_model(m2, {"fc2": 0.5})
    assert torch.equal(r2.fc2.weight, m2.fc2.weight[16:])
    assert torch.allclose(r2(x), m2(x), atol=1e-6)
    with pytest.raises(ValueError, match="keep="):
        resize_model(m, {"fc1": 0.5}, keep="random")


def test_resize_conv_to_dense_selects_channel_columns():
    import torch
    from torch import nn

    from hetq.models.resize import resize_model

    torch.manual_seed(0)
    m = nn.Sequential()
    m.add_module("conv", nn.Conv2d(2, 4, 3, padding=1))
    m.add_module("bn", nn.BatchNorm2d(4))
    m.add_module("relu", nn.ReLU())
    m.add_module("flat", nn.Flatten())
    m.add_module("fc", nn.Linear(4 * 3 * 3, 5))
    m.eval()
    with torch.no_grad():
        m.conv.weight[[0, 2]] = 0
        m.conv.bias[[0, 2]] = 0
        m.bn.running_mean[[0, 2]] = 0
        m.bn.bias[[0, 2]] = 0
    r = resize_model(m, {"conv": 0.5}).eval()
    assert r.conv.out_channels == 2 and r.bn.num_features == 2 and r.fc.in_features == 18
    x = torch.randn(4, 2, 3, 3)
    assert torch.allclose(r(x), m(x), atol=1e-5)


def _zeroed(m, keep):
    """`m` with the output units each layer does not keep set to zero (weights and bias)."""
    import copy

    import torch

    from hetq.models.resize import _unit_weight

    z = copy.deepcopy(m)
    with torch.no_grad():
        for name, units in keep.items():
            layer = dict(z.named_modules())[name]
            drop = [j for j in range(_unit_weight(layer).shape[0]) if j not in units]
            _unit_weight(layer)[drop] = 0
            if layer.bias is not None:
                layer.bias[drop] = 0
    return z


def test_width_search_resizes_separable_convolutions_and_keeps_the_layer_types():
    """Width search on cnn_digits failed every trial ('cannot resize the input of layer
    'dense': 512 inputs after 18 outputs'): the separable convolution was no resizable layer.
    And resizing gave plain nn.Linear / nn.Conv2d back, without the hetq layer's quantizers,
    in float32 whatever the model's dtype."""
    import torch

    from hetq.models import cnn_digits
    from hetq.models.resize import _unit_scores, _weight_layers, resize_model
    from hetq.quant.layers import QConv2d, QDense, QSeparableConv2d

    torch.manual_seed(0)
    f = nn.Sequential(OrderedDict([  # float (no quantizers): the zeroed copy is exact
        ("conv", QConv2d(1, 6, 3)), ("act1", nn.ReLU()),
        ("sepconv", QSeparableConv2d(6, 8, 3, depth_multiplier=2)), ("act2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("dense", QDense(8 * 4 * 4, 3))])).double().eval()
    r = resize_model(f, {"conv": 0.5, "sepconv": 0.5})
    assert (r.conv.out_channels, r.sepconv.in_channels, r.sepconv.out_channels) == (3, 3, 4)
    assert tuple(r.sepconv.depthwise_weight.shape) == (6, 1, 3, 3)
    assert tuple(r.sepconv.pointwise_weight.shape) == (4, 6, 1, 1)
    assert r.dense.in_features == 4 * 4 * 4
    assert type(r.conv) is QConv2d and type(r.sepconv) is QSeparableConv2d
    assert r.dense.weight.dtype == torch.float64
    chain = _weight_layers(f)
    keep = {n: torch.topk(_unit_scores(chain, k), w).indices.sort().values.tolist()
            for k, (n, w) in enumerate([("conv", 3), ("sepconv", 4)])}
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(r(x), _zeroed(f, keep)(x), atol=1e-12)
    q = resize_model(cnn_digits(), {"conv": 0.5})
    assert str(q.conv.kernel_quantizer) == str(cnn_digits().conv.kernel_quantizer)
    assert q(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    widths = SearchSpace(cnn_digits(), tune_filters="layer").width_params
    assert sorted(widths) == ["width/conv", "width/sepconv"]


def test_width_search_refuses_layers_registered_out_of_call_order():
    """A model registering its output layer first had that layer offered for resizing and
    the real hidden layer left out."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.fc1, self.act = nn.Linear(8, 5), nn.Linear(8, 8), nn.ReLU()

        def forward(self, x):
            return self.head(self.act(self.fc1(x)))

    with pytest.raises(ValueError, match=r"width search: the model's layers are registered in "
                                         r"the order \['head', 'fc1'\] but its forward calls "
                                         r"them in the order \['fc1', 'head'\]"):
        SearchSpace(Net(), tune_filters="layer")
    with pytest.raises(ValueError, match=r"registered in the order \['head', 'fc1'\]"):
        SearchSpace(Net(), tune_filters="layer", input_shape=(8,))  # (the data's shape)


def test_new_width_has_no_float_artefact_and_refuses_bad_multipliers():
    """100 x 0.29 is 28.999999999999996 in floating point: int() gave 28 units; 0, a
    negative or NaN multiplier gave 1 unit or a raw OverflowError."""
    from hetq.models.resize import new_width, resize_model

    assert [new_width(100, 0.29), new_width(64, 0.5), new_width(3, 0.1)] == [29, 32, 1]
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="expected a number > 0"):
            resize_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                         {"0": bad})


def test_resize_model_carries_folded_batch_norms_and_refuses_what_it_cannot_resize():
    """Found by a probe: a folded batch norm's gamma, beta and statistics kept the old width
    (the forward then failed on 64 against 32); quantizers with per-unit values were left
    behind the same way; multipliers for layers without a resizable width (a ReLU, a BN) or
    for the output layer (the class count: 10 became 5 on cnn_digits) and True were taken."""
    import torch

    from hetq.models.resize import resize_model
    from hetq.quant.convert import quantize_model

    torch.manual_seed(0)
    m = nn.Sequential(OrderedDict(fc1=nn.Linear(16, 8), bn1=nn.BatchNorm1d(8),
                                  relu1=nn.ReLU(), output=nn.Linear(8, 5)))
    with torch.no_grad():
        m.bn1.weight.uniform_(0.5, 2)
        m.bn1.running_var.uniform_(0.5, 2)
        m.bn1.running_mean.uniform_(-1, 1)
    q = quantize_model(m, {"Dense": {"kernel": "quantized_bits(8,2)"}},
                       fold_batchnorm=True).eval()
    r = resize_model(q, {"fc1": 0.5}).eval()
    assert r.fc1.weight.shape == (4, 16) and r.fc1.gamma.shape == (4,)
    assert r.fc1.running_var.shape == (4,) and r.output.weight.shape == (5, 4)
    kept = [int(i) for i in range(8) if any(torch.equal(r.fc1.weight[j], q.fc1.weight[i])
                                            for j in range(4))]
    assert len(kept) == 4
    for k, i in enumerate(kept):  # each kept unit takes its own batch norm values along
        assert r.fc1.gamma[k] == q.fc1.gamma[i] and r.fc1.running_var[k] == q.fc1.running_var[i]
        assert r.fc1.running_mean[k] == q.fc1.running_mean[i]
    x = torch.randn(6, 16)
    assert r(x).shape == (6, 5)
    full = q.fc1(x)[:, kept]  # the kept units compute what they computed before
    assert torch.equal(r.fc1(x), full)
    bad = {"relu1": (0.5, r"layer 'relu1' \(ReLU\), whose width is not resizable; resizable: "
                          r"fc1$"),
           "bn1": (2, r"layer 'bn1' \(BatchNorm1d\), whose width is not resizable"),
           "output": (0.5, r"for the output layer 'output': its width is the number of "
                           r"outputs"),
           "fc1": (True, r"width multiplier True; expected a number > 0")}
    for name, (f, msg) in bad.items():
        with pytest.raises(ValueError, match=msg):
            resize_model(m, {name: f})
    from hetq.quant import quantized_relu

    pn = quantize_model(m, {"Dense": {"kernel": "quantized_bits(8,2)",
                                      "activation": quantized_relu(torch.full((8,), 4.0), 0)}})
    with pytest.raises(ValueError, match=r"quantizer fc1.activation_quantizer holds per-unit "
                                         r"values \(bits of shape \(8,\)\)"):
        resize_model(pn, {"fc1": 0.5})


def test_a_trial_replacing_a_tanh_by_a_relu_quantizer_is_not_warned():
    """The space offers relu quantizers for a Tanh or LeakyReLU (as AutoQKeras does); the
    warning for an activation quantizer of another function blamed the user for hetq's own
    choice in every such trial. quantize_model called directly still says it."""
    from hetq.quant.convert import quantize_model
    from hetq.search.build import build_candidate

    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.LeakyReLU(0.1),
                      nn.Linear(8, 3))
    cand = SearchSpace(m).candidate({"1/activation": "quantized_relu(8,2)",
                                     "3/activation": "quantized_relu(8,2)"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_candidate(m, cand)
    with pytest.warns(UserWarning, match="makes this tanh a relu"):
        quantize_model(m, cand.quant_config)
