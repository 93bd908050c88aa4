"""Cost model: QTools golden example (exact), operator width rules, bits goal, EBOPs, CLI."""

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hetq.cli import main
from hetq.cost import cost
from hetq.cost.bits import model_bits
from hetq.cost.energy import fpm_add, fpm_mul, mem_access, sram_word
from hetq.cost.qtypes import NAMED, QType, accumulator, adder, multiplier, qtype_of
from hetq.models import build, preset
from hetq.quant.convert import quantize_model
from hetq.quant.layers import QActivation, QConv2d, QDense
from hetq.quant.summary import summary

SRAM = dict(weights_on_memory="sram", activations_on_memory="sram",
            min_sram_size=8 * 16 * 1024 * 1024, rd_wr_on_io=False)


def golden_model():
    torch.manual_seed(0)
    return nn.Sequential(
        QDense(784, 300, kernel_quantizer="binary", bias_quantizer="binary"),
        QActivation("quantized_relu(4,0)"),
        QDense(300, 100, kernel_quantizer="quantized_bits(4,0,1)",
               bias_quantizer="quantized_bits(4,0,1)"),
        QActivation("quantized_relu(4,0)"),  # stands in for QAdaptiveActivation(4 bits)
        QDense(100, 10, kernel_quantizer="quantized_bits(4,0,1)",
               bias_quantizer="quantized_bits(4,0,1)"),
        nn.Softmax(dim=1))


def energies(rep):
    return [[round(lc.energy[k], 2) for k in ("inputs", "outputs", "parameters", "op_cost")]
            for lc in rep.layers]


def test_golden_example_trial_and_reference_exact():
    m = golden_model()
    trial = cost(m, (784,), source_quantizer="int8", **SRAM)
    ref = cost(m, (784,), source_quantizer="int8", reference="int8",
               reference_accumulator="int32", **SRAM)
    assert trial.summary()["energy_pj"] == 41070
    assert ref.summary()["energy_pj"] == 226629
    t, r = energies(trial), energies(ref)
    assert t[0] == [372.77, 342.34, 13997.95, 15729.0]
    assert t[2] == [72.27, 110.31, 7158.73, 3250.0]
    assert t[4] == [26.63, 11.41, 243.44, 102.08]
    assert r[0] == [372.77, 570.57, 111975.96, 70560.0]
    assert r[2] == [570.57, 190.19, 14313.66, 26500.0]
    assert r[4] == [190.19, 19.02, 483.08, 883.33]
    # d0: mux 8 bits, accumulator 8 + 10 = 18, + binary bias -> 19 bits
    assert trial.layers[0].multiplier == "mux"
    assert trial.layers[0].accumulator.bits == 19


def test_energy_constants():
    assert (fpm_add(8), fpm_add(16), fpm_add(32)) == (0.025, 0.05, 0.1)
    assert fpm_mul(8) == pytest.approx(0.2) and fpm_mul(16) == pytest.approx(0.783, abs=1e-3)
    assert sram_word(16) == pytest.approx(0.15625, abs=1e-4)
    assert sram_word(27) == pytest.approx(3.8038, abs=1e-4)
    assert mem_access(64, "dram", rd_wr_on_io=False) == 20.3125 * 64
    assert mem_access(100, "fixed") == 0.0


def test_shifter_example_from_the_spec():
    # input quantized_bits(6,0,1) x kernel quantized_relu_po2(4,2): shifter, 15 bits, int 2
    mul = multiplier(qtype_of("quantized_relu_po2(4,2)"), qtype_of("quantized_bits(6,0,1)"))
    assert mul.kind == "shifter" and mul.output.bits == 15
    assert mul.output.to_dict()["int_bits"] == 2
    acc = adder(accumulator(mul.output, 4), qtype_of("quantized_po2(4)"))  # 2x2x1 kernel
    assert acc.bits == 18 and acc.to_dict()["int_bits"] == 5
    conv = nn.Sequential(QConv2d(1, 16, 2, stride=2, kernel_quantizer="quantized_relu_po2(4,2)",
                                 bias_quantizer="quantized_po2(4)"))
    rep = cost(conv, (1, 23, 23), source_quantizer="quantized_bits(6,0,1)")
    assert rep.layers[0].op_count == 7744
    assert rep.layers[0].accumulator.bits == 18


def test_multiplier_kinds_and_widths():
    qb4 = qtype_of("quantized_bits(4,0,1)")
    u4 = qtype_of("quantized_relu(4,0)")
    # fixed x fixed: int = sum of ints, frac = sum of fracs, signed if either
    m = multiplier(qb4, u4)
    assert (m.kind, m.output.bits, m.output.int_bits, m.gate_bits) == ("mul", 8, 0, 4.0)
    t = multiplier(qtype_of("ternary"), u4)
    assert (t.kind, t.output.bits, t.gate_factor) == ("mux", 5, 0.6)  # +1: unsigned other
    b = multiplier(qtype_of("binary"), qtype_of("binary"))
    assert (b.kind, b.gate_factor, b.gate_bits) == ("xor", 0.3, 1)
    a = multiplier(qtype_of("binary(use_01=True)"), qb4)
    assert (a.kind, a.gate_factor, a.gate_bits) == ("and", 0.1, 4)
    p = multiplier(qtype_of("quantized_po2(4)"), qtype_of("quantized_po2(3)"))
    assert (p.kind, p.output.bits) == ("adder", 5)
    f = multiplier(qb4, NAMED["fp32"])
    assert f.kind == "fmul"
    # accumulator and adder rules
    assert accumulator(QType("fixed", 8, 0, True), 784).bits == 18
    s = adder(QType("fixed", 17, 9, True), QType("fixed", 4, 0, True))
    assert (s.bits, s.int_bits) == (18, 10)


def test_bits_goal_counts():
    q6 = quantize_model(build("jet_mlp"), preset("q6"))
    b = model_bits(q6, (16,))
    assert b["parameters"] == 4389 * 6
    assert b["activations"] == 16 * 8 + (64 + 32 + 32) * 6  # input + the three ReLUs
    ref = model_bits(build("jet_mlp"), (16,))
    assert ref == {"parameters": 4389 * 8, "activations": 16 * 8 + 128 * 8,
                   "total": 4389 * 8 + 144 * 8}


