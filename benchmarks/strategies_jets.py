"""Three allocation strategies with the same wall-clock budget on the simulated jets.

    python benchmarks/strategies_jets.py [--budget 245]

All three start from a 16-32-16-5 MLP (--widths; the 16-64-32-32-5 jet MLP, --widths 64 32
32, costs the gradient strategy 2 points at <= 1,000 EBOPs, since it has to keep 3 hidden
layers alive, and gave Optuna and Hessian lower hypervolumes, 0.386 and 0.381 against 0.421
and 0.390, the Hessian run then being 24 fixed configurations; those two runs were in one
process and took their fronts on the test split):

1. Optuna TPE (multi-objective accuracy / EBOPs), trials until the budget is spent;
2. Hessian traces + ILP sweep, its configurations fine-tuned with QAT until the budget is
   spent;
   (both as `hetq search --workers N`, one process per core like the gradient strategy's
   runs, stopped with Ctrl-C when the budget is spent; their fronts are chosen on the
   validation split, as the gradient strategy's, and the test split is reported)
3. gradient bit-widths (HGQ style): two trainings in two processes (one per core; more
   --runs than cores share the time), training steps compiled with torch.compile
   (--no-compile: eager), weights at --lr 3e-3 and bit-widths at --bits-lr 1e-2, integer
   bits of inputs and neurons from the 0.99 quantile of their values (--input-quantile,
   --act-quantile), the neurons' then trained (--no-learn-integer: quantiles recomputed
   every epoch), beta ramped geometrically from --beta0 to --beta1 over the budget, fronts merged
   (`--ebops-target KNEE END`: the beta controller instead), the targets being the
   probabilities of the 64-32-32 float reference (--teacher; knowledge distillation) rather
   than the labels (--granularity, --activation-granularity: what shares a bit-width); then the
   merged front's points, most accurate first, fine-tuned at frozen bits for
   --polish-epochs each until --polish-time is spent (rows marked p).

Each strategy's budget includes training the float model. Prints each front as (test
accuracy, EBOPs, energy) rows, its hypervolume against the fixed reference point
(EBOPs 1,089,536 = the float model at 16x16 bits, accuracy 0.5; log10 EBOPs axis), the wall
time of each phase, and the targets of the gradient strategy: test accuracy >= float - 1 point
at <= 1,000 EBOPs, hypervolume >= 0.56.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import FULL, jets
from hetq.cost import cost
from hetq.models import build
from hetq.search.cli import _input_quantile, _quantile
from hetq.search.config import ACT_GRANULARITIES, GRANULARITIES, SearchConfig
from hetq.search.gradient import default_workers, to_hetq_model, train_gradient_runs
from hetq.search.objectives import hypervolume_2d, pareto_front
from hetq.search.results import load_run
from hetq.train import evaluate, fit

REF_EBOPS = 1_089_536
REF_ACC = 0.5
SOURCE = "quantized_bits(16,5,alpha=1)"  # inputs as ap_fixed<16,6> for the non-gradient runs
STOP_TIME = 3.0  # seconds a search takes to stop its workers after Ctrl-C


def train_float(data, epochs, widths=(64, 32, 32)):
    t = time.time()
    torch.manual_seed(0)
    f = build("jet_mlp", widths=widths)
    fit(f, data, epochs=epochs, lr=3e-3, progress=False)
    return f, evaluate(f, data)["accuracy"], time.time() - t


def study_front(out: Path):
    """The trained trials' validation front (accuracy up, EBOPs down), as (test accuracy,
    EBOPs, energy) points, as the gradient strategy's front is chosen; and the number of
    trials trained to the end (queued or interrupted ones left out)."""
    _, study = load_run(out)
    done = []
    for t in study.trials:
        if t.state.name != "COMPLETE":
            continue
        metrics, costs = t.user_attrs.get("metrics", {}), t.user_attrs.get("costs", {})
        val = metrics.get("val", {}).get("accuracy")
        test = metrics.get("test", {}).get("accuracy")
        if val is None or test is None or "ebops" not in costs:
            continue
        done.append((val, test, costs["ebops"], costs["energy_pj"]))
    front = pareto_front([(v, e) for v, _, e, _ in done])
    return [done[i][1:] for i in front], len(done)


def report(name, pts, phases):
    """pts: (test accuracy, EBOPs, energy pJ[, mark]) of each model on a strategy's
    validation front; prints and returns their front on the test split."""
    idx = pareto_front([(p[0], p[1]) for p in pts])
    front = [pts[i] for i in idx]
    hv = hypervolume_2d([(p[0], p[1]) for p in front], REF_EBOPS, REF_ACC)
    print(f"\n== {name}: {len(pts)} models on the validation front, {len(front)} on the "
          f"test front, hypervolume {hv:.4f}")
    print("   phases: " + ", ".join(f"{k} {v:.1f} s" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in phases.items()))
    print(f"   {'test acc':>8} {'EBOPs':>9} {'energy pJ':>9}")
    for a, e, en, *mark in front:
        print(f"   {a:8.4f} {e:9.0f} {en:9.1f} {''.join(mark)}".rstrip())
    return front, hv


def run_search_until(flags: list[str], out: Path, budget: float, t_start: float,
                     workers: int) -> None:
    """`hetq search` with `workers` processes (one per core, as the gradient strategy's
    --runs) until `budget` seconds after `t_start` are spent, then stopped as a user (or a
    batch system) would: its finished trials are kept in the study."""
    cmd = [sys.executable, "-m", "hetq", "search", *flags, "--trials", "1000000",
           "--workers", str(workers), "--no-progress", "--out", str(out)]
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=max(0.0, t_start + budget - STOP_TIME - time.time()))
        except subprocess.TimeoutExpired:
            # SIGTERM, which hetq search takes as Ctrl-C (SIGINT itself is ignored when this
            # script runs in the background, and the search then inherits that)
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    if proc.returncode not in (0, 130):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                         + log.read_text()[-3000:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=245.0)
    ap.add_argument("--float-epochs", type=int, default=30)
    ap.add_argument("--ilp-budgets", type=int, default=96,
                    help="Hessian strategy: cost budgets swept by the ILP (each gives one "
                         "configuration, repeats dropped)")
    ap.add_argument("--beta0", type=float, default=1e-5)
    ap.add_argument("--beta1", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=3e-3,
                    help="gradient strategy: Adam learning rate of the weights")
    ap.add_argument("--bits-lr", type=float, default=1e-2,
                    help="gradient strategy: Adam learning rate of the bit-widths")
    ap.add_argument("--ebops-target", type=float, nargs=2, default=None,
                    metavar=("KNEE", "END"),
                    help="gradient strategy: steer beta with the controller towards this EBOPs "
                         "target (e.g. 3000 500, with --lr 2e-2) instead of the ramp")
    ap.add_argument("--runs", type=int, default=2,
                    help="gradient strategy: runs in parallel processes (one per core)")
    ap.add_argument("--polish-epochs", type=int, default=10,
                    help="gradient strategy: epochs of fine-tuning per front point at frozen "
                         "bits after training (0: none)")
    ap.add_argument("--polish-time", type=float, default=40.0,
                    help="gradient strategy: seconds of the budget kept for the polish")
    ap.add_argument("--stop-below", type=float, default=None,
                    help="gradient strategy: a run stops once its validation accuracy stays "
                         "below this in the second half, the time left going to the polish "
                         "(one run with 0.5: HV 0.5349, and 60 s of the budget unused once "
                         "every point was polished)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="gradient strategy: torch.compile the training step (about 1.5x the "
                         "steps per second after ~30 s of compiling)")
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 16],
                    help="hidden widths of the float MLP that every strategy starts from "
                         "(64 32 32: the jet MLP; the targets' float reference is the "
                         "64 32 32 jet MLP either way)")
    ap.add_argument("--input-quantile", type=_input_quantile, default=SearchConfig.input_quantile,
                    help="gradient strategy: inputs' integer bits cover this quantile of |x| "
                         "('max': the largest)")
    ap.add_argument("--act-quantile", type=_quantile, default=SearchConfig.act_quantile,
                    help="gradient strategy: each neuron's integer bits cover this quantile "
                         "of its outputs: the start with --learn-integer, else per epoch "
                         "('max': the largest)")
    ap.add_argument("--learn-integer", action=argparse.BooleanOptionalAction,
                    default=SearchConfig.learn_integer,
                    help="gradient strategy: train the neurons' integer bits too (from the "
                         "--act-quantile range)")
    ap.add_argument("--teacher", default="reference", choices=["none", "reference", "start"],
                    help="gradient strategy: distil from this float model (reference: the "
                         "64-32-32 jet MLP trained for the targets, inside the budget; start: "
                         "the MLP it starts from; none: train on the labels)")
    ap.add_argument("--distill", type=float, default=SearchConfig.distill,
                    help="gradient strategy: weight of the teacher's probabilities in the "
                         "targets (1: the teacher's alone)")
    ap.add_argument("--granularity", default=SearchConfig.granularity,
                    choices=GRANULARITIES,
                    help="gradient strategy: what shares one trainable weight bit-width")
    ap.add_argument("--activation-granularity", default=SearchConfig.activation_granularity,
                    choices=ACT_GRANULARITIES,
                    help="gradient strategy: inputs and activations per neuron, or one type "
                         "per tensor (layer; exportable to hls4ml)")
    ap.add_argument("--only", default=None, choices=["optuna", "hessian", "gradient"])
    a = ap.parse_args()
    data = jets()
    spec = f"jets-sim:{FULL}" if FULL.exists() else "jets-sim"
    tmp = Path(tempfile.mkdtemp(prefix="hetq_strategies_"))
    print(f"data {data!r}; budget {a.budget:.0f} s per strategy (float training included)")
    results = {}
    base = ["--data", spec, "--objective", "pareto", "--goal", "ebops", "--float-epochs",
            str(a.float_epochs), "--source", SOURCE, "--lr", "3e-3",
            "--model-widths", *map(str, a.widths)]  # every strategy starts from it

    workers = default_workers(a.runs)  # the gradient strategy's processes
    if a.only in (None, "optuna"):
        t0 = time.time()
        run_search_until([*base, "--sampler", "tpe", "--epochs", "5"], tmp / "optuna",
                         a.budget, t0, workers)
        pts, n = study_front(tmp / "optuna")
        results["optuna TPE"] = report("Optuna TPE", pts, {"total": time.time() - t0,
                                                           "trials": n, "workers": workers})

    if a.only in (None, "hessian"):
        t0 = time.time()
        # a sweep over --ilp-budgets cost budgets; its configurations fine-tuned 30 epochs
        # each, 4 at a time, until the budget is spent (TPE samples more if the sweep's
        # configurations run out first)
        run_search_until([*base, "--strategy", "hessian", "--prior", "hessian",
                          "--prior-configs", str(a.ilp_budgets), "--epochs", "30"],
                         tmp / "hessian", a.budget, t0, workers)
        _, study = load_run(tmp / "hessian")
        pts, n = study_front(tmp / "hessian")
        prior = study.user_attrs.get("hessian_prior", {})
        ph = dict(prior.get("seconds", {}))
        ph["total (incl. float, QAT)"] = time.time() - t0
        ph["trials"] = n
        ph["of them ILP configurations"] = sum(
            t.state.name == "COMPLETE" and "hessian_budget" in t.user_attrs
            for t in study.trials)
        ph["workers"] = workers
        results["hessian ILP"] = report("Hessian ILP + QAT fine-tune", pts, ph)

    if a.only in (None, "gradient"):
        t0 = time.time()
        ref, facc, tf = train_float(data, a.float_epochs)  # the reference for the targets
        f, sacc, tf2 = train_float(data, a.float_epochs, tuple(a.widths))
        tf += tf2
        # keep time to start the worker processes and evaluate the front (about 5 s on an
        # idle machine, 40 s under load)
        polish_time = a.polish_time if a.polish_epochs else 0.0
        left = a.budget - (time.time() - t0) - 20.0 - polish_time
        waves = -(-a.runs // default_workers(a.runs))  # runs queued per process
        g, res = train_gradient_runs(
            f, data, runs=a.runs, epochs=1_000_000, beta0=a.beta0, beta1=a.beta1, lr=a.lr,
            bits_lr=a.bits_lr, time_budget=left / waves, progress=False,
            target=tuple(a.ebops_target) if a.ebops_target else None,
            polish_epochs=a.polish_epochs, polish_time=polish_time, compile=a.compile,
            stop_below=a.stop_below,
            input_quantile=a.input_quantile, act_quantile=a.act_quantile,
            learn_integer=a.learn_integer,
            teacher={"none": None, "reference": ref, "start": f}[a.teacher], distill=a.distill,
            granularity=a.granularity, activations=a.activation_granularity)
        t1 = time.time()
        pts = []
        for p in res.front:
            m = to_hetq_model(g, p.state)
            acc = evaluate(m, data)["accuracy"]
            en = cost(m, (16,), source_quantizer=SOURCE).summary()["energy_pj"]
            pts.append((acc, p.ebops, en, "p" if p.polished else ""))
        total, t_eval = time.time() - t0, time.time() - t1
        hgq1 = []  # (outside the budget: only for comparing with HGQ1 figures)
        for p, (acc, *_) in zip(res.front, pts):
            g.load_state_dict(p.state)
            hgq1.append((acc, g.ebops(hgq1=True)))
        results["gradient"] = report("gradient bit-widths (HGQ style)", pts, {
            "float": tf, "training + polish": res.seconds,
            "front evaluation": t_eval, "total": total,
            "epochs (all runs)": len(res.history), "stopped early": res.stopped_early,
            "points": f"{len(res.front)} on the validation front, "
                      f"{sum(p.polished for p in res.front)} of them polished"})
        front, hv = results["gradient"]
        ok = [p for p in front if p[1] <= 1000]
        best = max(ok) if ok else None
        start = "-".join(map(str, (16, *a.widths, 5)))
        print(f"\nfloat test accuracy {facc:.4f} (the gradient strategy's start, {start}: "
              f"{sacc:.4f}); target: >= {facc - 0.01:.4f} at <= 1,000 EBOPs within "
              f"{a.budget:.0f} s, hypervolume >= 0.56")
        print(f"gradient: best at <= 1,000 EBOPs: "
              f"{'none' if best is None else f'{best[0]:.4f} at {best[1]:.0f} EBOPs'}; "
              f"hypervolume {hv:.4f}; wall {total:.0f} s")
        # for comparison with HGQ1 figures only: the same models, each weight charged its
        # significant bits without sign, as HGQ1's exact EBOPs count
        f1 = [hgq1[i] for i in pareto_front(hgq1)]
        ok1 = [p for p in f1 if p[1] <= 1000]
        b1 = max(ok1) if ok1 else None
        print("same front counted as HGQ1's exact EBOPs (a weight's significant bits, no sign; "
              "not the target's count): "
              f"best at <= 1,000: "
              f"{'none' if b1 is None else f'{b1[0]:.4f} at {b1[1]:.0f}'}; hypervolume "
              f"{hypervolume_2d(f1, REF_EBOPS, REF_ACC):.4f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
