"""Training loop, metrics, checkpoints, PTQ, models and the train/evaluate CLI."""

import json
import re
import sys

import numpy as np
import pytest
import torch

import hetq
from hetq.cli import main
from hetq.data import get_dataset
from hetq.models import build, preset
from hetq.quant.convert import quantize_model
from hetq.train import Anomaly, Classify, evaluate, fit, save
from hetq.train.metrics import auc, roc_curve, tpr_at_fpr
from hetq.train.ptq import ptq_config


@pytest.fixture(scope="module")
def jets():
    return get_dataset("jets-sim")


def trained(data, seed=0, epochs=2, q6=False):
    torch.manual_seed(seed)
    m = build("jet_mlp")
    if q6:
        m = quantize_model(m, preset("q6"))
    fit(m, data, epochs=epochs, lr=3e-3, seed=seed, progress=False)
    return m


def test_metrics_match_scikit_learn():
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # ties on purpose
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr = roc_curve(s, y)
    f2, t2, _ = sk_roc(y, s, drop_intermediate=False)
    assert np.allclose(fpr, f2) and np.allclose(tpr, t2)
    assert tpr_at_fpr(s, y, 0.1) == pytest.approx(np.interp(0.1, f2, t2))


def test_same_seed_gives_identical_weights(jets):
    a, b = trained(jets, seed=3, q6=True), trained(jets, seed=3, q6=True)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values()))
    c = trained(jets, seed=4, q6=True)
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


def test_training_learns_and_reports_history(jets):
    seen = []
    torch.manual_seed(0)
    m = build("jet_mlp")
    res = fit(m, jets, epochs=4, lr=3e-3, progress=False, report=lambda e, v: seen.append(e))
    assert seen == [0, 1, 2, 3] and len(res.history) == 4
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    acc = evaluate(m, jets)["accuracy"]
    assert acc > 0.45  # 5 classes: chance is 0.2
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(m, jets, epochs=0)


def test_report_hook_can_stop_training(jets):
    class Stop(Exception):
        pass

    def report(epoch, val):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(build("jet_mlp"), jets, epochs=5, progress=False, report=report)


def test_checkpoint_round_trip_reproduces_predictions(jets, tmp_path):
    m = trained(jets, q6=True)
    path = save(tmp_path / "q6.pt", m, model_name="jet_mlp", data=jets, metrics={"x": 1})
    loaded = hetq.load(path)
    X, _ = jets.tensors("test")
    assert torch.equal(loaded(X), m.eval()(X))
    assert type(loaded.fc1).__name__ == "QDense"
    with pytest.raises(ValueError, match="not a hetq checkpoint"):
        torch.save({"a": 1}, tmp_path / "bad.pt")
        hetq.load(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"is a folder without a model.pt; expected a "
                                         r"checkpoint file, e.g. one of bad.pt, q6.pt"):
        hetq.load(tmp_path)  # a folder: its model.pt (what `hetq train` writes) is read
    save(tmp_path / "model.pt", m, model_name="jet_mlp", data=jets)
    assert torch.equal(hetq.load(tmp_path)(X), m.eval()(X))


def test_cnn_trains_above_chance_on_digits():
    d = get_dataset("digits")
    torch.manual_seed(0)
    m = build("cnn_digits")
    fit(m, d, epochs=6, batch_size=64, lr=3e-3, progress=False)
    assert evaluate(m, d)["accuracy"] > 0.5  # chance is 0.1


def test_anomaly_task_trains_on_background_only(jets):
    task = Anomaly(background=("q", "g"))
    Xtr, ytr = task.select(jets.X_train, jets.y_train, "train", jets.classes)
    assert set(np.unique(ytr).tolist()) == {0, 1}
    torch.manual_seed(0)
    ae = build("jet_autoencoder")
    fit(ae, jets, epochs=3, task=task, progress=False)
    m = evaluate(ae, jets, task=task)
    assert set(m) >= {"sig_eff_t", "sig_eff_w", "sig_eff_z", "auc_t", "sig_eff_mean"}
    assert 0.0 <= m["sig_eff_t"] <= 1.0


