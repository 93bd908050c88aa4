"""The search driver: end to end on small data, resume, pruning, stored weights, workers
sharing a study (journal file here; PostgreSQL when HETQ_TEST_POSTGRES is set, as in CI),
and a worker killed mid-trial."""

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch

from hetq.search.config import SearchConfig
from hetq.search.driver import build_context, run_candidate, run_search
from hetq.search.results import load_run, pareto_rows, trial_model
from hetq.search.storage import make_storage, trial_path
from hetq.train import evaluate
from hetq.train import load as hetq_load

DATA = "synthetic:n=1500,seed=3"
POSTGRES = os.environ.get("HETQ_TEST_POSTGRES")


def cfg(**kw):
    base = dict(data=DATA, trials=4, epochs=2, float_epochs=3, batch_size=256, seed=0,
                limit={"Linear": [4, 4], "ReLU": [4]})
    base.update(kw)
    return SearchConfig(**base)


def completed(study):
    return [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]


def test_search_end_to_end_and_stored_weights(tmp_path):
    study = run_search(cfg(), tmp_path / "s", progress=False)
    done = completed(study)
    assert len(done) == 4
    for t in done:
        assert {"metrics", "costs", "candidate", "weights", "score"} <= set(t.user_attrs)
        assert t.user_attrs["costs"]["energy_pj"] > 0
    rows = pareto_rows(tmp_path / "s")
    assert rows and all(r["trial"] in {t.number for t in done} for r in rows)
    # the best model IS the trained trial: its stored weights reproduce the recorded accuracy
    best = max(done, key=lambda t: t.value)
    model = trial_model(tmp_path / "s", best.number)
    config, _ = load_run(tmp_path / "s")
    ctx_data = build_context(config, tmp_path / "s", progress=False).data
    acc = evaluate(model, ctx_data, split="val")["accuracy"]
    assert acc == best.user_attrs["metrics"]["val"]["accuracy"]
    # ...also with a checkpoint cut short (a copy interrupted), or none at all: from the
    # weights stored in the study
    path = trial_path(tmp_path / "s", config.study_name, best.number)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"not a readable hetq checkpoint .*weights are taken "
                                         r"from the study instead"):
        model2 = trial_model(tmp_path / "s", best.number)
    assert evaluate(model2, ctx_data, split="val")["accuracy"] == acc
    path.unlink()
    model3 = trial_model(tmp_path / "s", best.number)
    assert evaluate(model3, ctx_data, split="val")["accuracy"] == acc


def test_resume_keeps_completed_trials(tmp_path):
    out = tmp_path / "r"
    s1 = run_search(cfg(trials=2), out, progress=False)
    first = {t.number: t.value for t in completed(s1)}
    s2 = run_search(cfg(trials=4), out, progress=False)  # same settings, bigger budget
    second = {t.number: t.value for t in completed(s2)}
    assert len(second) == 4
    assert all(second[n] == v for n, v in first.items())
    with pytest.raises(ValueError, match="other settings.*epochs"):
        run_search(cfg(trials=4, epochs=3), out, progress=False)


def test_pruning_stops_a_hopeless_trial(tmp_path):
    ctx = build_context(cfg(epochs=5), tmp_path / "p", progress=False)

    class HopelessTrial:
        reported = []

        def report(self, value, step):
            self.reported.append(step)

        def should_prune(self):
            return True

    cand = ctx.space.candidate({})
    trial = HopelessTrial()
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 0"):
        run_candidate(ctx, cand, trial=trial)
    assert trial.reported == [0]  # stopped after the first epoch, not 5


def test_bad_search_settings_are_refused_before_any_work(tmp_path, capsys):
    for kw, msg in [({"sparsity": [0.5, 1.5]}, r"sparsity=\[0.5, 1.5\]: each must be a pruned "
                                               r"fraction in \[0, 1\); got 1.5"),
                    ({"learning_rates": [1e-3, 0]},
                     "each must be a finite learning rate > 0; got 0"),
                    # (inf was let through: 5 trials failed on it, with tracebacks)
                    ({"learning_rates": [math.inf]},
                     "each must be a finite learning rate > 0; got inf"),
                    ({"width_multipliers": []}, "each must be a finite width multiplier > 0"),
                    ({"float_epochs": 0}, "float_epochs must be >= 1, got 0"),
                    ({"prior_configs": 0}, "prior_configs must be >= 1, got 0"),
                    ({"rate": 0.5}, "rate=0.5; expected a cost ratio > 1"),
                    ({"stress": 0}, "stress=0; expected a factor > 0"),
                    ({"delta_p": float("nan")}, "delta_p=nan; expected a percentage >= 0"),
                    ({"source_quantizer": "int9"}, "source_quantizer='int9': unknown quantizer "
                                                   "'int9'.*or a named type: int8"),
                    ({"reference": "fp8"}, "reference='fp8': unknown quantizer"),
                    ({"delta_n": -1}, "delta_n=-1; expected a percentage >= 0"),
                    ({"min_reduction": -4}, "min_reduction=-4; expected a cost reduction "
                                            "factor > 0"),
                    ({"max_metric_loss": 5}, r"max_metric_loss=5; expected a fraction of the "
                                             r"reference's metric in \[0, 1\]"),
                    ({"blocks": ["^fc", "("]}, r"search blocks: '\(' is not a layer-name "
                                              "regular expression"),
                    ({"tune_filters_exceptions": "[a"}, "tune_filters_exceptions: '\\[a' is not"),
                    ({"limit": [4, 4]}, "search limit: expected a mapping such as "
                                        r"\{Linear: \[4, 4\], ReLU: \[4\]\}; got a list"),
                    # wrong types: they used to pass int()/float() and fail inside training
                    ({"epochs": "3"}, "search epochs='3'; expected an integer$"),
                    ({"trials": 2.5}, "search trials=2.5; expected an integer$"),
                    ({"lr": "3e-3"}, r"lr='3e-3'; expected a number \(YAML reads 3e-3 as a "
                                     r"string; write 3.0e-3\)"),
                    ({"beta1": "high"}, "beta1='high'; expected a number$"),
                    # the EBOPs ramp was checked only after the float training
                    ({"beta0": 0.0}, r"beta0=0.0, beta1=0.001; expected 0 < beta0 <= beta1"),
                    ({"beta0": 1e-3, "beta1": 1e-5}, "beta0=0.001, beta1=1e-05; expected"),
                    ({"beta1": float("inf")}, "beta1=inf; expected 0 < beta0"),
                    ({"beta0": 1e-12, "ebops_target": [2000, 500]},
                     r"beta0=1e-12; with ebops_target it is the controller's first beta, "
                     r"expected in \[1e-9, 1\]"),
                    ({"warm_start": "runs/a"}, "warm_start='runs/a'; expected a list of strings"),
                    ({"sparsity": [0.1, "x"]}, r"expected a number for each item \(got 'x'\)"),
                    ({"gradient_compile": 1}, "gradient_compile=1; expected true or false"),
                    ({"data": None}, r"data=None; expected a value \(not null; the default is "
                                     r"'jets-sim'\)"),
                    # the study names the trials' folder: an empty name or a path is refused
                    ({"study_name": ""}, "study_name=''; expected a name such as 'jets1', "
                                         "not empty"),
                    ({"study_name": " "}, "study_name=' '; expected a name"),
                    ({"study_name": ".."}, "study_name='..'; expected a name"),
                    ({"study_name": "a/b"}, r"study_name='a/b'; expected .* RUN/trials/NAME\)$"),
                    ({"study_name": "a\\b"}, r"study_name='a\\\\b'; expected a name")]:
        with pytest.raises(ValueError, match=msg):
            SearchConfig(**kw)
    # what fits: ints for numbers, tuples for lists, null where a setting may be unset
    cfg = SearchConfig(lr=1, ebops_target=(2000, 500), time_budget=None, act_quantile=None)
    assert (cfg.lr, cfg.ebops_target) == (1, (2000, 500))
    (tmp_path / "s.yaml").write_text("epochs: 2\nlr: 3.0e-3\n")
    assert SearchConfig.load(tmp_path / "s.yaml").lr == 0.003
    from hetq.cli import main

    out = tmp_path / "d"
    assert main(["search", "--devices", "0,x", "--workers", "2", "--out", str(out)]) == 2
    assert "--devices '0,x': expected comma-separated CUDA device ids" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        assert main(["search", "--devices", "0", "--workers", "2", "--out", str(out)]) == 2
        assert "CUDA is not available on this machine" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_metric_is_refused_and_the_corrected_rerun_runs(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(ValueError, match=r"metric 'acc' is not measured on synthetic; expected "
                                         r"one of accuracy, auc_0, "):
        run_search(cfg(metric="acc", trials=1), out, progress=False)
    assert not (out / "search.yaml").exists() and not (out / "float.pt").exists()
    study = run_search(cfg(trials=1), out, progress=False)  # not "other settings"
    assert len(completed(study)) == 1
    # a class the val split has no sample of: said so (it read as if there were no class c)
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    y[100:200] = np.arange(100) % 2  # val: classes a and b only
    f = tmp_path / "v.npz"
    np.savez(f, X=rng.normal(size=(300, 16)).astype(np.float32), y=y,
             split=np.repeat([0, 1, 2], 100), classes=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"^metric 'auc_c': class 'c' has no samples in the val "
                                         r"split of jets-sim, where the search measures it$"):
        run_search(cfg(data=f"jets-sim:{f}", metric="auc_c", trials=1), tmp_path / "v",
                   progress=False)


def test_worker_on_a_missing_device_fails_once_not_per_trial(tmp_path, monkeypatch):
    import torch

    from hetq.search.driver import run_worker_process

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    name = f"d{uuid.uuid4().hex[:8]}"
    run_search(cfg(trials=1, study_name=name), tmp_path / "d", progress=False)
    monkeypatch.setenv("HETQ_DEVICE", "cuda:0")  # what `--devices 0` gives each worker
    with pytest.raises(ValueError, match="'cuda:0' requested but CUDA is not available"):
        run_worker_process(tmp_path / "d", name, None, progress=False)
    _, study = load_run(tmp_path / "d")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]  # no trial failed for it


def test_unreachable_storage_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"cannot open storage postgresql://nobody@127\.0\.0\.1"
                                         r":9/db.*running and reachable"):
        make_storage("postgresql://nobody:secret@127.0.0.1:9/db")
    with pytest.raises(ValueError, match="expected a database URL"):
        make_storage("not-a-url")


def test_a_bad_storage_is_refused_before_the_float_model_is_trained(tmp_path):
    with pytest.raises(ValueError, match="cannot open storage postgresql://nobody@127"):
        run_search(cfg(), tmp_path / "r", storage="postgresql://nobody@127.0.0.1:9/db",
                   progress=False)
    assert not (tmp_path / "r").exists()  # no float.pt, no yaml, no empty folder
    with pytest.raises(ValueError) as e:  # Optuna's own sentence ends in a full stop
        make_storage("mysql://nobody@127.0.0.1:9/db")
    assert "Failed to import DB access module" in str(e.value) and ".." not in str(e.value)


def test_postgresql_urls_name_the_installed_driver(monkeypatch):
    import importlib.util

    from hetq.search.storage import database_url

    installed = {"psycopg"}  # hetq[postgres]: psycopg 3 only
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: object() if name in installed else None)
    assert database_url("postgresql://u:pw@h:5432/db") == "postgresql+psycopg://u:pw@h:5432/db"
    assert database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    for kept in ("postgresql+psycopg2://u@h/db", "sqlite:///s.db", "mysql://u@h/db"):
        assert database_url(kept) == kept
    installed.add("psycopg2")  # SQLAlchemy's own default for a bare postgresql://
    assert database_url("postgres://u@h/db") == "postgresql://u@h/db"
    assert database_url("postgresql://u@h/db") == "postgresql://u@h/db"


def _storages(tmp_path):
    out = [None]  # journal file in the run folder
    if POSTGRES:
        out.append(POSTGRES)
    return out


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_two_workers_share_one_study(tmp_path, backend, capfd):
    if backend == "postgresql" and not POSTGRES:
        pytest.skip("set HETQ_TEST_POSTGRES (as .ci/run does) to test PostgreSQL")
    storage = POSTGRES if backend == "postgresql" else None
    name = f"w{uuid.uuid4().hex[:8]}"
    study = run_search(cfg(trials=6, study_name=name), tmp_path / "w", storage=storage,
                       workers=2, progress=False)
    done = completed(study)
    assert len(done) == 6  # the total equals the budget
    assert len({t.number for t in done}) == 6
    pids = {t.user_attrs["pid"] for t in done}
    assert len(pids) == 2  # both workers completed trials
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    # each worker says what it did (it used to end without a word)
    said = [line for line in capfd.readouterr().out.splitlines() if line.startswith("worker:")]
    ran = [int(re.match(r"worker: ran (\d+) trials? here; study '" + name + r"' has 6 of its "
                        r"6$", line).group(1)) for line in said]
    assert len(ran) == 2 and sum(ran) == 6 and min(ran) >= 1
    from hetq.cli import main

    late = ["worker", "--study", name, "--out", str(tmp_path / "w"), "--no-progress"]
    assert main(late + (["--storage", storage] if storage else [])) == 0  # nothing left to do
    assert capfd.readouterr().out.endswith(f"worker: ran 0 trials here; study '{name}' has 6 of "
                                           "its 6 (it was complete already)\n")


def test_sigterm_to_a_search_with_workers_is_an_interruption_not_a_death(tmp_path):
    """SIGTERM to `hetq search --workers N` (kill, a batch system's limit) counted as its
    workers dying: after three stops a configuration was dropped as 'out of memory?', and
    the report said its trials were running."""
    out = tmp_path / "w"
    cmd = [sys.executable, "-m", "hetq.cli", "search", "--data", DATA, "--workers", "2",
           "--trials", "4", "--epochs", "200", "--float-epochs", "1", "--out", str(out),
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, study = time.time() + 180, None
    while time.time() < deadline and proc.poll() is None:
        if (out / "study.journal").exists():
            study = optuna.load_study(study_name="hetq", storage=make_storage(None, out))
            if sum(t.state.name == "RUNNING" and "pid" in t.user_attrs
                   for t in study.get_trials(deepcopy=False)) == 2:
                break
        time.sleep(0.2)
    assert study is not None and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    proc.stderr.close()
    study = optuna.load_study(study_name="hetq", storage=make_storage(None, out))
    trials = study.get_trials(deepcopy=False)
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert len(stopped) == 2 and not [t for t in trials if t.state.name == "RUNNING"]
    queued = [t for t in trials if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_of"] for t in queued) == sorted(t.number for t in stopped)
    assert not [t for t in trials if t.user_attrs.get("deaths")]


def test_a_trial_that_names_this_process_is_dead_when_it_runs_none():
    """A restarted container's search got the dead search's pid: its RUNNING trial looked
    alive, and the resumed search waited for it for ever, without a word."""
    import socket

    from hetq.search.storage import recover_dead_trials

    study = optuna.create_study()
    t = study.ask()
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", os.getpid())
    assert recover_dead_trials(study) == [0]
    assert [x.state.name for x in study.trials] == ["FAIL", "WAITING"]


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_killed_worker_loses_no_completed_trial(tmp_path, backend, monkeypatch):
    import hetq.search.storage as storage_mod

    monkeypatch.setattr(storage_mod, "GRACE_PERIOD", 3)  # anonymous dead trials: 3 s
    if backend == "postgresql" and not POSTGRES:
        pytest.skip("set HETQ_TEST_POSTGRES (as .ci/run does) to test PostgreSQL")
    storage = POSTGRES if backend == "postgresql" else None
    name = f"k{uuid.uuid4().hex[:8]}"
    out = tmp_path / "k"
    config = cfg(trials=5, epochs=6, study_name=name)
    run_search(cfg(trials=1, epochs=6, study_name=name), out, storage=storage, progress=False)
    cmd = [sys.executable, "-m", "hetq.search.worker", "--out", str(out), "--study", name,
           "--quiet"] + (["--storage", storage] if storage else [])
    config.save(out / "search.yaml")
    st = make_storage(storage, out)
    study = optuna.load_study(study_name=name, storage=st)
    study.set_user_attr("hetq_config", config.to_dict())
    proc = subprocess.Popen(cmd)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for >= 2 completed and one running trial
        trials = study.get_trials(deepcopy=False)
        n_done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        if n_done >= 2 and running:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: t.value for t in completed(study)}
    assert len(before) >= 2
    killed = [t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))]
    assert killed, "the worker was not killed mid-trial"
    resumed = run_search(config, out, storage=storage, progress=False)
    after = {t.number: t.value for t in completed(resumed)}
    assert all(after[n] == v for n, v in before.items())  # nothing completed was lost
    assert len(after) == 5
    # retried by hetq's dead-worker check or by the database heartbeat, whichever came first
    retried = [t for t in resumed.trials if t.user_attrs.get("retry_of") in killed
               or t.system_attrs.get("failed_trial") in killed]
    # the retry carries the killed trial's parameters (all it had sampled before it died)
    assert retried
    assert resumed.trials[killed[0]].params.items() <= retried[0].params.items()


