"""Quantized layers, model conversion, summary and the integer weight view."""

import re
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hetq.quant import get_quantizer
from hetq.quant.convert import QuantConfig, get_quantization_config, quantize_model
from hetq.quant.integer import integer_model_weights, integer_weights
from hetq.quant.layers import (
    QActivation,
    QConv1d,
    QConv2d,
    QDense,
    QDepthwiseConv2d,
    QSeparableConv2d,
)
from hetq.quant.norm import QBatchNorm, QConv2dBatchnorm, QDenseBatchnorm
from hetq.quant.pooling import QAveragePooling2d, QGlobalAveragePooling2d
from hetq.quant.summary import summary

Q6 = {
    "Linear": {"kernel": "quantized_bits(6,0,alpha=1)", "bias": "quantized_bits(6,0,alpha=1)"},
    "ReLU": {"activation": "quantized_relu(6,0)"},
}


def jet_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))


def qf(spec, t):
    return get_quantizer(spec)(t)


# -- layers against hand computations ---------------------------------------------------------
def test_dense_and_convs_equal_functional_ops_on_quantized_weights():
    torch.manual_seed(0)
    kq, bq, aq = "quantized_bits(4,0,1)", "quantized_bits(8,3,1)", "quantized_relu(4,1)"
    d = QDense(8, 4, kernel_quantizer=kq, bias_quantizer=bq, activation=aq)
    x = torch.randn(3, 8)
    ref = qf(aq, F.linear(x, qf(kq, d.weight), qf(bq, d.bias)))
    assert torch.equal(d(x), ref)
    c1 = QConv1d(2, 3, 3, padding=1, kernel_quantizer=kq, bias_quantizer=bq)
    x1 = torch.randn(2, 2, 7)
    assert torch.equal(c1(x1), F.conv1d(x1, qf(kq, c1.weight), qf(bq, c1.bias), padding=1))
    c2 = QConv2d(4, 6, 3, stride=2, groups=2, kernel_quantizer=kq, bias_quantizer=bq)
    x2 = torch.randn(2, 4, 9, 9)
    assert torch.equal(c2(x2), F.conv2d(x2, qf(kq, c2.weight), qf(bq, c2.bias), 2, 0, 1, 2))
    dw = QDepthwiseConv2d(3, 3, depth_multiplier=2, depthwise_quantizer=kq, bias_quantizer=bq)
    x3 = torch.randn(2, 3, 6, 6)
    assert dw.weight.shape == (6, 1, 3, 3)
    assert torch.equal(dw(x3), F.conv2d(x3, qf(kq, dw.weight), qf(bq, dw.bias), groups=3))


def test_separable_conv_with_depthwise_activation():
    torch.manual_seed(1)
    s = QSeparableConv2d(3, 5, 3, depthwise_quantizer="quantized_bits(4,0,1)",
                         pointwise_quantizer="quantized_bits(3,0,1)",
                         bias_quantizer="quantized_bits(3)",
                         depthwise_activation="quantized_tanh(6)")
    x = torch.randn(2, 3, 8, 8)
    h = F.conv2d(x, qf("quantized_bits(4,0,1)", s.depthwise_weight), groups=3)
    h = qf("quantized_tanh(6)", h)
    ref = F.conv2d(h, qf("quantized_bits(3,0,1)", s.pointwise_weight), qf("quantized_bits(3)",
                                                                          s.bias))
    assert torch.equal(s(x), ref)


def test_unquantized_layers_equal_torch_layers():
    torch.manual_seed(2)
    lin = nn.Linear(8, 4)
    q = QDense(8, 4)
    q.load_state_dict(lin.state_dict())
    x = torch.randn(5, 8)
    assert torch.equal(q(x), lin(x))
    conv = nn.Conv2d(3, 4, 3)
    qc = QConv2d(3, 4, 3)
    qc.load_state_dict(conv.state_dict())
    xc = torch.randn(2, 3, 6, 6)
    assert torch.equal(qc(xc), conv(xc))


def test_quantizer_on_missing_field_raises():
    with pytest.raises(ValueError, match="no bias"):
        QDense(4, 2, bias=False, bias_quantizer="quantized_bits(4)")
    with pytest.raises(ValueError, match="QActivation needs an activation quantizer"):
        QActivation(None)


def test_batchnorm_quantizers_and_formula():
    torch.manual_seed(3)
    bn = QBatchNorm(4, gamma_quantizer="quantized_po2(6)", beta_quantizer="quantized_bits(8,2,1)")
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    bn.eval()
    x = torch.randn(6, 4)
    inv = torch.rsqrt(bn.running_var + 1e-3) * qf("quantized_po2(6)", bn.weight)
    ref = x * inv + (qf("quantized_bits(8,2,1)", bn.bias) - bn.running_mean * inv)
    assert torch.allclose(bn(x), ref)
    bn.train()
    before = bn.running_mean.clone()
    bn(torch.randn(32, 4) + 3.0)
    assert not torch.equal(before, bn.running_mean)  # moving stats updated in training


@pytest.mark.parametrize("mode", ["ema_stats_folding", "batch_stats_folding"])
def test_folded_batchnorm_matches_conv_then_bn_in_eval(mode):
    torch.manual_seed(4)
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    ref_model = nn.Sequential(conv, bn).eval()
    folded = quantize_model(ref_model, {}, fold_batchnorm=True)
    assert isinstance(folded[0], QConv2dBatchnorm) and isinstance(folded[1], nn.Identity)
    folded[0].folding_mode = mode
    x = torch.randn(2, 3, 7, 7)
    assert torch.allclose(folded.eval()(x), ref_model(x), atol=1e-5)
    w, b = folded[0].get_folded_weights()
    inv = bn.weight * torch.rsqrt(bn.running_var + 1e-3)
    assert torch.allclose(w, conv.weight * inv.view(-1, 1, 1, 1))
    assert torch.allclose(b, inv * (conv.bias - bn.running_mean) + bn.bias)
    # training runs and updates the moving statistics
    folded.train()
    folded(x + 2.0).sum().backward()
    assert folded[0].weight.grad is not None