def test_bits_goal_counts_activations_as_the_reference_does():
    """Spec 5.4: a linear activation counts 0, softmax and sigmoid output_bits, every other
    non-linear activation ref_bits. Linear counted ref_bits, softmax given as a string
    (QActivation("softmax"), QDense(activation="softmax")) too, and ELU, Softplus, ...
    counted nothing."""
    for model, acts in (
            (nn.Sequential(nn.Linear(4, 10), QActivation("linear")), 32),
            (nn.Sequential(QDense(4, 10, activation="linear")), 32),
            (nn.Sequential(nn.Linear(4, 10), QActivation("softmax")), 32 + 10 * 4),
            (nn.Sequential(QDense(4, 10, activation="softmax")), 32 + 10 * 4),
            (nn.Sequential(nn.Linear(4, 10), nn.Softmax(-1)), 32 + 10 * 4),
            (nn.Sequential(nn.Linear(4, 10), nn.ELU()), 32 + 10 * 8),
            (nn.Sequential(nn.Linear(4, 10), nn.Softplus()), 32 + 10 * 8),
            (nn.Sequential(nn.Linear(4, 10), QActivation("tanh")), 32 + 10 * 8),
            (nn.Sequential(nn.Linear(4, 10), QActivation("quantized_relu(4,0)")), 32 + 40)):
        assert model_bits(model, (4,), output_bits=4)["activations"] == acts, model


def test_ebops_per_weight_and_per_feature_types():
    """Tensor-valued quantizers (as the gradient strategy exports) count element by element:
    each nonzero weight's width times its input feature's width, and each multiplier's
    energy at its own widths; the layer's types use the widest member."""
    from hetq.quant.fixed_point import quantized_bits

    inp = QActivation(quantized_bits(bits=torch.tensor([3.0, 6.0]),
                                     integer=torch.tensor([1.0, 1.0]), alpha=1))
    fc = QDense(2, 2, kernel_quantizer=quantized_bits(
        bits=torch.tensor([[2.0, 4.0], [3.0, 5.0]]), integer=torch.tensor([[1.0, 1.0],
                                                                          [1.0, 1.0]]),
        alpha=1), bias_quantizer="quantized_bits(8,3,alpha=1)")
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.25], [0.0, -0.5]]))
    rep = cost(nn.Sequential(inp, fc), (2,))
    assert rep.summary()["ebops"] == 2 * 3 + 4 * 6 + 5 * 6  # the zero weight is free
    lc = rep.layers[1]
    assert lc.weight.bits == 5 and lc.input.bits == 6
    # each multiplier at its own widths (gate bits sqrt(w x)), zero weights too (as QTools
    # counts every MAC); the additions into the layer's one accumulator type
    gates = [math.sqrt(b) for b in (2 * 3, 4 * 6, 3 * 3, 5 * 6)]
    assert lc.energy["op_cost"] == pytest.approx(
        sum(fpm_mul(g) for g in gates) + 4 * fpm_add(lc.accumulator.bits))
    assert lc.param_bits == (2 + 4 + 3 + 5) + 2 * 8
    # the AutoQKeras bits goal and the summary's weight bits count element by element too
    # (input 2 x 8 bits of the int8 source, then the 3 + 6 bits of the per-feature QActivation)
    assert rep.size_bits == {"parameters": 30, "activations": 2 * 8 + 3 + 6, "total": 55}
    assert summary(nn.Sequential(inp, fc)).total_weight_bits == 30
    # one scalar type everywhere: the same count as before (nnz x bits x bits)
    uni = QDense(2, 2, kernel_quantizer="quantized_bits(4,1,alpha=1)")
    with torch.no_grad():
        uni.weight.copy_(fc.weight)
    assert cost(nn.Sequential(QActivation("quantized_bits(6,1,alpha=1)"), uni),
                (2,)).summary()["ebops"] == 3 * 4 * 6


def test_fpga_estimate_sizes_each_product_by_its_own_widths():
    """Per-weight kernels and per-feature inputs: each multiplier is a LUT multiplier of its own
    weight x input bits, or a DSP where both are wide; a power-of-two weight is a shift."""
    from hetq.cost.fpga import DSP_MIN_BITS, LUT_PER_ADDER_BIT, LUT_PER_BIT_PRODUCT
    from hetq.quant.fixed_point import quantized_bits

    inp = QActivation(quantized_bits(bits=torch.tensor([3.0, 12.0]),
                                     integer=torch.tensor([1.0, 1.0]), alpha=1))
    fc = QDense(2, 2, kernel_quantizer=quantized_bits(
        bits=torch.tensor([[3.0, 4.0], [3.0, 12.0]]), integer=torch.ones(2, 2), alpha=1),
        bias_quantizer="quantized_bits(8,3,alpha=1)")
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.5, 0.75], [0.0, 0.375]]))
    assert fc.quantized_weights()["kernel"].tolist() == [[1.5, 0.75], [0.0, 0.375]]
    lc = cost(nn.Sequential(inp, fc), (2,)).layers[1]
    assert DSP_MIN_BITS == 10
    # 1.5: 3 x 3 bits on LUTs; 0.75: 4 x 12 bits on LUTs (min 4 < 10); 0.375: 12 x 12 on a DSP
    assert lc.fpga["lut_mul_units"] == 3 * 3 + 4 * 12
    assert lc.fpga["dsp"] == 1
    adds = 1 * lc.accumulator.bits  # row 0 adds two products, row 1 has one
    assert lc.fpga["lut"] == pytest.approx(LUT_PER_BIT_PRODUCT * 57 + LUT_PER_ADDER_BIT * adds)
    # a power-of-two weight is a shift: no multiplier at all
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.5], [0.0, 0.25]]))
    lc = cost(nn.Sequential(inp, fc), (2,)).layers[1]
    assert (lc.fpga["lut_mul_units"], lc.fpga["dsp"]) == (0.0, 0.0)


def test_ebops_exclude_zero_weights():
    q6 = quantize_model(build("jet_mlp"), preset("q6"))
    with torch.no_grad():
        q6.fc2.weight[:, :32] = 0.0  # prune half of fc2
    rep = cost(q6)
    nnz = [int((lyr.quantized_weights()["kernel"] != 0).sum())
           for lyr in (q6.fc1, q6.fc2, q6.fc3, q6.output)]
    expected = nnz[0] * 6 * 8 + (nnz[1] + nnz[2] + nnz[3]) * 6 * 6
    assert rep.summary()["ebops"] == expected
    assert rep.layers[2].ebops == nnz[1] * 36