def test_block_wise_search_freezes_earlier_blocks(tmp_path):
    config = cfg(trials=6, blocks=["^(fc1|relu1)$", "^(fc2|relu2|fc3|relu3|output)$"],
                 schedule_block="sequential")
    study = run_search(config, tmp_path / "b", progress=False)
    import json

    state = json.loads((tmp_path / "b" / "scheduler.json").read_text())
    assert state["next_block"] == 2 and state["final_study"] == "hetq_block1"
    frozen = {k: v for k, v in state["frozen"].items() if k.startswith(("fc1/", "relu1/"))}
    assert frozen  # block 0's best choices ...
    for t in completed(study):  # ... are pinned in every trial of block 1
        qc = t.user_attrs["candidate"]["quant_config"]
        for name, value in frozen.items():
            layer, fld = name.split("/")
            assert qc[layer][fld] == value
    first = optuna.load_study(study_name="hetq_block0", storage=make_storage(None, tmp_path / "b"))
    for t in completed(first):  # later blocks stay float while block 0 is searched
        assert set(t.user_attrs["candidate"]["quant_config"]) <= {"fc1", "relu1"}
    assert len(completed(first)) == 6 and len(completed(study)) == 6  # min(10, trials) each
    assert pareto_rows(tmp_path / "b")
    # layers that no block matches stay float in every block (they got each quantizer's
    # first candidate, unsearched: relu1 'binary()', output 'binary(alpha=...)')
    part = run_search(cfg(trials=2, blocks=["^fc"]), tmp_path / "p", progress=False)
    for t in completed(part):
        assert set(t.user_attrs["candidate"]["quant_config"]) == {"fc1", "fc2", "fc3"}
    # a parameter that layers of several blocks share (--tune-filters block: one multiplier)
    # is searched by the first block only; the second searched it again, overriding the
    # value the first had frozen
    from hetq.search.blocks import schedule

    config = cfg(trials=4, tune_filters="block", width_multipliers=[0.5, 2.0],
                 blocks=["^(fc1|relu1)$", "^(fc2|relu2|fc3|relu3|output)$"])
    ctx = build_context(config, tmp_path / "w", progress=False)
    plan = schedule(ctx.space, config.blocks, "sequential", {}, 4)
    assert "width/block" in plan[0]["params"] and "width/block" not in plan[1]["params"]
    assert all(p.startswith(("fc1/", "relu1/", "width/")) for p in plan[0]["params"])
    # the layers no block matches are not searched by the first block (they stay float:
    # they were narrowed and pruned), and a layer without a value keeps width 1, unpruned
    config = cfg(trials=4, tune_filters="layer", width_multipliers=[0.5, 0.75],
                 sparsity=[0.5, 0.75], learning_rates=[1e-3, 3e-2],
                 blocks=["^(fc1|relu1)$", "^(fc2|relu2)$"])
    ctx = build_context(config, tmp_path / "u", progress=False)
    plan = schedule(ctx.space, config.blocks, "sequential", {}, 4)
    assert all(p.startswith(("fc1/", "relu1/", "width/fc1", "sparsity/fc1")) or p == "lr"
               for p in plan[0]["params"]) and "lr" in plan[0]["params"]
    c = ctx.space.candidate({p: ctx.space.distributions()[p].choices[0]
                             for p in plan[0]["params"]})
    assert c.widths["fc2"] == c.widths["fc3"] == 1.0 and c.widths["fc1"] == 0.5
    assert c.sparsity["fc2"] == c.sparsity["output"] == 0.0 and c.sparsity["fc1"] == 0.5
    # --learning-rates: no block searched lr (it belongs to no layer), and every trial
    # trained at --lr without a word; the first block searches it, the later ones keep it
    config = cfg(trials=3, learning_rates=[1e-3, 3e-2],
                 blocks=["^(fc1|relu1)$", "^(fc2|relu2|fc3|relu3|output)$"])
    study = run_search(config, tmp_path / "lr", progress=False)
    state = json.loads((tmp_path / "lr" / "scheduler.json").read_text())
    assert state["frozen"]["lr"] in (1e-3, 3e-2)
    assert {t.user_attrs["candidate"]["lr"] for t in completed(study)} == {state["frozen"]["lr"]}


def test_a_block_freezes_its_best_trial_among_those_that_meet_the_constraints():
    """The best of all trials was frozen, one that missed --min-reduction: then no trial of
    the later blocks met it."""
    from types import SimpleNamespace

    from hetq.search.driver import block_best

    def t(n, value, feasible):
        return SimpleNamespace(number=n, value=value, values=[value], user_attrs={
            "feasible": feasible})
    done = [t(0, 0.42, False), t(1, 0.40, True), t(2, 0.39, True)]
    for objective in ("forgiving", "pareto"):
        assert block_best(done, objective).number == 1
        assert block_best([done[0]], objective).number == 0  # none meets them: the best


def test_max_loss_of_a_metric_the_float_model_scores_zero_is_refused(tmp_path, monkeypatch):
    """Every trial failed with a ZeroDivisionError traceback (a relative loss of 0), and so
    did a rerun. The refusal leaves the folder as it was, so that the corrected command can
    run there."""
    import hetq.search.driver as driver

    real = driver.train_float_model

    def zero(*a, **k):
        model, ref = real(*a, **k)
        return model, {**ref, "accuracy": 0.0}
    monkeypatch.setattr(driver, "train_float_model", zero)
    with pytest.raises(ValueError, match=r"--max-loss is a loss relative to the float model's "
                                         r"validation accuracy, which is 0.0: a relative loss "
                                         r"of it is undefined; choose another --metric"):
        run_search(cfg(trials=2, max_metric_loss=0.05), tmp_path / "z", progress=False)
    # the corrected command in the same folder runs (it was "other settings")
    monkeypatch.setattr(driver, "train_float_model", real)
    assert not (tmp_path / "z" / "search.yaml").exists()
    assert not (tmp_path / "z" / "float.pt").exists()
    study = run_search(cfg(trials=1), tmp_path / "z", progress=False)
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_the_progress_line_and_the_front_list_keep_to_the_constraints(tmp_path, capsys):
    """The progress line's best, and the front that `--trial best` lists for a Pareto
    search, took trials that miss --min-reduction / --max-loss."""
    from types import SimpleNamespace

    from hetq.search.driver import _best_line
    from hetq.search.results import trial_number

    def t(n, value, feasible):
        return SimpleNamespace(number=n, value=value, values=[value, 10.0 - n],
                               user_attrs={"feasible": feasible})

    class Study:
        directions = [0]

        def __init__(self, trials):
            self.trials = trials

        def get_trials(self, deepcopy=False, states=None):
            return self.trials
    forgiving = SimpleNamespace(config=SimpleNamespace(objective="forgiving"))
    done = [t(0, 0.9, False), t(1, 0.5, True), t(2, 0.4, True)]
    assert _best_line(Study(done), forgiving) == "#1 score=0.5000"
    assert _best_line(Study(done[:1]), forgiving) == "none meets the constraints yet"
    pareto = Study([t(0, 0.9, False), t(1, 0.5, True), t(2, 0.6, True)])
    pareto.directions = [0, 1]
    assert _best_line(pareto, SimpleNamespace(config=SimpleNamespace(objective="pareto"))) == \
        "1 on the front"
    with pytest.raises(ValueError, match=r"one of its front's trials \[2\]"):
        trial_number(pareto, "best", tmp_path)


def test_constraints_that_no_trial_meets_are_reported(tmp_path):
    """With --min-reduction 1000 no trial was feasible, yet the table showed an unmarked
    front, `--trial best` listed the front's trials as [], and every run printed Optuna 5's
    FutureWarning about constraints_func."""
    import warnings

    from hetq.search.results import format_table, trial_number

    out = tmp_path / "c"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        study = run_search(cfg(objective="pareto", goal="ebops", min_reduction=1000.0,
                               trials=2), out, progress=False)
    assert [t.user_attrs["feasible"] for t in completed(study)] == [False, False]
    rows = pareto_rows(out)
    assert rows and all(r["feasible"] is False for r in rows)
    config, _ = load_run(out)
    assert "no trial meets the constraints (--min-reduction 1000): the rows above are the " \
        "front of the trials that do not" in format_table(rows, config)
    with pytest.raises(ValueError, match="no completed trial meets the search's constraints"):
        trial_number(study, "best", out)
    # once some trials meet them, the front is theirs alone
    loose = tmp_path / "l"
    study = run_search(cfg(objective="pareto", goal="ebops", min_reduction=40.0, trials=4),
                       loose, progress=False)
    feasible = {t.number for t in completed(study) if t.user_attrs["feasible"]}
    assert 0 < len(feasible) < 4  # (reductions of about 30 to 47 here)
    rows = pareto_rows(loose)
    assert {r["trial"] for r in rows} <= feasible and all(r["feasible"] for r in rows)
    # and the table and the HTML report say so (the plot drew the trials that miss them,
    # which can lie above the front, like any other)
    config, _ = load_run(loose)
    assert "constraints --min-reduction 40: the front of the trials that meet them" in \
        format_table(rows, config)
    from hetq.search.report import write_html_report

    page = write_html_report(loose).read_text()
    assert (f"; constraints --min-reduction 40: {len(feasible)} of 4 trials meet them. "
            in " ".join(page.split()))


def test_multi_objective_search_returns_a_front(tmp_path):
    study = run_search(cfg(objective="pareto", sampler="nsga2", trials=4), tmp_path / "mo",
                       progress=False)
    done = completed(study)
    assert len(done) == 4 and all(len(t.values) == 2 for t in done)
    rows = pareto_rows(tmp_path / "mo")
    costs = [r["costs"]["energy_pj"] for r in rows]
    accs = [r["metrics"]["val"]["accuracy"] for r in rows]
    assert costs == sorted(costs) and accs == sorted(accs)  # cheaper points are less accurate
    assert {r["trial"] for r in rows} <= {t.number for t in study.best_trials}
    # `hetq export RUN --trial best` has no single best here: it names the front's trials
    from hetq.export.cli import resolve_source

    front = sorted(t.number for t in study.best_trials)
    with pytest.raises(ValueError, match=rf"is a Pareto search: no single best trial; give "
                                         rf"a trial number \(--trial N\), one of its front's "
                                         rf"trials "
                                         rf"\[{', '.join(map(str, front))}\]"):
        resolve_source(str(tmp_path / "mo"), "best")


def test_failing_trials_are_recorded_and_repeated_failure_stops(tmp_path):
    from hetq.search.engine import MAX_CONSECUTIVE_FAILURES, SearchFailed, run_worker

    study = optuna.create_study(storage=make_storage(None, tmp_path), study_name="f")
    calls = []

    def flaky(trial):
        calls.append(trial.number)
        if trial.number == 1:
            raise FloatingPointError("training diverged")
        return float(trial.number)

    assert run_worker(study, flaky, budget=3) == 4  # trial 1 failed, one more was run
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]

    def broken(trial):
        raise ValueError("cannot build")

    s2 = optuna.create_study(storage=make_storage(None, tmp_path / "b"), study_name="b")
    with pytest.raises(SearchFailed, match=f"{MAX_CONSECUTIVE_FAILURES} trials in a row failed "
                                           r"\(last: trial 4: ValueError: cannot build\)"):
        run_worker(s2, broken, budget=3)
    # each trial keeps its error, and the advice for a study of failed trials is no rerun
    # of the same command, which fails the same way (it was the advice)
    from hetq.search.storage import resume_advice

    assert {t.user_attrs.get("error") for t in s2.trials} == {"ValueError: cannot build"}
    assert resume_advice(s2) == (
        f"{MAX_CONSECUTIVE_FAILURES} of its trials failed (trial 4: ValueError: cannot "
        "build); a rerun with the same settings fails the same way: change them (a lower "
        "--lr, say) in another --out")


def test_a_worker_counts_only_the_trials_it_ran_itself(tmp_path):
    """Other workers' trials land in the study while this one runs its own: one of theirs
    that overflowed the budget, or failed, used to be taken for this worker's trial (so
    `hetq worker` said it ran fewer trials than it did, and others' failures counted towards
    stopping it)."""
    from hetq.search.engine import MAX_CONSECUTIVE_FAILURES, run_worker

    study = optuna.create_study(storage=make_storage(None, tmp_path), study_name="o")

    def objective(trial):
        other = study.ask()  # another worker's trial, finished while this one runs
        if trial.number % 2:
            other.set_user_attr("overflow", True)
        study.tell(other, state=optuna.trial.TrialState.FAIL)
        return float(trial.number)

    budget = MAX_CONSECUTIVE_FAILURES + 2
    assert run_worker(study, objective, budget=budget) == budget
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"] * budget


def test_workers_and_resumed_searches_draw_their_own_configurations(tmp_path):
    """Every process that opened a study seeded its sampler with the search's seed: with
    --workers 2 each configuration was trained twice side by side, and a resumed search
    trained its first configurations again."""
    from hetq.search.driver import open_study, sampler_seed

    assert sampler_seed(7, 0, 0) == 7 and sampler_seed(None, 3, 1) is None
    seeds = {sampler_seed(7, n, k) for n in (0, 4) for k in (0, 1, 2)} - {7}
    assert len(seeds) == 5
    config = cfg(trials=50)

    def first_draws(stream, n=6, out=tmp_path / "s"):
        study = open_study(config, out, None, stream=stream)
        trials = [study.ask() for _ in range(n)]
        values = [t.suggest_float("x", 0.0, 1.0) for t in trials]
        for t in trials:
            study.tell(t, 0.5)
        return values

    fresh = first_draws(0)
    assert first_draws(0, out=tmp_path / "t") == fresh  # a fresh search is reproducible
    assert first_draws(0, 1)[0] not in fresh  # resumed: not the first draws again
    worker1, worker2 = first_draws(1), first_draws(2)
    assert not set(worker1) & set(worker2) and not set(worker1) & set(fresh)


def test_an_interrupted_trial_is_trained_again_on_resume(tmp_path):
    """Ctrl-C in a trial: Optuna logged it as a failed trial with the KeyboardInterrupt's
    traceback (about 40 lines), and a resumed one-process search never retrained it."""
    from hetq.cli import Terminated
    from hetq.search.engine import run_worker

    study = optuna.create_study(storage=make_storage(None, tmp_path), study_name="i")
    calls = []

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        calls.append(x)
        if len(calls) == 2:
            raise Terminated()  # SIGTERM, taken as Ctrl-C
        return x

    import logging

    logged = []
    handler = logging.Handler()
    handler.emit = logged.append
    logging.getLogger("optuna").addHandler(handler)  # (Optuna's own handler is not captured)
    try:
        with pytest.raises(Terminated):
            run_worker(study, objective, budget=3)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert not [r.getMessage() for r in logged if r.levelno >= logging.WARNING]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "WAITING"]
    assert study.trials[2].user_attrs["retry_of"] == 1
    assert run_worker(study, objective, budget=3) == 2  # the resumed search
    assert calls[2] == calls[1]  # the interrupted configuration first
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]