@pytest.mark.parametrize("mode", ["ema_stats_folding", "batch_stats_folding"])
@pytest.mark.parametrize("conv", [False, True])
def test_folded_batchnorm_training_gradient_matches_float_bn(mode, conv):
    # the gradient flows through the batch mean/variance, as in the reference and float BN
    torch.manual_seed(6)
    if conv:
        m = QConv2dBatchnorm(3, 4, 3, folding_mode=mode).double()
        op, bn = nn.Conv2d(3, 4, 3).double(), nn.BatchNorm2d(4, eps=1e-3, momentum=0.01)
        x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    else:
        m = QDenseBatchnorm(5, 3, folding_mode=mode).double()
        op, bn = nn.Linear(5, 3).double(), nn.BatchNorm1d(3, eps=1e-3, momentum=0.01)
        x = torch.randn(16, 5, dtype=torch.float64)
    bn.double()
    with torch.no_grad():
        op.weight.copy_(m.weight)
        op.bias.copy_(m.bias)
        m.gamma.uniform_(0.5, 2)
        bn.weight.copy_(m.gamma)
    out, ref = m.train()(x), bn.train()(op(x))
    assert torch.allclose(out, ref, atol=1e-9)
    out.pow(2).sum().backward()
    ref.pow(2).sum().backward()
    assert torch.allclose(m.weight.grad, op.weight.grad, atol=1e-8)
    assert torch.allclose(m.gamma.grad, bn.weight.grad, atol=1e-8)
    assert torch.allclose(m.beta.grad, bn.bias.grad, atol=1e-8)
    assert torch.allclose(m.running_mean, bn.running_mean, atol=1e-12)
    assert torch.allclose(m.running_var, bn.running_var, atol=1e-12)
    assert not m.running_mean.requires_grad and not m.running_var.requires_grad


@pytest.mark.parametrize("delay,trained", [(None, 5), (-1, 5), (0, 2), (2, 4), (10, 5)])
def test_folded_batchnorm_ema_freeze_delay_counts_like_the_reference(delay, trained):
    # reference: iteration starts at -1, bn_training = iteration <= delay, then iteration += 1
    torch.manual_seed(7)
    m = QDenseBatchnorm(4, 2, ema_freeze_delay=delay, folding_mode="batch_stats_folding")
    x = torch.randn(8, 4) + 3.0
    m.eval()(x)  # inference calls neither count nor update
    updates = 0
    for _ in range(5):
        before = m.running_mean.clone()
        out = m.train()(x)
        updates += not torch.equal(before, m.running_mean)
    assert updates == trained and int(m.step) == 4
    if trained < 5:  # frozen: the moving statistics fold the weights, as in inference
        assert torch.allclose(out, m.eval()(x))


def test_folded_dense_batchnorm_quantizes_folded_weights():
    torch.manual_seed(5)
    m = QDenseBatchnorm(6, 3, kernel_quantizer="quantized_bits(6,2,alpha=1)")
    m.eval()
    w, _ = m.get_folded_weights()
    assert torch.equal(m.quantized_weights()["kernel"], qf("quantized_bits(6,2,alpha=1)", w))


def test_folded_batchnorm_without_a_bias_and_batch_norm_arguments_are_checked():
    """Found by a probe: bias=False was ignored (a random trainable bias stayed, 0.32 off the
    float Linear(bias=False) + BN); momentum=None failed in training with a TypeError; a
    training batch of one sample ran silently (variance 0, output beta, the running variance
    pulled towards 0), where torch's BatchNorm refuses it."""
    torch.manual_seed(0)
    lin, bn = nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    for m in (QDenseBatchnorm(4, 3, bias=False), QConv2dBatchnorm(4, 3, 1, bias=False)):
        assert m.bias is None and "bias" not in m.state_dict()
    m = QDenseBatchnorm(4, 3, bias=False)
    m.load_state_dict({"weight": lin.weight, "gamma": bn.weight, "beta": bn.bias,
                       "running_mean": bn.running_mean, "running_var": bn.running_var},
                      strict=False)
    x = torch.randn(10, 4)
    assert torch.allclose(m.eval()(x), nn.Sequential(lin, bn).eval()(x), atol=1e-6)
    for make in (lambda: QBatchNorm(3, momentum=None), lambda: QDenseBatchnorm(4, 3, momentum=2),
                 lambda: QConv2dBatchnorm(4, 3, 1, momentum="0.1")):
        with pytest.raises(ValueError, match=r"momentum=.*expected a number in \[0, 1\]"):
            make()
    for layer, x1 in ((QBatchNorm(3), torch.randn(1, 3)), (QDenseBatchnorm(4, 3),
                                                         torch.randn(1, 4))):
        before = layer.running_var.clone()
        with pytest.raises(ValueError, match=r"a training batch of shape \(1, 3\) has one "
                                             r"value per channel"):
            layer.train()(x1)
        assert torch.equal(layer.running_var, before)
    with pytest.raises(ValueError, match=r"^QBatchNorm: input of shape \(5, 4\); expected "
                                         r"\(N, 3, ...\)$"):
        QBatchNorm(3).train()(torch.randn(5, 4))


def test_converting_a_batch_norm_without_running_statistics_is_refused():
    """A float BN with track_running_stats=False normalises each batch by itself, also in
    eval; its quantized form used running statistics 0 and 1 (output mean -0.285 for ~0)."""
    for fold in (False, True):
        m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False))
        with pytest.raises(ValueError, match=r"layer '1': a BatchNorm1d with "
                                             r"track_running_stats=False normalises"):
            quantize_model(m, {"Dense": {"kernel": "quantized_bits(6,0)"},
                               "BatchNorm1d": {"gamma": "quantized_bits(8,2)"}},
                           fold_batchnorm=fold)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=None))
    with pytest.warns(UserWarning, match=r"layer '1': momentum=None \(a cumulative average\) "
                                         r"continues as momentum=0.01"):
        q = quantize_model(m, {"Dense": {"kernel": "quantized_bits(6,0)"}},
                           fold_batchnorm=True)
    assert q[0].momentum == 0.01
    # a type key that matches folded batch norms alone ('another key takes precedence')
    with pytest.warns(UserWarning, match=r"key 'BatchNorm' matches only batch norms folded "
                                         r"into their layers \(fold_batchnorm=True\): '1' into "
                                         r"'0'; give the folded layer's quantizers"):
        quantize_model(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
                       {"Dense": {"kernel": "quantized_bits(6,0,1)"},
                        "BatchNorm": {"gamma": "quantized_bits(6,2,1)"}}, fold_batchnorm=True)
    # an inverse quantizer with gamma's: the message named neither layer nor config key
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm1d\): its inverse quantizer "
                                         r"excludes gamma and variance \(the product"):
        quantize_model(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
                       {"QBatchNormalization": {"inverse_quantizer": "quantized_bits(6,2,1)",
                                                "gamma_quantizer": "quantized_bits(6,2,1)",
                                                "variance_quantizer": "quantized_bits(6,2)"}})