def test_an_anomaly_checkpoint_keeps_its_background(tmp_path, capsys):
    """The background classes were not saved, so evaluate and ptq scored a model trained on t
    jets as if q and g were its background; the 'background reconstruction loss' line showed
    the loss over every test sample; a background of every class, or --background with the
    classify task, passed without a word."""
    from hetq.train.loop import predict_scores

    out = tmp_path / "a"
    # (no --model: the anomaly task's default is the autoencoder; it was jet_mlp, refused)
    args = ["--task", "anomaly", "--model-widths", "4", "2", "4", "--epochs", "1",
            "--no-progress"]
    (out).mkdir()
    (out / "roc.png").write_bytes(b"an earlier classifier's curves")
    assert main(["train", *args, "--background", "t", "--out", str(out), "--overwrite"]) == 0
    trained_table = capsys.readouterr().out.split("(best epoch")[1].split("checkpoint:")[0]
    assert not (out / "roc.png").exists()
    assert main(["evaluate", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.split("\n", 1)[1] == trained_table.split("\n", 1)[1]
    signals = [ln.split()[0] for ln in table.splitlines()[3:] if ln.strip()]
    assert signals == ["g", "q", "w", "z"]
    assert main(["evaluate", str(out), "--split", "val"]) == 0  # (a header without rows)
    assert capsys.readouterr().out.splitlines()[2:] == [
        "no signal samples in this split: an anomaly model's train and val splits keep the "
        "background only; its signal efficiencies are on the test split"]
    model = hetq.load(out)
    saved = torch.load(out / "model.pt", weights_only=False)
    assert saved["background"] == ["t"] and saved["model"] == "jet_autoencoder"
    data = get_dataset("jets-sim")
    task = Anomaly(background=("t",))
    m = evaluate(model, data, task=task)
    X, y = data.tensors("test")
    bg = y.numpy() == data.classes.index("t")
    assert m["bg_loss"] == pytest.approx(float(predict_scores(model, X, task)[bg].mean()))
    assert f"background reconstruction loss {m['bg_loss']:.5f}" in table
    assert m["bg_loss"] != pytest.approx(m["loss"], rel=1e-3)
    assert main(["ptq", str(out), "--bits", "8", "--calibration", "100000"]) == 0
    printed = capsys.readouterr().out
    assert "background" in printed
    assert torch.load(out / "ptq8.pt", weights_only=False)["background"] == ["t"]
    # calibrated on the background it trained on (the signal jets were in it too)
    n_bg = int((data.y_train == data.classes.index("t")).sum())
    assert f"(calibrated on {n_bg} training samples, all the train split has)" in printed
    for extra, msg in ((["--model", "jet_autoencoder", "--task", "anomaly", "--background",
                         "g,q,t,w,z"],
                        "anomaly task: the background g,q,t,w,z takes every class of the data "
                        "(g,q,t,w,z), leaving no signal to detect"),
                       (["--background", "g"], "--background g is for --task anomaly (the "
                                               "classes an autoencoder is trained on); leave it "
                                               "out for classify")):
        assert main(["train", "--model-widths", "4", "--epochs", "1", *extra, "--out",
                     str(tmp_path / "x"), "--no-progress"]) == 2
        assert capsys.readouterr().err == f"hetq train: error: {msg}\n"
    assert not (tmp_path / "x").exists()


def test_ptq_integer_bits_from_ranges(jets):
    m = trained(jets)
    X, _ = jets.tensors("train")
    cfg = ptq_config(m, X[:2000], 8).to_dict()
    w = m.fc1.weight.detach()
    i = int(np.ceil(np.log2(float(w.abs().max()))))
    assert cfg["fc1"]["kernel"] in (f"quantized_bits(8,{max(i, 0)},alpha=1)",
                                    f"quantized_bits(8,{max(i, 0) + 1},alpha=1)")
    assert cfg["relu1"]["activation"].startswith("quantized_relu(8,")
    with pytest.raises(ValueError, match="PTQ takes 2 to 32 bits, got 1$"):
        ptq_config(m, X[:10], 1)
    assert ptq_config(m, X[:10], 32).to_dict()["fc1"]["kernel"].startswith("quantized_bits(32,")
    with pytest.raises(ValueError, match="got 100 .a float32 model keeps 24 significant bits"):
        ptq_config(m, X[:10], 100)  # used to pass, and export failed later on its 100-bit types


def test_ptq_and_conversion_keep_a_relu6_cap():
    """A ReLU6 became a plain quantized_relu(8,3), whose outputs went to 7.97 (the outputs
    1.1 off the float model's), without a word; quantize_model did not say so either."""
    import warnings

    from torch import nn

    from hetq.export import IntegerModel
    from hetq.train.ptq import ptq

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU6(), nn.Linear(8, 2))
    with torch.no_grad():
        m[0].weight.mul_(10)
    calib, x = torch.randn(1000, 4), torch.randn(500, 4) * 3
    with pytest.warns(UserWarning, match=r"layer '1' \(ReLU6\) keeps its cap at 6 as "
                                         r"quantized_relu\(8,3,relu_upper_bound=6,"
                                         r"is_quantized_clip=False\), which the integer engine "
                                         r"runs exactly but the QONNX and hls4ml exports do not"):
        assert ptq_config(m, calib, 8).to_dict()["1"] == {
            "activation": "quantized_relu(8,3,relu_upper_bound=6,is_quantized_clip=False)"}
    small = nn.Sequential(nn.Linear(4, 8), nn.ReLU6(), nn.Linear(8, 2))  # (below 4: no cap
    assert ptq_config(small, calib, 4).to_dict()["1"]["activation"] in (  # to keep)
        "quantized_relu(4,1)", "quantized_relu(4,2)")
    with pytest.warns(UserWarning, match="keeps its cap"):
        q = ptq(m, calib, 8)
    with torch.no_grad():
        assert float(q[1](q[0](x)).max()) == 6.0
        assert float((m(x) - q(x)).abs().max()) < 0.2  # (was 1.1)
    im = IntegerModel(q, (4,), "ap_fixed<16,6>")  # (and it exports bit-exactly)
    xg = im.on_grid(x)
    with torch.no_grad():
        assert torch.equal(im(xg).double(), q.double()(xg.double()))
    with pytest.warns(UserWarning, match=r"layer '1' \(ReLU6\): the quantizer "
                                         r"quantized_relu\(8,3\) lifts this ReLU6's cap at 6 "
                                         r"to 7.96875"):
        quantize_model(m, {"ReLU6": {"activation": "quantized_relu(8,3)"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a grid below 6, or the cap kept: nothing to say)
        quantize_model(m, {"ReLU6": {"activation": "quantized_relu(8,2)"}})
        quantize_model(m, {"ReLU6": {"activation": "quantized_relu(8,3,relu_upper_bound=6,"
                                                   "is_quantized_clip=False)"}})


def test_ptq_cli(jets, tmp_path, capsys):
    """`hetq ptq` writes ptqBITS.pt next to the checkpoint (inside it when given the folder
    `hetq train` wrote), with the config ptq_config gives and the test metrics it printed."""
    m = trained(jets)
    save(tmp_path / "f" / "model.pt", m, model_name="jet_mlp", data=jets)
    X, _ = jets.tensors("train")
    want = ptq_config(m, X[:500], 6).to_dict()
    for source, out in ((tmp_path / "f", tmp_path / "f" / "ptq6.pt"),
                        (tmp_path / "f" / "model.pt", tmp_path / "f" / "ptq6.pt")):
        out.unlink(missing_ok=True)
        assert main(["ptq", str(source), "--bits", "6", "--calibration", "500",
                     "--no-progress"]) == 0
        printed = capsys.readouterr().out
        ckpt = torch.load(out, weights_only=False)
        assert ckpt["quant_config"] == want
        acc = evaluate(hetq.load(out), jets)["accuracy"]
        assert acc == ckpt["metrics"]["test"]["accuracy"] and f"accuracy {acc:.4f}" in printed
    from hetq.train.checkpoint import save_module

    point = save_module(tmp_path / "point.pt", quantize_model(m, preset("q6")))  # e.g. gradient
    for q in (out, point):  # already quantized (a stored module used to be a KeyError)
        assert main(["ptq", str(q)]) == 2
        assert f"{q} is already quantized; PTQ starts from a float model" in \
            capsys.readouterr().err
    # --out: a folder gets ptqBITS.pt inside it; an existing checkpoint is refused before any
    # work (it used to be replaced), unless --overwrite
    d = tmp_path / "d"
    d.mkdir()
    args = ["ptq", str(tmp_path / "f"), "--bits", "6", "--calibration", "500", "--out", str(d),
            "--no-progress"]
    assert main(args) == 0 and (d / "ptq6.pt").is_file()
    capsys.readouterr()
    assert main(args) == 2
    printed, err = capsys.readouterr()
    assert err == (f"hetq ptq: error: {d / 'ptq6.pt'} already exists (from an earlier run); "
                   "give another --out, or --overwrite to replace it\n") and "PTQ" not in printed
    assert main([*args, "--overwrite"]) == 0 and "checkpoint: " in capsys.readouterr().out
    assert sorted(p.name for p in d.iterdir()) == ["ptq6.pt"]


def test_a_checkpoint_that_cannot_be_written_leaves_no_temporary_file(tmp_path):
    """The atomic write (a temporary file, then a rename) removes its temporary when the rename
    fails, e.g. on a folder of that name (`hetq ptq --out FOLDER` used to leave FOLDER.tmp)."""
    from hetq.train.checkpoint import save_module

    (tmp_path / "m.pt").mkdir()
    with pytest.raises(OSError):
        save_module(tmp_path / "m.pt", build("jet_mlp"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_train_and_evaluate_cli(tmp_path, capsys):
    out = tmp_path / "q6"
    assert main(["train", "--preset", "q6", "--epochs", "2", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "tpr@fpr=0.01" in printed
    assert (out / "model.pt").exists() and (out / "roc.png").exists()
    acc = json.loads((out / "metrics.json").read_text())["test"]["accuracy"]
    assert main(["evaluate", str(out / "model.pt")]) == 0
    assert f"accuracy {acc:.4f}" in capsys.readouterr().out
    assert main(["train", "--preset", "q7", "--out", str(tmp_path / "q7")]) == 2
    assert "unknown preset 'q7'" in capsys.readouterr().err
    # a folder holding a model is not replaced (refused before training) unless --overwrite
    first = (out / "model.pt").read_bytes()
    again = ["train", "--preset", "q6", "--epochs", "1", "--out", str(out), "--no-progress"]
    assert main(again) == 2
    assert (f"{out / 'model.pt'} already exists (from an earlier run); give another --out, or "
            "--overwrite to replace it") in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() == first
    assert main([*again, "--overwrite"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 1
    assert (out / "model.pt").read_bytes() != first
    assert main(["train", "--out", str(out / "model.pt")]) == 2
    assert f"--out {out / 'model.pt'} is a file; expected a folder" in capsys.readouterr().err
    # --init: a quantized checkpoint's weights start a float run; other architectures refused
    init = tmp_path / "init"
    assert main(["train", "--init", str(out / "model.pt"), "--epochs", "1", "--out", str(init),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "--init", str(out / "model.pt"), "--model", "cnn_digits", "--data",
                 "digits", "--out", str(tmp_path / "init2")]) == 2
    assert f"--init {out / 'model.pt'}: the checkpoint lacks" in capsys.readouterr().err
    assert main(["train", "--init", str(out / "model.pt"), "--data",
                 "synthetic:features=8,classes=5", "--out", str(tmp_path / "init3")]) == 2
    assert "its weights do not fit this model (size mismatch for fc1.weight" in \
        capsys.readouterr().err


def test_train_cli_model_widths(tmp_path, capsys):
    """`hetq train --model-widths 8 4` (as `hetq search` has it) trains and saves a 16-8-4-5
    jet MLP that loads back with those widths."""
    out = tmp_path / "w"
    assert main(["train", "--model-widths", "8", "4", "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    assert torch.load(out / "model.pt", weights_only=False)["model_kwargs"]["widths"] == [8, 4]
    shapes = [tuple(m.weight.shape) for m in hetq.load(out).modules()
              if isinstance(m, torch.nn.Linear)]
    assert shapes == [(8, 16), (4, 8), (5, 4)]
    assert "trained 1 epoch in " in capsys.readouterr().out  # (not '1 epochs')
    assert main(["train", "--model", "cnn_digits", "--data", "digits", "--model-widths", "8",
                 "--out", str(tmp_path / "c")]) == 2
    assert ("--model-widths sets the hidden layers of jet_mlp or jet_autoencoder, not "
            "cnn_digits") in capsys.readouterr().err


def test_a_model_that_does_not_suit_the_data_or_task_is_a_clear_error(jets, tmp_path, capsys):
    digits = get_dataset("digits")
    with pytest.raises(ValueError, match=r"the model does not take the samples of digits \(shape "
                                         r"\(1, 8, 8\)\): mat1 and mat2 shapes"):
        evaluate(build("jet_mlp"), digits)
    with pytest.raises(ValueError, match=r"classify task: the model gives outputs of shape \(3,\)"
                                         r" per sample; the data has 5 classes"):
        fit(build("jet_mlp", n_out=3), jets, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"anomaly task: the model must reconstruct its input .* "
                                         r"maps samples of shape \(16,\) to \(5,\)"):
        fit(build("jet_mlp"), jets, epochs=1, task=Anomaly(), progress=False)
    assert main(["train", "--model", "cnn_digits", "--epochs", "1", "--no-progress", "--out",
                 str(tmp_path / "cnn"), "--data", "jets-sim"]) == 2
    assert "does not take the samples of jets-sim (shape (16,))" in capsys.readouterr().err


def test_train_says_a_model_with_built_in_quantizers_is_not_float(tmp_path, capsys):
    """hetq train --model cnn_digits printed 'float' on its first line, for a model whose
    layers are quantized as built."""
    assert main(["train", "--model", "cnn_digits", "--data", "digits", "--epochs", "1",
                 "--no-progress", "--out", str(tmp_path / "c")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("cnn_digits on Dataset('digits'") and \
        first.endswith(", as built (its own quantizers)")


def test_save_refuses_a_checkpoint_that_load_could_not_rebuild(tmp_path):
    """A hand-built nn.Sequential saved as model_name='jet_mlp' (or an unknown name) was
    written without a word; load then failed with 'Missing key(s) in state_dict'."""
    from torch import nn

    from hetq.train.checkpoint import load, save_module

    hand = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    q6 = quantize_model(hand, preset("q6"))
    for name, why in (("jet_mlp", 'Missing key(s) in state_dict: "fc1.weight", "fc1.bias"'),
                      ("custom", "unknown model 'custom'")):
        with pytest.raises(ValueError) as e:
            save(tmp_path / f"{name}.pt", q6, model_name=name)
        assert str(e.value).startswith(f"model_name={name!r} with model_kwargs {{}} does not "
                                       f"rebuild this Sequential ({why}")
        assert str(e.value).endswith("or any other module with "
                                     "hetq.train.checkpoint.save_module")
        assert not (tmp_path / f"{name}.pt").exists()
    save_module(tmp_path / "hand.pt", q6)  # the way for such a model
    x = torch.randn(4, 16)
    assert torch.equal(load(tmp_path / "hand.pt")(x), q6.eval()(x))
    zoo = quantize_model(build("jet_mlp"), preset("q6"))
    save(tmp_path / "zoo.pt", zoo, model_name="jet_mlp")
    assert torch.equal(load(tmp_path / "zoo.pt")(x), zoo.eval()(x))


def test_a_checkpoint_whose_weights_do_not_fit_is_a_named_error(tmp_path, capsys):
    """A checkpoint edited by hand or damaged (tensors missing, renamed or mis-shaped, or its
    model entries gone) ended `hetq evaluate` and `load` in load_state_dict's RuntimeError or
    a KeyError traceback."""
    from hetq.train.checkpoint import load

    save(tmp_path / "ok.pt", build("jet_mlp"), model_name="jet_mlp")
    ckpt = torch.load(tmp_path / "ok.pt", weights_only=False)
    cases = {"missing": lambda c: c["state_dict"].pop("fc1.weight"),
             "shape": lambda c: c["state_dict"].__setitem__("fc1.bias", torch.zeros(3)),
             "entries": lambda c: c.pop("model")}
    for name, edit in cases.items():
        c = {**ckpt, "state_dict": dict(ckpt["state_dict"])}
        edit(c)
        torch.save(c, tmp_path / f"{name}.pt")
    with pytest.raises(ValueError, match=r"missing.pt: the checkpoint's weights do not fit its "
                                         r"model 'jet_mlp' \(Missing key\(s\) in state_dict: "
                                         r'"fc1.weight"'):
        load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"entries.pt: the checkpoint lacks its 'model' entries "
                                         r"\(and stores no module\)"):
        load(tmp_path / "entries.pt")
    assert main(["evaluate", str(tmp_path / "shape.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hetq evaluate: error: ") and "Traceback" not in err
    assert "shape.pt: the checkpoint's weights do not fit its model 'jet_mlp' (size mismatch " \
        "for fc1.bias" in err


def test_a_last_training_batch_of_one_sample_joins_the_one_before():
    """Batch norm cannot train on one sample (now refused); fit's last batch could be one."""
    from torch import nn

    from hetq.train.loop import batch_bounds

    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]
    assert batch_bounds(8, 4) == [(0, 4), (4, 8)] and batch_bounds(1, 4) == [(0, 1)]
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    data = get_dataset("jets-sim")
    n = len(data.X_train)
    m = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))
    fit(m, data, epochs=1, batch_size=n - 1, progress=False)  # (torch refused the 1-sample batch)


def test_evaluate_and_ptq_standardise_the_data_as_the_checkpoint_was_trained(tmp_path, capsys):
    """evaluate and ptq standardised --data with that data's own train split, not the
    statistics the model was trained with: the same test jets scored 0.62 from the built-in
    sample and 0.46 from a file whose train split held other jets."""
    from pathlib import Path

    import hetq.data

    out = tmp_path / "r"
    assert main(["train", "--model-widths", "8", "--epochs", "2", "--out", str(out),
                 "--no-progress"]) == 0
    d = dict(np.load(Path(hetq.data.__file__).parent / "jets_sim_small.npz"))
    top = list(d["classes"]).index("t")
    d["split"] = np.where((d["split"] == 0) & (d["y"] != top), 1, d["split"])  # train: t only
    np.savez(tmp_path / "t.npz", **d)
    capsys.readouterr()
    lines = []
    for data in ("jets-sim", f"jets-sim:{tmp_path / 't.npz'}"):
        assert main(["evaluate", str(out), "--data", data]) == 0
        lines.append([ln for ln in capsys.readouterr().out.splitlines() if "accuracy" in ln])
    saved = json.loads((out / "metrics.json").read_text())["test"]
    assert lines[0] == lines[1] and f"accuracy {saved['accuracy']:.4f}" in lines[0][0]
    assert get_dataset(f"jets-sim:{tmp_path / 't.npz'}").mean.tolist() != \
        get_dataset("jets-sim").mean.tolist()  # (the file's own statistics do differ)
    # data of other features or classes, or of another shape, are refused by name
    for argv, msg in (
            (["evaluate", str(out), "--data", "synthetic:classes=5"],
             f"synthetic has other features than the data {out} was trained on (jets-sim): "
             "'x0' where it had 'zlogz', at position 0"),
            (["ptq", str(out), "--data", "digits"],
             f"digits has other classes than the data {out} was trained on (jets-sim): '0' "
             "where it had 'g', at position 0")):
        assert main(argv) == 2
        assert capsys.readouterr().err == f"hetq {argv[0]}: error: {msg}\n"
    assert not (out / "ptq8.pt").exists()
    # more logits than the data's named classes: a clear error, no longer metrics of nonsense
    two = get_dataset("synthetic:classes=2,features=16")
    with pytest.raises(ValueError, match=r"the model gives outputs of shape \(5,\) per sample; "
                                         r"the data has 2 classes, so \(2,\) logits"):
        evaluate(build("jet_mlp"), two)
    assert main(["train", "--model", "jet_autoencoder", "--model-widths", "4", "2", "4",
                 "--epochs", "1", "--out", str(tmp_path / "ae"), "--no-progress"]) == 2
    assert "outputs of shape (16,) per sample; the data has 5 classes" in \
        capsys.readouterr().err


def test_diverged_training_and_a_ptq_folder_with_a_slash(tmp_path, capsys):
    """A diverged training ended in a FloatingPointError traceback; `ptq --out new/` wrote
    a file named 'new'."""
    assert main(["train", "--model-widths", "8", "--epochs", "2", "--lr", "1e30", "--out",
                 str(tmp_path / "x"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hetq train: error: training diverged at epoch ") and \
        "Traceback" not in err and not (tmp_path / "x").exists()
    assert main(["train", "--model-widths", "8", "--epochs", "1", "--out", str(tmp_path / "f"),
                 "--no-progress"]) == 0
    assert main(["ptq", str(tmp_path / "f"), "--bits", "6", "--out",
                 str(tmp_path / "new") + "/"]) == 0
    assert (tmp_path / "new" / "ptq6.pt").is_file()
    assert f"checkpoint: {tmp_path / 'new' / 'ptq6.pt'}" in capsys.readouterr().out


def test_ctrl_c_during_hetq_train_saves_the_best_epoch_so_far(jets, tmp_path, monkeypatch,
                                                            capsys):
    import hetq.train.loop as loop

    def ctrl_c_at(stop):
        def report(epoch, val):
            if epoch == stop:
                raise KeyboardInterrupt
        return report

    torch.manual_seed(0)
    m = build("jet_mlp")
    with pytest.raises(KeyboardInterrupt):  # by default fit stops (a search trial must)
        fit(m, jets, epochs=5, report=ctrl_c_at(1), progress=False)
    res = fit(m, jets, epochs=5, report=ctrl_c_at(2), progress=False, interruptible=True)
    assert res.interrupted and len(res.history) == 3
    best = min(res.history, key=lambda r: r["val_loss"])
    assert evaluate(m, jets, "val")["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    class CtrlCInFirstStep(Classify):
        def loss(self, out, x, y):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # no epoch finished: nothing to keep
        fit(m, jets, epochs=5, task=CtrlCInFirstStep(), progress=False, interruptible=True)

    orig = loop.fit
    monkeypatch.setattr(loop, "fit", lambda *a, **k: orig(*a, report=ctrl_c_at(1), **k))
    out = tmp_path / "t"
    # saved, and the exit status still says it was interrupted (a script does not go on)
    assert main(["train", "--epochs", "10", "--out", str(out), "--no-progress"]) == 130
    assert "interrupted after 2 epochs: saving the best of them" in capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    assert len(saved["history"]) == 2 and (out / "model.pt").exists()


def test_demo_refuses_image_data_before_any_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    assert main(["demo", "--data", "digits", "--out", str(out), "--no-progress"]) == 2
    stdout, err = capsys.readouterr()
    assert err == ("hetq demo: error: the demo trains the jet tagger (jet_mlp), which takes "
                   "flat feature vectors; digits has samples of shape (1, 8, 8). Use a feature "
                   "data set (e.g. --data jets-sim), or train an image model with `hetq train "
                   "--model cnn_digits --data digits`\n")
    assert stdout == "" and not out.exists()  # nothing trained, no folder made
    # a rerun into an earlier demo's folder with other settings is refused before its float
    # and Q6 checkpoints are replaced (the search refused it only at step 4)
    from hetq.search.config import SearchConfig
    from hetq.search.space import DEPLOYABLE_QUANTIZATION_CONFIG

    (out / "search").mkdir(parents=True)
    earlier = SearchConfig(data="jets-sim", trials=16, epochs=1, quantization_config=
                           DEPLOYABLE_QUANTIZATION_CONFIG, float_epochs=20, batch_size=256,
                           lr=2e-3, model_kwargs={"n_in": 16, "n_out": 5},
                           source_quantizer="quantized_bits(16,5,alpha=1)")
    earlier.save(out / "search" / "search.yaml")
    (out / "float.pt").write_bytes(b"the earlier demo's")
    assert main(["demo", "--trials", "3", "--trial-epochs", "2", "--out", str(out),
                 "--no-progress"]) == 2
    stdout, err = capsys.readouterr()
    assert err == (f"hetq demo: error: {out} holds a demo run with other settings "
                   "(--trial-epochs 1, now 2); use another --out, or the same settings to "
                   "resume its search (--trials may change)\n")
    assert stdout == "" and (out / "float.pt").read_bytes() == b"the earlier demo's"
    # settings no demo option sets (an older demo's int8 inputs, a `hetq search` run's) were
    # listed as if --trials-style options could match them
    import dataclasses

    dataclasses.replace(earlier, epochs=5, source_quantizer="int8").save(
        out / "search" / "search.yaml")
    assert main(["demo", "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"hetq demo: error: {out / 'search'} holds a search with settings this demo does not "
        "make (source_quantizer: another hetq version's demo, or a `hetq search` run); use "
        "another --out\n")
    # a `hetq search` run folder: its float.pt was replaced, and the search no longer resumed
    run = tmp_path / "s"
    run.mkdir()
    earlier.save(run / "search.yaml")
    (run / "float.pt").write_bytes(b"the search's")
    assert main(["demo", "--out", str(run), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"hetq demo: error: {run} holds a `hetq search` run; "
                                       "the demo would replace its float.pt; use another "
                                       "--out\n")
    assert (run / "float.pt").read_bytes() == b"the search's"
    # the export's places, checked at step 5 after the whole search
    clash = tmp_path / "c"
    (clash / "export" / "model.onnx").mkdir(parents=True)
    assert main(["demo", "--out", str(clash), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"hetq demo: error: --out {clash}/export/model.onnx is "
                                       "a folder; expected a file to write\n")
    (clash / "export" / "model.onnx").rmdir()
    (clash / "export" / "hls").mkdir()
    (clash / "export" / "hls" / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(clash), "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"hetq demo: error: --out: {clash}/export/hls is not empty and holds no hls4ml "
        "project (no hls4ml_config.yml); give a new or empty folder for the project\n")
    assert sorted(p.name for p in clash.iterdir()) == ["export"]
    # Ctrl-C said only "interrupted", not what a rerun keeps
    import hetq.train

    def ctrl_c(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(hetq.train, "fit", ctrl_c)
    assert main(["demo", "--out", str(tmp_path / "k"), "--no-progress"]) == 130
    assert (f"demo stopped. A rerun of the same command trains steps 1-3 again and resumes "
            f"the search in {tmp_path / 'k' / 'search'} (its finished trials are kept)") in \
        capsys.readouterr().out


def test_counts_below_one_and_bad_learning_rates_are_refused_before_any_work(jets, capsys):
    for argv in (["demo", "--trials", "0"], ["search", "--workers", "0"],
                 ["train", "--patience", "0"], ["ptq", "x.pt", "--calibration", "0"],
                 ["retrain", "run", "--trial", "1", "--epochs", "-2"]):
        with pytest.raises(SystemExit):
            main(argv)
        flag = argv[-2]
        assert f"argument {flag}: expected an integer >= 1, got '{argv[-1]}'" in \
            capsys.readouterr().err
    for bad in (-1, 0):  # (0 used to stop after the first epoch, however it went)
        with pytest.raises(ValueError, match=f"patience must be >= 1 epoch .*, got {bad}$"):
            fit(build("jet_mlp"), jets, epochs=1, patience=bad, progress=False)
    for argv in (["train", "--lr", "0"], ["train", "--lr", "nan"],
                 ["retrain", "run", "--trial", "1", "--lr", "-0.001"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert f"argument --lr: expected a number > 0, got '{argv[-1]}'" in \
            capsys.readouterr().err
    for kw, msg in (({"lr": 0.0}, "lr must be a learning rate > 0, got 0.0"),
                    ({"lr": float("nan")}, "lr must be a learning rate > 0, got nan"),
                    ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
                    # (these were TypeErrors from deep inside: "'float' object cannot be
                    # interpreted as an integer", "'<' not supported ...")
                    ({"epochs": 1.5}, r"epochs must be a whole number, got 1.5 \(float\)"),
                    ({"epochs": "2"}, r"epochs must be a whole number, got '2' \(str\)"),
                    ({"batch_size": 100.5}, "batch_size must be a whole number, got 100.5"),
                    ({"lr": "1e-3"}, r"lr must be a number, got '1e-3' \(str\)"),
                    ({"patience": 2.5}, "patience must be a whole number of epochs")):
        with pytest.raises(ValueError, match=msg):
            fit(build("jet_mlp"), jets, **{"epochs": 1, "progress": False, **kw})
    import numpy as np  # numpy integers are whole numbers
    assert len(fit(build("jet_mlp"), jets, epochs=np.int64(1), progress=False).history) == 1


def test_evaluate_runs_the_model_where_it_is(jets):
    """evaluate's device defaulted to "cpu" and moved the model there (a GPU model left its
    GPU as a side effect); by default it now runs where the model is, without moving it."""
    from torch import nn

    class Pinned(nn.Sequential):
        def to(self, *a, **k):
            raise AssertionError("evaluate moved the model")

    m = Pinned(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))
    assert 0.0 <= evaluate(m, jets)["accuracy"] <= 1.0
    with pytest.raises(AssertionError, match="evaluate moved the model"):
        evaluate(m, jets, device="cpu")  # asked for: moved there


def test_export_checks_on_the_data_the_checkpoint_was_trained_on(tmp_path, capsys):
    """hetq export compared a model trained on other data on jets-sim (the default --data),
    standardised anew, where hetq evaluate refuses the mismatch: now the same check, and
    the checkpoint's own standardisation."""
    import warnings

    data = get_dataset("synthetic:n=600,seed=1")
    m = build("jet_mlp", widths=[4])
    q = quantize_model(m, preset("q6"))
    ckpt = tmp_path / "q.pt"
    save(ckpt, q, model_name="jet_mlp", model_kwargs={"widths": [4]}, quant_config=preset("q6"),
         data=data)
    assert main(["export", str(ckpt), "--samples", "50", "--data", "jets-sim"]) == 2
    assert (f"jets-sim has other features than the data {ckpt} was trained on (synthetic): "
            "'zlogz' where it had 'x0', at position 0") in capsys.readouterr().err
    for data in (["--data", "synthetic:n=600,seed=1"], []):  # (default: the checkpoint's)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (inputs within ap_fixed<16,6>: nothing to say)
            assert main(["export", str(ckpt), "--samples", "50", *data,
                         "--input-type", "ap_fixed<16,6>"]) == 0
        assert "samples     50  mismatches     0" in capsys.readouterr().out
    # an input type that wraps most inputs was 'bit-exact' without a word
    x = get_dataset("synthetic:n=600,seed=1").X_test[:50]
    bad = int(((x < -2 ** -11) | (x > 64 - 2 ** -11)).sum())
    with pytest.warns(UserWarning, match=re.escape(
            f"{bad:,} of the {x.size:,} input values ({bad / x.size:.1%}) lie outside the "
            "input type ap_ufixed<16,6>'s range [0, 63.999], so they saturate or wrap")):
        assert main(["export", str(ckpt), "--samples", "50", "--input-type",
                     "ap_ufixed<16,6>"]) == 0
    assert "mismatches     0" in capsys.readouterr().out


def test_an_export_refused_its_hls4ml_folder_writes_no_qonnx_either(tmp_path, capsys):
    """The hls4ml folder was locked only when its project was written: an export refused
    there (another export at work) had written its --qonnx already."""
    pytest.importorskip("qonnx")
    pytest.importorskip("hls4ml")
    from hetq.export.hls import project_lock

    data = get_dataset("synthetic:n=600,seed=1")
    q = quantize_model(build("jet_mlp", widths=[4]), preset("q6"))
    ckpt = tmp_path / "q.pt"
    save(ckpt, q, model_name="jet_mlp", model_kwargs={"widths": [4]}, quant_config=preset("q6"),
         data=data)
    onnx, hls = tmp_path / "q.onnx", tmp_path / "hls"
    argv = ["export", str(ckpt), "--samples", "50", "--input-type",
            "ap_fixed<16,6,AP_RND_CONV,AP_SAT>", "--qonnx", str(onnx), "--hls4ml", str(hls),
            "--no-compile"]
    with project_lock(hls):  # (as another export would hold it)
        assert main(argv) == 2
    assert f"hetq export: error: {hls} is in use by another hetq command" in capsys.readouterr().err
    assert not onnx.exists() and not hls.exists()
    assert main(argv) == 0
    assert onnx.is_file() and (hls / "hls4ml_config.yml").is_file()


def test_an_output_path_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """A file where an output folder goes (or another file-system error) is a one-line
    error naming the path, not an OSError traceback."""
    import errno

    from hetq.cli import path_problem

    afile = tmp_path / "afile"
    afile.write_text("")
    ckpt = tmp_path / "float.pt"
    save(ckpt, build("jet_mlp"), model_name="jet_mlp")
    for argv in (["cost", str(ckpt), "--json", str(afile / "x.json")],
                 ["search", "--out", str(afile / "run"), "--trials", "1", "--no-progress"],
                 ["export", str(ckpt), "--qonnx", str(afile / "m.onnx")],
                 ["export", str(ckpt), "--hls4ml", str(afile / "hls")],
                 ["train", "--out", str(afile / "t"), "--epochs", "1", "--no-progress"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert err.endswith(f"{afile} is a file, where a folder is needed\n")
        assert "energy pJ" not in out and "samples" not in out  # nothing done before it
    # cost --json, export --qonnx / --hls4ml: checked before the table and the engine check
    for argv, msg in ((["cost", str(ckpt), "--json", str(tmp_path)],
                       f"--json {tmp_path} is a folder; expected a file to write"),
                      (["export", str(ckpt), "--qonnx", str(tmp_path)],
                       f"--qonnx {tmp_path} is a folder; expected a file to write"),
                      (["export", str(ckpt), "--hls4ml", str(afile)],
                       f"--hls4ml {afile} is a file; expected a folder"),
                      (["export", str(ckpt), "--hls4ml", str(tmp_path)],
                       f"--hls4ml {tmp_path} is not empty and holds no hls4ml project (no "
                       "hls4ml_config.yml); give a new or empty folder for the project")):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert err == f"hetq {argv[0]}: error: {msg}\n"
        assert "energy pJ" not in out and "samples" not in out
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.pt"))
    assert path_problem(full) == f"No space left on device: {tmp_path / 'm.pt'}"
    # a copy names its source first, and the destination second: the one that is full
    copy = OSError(errno.ENOSPC, "No space left on device", "/site/template.h", None,
                   str(tmp_path / "prj" / "template.h"))
    assert path_problem(copy) == f"No space left on device: {tmp_path / 'prj' / 'template.h'}"


def test_data_may_be_given_by_its_spec_string(jets):
    """fit/evaluate/fit_population take 'jets-sim' as --data does (a str used to pass the
    Dataset check, since str has a split method, and fail unpacking)."""
    from hetq.train.population import fit_population

    spec = "synthetic:n=600,seed=1"
    a, b = build("jet_mlp"), build("jet_mlp")
    b.load_state_dict(a.state_dict())
    ra = fit(a, spec, epochs=2, progress=False)
    rb = fit(b, get_dataset(spec), epochs=2, progress=False)
    assert ra.history == rb.history
    assert evaluate(a, spec) == evaluate(b, get_dataset(spec))
    assert evaluate(a, "jets-sim", split="val") == evaluate(a, jets, split="val")
    (res,) = fit_population([build("jet_mlp")], spec, epochs=1, batch_size=256)
    assert len(res.history) == 1


def test_wrong_argument_types_to_the_api_are_clear_errors():
    with pytest.raises(ValueError, match=r"data must be a hetq Dataset .*; got tuple"):
        fit(build("jet_mlp"), (torch.randn(10, 16), torch.zeros(10)), epochs=1, progress=False)
    with pytest.raises(ValueError, match="a data set is named by a string such as 'jets-sim'; "
                                         "got NoneType"):
        get_dataset(None)
    with pytest.raises(ValueError, match="quantize_model needs a torch.nn.Module, got str"):
        quantize_model("jet_mlp", preset("q6"))
    # the other verbs said "'str' object has no attribute 'to'" (or 'named_modules', 'cpu')
    from hetq import IntegerModel, summary
    from hetq.cost import cost
    from hetq.train.population import fit_population

    for call, who in [(lambda m: fit(m, "synthetic:n=600", epochs=1, progress=False), "fit"),
                      (lambda m: evaluate(m, "synthetic:n=600"), "evaluate"),
                      (lambda m: cost(m, (16,)), "cost"), (summary, "summary"),
                      (lambda m: IntegerModel(m, (16,)), "IntegerModel"),
                      (lambda m: save("unused.pt", m, model_name="jet_mlp"), "save"),
                      (lambda m: fit_population([build("jet_mlp"), m], "synthetic:n=600",
                                                epochs=1), r"Population \(member 1\)")]:
        with pytest.raises(ValueError, match=rf"^{who} needs a torch.nn.Module, got str; build "
                                             r"one with hetq.build\('jet_mlp'\)$"):
            call("jet_mlp")
        with pytest.raises(ValueError, match=rf"^{who} needs a torch.nn.Module, got int$"):
            call(5)
    with pytest.raises(ValueError, match="a population needs a list of at least one model, "
                                         "got Sequential"):
        fit_population(build("jet_mlp"), "synthetic:n=600", epochs=1)
    with pytest.raises(FileNotFoundError, match=r"quantization config file not found: q6; for "
                                                r"the jet_mlp preset give its config, "
                                                r"hetq.preset\('q6'\)"):
        quantize_model(build("jet_mlp"), "q6")  # a preset's name, not a file
    for widths in ([64, 0], [8.5], 7, "64"):
        with pytest.raises(ValueError, match=r"jet_mlp: widths=.*(integer >= 1|expected a list)"):
            build("jet_mlp", widths=widths)
    with pytest.raises(ValueError, match="jet_autoencoder: widths=.*integer >= 1"):
        build("jet_autoencoder", widths=[32, 0, 32])
    assert build("jet_mlp", widths=[np.int64(8), 4.0]).fc2.out_features == 4
    with pytest.raises(ValueError, match=r"jet_mlp: widths=\['64'\], n_in=16; every width"):
        build("jet_mlp", widths=["64"])
    for name, kw, msg in (("jet_mlp", {"n_out": 0}, "jet_mlp: n_out=0; expected an integer >= 1"),
                          ("cnn_digits", {"image_size": 4},
                           "cnn_digits: image_size=4; expected an integer >= 5")):
        with pytest.raises(ValueError, match=msg):  # (was a model with empty layers)
            build(name, **kw)
    # zoo names and presets are case-insensitive, in the API and the CLI (--preset Q6)
    assert str(build(" Jet_MLP")) == str(build("jet_mlp")) and preset("Q6") == preset("q6")
    from hetq.models import widths_kwargs

    assert widths_kwargs("Jet_MLP", [8, 4]) == {"widths": [8, 4]}  # (a name build takes)
    args = hetq.cli.build_parser().parse_args(["train", "--model", "JET_MLP", "--preset", "Q6"])
    assert (args.model, args.preset) == ("jet_mlp", "q6")


def test_every_cli_option_has_help():
    """Every sub-command, option and argument says what it does, and every help page renders
    (a stray % in a help text breaks it)."""
    import argparse

    from hetq.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parsers = dict(sub.choices)
    assert {"train", "evaluate", "ptq", "cost", "search", "worker", "report", "retrain",
            "export", "demo"} <= set(parsers)
    missing = [f"{name} {a.option_strings[-1] if a.option_strings else a.dest}"
               for name, p in parsers.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []
    for p in parsers.values():
        assert "usage:" in p.format_help()
    # and states its default (the README promises it), e.g. `search --out`'s
    silent = [f"{name} {a.option_strings[-1]}" for name, p in parsers.items() for a in p._actions
              if a.option_strings and a.default not in (None, False, [], argparse.SUPPRESS)
              and not isinstance(a, (argparse._HelpAction, argparse._StoreTrueAction))
              and "default" not in (a.help or "")]
    assert silent == []
    text = " ".join(parsers["search"].format_help().split())
    assert "run folder (journal, checkpoints) (default runs/search)" in text
    assert "--model-widths N [N ...] hidden layer widths" in text
    # every command says what it does, and the example on its help page parses
    import shlex

    assert [n for n, p in parsers.items() if not (p.description or "").strip()] == []
    examples = {n: p.description.split("example:\n", 1)[1].split("\n")[0].strip()
                for n, p in parsers.items() if "example:\n" in p.description}
    assert set(examples) == set(parsers)  # (train, cost and search had none)
    for name, line in examples.items():
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert args.command == name and line.startswith("hetq ")


def _readme_blocks(lang: str) -> list[str]:
    """The README's fenced code blocks of one language, in order."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    """The README's Python blocks, run in order in one namespace (as a reader would paste
    them), so the documented API cannot drift from the code."""
    blocks = _readme_blocks("python")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, code in enumerate(blocks):
        code = code.replace("epochs=20", "epochs=2").replace("trials=8, epochs=5",
                                                            "trials=3, epochs=1")
        exec(compile(code, f"README.md python block {i}", "exec"), ns)
    out = capsys.readouterr().out
    assert "total: 4389 parameters, 26334 weight bits" in out  # the Q6 jet tagger's summary
    assert "'accuracy': " in out and "total bits 27230 (parameters 26334, activations 896: " in out
    # the search block: its front was printed, and the last row's model is the trial's
    rows = hetq.pareto_rows(tmp_path / "runs" / "py_search")
    assert [f"{r['trial']} {round(r['metrics']['test']['accuracy'], 4)} {r['costs']['ebops']}"
            for r in rows] == [line for line in out.splitlines() if line[:1].isdigit()][-len(rows):]
    assert evaluate(ns["best"], get_dataset("jets-sim"))["accuracy"] == pytest.approx(
        rows[-1]["metrics"]["test"]["accuracy"])


def test_top_level_api_is_lazy_and_resolves():
    """`import hetq` loads no torch; each top-level name is the object of its home module."""
    import importlib
    import subprocess
    import sys

    probe = "import sys, hetq; print('torch' in sys.modules, 'optuna' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]
    for name, module in hetq._API.items():
        assert getattr(hetq, name) is getattr(importlib.import_module(module), name), name
    assert set(hetq.__all__) <= set(dir(hetq))
    assert hetq.search.run_search is hetq.run_search and hetq.export.IntegerModel
    with pytest.raises(AttributeError, match="module 'hetq' has no attribute 'nosuch'"):
        _ = hetq.nosuch
    from hetq.search import SearchConfig, pareto_rows  # the search package's names too
    assert SearchConfig is hetq.SearchConfig and pareto_rows is hetq.pareto_rows


def test_cli_help_and_argument_errors_load_no_torch():
    """`hetq --help`, every command's help and an argument error come back without loading
    PyTorch or Optuna (2.3 s before, about 0.1 s now); the sub-packages' names still resolve."""
    import importlib
    import subprocess
    import sys

    probe = ("import sys\nfrom hetq.cli import main\n"
             "for argv in ([], ['train', '--help'], ['search', '--help'], ['cost', '--help'],"
             " ['export', 'm.pt', '--bogus'], ['--bogus', 'cost']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print('loaded', 'torch' in sys.modules, 'optuna' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert r.stdout.splitlines()[-1] == "loaded False False"
    assert "usage: hetq train" in r.stdout
    # said by the command, under its usage (it was 'hetq: error:', under hetq's)
    err = r.stderr.splitlines()
    assert err[0].startswith("usage: hetq export") and \
        "hetq export: error: unrecognized arguments: --bogus" in err
    assert err[-1] == "hetq: error: unrecognized arguments: --bogus"  # (before the command)
    for package in ("hetq.train", "hetq.cost", "hetq.export"):
        pkg = importlib.import_module(package)
        for name, module in pkg._API.items():
            assert getattr(pkg, name) is getattr(importlib.import_module(module), name), name
        assert set(pkg.__all__) <= set(dir(pkg))
        with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nosuch'"):
            _ = pkg.nosuch
    from hetq.cost import cost  # `from package import name` goes through the same lookup
    from hetq.cost.report import cost as home

    assert cost is home


def test_readme_command_lines_parse():
    """Every `hetq ...` line in the README's shell blocks uses options that exist."""
    import shlex

    from hetq.cli import build_parser

    parser = build_parser()
    lines = [line.strip() for block in _readme_blocks("sh")
             for line in block.replace("\\\n", " ").splitlines()]
    commands = [shlex.split(line, comments=True)[1:] for line in lines
                if line.startswith("hetq ")]
    assert len(commands) >= 10
    written = set()  # run folders the commands so far write (--out)
    for argv in commands:
        args = parser.parse_args(argv)  # an unknown option exits (SystemExit) and fails
        assert args.command == argv[0]
        # a command reading runs/X/... (a checkpoint or a run) follows the one writing runs/X
        source = getattr(args, "checkpoint", None) or getattr(args, "source", None) or \
            getattr(args, "run", None)
        if source and source.startswith("runs/"):
            assert "/".join(source.split("/")[:2]) in written, f"{' '.join(argv)}: nothing " \
                "before it in the README writes " + source
        if getattr(args, "out", None):
            written.add(str(args.out).rstrip("/"))


@pytest.mark.filterwarnings("ignore:quantization config key 'fc9' matches no layer")
@pytest.mark.filterwarnings("ignore:quantization config key 'Conv2d' matches no layer")
def test_a_config_file_that_quantizes_nothing_is_refused(tmp_path, capsys):
    """`--config` with an empty file, or with keys that match no layer, trained (or costed) a
    float model under the config's name, with at most a warning per key."""
    empty, other = tmp_path / "empty.yaml", tmp_path / "other.yaml"
    empty.write_text("{}\n")
    other.write_text("fc9: {kernel: 'quantized_bits(4,0,1)'}\nConv2d: {kernel: binary}\n")
    out = tmp_path / "t"
    for cfg, why in ((empty, "it is empty"),
                     (other, "its keys 'fc9', 'Conv2d' match none of the layers fc1, relu1, "
                             "fc2, relu2, fc3, relu3, output or their types")):
        for argv in (["train", "--model", "jet_mlp", "--config", str(cfg), "--epochs", "1",
                      "--out", str(out), "--no-progress"],
                     ["cost", "--model", "jet_mlp", "--config", str(cfg)]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.endswith(f"hetq {argv[0]}: error: {cfg} quantizes no layer of the model "
                                f"({why}); for a float model leave out --config\n")
    assert not out.exists()
    # the float preset is still a float model, and one matching key is enough
    assert main(["cost", "--model", "jet_mlp", "--preset", "float"]) == 0
    other.write_text("fc9: {kernel: 'quantized_bits(4,0,1)'}\nrelu1: quantized_relu(4,0)\n")
    assert main(["cost", "--model", "jet_mlp", "--config", str(other)]) == 0
    assert "quantized_relu(4,0)" in capsys.readouterr().out


def test_the_float_preset_is_refused_for_a_model_with_built_in_quantizers(tmp_path, capsys):
    """cnn_digits is quantized as built: `--preset float` trained and costed it quantized,
    labelled float."""
    out = tmp_path / "c"
    msg = ("--preset float: cnn_digits has its quantizers built in (conv, act1, sepconv, act2, "
           "dense, logits), so it cannot be a float model; leave out --preset for the model as "
           "built")
    for argv in (["train", "--model", "cnn_digits", "--data", "digits", "--preset", "float",
                  "--epochs", "1", "--out", str(out), "--no-progress"],
                 ["cost", "--model", "cnn_digits", "--preset", "float"]):
        assert main(argv) == 2
        stdout, err = capsys.readouterr()
        assert err == f"hetq {argv[0]}: error: {msg}\n" and "energy" not in stdout
    assert not out.exists()
    # as built it costs the same as before, and a preset with entries still applies
    assert main(["cost", "--model", "cnn_digits"]) == 0
    built = capsys.readouterr().out
    with pytest.warns(UserWarning, match="key 'ReLU' matches no layer"):  # its QActivations
        assert main(["cost", "--model", "cnn_digits", "--preset", "q6"]) == 0
    q6 = capsys.readouterr().out
    assert "quantized_bits(6,0,alpha=1)" in q6 and "quantized_bits(6,0,alpha=1)" not in built


def test_a_preset_on_a_model_with_built_in_quantizers_is_in_its_checkpoint(tmp_path, capsys):
    """`hetq train --model cnn_digits --preset q6` trained the q6 model but saved the model as
    built (its own quantizers), so evaluate, cost and export saw another model."""
    import json

    from hetq.train.checkpoint import load
    from hetq.train.loop import evaluate as evaluate_model

    out = tmp_path / "c"
    with pytest.warns(UserWarning, match="key 'ReLU' matches no layer"):
        assert main(["train", "--model", "cnn_digits", "--data", "digits", "--preset", "q6",
                     "--epochs", "1", "--out", str(out),
                     "--no-progress"]) == 0
        model = load(out / "model.pt")
    capsys.readouterr()
    assert str(model.dense.kernel_quantizer) == "quantized_bits(6,0,alpha=1)"
    trained = json.loads((out / "metrics.json").read_text())["test"]
    again = evaluate_model(model, "digits")
    assert again["accuracy"] == trained["accuracy"] and again["loss"] == pytest.approx(
        trained["loss"], rel=1e-6)


def test_devices_are_checked_by_name():
    """'tpu' or 'cuda:x' used to end in torch's RuntimeError traceback."""
    from hetq.train.loop import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "gpu", ""):
        with pytest.raises(ValueError, match=rf"^device {bad!r}; expected cpu, cuda, cuda:N \(a "
                                             r"GPU index\), mps or auto$"):
            resolve_device(bad)
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=(rf"this machine has {n} CUDA device" if n else
                                          "CUDA is not available here")):
        resolve_device(f"cuda:{n}")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="'mps' requested but MPS is not available here"):
            resolve_device("mps")


def test_sigterm_inside_interrupts_save_is_ctrl_c_once():
    """The first SIGTERM raises `Terminated` (a KeyboardInterrupt, so the Ctrl-C paths keep
    what was reached); later ones and any after hold() do nothing; the handler comes back."""
    import os
    import signal
    import time

    from hetq.cli import Terminated, interrupts_save

    before = signal.getsignal(signal.SIGTERM)

    def deliver():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200):  # (the handler runs at the next bytecode, within microseconds)
            time.sleep(0.001)

    seen = []
    with interrupts_save():
        try:
            deliver()
        except KeyboardInterrupt as e:
            seen.append(type(e))
        deliver()  # a second one does nothing: the saving is not cut short
    assert seen == [Terminated] and issubclass(Terminated, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is before
    from hetq.cli import _INTERRUPTED

    _INTERRUPTED["saved"] = False
    with interrupts_save() as guard:
        guard.hold()
        deliver()  # held: it does not cut the saving short...
    assert signal.getsignal(signal.SIGTERM) is before
    # ...and the command exits as interrupted, 130 (it exited 0, as if none had come)
    assert _INTERRUPTED["saved"]
    _INTERRUPTED["saved"] = False


def _sigterm_when(cmd, cwd, ready, timeout=120):
    """Run `cmd` and send SIGTERM to it (not to its children) once `ready(pid, output so
    far)` is true; returns (exit code, all its output)."""
    import os
    import signal
    import subprocess
    import threading
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + timeout
        while not ready(proc.pid, "".join(lines)) and time.time() < deadline:
            assert proc.poll() is None, "it ended before the signal:\n" + "".join(lines)
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
        reader.join(timeout=10)
    finally:
        proc.kill()
    return proc.returncode, "".join(lines)


def _proc_stat(pid) -> list[str]:
    """The fields of Linux /proc/PID/stat after the command name (state, parent, ...; [] where
    it cannot be read, e.g. the process has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _cpu_seconds(pid) -> float:
    """CPU seconds used by process `pid` (user + system; 0 where it cannot be read)."""
    import os

    f = _proc_stat(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if len(f) > 12 else 0.0


def _after(seconds: float, cond):
    """A `ready` that is true `seconds` after `cond(pid, output)` first was."""
    import time

    since = []

    def ready(pid, out):
        if not since and cond(pid, out):
            since.append(time.time())
        return bool(since) and time.time() - since[0] > seconds

    return ready


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_sigterm_during_hetq_train_saves_the_best_epoch(tmp_path):
    """`kill PID` or a batch system's time limit (SIGTERM) stops `hetq train` as Ctrl-C does:
    the best epoch so far is saved, not lost."""
    model = tmp_path / "t" / "model.pt"
    done = tmp_path / "t" / "metrics.json"
    cmd = [sys.executable, "-m", "hetq.cli", "train", "--epochs", "100000", "--data",
           "synthetic:n=600,seed=1", "--out", "t", "--no-progress"]
    # 2 s after the line printed just before training: some epochs are finished by then
    code, out = _sigterm_when(cmd, tmp_path, _after(2.0, lambda pid, out: " on Dataset(" in out))
    assert code == 130, out
    assert re.search(r"interrupted after \d+ epochs: saving the best of them", out), out
    assert model.is_file() and done.is_file()
    n = len(json.loads(done.read_text())["history"])
    assert 1 <= n < 100000


def _children(pid) -> list[int]:
    """Process ids whose parent is `pid` (Linux /proc)."""
    import os

    return [int(d) for d in os.listdir("/proc")
            if d.isdigit() and _proc_stat(d)[1:2] == [str(pid)]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_sigterm_to_a_gradient_search_saves_the_fronts_of_its_worker_processes(tmp_path):
    """SIGTERM to `hetq search --strategy gradient` alone (its two training processes get
    nothing from it) still ends every run at once and saves the merged front reached so far:
    the parent passes the interruption on, and the workers return their fronts."""
    cmd = [sys.executable, "-m", "hetq.cli", "search", "--strategy", "gradient",
           "--model-widths", "8", "--epochs", "100000", "--runs", "2", "--float-epochs", "2",
           "--data", "synthetic:n=600,seed=1", "--out", "g", "--no-progress"]

    def training(pid, out):  # both worker processes past their imports and training
        kids = _children(pid)
        return len(kids) >= 2 and sorted(_cpu_seconds(k) for k in kids)[-2] > 2.5

    code, out = _sigterm_when(cmd, tmp_path, _after(1.0, training))
    assert code == 130, out
    assert "gradient strategy: interrupted; saving the front reached so far" in out, out
    assert "Traceback" not in out and "Error" not in out, out
    points = sorted((tmp_path / "g" / "gradient").glob("point_*.pt"))
    assert points and len(points) == len(re.findall(r"g/gradient/point_\d+\.pt", out))
    assert not (tmp_path / "g" / "gradient.partial").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
@pytest.mark.parametrize("killed", ["all", "one run", "the parent"])
def test_a_killed_gradient_search_keeps_the_front_its_runs_reached(tmp_path, capsys, killed):
    """SIGKILL (out of memory, a node lost) to `hetq search --strategy gradient` lost the
    whole run: the front was saved only at its end or on Ctrl-C/SIGTERM. Each run now saves
    its front while it trains; `hetq report` says what to do, and the same command saves
    those points and exits 130 instead of training again. One training process killed
    alone: the search stops and says where the fronts are (it hung when the other's front
    was too large for the pipe: it took the pool's SIGTERM as Ctrl-C and waited to send
    it back). The parent alone: its training processes die with it (they trained on,
    orphaned, and rewrote the saved fronts after a rerun had recovered them)."""
    import os
    import signal
    import subprocess
    import time

    from hetq.search.gradient.runs import read_front_dir

    cmd = ["search", "--strategy", "gradient", "--model-widths", "128", "64", "--epochs",
           "100000",
           "--runs", "2", "--float-epochs", "2", "--time-budget", "120",
           "--data", "synthetic:n=600,seed=1", "--out", str(tmp_path / "g"), "--no-progress"]
    saved = tmp_path / "g" / "gradient.progress"
    proc = subprocess.Popen([sys.executable, "-m", "hetq.cli", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not all((saved / f"run_{r}.pt").exists() for r in (0, 1)):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            time.sleep(0.05)
        runs = [k for k in _children(proc.pid)  # (not multiprocessing's resource tracker)
                if b"resource_tracker" not in open(f"/proc/{k}/cmdline", "rb").read()]
        assert len(runs) == 2
        if killed == "all":
            os.killpg(proc.pid, signal.SIGKILL)  # every process, no handler runs
            proc.wait(timeout=30)
        elif killed == "the parent":
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            deadline = time.time() + 10
            while any(_proc_stat(k)[:1] not in ([], ["Z"]) for k in runs):
                assert time.time() < deadline, [_proc_stat(k) for k in runs]
                time.sleep(0.05)
        else:
            assert (saved / "run_1.pt").stat().st_size > 70_000  # more than a pipe holds
            os.kill(runs[0], signal.SIGKILL)
            assert proc.wait(timeout=60) == 1
            assert ("a gradient-strategy training process ended abruptly (killed, or out of "
                    "memory?); the runs still going were stopped; the fronts the runs had "
                    f"saved are in {saved}: the same command run again saves them as its "
                    "front") in proc.stdout.read()
    finally:
        proc.kill()
        proc.stdout.close()
    assert not (tmp_path / "g" / "gradient").exists()
    # a rerun with other settings would save that front under a search.yaml of its own
    assert main([*cmd, "--seed", "7"]) == 2
    assert (f"{tmp_path / 'g'} holds the front of a run that was killed before it saved it, "
            "with other settings (--seed: 0, now 7); run the same command as then to save that "
            f"front, or remove {saved} to train anew without it") in capsys.readouterr().err
    assert main(["report", str(tmp_path / "g")]) == 2
    assert ("ended without saving its front (killed?); run the same `hetq search` command "
            "again to save the front it had reached") in capsys.readouterr().err
    float_model = hetq.load(tmp_path / "g" / "float.pt")
    data = get_dataset("synthetic:n=600,seed=1")
    _, front = read_front_dir(saved, float_model, data.tensors("train")[0])
    assert front and {p.run for p in front} <= {0, 1}
    assert main(cmd) == 130  # saved, not trained again (said just below)
    out = capsys.readouterr().out
    assert (f"the last run here ended without saving its front (killed?); saved the "
            f"{len(front)} point{'s' * (len(front) != 1)} its training had reached to "
            f"{tmp_path / 'g' / 'gradient'}. "
            "Run the same command again to train anew (that replaces them).") in out
    assert not saved.exists()
    points = sorted((tmp_path / "g" / "gradient").glob("point_*.pt"))
    assert len(points) == len(front)
    for path, p in zip(points, front):  # each recovered point as trained
        m = hetq.load(path)
        assert evaluate(m, data, split="val")["accuracy"] == pytest.approx(p.val_accuracy)
    assert main(["report", str(tmp_path / "g")]) == 0
    if killed == "all":  # a front file that cannot be read is named, with the way out
        saved.mkdir()
        (saved / "run_0.pt").write_bytes(b"\0" * 10)
        assert main(cmd) == 2
        assert (f"{saved / 'run_0.pt'} is not a readable gradient-strategy front file (" in
                (err := capsys.readouterr().err)) and \
            f"; remove {saved} to train anew without the points saved there" in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_ctrl_c_while_the_gradient_runs_start_is_an_interruption(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group. While the --runs processes were
    still importing (before they ignore it), one died of it, and the search ended in a
    BrokenProcessPool traceback with exit status 1 instead of 'interrupted' (130)."""
    import os
    import signal
    import subprocess
    import time

    cmd = [sys.executable, "-m", "hetq.cli", "search", "--strategy", "gradient",
           "--model-widths", "8", "--epochs", "100000", "--runs", "2", "--float-epochs", "2",
           "--time-budget", "20", "--data", "synthetic:n=600,seed=1", "--out", "g",
           "--no-progress"]
    # (SIGINT as a terminal leaves it: a suite started in the background by a
    # non-interactive shell, e.g. `cmd &`, passes SIGINT on ignored, and Python then keeps
    # ignoring it, so the search ran to its end and this failed with exit status 0)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while len(_children(proc.pid)) < 2 and time.time() < deadline:  # just spawned
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # (as a terminal's Ctrl-C: every process)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # (a worker stopped while it starts may print its own start-up traceback from
    # multiprocessing, on a loaded machine, even after this process has ended; the search
    # itself ends as interrupted, with neither a broken pool nor a half-started executor)
    # (on a loaded machine the signal may come once the runs train: then the front reached
    # is saved, which is an interruption too)
    lines = out.splitlines()
    assert proc.returncode == 130 and ("interrupted" in lines or "gradient strategy: "
                                       "interrupted; saving the front reached so far" in lines), out
    assert "BrokenProcessPool" not in out and "cannot join thread" not in out, out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_sigterm_to_a_search_ends_its_worker_processes_too(tmp_path):
    """SIGTERM to `hetq search --workers 2` stops it as Ctrl-C does (exit status 130), and
    the worker processes it started end with it instead of running the study on, orphaned."""
    import time

    cmd = [sys.executable, "-m", "hetq.cli", "search", "--workers", "2", "--trials", "500",
           "--epochs", "3", "--float-epochs", "1", "--data", "synthetic:n=600,seed=1",
           "--out", "s", "--no-progress"]
    kids = []

    def working(pid, out):  # both workers past their imports
        found = _children(pid)
        if len(found) >= 2 and min(_cpu_seconds(k) for k in found) > 2.0:
            kids[:] = found
            return True
        return False

    code, out = _sigterm_when(cmd, tmp_path, _after(0.5, working))
    assert code == 130 and out.rstrip().endswith("interrupted"), out

    def running(k):  # (a zombie that nothing has reaped yet is not running)
        return _proc_stat(k)[:1] not in ([], ["Z"])

    deadline = time.time() + 30
    while any(running(k) for k in kids) and time.time() < deadline:
        time.sleep(0.2)
    assert kids and not [k for k in kids if running(k)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_sigkill_to_a_search_ends_its_worker_processes_too(tmp_path):
    """SIGKILL to `hetq search --workers 2` left its workers running the study on, orphaned
    (a rerun meanwhile started two more)."""
    import contextlib
    import os
    import signal
    import subprocess
    import time

    cmd = [sys.executable, "-m", "hetq.cli", "search", "--workers", "2", "--trials", "500",
           "--epochs", "300", "--float-epochs", "1", "--data", "synthetic:n=600,seed=1",
           "--out", "s", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kids = []
    try:
        deadline = time.time() + 120
        while not (len(kids) >= 2 and min(_cpu_seconds(k) for k in kids) > 2.0):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
            kids[:] = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while [k for k in kids if _proc_stat(k)[:1] not in ([], ["Z"])]:
            assert time.time() < deadline, [_proc_stat(k)[:2] for k in kids]
            time.sleep(0.2)
    finally:
        proc.kill()
        for k in kids:  # (orphans of a failed run are not left behind)
            with contextlib.suppress(OSError):
                os.kill(k, signal.SIGKILL)


def test_python_dash_m_hetq_is_the_hetq_command():
    import subprocess

    r = subprocess.run([sys.executable, "-m", "hetq", "--version"], capture_output=True,
                       text=True)
    assert (r.returncode, r.stdout.strip()) == (0, hetq.__version__)
    r = subprocess.run([sys.executable, "-m", "hetq", "train", "--epochs", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "hetq train" in r.stderr and "Traceback" not in r.stderr


def test_ptq_and_train_check_the_device_before_any_work(tmp_path, capsys):
    """`hetq ptq` ignored --device (even 'banana'); train loaded the data first."""
    out = tmp_path / "f"
    assert main(["train", "--data", "synthetic:n=600,seed=1", "--epochs", "1", "--out",
                 str(out), "--no-progress", "--device", "banana"]) == 2
    captured = capsys.readouterr()
    assert "device 'banana'" in captured.err and "synthetic" not in captured.out
    assert main(["train", "--data", "synthetic:n=600,seed=1", "--epochs", "1", "--out",
                 str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["ptq", str(out), "--bits", "6", "--device", "banana",
                 "--out", str(tmp_path / "p.pt")]) == 2
    assert "device 'banana'" in capsys.readouterr().err
    assert not (tmp_path / "p.pt").exists()


def test_a_checkpoint_of_a_class_this_program_lacks_says_what_to_do(tmp_path):
    """Loading a save_module checkpoint of a script's own class elsewhere said only "Can't get
    attribute 'MyNet' on <module '__main__'>" (QKeras users' 'could not locate class')."""
    import subprocess
    import sys

    from hetq import load

    script = ("from torch import nn\n"
              "from hetq.train.checkpoint import save_module\n"
              "class MyNet(nn.Module):\n"
              "    def __init__(self):\n"
              "        super().__init__()\n"
              "        self.fc = nn.Linear(4, 2)\n"
              "    def forward(self, x):\n"
              "        return self.fc(x)\n"
              f"save_module({str(tmp_path / 'my.pt')!r}, MyNet())\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'my.pt'} stores a model of class MyNet from module ") + r"\S*__main__, "
            + re.escape("which this program does not define; define or import that class")):
        load(tmp_path / "my.pt")


def test_confident_scores_do_not_tie_and_rescaled_logits_score_the_same():
    """Scores were softmax probabilities in float32: beyond a logit margin of about 17 they
    round to exactly 1, one tie block right where TPR at FPR = 1e-2 is measured. Multiplying
    the logits by 30 (the same ranking) took TPR@FPR=0.01 from 0.49 to 0.10."""
    from torch import nn

    from hetq.data import Dataset

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 2)).astype(np.float32)
    y = (X[:, 0] + 0.7 * X[:, 1] + rng.normal(size=3000) > 0).astype(np.int64)
    d = Dataset.from_splits("t", {s: (X, y) for s in ("train", "val", "test")}, ["a", "b"],
                            ["a", "b"], standardize=False)

    def model(scale):
        m = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]) * scale)
        return m

    base = evaluate(model(1), d)
    lo = X[:, 0].astype(np.float64)  # the exact one-vs-rest log-odds of class b: 2 x0
    assert base["auc_b"] == pytest.approx(auc(lo, y == 1), abs=1e-12)
    assert base["tpr@fpr=0.01_b"] == pytest.approx(tpr_at_fpr(lo, y == 1), abs=1e-12)
    for scale in (30, 100):
        m = evaluate(model(scale), d)
        assert m["auc_b"] == base["auc_b"] and m["tpr@fpr=0.01_b"] == base["tpr@fpr=0.01_b"]
        assert m["accuracy"] == base["accuracy"]


def test_tied_logits_keep_their_argmax_and_ties_in_scores():
    from hetq.train.metrics import log_odds

    logits = torch.tensor([[1.0, 3.0, 3.0, -2.0], [0.5, 0.5, 0.5, 0.5], [2.0, -1.0, 7.0, 7.0]])
    s = log_odds(logits)
    assert s.dtype == torch.float64
    assert torch.equal(s.argmax(1), logits.argmax(1))
    assert s[0, 1] == s[0, 2] and s[2, 2] == s[2, 3] and len(set(s[1].tolist())) == 1
    p = torch.softmax(logits.double(), 1)
    assert torch.allclose(s, torch.log(p / (1 - p)))


def test_validation_in_fit_runs_in_eval_mode():
    """fit's validation loss ran in train mode: dropout on, and batch norm moving its running
    statistics with the validation data (the stored best state carried them)."""
    from torch import nn

    from hetq.train.loop import evaluate_tensors

    d = get_dataset("synthetic:n=600,features=4,classes=2")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                      nn.Linear(8, 2)).train()
    before = m[1].running_mean.clone()
    Xv, yv = d.tensors("val")
    a = evaluate_tensors(m, Xv, yv, Classify(), d)
    b = evaluate_tensors(m, Xv, yv, Classify(), d)
    assert a == b and a["loss"] == evaluate(m, d, "val")["loss"]
    assert torch.equal(m[1].running_mean, before) and m.training


def test_nan_scores_are_refused_and_infinite_ones_tie():
    """NaN scores were each their own threshold, in input order (AUC 0.75 or 0.50 for the same
    data shuffled); tied infinite scores (an overflowing reconstruction error) likewise."""
    with pytest.raises(ValueError, match=re.escape(
            "2 of 4 scores are NaN (the first: sample 0); a ROC needs numbers")):
        auc(np.array([np.nan, np.nan, 0.5, 0.1]), np.array([1, 0, 1, 0]))
    s = np.array([np.inf, np.inf, 0.0, 0.1])
    # (the tie at inf: one positive, one negative, in either order -> the same ROC)
    assert auc(s, np.array([1, 0, 1, 0])) == auc(s[[1, 0, 2, 3]], np.array([0, 1, 1, 0])) == 0.375
    out = torch.tensor([[1e20, 0.0], [1e20, 0.0], [0.0, 0.0], [0.1, 0.0]])
    sc = Anomaly().scores(out, torch.zeros(4, 2)).numpy()
    assert np.isfinite(sc).all()  # (float64: no overflow to inf)
    from torch import nn

    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.fill_(float("nan"))
    d = get_dataset("synthetic:n=600,features=2,classes=2")
    with pytest.raises(ValueError, match=r"the model gives NaN outputs for \d+ of \d+ samples"):
        evaluate(m, d)


def test_metrics_table_finds_the_tpr_of_class_names_with_underscores():
    from hetq.train.metrics import classification_metrics
    from hetq.train.report import metrics_table

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 500)
    scores = rng.normal(size=(500, 3)) + np.eye(3)[y]
    cl = ["b_jet", "c_jet", "light"]
    m = classification_metrics(scores, y, cl)
    table = metrics_table({**m, "loss": 0.5}, cl)
    assert "tpr@fpr=0.01" in table.splitlines()[1].split()[-1]
    row = next(line for line in table.splitlines() if line.split()[0] == "b_jet")
    assert row.split()[-1] == f"{m['tpr@fpr=0.01_b_jet']:.4f}" != "0.0000"
    # a class name that ends another ('b' of 'x_b'), the first without samples: the prefix
    # was 'tpr@fpr=0.01_x' and every TPR printed as 0; a long name kept its columns in line
    cl = ["b", "x_b", "a-much-longer-class-name"]
    m = {k: v for k, v in classification_metrics(scores, y, cl).items()
         if not k.endswith("_b") or k.endswith("x_b")}
    lines = metrics_table(m, cl).splitlines()
    assert lines[1].split() == ["class", "AUC", "tpr@fpr=0.01"]
    assert [line.split()[0] for line in lines[2:]] == ["x_b", "a-much-longer-class-name", "mean"]
    assert [line.split()[-1] for line in lines[2:]] == [
        f"{m[f'tpr@fpr=0.01_{c}']:.4f}" for c in ("x_b", "a-much-longer-class-name", "mean")]
    assert len({len(line) for line in lines[1:]}) == 1
    assert metrics_table({"auc_b": 0.5, "tpr@fpr=0.01_mean": 0.1}, ["b"]).splitlines()[-1] \
        .split() == ["b", "0.5000", "nan"]  # (a missing TPR printed as 0)


def test_fit_gives_the_global_random_stream_back_and_presets_are_copies():
    """fit seeded torch's global generator for its stochastic quantizers and left it so:
    every model built after a fit with the default seed started from the same weights. And
    preset() handed out the registry's own dict, so a caller's tweak changed it for all."""
    from hetq.train.population import fit_population

    d = get_dataset("synthetic:n=600,features=16,classes=5")
    torch.manual_seed(123)
    m = build("jet_mlp", widths=[4])
    state = torch.get_rng_state()
    fit(m, d, epochs=1, progress=False, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    ms = [build("jet_mlp", widths=[4]), build("jet_mlp", widths=[4])]
    state = torch.get_rng_state()
    fit_population(ms, d, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)
    p = preset("q6")
    p["Linear"]["kernel"] = "quantized_bits(2,0,alpha=1)"
    assert preset("q6")["Linear"]["kernel"] != "quantized_bits(2,0,alpha=1)"


def test_a_tensor_given_as_data_is_refused_by_name():
    """fit(model, torch.tensor(X)) got past the check (a tensor has a .split method) and
    failed inside torch: 'split_with_sizes(): argument 'split_sizes' ... not str'."""
    for data in (torch.zeros(10, 16), np.zeros((10, 16))):
        with pytest.raises(ValueError, match="data must be a hetq Dataset with train/val/test "
                                             f"splits.*; got {type(data).__name__}"):
            fit(build("jet_mlp", widths=[4]), data, epochs=1, progress=False)


def test_a_float64_model_trains_and_evaluates_on_float64_inputs():
    """fit/evaluate of a .double() model failed: 'the model does not take the samples of ...
    (shape (16,)): ... must have the same dtype' (cost and IntegerModel took it)."""
    d = get_dataset("synthetic:n=900,features=16,classes=5")
    torch.manual_seed(0)
    m = quantize_model(build("jet_mlp", widths=[8]), preset("q6")).double()
    res = fit(m, d, epochs=2, progress=False)
    assert len(res.history) == 2 and m.fc1.weight.dtype == torch.float64
    m32 = quantize_model(build("jet_mlp", widths=[8]), preset("q6"))
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    assert evaluate(m, d)["accuracy"] == evaluate(m32, d)["accuracy"]


def test_data_without_class_names_still_get_per_class_metrics():
    """Dataset.from_splits(..., classes=None) gave accuracy only: no AUC, no TPR at FPR,
    which the README promises for every classifier."""
    from hetq.data import Dataset

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 16)).astype(np.float32)
    y = rng.integers(0, 3, 600)
    d = Dataset.from_splits("u", {s: (X, y) for s in ("train", "val", "test")}, [], None)
    torch.manual_seed(0)
    m = build("jet_mlp", widths=[4], n_out=3)
    res = fit(m, d, epochs=1, progress=False)
    assert sorted(evaluate(m, d)) == [
        "accuracy", "auc_0", "auc_1", "auc_2", "auc_mean", "loss", "tpr@fpr=0.01_0",
        "tpr@fpr=0.01_1", "tpr@fpr=0.01_2", "tpr@fpr=0.01_mean"]
    assert "val_auc_mean" in res.history[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_a_second_ctrl_c_cannot_cut_the_saving_short():
    """hetq train, retrain and the gradient strategy held back a second SIGTERM while they
    saved, but not a second Ctrl-C: it left the previous run's roc.png beside the new
    model. A signal the process inherited as ignored (nohup, `cmd &` in a script) stays
    ignored."""
    import os
    import signal
    import time

    from hetq.cli import interrupts_save

    both = (signal.SIGINT, signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), interrupts_save(both):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    saved = []
    with interrupts_save(both) as guard:
        guard.hold()  # (the saving)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        saved.append(True)
    assert saved == [True]
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_save(both):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_file_that_cannot_be_written_is_named_not_its_temporary(tmp_path):
    """hetq report in a read-only run folder failed with 'Read-only file system:
    RUN/.pareto.png.11939.part', the name of an internal temporary file."""
    from hetq.files import write_whole

    (tmp_path / "afile").write_text("")
    target = tmp_path / "afile" / "pareto.png"
    with pytest.raises(NotADirectoryError) as e:
        write_whole(target, lambda tmp: tmp.write_text("x"))
    assert e.value.filename == str(target) and ".part" not in str(e.value)


def _unwritable_folder() -> str:
    """A folder that even root cannot write in (sysfs is mounted read-only in containers)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir="/sys"):
            pass
    except OSError:
        return "/sys"
    pytest.skip("no folder here that cannot be written")


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(capsys):
    """`hetq train --out` a read-only folder trained, then failed at the saving with torch's
    RuntimeError ('open file failed', no file named): the model was lost."""
    import torch

    from hetq.cli import main
    from hetq.files import write_whole

    ro = _unwritable_folder()
    assert main(["train", "--data", "synthetic:n=600", "--epochs", "1", "--out", f"{ro}/hetq_run",
                 "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"hetq train: error: --out {ro}/hetq_run: {ro} cannot be written (")
    assert "epoch" not in out  # refused before any training
    with pytest.raises(OSError) as e:  # (it was a RuntimeError from inside torch.save)
        write_whole(f"{ro}/model.pt", lambda tmp: torch.save({}, tmp))
    assert e.value.filename == f"{ro}/model.pt"


def test_cost_of_a_zoo_model_is_the_same_each_run_and_small_cli_slips_are_named(capsys):
    """hetq cost --model built the model with unseeded random weights: EBOPs and LUTs (which
    count nonzero weights) differed from run to run. A zoo model's name given as the
    checkpoint said only 'checkpoint not found'; --background '' (an unset variable)
    silently became q,g."""
    outs = []
    for _ in range(2):
        torch.manual_seed(len(outs))  # (whatever the caller's generator holds)
        assert main(["cost", "--model", "jet_mlp", "--preset", "q6", "--json", "-"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    assert main(["cost", "jet_mlp"]) == 2
    assert capsys.readouterr().err.endswith("checkpoint not found: jet_mlp (jet_mlp is a zoo "
                                            "model: give it as --model jet_mlp)\n")
    assert main(["train", "--task", "anomaly", "--model", "jet_autoencoder", "--background",
                 ",", "--epochs", "1", "--out", "/nonexistent/x"]) == 2
    assert "--background ',': expected class names separated by commas" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):  # (an empty value: refused by the parser, as every one)
        main(["train", "--task", "anomaly", "--background", "", "--out", "/nonexistent/x"])
    assert "argument --background: an empty value ''" in capsys.readouterr().err


def test_seed_range_interrupted_flag_and_report_counts(tmp_path, capsys, monkeypatch):
    """A seed above 2**63 - 1 failed with 'Overflow when unpacking long long'; metrics.json
    did not say that training was interrupted; the HTML report counted neither pruned nor
    failed trials."""
    import hetq.train.loop as T
    from hetq.search import SearchConfig, run_search
    from hetq.search.report import write_html_report

    for cmd in ("train", "search"):
        with pytest.raises(SystemExit):
            main([cmd, "--seed", str(2 ** 63)])
        assert "--seed: expected an integer from 0 to 2**63 - 1, got '9223372036854775808'" \
            in capsys.readouterr().err
    real = T.fit

    def interrupted(*a, **k):
        res = real(*a, **{**k, "epochs": 1})
        res.interrupted = True
        return res

    monkeypatch.setattr(T, "fit", interrupted)
    assert main(["train", "--data", "synthetic:n=600,seed=1", "--epochs", "3", "--out",
                 str(tmp_path / "t"), "--no-progress"]) == 130
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["interrupted"] is True
    run_search(SearchConfig(data="synthetic:n=600,seed=1", trials=3, epochs=1, float_epochs=1,
                            learning_rates=[1e-3, 1e38], sampler="random", seed=4),
               tmp_path / "s", progress=False)
    page = " ".join(write_html_report(tmp_path / "s").read_text().split())
    assert re.search(r"\d+ completed trials of 3 \(\d+ failed\);", page), page[:400]


def test_the_license_pyproject_declares_ships_with_the_package():
    """pyproject says Apache-2.0; the licence text itself is in the repository and listed in
    `license-files`, so wheels and sdists carry it (PEP 639)."""
    import hashlib
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (root / "LICENSE").read_bytes()
    # the Apache Software Foundation's LICENSE-2.0.txt, byte for byte
    assert hashlib.md5(text).hexdigest() == "3b83ef96387f14655fc854ddc3c6bd57"


def test_evaluate_and_ptq_default_to_the_data_the_checkpoint_was_trained_on(
        tmp_path, capsys, monkeypatch):
    """`hetq evaluate` of a model trained on digits (or a file, or synthetic data) compared
    it on jets-sim, the default, and refused it; a cnn_digits checkpoint trained with
    --preset q6 warned about the preset's 'ReLU' key on every load."""
    import warnings
    from pathlib import Path

    from hetq.data import get_dataset

    npz = tmp_path / "jets.npz"  # a part of the built-in sample
    with np.load(Path(hetq.__file__).parent / "data" / "jets_sim_small.npz") as z:
        np.savez(npz, **{k: (z[k][:6000] if k in ("X", "y", "split") else z[k])
                         for k in z.files})
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "m"
    assert main(["train", "--data", "jets-sim:jets.npz", "--model-widths", "8", "--epochs",
                 "1", "--out", str(out), "--no-progress"]) == 0
    trained = capsys.readouterr().out
    assert torch.load(out / "model.pt", weights_only=False)["normalization"]["spec"] == \
        f"jets-sim:{npz}"
    monkeypatch.chdir(Path(hetq.__file__).parent)  # (the path is kept absolute)
    assert main(["evaluate", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == f"{out} on jets-sim ({npz}) (test split)"  # (its file)
    assert table.split("\n", 1)[1] in trained  # the same rows as after training
    assert len(get_dataset(f"jets-sim:{npz}").y_test) != len(get_dataset("jets-sim").y_test)
    assert main(["ptq", str(out), "--bits", "8"]) == 0
    capsys.readouterr()
    digits = tmp_path / "d"
    assert main(["train", "--model", "cnn_digits", "--data", "digits", "--preset", "q6",
                 "--epochs", "1", "--out", str(digits), "--no-progress"]) == 0
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the 'ReLU' key warned on every load)
        assert main(["evaluate", str(digits)]) == 0
    assert capsys.readouterr().out.startswith(f"{digits} on digits (test split)")


def test_one_command_at_a_time_writes_a_folder(tmp_path, capsys):
    """Two `hetq train --out X` at once both passed the 'already holds a model.pt' check
    and the later model replaced the first; two gradient searches, hls4ml exports or demos
    in one folder replaced or deleted each other's files; a search started meanwhile with
    other settings replaced float.pt before it was refused. Now a folder lock: the second
    command is refused by name (a search's setup waits for it, then checks)."""
    import os
    import threading
    import time

    from hetq.files import folder_lock, lock_holder

    out = tmp_path / "t"
    with folder_lock(out):
        who = lock_holder(out)
        assert who.startswith(f"pid {os.getpid()}: hetq")
        assert main(["train", "--data", "synthetic:n=600", "--epochs", "1", "--out", str(out),
                     "--no-progress"]) == 2
        assert capsys.readouterr().err == (f"hetq train: error: {out} is in use by another "
                                           f"hetq command ({who}); wait for it to finish, or "
                                           "give another --out\n")
        with pytest.raises(ValueError, match="is in use by another hetq command"):
            with folder_lock(out):
                pass
        from hetq.search.config import SearchConfig
        from hetq.search.gradient import run_gradient_strategy

        with pytest.raises(ValueError, match=f"{out} is in use by another hetq command"):
            run_gradient_strategy(SearchConfig(strategy="gradient"), out, progress=False)
    assert lock_holder(out) is None and not out.exists()  # (made by the lock, and removed)
    released = []

    def hold():
        with folder_lock(out, wait=True):
            ready.set()
            time.sleep(0.5)
            released.append(time.monotonic())
    ready = threading.Event()
    th = threading.Thread(target=hold)
    th.start()
    ready.wait()
    with folder_lock(out, wait=True):  # a search's setup: waits for the other, then goes on
        assert released and time.monotonic() >= released[0]
    th.join()
    assert f"{out} is in use by another hetq command" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_lock_names_the_whole_command_and_sibling_workers_wait_quietly(
        tmp_path, capsys, monkeypatch):
    """The lock named 'hetq train --epochs' (two words of the command); a search's own
    --workers, waiting for each other's setup, each printed 'in use by another hetq
    command (pid N: hetq --out X)', a stranger's note for its sibling."""
    import os
    import threading
    import time

    from hetq import files
    from hetq.files import folder_lock, lock_holder

    out = tmp_path / "my runs"
    monkeypatch.setattr(files, "COMMAND", ["hetq", "train", "--epochs", "3", "--out", str(out)])
    with folder_lock(out):
        assert lock_holder(out) == (f"pid {os.getpid()}: hetq train --epochs 3 --out "
                                    f"'{out}'")
    monkeypatch.setattr(files, "COMMAND", ["hetq", "train", "--config", "x" * 400])
    with folder_lock(out):
        who = lock_holder(out)
        assert len(who) == 290 and who.endswith("xxx...")
    monkeypatch.setattr(files, "COMMAND", None)
    ready = threading.Event()

    def hold():
        with folder_lock(out, wait=True):
            ready.set()
            time.sleep(0.3)
    th = threading.Thread(target=hold)
    th.start()
    ready.wait()
    with folder_lock(out, wait=True, quiet=True):
        pass
    th.join()
    assert capsys.readouterr().err == ""
    # and main() names its own command while it runs, then no longer
    seen = []
    monkeypatch.setattr("hetq.train.cli._train_locked",
                        lambda a: seen.append(lock_holder(a.out)) or 0)
    assert main(["train", "--out", str(out), "--epochs", "2"]) == 0
    assert seen == [f"pid {os.getpid()}: hetq train --out '{out}' --epochs 2"]
    assert files.COMMAND is None


def test_an_interrupt_during_start_up_exits_130_and_a_worker_keeps_sigterm_default(
        monkeypatch, capsys):
    """SIGTERM while the parser was built gave a `hetq.cli.Terminated` traceback and exit 1
    (a search's 1000 workers killed at start-up printed 38 of them)."""
    import signal

    import hetq.cli as cli

    def parser():
        raise cli.Terminated()
    monkeypatch.setattr(cli, "build_parser", parser)
    assert cli.main(["train", "--epochs", "1"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    monkeypatch.undo()
    seen = {}
    monkeypatch.setattr(cli, "_main", lambda argv: seen.setdefault(
        argv[0], signal.getsignal(signal.SIGTERM)) and 0)
    cli.main(["worker", "--out", "x"])
    cli.main(["train", "--out", "x"])
    assert seen["worker"] is signal.SIG_DFL and seen["train"] is not signal.SIG_DFL


def test_empty_option_values_are_refused(tmp_path, capsys):
    """An unset shell variable gives `--preset ""`: it trained a float model; `--hls4ml ""`
    skipped the export and `--out ""` wrote a whole search run into the current folder, each
    with exit status 0."""
    for argv, name in ((["train", "--preset", "", "--out", str(tmp_path / "t")], "--preset"),
                       (["search", "--out", ""], "--out"),
                       (["export", str(tmp_path), "--hls4ml", " "], "--hls4ml"),
                       (["evaluate", ""], "checkpoint")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        hint = ", or leave the option out" if name.startswith("--") else ""
        value = argv[argv.index(name) + 1] if name in argv else ""
        assert capsys.readouterr().err.splitlines()[-1].endswith(
            f"error: argument {name}: an empty value {value!r} (an unset shell variable?); "
            f"give one{hint}")
    assert not (tmp_path / "t").exists()


def test_sizes_and_values_that_failed_late_or_deep_are_named(tmp_path, capsys, monkeypatch):
    """Found by a probe of the command line: quantized_po2(13) ended in an OverflowError
    traceback; quantized_bits(200,0) was blamed on the data; synthetic data of 1e8 features
    was killed for memory; an out-of-memory model a traceback; an input shape of 1e20 an
    overflow traceback; export's --backend/--no-compile without --hls4ml were ignored;
    --background q,q was taken; an image file as a checkpoint gave a two-line error;
    --trial BEST was refused."""
    from hetq.cost import cost
    from hetq.quant import get_quantizer
    from hetq.search.results import trial_number

    with pytest.raises(ValueError, match=r"bits=13 gives exponents up to 2047, beyond "
                                         r"float32's range"):
        get_quantizer("quantized_po2(13)")
    with pytest.raises(ValueError, match=r"bits must be <= 64 .* got 200"):
        get_quantizer("quantized_bits(200,0)")
    with pytest.raises(ValueError, match=r"does not fit in memory \(15 x 100000000000 values"):
        get_dataset("synthetic:features=100000000000,n=15")
    with pytest.raises(ValueError, match=r"1e\+20 values in one sample"):
        cost(build("jet_mlp"), (10**20,))
    import hetq.train.cli as tcli

    def oom(a):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "40000000000 bytes.\nmore")
    monkeypatch.setattr(tcli, "_train_locked", oom)
    assert main(["train", "--out", str(tmp_path / "m")]) == 1
    assert capsys.readouterr().err == (
        "hetq train: error: out of memory (DefaultCPUAllocator: can't allocate memory: you "
        "tried to allocate 40000000000 bytes.); a model, width or input shape too large for "
        "this machine?\n")
    monkeypatch.undo()
    assert main(["export", str(tmp_path), "--backend", "vitis", "--no-compile"]) == 2
    assert capsys.readouterr().err == ("hetq export: error: --no-compile and --backend Vitis "
                                       "set up the hls4ml project: give --hls4ml DIR too\n")
    assert main(["train", "--task", "anomaly", "--background", "q,g,q",
                 "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.endswith("--background 'q,g,q': q given twice\n")
    png = tmp_path / "roc.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert main(["evaluate", str(png)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "is not a readable hetq checkpoint (" in err

    class Study:
        def get_trials(self, **kw):
            return []
    with pytest.raises(ValueError, match="no completed trial|has no|no trial"):
        trial_number(Study(), "BEST", tmp_path)  # (taken as 'best', not refused as a number)


def test_ptq_of_non_finite_weights_is_named():
    """An inf bias ended PTQ in an OverflowError traceback (math.ceil of inf)."""
    m = build("jet_mlp")
    with torch.no_grad():
        m.output.bias.fill_(float("inf"))
    with pytest.raises(ValueError, match=r"^layer 'output': its bias holds non-finite values"):
        ptq_config(m, torch.randn(8, 16), 8)


def test_model_widths_too_large_to_build_are_refused_up_front(capsys):
    """--model-widths 100000 100000 100000 failed to allocate 40 GB (a traceback, later the
    one-line out-of-memory error) or was killed for memory."""
    assert main(["cost", "--model", "jet_mlp", "--model-widths", "100000", "100000"]) == 2
    assert capsys.readouterr().err == (
        "hetq cost: error: --model-widths 100000 100000 makes a model of about 1e+10 weights "
        "(at most 2e+08); give smaller widths\n")


def test_python_api_arguments_are_checked_before_any_work(jets, tmp_path):
    """evaluate's batch_size was unchecked (0: 'range() arg 3 must not be zero', -1: a numpy
    AxisError from the metrics); save_module stored anything (a dict failed only at load,
    data=np.zeros at save with an AttributeError) and save/save_module kept a misspelt
    task; Classify/Anomaly took fpr=5 (a TPR of 1.0) and nan; a float16 model 'diverged'
    whatever the learning rate; a frozen model and a meta-device one failed inside torch."""
    from torch import nn

    from hetq.train import save_module

    model = build("jet_mlp")
    for bs, why in ((0, "must be >= 1, got 0"), (-1, "must be >= 1, got -1"),
                    (2.5, "must be a whole number, got 2.5")):
        with pytest.raises(ValueError, match=f"^batch_size {re.escape(why)}"):
            evaluate(model, jets, batch_size=bs)
    with pytest.raises(ValueError, match="^save_module needs a torch.nn.Module, got dict"):
        save_module(tmp_path / "x.pt", {"a": 1})
    with pytest.raises(ValueError, match="^data must be the hetq Dataset .* got ndarray$"):
        save_module(tmp_path / "y.pt", model, data=np.zeros(3))
    for fn in (save_module, lambda p, m, task: save(p, m, model_name="jet_mlp", task=task)):
        with pytest.raises(ValueError, match=r"^task='anomly'; expected 'classify' or 'anomaly'$"):
            fn(tmp_path / "z.pt", model, task="anomly")
    assert not list(tmp_path.iterdir())
    for task in (Classify, Anomaly):
        for fpr in (5, -0.5, float("nan"), 0, True):
            with pytest.raises(ValueError, match=r"^fpr=.*; expected a false-positive rate "
                                                 r"between 0 and 1"):
                task(fpr=fpr)
    with pytest.raises(ValueError, match="^fit: the model is float16, .* model.float"):
        fit(build("jet_mlp").half(), jets, epochs=1, progress=False)
    frozen = build("jet_mlp").requires_grad_(False)
    with pytest.raises(ValueError, match="^fit: the Sequential has no trainable parameters"):
        fit(frozen, jets, epochs=1, progress=False)
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(16, 5))
    for fn, who in ((lambda: fit(meta, jets, epochs=1, progress=False), "fit"),
                    (lambda: evaluate(meta, jets), "evaluate"),
                    (lambda: hetq.cost.cost(meta), "cost")):
        with pytest.raises(ValueError, match=rf"^{who}: the model's tensors are on the 'meta' "
                                             r"device .* the first: 0.weight\)"):
            fn()


def test_a_softmax_at_the_end_of_a_classifier_is_said(jets):
    """A model ending in nn.Softmax trained silently on the cross-entropy of probabilities
    (loss 1.32 where the same model without it reached 1.00)."""
    from torch import nn

    with pytest.warns(UserWarning, match=r"^classify task: the model's outputs are "
                                         r"probabilities .* remove the softmax"):
        evaluate(nn.Sequential(build("jet_mlp"), nn.Softmax(dim=1)), jets)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(build("jet_mlp"), jets)  # logits: no warning


def test_a_checkpoint_written_meanwhile_by_another_run_is_not_replaced(tmp_path):
    """Two retrain (or ptq) runs given one --out both passed the check before training, and
    the later save silently replaced the first run's model. Without --overwrite the save
    itself no longer replaces a file: the model goes to a free name beside it."""
    from hetq.files import write_whole

    model = build("jet_mlp")
    path = tmp_path / "rt.pt"
    path.write_bytes(b"the other run's model")
    with pytest.warns(UserWarning, match=rf"^{re.escape(str(path))} was written by another "
                                         rf"run while this one worked; this model is saved "
                                         rf"as {re.escape(str(tmp_path / 'rt-2.pt'))}$"):
        got = save(path, model, model_name="jet_mlp", overwrite=False)
    assert got == tmp_path / "rt-2.pt" and path.read_bytes() == b"the other run's model"
    assert torch.equal(hetq.load(got)[0].weight, model[0].weight)
    with pytest.raises(FileExistsError):
        write_whole(path, lambda tmp: tmp.write_bytes(b"new"), replace=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt-2.pt", "rt.pt"]
    assert save(path, model, model_name="jet_mlp") == path  # (overwrite: the default)


def test_train_cnn_digits_defaults_to_the_digits(tmp_path, capsys):
    """`hetq train --model cnn_digits` without --data trained on the jets and failed with
    'the model does not take the samples of jets-sim'."""
    assert main(["train", "--model", "cnn_digits", "--epochs", "1", "--out",
                 str(tmp_path / "c"), "--no-progress"]) == 0
    assert "cnn_digits on " in capsys.readouterr().out
    assert hetq.load(tmp_path / "c" / "model.pt")[0].in_channels == 1


def test_a_checkpoint_that_does_not_fit_on_the_disk_is_one_error_line(tmp_path):
    """A full disk while saving a checkpoint gave torch's traceback ('RuntimeError: [enforce
    fail at inline_container.cc:672] . unexpected pos'), naming no file. A file-size limit
    fails the write as a full disk does, without needing one."""
    import subprocess
    import sys

    out = tmp_path / "t"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
            "from hetq.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "train", "--data", "synthetic:n=300",
                        "--epochs", "1", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        f"hetq train: error: File too large: {out / 'model.pt'}", r.stderr
    assert not list(out.glob(".*.part")) if out.exists() else True


def test_a_roc_plot_that_does_not_fit_is_a_warning_after_the_saved_model(tmp_path):
    """When roc.png failed (a full disk) after model.pt and metrics.json were saved, the
    command ended with a bare error and exit 1, as if the training were lost; the image
    was written in place, so a cut-off one could stay."""
    import subprocess
    import sys

    from hetq.cli import main

    out = tmp_path / "t"
    argv = ["train", "--model-widths", "8", "--data", "synthetic:n=300,seed=1", "--epochs",
            "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0 and (out / "roc.png").is_file()  # (an earlier run's curves)
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (12000, 12000)); "
            "from hetq.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, *argv, "--overwrite", "--seed", "3"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == (f"hetq train: warning: the ROC plot was not written (File too large: "
                        f"{out / 'roc.png'}); the model and its metrics are saved\n")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt"]


def test_a_folder_lock_names_its_file_and_takes_a_non_ascii_path_in_an_ascii_locale(
        tmp_path, monkeypatch):
    """Writing the lock on a full disk said 'No space left on device' naming no file; under
    an ASCII locale (no UTF-8 coercion) a non-ASCII --out failed to encode ('surrogates not
    allowed') in train, search, demo and export."""
    import errno
    import os
    import subprocess
    import sys

    from hetq import files

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "pwrite", full)
    with pytest.raises(OSError) as e:
        with files.folder_lock(tmp_path / "a"):
            pass
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(tmp_path / "a" / ".hetq.lock"))
    monkeypatch.undo()
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([sys.executable, "-m", "hetq.cli", "train", "--model-widths", "8",
                        "--data", "synthetic:n=300,seed=1", "--epochs", "1", "--out",
                        "\u00fcn\u00ef/r", "--no-progress"], cwd=tmp_path, env=env,
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "\u00fcn\u00ef" / "r" / "model.pt").is_file()


def test_symbolic_links_as_outputs(tmp_path, capsys):
    """A link given as an output file was replaced by a file (its target kept the old
    contents); a link to a file not yet there was taken for another run's file ('saved as
    p-2.pt'); a link to nowhere or in a loop as --out said 'File exists', the PTQ run first."""
    import json
    import os

    from hetq.cli import main

    m = tmp_path / "f"
    assert main(["train", "--model-widths", "8", "--data", "synthetic:n=300,seed=1",
                 "--epochs", "1", "--out", str(m), "--no-progress"]) == 0
    real, links = tmp_path / "real", tmp_path / "links"
    real.mkdir()
    links.mkdir()
    (real / "c.json").write_text("{}")
    os.symlink(real / "c.json", links / "c.json")
    os.symlink(real / "p.pt", links / "p.pt")  # (p.pt is not there yet)
    os.symlink(real / "none", links / "dir")
    os.symlink(links / "loop2", links / "loop1")
    os.symlink(links / "loop1", links / "loop2")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(tmp_path / "gone" / "model.pt", run / "model.pt")  # (trained, then failed)
    capsys.readouterr()
    assert main(["cost", "--model", "jet_mlp", "--preset", "q6", "--json",
                 str(links / "c.json")]) == 0
    assert (links / "c.json").is_symlink() and "totals" in json.loads((real / "c.json").read_text())
    assert main(["ptq", str(m), "--data", "synthetic:n=300,seed=1", "--bits", "6", "--out",
                 str(links / "p.pt")]) == 0
    err = capsys.readouterr().err
    assert "another run" not in err and (links / "p.pt").is_symlink()
    assert (real / "p.pt").is_file() and not list(real.glob("p-*.pt")) and \
        not list(links.glob("p-*.pt"))
    for argv, problem in (
            (["train", "--out", str(links / "dir")],
             f"{links / 'dir'} is a symbolic link to {real / 'none'}, which is not there"),
            (["train", "--out", str(links / "loop1")],
             f"{links / 'loop1'} is a symbolic link loop"),
            (["ptq", str(m), "--out", str(links / "loop1" / "p.pt")],
             f"{links / 'loop1'} is a symbolic link loop"),
            (["cost", "--model", "jet_mlp", "--json", str(links / "loop2")],
             f"{links / 'loop2'} is a symbolic link loop"),
            (["cost", "--model", "jet_mlp", "--json", f"{links}/new/"],
             "names a folder (a trailing /); expected a file to write"),
            (["train", "--overwrite", "--out", str(run)],
             f"is a symbolic link to {tmp_path / 'gone' / 'model.pt'}, whose folder is not "
             "there")):
        assert main([*argv, "--no-progress"] if argv[0] != "cost" else argv) == 2, argv
        opt = "--json" if argv[0] == "cost" else "--out"
        sep = " " if problem.startswith(("names", "is a")) else ": "
        named = argv[-1] if argv[-1] != str(run) else run / "model.pt"
        assert capsys.readouterr().err == \
            f"hetq {argv[0]}: error: {opt} {named}{sep}{problem}\n", argv
    assert not (links / "new").exists()


def test_a_tilde_in_an_option_value_is_the_home_folder(tmp_path, monkeypatch):
    """`--out=~/runs` (the shell leaves ~ after =) made a folder named '~' in the current
    one, and `--config '~/q.yaml'` was 'not found'."""
    from hetq.cli import main

    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    (home / "q.yaml").write_text("fc1:\n  kernel: quantized_bits(4,0,1)\n")
    assert main(["train", "--model-widths", "8", "--data", "synthetic:n=300,seed=1",
                 "--epochs", "1", "--out=~/runs/t", "--config", "~/q.yaml",
                 "--no-progress"]) == 0
    assert (home / "runs" / "t" / "model.pt").is_file() and not (here / "~").exists()
    # paths only: names and regexes stay as given; the journal and SQLite paths of --storage
    from hetq.cli import _expand_home, build_parser
    from hetq.search.storage import _journal_file, database_url

    args = build_parser().parse_args(["search", "--study", "~", "--tune-filters-exceptions",
                                      "~", "--warm-start", "~/a", "--out", "~/s"])
    _expand_home(args)
    assert (args.study, args.tune_filters_exceptions, args.warm_start, args.out) == \
        ("~", "~", [f"{home}/a"], f"{home}/s")
    assert _journal_file("journal:~/s.journal") == home / "s.journal"
    assert database_url("sqlite:///~/x.db") == f"sqlite:///{home}/x.db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"
    # every command reads a --storage with ~ alike: a worker looked for a literal ~/x.db, and
    # a run's own journal given as ~/... was taken for another study's
    from hetq.search.storage import _database, check_storage_exists

    (home / "x.db").write_text("")
    check_storage_exists("sqlite:///~/x.db")
    for s in ("~/r/study.journal", "journal:~/r/study.journal"):
        assert _database(s, home / "r") is None
        args = build_parser().parse_args(["worker", "--storage", s])
        _expand_home(args)
        assert args.storage == s.replace("~", str(home))


def test_a_ptq_checkpoint_keeps_the_data_it_was_made_on(tmp_path, capsys):
    """ptq's checkpoint recorded no data spec (as_trained dropped it): its evaluate and
    export took the built-in jets-sim, refused ('jets-sim has other features') or, with jet
    features, silently compared on other data."""
    from hetq.cli import main
    from hetq.train.checkpoint import read

    spec = "synthetic:n=300,features=3,classes=2,seed=1"
    assert main(["train", "--data", spec, "--epochs", "2", "--out", str(tmp_path / "f"),
                 "--no-progress"]) == 0
    assert main(["ptq", str(tmp_path / "f" / "model.pt"), "--bits", "6"]) == 0
    ptq = tmp_path / "f" / "ptq6.pt"
    assert read(ptq)["normalization"]["spec"] == spec
    capsys.readouterr()
    assert main(["evaluate", str(ptq)]) == 0
    assert "synthetic" in capsys.readouterr().out


def test_log_odds_of_many_classes_in_chunks_equal_the_whole():
    """All rows at once built an N x C x (C-1) tensor: 8.7 GB for 1,000 rows of 600
    classes. In chunks, the same scores, ties exactly tied."""
    from hetq.train.metrics import log_odds

    torch.manual_seed(0)
    x = torch.randn(300, 40).round(decimals=1)  # (many ties)
    whole = x.double() - torch.logsumexp(
        x.double()[:, torch.tensor([[j for j in range(40) if j != k] for k in range(40)])]
        .sort(dim=-1, descending=True).values, dim=-1)
    assert torch.equal(log_odds(x), whole)
    big = torch.randn(2, 20, 700)  # (700 classes: chunks of 34 rows, here 34 and 6)
    others = torch.tensor([[j for j in range(700) if j != k] for k in range(700)])
    flat = big.reshape(40, 700).double()
    whole = flat - torch.logsumexp(flat[:, others].sort(dim=-1, descending=True).values, -1)
    got = log_odds(big)
    assert got.shape == big.shape and torch.equal(got.reshape(40, 700), whole)


def test_roc_plot_draws_class_names_as_given(tmp_path, monkeypatch):
    """Class names went to matplotlib as markup: '$\\frac$' failed the plot (and `hetq train`,
    after saving the model), '$\\alpha$' was drawn as a Greek letter, '_bkg' was left out of
    the legend, and an 80-character name left the axes a strip. The log axis' own labels
    stay math (turning math off everywhere drew them as '$\\mathdefault{10^{-4}}$')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure

    from hetq.train.report import plot_roc

    legend, ticks = [], []
    saved = matplotlib.figure.Figure.savefig

    def save(fig, *args, **kwargs):  # (the texts as the plot left them)
        fig.canvas.draw()
        for ax in fig.axes:
            legend.extend((t.get_text(), t.get_parse_math()) for t in ax.get_legend().get_texts())
            ticks.extend((t.get_text(), t.get_parse_math()) for t in ax.get_xticklabels())
        return saved(fig, *args, **kwargs)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", save)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    classes = ["$\\frac$", "_bkg", "$\\alpha$ & <b>", "x" * 80]
    path = plot_roc(rng.normal(size=(400, 4)) + np.eye(4)[y], y, classes, tmp_path / "roc.png")
    assert path.stat().st_size > 0
    assert legend == [(c, False) for c in classes[:3]] + [("x" * 31 + "\u2026", False)]
    assert ("$\\mathdefault{10^{-4}}$", True) in ticks and all(m for _, m in ticks)


def test_an_anomaly_task_on_data_without_class_names_says_so():
    """It said 'background classes ['0', '1'] not in []'."""
    from hetq.data.dataset import Dataset

    rng = np.random.default_rng(0)
    split = {s: (rng.normal(size=(60, 16)).astype("float32"), rng.integers(0, 3, 60))
             for s in ("train", "val", "test")}
    d = Dataset.from_splits("toy", split)
    with pytest.raises(ValueError, match=r"anomaly task: the data set names no classes, so the "
                                         r"background \['0', '1'\] cannot be picked out"):
        fit(build("jet_autoencoder"), d, epochs=1, task=Anomaly(background=("0", "1")),
            progress=False)


def test_ptq_does_not_write_over_its_own_float_checkpoint(tmp_path, capsys):
    """`hetq ptq RUN --out RUN/model.pt --overwrite` replaced the float model; RUN's
    metrics.json then described a model that was gone."""
    out = tmp_path / "f"
    assert main(["train", "--model-widths", "4", "--epochs", "1", "--data",
                 "synthetic:n=300,seed=1", "--out", str(out), "--no-progress"]) == 0
    before = (out / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["ptq", str(out), "--bits", "6", "--out", str(out / "model.pt"),
                 "--overwrite"]) == 2
    assert capsys.readouterr().err == (
        f"hetq ptq: error: --out {out / 'model.pt'} is the float checkpoint being "
        "quantized; give another file\n")
    assert (out / "model.pt").read_bytes() == before
    assert main(["ptq", str(out), "--bits", "6", "--out", str(out), "--overwrite"]) == 0
    assert (out / "ptq6.pt").is_file() and (out / "model.pt").read_bytes() == before


def test_ptq_of_a_file_that_is_no_checkpoint_names_it_first(tmp_path, capsys):
    """`hetq ptq RUN/metrics.json` beside an earlier ptq8.pt said 'ptq8.pt already exists'."""
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "ptq8.pt").write_bytes(b"x")
    assert main(["ptq", str(tmp_path / "metrics.json"), "--bits", "8"]) == 2
    assert capsys.readouterr().err.startswith(
        f"hetq ptq: error: {tmp_path / 'metrics.json'} is not a readable hetq checkpoint")


def test_a_float64_checkpoint_loads_as_float64(tmp_path):
    """The model was rebuilt in float32 and its weights cast (3.7e-8 apart)."""
    torch.manual_seed(0)
    for m in (build("jet_mlp", widths=[8]).double(),
              quantize_model(build("jet_mlp", widths=[8]), preset("q6")).double()):
        save(tmp_path / "m.pt", m, model_name="jet_mlp", model_kwargs={"widths": [8]})
        back = hetq.load(tmp_path / "m.pt")
        x = torch.randn(50, 16, dtype=torch.float64)
        assert next(back.parameters()).dtype == torch.float64
        with torch.no_grad():
            assert torch.equal(back(x), m.eval()(x))