def test_a_search_without_a_completed_trial_says_so(tmp_path, capsys, monkeypatch):
    """`hetq report` of a search stopped before its first trial ended printed matplotlib's
    'No artists with labels found' and an empty report; `--trial best` said '(No trials are
    completed yet.); give --trial N' although no N would do; a changed --trials was listed
    among the settings that may not change."""
    import hetq.search.driver as driver
    from hetq.cli import main

    def interrupted(ctx):
        def objective(trial):
            raise KeyboardInterrupt
        return objective

    out = tmp_path / "s"
    monkeypatch.setattr(driver, "make_objective", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg(), out, progress=False)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith(
        f"no trial of {out} has completed yet (0 failed, 1 interrupted and queued again, 0 "
        "running, 1 queued); rerun the same `hetq search` command to resume it. No HTML "
        "report was written.")  # (the interrupted trial was counted as failed)
    assert not (out / "report.html").exists() and not (out / "pareto.png").exists()
    for argv in (["retrain", str(out), "--trial", "best"],
                 ["export", str(out), "--trial", "best", "--input-type", "ap_fixed<16,6>"]):
        assert main(argv) == 2
        assert capsys.readouterr().err == (
            f"hetq {argv[0]}: error: {out}: no trial has completed yet, so there is no best one "
            "(rerun the same `hetq search` command to resume it)\n")
    # while a worker is training a trial, a resume is not the advice (it said so anyway)
    from hetq.search.storage import worker_identity

    _, study = load_run(out)
    live = study.ask()  # (the queued trial)
    for k, v in worker_identity().items():
        live.set_user_attr(k, v)
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        f"no trial of {out} has completed yet (0 failed, 1 interrupted and queued again, 1 "
        "running, 0 queued); its search is still running (1 trial in progress); try again "
        "when some have finished. No HTML report was written.")
    assert main(["export", str(out), "--trial", "best", "--input-type", "ap_fixed<16,6>"]) == 2
    assert capsys.readouterr().err.endswith(
        "no best one (its search is still running (1 trial in progress); try again when some "
        "have finished)\n")
    # a trial whose process was killed (SIGKILL) stays RUNNING: it was counted as running
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    dead = study.ask()
    for k, v in {**worker_identity(), "pid": gone.pid}.items():
        dead.set_user_attr(k, v)
    assert main(["report", str(out)]) == 0
    assert "1 running, 1 left running by a process that has stopped, 0 queued); its search " \
        "is still running (1 trial in progress)" in capsys.readouterr().out
    study.tell(dead, state=optuna.trial.TrialState.FAIL)
    study.tell(live, state=optuna.trial.TrialState.FAIL)
    # every trial of the budget pruned: a rerun was the advice, and it found the budget spent
    for _ in range(cfg().trials):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        f"no trial of {out} has completed yet (2 failed, 4 pruned, 1 interrupted and queued "
        "again, 0 running, 0 queued); the budget of 4 trial(s) is spent, by pruned ones "
        "(--pruner none): a rerun adds none; search again in another --out with more "
        "--trials or --pruner none. No HTML report was written.")
    with pytest.raises(ValueError) as e:
        run_search(cfg(trials=9, epochs=3), out, progress=False)
    assert str(e.value) == (f"{out} holds a search with other settings (epochs: 2, now 3); use "
                            "another --out, or the same settings to resume (--trials may "
                            "change)")


def test_a_worker_ends_at_once_on_sigterm_other_commands_take_it_as_ctrl_c(monkeypatch):
    """Every command takes SIGTERM as Ctrl-C (so its clean-up runs), except `hetq worker`:
    raised inside Optuna's journal lock it left the lock broken ('No such file or directory:
    ...study.journal.lock....rename', a traceback, exit 2), which made the --workers SIGTERM
    test fail now and then. A worker dies at once, as before; its trial is retried."""
    import signal

    import hetq.search.driver as driver
    from hetq.cli import main

    seen = {}

    def record(out, study, storage, progress=True):
        seen["worker"] = signal.getsignal(signal.SIGTERM)

    monkeypatch.setattr(driver, "run_worker_process", record)
    assert main(["worker", "--study", "s", "--no-progress"]) == 0
    assert seen["worker"] is signal.SIG_DFL
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(driver, "run_search", lambda *a, **k: seen.setdefault(
        "search", signal.getsignal(signal.SIGTERM)) and (_ for _ in ()).throw(ValueError("x")))
    assert main(["search", "--out", "nowhere", "--no-progress"]) == 2
    assert seen["search"] not in (signal.SIG_DFL, before)  # interrupts_save's handler
    assert signal.getsignal(signal.SIGTERM) is before  # and restored


def test_population_search_prunes_to_the_sampled_sparsity(tmp_path):
    # K=2 members per batch, a sampled sparsity per layer and a metric that only the full
    # validation metrics carry: every trial completes with its own zeros and its stored weights
    study = run_search(cfg(population=2, sparsity=[0.5, 0.75], metric="auc_mean",
                           pruner="median"), tmp_path / "p", progress=False)
    done = completed(study)
    assert len(done) == 4
    config, _ = load_run(tmp_path / "p")
    data = build_context(config, tmp_path / "p", progress=False).data
    for t in done:
        assert 0.5 <= t.user_attrs["metrics"]["val"]["auc_mean"] <= 1.0
        model = trial_model(tmp_path / "p", t.number)
        wanted = t.user_attrs["candidate"]["sparsity"]
        assert wanted and set(wanted.values()) <= {0.5, 0.75}
        layers = dict(model.named_modules())
        for name, s in wanted.items():
            w = layers[name].weight
            assert float((w == 0).float().mean()) == pytest.approx(s, abs=0.02)
        assert evaluate(model, data, split="val")["auc_mean"] == pytest.approx(
            t.user_attrs["metrics"]["val"]["auc_mean"], abs=1e-12)
    # the table shows each row's sparsity (rows that differed in it alone looked the same)
    from hetq.search.results import format_table, front_rows

    _, study = load_run(tmp_path / "p")
    rows = front_rows(config, study)
    table = format_table(rows, config)
    for r in rows:
        assert f"| sparsity {r['candidate']['sparsity']}" in table


def test_search_costs_image_models_at_their_input_shape(tmp_path):
    # the digits CNN takes (1, 8, 8) images: the float reference and every trial are costed at
    # that shape (the search used to trace it with (1, 64) and stopped before any trial)
    from hetq.cost import cost
    from hetq.models import build

    study = run_search(cfg(model="cnn_digits", data="digits", trials=1, epochs=1, float_epochs=1,
                           limit=None), tmp_path / "c", progress=False)
    done = completed(study)
    assert len(done) == 1 and done[0].user_attrs["costs"]["ebops"] > 0
    ref = study.user_attrs["reference"]["costs"]
    expect = cost(build("cnn_digits"), (1, 8, 8), source_quantizer="int8",
                  reference="int8").summary()
    assert ref["energy_pj"] == expect["energy_pj"] and ref["bits"] == expect["bits"]