def test_pooling_layers():
    x = torch.arange(32, dtype=torch.float32).view(1, 2, 4, 4) / 8
    p = QAveragePooling2d(2, average_quantizer="quantized_bits(8,0,1)")
    s = F.avg_pool2d(x, 2) * 4
    assert torch.equal(p(x), s * 0.25)  # 1/4 is exact in quantized_bits(8,0,1)
    g = QGlobalAveragePooling2d(average_quantizer="quantized_bits(4,0,1)")
    # 1/16 = 0.0625 -> quantized_bits(4,0,1) has step 1/8 -> rounds to 0.0 (half to even)
    assert torch.equal(g(x), torch.zeros(1, 2))
    assert torch.allclose(QGlobalAveragePooling2d()(x), x.mean(dim=(2, 3)))


# -- conversion -------------------------------------------------------------------------------
def test_quantize_model_q6_weights_on_grid_and_float_model_untouched():
    f = jet_mlp()
    state = {k: v.clone() for k, v in f.state_dict().items()}
    m = quantize_model(f, Q6)
    assert [type(x).__name__ for x in m] == ["QDense", "QActivation"] * 3 + ["QDense"]
    for layer in m:
        for w in getattr(layer, "quantized_weights", dict)().values():
            codes = w * 32
            assert torch.equal(codes, torch.round(codes))
            assert codes.min() >= -32 and codes.max() <= 31
    assert all(torch.equal(state[k], v) for k, v in f.state_dict().items())
    assert torch.equal(m[0].weight, f[0].weight)  # float weights copied


def test_yaml_round_trip_gives_identical_model(tmp_path):
    f = jet_mlp()
    m = quantize_model(f, Q6)
    cfg = get_quantization_config(m)
    path = tmp_path / "q6.yaml"
    cfg.save(path)
    m2 = quantize_model(f, path)
    x = torch.randn(50, 16)
    assert torch.equal(m(x), m2(x))
    assert [str(q) for layer in m2 for q in getattr(layer, "quantizers", {}).values()] == \
        [str(q) for layer in m for q in getattr(layer, "quantizers", {}).values()]
    js = QuantConfig.from_json(cfg.to_json())
    assert js == cfg and QuantConfig.from_yaml(QuantConfig(Q6).to_yaml()) == QuantConfig(Q6)


def test_malformed_config_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('Linear: {kernel: "quantized_bits(4,0,1)"\n')
    with pytest.raises(ValueError, match=r"bad.yaml: not valid YAML: line 2, column 1: expected "
                                         r"',' or '}', but got '<stream end>'$"):
        QuantConfig.load(bad)
    bad.write_text("- quantized_bits(4,0,1)\n")
    with pytest.raises(ValueError, match=r"bad.yaml: a quantization config maps layer names or "
                                         r"types to quantizers .*; got a list$"):
        QuantConfig.load(bad)
    js = tmp_path / "bad.json"
    js.write_text('{"Linear": ')
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON: Expecting value: line 1"):
        QuantConfig.load(js)


def test_precedence_name_type_regex():
    f = nn.Sequential(OrderedDict([("fc1", nn.Linear(4, 4)), ("fc2", nn.Linear(4, 4)),
                                   ("out", nn.Linear(4, 2))]))
    cfg = {"^fc": {"kernel": "quantized_bits(3,0,1)"},
           "Dense": {"kernel": "quantized_bits(5,0,1)"},
           "fc2": {"kernel": "ternary"}}
    with pytest.warns(UserWarning, match=r"'\^fc' matches fc1, fc2, but another key takes "
                                         r"precedence there \(exact name, then type"):
        m = quantize_model(f, cfg)  # (it said 'matches no layer': shadowed by the type key)
    assert str(m.fc2.kernel_quantizer) == "ternary()"  # exact name wins
    assert str(m.fc1.kernel_quantizer) == "quantized_bits(5,0,1)"  # type before regex
    regex_only = quantize_model(f, {"^fc": {"kernel": "quantized_bits(3,0,1)"}})
    assert str(regex_only.fc1.kernel_quantizer) == "quantized_bits(3,0,1)"
    assert isinstance(regex_only.out, nn.Linear) and not isinstance(regex_only.out, QDense)


def test_unmatched_key_warns_and_bad_field_raises():
    f = jet_mlp()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        quantize_model(f, {"Conv2d": {"kernel": "quantized_bits(4)"}, **Q6})
    assert any("'Conv2d' matches no layer" in str(x.message) for x in w)
    with pytest.raises(ValueError, match=r"layer '1' \(ReLU\) has no 'kernel' field"):
        quantize_model(f, {"1": {"kernel": "quantized_bits(4)"}})
    with pytest.raises(ValueError, match="unknown field 'kernal'"):
        QuantConfig({"Linear": {"kernal": "quantized_bits(4)"}})
    # a value that is no quantizer, or one that does not parse, names the key and the field
    # (they used to say only "cannot make a quantizer from 5 (int)" / "unknown quantizer")
    with pytest.raises(ValueError, match=r"^quantization config key 'fc1': kernel=5; expected a "
                                         r"quantizer string such as 'quantized_bits\(4,0,1\)', "
                                         "or None$"):
        QuantConfig({"fc1": {"kernel": 5}})
    with pytest.raises(ValueError, match=r"^quantization config key 'Linear': bias_quantizer: "
                                         r"unknown quantizer 'quantized_bitz'"):
        QuantConfig({"Linear": {"kernel": "quantized_bits(4)", "bias_quantizer":
                                "quantized_bitz(4)"}})
    # a bare string quantizes an activation: on a dense layer it would have set only its
    # output quantizer and left the weights float, so it is refused
    for key in ("Linear", "0"):
        with pytest.raises(ValueError, match=rf"key '{key}': a bare quantizer string is for "
                                             r"activation layers, but it matches layer '0' "
                                             r"\(Linear\); give that layer's fields"):
            quantize_model(f, {key: "quantized_bits(4,0,1)"})
    assert isinstance(quantize_model(f, {"ReLU": "quantized_relu(4,0)"})[1], QActivation)