def test_unknown_layer_warns_and_unsupported_quantizer_errors():
    class Weird(nn.Module):
        def forward(self, x):
            return x * 2

    m = nn.Sequential(nn.Linear(4, 4), Weird(), nn.Linear(4, 2))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rep = cost(m)
    assert any("no rule for layer '1' (Weird)" in str(x.message) for x in w)
    assert len(rep.layers) == 3
    bad = nn.Sequential(QDense(4, 2, kernel_quantizer="quantized_sigmoid(8)"))
    with pytest.raises(ValueError, match="no rule for quantizer quantized_sigmoid"):
        cost(bad)


def test_a_forward_outside_its_layers_and_layers_without_a_tensor_output_warn():
    """What a forward does outside its layers (F.relu, a residual `+ x`) and layers whose
    output is no tensor (an LSTM's tuple) were left out of the cost without a word."""
    import torch.nn.functional as F

    k = dict(kernel_quantizer="quantized_bits(4,0,1)", bias_quantizer="quantized_bits(4,0,1)")

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = QDense(4, 4, **k), QDense(4, 3, **k)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)) + x)

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.fc = nn.GRU(4, 4, batch_first=True), QDense(4, 3, **k)

        def forward(self, x):
            return self.fc(self.gru(x)[0][:, -1])

    class Chained(Residual):  # the same layers one after another: nothing to say
        def forward(self, x):
            return self.fc2(self.fc1(x))

    def warned(m, shape):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            rep = cost(m, shape)
        return rep, [str(x.message) for x in w]

    rep, msgs = warned(Residual(), (4,))
    assert [lc.name for lc in rep.layers] == ["fc1", "fc2"]
    assert msgs == ["cost model: the forward of Residual does more than call its layers one "
                    "after another (the input of 'fc2' is not the output of 'fc1'); what it "
                    "does outside its layers (functional calls, additions, concatenations, ...) "
                    "is not costed, and each layer is costed on the type of the layer called "
                    "before it"]
    rep, msgs = warned(Recurrent(), (5, 4))
    assert [lc.name for lc in rep.layers] == ["fc"]
    assert msgs[0] == ("cost model: layer 'gru' (GRU) returns a tuple, not a tensor; it is left "
                       "out of the cost (no rule: recurrent layers such as LSTM and GRU are not "
                       "costed)")
    assert "(the input of 'fc' is not the output of 'gru')" in msgs[1] and len(msgs) == 2
    rep, msgs = warned(Chained(), (4,))
    assert [lc.name for lc in rep.layers] == ["fc1", "fc2"] and msgs == []


def test_cost_cli(tmp_path, capsys):
    out = tmp_path / "new" / "c.json"  # its folder is made
    torch.manual_seed(0)  # (the same initial weights as below, so the same EBOPs)
    assert main(["cost", "--model", "jet_mlp", "--preset", "q6", "--reference", "int8",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "energy: QTools-equivalent 45 nm Horowitz model (estimate)" in text
    assert "reduction" in text and "fc1" in text and out.exists()
    # the JSON holds the reference column too (it used to drop it), and '-' prints it
    saved = json.loads(out.read_text())
    assert saved["reference"]["type"] == "int8"
    assert saved["reference"]["totals"]["energy_pj"] > saved["totals"]["energy_pj"]
    assert [r["name"] for r in saved["reference"]["layers"]] == [r["name"] for r in
                                                                 saved["layers"]]
    torch.manual_seed(0)
    assert main(["cost", "--model", "jet_mlp", "--preset", "q6", "--json", "-"]) == 0
    printed = json.loads(capsys.readouterr().out)  # the JSON alone, no table
    assert printed["totals"]["ebops"] == saved["totals"]["ebops"]
    assert not (tmp_path / "-").exists() and not Path("-").exists()
    # a model with quantizers built in is not labelled float
    assert main(["cost", "--model", "cnn_digits"]) == 0
    assert "cost of cnn_digits as built (input int8)" in capsys.readouterr().out


def test_hybrid_models_dropout_and_a_linear_over_several_positions():
    """(QTools rules, spec §4.1/§4.4) A trial's unquantized layer costs as the reference
    (int8 weights, int32 outputs) when `float_as` says so, as the search's trials now do: it
    cost 609 pJ as fp32 against the rule's 49. Dropout costs nothing (QTools removes it).
    A Linear over a (5, 4) input counted one position: 12 MACs instead of 60."""
    from hetq.search.config import SearchConfig
    from hetq.search.driver import measure_costs

    torch.manual_seed(0)
    hybrid = nn.Sequential(nn.Linear(16, 8), QActivation("quantized_relu(4,0)"),
                           QDense(8, 4, kernel_quantizer="quantized_bits(4,0,1)",
                                  bias_quantizer="quantized_bits(4,0,1)"))
    # fp32: hetq's default (a deliberate difference: QTools costs a layer without quantizers at
    # quantized_bits(8,0,1), its default_interm_quantizer)
    assert cost(hybrid, (16,)).summary()["energy_pj"] == 609.0
    rep = cost(hybrid, (16,), float_as="int8")
    assert rep.summary()["energy_pj"] == 49.0
    assert (rep.layers[0].weight, rep.layers[0].accumulator) == (NAMED["int8"], NAMED["int32"])

    class Data:
        input_shape = (16,)

    assert measure_costs(hybrid, SearchConfig(), Data())["energy_pj"] == 49.0
    plain = nn.Sequential(QDense(4, 3, kernel_quantizer="quantized_bits(4,0,1)",
                                 bias_quantizer="quantized_bits(4,0,1)"),
                          QActivation("quantized_relu(4,0)"),
                          QDense(3, 2, kernel_quantizer="quantized_bits(4,0,1)",
                                 bias_quantizer="quantized_bits(4,0,1)"))
    dropped = nn.Sequential(plain[0], plain[1], nn.Dropout(0.5), plain[2])
    assert cost(dropped, (4,)).summary() == cost(plain, (4,)).summary()
    one, five = cost(plain[:1], (4,)), cost(plain[:1], (5, 4))
    assert (one.layers[0].op_count, five.layers[0].op_count) == (12, 60)
    assert five.summary()["ebops"] == 5 * one.summary()["ebops"]


def test_named_types_take_spaces_around_them():
    # ('int8 ' was 'unknown quantizer int8', which lists int8 among the named types)
    assert qtype_of(" int8 ") == NAMED["int8"] and qtype_of("fp16\n") == NAMED["fp16"]


def test_ebops_count_the_input_width_of_an_fp16_source():
    """fp16 inputs counted 32 bits in EBOPs (as fp32), while the energy used 16."""
    m = nn.Sequential(QDense(4, 3, kernel_quantizer="quantized_bits(4,0,1)",
                             bias_quantizer="quantized_bits(8,3,1)"))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[0.5, 0, 0.25, -0.5]] * 3))
    nonzero = 9
    for source, bits in (("fp16", 16), ("fp32", 32), ("int8", 8)):
        assert cost(m, (4,), source_quantizer=source).summary()["ebops"] == nonzero * 4 * bits