def test_options_the_strategy_does_not_use_are_reported(tmp_path, capsys):
    from hetq.cli import build_parser, main
    from hetq.search.cli import ignored_options

    parse = build_parser().parse_args
    assert ignored_options(parse(["search", "--strategy", "gradient", "--runs", "2",
                                  "--act-quantile", "max", "--source", "int16"])) == []
    assert ignored_options(parse(["search", "--strategy", "gradient", "--workers", "2",
                                  "--sampler", "nsga2"])) == ["--sampler", "--workers"]
    assert ignored_options(parse(["search", "--beta1", "1e-4", "--teacher-widths", "8",
                                  "--granularity", "layer", "--activation-granularity",
                                  "layer"])) == [
        "--beta1", "--teacher-widths", "--granularity", "--activation-granularity"]
    # printed before any work (here the run then stops at its unknown data set)
    assert main(["search", "--strategy", "gradient", "--workers", "2", "--metric", "acc",
                 "--data", "nosuch", "--out", str(tmp_path / "g"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert ("note: --strategy gradient does not use --metric, --workers (--runs gives parallel "
            "runs)") in err and "unknown dataset 'nosuch'" in err
    # options that the search's other settings leave unused were dropped without a word
    from hetq.search.cli import unused_options

    assert unused_options(parse(["search", "--width-multipliers", "0.5", "1",
                                 "--schedule-block", "cost", "--prior-configs", "8",
                                 "--devices", "0", "--objective", "pareto", "--stress",
                                 "2"])) == [
        "--width-multipliers (it needs --tune-filters)",
        "--schedule-block (it needs --blocks)",
        "--prior-configs (it needs --strategy hessian or --prior hessian)",
        "--devices (it needs --workers N)", "--stress (it needs --objective forgiving)"]
    assert unused_options(parse(["search", "--tune-filters", "layer", "--width-multipliers",
                                 "0.5", "1", "--prior", "hessian", "--prior-configs", "8"])) == []
    assert unused_options(parse(["search", "--strategy", "gradient", "--distill", "0.5"])) == [
        "--distill (it needs --teacher-widths)"]
    assert unused_options(parse(["search", "--strategy", "gradient", "--distill", "0.5",
                                 "--teacher-widths", "8"])) == []
    assert main(["search", "--schedule-block", "cost", "--data", "nosuch", "--out",
                 str(tmp_path / "n"), "--no-progress"]) == 2
    assert "note: not used: --schedule-block (it needs --blocks)" in capsys.readouterr().err
    # and combinations that cannot run are refused before any work
    for argv, msg in (
            (["--blocks", "fc", "--population", "2"], "--blocks: a block-wise search runs "
             "one study per block, one trial at a time; it does not take --population"),
            (["--sampler", "grid", "--population", "2"], "--sampler 'grid' tries each "
             "combination once, one trial at a time; it does not take population=2 "
             "(--population)"),
            (["--blocks", "fc", "--strategy", "hessian"], "--blocks: a block-wise search runs "
             "one study per block, one trial at a time; it does not take --strategy hessian"),
            (["--strategy", "gradient", "--model", "cnn_digits", "--data", "digits"],
             "conv: QConv2d is not supported by the gradient strategy (Linear and ReLU "
             "layers only)"),
            (["--prior", "hessian", "--model", "cnn_digits", "--data", "digits"],
             "--prior hessian takes Hessian traces on the float model, and the zoo model "
             "'cnn_digits' is quantized already (layers 'conv' (QConv2d), 'act1' "
             "(QActivation), 'sepconv' (QSeparableConv2d), ...); use a float model such as "
             "jet_mlp, or another strategy"),
            (["--blocks", "fc", "--workers", "2"], "block-wise search runs with one worker "
             "per block; use --workers 1"),
            (["--population", "2", "--workers", "2"], "population training (--population 2) "
             "trains its batches in one process; use --workers 1 with it"),
            (["--workers", "2", "--devices", ","], "--devices ',': expected comma-separated "
             "CUDA device ids")):
        assert main(["search", *argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x" / "float.pt").exists()


def test_a_run_folder_without_its_study_is_a_clear_error(tmp_path):
    cfg(study_name="s1").save(tmp_path / "search.yaml")  # the settings, but no journal
    with pytest.raises(ValueError, match=r"no study 's1' in .*study.journal; if the search ran "
                                         r"with --storage, give the same --storage"):
        load_run(tmp_path)
    from hetq.search.driver import run_worker_process

    with pytest.raises(ValueError, match="no study 's1' in .*; start it with `hetq search`"):
        run_worker_process(tmp_path, "s1", None, progress=False)
    assert not (tmp_path / "study.journal").exists()  # looking did not create one


def test_a_worker_without_out_says_where_it_looked(tmp_path, monkeypatch):
    """`hetq search` writes to runs/search by default, while a worker without --out looks in
    runs/STUDY: the message says so and asks for the search's folder."""
    from hetq.search.driver import run_worker_process

    monkeypatch.chdir(tmp_path)
    run_search(cfg(trials=1), "runs/search", progress=False)
    with pytest.raises(ValueError) as e:
        run_worker_process(None, "hetq", None, progress=False)
    assert str(e.value) == (
        f"no study 'hetq' in {Path('runs/hetq/study.journal')}; start it with `hetq search` "
        "first, or give the search's run folder with --out (without it the worker looks in "
        "runs/hetq; `hetq search` writes to runs/search unless given --out)")
    assert not Path("runs/hetq").exists()
    assert run_worker_process("runs/search", "hetq", None, progress=False) == 0  # complete


def test_the_worker_module_is_hetq_worker(tmp_path, capsys):
    """`python -m hetq.search.worker` (what the search spawns) is the `hetq worker` command:
    the same options, with --quiet an alias of --no-progress, messages and exit codes."""
    from hetq.cli import main as hetq_main
    from hetq.search import worker

    for flag in ("--quiet", "--no-progress"):
        args = ["--study", "s1", "--out", str(tmp_path), flag]
        assert worker.main(args) == 2
        module_err = capsys.readouterr().err
        assert hetq_main(["worker", *args]) == 2
        assert capsys.readouterr().err == module_err
        assert module_err.startswith("hetq worker: error: no study 's1' in ")
    with pytest.raises(SystemExit):
        worker.main(["--help"])
    assert "--no-progress, --quiet" in capsys.readouterr().out


def test_warm_start_enqueues_the_earlier_front_first(tmp_path):
    """--warm-start: the first trials of the new search are the earlier run's Pareto
    configurations (up to 5), marked as such; a folder that is not a search run is refused
    before the float model is trained (so the corrected command is not 'other settings')."""
    from hetq.search.space import Candidate

    run_search(cfg(objective="pareto", trials=4), tmp_path / "a", progress=False)
    front = [Candidate.from_dict(r["candidate"]) for r in pareto_rows(tmp_path / "a")][:5]
    study = run_search(cfg(trials=len(front) + 1, warm_start=[str(tmp_path / "a")]),
                       tmp_path / "b", progress=False)
    trials = sorted(study.trials, key=lambda t: t.number)
    seeded = trials[:len(front)]
    assert [t.user_attrs.get("warm_start") for t in seeded] == [str(tmp_path / "a")] * len(front)
    assert [Candidate.from_dict(t.user_attrs["candidate"]) for t in seeded] == front
    assert "warm_start" not in trials[-1].user_attrs  # then the sampler's own
    # the same front given twice (or a copy of its folder) is enqueued once; it was trained
    # twice
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "a2")
    twice = run_search(cfg(trials=1, warm_start=[str(tmp_path / "a"), str(tmp_path / "a2")]),
                       tmp_path / "d", progress=False)
    assert twice.user_attrs["warm_started"] == len(front)
    out = tmp_path / "c"
    with pytest.raises(ValueError, match=r"--warm-start .*nosuch: .*not a search run folder"):
        run_search(cfg(warm_start=[str(tmp_path / "nosuch")]), out, progress=False)
    assert not (out / "search.yaml").exists() and not (out / "float.pt").exists()


def test_a_bad_search_space_is_refused_before_the_float_training(tmp_path):
    """An unknown quantizer in quantization_config, or a block regex that matches no layer,
    stops the search before the float model is trained, and the folder is left empty."""
    out = tmp_path / "s"
    for kw, msg in (({"quantization_config": {"kernel": {"quantized_bitz(4,0,1)": 4}}},
                     "unknown quantizer 'quantized_bitz'"),
                    # these two used to fail with int()'s message and an AttributeError
                    ({"quantization_config": {"kernel": {"quantized_bits(4,0,1)": "x"}}},
                     r"quantization_config kernel: 'quantized_bits\(4,0,1\)': 'x'; expected "
                     "its bit cost, an integer >= 0"),
                    ({"quantization_config": {"bias": [1, 2]}},
                     r"quantization_config bias: expected a mapping of candidate to bit cost, "
                     r"e.g. \{'quantized_bits\(4,0,1\)': 4\}; got list \[1, 2\]"),
                    # and these three with TypeError / re.error tracebacks
                    ({"limit": {"Linear": None}}, r"limit Linear: None; expected \[kernel, bias, "
                                                  r"activation\], each a max bit count or a list"),
                    ({"limit": {"fc[": [4]}}, r"limit key 'fc\[' is not a layer-name regular "
                                              "expression"),
                    ({"limit": {5: [4]}}, "limit key 5: expected a layer name, regex, type or "
                                          "'default'"),
                    # (the warning that explains it used to be hidden)
                    ({"limit": {"nosuchlayer": [4, 8, 4]}}, "search space is empty: every field "
                     r"has a single choice .*; search space: limit key 'nosuchlayer' matches "
                     "no layer"),
                    ({"blocks": ["^fc", "^nomatch"]}, "block regex '\\^nomatch' matches no "
                                                      "layer")):
        with pytest.raises(ValueError, match=msg):
            run_search(cfg(**kw), out, progress=False)
        assert not out.exists()  # no float.pt, no search.yaml, no empty folder
    assert len(completed(run_search(cfg(trials=1), out, progress=False))) == 1


def test_table_names_the_forgiving_baseline_only_for_that_objective():
    from hetq.search.results import format_table

    ref = {"metrics": {"accuracy": 0.6}, "test": {"accuracy": 0.61},
           "costs": {"energy_pj": 3283.0, "bits": 36264, "ebops": 892928}}
    lines = {obj: format_table([], cfg(objective=obj), ref).splitlines()[2]
             for obj in ("forgiving", "pareto")}
    assert lines["forgiving"].endswith("float model, costed as int8 reference (the forgiving "
                                       "factor's baseline)")
    assert lines["pareto"].endswith("float model, costed as int8 reference")
    assert "0.6000    0.6100       3283" in lines["pareto"]


def test_forgiving_table_shows_each_score_and_marks_the_best():
    """With the forgiving factor the table had no score column and no mark, so `--trial best`
    picked a trial the table did not point to."""
    from hetq.search.results import format_table

    def row(trial, acc, energy, score):
        return {"trial": trial, "metrics": {"val": {"accuracy": acc}, "test": {"accuracy": acc}},
                "costs": {"energy_pj": energy}, "candidate": {"quant_config": {}},
                "score": score, "feasible": True}

    rows = [row(3, 0.55, 100.0, 0.5312), row(7, 0.6, 400.0, 0.6271), row(9, 0.61, 900.0, 0.6022)]
    lines = format_table(rows, cfg(objective="forgiving")).splitlines()
    assert lines[0].startswith("trial    score   val accuracy  test acc")
    assert [ln[:14] for ln in lines[2:5]] == ["    3   0.5312", "   7*   0.6271", "    9   0.6022"]
    assert "* the best forgiving-factor score: the trial `--trial best` picks" in lines
    pareto = format_table(rows, cfg(objective="pareto")).splitlines()
    assert "score" not in pareto[0] and not any("*" in ln for ln in pareto)


def test_search_cli_source_and_reference_types(tmp_path, capsys):
    """`hetq search --source/--reference` set the inputs' type and the reference in the
    costs (recorded in search.yaml); a bad type is refused before any training."""
    from hetq.cli import main
    from hetq.cost import cost

    out = tmp_path / "s"
    src = "quantized_bits(16,5,alpha=1)"
    assert main(["search", "--data", DATA, "--trials", "1", "--epochs", "1", "--float-epochs",
                 "1", "--source", src, "--reference", "int16", "--out", str(out),
                 "--no-progress"]) == 0
    config, study = load_run(out)
    assert (config.source_quantizer, config.reference) == (src, "int16")
    t = completed(study)[0]
    model = trial_model(out, t.number)
    assert t.user_attrs["costs"]["energy_pj"] == pytest.approx(
        cost(model, (model[0].in_features,), source_quantizer=src).summary()["energy_pj"])
    ref = study.user_attrs["reference"]["costs"]["energy_pj"]
    float_model = hetq_load(out / "float.pt")
    assert ref == pytest.approx(cost(float_model, (float_model[0].in_features,),
                                     source_quantizer=src,
                                     reference="int16").summary()["energy_pj"])
    capsys.readouterr()
    assert main(["search", "--data", DATA, "--source", "int9", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 2
    assert "--source 'int9': unknown quantizer 'int9'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []


def test_a_failed_search_or_worker_is_one_line_and_exit_status_1(tmp_path, monkeypatch, capsys):
    """SearchFailed (trials failing in a row, worker processes that died) reaches the user as
    one line with exit status 1, through hetq.cli.main, for `hetq search` and `hetq worker`."""
    import hetq.search.driver as driver
    from hetq.cli import main
    from hetq.search.engine import SearchFailed

    def fail(*a, **k):
        raise SearchFailed("5 trials in a row failed (last: trial 4); stopping")

    monkeypatch.setattr(driver, "run_search", fail)
    monkeypatch.setattr(driver, "run_worker_process", fail)
    for argv in (["search", "--out", str(tmp_path / "s"), "--no-progress"],
                 ["worker", "--study", "s", "--out", str(tmp_path / "s")]):
        assert main(argv) == 1
        assert capsys.readouterr().err == (f"hetq {argv[0]}: error: 5 trials in a row failed "
                                           "(last: trial 4); stopping\n")


def test_retrain_cli_saves_the_fine_tuned_trial_and_keeps_an_earlier_one(tmp_path, capsys,
                                                                         monkeypatch):
    """`hetq retrain`: the checkpoint's 'before' metrics are the trial's model, its test
    metrics are what the saved model gives; a second run into the same path is refused
    before training (--overwrite replaces it), and so is a trial that does not exist."""
    from hetq.cli import main

    out = tmp_path / "s"
    study = run_search(cfg(trials=2), out, progress=False)
    best = max(completed(study), key=lambda t: t.value)
    config, _ = load_run(out)
    data = build_context(config, out, progress=False).data
    before = evaluate(trial_model(out, best.number), data)["accuracy"]
    args = ["retrain", str(out), "--trial", str(best.number), "--epochs", "2", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    path = out / f"retrain_{best.number:05d}.pt"
    ckpt = torch.load(path, weights_only=False)
    after = evaluate(hetq_load(path), data)["accuracy"]
    assert ckpt["metrics"]["before"]["accuracy"] == before
    assert ckpt["metrics"]["test"]["accuracy"] == after
    assert f"test accuracy {before:.4f} -> {after:.4f}" in printed
    first = path.read_bytes()
    assert main(args) == 2
    assert (f"{path} already exists (from an earlier run); give another --out, or --overwrite "
            "to replace it") in capsys.readouterr().err
    assert path.read_bytes() == first
    path.write_bytes(b"stale")
    assert main([*args, "--overwrite"]) == 0
    assert path.read_bytes() == first  # replaced (the same seed gives the same checkpoint)
    for bad, msg in ((path / "x.pt", f"--out {path / 'x.pt'}: {path} is a file, where a "
                                     "folder is needed"),):
        assert main([*args, "--out", str(bad)]) == 2
        assert capsys.readouterr().err == f"hetq retrain: error: {msg}\n"
    # a folder (existing, or new with a trailing slash) gets the checkpoint inside, as ptq's
    # (`--out new/` wrote a file named new)
    (tmp_path / "old").mkdir()
    for folder in (tmp_path / "old", str(tmp_path / "new") + "/"):
        assert main([*args, "--out", str(folder)]) == 0
        assert (Path(folder) / path.name).read_bytes() == first
    # --trial best (as export takes it) is the study's best trial: its checkpoint is there
    assert main([*args[:2], "--trial", "best", "--no-progress"]) == 2
    assert f"{path} already exists" in capsys.readouterr().err
    assert main([*args[:2], "--trial", "x"]) == 2
    assert "--trial must be a number or 'best', got 'x'" in capsys.readouterr().err
    for bad in ("7", "-1"):
        assert main(["retrain", str(out), "--trial", bad]) == 2
        assert (f"trial {bad} does not exist (the study has trials 0 to 1)"
                in capsys.readouterr().err)
    with pytest.raises(ValueError, match=r"trial -1 does not exist"):
        trial_model(out, -1)  # (not the last trial, as Python's indexing would have it)
    # "best", as --trial takes it (a TypeError before), and a run_search given a dict
    best_model = trial_model(out, "best")
    x = torch.randn(3, 16)
    assert torch.equal(best_model(x), trial_model(out, best.number)(x))
    with pytest.raises(ValueError, match=r"--trial must be a number or 'best', got 1.5"):
        trial_model(out, 1.5)
    with pytest.raises(ValueError, match="run_search needs a SearchConfig .*; got dict"):
        run_search({"trials": 2}, tmp_path / "d")
    # Ctrl-C after the first epoch: the best epoch is saved, and the exit status is 130
    import hetq.train
    from hetq.train.loop import fit

    def ctrl_c_after_one_epoch(*a, **k):
        def report(epoch, val):
            if epoch == 1:
                raise KeyboardInterrupt
        return fit(*a, report=report, **k)

    monkeypatch.setattr(hetq.train, "fit", ctrl_c_after_one_epoch)
    assert main([*args, "--out", str(tmp_path / "r.pt")]) == 130
    assert "interrupted after 2 epochs: saving the best of them" in capsys.readouterr().out
    assert (tmp_path / "r.pt").is_file()


def test_export_takes_the_storage_of_a_search_that_used_one(tmp_path, capsys):
    """A search whose study lives elsewhere (--storage) is exported with the same --storage;
    without it the message says to give it (export had no such option before)."""
    from hetq.cli import main

    out, db = tmp_path / "s", str(tmp_path / "db.journal")
    run_search(cfg(trials=1), out, storage=db, progress=False)
    args = ["export", str(out), "--trial", "0", "--data", DATA, "--samples", "200",
            "--input-type", "ap_fixed<16,6,AP_RND_CONV,AP_SAT>"]
    assert main(args) == 2
    assert f"study is in {db}: give --storage {db}" in capsys.readouterr().err
    assert main([*args, "--storage", db]) == 0
    printed = capsys.readouterr().out
    assert f"exporting {out} trial 0" in printed
    assert "samples    200  mismatches     0  max |diff| 0  bit-exact" in printed


def test_warm_start_from_a_search_in_the_same_database(tmp_path):
    """A --warm-start folder whose study lives in a database (no journal in the folder) is
    read from the new search's --storage (it was 'no study ... give the same --storage')."""
    from hetq.search.space import Candidate

    db = str(tmp_path / "db.journal")
    run_search(cfg(objective="pareto", trials=3, study_name="a"), tmp_path / "a", storage=db,
               progress=False)
    front = [Candidate.from_dict(r["candidate"]) for r in pareto_rows(tmp_path / "a", db)][:5]
    study = run_search(cfg(trials=len(front) + 1, study_name="b",
                           warm_start=[str(tmp_path / "a")]), tmp_path / "b", storage=db,
                       progress=False)
    seeded = sorted(study.trials, key=lambda t: t.number)[:len(front)]
    assert [Candidate.from_dict(t.user_attrs["candidate"]) for t in seeded] == front
    with pytest.raises(ValueError, match=r"--warm-start .*a: .*a's study is in .*db.journal: "
                                         r"give --storage .*db.journal"):
        run_search(cfg(warm_start=[str(tmp_path / "a")]), tmp_path / "c", progress=False)


def test_more_trials_on_resume_reach_the_workers_and_shared_studies_keep_their_settings(
        tmp_path, capsys):
    """The study's own copy of the settings (what `hetq worker` reads) kept the first
    --trials, so a resumed `--workers N` search with more trials ran none; and a search with
    other settings that shared --storage/--study was mixed into the same front."""
    from hetq.search.driver import open_study, run_worker_process

    out, db = tmp_path / "r", str(tmp_path / "db.journal")
    run_search(cfg(trials=1), out, progress=False)
    open_study(cfg(trials=2), out, None)  # what a resumed `--trials 2 --workers N` does
    assert run_worker_process(out, "hetq", None, progress=False) == 1
    assert "study 'hetq' has 2 of its 2" in capsys.readouterr().out

    run_search(cfg(trials=1, study_name="s"), tmp_path / "a", storage=db, progress=False)
    with pytest.raises(ValueError, match=r"study 's' in .*db.journal was made by a search with "
                                         r"other settings \(epochs: 2, now 3\); give another "
                                         r"--study"):
        run_search(cfg(trials=2, epochs=3, study_name="s"), tmp_path / "b", storage=db,
                   progress=False)
    assert not (tmp_path / "b" / "float.pt").exists()  # refused before any training


def test_a_run_folder_keeps_its_storage_and_a_worker_its_own_search(tmp_path, capsys):
    """A database search rerun without --storage started a second study in a journal file,
    whose checkpoints overwrote the database trials' (same study name and numbers); a
    worker trained from whatever float.pt its --out held."""
    from hetq.search.driver import run_worker_process

    out, db = tmp_path / "s", str(tmp_path / "db.journal")
    run_search(cfg(trials=1), out, storage=db, progress=False)
    assert (out / "storage.txt").read_text() == db + "\n"
    with pytest.raises(ValueError, match=f"study is in {re.escape(db)}: give --storage"):
        run_search(cfg(trials=2), out, progress=False)
    assert not (out / "study.journal").exists()
    journal_run = tmp_path / "j"
    run_search(cfg(trials=1), journal_run, progress=False)
    with pytest.raises(ValueError, match=r"study is in its journal file .*leave --storage out "
                                         r"to use it, or use another --out$"):
        run_search(cfg(trials=2), journal_run, storage=db, progress=False)
    # report, retrain and export read a run: they have no --out to change
    with pytest.raises(ValueError, match=r"study is in its journal file .*leave --storage out "
                                         r"to use it$"):
        load_run(journal_run, db)
    # a worker's --out: another search's folder, or an unexplained float.pt, is refused
    other = tmp_path / "other"
    run_search(cfg(trials=1, epochs=3, study_name="o"), other, storage=db, progress=False)
    with pytest.raises(ValueError, match=r"holds a search with other settings than study "
                                         r"'hetq' \(epochs 3 there, 2 in the study, study_name "
                                         r"'o' there, 'hetq' in the study\); give that "
                                         r"search's run folder"):
        run_worker_process(other, "hetq", db, progress=False)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "float.pt").write_bytes((out / "float.pt").read_bytes())
    with pytest.raises(ValueError, match="holds a float.pt but no search.yaml"):
        run_worker_process(lone, "hetq", db, progress=False)
    fresh = tmp_path / "fresh"  # an empty folder becomes the study's
    assert run_worker_process(fresh, "hetq", db, progress=False) == 0
    assert SearchConfig.load(fresh / "search.yaml") == cfg(trials=1)
    assert (fresh / "storage.txt").read_text() == db + "\n"


def test_a_journal_record_cut_off_by_a_full_disk_is_removed_on_resume(tmp_path, capfd):
    """Optuna skips a last record whose write was cut short, but appends the next record
    onto it, after which the whole journal is unreadable ('Expecting ',' delimiter')."""
    out = tmp_path / "r"
    run_search(cfg(trials=1), out, progress=False)
    journal = out / "study.journal"
    whole = journal.read_bytes()
    cut = b'{"op_code": 4, "worker_id": "abc", "study_id": 0, "da'
    journal.write_bytes(whole + cut)
    study = run_search(cfg(trials=2), out, progress=False)
    assert len(completed(study)) == 2
    assert f"removed the last {len(cut)} bytes, a record whose write was cut off" in \
        capfd.readouterr().err
    assert journal.read_bytes().startswith(whole) and journal.read_bytes().endswith(b"}\n")
    damaged = whole.replace(b'"op_code"', b'"op_code', 1)  # inside: named, not a bare json error
    journal.write_bytes(damaged)
    with pytest.raises(ValueError, match=rf"{re.escape(str(journal))} has a damaged record"):
        load_run(out)


def test_a_damaged_search_yaml_is_a_clear_error_and_is_written_whole(tmp_path):
    out = tmp_path / "r"
    run_search(cfg(trials=1), out, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".part")) == []
    saved = (out / "search.yaml").read_text()
    (out / "search.yaml").write_text("")  # was read as all defaults: 'other settings (data, ...)'
    with pytest.raises(ValueError, match=r"search.yaml holds no search settings .*delete it"):
        run_search(cfg(trials=1), out, progress=False)
    (out / "search.yaml").write_text("model: [unclosed")
    with pytest.raises(ValueError, match=r"search.yaml is not readable YAML \(while parsing"):
        load_run(out)
    (out / "search.yaml").unlink()  # the advice: the study's own copy still checks a rerun
    with pytest.raises(ValueError, match=r"other settings \(epochs: 2, now 3\)"):
        run_search(cfg(trials=1, epochs=3), out, progress=False)
    (out / "search.yaml").write_text(saved)


def test_a_killed_worker_whose_trial_another_finished_is_not_a_failed_search(
        tmp_path, monkeypatch, capsys):
    import hetq.search.driver as driver
    from hetq.cli import main
    from hetq.search.engine import SearchFailed

    codes = [-9, 0]

    def workers_that_finish(config, out, storage, workers, progress, devices=None, study=None):
        driver.run_worker_process(out, config.study_name, storage, progress=False)
        return codes

    monkeypatch.setattr(driver, "_spawn_workers", workers_that_finish)
    study = run_search(cfg(trials=2), tmp_path / "r", workers=2, progress=False)
    assert len(completed(study)) == 2
    assert "note: search workers exited with codes [-9, 0]; the others finished all 2" in \
        capsys.readouterr().err
    monkeypatch.setattr(driver, "_spawn_workers", lambda *a, **k: codes)
    with pytest.raises(SearchFailed, match=r"codes \[-9, 0\] .*2 of 3 trials done, rerun"):
        run_search(cfg(trials=3), tmp_path / "r", workers=2, progress=False)

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run_search", ctrl_c)
    assert main(["search", "--out", str(tmp_path / "r"), "--data", DATA]) == 130
    err = capsys.readouterr().err
    assert f"finished trials are kept in {tmp_path / 'r'}; rerun the same command" in err


def test_search_errors_name_the_options_typed(tmp_path, capsys):
    from hetq.cli import build_parser, main
    from hetq.search.cli import FIELD_OPTIONS

    for args, said in ((["--max-loss", "5"], "--max-loss 5.0; expected a fraction"),
                       (["--lr", "-1"], "--lr must be > 0, got -1.0"),
                       (["--source", "banana"], "--source 'banana': unknown quantizer"),
                       (["--runs", "2", "--strategy", "gradient", "--time-budget", "-1"],
                        "--time-budget must be > 0 seconds")):
        assert main(["search", *args]) == 2
        err = capsys.readouterr().err
        assert f"hetq search: error: {said}" in err, err
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
               and "search" in a.choices)
    options = {o for a in sub.choices["search"]._actions for o in a.option_strings}
    assert set(FIELD_OPTIONS.values()) <= options
    # a bad device: before the float model is trained (it trained first, then failed)
    assert main(["search", "--device", "banana", "--data", DATA, "--out",
                 str(tmp_path / "d")]) == 2
    captured = capsys.readouterr()
    assert "device 'banana'" in captured.err and "training" not in captured.out


def test_the_gradient_strategy_trains_its_float_models_on_the_cpu(tmp_path):
    """It said it did not use --device, then trained its float model there (an error on a
    machine without CUDA, the float model on the GPU and the rest on the CPU with one)."""
    from hetq.data import get_dataset
    from hetq.search.driver import train_float_model

    config = cfg(strategy="gradient", device="cuda", float_epochs=1)
    model, metrics = train_float_model(config, get_dataset(DATA), tmp_path / "f.pt",
                                       config.model_kwargs, "the float teacher", False)
    assert next(model.parameters()).device.type == "cpu" and 0 < metrics["accuracy"] <= 1


def test_a_file_system_error_or_a_second_ctrl_c_in_a_trial_keeps_its_configuration(
        tmp_path, monkeypatch):
    """A full disk or a read-only trials/ folder failed the trained trial for good (and
    Optuna printed its traceback); a second Ctrl-C while the interrupted trial was queued
    again lost it."""
    import errno

    import hetq.search.engine as engine

    study = optuna.create_study(storage=make_storage(None, tmp_path), study_name="d")

    def disk_full(trial):
        trial.suggest_int("x", 0, 9)
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "t.pt"))

    with pytest.raises(OSError, match="No space left"):
        engine.run_worker(study, disk_full, budget=2)
    states = [(t.state.name, t.user_attrs.get("retry_of")) for t in study.trials]
    assert states == [("FAIL", None), ("WAITING", 0)]
    assert study.trials[1].system_attrs["fixed_params"] == study.trials[0].params

    real = engine.retry_later

    def second_ctrl_c(study, trial):  # the second Ctrl-C lands while the first's clean-up runs
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # (the handler would run here, were SIGINT not held back)
        return real(study, trial)

    def ctrl_c(trial):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "retry_later", second_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        engine.run_worker(study, ctrl_c, budget=2)
    assert [t.user_attrs.get("retry_of") for t in study.trials] == [None, 0, 1]
    assert study.trials[2].state.name == "WAITING"


def _population_report_losing_the_database(tmp_path, monkeypatch):
    """A population member's report to a database gone for good (after the storage's
    retries) stopped the member as pruned, so a whole batch became PRUNED trials; it is the
    search's error, as in a single trial, and the batch is queued again."""
    import sqlalchemy
    from optuna.storages import RDBStorage

    import hetq.search.storage as st
    from hetq.search.engine import storage_lost, transient

    def down(self, *a, **k):
        raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("server closed"))

    monkeypatch.setattr(RDBStorage, "set_trial_intermediate_value", down)
    monkeypatch.setattr(st, "RETRY_SECONDS", 0.0)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with pytest.raises(Exception) as e:
        run_search(cfg(population=2, trials=2), tmp_path / "p", storage=url, progress=False)
    assert transient(e.value) and storage_lost(e.value).startswith(
        "lost the connection to the study's database")
    study = optuna.load_study(study_name=cfg().study_name, storage=url)
    assert [(t.state.name, t.user_attrs.get("retry_of")) for t in study.trials] == [
        ("FAIL", None), ("FAIL", None), ("WAITING", 0), ("WAITING", 1)]


def test_population_batches_fail_diverged_members_and_requeue_interrupted_ones(
        tmp_path, monkeypatch):
    """A member whose training diverged was recorded COMPLETE, with NaN weights, a score and
    a place on the front; a batch stopped by Ctrl-C stayed RUNNING for good (its
    configurations never trained); a model population training cannot stack failed only
    after the float training."""
    import hetq.train.population as population
    from hetq.search.engine import SearchFailed

    with pytest.raises(SearchFailed, match="6 trials in a row failed .*diverged"):
        run_search(cfg(population=2, trials=2, learning_rates=[1e38]), tmp_path / "d",
                   progress=False)
    _, study = load_run(tmp_path / "d")
    assert [t.state.name for t in study.trials] == ["FAIL"] * 6
    assert {t.user_attrs["error"] for t in study.trials} == {
        "training diverged (non-finite loss)"}

    real = population.fit_population

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(population, "fit_population", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg(population=2, trials=3), tmp_path / "i", progress=False)
    _, study = load_run(tmp_path / "i")
    assert [(t.state.name, t.user_attrs.get("retry_of")) for t in study.trials] == [
        ("FAIL", None), ("FAIL", None), ("WAITING", 0), ("WAITING", 1)]
    first = [t.params for t in study.trials[:2]]
    monkeypatch.setattr(population, "fit_population", real)
    study = run_search(cfg(population=2, trials=3), tmp_path / "i", progress=False)
    done = completed(study)
    assert len(done) == 3 and [t.params for t in done[:2]] == first

    monkeypatch.undo()
    _population_report_losing_the_database(tmp_path, monkeypatch)

    with pytest.raises(ValueError, match=r"--population 2: layer .* is not supported by "
                                         r"population training"):
        run_search(cfg(model="cnn_digits", data="digits", population=2), tmp_path / "c",
                   progress=False)
    assert not (tmp_path / "c" / "float.pt").exists()


def test_a_pruner_with_a_pareto_objective_is_refused_before_any_work(tmp_path, capsys):
    from hetq.cli import main

    with pytest.raises(ValueError, match="search pruner='median': pruners work with "
                                         "single-objective searches only"):
        cfg(objective="pareto", pruner="median")
    assert main(["search", "--objective", "pareto", "--pruner", "median", "--data", DATA,
                 "--out", str(tmp_path / "p")]) == 2
    assert "error: --pruner 'median': pruners work with" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_wider_candidate_trains_the_same_each_time(tmp_path):
    """The units a width multiplier > 1 adds were initialised from the global random state at
    build time, so the same candidate trained twice gave two results."""
    from hetq.search.space import Candidate

    out = tmp_path / "w"
    study = run_search(cfg(trials=1, tune_filters="layer", width_multipliers=[1.5]), out,
                       progress=False)
    cand = Candidate.from_dict(study.trials[0].user_attrs["candidate"])
    assert cand.widths and all(w > 1 for w in cand.widths.values())
    config, _ = load_run(out)
    ctx = build_context(config, out, progress=False)
    first = run_candidate(ctx, cand, seed=5)[1]
    torch.rand(100)  # (other work between the two)
    assert run_candidate(ctx, cand, seed=5)[1] == first


def test_retrain_keeps_the_trials_zeros_and_never_saves_a_worse_model(tmp_path, capsys):
    """`hetq retrain` trained the pruned weights back (the model cost more than its trial
    said), and saved its best new epoch even when the trial's own weights were better."""
    from hetq.search.retrain import retrain
    from hetq.search.space import Candidate

    out = tmp_path / "s"
    study = run_search(cfg(trials=2, sparsity=[0.5, 0.75], epochs=3), out, progress=False)
    t = completed(study)[0]
    sparsity = Candidate.from_dict(t.user_attrs["candidate"]).sparsity
    assert sparsity
    trial = trial_model(out, t.number)
    path = retrain(out, t.number, epochs=3, lr=1e-3, progress=False)
    tuned = dict(hetq_load(path).named_modules())
    for name in sparsity:
        was_zero = dict(trial.named_modules())[name].weight == 0
        assert was_zero.any() and bool((tuned[name].weight[was_zero] == 0).all())
    capsys.readouterr()
    path = retrain(out, t.number, epochs=2, lr=5.0, progress=False, overwrite=True)
    assert "no retrained epoch beat the trial's validation loss" in capsys.readouterr().out
    kept = hetq_load(path).state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in trial.state_dict().items())