def _tutorial_cnn():
    """The QKeras tutorial's MNIST CNN in PyTorch, with its layer names."""
    return nn.Sequential(OrderedDict([
        ("conv2d_0", nn.Conv2d(1, 18, 3)), ("act_0", nn.ReLU()),
        ("conv2d_1", nn.Conv2d(18, 32, 3)), ("act_1", nn.ReLU()), ("flatten", nn.Flatten()),
        ("dense", nn.Linear(32 * 24 * 24, 10)), ("act_2", nn.ReLU()),
        ("softmax", nn.Softmax(dim=1))]))


def test_qkeras_model_quantize_configs_port_unchanged():
    """The QKeras tutorial's model_quantize config (QKeras field and class names, an
    activation map by function, a plain string for one layer) gives the same quantizers as
    hetq's spelling; the map converts only the activations it lists (softmax stays float)."""
    qkeras = {"conv2d_1": {"kernel_quantizer": "stochastic_binary",
                           "bias_quantizer": "quantized_po2(4)"},
              "QConv2D": {"kernel_quantizer": "stochastic_ternary",
                          "bias_quantizer": "quantized_po2(4)"},
              "QDense": {"kernel_quantizer": "quantized_bits(3,0,1)",
                         "bias_quantizer": "quantized_bits(3)"},
              "QActivation": {"relu": "binary"},
              "act_2": "quantized_relu(3)"}
    hetq_cfg = {"conv2d_1": {"kernel": "stochastic_binary", "bias": "quantized_po2(4)"},
                "Conv2d": {"kernel": "stochastic_ternary", "bias": "quantized_po2(4)"},
                "Linear": {"kernel": "quantized_bits(3,0,1)", "bias": "quantized_bits(3)"},
                "act_0": "binary", "act_1": "binary", "act_2": "quantized_relu(3)"}
    m = quantize_model(_tutorial_cnn(), qkeras)
    assert get_quantization_config(m) == get_quantization_config(
        quantize_model(_tutorial_cnn(), hetq_cfg))
    assert str(m.conv2d_0.kernel_quantizer).startswith("stochastic_ternary(")
    assert str(m.conv2d_1.kernel_quantizer).startswith("stochastic_binary(")
    assert str(m.act_0.activation_quantizer).startswith("binary(")
    assert str(m.act_2.activation_quantizer) == "quantized_relu(3,0)"
    assert type(m.softmax) is nn.Softmax
    # a get_quantization_dictionary file: "None" for no quantizer, units checked
    saved = {"dense": {"kernel_quantizer": "quantized_bits(4,0,1)", "bias_quantizer": "None",
                       "activation": "quantized_relu(4,0)", "units": "10"}}
    d = quantize_model(_tutorial_cnn(), saved).dense
    assert str(d.kernel_quantizer) == "quantized_bits(4,0,1)" and d.bias_quantizer is None
    assert str(d.activation_quantizer) == "quantized_relu(4,0)"
    with pytest.raises(ValueError, match="key 'dense' is for a layer of units=12, but layer "
                                         "'dense' has 10"):
        quantize_model(_tutorial_cnn(), {"dense": {**saved["dense"], "units": "12"}})
    # QKeras's relu key also takes ReLU(max_value=6) layers; here relu6 is its own key, and
    # a ReLU6 left float by a map naming relu alone is said
    six = nn.Sequential(nn.Linear(4, 4), nn.ReLU6(), nn.Linear(4, 4), nn.ReLU())
    with pytest.warns(UserWarning, match=r"layer '1' \(ReLU6\) stays float: the map by "
                                         r"activation function names relu, not relu6"):
        m6 = quantize_model(six, {"QActivation": {"relu": "quantized_relu(4,2)"}})
    assert type(m6[1]) is nn.ReLU6 and str(m6[3].activation_quantizer) == "quantized_relu(4,2)"
    # a Dense without a quantized activation: QKeras writes str() of Keras's function (it was
    # refused, "not a name or name(args)"); relu is the float activation, linear none
    lin = {"dense": {**saved["dense"], "activation": "<function linear at 0x7f1b2c3d4e50>"}}
    d = quantize_model(_tutorial_cnn(), lin).dense
    assert str(d.kernel_quantizer) == "quantized_bits(4,0,1)" and d.activation_quantizer is None
    assert QuantConfig({"d": {"activation": "<function relu at 0x7F00AB>"}}).entries == {
        "d": {"activation": "relu"}}
    # a float activation is no quantizer of weights ('relu' zeroed the negative ones unsaid,
    # 'softmax' on a bias was a traceback in training)
    for fld, act in (("kernel_quantizer", "relu"), ("bias", "softmax"), ("gamma", "linear")):
        with pytest.raises(ValueError, match=rf"key 'dense': {fld}: '{act}' is a float "
                                             r"activation function, not a quantizer of values"):
            QuantConfig({"dense": {fld: act}})
    with pytest.raises(ValueError, match="'kernel' is given twice"):
        QuantConfig({"dense": {"kernel": "ternary", "kernel_quantizer": "ternary"}})
    with pytest.raises(ValueError, match=r"activation names \(relu\) pick a quantizer per "
                                         r"activation function and cannot be mixed with fields "
                                         r"\(activation\)"):
        QuantConfig({"QActivation": {"relu": "binary", "activation": "binary"}})