def test_layers_qtools_leaves_out_are_costed():
    from hetq.quant.layers import QConv1d, QSeparableConv2d
    from hetq.quant.norm import QConv2dBatchnorm, QDenseBatchnorm
    from hetq.quant.pooling import QAveragePooling2d, QGlobalAveragePooling2d

    kq, bq = "quantized_bits(4,0,1)", "quantized_bits(8,3,1)"
    cnn = nn.Sequential(
        QConv2dBatchnorm(1, 4, 3, kernel_quantizer=kq, bias_quantizer=bq),   # 8x8 -> 6x6
        QActivation("quantized_relu(4,0)"),
        QSeparableConv2d(4, 6, 3, depthwise_quantizer=kq, pointwise_quantizer=kq,
                         bias_quantizer=bq, depthwise_activation="quantized_relu(4,0)"),
        QAveragePooling2d(2, average_quantizer="quantized_bits(8,0,1)"),      # 4x4 -> 2x2
        QGlobalAveragePooling2d(average_quantizer="quantized_bits(8,0,1)"),
        QDenseBatchnorm(6, 3, kernel_quantizer=kq, bias_quantizer=bq))
    rep = cost(cnn, (1, 8, 8))
    ops = [lc.op_count for lc in rep.layers]
    # folded conv: 6*6*4 outputs x 9 MACs; separable: depthwise 4*4*4*9 + pointwise 4*4*6*4;
    # average pooling: 2*2*6 outputs x 4 additions; global: 6 outputs x 4; dense 6*3
    assert ops == [6 * 6 * 4 * 9, 0, 4 * 4 * 4 * 9 + 4 * 4 * 6 * 4, 2 * 2 * 6 * 4, 6 * 4, 18]
    assert all(lc.total > 0 for lc in rep.layers)
    conv1d = nn.Sequential(QConv1d(2, 3, 3, kernel_quantizer=kq, bias_quantizer=bq))
    r1 = cost(conv1d, (2, 10))
    assert r1.layers[0].op_count == 8 * 3 * 3 * 2
    assert r1.layers[0].accumulator.bits == adder(accumulator(
        multiplier(qtype_of(kq), NAMED["int8"]).output, 6), qtype_of(bq)).bits


def test_bad_input_shapes_and_type_names_are_clear_errors(tmp_path, capsys):
    m = build("jet_mlp")
    with pytest.raises(ValueError, match=r"the model does not run on inputs of shape \(8,\) "
                                         r"\(batch dimension excluded\): mat1 and mat2"):
        cost(m, (8,))
    for bad in ((0,), (), "16", (16.5,), 16.0, ("a",)):
        with pytest.raises(ValueError, match=rf"input shape {re.escape(repr(bad))}: expected "
                                             "positive integer sizes"):
            cost(m, bad)
    # an int is a 1-D shape; lists, torch.Size, numpy and integral floats are sizes too
    want = cost(m, (16,)).summary()
    for good in (16, [16], torch.Size([16]), np.int64(16), (16.0,)):
        assert cost(m, good).summary() == want
    with pytest.raises(ValueError, match="unknown quantizer 'int9'.*or a named type: int8, "
                                         "int16, int32, fp16, fp32"):
        qtype_of("int9")
    with pytest.raises(SystemExit):
        main(["cost", "--model", "jet_mlp", "--input-shape", "1,a"])
    assert ("argument --input-shape: expected comma-separated positive sizes, e.g. 16 or "
            "1,8,8; got '1,a'") in capsys.readouterr().err
    assert main(["cost", "--model", "jet_mlp", "--input-shape", "8"]) == 2
    assert "does not run on inputs of shape (8,)" in capsys.readouterr().err
    for argv, msg in ((["x.pt", "--model", "jet_mlp"], "give a checkpoint or --model (with "
                                                       "--preset/--config), not both: x.pt and "
                                                       "--model"),
                      (["--preset", "q6"], "--preset/--config quantize a zoo model: give --model"),
                      (["--model", "jet_mlp", "--preset", "q6", "--config", "c.yaml"],
                       "give --preset or --config, not both")):
        assert main(["cost", *argv]) == 2
        assert msg in capsys.readouterr().err
    # --model-widths, as hetq train and hetq search have it
    torch.manual_seed(0)  # (the same initial weights, so the same nonzero ones, below)
    assert main(["cost", "--model", "jet_mlp", "--model-widths", "32", "16", "--preset", "q6",
                 "--json", str(tmp_path / "c.json")]) == 0
    torch.manual_seed(0)
    want = cost(quantize_model(build("jet_mlp", widths=[32, 16]), preset("q6"))).summary()
    assert json.loads((tmp_path / "c.json").read_text())["totals"] == want
    assert "cost of jet_mlp 32-16 q6" in capsys.readouterr().out
    cnn_args = ["--model", "cnn_digits", "--model-widths", "8"]
    for argv in (["cost", *cnn_args], ["search", *cnn_args, "--out", str(tmp_path / "s")]):
        assert main(argv) == 2
        assert "--model-widths sets the hidden layers of jet_mlp or jet_autoencoder, not " \
            "cnn_digits" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before any work
    # an image model's square input is found (the flatten into the dense layer fixes it)
    cnn = build("cnn_digits")  # in training mode, with a stochastic_ternary kernel
    assert cost(cnn).summary() == cost(cnn, (1, 8, 8)).summary()
    assert cnn.training  # costed as deployed (deterministic rounding), the mode restored
    assert cost(cnn.eval(), (1, 8, 8)).summary() == cost(cnn.train(), (1, 8, 8)).summary()
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"input_shape=\(3, H, W\) \(CLI: --input-shape 3,H,W\); "
                                         "square images of 3 to 64 pixels fit it"):
        cost(pooled)
    assert cost(m, (16,)).summary()["energy_pj"] > 0  # the right shape still works