def test_the_report_plot_leaves_out_trials_that_cost_nothing_and_says_so(tmp_path):
    """A trial at 0 cost (every weight rounded to zero) sat on the table's front but could
    not be drawn on the log axis: the front line ran off the plot's edge, unexplained."""
    from hetq.search.report import write_html_report

    out = tmp_path / "s"
    study = run_search(cfg(trials=2, objective="pareto"), out, progress=False)
    t = completed(study)[0]
    attrs = {**t.user_attrs, "costs": {k: 0 for k in t.user_attrs["costs"]}}
    study.add_trial(optuna.trial.create_trial(
        params=t.params, distributions=t.distributions, values=[0.2, 0.0], user_attrs=attrs))
    page = write_html_report(out).read_text()
    assert "(1 trial(s) at 0 energy_pj, every weight rounded to zero, are left out" in page
    assert "3 completed trials (the last run asked for 2);" in page  # (it said '3 ... of 2')
    assert (out / "pareto.png").stat().st_size > 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part")]
    # the page is UTF-8, as its charset says, whatever the locale (an ASCII one failed on a
    # run folder named 'ü-run')
    u = tmp_path / "\u00fc-run"
    shutil.copytree(out, u)
    proc = subprocess.run([sys.executable, "-m", "hetq.cli", "report", str(u)],
                          capture_output=True, timeout=300,
                          env={**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
                               "PYTHONCOERCECLOCALE": "0"})
    assert proc.returncode == 0, proc.stderr
    assert "\u00fc-run" in (u / "report.html").read_text(encoding="utf-8")


def test_an_empty_limit_or_candidates_file_is_refused(tmp_path, capsys):
    """An empty (all commented out) --limit or --quantization-config file was taken as no
    file: every layer was searched with every default candidate, and search.yaml said
    limit: null."""
    from hetq.cli import main

    empty = tmp_path / "limit.yaml"
    empty.write_text("# Linear: [4, 4]\n")
    for option in ("--limit", "--quantization-config"):
        assert main(["search", option, str(empty), "--data", DATA, "--out",
                     str(tmp_path / "s")]) == 2
        assert f"{empty} is empty; give layer entries" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_an_interrupted_trial_trains_again_as_it_would_have(tmp_path, monkeypatch):
    """A configuration queued again after Ctrl-C trained with its new trial number's seed,
    so the resumed search's result differed from an uninterrupted run's."""
    import hetq.search.driver as driver

    whole = run_search(cfg(trials=2), tmp_path / "a", progress=False)
    real = driver.run_candidate

    def ctrl_c_in_trial_1(ctx, candidate, *, trial=None, **k):
        if trial is not None and trial.number == 1:
            raise KeyboardInterrupt
        return real(ctx, candidate, trial=trial, **k)

    monkeypatch.setattr(driver, "run_candidate", ctrl_c_in_trial_1)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg(trials=2), tmp_path / "b", progress=False)
    monkeypatch.setattr(driver, "run_candidate", real)
    resumed = run_search(cfg(trials=2), tmp_path / "b", progress=False)
    retried = resumed.trials[2]
    assert (retried.user_attrs["retry_of"], retried.user_attrs["seed_trial"]) == (1, 1)
    assert retried.params == whole.trials[1].params
    assert retried.user_attrs["metrics"] == whole.trials[1].user_attrs["metrics"]


def test_a_resume_that_reads_other_data_is_refused(tmp_path, monkeypatch):
    """search.yaml keeps --data as typed: resumed from another folder, a relative path read
    another file, and its trials joined the front unnoticed."""
    import numpy as np

    import hetq.data.jets as jets

    sample = np.load(Path(jets.__file__).with_name("jets_sim_small.npz"))
    arrays = {k: sample[k] for k in sample.files}
    for folder, X in (("one", arrays["X"]), ("two", arrays["X"][::-1])):  # (other jets)
        (tmp_path / folder / "data").mkdir(parents=True)
        np.savez(tmp_path / folder / "data" / "j.npz", **{**arrays, "X": X})
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "one")
    run_search(cfg(trials=1, data="jets-sim:data/j.npz"), out, progress=False)
    run_search(cfg(trials=2, data="jets-sim:data/j.npz"), out, progress=False)  # same data
    monkeypatch.chdir(tmp_path / "two")
    with pytest.raises(ValueError, match=r"--data jets-sim:data/j.npz: these data differ from "
                                         r"those study 'hetq' was started with"):
        run_search(cfg(trials=3, data="jets-sim:data/j.npz"), out, progress=False)
    _, study = load_run(out)
    assert len(completed(study)) == 2


def test_progress_export_and_retrain_do_not_copy_the_whole_study(tmp_path, monkeypatch):
    """study.trials and study.best_trials deep-copy every trial: the progress line of a Pareto
    search and a population search's per-trial callback called them after every trial (1 s
    per trial at 5,000 trials), and export/retrain's trial lookup twice per command."""
    from hetq.search.driver import _best_line
    from hetq.search.results import trial_number
    from hetq.search.retrain import retrain

    study = run_search(cfg(objective="pareto", goal="ebops", trials=3), tmp_path / "p",
                       progress=False)
    values = [tuple(t.values) for t in completed(study)]
    n_front = len(study.best_trials)

    def copies(self):
        raise AssertionError("the whole study was deep-copied")

    monkeypatch.setattr(optuna.study.Study, "trials", property(copies))
    monkeypatch.setattr(optuna.study.Study, "best_trials", property(copies))
    ctx = type("Ctx", (), {"config": cfg(objective="pareto")})()
    assert _best_line(study, ctx) == f"{n_front} on the front" and len(values) == 3
    with pytest.raises(ValueError, match=r"is a Pareto search: no single best trial; give a "
                                         r"trial number \(--trial N\), one of its front's"):
        trial_number(study, "best", tmp_path / "p")
    assert trial_model(tmp_path / "p", 2) is not None
    retrain(tmp_path / "p", 2, epochs=1, progress=False)
    ran = run_search(cfg(population=2, trials=2), tmp_path / "q", progress=True)
    assert len(completed(ran)) == 2


def test_report_reads_the_study_once(tmp_path, capsys, monkeypatch):
    """`hetq report` opened (so read whole) the study four times: 9 s of its 12 s at 10,000
    trials."""
    import hetq.search.results as results
    from hetq.cli import main

    run_search(cfg(trials=2), tmp_path / "s", progress=False)
    opened = []
    real = results.existing_study
    monkeypatch.setattr(results, "existing_study",
                        lambda *a, **k: opened.append(a[0]) or real(*a, **k))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s")]) == 0
    assert "HTML report: " in capsys.readouterr().out and (tmp_path / "s" / "report.html").exists()
    assert len(opened) == 1


def test_an_unknown_search_setting_is_named_with_the_near_ones():
    """SearchConfig(trails=8) raised Python's bare "__init__() got an unexpected keyword
    argument 'trails'"."""
    import dataclasses

    with pytest.raises(ValueError, match=re.escape(
            "unknown search setting(s) ['trails'] ('trails': did you mean 'trials'?); known: "
            "model, ")):
        SearchConfig(trails=8)
    assert dataclasses.replace(cfg(), trials=7).trials == 7