# -- summary and integer view -----------------------------------------------------------------
def test_summary_counts_and_does_not_modify_the_model():
    m = quantize_model(jet_mlp(), Q6)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s = summary(m)
    assert s.total_params == 4389
    assert s.total_weight_bits == 4389 * 6
    assert [r.params for r in s.rows if r.type == "QDense"] == [1088, 2080, 1056, 165]
    assert s.rows[0].fixed_types["kernel"] == "ap_fixed<6,1,AP_RND_CONV,AP_SAT>"
    assert "4389 parameters, 26334 weight bits" in str(s)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert summary(jet_mlp()).total_weight_bits == 4389 * 32


@pytest.mark.parametrize("kq", ["quantized_bits(6,0,alpha=1)",
                                "quantized_bits(4,0,1,alpha='auto_po2')", "ternary",
                                "ternary(alpha='auto_po2')", "binary(alpha='auto')",
                                "quantized_po2(4)", "quantized_relu(4,1)"])
def test_integer_weights_reproduce_quantized_weights_exactly(kq):
    torch.manual_seed(6)
    layer = QDense(16, 8, kernel_quantizer=kq, bias_quantizer="quantized_bits(8,3,1)")
    iw = integer_weights(layer)
    qw = layer.quantized_weights()
    for fld in ("kernel", "bias"):
        assert iw[fld].codes.dtype == torch.int64
        assert torch.equal(iw[fld].dequantize(), qw[fld]), fld
    if "auto_po2" in kq:
        assert iw["kernel"].scale.shape == (8, 1)  # one power-of-two scale per output channel
    all_w = integer_model_weights(quantize_model(jet_mlp(), Q6))
    assert set(all_w) == {"0", "2", "4", "6"}
    assert all_w["0"]["kernel"].codes.abs().max() <= 32


def test_dict_form_quantizers_serialise_and_depthwise_convs_are_no_conv2d(tmp_path):
    """A QKeras {class_name, config} quantizer was saved as Python's text of the dict, which
    could not be read back (a trained cnn_digits run was refused at saving); a Conv2D key
    took a depthwise torch Conv2d when it came before the DepthwiseConv2D key; an invalid
    regex was reported as 'matches no layer'."""
    spec = {"class_name": "quantized_bits",
            "config": {"bits": 4, "integer": 0, "symmetric": 1, "alpha": 1}}
    cfg = QuantConfig({"QDense": {"kernel_quantizer": spec}})
    text = cfg.to_dict()["QDense"]["kernel"]
    assert isinstance(text, str) and str(get_quantizer(text)) == str(get_quantizer(spec))
    assert QuantConfig.from_yaml(cfg.to_yaml()).to_dict() == cfg.to_dict()
    f = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 8, 3)),
                                   ("dw", nn.Conv2d(8, 8, 3, groups=8))]))
    m = quantize_model(f, {"QConv2D": {"kernel_quantizer": "quantized_bits(4,0,1)"},
                           "QDepthwiseConv2D": {"depthwise_quantizer": "quantized_bits(6,0,1)"}})
    assert str(m.conv.kernel_quantizer) == "quantized_bits(4,0,1)"
    assert str(m.dw.depthwise_quantizer) == "quantized_bits(6,0,1)"
    with pytest.warns(UserWarning, match=r"'fc\[' is neither a layer name or type nor a valid "
                                         r"regular expression"):
        quantize_model(jet_mlp(), {"fc[": {"kernel": "quantized_bits(4)"}, **Q6})


def test_a_null_entry_leaves_its_layers_float():
    """QKeras: a None entry leaves the layer float; `fc1: null` next to a Linear key was an
    error about bare quantizer strings."""
    f = jet_mlp()
    names = [n for n, m in f.named_modules() if isinstance(m, nn.Linear)]
    cfg = QuantConfig({names[0]: None, **Q6})
    m = quantize_model(f, cfg)
    layers = dict(m.named_modules())
    assert type(layers[names[0]]) is nn.Linear and isinstance(layers[names[1]], QDense)
    assert QuantConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    assert cfg.to_dict()[names[0]] is None


def test_separable_conv_keys_in_qkeras_spelling():
    """QSeparableConv2D / SeparableConv2D keys were taken as regexes that matched nothing: the
    layer kept its quantizers, with only a warning."""
    from hetq.models import build

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quantize_model(build("cnn_digits"), {"QSeparableConv2D": {
            "depthwise_quantizer": "quantized_bits(6,0,1)",
            "pointwise_quantizer": "quantized_bits(5,0,1)"}})
    assert (str(q.sepconv.depthwise_quantizer), str(q.sepconv.pointwise_quantizer)) == (
        "quantized_bits(6,0,1)", "quantized_bits(5,0,1)")


def test_an_activation_map_on_quantized_activations_says_what_to_give():
    """{QActivation: {relu: ...}} on a model whose activations are QActivations already
    (cnn_digits) said "has no 'relu' field"."""
    from hetq.models import build

    with pytest.raises(ValueError, match=r"layer 'act1' is a quantized activation already "
                                         r"\(quantized_relu\(3,0\)\); a map by activation "
                                         r"function \(relu: ...\) converts float activations"):
        quantize_model(build("cnn_digits"), {"QActivation": {"relu": "quantized_relu(4,0)"}})


def test_a_type_key_that_names_only_layers_hetq_cannot_quantize_is_said():
    """{'LSTM': {...}} left the LSTM float without a word (an exact-name key is an error, and
    a key matching no layer a warning)."""
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 3))
    cfg = {"Linear": {"kernel": "quantized_bits(4,0,alpha=1)"},
           "LSTM": {"kernel": "quantized_bits(4,0,alpha=1)"}}
    with pytest.warns(UserWarning, match=re.escape(
            "quantization config key 'LSTM' matches only layers hetq cannot quantize, which "
            "stay float: 1 (LSTM) (quantizable types: Linear, Conv1d")):
        m = quantize_model(f, cfg)
    assert type(m[1]) is nn.LSTM
    with warnings.catch_warnings():  # a regex that also quantizes a layer is not warned about
        warnings.simplefilter("error")
        quantize_model(f, {".*": {"kernel": "quantized_bits(4,0,alpha=1)"}})


def test_an_empty_config_is_warned_about():
    """quantize_model(model, {}) returned the float model without a word."""
    with pytest.warns(UserWarning, match=re.escape(
            "quantize_model: the quantization config is empty, so the model is returned "
            "unquantized")):
        m = quantize_model(nn.Sequential(nn.Linear(2, 2)), {})
    assert type(m[0]) is nn.Linear