def test_a_model_differing_only_in_its_settings_or_forward_gets_its_own_trace():
    """The trace cache was keyed on names, types and weight shapes only: a stride-2 model
    costed after a stride-1 one got its 6x6 shapes (648 MACs instead of 162), and a model
    whose forward calls the same layers in another order got the first one's order."""
    from hetq.quant.pooling import QGlobalAveragePooling2d

    k = dict(kernel_quantizer="quantized_bits(4,0,1)", bias_quantizer="quantized_bits(4,0,1)")

    def strided(stride):
        return nn.Sequential(QConv2d(1, 2, 3, stride=stride, **k),
                             QGlobalAveragePooling2d(average_quantizer="quantized_bits(8,0,1)"))

    for first, second in ((1, 2), (2, 1)):
        cost(strided(first), (1, 8, 8))
        rep = cost(strided(second), (1, 8, 8))
        side = 6 if second == 1 else 3
        assert [lc.op_count for lc in rep.layers] == [side * side * 2 * 9, side * side * 2]
        assert rep.layers[1].accumulator.bits == accumulator(rep.layers[0].output,
                                                             side * side).bits

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = QDense(4, 4, **k), QDense(4, 4, **k)

        def forward(self, x):
            return self.b(self.a(x))

    class Reversed(Net):
        def forward(self, x):
            return self.a(self.b(x))

    assert [lc.name for lc in cost(Net(), (4,)).layers] == ["a", "b"]
    assert [lc.name for lc in cost(Reversed(), (4,)).layers] == ["b", "a"]