def test_a_search_gives_the_global_random_stream_back(tmp_path):
    """The search seeded torch's global generator to build its float model and each
    candidate, and left it seeded: a model a script built after `run_search` started from
    the same weights whatever came before. The gradient strategy's search, too."""
    from hetq.search.gradient import run_gradient_strategy

    for population in (1, 2):
        torch.manual_seed(7)
        state = torch.get_rng_state()
        run_search(cfg(trials=2, population=population), tmp_path / f"p{population}",
                   progress=False)
        assert torch.equal(torch.get_rng_state(), state)
    run_gradient_strategy(cfg(strategy="gradient", epochs=1, float_epochs=1), tmp_path / "g",
                          progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    # (run_search ran an Optuna search for it, in a folder that could not be read back)
    with pytest.raises(ValueError, match=r"run_search runs the optuna and hessian strategies; "
                                         r"strategy='gradient' is run by hetq\.search\.gradient"
                                         r"\.run_gradient_strategy\(config, out\)"):
        run_search(cfg(strategy="gradient"), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_hessian_strategy_trials_cost_what_the_ilp_budgeted(tmp_path, capsys):
    """The ILP's cost table costed a layer the search leaves float (here the output layer,
    which --limit does not name) as fp32, while the trials cost it as the reference does:
    budgets of 940-1945 pJ for trials of 212-1247 pJ. With --min-reduction, budgets above
    its cost limit made trials infeasible before they trained. Fewer --trials than
    configurations said nothing of the ones left queued."""
    from hetq.cli import main

    limit = tmp_path / "limit.yaml"
    limit.write_text("fc.*: [8, 8, 8]\nrelu.*: [8]\n")
    out = tmp_path / "h"
    base = ["search", "--strategy", "hessian", "--goal", "energy", "--objective", "pareto",
            "--limit", str(limit), "--data", DATA, "--float-epochs", "2", "--epochs", "1",
            "--prior-configs", "4"]
    assert main([*base, "--out", str(out), "--trials", "6", "--no-progress"]) == 0
    _, study = load_run(out)
    ilp = [t for t in completed(study) if "hessian_budget" in t.user_attrs]
    assert len(ilp) >= 2
    for t in ilp:  # (each configuration within its budget, as the trials are costed)
        assert t.user_attrs["costs"]["energy_pj"] <= t.user_attrs["hessian_budget"] + 1.0
    assert max(t.user_attrs["hessian_budget"] for t in ilp) == pytest.approx(
        max(t.user_attrs["costs"]["energy_pj"] for t in ilp), abs=1.0)
    capsys.readouterr()
    out2 = tmp_path / "h2"
    assert main([*base, "--out", str(out2), "--trials", "1", "--min-reduction", "10"]) == 0
    text = capsys.readouterr().out
    _, study = load_run(out2)
    ref = study.user_attrs["reference"]["costs"]["energy_pj"]
    budgets = [t.user_attrs["hessian_budget"] for t in study.trials
               if "hessian_budget" in t.user_attrs]
    assert budgets and max(budgets) == pytest.approx(ref / 10)
    assert f"within --min-reduction's cost limit {ref / 10:.4g}" in text
    info = study.user_attrs["hessian_prior"]  # the traces' precision is told and recorded
    n = info["trace_iterations"]
    assert info["traces_converged"] and 20 <= n < 200
    assert f"traces from {n} Hutchinson samples;" in text
    assert ("note: --trials 1 trains only the first 1 of them; the others stay queued in "
            "the study for a resumed search with more --trials") in text
    from hetq.search.report import write_html_report  # (it said 'sampler tpe' alone)

    assert ("the Hessian ILP&#x27;s configurations first (4 cost budgets), then sampler tpe"
            in write_html_report(out2).read_text().replace("\n", " "))
    # no configuration within the limit: the trials are the sampler's, which is said
    assert main([*base, "--out", str(tmp_path / "h3"), "--trials", "1",
                 "--min-reduction", "1000000"]) == 0
    assert ("Hessian prior: 0 ILP configurations enqueued" in (text := capsys.readouterr().out)
            and "note: no configuration of the space fits --min-reduction; every trial is "
                "drawn by --sampler tpe" in text)


def test_grid_sampler_runs_and_a_grid_too_large_is_refused_before_training(tmp_path):
    """--sampler grid failed every search ('the grid sampler needs a search space'); given
    the space, the default jet_mlp space's 2.4e8 combinations were listed up front and the
    process was killed for memory."""
    study = run_search(cfg(sampler="grid", trials=3, model_kwargs={"widths": [4]}),
                       tmp_path / "g", progress=False)
    done = completed(study)
    assert len(done) == 3 and len({tuple(sorted(t.params.items())) for t in done}) == 3
    with pytest.raises(ValueError, match=r"the grid sampler tries every combination, and this "
                                         r"search space has 8\.3e\+06 \(11 parameters with 7, "
                                         r"2, 6, .*\); at most 1,000,000 can be listed"):
        run_search(cfg(sampler="grid"), tmp_path / "big", progress=False)
    assert not (tmp_path / "big" / "float.pt").exists()


def test_nsga2_generations_fit_the_trial_budget(tmp_path):
    """NSGA-II kept Optuna's generation of 50: a 40-trial search was a random one (its
    first generation), never a generation that evolves."""
    from hetq.search.engine import nsga2_population

    assert [nsga2_population(t) for t in (None, 3, 20, 40, 249, 1000)] == [50, 4, 4, 8, 49, 50]
    study = run_search(cfg(sampler="nsga2", objective="pareto", trials=9,
                           model_kwargs={"widths": [4]}), tmp_path / "n", progress=False)
    gens = [t.system_attrs.get("NSGAIISampler:generation") for t in completed(study)]
    assert gens == [0] * 4 + [1] * 4 + [2], gens


def test_a_search_sizes_the_zoo_model_to_its_data(tmp_path):
    """`hetq train` built the jet MLP for the data's features and classes; a search always
    built the 16-input, 5-class one, and on other data failed inside torch ('mat1 and mat2
    shapes cannot be multiplied (2x7 and 16x6)'), with every strategy."""
    import shutil

    from hetq.search.gradient import run_gradient_strategy

    data = "synthetic:n=600,seed=3,features=7,classes=3"
    study = run_search(cfg(data=data, trials=2), tmp_path / "o", progress=False)
    assert len(completed(study)) == 2
    config, study = load_run(tmp_path / "o")
    shutil.rmtree(tmp_path / "o" / "trials")  # (rebuilt from the study's weights)
    m = trial_model(tmp_path / "o", 1)
    assert (m.fc1.in_features, m.output.out_features) == (7, 3)
    rows = run_gradient_strategy(cfg(data=data, strategy="gradient", epochs=2,
                                     float_epochs=1, model_kwargs={"widths": [8]}),
                                 tmp_path / "g", progress=False)
    m = hetq_load(rows[-1].path)
    assert m(torch.zeros(2, 7)).shape == (2, 3)


@pytest.mark.parametrize("metric", ["accuracy", "auc_mean"])
def test_population_members_with_nan_outputs_fail_alone(tmp_path, metric):
    """A member whose last step left NaN weights behind a finite training loss crashed the
    whole search in its evaluation ('the model gives NaN outputs'), leaving its batch
    RUNNING, and every rerun crashed the same way; with another metric than accuracy it was
    recorded PRUNED (its metrics lacked the metric, and the report raised)."""
    study = run_search(cfg(population=2, trials=4, sampler="random", epochs=1,
                           learning_rates=[1e-3, 1e30], metric=metric, limit=None,
                           float_epochs=2, batch_size=1024),
                       tmp_path / "p", progress=False)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and "PRUNED" not in states and "RUNNING" not in states
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed and all(t.params["lr"] == 1e30 for t in failed)
    assert all("diverged" in t.user_attrs["error"] or "NaN" in t.user_attrs["error"]
               for t in failed)


def test_population_keeps_the_budget_exact_when_other_workers_run_trials(tmp_path):
    """A population batch asked min(k, budget - done) trials, ignoring the trials other
    processes (`hetq worker`) were running: 5 of 4 trials."""
    import threading

    from hetq.search.driver import build_context, open_study, run_population_worker

    config = cfg(population=2, trials=2)
    ctx = build_context(config, tmp_path, progress=False)
    study = open_study(config, tmp_path, None)
    foreign = [study.ask(), study.ask()]  # another worker's two trials, running

    def finish_them():
        time.sleep(1.5)
        for t in foreign:
            study.tell(t, 0.5)

    th = threading.Thread(target=finish_them)
    th.start()
    run_population_worker(study, ctx, 2, 2)
    th.join()
    # and it waits for them without asking: each ask made an 'overflow' FAIL trial, about
    # one a second for as long as the other worker's trials ran
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


def test_warm_start_says_what_each_folder_adds(tmp_path, capsys):
    """A --warm-start folder that added no trial (no completed trial, nothing this search
    offers, or a front queued already from a folder before it) was silent: the search ran
    as if from scratch. Each folder now says how many configurations it queued, or why
    none."""
    from hetq.search.driver import _seed_warm_start

    run_search(cfg(objective="pareto", trials=3), tmp_path / "a", progress=False)
    rows = pareto_rows(tmp_path / "a")
    ctx = build_context(cfg(), tmp_path / "b", progress=False)
    study = optuna.create_study()
    capsys.readouterr()
    # a row whose configuration this space does not hold (another layer's quantizer)
    foreign = [{"candidate": {"quant_config": {"nosuch": {"kernel": "quantized_bits(4,0)"}}}}]
    _seed_warm_start(study, ctx, [("x", []), ("a", rows), ("a2", rows), ("f", foreign)])
    out = capsys.readouterr().out.splitlines()
    k = len(rows[:5])
    assert out == ["note: --warm-start x: it has no completed trial; it adds no trial",
                   f"warm start: {k} configuration{'s' * (k != 1)} of a's front queued first",
                   "note: --warm-start a2: its front's configurations are queued already "
                   "(a folder given twice?); it adds no trial",
                   "note: --warm-start f: its front's configurations hold nothing this search "
                   "offers; it adds no trial"]
    assert study.user_attrs["warm_started"] == k and len(study.trials) == k


def test_warm_start_leaves_out_values_the_new_search_does_not_offer(tmp_path):
    """Warm rows from a search over other sparsities, learning rates or width multipliers
    failed every trial ("'0.5' not in (0.0, 0.25)"), then the search ('5 trials in a row
    failed'); with --population the first one ended it. Those values are now left to the
    sampler, as other quantizers already were."""
    from hetq.search.space import Candidate, SearchSpace

    run_search(cfg(objective="pareto", trials=3, sparsity=[0.5], learning_rates=[1e-2],
                   width_multipliers=[2.0]), tmp_path / "a", progress=False)
    for population in (1, 2):
        study = run_search(cfg(trials=3, sparsity=[0.0, 0.25], learning_rates=[1e-3],
                               width_multipliers=[1.0], population=population,
                               warm_start=[str(tmp_path / "a")]),
                           tmp_path / f"b{population}", progress=False)
        warm = [t for t in study.trials if t.user_attrs.get("warm_start")]
        assert warm and all(t.state.name == "COMPLETE" for t in study.trials)
        for t in warm:
            assert t.params["lr"] == 1e-3 and set(t.params) >= {"lr"}
            assert all(v in (0.0, 0.25) for k, v in t.params.items()
                       if k.startswith("sparsity/"))
    fm = build_context(cfg(), tmp_path / "c", progress=False).float_model
    space = SearchSpace(fm, sparsity=[0.0, 0.25])
    c = Candidate({}, widths={}, sparsity={"fc1": 0.5})
    got = {k: v for k, v in space.params_of(c).items() if k.startswith("sparsity/")}
    # 0.5 is not offered; the layers it did not prune were unpruned, 0 (drawn at random)
    assert "sparsity/fc1" not in got and got and set(got.values()) == {0.0}
    space = SearchSpace(fm, tune_filters="layer", width_multipliers=[0.5, 1.0, 2.0])
    widths = {k: v for k, v in space.params_of(Candidate({}, widths={})).items()
              if k.startswith("width/")}
    assert widths and set(widths.values()) == {1.0}  # (a run without width search: 1)


def test_options_noted_as_unused_are_not_the_runs_settings(tmp_path, capsys):
    """`--delta-p` with --objective pareto (or --beta0 with an Optuna search) was noted as
    not used, yet recorded in search.yaml: the same search without it was refused as one
    with 'other settings (delta_p)'. Empty --sparsity / --learning-rates lists are refused."""
    from hetq.cli import main

    base = ["search", "--data", DATA, "--float-epochs", "1", "--epochs", "1", "--objective",
            "pareto", "--out", str(tmp_path / "s"), "--no-progress"]
    assert main([*base, "--trials", "2", "--delta-p", "3", "--beta0", "1e-5"]) == 0
    err = capsys.readouterr().err
    assert "not used: --delta-p" in err and "does not use --beta0" in err
    assert SearchConfig.load(tmp_path / "s" / "search.yaml").delta_p == SearchConfig().delta_p
    assert main([*base, "--trials", "3"]) == 0
    assert len(completed(load_run(tmp_path / "s")[1])) == 3
    # a rerun with other settings names them as typed, with both values (it said
    # "(epochs, max_metric_loss)", the fields of SearchConfig)
    capsys.readouterr()
    assert main([*base, "--epochs", "2", "--max-loss", "0.05", "--model-widths", "8", "4"]) == 2
    assert capsys.readouterr().err == (
        f"hetq search: error: {tmp_path / 's'} holds a search with other settings (--epochs: "
        "1, now 2, --max-loss: (none), now 0.05, --model-widths: (default), now 8 4); use another "
        "--out, or the same settings to resume (--trials may change)\n")
    for opt in ("--sparsity", "--learning-rates"):
        with pytest.raises(SystemExit):
            main([*base, opt])
        assert f"{opt}: expected at least one argument" in capsys.readouterr().err


def test_block_wise_search_reruns_reports_and_workers(tmp_path, capsys, monkeypatch):
    """A finished block-wise search rerun with more --trials did nothing without a word and
    rewrote its finished blocks' stored settings; interrupted in its first block, `hetq
    report` said there was no study; a `hetq worker` could join one block's study and fill
    it with trials of the whole, unfrozen space."""
    import json

    import hetq.search.driver as D
    from hetq.search.driver import run_worker_process

    blocks = ["^(fc1|relu1)$", "^(fc2|relu2|fc3|relu3|output)$"]
    out = tmp_path / "b"
    run_search(cfg(trials=2, blocks=blocks), out, progress=False)
    run_search(cfg(trials=4, blocks=blocks), out, progress=True)
    assert (f"note: the block-wise search in {out} has finished all 2 blocks; more --trials do "
            "not reopen them") in capsys.readouterr().out
    storage = make_storage(None, out)
    for b in (0, 1):
        s = optuna.load_study(study_name=f"hetq_block{b}", storage=storage)
        assert s.user_attrs["hetq_config"]["trials"] == 2 and len(completed(s)) == 2
    with pytest.raises(ValueError, match="study 'hetq_block1' is one block of a block-wise "
                                         "search, .*; a worker cannot join it"):
        run_worker_process(tmp_path / "w", "hetq_block1", str(out / "study.journal"),
                           progress=False)
    with pytest.raises(ValueError, match=r"is a block-wise search, .*; a worker cannot join"):
        D.default_study(out, None)  # (`hetq worker --out RUN`: 'no study hetq' was said)
    # interrupted in its first block, after one trial: the report shows that block's trials
    real, calls = D.run_candidate, []

    def stop_after_one(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(D, "run_candidate", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg(trials=3, blocks=blocks), tmp_path / "i", progress=False)
    state = json.loads((tmp_path / "i" / "scheduler.json").read_text())
    assert state["current_study"] == "hetq_block0" and state["final_study"] is None
    config, study = load_run(tmp_path / "i")
    assert study.study_name == "hetq_block0" and len(pareto_rows(tmp_path / "i")) == 1


def test_a_retried_trial_keeps_where_its_configuration_came_from():
    """A Hessian-prior or warm-start configuration queued again after an interruption lost
    its hessian_budget / warm_start tags (the benchmark's count of ILP configurations, and
    the report, then missed it)."""
    from hetq.search.engine import retry_later

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0}, user_attrs={"hessian_budget": 12.5, "hessian_omega": 0.1})
    t = study.ask()
    t.suggest_float("x", 0.0, 2.0)
    assert retry_later(study, t)
    again = study.ask()
    assert again.params == {} and again.user_attrs == {
        "hessian_budget": 12.5, "hessian_omega": 0.1, "retry_of": 0, "seed_trial": 0}


def test_messages_for_a_missing_settings_file_and_an_early_interruption(tmp_path, capsys,
                                                                        monkeypatch):
    """A run folder whose search.yaml was removed was called 'not a search run folder',
    though its study was there; Ctrl-C during the float training said 'its finished trials
    are kept' when there were none."""
    import hetq.search.driver as D
    from hetq.cli import main

    out = tmp_path / "s"
    run_search(cfg(trials=2), out, progress=False)
    (out / "search.yaml").unlink()
    with pytest.raises(ValueError, match=r"has a study \(study\.journal\) but no search\.yaml, "
                                         r"the settings it was run with; restore it \(or rerun "
                                         r"the same `hetq search"):
        load_run(out)
    assert len(completed(run_search(cfg(trials=2), out, progress=False))) == 2  # (as said)

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "train_float_model", ctrl_c)
    assert main(["search", "--data", DATA, "--out", str(tmp_path / "f"), "--no-progress"]) == 130
    assert ("search stopped while it trained its float model: nothing is kept yet; rerun the "
            "same command to start it") in capsys.readouterr().err