def test_a_weight_quantizer_without_negative_values_is_warned_about():
    """{'kernel': 'quantized_relu(4,0)'} set every negative weight to 0 without a word."""
    with pytest.warns(UserWarning, match=re.escape(
            "layer '0': kernel quantizer quantized_relu(4,0) has no negative values, so every "
            "negative kernel weight becomes 0")):
        quantize_model(nn.Sequential(nn.Linear(2, 2)),
                       {"Linear": {"kernel": "quantized_relu(4,0)"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(nn.Sequential(nn.Linear(2, 2)),
                       {"Linear": {"kernel": "quantized_bits(4,0,1)",
                                   "bias": "quantized_bits(4,0,1)"}})


def test_a_qkeras_entry_without_a_kernel_quantizer_leaves_its_layers_float():
    """Spec 3.1: model_quantize leaves a Dense/Conv whose entry has no kernel quantizer as it
    is; a QKeras-spelled {bias_quantizer: ...} made a QDense with a float kernel. hetq's own
    spelling, {bias: ...}, still quantizes the bias alone."""
    from hetq.quant.layers import QDense

    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize_model(m, {"QDense": {"bias_quantizer": "quantized_bits(4)"},
                               "QActivation": {"relu": "quantized_relu(4)"}})
    assert type(q[0]) is nn.Linear and type(q[2]) is nn.Linear
    assert type(q[1]).__name__ == "QActivation"
    assert [str(w.message) for w in caught] == [
        "quantization config key 'QDense' gives no kernel_quantizer, so its weight layers stay "
        "float, as QKeras' model_quantize leaves them: 0, 2 (hetq's own spelling, {bias: ...}, "
        "quantizes the bias alone)"]
    own = quantize_model(m, {"Linear": {"bias": "quantized_bits(4)"}})
    assert isinstance(own[0], QDense) and own[0].quantizers["kernel"] is None


def _trained_bn_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU())
    for _ in range(5):
        m(torch.randn(64, 4) * 2 + 1)
    return m.eval()


def test_conversion_keeps_mode_dtype_device_freezing_and_padding():
    """Found by a probe of conversion: folded layers and new activation quantizers came back
    in training mode inside an eval model (batch statistics used and moved at inference,
    stochastic quantizers drawn afresh: 0.7 off the float model); a float64 model came back
    float32; frozen weights trainable; a circular-padded depthwise or reflect-padded folded
    convolution zero-padded (1.2 off)."""
    m = _trained_bn_model()
    x = torch.randn(16, 4)
    q = quantize_model(m, {}, fold_batchnorm=True)
    assert not q.training and not q[0].training
    stats = q[0].running_mean.clone()
    assert torch.allclose(q(x), m(x), atol=1e-5) and torch.equal(q[0].running_mean, stats)
    r = quantize_model(nn.Sequential(nn.ReLU()).eval(),
                       {"ReLU": "quantized_relu(3,0,use_stochastic_rounding=True)"})
    xs = torch.linspace(0.01, 0.99, 8)
    assert not r[0].training and not r[0].activation_quantizer.training
    assert torch.equal(r(xs), r(xs))
    d = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double().eval()
    d[0].weight.requires_grad_(False)
    qd = quantize_model(d, {"Linear": {"kernel": "quantized_bits(8,2,alpha=1)"}})
    assert qd[0].weight.dtype == torch.float64 and qd[1].running_var.dtype == torch.float64
    assert qd(x.double()).dtype == torch.float64
    assert not qd[0].weight.requires_grad and qd[0].bias.requires_grad
    torch.manual_seed(1)
    for conv, mode in ((nn.Conv2d(3, 6, 3, padding=1, groups=3, padding_mode="circular"),
                        "circular"), (nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                                      "reflect")):
        f = nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels)).eval()
        key = "DepthwiseConv2d" if mode == "circular" else "Conv2d"
        qc = quantize_model(f, {key: {"kernel": None}}, fold_batchnorm=True)
        assert qc[0].padding_mode == mode
        xi = torch.randn(2, 3, 5, 5)
        assert torch.allclose(qc(xi), f(xi), atol=1e-5)


def test_conversion_of_shared_layers_exact_names_and_bias_less_layers():
    """A module used twice was converted under its first name only (the other use float, the
    weights untied); a name key '1' also took '10' and '11' as a regex, so a config of exact
    names (get_quantization_config's) did not reproduce its model (0.148 off); a type key's
    bias quantizer failed on any layer without a bias (QKeras sets it to None there)."""
    lin = nn.Linear(4, 4)
    q = quantize_model(nn.Sequential(lin, nn.ReLU(), lin),
                       {"Linear": {"kernel": "quantized_bits(2,0,alpha=1)"}})
    assert type(q[2]).__name__ == "QDense" and q[0] is q[2]

    def make():
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Linear(4, 4) for _ in range(12)]).eval()
    one = quantize_model(make(), {"1": {"kernel": "quantized_bits(2,0,alpha=1)"}})
    assert [n for n, m in one.named_children() if type(m).__name__ == "QDense"] == ["1"]
    again = quantize_model(make(), get_quantization_config(one))
    x = torch.randn(5, 4)
    assert torch.equal(again(x), one(x))
    assert len(quantize_model(make(), {"^1": {"kernel": "quantized_bits(2,0,alpha=1)"}})
               .state_dict()) == len(make().state_dict())  # (a regex: 1, 10, 11; no buffers)
    nb = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2))
    kq = "quantized_bits(4,0,1)"
    qb = quantize_model(nb, {"QDense": {"kernel_quantizer": kq, "bias_quantizer": kq}})
    assert qb[0].bias_quantizer is None and str(qb[1].bias_quantizer) == kq
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) has no 'bias' field"):
        quantize_model(nb, {"0": {"kernel": kq, "bias": kq}})
    with pytest.raises(ValueError, match=r"layer '0' \(QDense\) has no 'bias' field"):
        quantize_model(qb, {"0": {"bias": kq}})