def test_cli_warnings_are_one_line(capsys):
    """A warning under the CLI reads like its errors: one line naming the command, without
    the file and source line Python's default format adds."""
    import sys
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(m, c, f, n, line))
        assert main(["cost", "--model", "cnn_digits", "--preset", "q6"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == ("hetq cost: warning: quantization config key 'ReLU' matches "
                                   "no layer of the model")
    assert "UserWarning" not in err and ".py:" not in err


def test_batch_norm_parameters_each_at_their_own_type():
    """(spec §4.6) Batch norm reads gamma, beta, mean and variance, each at its quantizer's
    width: mean and variance were read at gamma's and beta's (7.90 pJ, 1280 bits)."""
    from hetq.quant.norm import QBatchNorm

    bn = QBatchNorm(64, gamma_quantizer="quantized_bits(4)", beta_quantizer="quantized_bits(6)",
                    mean_quantizer="quantized_bits(8)", variance_quantizer="quantized_po2(5)")
    lc = cost(nn.Sequential(bn), (64,)).layers[0]
    assert lc.param_bits == 64 * (4 + 6 + 8 + 5) == 1472
    assert lc.energy["parameters"] == pytest.approx(
        sum(mem_access(64 * b, "sram") for b in (4, 6, 8, 5)))
    assert round(lc.energy["parameters"], 3) == 8.814


def test_float_as_applies_to_a_float_batch_norm():
    """(spec §4.1, QTools' hybrid models) An unquantized batch norm between quantized layers
    costs as the weight layers do under `float_as`: its parameters of that type, its output the
    reference accumulator. It stayed fp32 (the next layer a float multiply): 1392 pJ either way."""
    kq = dict(kernel_quantizer="quantized_bits(4,0,1)", bias_quantizer="quantized_bits(4,0,1)")
    m = nn.Sequential(QDense(16, 64, **kq), nn.BatchNorm1d(64), QDense(64, 4, **kq))
    assert cost(m, (16,)).summary()["energy_pj"] == 1392.0  # fp32 (hetq's default)
    rep = cost(m, (16,), float_as="int8")
    assert rep.summary()["energy_pj"] == 329.0
    bn = rep.layers[1]
    assert (bn.weight, bn.bias, bn.output) == (NAMED["int8"], NAMED["int8"], NAMED["int32"])
    assert bn.param_bits == 4 * 64 * 8
    assert rep.layers[2].multiplier == "mul" and rep.layers[2].input == NAMED["int32"]


def test_adaptive_average_pooling_costs_its_own_windows():
    """AdaptiveAvgPool2d(k) pools over PyTorch's windows, not over the whole map: into 2x2,
    an 8x8 map is four 4x4 windows (64 additions, accumulator ufix8.4, as AvgPool2d(4)); it
    was costed as global pooling (256 additions, ufix10.6). Windows that do not divide evenly
    (8 into 3: 3, 4, 3) count their own additions, the accumulator over the largest."""
    def pooled(pool, channels=1):
        m = nn.Sequential(QActivation("quantized_relu(4,0)"), pool)
        return cost(m, (channels, 8, 8)).layers[1]

    lc = pooled(nn.AdaptiveAvgPool2d(2))
    assert (lc.op_count, str(lc.accumulator)) == (64, "ufix8.4")
    assert lc.energy["op_cost"] == pytest.approx(64 * fpm_add(8) + 4 * 3.7)  # fp32 1/16
    avg = pooled(nn.AvgPool2d(4))
    assert (avg.op_count, avg.accumulator, avg.energy) == (lc.op_count, lc.accumulator,
                                                           lc.energy)
    assert str(pooled(nn.AdaptiveAvgPool2d(1), 3).accumulator) == "ufix10.6"  # global
    # (each a shape of its own: graph.trace caches by shapes and types, not output_size)
    uneven = pooled(nn.AdaptiveAvgPool2d(3), 2)
    assert (uneven.op_count, str(uneven.accumulator)) == (2 * 10 * 10, "ufix8.4")
    assert uneven.energy["op_cost"] == pytest.approx(200 * fpm_add(8) + 2 * 9 * 3.7)


def test_dropout_and_identity_are_not_the_input_or_output_layer():
    """(spec §4.1: QTools removes Dropout) A Dropout or Identity first or last cost nothing and
    leave the model's input (output) to the next (previous) layer: a leading Dropout took the
    first dense layer's DRAM input read (20 pJ instead of 2621), a trailing one the last
    activation's DRAM write."""
    kq = dict(kernel_quantizer="quantized_bits(4,0,1)", bias_quantizer="quantized_bits(4,0,1)")
    body = [QDense(16, 8, **kq), QActivation("quantized_relu(4,0)"), QDense(8, 2, **kq)]
    io_only = dict(weights_on_memory="fixed", activations_on_memory="fixed", rd_wr_on_io=True)
    lead = cost(nn.Sequential(nn.Dropout(0.2), *body), (16,), **io_only)
    assert lead.summary() == cost(nn.Sequential(*body), (16,), **io_only).summary()
    assert lead.summary()["energy_pj"] == 2621.0
    assert round(lead.layers[1].energy["inputs"], 2) == 2600.91  # 16 x 8 bits from DRAM
    out = QActivation("quantized_relu(4,0)")
    both = cost(nn.Sequential(nn.Identity(), *body, out, nn.Dropout(0.2)), (16,), **io_only)
    assert both.summary() == cost(nn.Sequential(*body, out), (16,), **io_only).summary()
    assert both.summary()["energy_pj"] == 2784.0
    assert (both.layers[0].total, both.layers[-1].total) == (0, 0)


def test_mux_gate_bits_of_a_po2_operand_are_its_own_width():
    """(spec §4.3, QTools' Mux) A binary/ternary x po2 product is a mux as wide as the po2
    operand: gate bits 4 for quantized_po2(4), not its fixed-point width 8 (1.34 pJ); the
    product and accumulator still take the fixed-point view (8 and 8 + 3 bits)."""
    po2, rpo2, b, t = (qtype_of(q) for q in ("quantized_po2(4)", "quantized_relu_po2(4)",
                                              "binary", "ternary"))
    for w, x in ((po2, b), (b, po2)):
        m = multiplier(w, x)
        assert (m.kind, m.gate_factor, m.gate_bits, m.output.bits) == ("mux", 0.3, 4, 8)
    m = multiplier(rpo2, t)  # unsigned po2 x signed ternary: one more bit in the product
    assert (m.kind, m.gate_factor, m.gate_bits, m.output.bits) == ("mux", 0.6, 4, 16)
    lc = cost(nn.Sequential(QActivation("binary"), QDense(
        8, 4, bias=False, kernel_quantizer="quantized_po2(4)")), (8,)).layers[1]
    assert str(lc.accumulator) == "sfix11.6"
    assert lc.energy["op_cost"] == pytest.approx(32 * (0.3 * fpm_add(4) + fpm_add(11)))
    assert round(lc.energy["op_cost"], 2) == 1.22


def test_binary_products_are_one_bit_wide():
    """(spec §4.3/§4.4, QTools' XorGate, Mux and accumulator) binary x binary (xor) is 1 bit
    wide, so 8 of them accumulate in 1 + 3 bits (it was a 2-bit count: 5 bits, 0.53 pJ); a
    ternary weight's mux on a binary input gates the binary's 1 bit (was 2; accumulator 5).
    A binary weight on a ternary input gates the ternary's 2 bits, as before."""
    def layer(inp, kq):
        m = nn.Sequential(QActivation(inp), QDense(8, 4, bias=False, kernel_quantizer=kq))
        return cost(m, (8,)).layers[1]

    xor = layer("binary", "binary")
    assert (xor.multiplier, str(xor.accumulator)) == ("xor", "sfix4.4")
    assert xor.energy["op_cost"] == pytest.approx(32 * (0.3 * fpm_add(1) + fpm_add(4)))
    assert round(xor.energy["op_cost"], 2) == 0.43
    m = multiplier(qtype_of("ternary"), qtype_of("binary"))
    assert (m.kind, m.gate_factor, m.gate_bits, m.output.bits) == ("mux", 0.6, 1, 1)
    tb = layer("binary", "ternary")
    assert str(tb.accumulator) == "sfix4.4"
    assert tb.energy["op_cost"] == pytest.approx(32 * (0.6 * fpm_add(1) + fpm_add(4)))
    m = multiplier(qtype_of("binary"), qtype_of("ternary"))
    assert (m.kind, m.gate_factor, m.gate_bits, m.output.bits) == ("mux", 0.3, 2, 2)
    assert str(layer("ternary", "binary").accumulator) == "sfix5.4"


def test_per_feature_input_widths_pass_a_flatten_that_changes_nothing():
    """A Flatten of (N, F) inputs between a per-feature QActivation and a dense layer made
    every feature cost the widest feature's bits (864 EBOPs instead of 324)."""
    from hetq.quant.fixed_point import quantized_relu

    for mid in (nn.Identity(), nn.Flatten()):
        m = nn.Sequential(
            QActivation(quantized_relu(bits=torch.tensor([2.0, 2, 2, 12]),
                                       integer=torch.tensor([1.0, 1, 1, 1]))), mid,
            QDense(4, 3, kernel_quantizer="quantized_bits(6,0,alpha=1)",
                   bias_quantizer="quantized_bits(6,0,alpha=1)"))
        with torch.no_grad():
            m[2].weight.fill_(0.5)
        assert cost(m, (4,)).summary()["ebops"] == 3 * (2 + 2 + 2 + 12) * 6


def test_the_type_of_tensor_valued_bits_and_integer_holds_every_member():
    """(8, 0) and (4, 3) members were typed sfix8.3 (the largest bits and the largest integer
    apart), which holds neither 7 fractional bits nor, so, the (8, 0) member."""
    from hetq.cost.qtypes import qtype_of
    from hetq.quant.fixed_point import quantized_bits

    t = qtype_of(quantized_bits(bits=torch.tensor([[8.0], [4.0]]),
                                integer=torch.tensor([[0.0], [3.0]])))
    assert str(t) == "sfix11.3"


def test_a_float_activation_fused_into_a_weight_layer_keeps_the_accumulator_type():
    """QDense(..., activation='relu') made the layer's output fp32, so the next layer was
    costed as an fp32 multiply (27.6 pJ instead of about 0.5); QTools keeps the accumulator
    type."""
    qb = "quantized_bits(4,0,1,alpha=1)"
    m = nn.Sequential(QActivation("quantized_bits(8,2)"),
                      QDense(4, 3, kernel_quantizer=qb, bias_quantizer=qb, activation="relu"),
                      QDense(3, 2, kernel_quantizer=qb, bias_quantizer=qb))
    layers = cost(m, (4,)).layers
    assert str(layers[1].output) == str(layers[1].accumulator) == "sfix14.5"
    assert layers[2].multiplier == "mul" and str(layers[2].input) == "sfix14.5"


def test_quantized_tanh_leaves_its_integer_bits_unset_as_the_reference():
    """Spec 4.2: quantized_tanh's int_bits are left unset (-1; JSON 0), which sets the
    widths of what it feeds: here a 24-bit accumulator (it was 23) and op cost 22.0."""
    m = nn.Sequential(QActivation("quantized_tanh(8)"),
                      QDense(16, 5, kernel_quantizer="quantized_bits(8,0,1)",
                             bias_quantizer="quantized_bits(8,7,1)"))
    assert qtype_of("quantized_tanh(8)").to_dict() == {
        "quantizer_type": "fixed", "bits": 8, "int_bits": 0, "is_signed": True}
    lc = cost(m, (16,)).layers[1]
    assert lc.accumulator.to_dict() == {"quantizer_type": "fixed", "bits": 24, "int_bits": 9,
                                        "is_signed": True}
    assert lc.energy["op_cost"] == pytest.approx(80 * (0.2 + 0.075))


def test_quantized_ulaw_is_costed_as_signed_fixed_point():
    """Spec 4.2: quantized_ulaw is fixed point (mode 0) of its bits and integer, signed; the
    cost model refused it."""
    assert qtype_of("quantized_ulaw(8,2)").to_dict() == {
        "quantizer_type": "fixed", "bits": 8, "int_bits": 3, "is_signed": True}
    m = nn.Sequential(QDense(16, 8, kernel_quantizer="quantized_bits(4,0,1)",
                             activation="quantized_ulaw(8)"))
    assert str(cost(m, (16,)).layers[0].output) == "sfix8.0"


def test_batch_norm_with_an_inverse_quantizer_or_no_affine_costs_what_it_stores():
    """An inverse quantizer replaces gamma and variance by one scale of its type: it was
    ignored (gamma and variance as fp32, the multiply a float one, 608 bits for 8 channels).
    affine=False stores no gamma or beta: they were counted (640 bits either way)."""
    from hetq.quant.norm import QBatchNorm

    bn = QBatchNorm(8, inverse_quantizer="quantized_bits(6,2,alpha=1)",
                    beta_quantizer="quantized_bits(8,3,alpha=1)",
                    mean_quantizer="quantized_bits(8,3,alpha=1)")
    x = QActivation("quantized_bits(8,3,alpha=1)")
    lc = cost(nn.Sequential(x, bn), (8,)).layers[1]
    assert lc.param_bits == 8 * (6 + 8 + 8) == 176
    assert lc.multiplier == "mul" and lc.weight == QType("fixed", 6, 2, True)
    assert lc.output == adder(multiplier(QType("fixed", 6, 2, True), x_t := lc.input).output,
                              QType("fixed", 8, 3, True)) and x_t.bits == 8
    plain = cost(nn.Sequential(QBatchNorm(8)), (8,)).layers[0]
    bare = cost(nn.Sequential(QBatchNorm(8, affine=False)), (8,)).layers[0]
    assert (plain.param_bits, bare.param_bits) == (8 * 4 * 32, 8 * 2 * 32)
    assert bare.energy["parameters"] == pytest.approx(2 * mem_access(8 * 32, "sram"))


def test_per_channel_integer_bits_at_one_width_cost_as_that_width():
    """quantized_bits(8, integer=[[0],[3]]) and the same with bits=[[8],[8]] give the same
    weights; the scalar-bits form was costed at the 11-bit type covering both channels (528
    EBOPs, 104 row bits against 80 in the total, 4.60 pJ), the tensor form at 8 bits each."""
    from hetq.quant.fixed_point import quantized_bits

    torch.manual_seed(0)
    ints = torch.tensor([[0.0], [3.0]])
    rows = []
    for kq in (quantized_bits(8, ints, 1, alpha=1),
               quantized_bits(torch.tensor([[8.0], [8.0]]), ints, 1, alpha=1)):
        torch.manual_seed(0)
        m = nn.Sequential(QDense(4, 2, kernel_quantizer=kq, bias_quantizer="quantized_bits(8,3,1)"))
        lc = cost(m, (4,)).layers[0]
        rows.append((lc.ebops, lc.param_bits, round(lc.total, 3)))
    assert rows[0] == rows[1] == (384, 80, 3.554)
    # a per-feature integer on an activation: the next layer multiplies 8-bit features
    act = QActivation(quantized_bits(8, torch.tensor([0.0, 1, 2, 3]), 1, alpha=1))
    m = nn.Sequential(act, QDense(4, 2, kernel_quantizer="quantized_bits(4,0,1)"))
    nn.init.constant_(m[1].weight, 0.5)
    assert cost(m, (4,)).layers[1].ebops == 4 * 2 * 4 * 8  # (was 4 * 2 * 4 * 11)


def test_cost_json_replaces_an_earlier_report_but_not_a_checkpoint(tmp_path, capsys):
    """`hetq cost v.pt --json v.pt` replaced the checkpoint being costed with the JSON; the
    report is also written whole now (it was written in place)."""
    from hetq.train import save

    ckpt = tmp_path / "v.pt"
    save(ckpt, quantize_model(build("jet_mlp"), preset("q6")), model_name="jet_mlp",
         quant_config=preset("q6"))
    before = ckpt.read_bytes()
    assert main(["cost", str(ckpt), "--json", str(ckpt)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"hetq cost: error: --json {ckpt} exists and holds no JSON (a checkpoint?); it is not "
        "replaced: remove it or give another path")
    assert ckpt.read_bytes() == before
    out = tmp_path / "c.json"
    out.write_text('{"old": 1}')
    assert main(["cost", str(ckpt), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["totals"]["ebops"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "v.pt"]  # no temporary


def test_a_float16_source_counts_16_bits_and_an_activation_name_is_no_source():
    """`--source fp16` counted the input as 32 bits in the model size (its EBOPs used 16), and
    `--source relu` was costed as fp32 under the heading 'input relu'."""
    m = quantize_model(build("jet_mlp"), preset("q6"))
    act = {src: cost(m, (16,), source_quantizer=src).summary()["act_bits"]
           for src in ("fp16", "fp32", "int16")}
    assert act["fp32"] - act["fp16"] == 16 * 16 and act["fp16"] == act["int16"]
    for bad, what in (("relu", "source_quantizer"), ("softmax", "reference")):
        kw = {"source_quantizer": bad} if what == "source_quantizer" else {"reference": bad}
        with pytest.raises(ValueError, match=rf"^{what} '{bad}' is a float activation, not a "
                                             r"number type; expected int8, int16, int32, fp16, "
                                             r"fp32 or a quantizer"):
            cost(m, (16,), **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cost_of_a_model_on_the_gpu_equals_its_cost_on_the_cpu():
    """The FPGA estimate combined CPU bit tensors with the weights' device."""
    m = quantize_model(build("jet_mlp"), preset("q6"))
    on_cpu = cost(m, (16,)).summary()
    assert cost(m.cuda(), (16,)).summary() == on_cpu
    assert next(m.parameters()).is_cuda  # (the caller's model stays where it was)


def test_cost_cli_float_as_gives_the_searchs_figures_for_a_hybrid_model(tmp_path, capsys):
    """A search costs the layers a trial leaves float as its --reference type; `hetq cost`
    had no way to give those figures (827 pJ in hetq cost against the table's 91)."""
    config = {"fc1": {"kernel": "quantized_bits(4,0,1)", "bias": "quantized_bits(4,0,1)"}}
    torch.manual_seed(0)
    m = quantize_model(build("jet_mlp"), config)
    want = cost(m, (16,), float_as="int8").summary()
    assert want["energy_pj"] < cost(m, (16,)).summary()["energy_pj"] / 3
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    assert main(["cost", "--model", "jet_mlp", "--config", str(path), "--float-as", "int8",
                 "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"] == json.loads(json.dumps(want))


def test_input_shape_inference_of_separable_and_head_first_models_and_wide_names():
    """A model starting with a QSeparableConv2d was taken as dense (the first Linear's
    inputs) and failed with 'does not run on inputs of shape (144,)'; a model whose head is
    registered before its body failed the same way, neither message naming input_shape. A
    type name over 17 characters (QGlobalAveragePooling2d) pushed its row out of line."""
    from hetq.quant.layers import QSeparableConv2d
    from hetq.quant.pooling import QGlobalAveragePooling2d

    m = nn.Sequential(QSeparableConv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))
    from hetq.cost.report import infer_input_shape

    assert infer_input_shape(m) == (1, 8, 8) and cost(m).layers[0].ebops > 0

    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.out, self.body = nn.Linear(8, 5), nn.Linear(16, 8)

        def forward(self, x):
            return self.out(torch.relu(self.body(x)))

    # the head's 8 inputs do not fit; the body's 16 do (it failed on the head's alone)
    assert infer_input_shape(HeadFirst()) == (16,)
    with pytest.warns(UserWarning, match="does more than call its layers"):
        assert cost(HeadFirst()).summary() == cost(HeadFirst(), (16,)).summary()

    class Cut(nn.Module):  # runs on no dense layer's input size
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x[:, :3])

    with pytest.raises(ValueError, match=r"^cannot infer the input shape: the model runs on "
                                         r"none of its dense layers' input sizes \(4\); pass "
                                         r"input_shape \(CLI: --input-shape\)$"):
        cost(Cut())
    g = nn.Sequential(QConv2d(1, 4, 3, kernel_quantizer="quantized_bits(4,0,1)"),
                      QGlobalAveragePooling2d(), nn.Linear(4, 2))
    lines = cost(g, (1, 6, 6)).table().splitlines()
    head, rows = lines[0], lines[2:5]
    col = head.index("precision")
    assert all(r[col - 1] == " " and r[col] != " " for r in rows), lines[:5]
    assert rows[1].split()[1] == "QGlobalAveragePooling2d"


def test_memory_settings_are_checked():
    """min_sram_size=-5 and nan were taken as 0, rd_wr_on_io='yes' as True; a misspelt
    placement failed only where a layer used it."""
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    for kw, msg in ((dict(min_sram_size=-5), "min_sram_size=-5; expected a number of bits >= 0"),
                    (dict(min_sram_size=math.nan), "min_sram_size=nan; expected"),
                    (dict(rd_wr_on_io="yes"), "rd_wr_on_io='yes'; expected True or False"),
                    (dict(activations_on_memory="srm"),
                     "activations_on_memory='srm'; expected 'sram', 'dram' or 'fixed'")):
        with pytest.raises(ValueError, match="^" + re.escape(msg)):
            cost(m, **kw)
    assert cost(m, min_sram_size=2 ** 20).summary()["energy_pj"] > cost(m).summary()["energy_pj"]


def test_an_unquantized_average_pool_costs_as_the_weight_layers_with_float_as():
    """With float_as (QTools' hybrid models) and in reference mode, an unquantized average
    pool was an fp32 multiply, and every layer after it costed as fp32 multiplies; it now
    takes those modes' types as an unquantized weight layer does."""
    m = nn.Sequential(QConv2d(1, 2, 3, kernel_quantizer="quantized_bits(4,0,1)", bias=False),
                      QActivation("quantized_relu(4,0)"), nn.AvgPool2d(2), nn.Flatten(),
                      QDense(18, 3, kernel_quantizer="quantized_bits(4,0,1)", bias=False))
    plain = cost(m, (1, 8, 8))
    assert [(lc.multiplier, str(lc.output)) for lc in plain.layers[2:]] == [
        ("fmul", "fp32"), (None, "fp32"), ("fmul", "fp32")]  # (unquantized: fp32, as documented)
    for kw in ({"float_as": "int8"}, {"reference": "int8"}):
        pool, _, dense = cost(m, (1, 8, 8), **kw).layers[2:]
        # (the reference accumulator of int8: 32 bits)
        assert (pool.multiplier, str(pool.output), dense.multiplier) == \
            ("mul", "sfix32.10", "mul"), kw