def test_printed_commands_quote_paths_with_spaces(tmp_path, capsys):
    """Commands hetq prints for copying (the dashboard, `hetq report`) split at a run
    folder's spaces when pasted into a shell."""
    import shlex

    from hetq.cli import main
    from hetq.search.results import gradient_run_error

    out = tmp_path / "my run"
    run_search(cfg(trials=1), out, progress=False)
    assert main(["report", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    command = line.split(": ", 1)[1]
    assert shlex.split(command) == ["optuna-dashboard", str(out / "study.journal")]
    quoted = shlex.quote(str(out))
    assert quoted.startswith("'") and f"`hetq report {quoted}` lists them" in str(
        gradient_run_error(out))


def test_a_trial_models_warning_is_shown_once_per_search(monkeypatch):
    """A kernel quantizer without negative values warned on every trial (35 copies of 4
    warnings in 16 trials): each checkpoint save changed the warning filters, which resets
    Python's once-per-place record."""
    import warnings

    import hetq.search.build
    from hetq.models import build
    from hetq.search.build import build_candidate
    from hetq.search.space import Candidate

    monkeypatch.setattr(hetq.search.build, "_SAID", set())  # (what earlier tests showed)
    f = build("jet_mlp", widths=[8, 4])
    unsigned = Candidate({"fc2": {"kernel": "quantized_relu(4,0)"}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            build_candidate(f, unsigned)
            with warnings.catch_warnings():  # (what a checkpoint save does)
                warnings.simplefilter("ignore")
        build_candidate(f, Candidate({"fc1": {"kernel": "quantized_relu(4,0)"}}))
    texts = [str(w.message) for w in caught]
    assert len(texts) == 2 and texts[0].startswith("layer 'fc2': kernel quantizer "
                                                  "quantized_relu(4,0) has no negative values")
    assert texts[1].startswith("layer 'fc1': kernel quantizer")


def test_a_replaced_float_model_is_named_not_a_key_error(tmp_path):
    """`hetq demo` into a search's folder replaced its float.pt (with test metrics only);
    the resumed search then failed with KeyError: 'accuracy'."""
    from hetq.train import save

    out = tmp_path / "s"
    run_search(cfg(trials=1), out, progress=False)
    ctx = build_context(cfg(trials=1), out, progress=False)
    save(out / "float.pt", ctx.float_model, model_name="jet_mlp",
         model_kwargs=cfg().model_kwargs, data=ctx.data, metrics={"test": {"accuracy": 0.5}})
    with pytest.raises(ValueError, match=re.escape(
            f"{out / 'float.pt'} holds no validation accuracy, which this search's float model "
            "has: it was replaced")):
        run_search(cfg(trials=2), out, progress=False)


def test_a_worker_finds_its_study_without_study(tmp_path, capsys):
    """`hetq worker` required --study even where the run folder or the storage can only
    mean one study."""
    from hetq.cli import main
    from hetq.search.driver import default_study, open_study

    out = tmp_path / "r"
    run_search(cfg(trials=1, study_name="jets1"), out, progress=False)
    open_study(cfg(trials=2, study_name="jets1"), out, None)  # one more trial for a worker
    assert main(["worker", "--out", str(out), "--no-progress"]) == 0
    assert "study 'jets1' has 2 of its 2" in capsys.readouterr().out
    db = str(tmp_path / "db.journal")
    run_search(cfg(trials=1, study_name="a"), tmp_path / "a", storage=db, progress=False)
    assert default_study(None, db) == "a"
    run_search(cfg(trials=1, study_name="b"), tmp_path / "b", storage=db, progress=False)
    assert main(["worker", "--storage", db, "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"hetq worker: error: {db} holds 2 studies (a, b); "
                                       "give --study NAME\n")
    assert main(["worker", "--no-progress"]) == 2
    assert capsys.readouterr().err == ("hetq worker: error: give --study NAME, or --out the "
                                       "search's run folder (its search.yaml names the "
                                       "study)\n")


def test_the_table_shows_the_searched_metric_on_the_test_split_too():
    """With --metric auc_mean the table put validation auc_mean beside test accuracy."""
    from hetq.search.results import format_table

    row = {"trial": 3, "metrics": {"val": {"auc_mean": 0.9, "accuracy": 0.7},
                                   "test": {"auc_mean": 0.8125, "accuracy": 0.625}},
           "costs": {"energy_pj": 10.0, "bits": 100, "ebops": 50, "lut": 1, "dsp": 0},
           "candidate": {"quant_config": {"fc1": {"kernel": "quantized_bits(4,0,1)"}}}}
    lines = format_table([row], cfg(metric="auc_mean", objective="pareto")).splitlines()
    assert lines[0].startswith("trial   val auc_mean  test auc_mean  energy pJ")
    assert lines[2].startswith("    3         0.9000         0.8125         10")
    lines = format_table([row], cfg(objective="pareto")).splitlines()
    assert lines[0].startswith("trial   val accuracy  test acc  energy pJ")
    assert lines[2].startswith("    3         0.7000    0.6250         10")


def test_a_population_batch_keeps_heartbeats_and_requeues_its_untold_trials(
        tmp_path, monkeypatch):
    """Population batches recorded no heartbeat in a database storage (so a batch whose
    process died stayed RUNNING, and a resume on another host waited for it for ever), and
    warned about it on every batch; Ctrl-C while the members were evaluated left the trials
    not yet told RUNNING, and a rerun in the same process (a notebook's) hung."""
    import sqlite3
    import warnings

    import hetq.search.driver as driver
    import hetq.train.population as population

    db = tmp_path / "s.sqlite"
    real_fit = population.fit_population
    beating = []

    def fit_and_look(*a, **kw):
        out = real_fit(*a, **kw)
        with sqlite3.connect(db) as con:
            beating.append(len(con.execute("select trial_id from trial_heartbeats").fetchall()))
        return out
    monkeypatch.setattr(population, "fit_population", fit_and_look)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_search(cfg(population=2, trials=2), tmp_path / "h", storage=f"sqlite:///{db}",
                   progress=False)
    assert beating == [2]
    assert not [w for w in caught if "Heartbeat of storage" in str(w.message)]

    real_costs, calls = driver.measure_costs, []

    def ctrl_c_on_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_costs(*a, **kw)
    monkeypatch.setattr(driver, "measure_costs", ctrl_c_on_the_second)
    config = cfg(population=3, trials=6)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, tmp_path / "p", progress=False)
    _, study = load_run(tmp_path / "p")
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and states.count("COMPLETE") == 1
    assert states.count("WAITING") == 2  # the two not told: queued again
    monkeypatch.setattr(driver, "measure_costs", real_costs)
    study = run_search(config, tmp_path / "p", progress=False)  # (it hung here)
    assert len(completed(study)) == 6


def test_a_block_with_nothing_to_search_trains_once(tmp_path, capsys):
    """A block whose fields each have one choice (--limit) trained that one configuration
    its whole trial budget, without a word."""
    limit = {"Linear": [4, 4], "^relu[12]$": [4],
             "output": [["quantized_bits(4,0,1,alpha=1.0)"], ["quantized_bits(8,3,1)"], 8]}
    study = run_search(cfg(trials=3, limit=limit, blocks=["^(fc|relu)", "^output$"]),
                       tmp_path / "b", progress=True)
    assert "block 2/2 '^output$': layers ['output'], nothing to search (each field has one " \
           "choice): 1 trial" in capsys.readouterr().out
    assert len(completed(study)) == 1


def test_a_journal_lock_dies_with_its_process(tmp_path):
    """Optuna's journal lock was a file made with O_EXCL: a search killed with `kill -9`
    while it held it left it behind, and the resume waited 30 s, printing Optuna's
    warnings, before it broke it. The lock is now an flock, which the kernel releases."""
    import fcntl
    import signal
    import subprocess
    import sys

    out = tmp_path / "k"
    run_search(cfg(trials=1), out, progress=False)
    journal = str(out / "study.journal")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hetq.search.storage import "
         f"FlockJournalLock as L; L({journal!r}).acquire(); print('held', flush=True); "
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    try:
        assert holder.stdout.readline().strip() == "held"
        fd = os.open(journal + ".flock", os.O_RDWR)
        with pytest.raises(BlockingIOError):  # held by the other process
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free at once
        os.close(fd)
    finally:
        holder.kill()
        holder.stdout.close()
    assert not (out / "study.journal.lock").exists()
    assert len(completed(run_search(cfg(trials=2), out, progress=False))) == 2


def test_blocks_without_a_regex_is_an_error(capsys):
    """`hetq search --blocks --trials 1` ran an ordinary search without a word."""
    from hetq.cli import main

    with pytest.raises(SystemExit) as e:
        main(["search", "--blocks", "--trials", "1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "hetq search: error: argument --blocks: expected at least one argument")


def test_search_space_errors_name_real_options(tmp_path, capsys):
    """A limit no candidate fits said '--space: no kernel candidate ...' (there is no
    --space: "search space:" was read as a setting's name); a bad --quantization-config key
    was named 'quantization_config key'; a config without candidates said 'fits limit None
    (key None); candidates: {}'."""
    from hetq.cli import main

    cases = {"lim.yaml": ("--limit", "fc.*: [0, 8, 8]\n",
                          "search space: no kernel candidate fits limit 0 for layer 'fc1'"),
             "qc.yaml": ("--quantization-config", "kernal: {}\n",
                         "--quantization-config key 'kernal'; expected one of"),
             "empty.yaml": ("--quantization-config", "kernel: {}\n",
                            "search space: the quantization config has no kernel candidates "
                            "(layer 'fc1' needs one)")}
    for name, (option, text, msg) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["search", option, str(tmp_path / name), "--trials", "1", "--epochs", "1",
                     "--float-epochs", "1", "--no-progress", "--out",
                     str(tmp_path / name[:-5])]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"hetq search: error: {msg}"), err


def test_search_settings_refused_or_said_before_work(tmp_path, capsys):
    """Found by a probe of the command line: --prior-configs 1000000 swept ILPs for hours
    before its one trial; --workers 1000 started 1000 processes for one trial; a block regex
    whose layers an earlier block took 'matched no layer'; exceptions matching nothing, or
    width multipliers of 1 only, made the width search a silent no-op; a limit of 8.5 bits
    was taken as 8; `hetq worker --out DIR` said 'give --out the run folder'."""
    import warnings

    from hetq.cli import main
    from hetq.models import build
    from hetq.search.blocks import assign_blocks
    from hetq.search.config import SearchConfig
    from hetq.search.space import SearchSpace

    def mlp():
        return build("jet_mlp")
    with pytest.raises(ValueError, match=r"prior_configs=1000000; at most 1000 ILP budgets"):
        SearchConfig(prior_configs=1_000_000)
    space = SearchSpace(mlp())
    with pytest.raises(ValueError, match=r"block regex 'fc1' matches only layers an earlier "
                                         r"block takes \(fc1\)"):
        assign_blocks(space, ["fc", "fc1"])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        SearchSpace(mlp(), tune_filters="layer", tune_filters_exceptions="nomatch")
        SearchSpace(mlp(), tune_filters="layer", width_multipliers=(1,))
    said = [str(x.message) for x in w]
    assert any("tune_filters_exceptions 'nomatch' matches no resizable layer" in m
               for m in said)
    assert any("width multipliers of 1 only" in m for m in said)
    with pytest.raises(ValueError, match=r"limit fc1: \[8.5, 8, 8\]; expected"):
        SearchSpace(mlp(), limit={"fc1": [8.5, 8, 8]})
    with pytest.raises(ValueError, match=r"limit fc1: \[8, 8, 8, 8, 8\] has 5 entries"):
        SearchSpace(mlp(), limit={"fc1": [8, 8, 8, 8, 8]})
    with pytest.raises(ValueError, match=r"^width multiplier 1000 makes a model of about "
                                         r"3.07e\+09 weights \(at most 2e\+08\)"):
        SearchSpace(mlp(), tune_filters="layer", width_multipliers=(0.5, 1000))
    assert main(["worker", "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"hetq worker: error: {tmp_path / 'none'} holds no search (no search.yaml): give --out "
        "the search's run folder, or --study NAME with the search's --storage")


def test_workers_beyond_the_trials_left_are_not_started(tmp_path, capsys):
    from hetq.cli import main

    assert main(["search", "--trials", "1", "--epochs", "1", "--float-epochs", "1",
                 "--workers", "50", "--data", "synthetic:n=300", "--no-progress",
                 "--out", str(tmp_path / "w")]) == 0
    assert "note: --workers 50 for 1 trials left: starting 1" in capsys.readouterr().err


def test_trial_best_respects_the_constraints_and_the_settings_file_is_checked(tmp_path):
    """Found by a probe of report/retrain: with the random or grid sampler (no constraints
    function), `--trial best` was Optuna's best_trial, one that missed --min-reduction,
    where the table marked another; a search.yaml cut short was filled with defaults (an
    EBOPs front recomputed on energy, retrain on other data)."""
    import optuna

    from hetq.search.results import trial_number

    study = optuna.create_study(direction="maximize")
    for value, feasible in ((0.9, False), (0.7, True), (0.8, True), (0.95, False)):
        study.add_trial(optuna.trial.create_trial(value=value,
                                                  user_attrs={"feasible": feasible}))
    assert trial_number(study, "best", tmp_path) == 2
    out = tmp_path / "s"
    run_search(cfg(trials=1), out, progress=False)
    import dataclasses

    from hetq.search.results import format_table

    config, _ = load_run(out)
    long = dataclasses.replace(config, metric="tpr@fpr=0.01_mean")
    head, _, *rows = format_table(pareto_rows(out), long).splitlines()
    end = head.index("val tpr@fpr=0.01_mean") + len("val tpr@fpr=0.01_mean")
    assert rows and all(r[end - 3:end] == "nan" for r in rows if r[:5].strip().isdigit())
    text = (out / "search.yaml").read_text()
    (out / "search.yaml").write_text("\n".join(text.splitlines()[:3]) + "\n")
    with pytest.raises(ValueError, match=r"search.yaml differs from the settings its study was "
                                         r"made with \(.* in the file, .* in the study"):
        load_run(out)


def test_blocks_are_weighed_by_the_goals_own_cost(tmp_path, monkeypatch):
    """--schedule-block cost gave each block trials by its share of the reference energy
    whatever --goal was (and costed int8 inputs whatever --source): an EBOPs search weighed
    its blocks by energy."""
    import hetq.search.blocks as blocks
    from hetq.cost import cost

    seen = {}
    real = blocks.schedule

    def spy(space, patterns, order, layer_cost, trials):
        seen.update(layer_cost)
        return real(space, patterns, order, layer_cost, trials)
    monkeypatch.setattr(blocks, "schedule", spy)
    config = cfg(trials=2, epochs=1, goal="ebops", source_quantizer="int16",
                 schedule_block="cost",
                 blocks=["^(fc1|relu1)$", "^(fc2|relu2|fc3|relu3|output)$"])
    run_search(config, tmp_path / "b", progress=False)
    from hetq.train.checkpoint import load

    ref = cost(load(tmp_path / "b" / "float.pt"), reference="int8", source_quantizer="int16")
    assert seen == {lc.name: float(lc.ebops) for lc in ref.layers}
    assert seen["fc1"] == 16 * 64 * 8 * 16  # (int8 weights times int16 inputs)


def test_the_html_report_of_an_unfinished_search_says_so(tmp_path):
    """A killed or still running search's HTML report read as a finished one."""
    import dataclasses

    from hetq.search.config import SearchConfig
    from hetq.search.report import write_html_report

    out = tmp_path / "s"
    run_search(cfg(trials=2), out, progress=False)
    page = write_html_report(out).read_text()
    assert "has not finished" not in page
    config = SearchConfig.load(out / "search.yaml")  # (asked for more, stopped at 2)
    dataclasses.replace(config, trials=3).save(out / "search.yaml")
    page = write_html_report(out).read_text()
    assert ("2 completed trials of 3" in page and "The search has not finished: rerun the "
            "same `hetq search` command to resume it." in page)


def test_a_worker_with_a_missing_storage_or_study_leaves_nothing_behind(tmp_path, capsys,
                                                                        monkeypatch):
    """`hetq worker --storage sqlite:///new.db` created the empty database, then said it held
    no study; a worker without --out left an empty runs/ in the current folder."""
    from hetq.cli import main

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "new.db"
    assert main(["worker", "--storage", f"sqlite:///{db}", "--study", "s1"]) == 2
    assert capsys.readouterr().err == (f"hetq worker: error: --storage sqlite:///{db}: there "
                                       f"is no {db}; start the search there first (`hetq "
                                       "search --storage ...`)\n")
    assert main(["worker", "--storage", "x.journal"]) == 2
    assert "there is no x.journal" in capsys.readouterr().err
    assert main(["worker", "--study", "s1"]) == 2
    assert "no study 's1' in runs/s1/study.journal" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_run_made_before_a_setting_existed_is_still_read(tmp_path):
    """The search.yaml check compares only the settings the study records: a run made by an
    older hetq (without a newer field) was refused by report, retrain and export."""
    out = tmp_path / "s"
    study = run_search(cfg(trials=1), out, progress=False)
    stored = dict(study.user_attrs["hetq_config"])
    stored.pop("prior_configs")  # (as if the field did not exist when the run was made)
    study.set_user_attr("hetq_config", stored)
    config, _ = load_run(out)
    assert config.prior_configs == 12


def test_a_database_outage_is_ridden_out_and_a_lost_one_is_one_line(tmp_path, monkeypatch,
                                                                     capsys):
    """A 2-second PostgreSQL restart killed every search and worker with a 300-line
    traceback (Optuna's heartbeat thread died on its first error too); the password of a
    ?password= URL was saved and printed. Shown here on SQLite, the same RDBStorage."""
    import sqlalchemy.exc
    from optuna.storages import RDBStorage

    import hetq.search.storage as st
    from hetq.cli import main
    from hetq.search.storage import redact

    storage = make_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    real = RDBStorage.set_trial_intermediate_value
    fails = iter([True, True, False])

    def flaky(self, *a, **k):
        if next(fails):
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed"))
        return real(self, *a, **k)
    monkeypatch.setattr(RDBStorage, "set_trial_intermediate_value", flaky)
    monkeypatch.setattr(st, "RETRY_SECONDS", 5.0)
    monkeypatch.setattr(st.RetryingRDBStorage, "_said", False)
    with pytest.warns(UserWarning, match=r"lost the connection to the study's database .*"
                                         r"retrying for up to 5 s"):
        trial.report(0.5, 0)  # two failures, then through
    assert study.trials[0].intermediate_values == {0: 0.5}

    def down(self, *a, **k):
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))
    monkeypatch.setattr(RDBStorage, "record_heartbeat", down)
    monkeypatch.setattr(st, "RETRY_SECONDS", 0.0)
    storage.record_heartbeat(trial._trial_id)  # skipped, not fatal for the heartbeat thread
    for name in ("get_all_trials", "get_study_user_attrs", "get_all_studies",
                 "get_study_id_from_name"):  # gone for good: one line
        monkeypatch.setattr(RDBStorage, name, down)
    assert main(["worker", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study", "s",
                 "--out", str(tmp_path / "w"), "--no-progress"]) == 1
    err = capsys.readouterr().err.splitlines(keepends=True)[-1]  # (after Optuna's warnings)
    assert err.startswith("hetq worker: error: lost the connection to the study's database (") \
        and err.endswith("run the same command again once it is back (a trial that was "
                         "running is run again)\n") and "Traceback" not in err
    assert redact("postgresql://u:pw@h:5/db?password=hunter2&sslmode=require") == \
        "postgresql://u@h:5/db?sslmode=require"
    assert redact("postgresql://u@h/db?password=x") == "postgresql://u@h/db"
    assert redact("postgresql://h/db?sslmode=require;connect_timeout=5") == \
        "postgresql://h/db?sslmode=require;connect_timeout=5"  # (separators kept)
    assert redact("postgresql://h/db?password=a;sslpassword=b;x=1") == "postgresql://h/db?x=1"
    # a folder recorded before the query password was redacted still takes its URL
    from hetq.search.storage import STORAGE_FILE, check_run_storage

    old = tmp_path / "old"
    old.mkdir()
    (old / STORAGE_FILE).write_text("postgresql://h/db?user=u&password=s3\n")
    check_run_storage(old, "postgresql://h/db?user=u&password=s3")


def test_a_stale_trial_is_queued_without_its_workers_identity_and_not_for_ever(tmp_path):
    """Optuna's heartbeat retry copied every user attribute, the dead worker's host and pid
    among them: on that host the retry looked dead while a live worker trained it, and
    `hetq report` counted it as failed rather than retried. A configuration that kills its
    worker was also queued again without end."""
    from hetq.search.engine import MAX_DEATHS, retry_later, retry_stale
    from hetq.search.storage import retried_numbers

    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 's.db'}"))
    t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    t.set_user_attr("host", "vm")
    t.set_user_attr("pid", 999999)
    t.set_user_attr("warm_start", True)
    study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    retry_stale(study, study.trials[0])
    queued = study.trials[1]
    assert queued.state == optuna.trial.TrialState.WAITING
    assert queued.user_attrs == {"warm_start": True, "retry_of": 0, "seed_trial": 0,
                                 "deaths": 1}
    assert retried_numbers(study.trials) == {0}
    for k in range(1, MAX_DEATHS):  # the retries die too
        r = study.ask()
        assert r.number == k and retry_later(study, study.trials[k], dead=True)
    assert study.trials[MAX_DEATHS - 1].user_attrs["error"] == (
        f"its worker died {MAX_DEATHS} times training this configuration (out of memory?); "
        "it is not run again")
    assert len(study.trials) == MAX_DEATHS  # nothing queued after the last death


def test_a_trial_failed_under_its_worker_is_dropped_not_the_whole_search(tmp_path):
    """After a database blip a live worker's trial was failed as stale by another process;
    telling its result then ended the whole search ('Cannot tell a FAIL trial')."""
    from hetq.search.engine import run_worker

    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 's.db'}"))
    runs = []

    def objective(trial):
        runs.append(trial.number)
        if trial.number == 0:  # another process fails it meanwhile
            study._storage.set_trial_state_values(trial._trial_id,
                                                  optuna.trial.TrialState.FAIL)
        return trial.suggest_float("x", 0, 1)

    with pytest.warns(UserWarning, match=r"^trial 0 was failed by another process while this "
                                         r"one trained it"):
        run_worker(study, objective, budget=2)
    assert runs == [0, 1, 2]
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]

    def buggy(trial):  # an error outside the trial errors: Optuna fails the trial itself
        trial.suggest_float("x", 0, 1)
        raise AssertionError("a bug")

    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 't.db'}"))
    with pytest.raises(AssertionError, match="a bug"):  # (not taken for a takeover)
        run_worker(study, buggy, budget=3)
    assert [t.state.name for t in study.trials] == ["FAIL"]