def test_conversion_refuses_lost_weights_and_leaves_what_it_cannot_replace():
    """weight_norm's parametrization kept the weights under other names: the QDense kept its
    random initialisation (0.49 off) without a word. A Linear subclass with its own forward
    was replaced (its forward lost); an nn.MultiheadAttention's out_proj got a quantizer it
    never runs. A model that is one Linear came back float."""
    from torch.nn.utils import parametrizations

    m = nn.Sequential(parametrizations.weight_norm(nn.Linear(4, 3)))
    with pytest.raises(ValueError, match=r"layer '0' \(ParametrizedLinear\) does not store its "
                                         r"weight under that name .*remove_parametrizations"):
        quantize_model(m, {"Linear": {"kernel": "quantized_bits(4,0,1)"}})

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    class Att(nn.Module):
        def __init__(self):
            super().__init__()
            self.att, self.fc = nn.MultiheadAttention(4, 1), nn.Linear(4, 4)

    with pytest.warns(UserWarning, match=r"layer '0' is a Scaled, a Linear with its own "
                                         r"forward.* it stays as it is"):
        q = quantize_model(nn.Sequential(Scaled(4, 4), nn.Linear(4, 2)),
                           {"Linear": {"kernel": "quantized_bits(4,0,1)"}})
    assert type(q[0]) is Scaled and type(q[1]).__name__ == "QDense"
    with pytest.warns(UserWarning, match=r"layer 'att.out_proj' is read directly by its "
                                         r"nn.MultiheadAttention"):
        qa = quantize_model(Att(), {"Linear": {"kernel": "quantized_bits(4,0,1)"}})
    assert type(qa.att.out_proj).__name__ == "NonDynamicallyQuantizableLinear"
    assert type(qa.fc).__name__ == "QDense"
    torch.manual_seed(0)
    leaf = nn.Linear(4, 3)
    ql = quantize_model(leaf, {"Linear": {"kernel": "quantized_bits(4,0,1)"}})
    assert type(ql).__name__ == "QDense" and torch.equal(ql.weight, leaf.weight)


def test_quant_config_round_trips_keep_its_meaning_and_config_files_are_strict(tmp_path):
    """to_yaml wrote a kernel-less QKeras entry in hetq's spelling (which quantizes the bias
    alone) and dropped its units check, while __eq__ said the two were equal; a quantizer
    object in a config was one object shared by every layer; a key given twice in a YAML or
    JSON file was last-wins; a flow map split a quantizer at its commas with no hint;
    QKeras's folded layer keys matched nothing; the Identity fold_batchnorm leaves was made
    an activation quantizer by an Activation key."""
    from hetq.quant import quantized_bits

    qc = QuantConfig({"QDense": {"bias_quantizer": "quantized_bits(4,0,1)"},
                      "fc1": {"kernel_quantizer": "quantized_bits(4,0,1)", "units": 32}})
    back = QuantConfig.from_yaml(qc.to_yaml())
    assert back.kernelless == qc.kernelless == {"QDense"} and back.sizes == {"fc1": {"units": 32}}
    shared = quantized_bits(4, 0, 1, alpha="auto_po2")
    q = quantize_model(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)),
                       {"Linear": {"kernel": shared}})
    assert q[0].kernel_quantizer is not q[1].kernel_quantizer
    (tmp_path / "d.yaml").write_text("Dense: {kernel: 'quantized_bits(4,0,1)'}\n"
                                     "Dense: {kernel: 'quantized_bits(8,0,1)'}\n")
    with pytest.raises(ValueError, match=r"d.yaml: not valid YAML: line 2, column 1: key "
                                         r"'Dense' is given twice in one map"):
        QuantConfig.load(tmp_path / "d.yaml")
    (tmp_path / "d.json").write_text('{"Dense": {}, "Dense": {"kernel": null}}')
    with pytest.raises(ValueError, match=r"key 'Dense' is given twice in one object"):
        QuantConfig.load(tmp_path / "d.json")
    (tmp_path / "f.yaml").write_text("Dense: {kernel: quantized_bits(4,0,1)}\n")
    with pytest.raises(ValueError, match=r"quote the quantizer, \{kernel: 'quantized_bits"):
        QuantConfig.load(tmp_path / "f.yaml")
    # two such quantizers: their numbers became keys given twice, and the hint was lost
    (tmp_path / "f.yaml").write_text("Dense: {kernel: quantized_bits(4,0,1), "
                                     "bias: quantized_bits(4,0,1)}\n")
    with pytest.raises(ValueError, match=r"key 0 is given twice in one map \(a YAML flow map.*"
                                         r"quote the quantizer"):
        QuantConfig.load(tmp_path / "f.yaml")
    (tmp_path / "f.yaml").write_text("fc1: {kernel: 'quantized_bits(4,0,1)', "
                                     "kernel: 'quantized_bits(8,0,1)'}\n")
    with pytest.raises(ValueError, match=r"key 'kernel' is given twice in one map$"):
        QuantConfig.load(tmp_path / "f.yaml")  # (quoted already: no hint to quote them)
    m = _trained_bn_model()
    cfg = {"QDenseBatchnorm": {"kernel_quantizer": "quantized_bits(8,2,alpha=1)",
                               "folding_mode": "batch_stats_folding"},
           "Activation": "quantized_relu(6,2)"}
    qf = quantize_model(m, cfg, fold_batchnorm=True)
    assert str(qf[0].kernel_quantizer) == "quantized_bits(8,2,alpha=1)"
    assert qf[0].folding_mode == "batch_stats_folding" and type(qf[1]) is nn.Identity
    assert type(qf[2]).__name__ == "QActivation"
    with pytest.raises(ValueError, match=r"folding_mode='fold'; expected one of"):
        QuantConfig({"QDenseBatchnorm": {"folding_mode": "fold"}})
    # the settings round-trip through get_quantization_config (checkpoints lost them)
    again = quantize_model(m, get_quantization_config(qf), fold_batchnorm=True)
    assert again[0].folding_mode == "batch_stats_folding"
    with pytest.raises(ValueError, match=r"key '1': that batch norm is folded into '0'"):
        quantize_model(m, {"1": {"gamma": "quantized_bits(8,2)"}}, fold_batchnorm=True)


@pytest.mark.parametrize("spec,msg", [
    ("quantized_ulaw(8,0,0,u=0)", r"u=0; expected a finite number > 0"),
    ("quantized_hswish(4,0,relu_upper_bound=0)", r"relu_upper_bound=0; expected"),
    ("quantized_bits(4,0,1,alpha=[0 1])", r"alpha=.*expected a scale > 0"),
    ("quantized_bits(4,0,1,alpha=True)", r"alpha=True; expected a scale > 0"),
    ("quantized_bits(4,0,1,keep_negative=2)", r"keep_negative=2; expected True or False"),
    ("quantized_bits(4,0,1,scale_axis=1.5)", r"scale_axis=1.5; expected an axis"),
    ("quantized_bits(4,0,1,alpha='auto',min_po2_exponent=-3)",
     r"min/max_po2_exponent need alpha='auto_po2', got alpha='auto'"),
    ("binary(alpha=0)", r"binary: alpha=0; expected a scale > 0"),
    ("ternary(alpha=-1)", r"ternary: alpha=-1; expected a scale > 0"),
    ("ternary(threshold=-1)", r"threshold=-1; expected a finite number >= 0"),
    ("stochastic_ternary(temperature=0)", r"temperature=0; expected a finite number > 0"),
    ("quantized_relu(4,0,use_sigmoid=2)", r"use_sigmoid=2; expected True or False"),
    ("quantized_relu(4,0,relu_upper_bound=-1)", r"relu_upper_bound=-1; expected"),
    ("quantized_relu(1,0,negative_slope=0.5)", r"leaves no bits for the positive values"),
])
def test_quantizer_arguments_that_gave_nan_zeros_or_flipped_signs_are_refused(spec, msg):
    """Found by the conversion probe: each of these was taken, and gave NaN outputs, zeros,
    flipped signs or an error only at forward time."""
    with pytest.raises(ValueError, match=msg):
        get_quantizer(spec)


def test_tied_modules_by_any_name_and_one_layer_models_follow_the_same_rules():
    """Found by a regression probe: an exact key for the second name of a shared module
    converted that name only (the weights untied); a model that is one layer skipped the
    rules a layer inside a container follows (a bias-less Linear failed on q6's bias, a null
    entry still quantized it, a Linear subclass lost its forward); folding settings on a
    key that folds nothing were taken without a word."""
    from hetq.models import preset

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = self.a

    q = quantize_model(Tied(), {"b": {"kernel": "quantized_bits(4,0,1)"}})
    assert type(q.a).__name__ == "QDense" and q.a is q.b
    with pytest.raises(ValueError, match=r"keys 'a', 'b' name one module"):
        quantize_model(Tied(), {"a": {"kernel": "quantized_bits(4,0,1)"},
                                "b": {"kernel": "quantized_bits(8,0,1)"}})
    with pytest.warns(UserWarning, match="key 'ReLU' matches no layer"):  # (q6's ReLU key)
        lone = quantize_model(nn.Linear(4, 3, bias=False), preset("q6"))
    assert type(lone).__name__ == "QDense" and lone.bias_quantizer is None
    assert type(quantize_model(nn.Linear(4, 3), {"Linear": None})) is nn.Linear

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)
    with pytest.warns(UserWarning, match="a Linear with its own forward"):
        assert type(quantize_model(Scaled(4, 3), {"Linear": {"kernel": "quantized_bits(4,0,1)"}})
                    ) is Scaled
    with pytest.warns(UserWarning, match=r"key 'Dense': folding_mode / ema_freeze_delay set "
                                         r"up folded batch norms"):
        quantize_model(nn.Sequential(nn.Linear(4, 3)), {"Dense": {
            "kernel_quantizer": "quantized_bits(4,0,1)", "folding_mode": "batch_stats_folding"}})


def test_a_folded_models_config_folds_again_without_the_flag():
    """get_quantization_config of a folded model lost the folding: re-applied without
    fold_batchnorm=True it made a QDense and a float BN, and load_state_dict failed on
    '0.gamma' (the README's rebuild recipe)."""
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    cfg = {"Linear": {"kernel": "quantized_bits(6,0,1)", "bias": "quantized_bits(6,0,1)"},
           "ReLU": "quantized_relu(6,2)"}
    m = quantize_model(net(), cfg, fold_batchnorm=True)
    c = get_quantization_config(m)
    assert c.to_dict()["0"] == {"kernel": "quantized_bits(6,0,1)",
                                "bias": "quantized_bits(6,0,1)",
                                "folding_mode": "ema_stats_folding"}
    again = quantize_model(net(), c)
    assert isinstance(again[0], QDenseBatchnorm) and isinstance(again[1], nn.Identity)
    again.load_state_dict(m.state_dict())
    x = torch.randn(6, 4)
    assert torch.equal(again.eval()(x), m.eval()(x))
    with pytest.raises(ValueError, match="^get_quantization_config needs a torch.nn.Module, "
                                         "got dict"):
        get_quantization_config({})


def test_an_activation_quantizer_of_another_function_is_said():
    """The quantizer is the activation (QKeras's QActivation): a relu quantizer on a Tanh
    made it a ReLU, a LeakyReLU lost its slope and a Softmax was dropped, all silently.
    Quantizers of no particular function (binary, quantized_bits: the search's choices)
    and matching ones are not said."""
    m = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.125), nn.Linear(8, 8), nn.Tanh(),
                      nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        quantize_model(m, {"Activation": "quantized_relu(6,2)"})
    assert [str(x.message).split(":")[0] for x in w] == [
        "layer '1' (LeakyReLU)", "layer '3' (Tanh)", "layer '7' (Softmax)"]
    assert "gives this LeakyReLU(negative_slope=0.125) the slope 0.0" in str(w[0].message)
    assert "makes this tanh a relu" in str(w[1].message)
    assert "replaces the softmax" in str(w[2].message)
    assert all(x.filename == __file__ for x in w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(m, {"ReLU": "binary()", "Tanh": "quantized_tanh(4)",
                           "LeakyReLU": "quantized_relu(6,2,negative_slope=0.125)",
                           "Linear": {"kernel": "quantized_bits(4,0,1)"}})