def test_the_retrying_storage_covers_the_studys_calls_and_only_outages(tmp_path, monkeypatch):
    """Found by a regression probe: a study calls the storage's private methods through its
    cache (ask, get_trials, suggest were not retried); a FAIL whose commit went through
    before the connection broke was retried into 'already finished', so retry_later
    returned False and the configuration was never queued; a read-only SQLite file was
    retried for a minute and called a lost connection."""
    import sqlalchemy.exc
    from optuna.storages import RDBStorage

    import hetq.search.storage as st
    from hetq.search.engine import retry_later, transient

    monkeypatch.setattr(st, "RETRY_SECONDS", 5.0)
    monkeypatch.setattr(st.RetryingRDBStorage, "_said", True)  # (no warning here)
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 's.db'}"))
    lost = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed"))
    for name in ("_create_new_trial", "_get_trials", "_set_trial_param"):
        real, once = getattr(RDBStorage, name), [True]

        def flaky(self, *a, _real=real, _once=once, **k):
            if _once.pop() if _once else False:
                raise lost
            return _real(self, *a, **k)
        monkeypatch.setattr(RDBStorage, name, flaky)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    assert len(study.get_trials()) == 1
    real_set = RDBStorage.set_trial_state_values
    once = [True]

    def commits_then_breaks(self, *a, **k):
        out = real_set(self, *a, **k)
        if once and once.pop():
            raise optuna.exceptions.StorageInternalError("commit") from lost
        return out
    monkeypatch.setattr(RDBStorage, "set_trial_state_values", commits_then_breaks)
    assert retry_later(study, study.trials[0])  # (it was False: nothing queued)
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    ro = sqlalchemy.exc.OperationalError("UPDATE", {}, __import__("sqlite3").OperationalError(
        "attempt to write a readonly database"))
    locked = sqlalchemy.exc.OperationalError("UPDATE", {}, __import__("sqlite3").OperationalError(
        "database is locked"))
    assert not transient(ro) and transient(locked) and transient(lost)


def test_search_cnn_digits_defaults_to_the_digits(tmp_path, capsys):
    """`hetq search --model cnn_digits` without --data took the jets and failed."""
    from hetq.cli import main

    out = tmp_path / "c"
    assert main(["search", "--model", "cnn_digits", "--trials", "1", "--epochs", "1",
                 "--float-epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert SearchConfig.load(out / "search.yaml").data == "digits"
    capsys.readouterr()
    # a search refused by its checks leaves no empty --out folder behind
    assert main(["search", "--model", "cnn_digits", "--strategy", "hessian", "--out",
                 str(tmp_path / "runs" / "h"), "--no-progress"]) == 2
    assert "is quantized already" in capsys.readouterr().err
    assert main(["search", "--model", "cnn_digits", "--strategy", "gradient", "--out",
                 str(tmp_path / "runs" / "g"), "--no-progress"]) == 2
    assert "is not supported by the gradient strategy" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_journal_that_does_not_fit_on_the_disk_is_named(tmp_path):
    """A full disk ended a search with 'error: No space left on device', naming no file
    (the journal's write). A file-size limit fails the write as a full disk does."""
    import subprocess
    import sys

    out = tmp_path / "s"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000)); "
            "from hetq.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "search", "--data", "synthetic:n=300",
                        "--trials", "20", "--epochs", "1", "--float-epochs", "1", "--out",
                        str(out), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        f"hetq search: error: File too large: {out / 'study.journal'}", r.stderr


def test_search_and_worker_check_their_folder_as_train_does(tmp_path, capsys, monkeypatch):
    """A read-only --out was 'Read-only file system: ro/s2', exit 1, for search and worker;
    train said which folder cannot be written, exit 2. A file on the path gave a worker
    'holds no search'."""
    import errno
    import tempfile

    from hetq.cli import main

    (tmp_path / "afile").write_text("x")
    for cmd in ("search", "worker"):
        out = tmp_path / "afile" / "s"
        assert main([cmd, "--out", str(out), "--no-progress"]) == 2
        assert capsys.readouterr().err == \
            f"hetq {cmd}: error: --out {out}: {tmp_path / 'afile'} is a file, where a folder " \
            "is needed\n"

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    for cmd in ("search", "worker"):
        assert main([cmd, "--out", str(tmp_path / "ro" / "s"), "--no-progress"]) == 2
        assert capsys.readouterr().err == (f"hetq {cmd}: error: --out {tmp_path / 'ro' / 's'}: "
                                           f"{tmp_path} cannot be written (Read-only file "
                                           "system)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_one_float_epoch_is_said_in_the_singular(tmp_path, capsys):
    run_search(cfg(trials=1, float_epochs=1, model_kwargs={"widths": [4]}), tmp_path / "o",
               progress=True)
    out = capsys.readouterr().out
    assert "(1 epoch)..." in out and "(1 epochs)" not in out, out


def test_an_autoencoder_and_a_dropped_deployable_are_said(tmp_path, capsys):
    """--model jet_autoencoder failed on a logits shape; --deployable with a
    --quantization-config was dropped without a word, and then, with a note, also for a file
    without activation candidates (the default ones were searched: binary, po2)."""
    from hetq.cli import main

    assert main(["search", "--model", "jet_autoencoder", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == (
        "hetq search: error: --model 'jet_autoencoder': an autoencoder (hetq train --task "
        "anomaly) is not searched; a search scores classifiers (jet_mlp, cnn_digits)\n")
    qc = tmp_path / "qc.yaml"
    qc.write_text("kernel: {'quantized_bits(4,0,1)': 4, 'quantized_bits(6,0,1)': 6}\n"
                  "bias: {'quantized_bits(4,0,1)': 4}\n"
                  "activation: {'quantized_relu(4,0)': 4}\n")
    assert main(["search", "--data", "synthetic:n=300", "--model-widths", "4", "--trials", "1",
                 "--epochs", "1", "--float-epochs", "1", "--deployable",
                 "--quantization-config", str(qc), "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    assert "not used: --deployable" not in capsys.readouterr().err
    # the file's activation candidates are searched; those it leaves out are the deployable
    # ones (the default binary and po2 activations were searched)
    from hetq.search.space import DEPLOYABLE_QUANTIZATION_CONFIG

    saved = SearchConfig.load(tmp_path / "s" / "search.yaml").quantization_config
    assert saved["activation"] == {"quantized_relu(4,0)": 4}
    assert saved["linear"] == DEPLOYABLE_QUANTIZATION_CONFIG["linear"]
    qc.write_text(qc.read_text() + "linear: {'quantized_bits(4,0,1)': 4}\n")
    assert main(["search", "--data", "synthetic:n=300", "--model-widths", "4", "--trials", "1",
                 "--epochs", "1", "--float-epochs", "1", "--deployable",
                 "--quantization-config", str(qc), "--out", str(tmp_path / "s2"),
                 "--no-progress"]) == 0
    assert ("note: not used: --deployable (--quantization-config gives the activation "
            "candidates)" in capsys.readouterr().err)
    # a run that began with the file alone (before the maps were filled in) resumes as it
    # began (it was refused as other settings)
    qc.write_text("kernel: {'quantized_bits(4,0,1)': 4, 'quantized_bits(6,0,1)': 6}\n")
    old = tmp_path / "old"
    argv = ["search", "--data", "synthetic:n=300", "--model-widths", "4", "--epochs", "1",
            "--float-epochs", "1", "--deployable", "--quantization-config", str(qc), "--out",
            str(old), "--no-progress"]
    # (as such a run recorded its settings: the file alone)
    assert main([a for a in argv if a != "--deployable"] + ["--trials", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--trials", "2"]) == 0
    assert "note: not used: --deployable" in capsys.readouterr().err
    assert SearchConfig.load(old / "search.yaml").quantization_config == {
        "kernel": {"quantized_bits(4,0,1)": 4, "quantized_bits(6,0,1)": 6}}
    new = SearchConfig.load(tmp_path / "s2" / "search.yaml").quantization_config
    assert main([*argv[:-3], "--out", str(tmp_path / "new"), "--no-progress", "--trials",
                 "1"]) == 0
    assert set(SearchConfig.load(tmp_path / "new" / "search.yaml").quantization_config) == \
        {"kernel", "activation", "linear"} and new

def test_waiting_for_other_processes_trials_is_said(tmp_path, capsys, monkeypatch):
    """A search whose budget's last trial ran in another process waited without a word,
    for ever when that process was gone on another host (a journal has no heartbeat)."""
    from hetq.search import engine

    monkeypatch.setattr(engine, "WAIT_NOTE_AFTER", 0.5)
    study = optuna.create_study()
    t = study.ask()
    t.set_user_attr("host", "elsewhere")
    t.set_user_attr("pid", 4242)
    assert engine.run_worker(study, lambda trial: 0.0, budget=1, timeout=2.5) == 0
    err = capsys.readouterr().err
    assert err.count("note: waiting for the budget's last trial, which other processes run: "
                     "#0 (host elsewhere, pid 4242); a process that is gone on another host "
                     "is failed by the database's heartbeat") == 1
