"""The search driver: one Optuna study, trials that train real candidates (the results, its
Pareto rows and table, are read back by `hetq.search.results`).

Run folder layout (`out/`):
    search.yaml       the SearchConfig
    float.pt          the float reference model (trained once, warm start of every trial)
    study.journal     the Optuna study (journal storage; absent with a database URL)
    trials/STUDY/NNNNN.pt  each finished trial's trained model (a regular hetq checkpoint)
    scheduler.json    block-wise searches: the blocks' chosen values and the next block

Each trial: sample a candidate, build it from the float model (float weights transferred),
train it with QAT (reporting the validation metric per epoch so pruners can stop it),
evaluate, compute its costs, and store metrics, costs, the candidate and the trained weights
with the trial. The best model of a search *is* the trained trial (AutoQKeras returns an
untrained rebuild instead).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from ..cli import deferred_signals
from ..files import folder_lock
from ..train.loop import keeps_global_rng
from .build import build_candidate
from .config import SearchConfig
from .engine import (
    MAX_CONSECUTIVE_FAILURES,
    TRIAL_ERRORS,
    SearchFailed,
    _fail_stale,
    check_grid,
    counted_before,
    make_pruner,
    make_sampler,
    n_counted,
    retry_all_later,
    run_worker,
    seed_number,
    storage_lost,
    transient,
)
from .objectives import COST_KEYS, Constraints, ForgivingFactor
from .results import is_gradient_run, pareto_rows
from .space import Candidate, SearchSpace
from .sparsity import MagnitudePruner
from .storage import (
    STORAGE_FILE,
    check_run_storage,
    check_storage_exists,
    existing_study,
    journal_path,
    make_storage,
    pack_state,
    quiet_optuna,
    record_run_storage,
    recover_dead_trials,
    redact,
    trial_path,
    worker_identity,
)


@dataclass
class SearchContext:
    """What every trial of one search shares (built once per worker process)."""

    config: SearchConfig
    out: Path
    data: Any
    float_model: torch.nn.Module
    space: SearchSpace
    reference: dict[str, Any]

    @property
    def goal_key(self) -> str:
        return COST_KEYS[self.config.goal]


# -- building the shared context ----------------------------------------------------------
def _train_api():
    from ..train import evaluate, fit

    return fit, evaluate


def measure_costs(model: torch.nn.Module, config: SearchConfig, data) -> dict[str, float]:
    from ..cost import cost

    # a layer the trial leaves float (a later block, one no block matches) costs as in the
    # reference, as AutoQKeras' trials cost such hybrid models
    rep = cost(model, input_shape=data.input_shape, source_quantizer=config.source_quantizer,
               float_as=config.reference)
    return rep.summary()


def reference_costs(model: torch.nn.Module, config: SearchConfig, data) -> dict[str, float]:
    from ..cost import cost

    rep = cost(model, input_shape=data.input_shape, source_quantizer=config.source_quantizer,
               reference=config.reference)
    return rep.summary()


def model_kwargs(config: SearchConfig, data) -> dict:
    """The zoo model's `build` keywords: sized to `data` (features, classes) where the model
    takes them, then `config.model_kwargs` (which win). A search used to build the default
    16-input, 5-class jet MLP whatever the data, and failed on other data inside torch."""
    from ..models import data_kwargs

    return {**data_kwargs(config.model, data), **config.model_kwargs}


def train_float_model(config: SearchConfig, data, path: Path, model_kwargs: dict, what: str,
                      progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """`config.model` with `model_kwargs`, trained in float (config.float_epochs, batch_size,
    lr, seed, device; the CPU for the gradient strategy), saved to `path`; returns it (on
    the CPU, in eval mode) and its validation metrics. `what` names it in the progress
    line."""
    from ..models import build as build_model
    from ..train.checkpoint import save

    fit, evaluate = _train_api()
    torch.manual_seed(config.seed)
    model = build_model(config.model, **model_kwargs)
    if progress:
        n = config.float_epochs
        print(f"training {what} ({n} epoch{'s' * (n != 1)})...", flush=True)
    # (the gradient strategy trains on the CPU, its float models too: --device is not its)
    device = "cpu" if config.strategy == "gradient" else config.device
    fit(model, data, epochs=config.float_epochs, batch_size=config.batch_size, lr=config.lr,
        seed=config.seed, device=device, progress=progress)
    metrics = evaluate(model, data, split="val", device="cpu")
    save(path, model, model_name=config.model, model_kwargs=model_kwargs, data=data,
         metrics=metrics)
    return model.cpu().eval(), metrics


def _check_metric(metric: str, data) -> None:
    """`metric` must be one the search can keep high on `data` (before any training)."""
    import numpy as np

    from ..train.tasks import Classify

    _, y = data.split("val")
    n = data.n_classes
    names = Classify().metrics(np.full((len(y), n), 1.0 / n), np.asarray(y), list(data.classes))
    if metric not in names:
        cls = next((c for c in map(str, data.classes) if metric.endswith(f"_{c}")), None)
        if cls is not None and not (np.asarray(y) == list(map(str, data.classes)).index(cls)
                                    ).any():  # (it read as if there were no class c)
            raise ValueError(f"metric {metric!r}: class {cls!r} has no samples in the val "
                             f"split of {data.name}, where the search measures it")
        raise ValueError(f"metric {metric!r} is not measured on {data.name}; expected "
                         f"one of {', '.join(sorted(names))}")


def _space(config: SearchConfig, model: torch.nn.Module, input_shape) -> SearchSpace:
    """The search space of `model` under `config` (samples of `input_shape`: the data's), its
    blocks (if any) checked."""
    from .blocks import assign_blocks

    space = SearchSpace(model, config.quantization_config, config.limit, config.tune_filters,
                        config.width_multipliers, config.tune_filters_exceptions,
                        config.sparsity, config.learning_rates, input_shape)
    if config.blocks:
        assign_blocks(space, config.blocks)
    return space


class RefusedAfterFloat(ValueError):
    """A setting that can be checked only on the trained float model (`build_context`)."""


def build_context(config: SearchConfig, out: Path, progress: bool = True) -> SearchContext:
    from ..data import get_dataset
    from ..train.checkpoint import load

    _, evaluate = _train_api()
    data = get_dataset(config.data, progress=progress)
    if config.strategy != "gradient":  # (which keeps the accuracy high)
        _check_metric(config.metric, data)
    float_path = out / "float.pt"
    if float_path.exists():
        float_model = load(float_path)
        ref = torch.load(float_path, map_location="cpu", weights_only=False).get("metrics", {})
        if config.strategy != "gradient" and config.metric not in ref:  # (a KeyError later)
            raise ValueError(f"{float_path} holds no validation {config.metric}, which this "
                             "search's float model has: it was replaced (by `hetq demo` into "
                             "this folder, say); restore it, or use another --out")
    else:
        from ..models import build as build_model

        # a bad space is an error before any training; its warnings come again with the real
        # space, unless it is refused here: then they explain the error (a --limit key that
        # matches no layer left 'every field has a single choice' unexplained)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            model = build_model(config.model, **model_kwargs(config, data))
            try:
                space = _space(config, model, data.input_shape)
            except ValueError as e:
                notes = list(dict.fromkeys(str(w.message) for w in said))
                raise ValueError("; ".join([str(e), *notes])) from None
        if "hessian" in (config.strategy, config.prior):  # (traces need a float model)
            from ..quant.layers import QLayer

            quantized = [f"{n!r} ({type(m).__name__})" for n, m in model.named_modules()
                         if isinstance(m, QLayer)]
            if quantized:
                which = ("--strategy hessian" if config.strategy == "hessian"
                         else "--prior hessian")
                raise ValueError(f"{which} takes Hessian traces on the float model, and the "
                                 f"zoo model {config.model!r} is quantized already (layers "
                                 f"{', '.join(quantized[:3])}"
                                 f"{', ...' if len(quantized) > 3 else ''}); use a float "
                                 "model such as jet_mlp, or another strategy")
        if config.sampler == "grid" and config.strategy != "gradient":
            check_grid(space.distributions())
        float_model, ref = train_float_model(config, data, float_path, model_kwargs(config, data),
                                             "the float reference", progress)
    space = _space(config, float_model, data.input_shape)
    if config.max_metric_loss is not None and not ref.get(config.metric, 0.0) > 0.0:
        # (every trial then failed with a ZeroDivisionError traceback, and so did a rerun)
        raise RefusedAfterFloat(
            f"--max-loss is a loss relative to the float model's validation {config.metric}, "
            f"which is {ref.get(config.metric)}: a relative loss of it is undefined; choose "
            "another --metric, or leave out --max-loss")
    reference = {"metrics": ref, "test": evaluate(float_model, data, split="test", device="cpu"),
                 "costs": reference_costs(float_model, config, data)}
    return SearchContext(config, out, data, float_model, space, reference)


# -- one trial --------------------------------------------------------------------------------
def run_candidate(ctx: SearchContext, candidate: Candidate, *, epochs: int | None = None,
                  trial: optuna.Trial | None = None, seed: int | None = None):
    """Build, train (QAT), evaluate and cost one candidate. Returns (model, metrics, costs)."""
    fit, evaluate = _train_api()
    cfg = ctx.config
    epochs = epochs or cfg.epochs
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)  # the units a wider candidate adds: the same each time it is built
    model = build_candidate(ctx.float_model, candidate)
    pruner = MagnitudePruner(model, candidate.sparsity, epochs) if candidate.sparsity else None

    def report(epoch: int, val_metrics: dict[str, float]):
        if trial is None or cfg.objective == "pareto":  # Optuna prunes single objectives only
            return
        trial.report(float(val_metrics[cfg.metric]), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    fit(model, ctx.data, epochs=epochs, batch_size=cfg.batch_size, lr=candidate.lr or cfg.lr,
        seed=seed, device=cfg.device, progress=False, report=report, pruner=pruner)
    model = model.cpu().eval()
    metrics = {"val": evaluate(model, ctx.data, split="val", device="cpu"),
               "test": evaluate(model, ctx.data, split="test", device="cpu")}
    costs = measure_costs(model, cfg, ctx.data)
    return model, metrics, costs


def make_objective(ctx: SearchContext):
    cfg = ctx.config
    ff = ForgivingFactor(cfg.goal, cfg.delta_p, cfg.delta_n, cfg.rate, cfg.stress)
    cons = Constraints(cfg.min_reduction, cfg.max_metric_loss)
    ref_cost = ctx.reference["costs"][ctx.goal_key]
    ref_metric = ctx.reference["metrics"][cfg.metric]

    def finish(trial, candidate, model, metrics, costs):
        """Record a trained candidate on its trial; returns the objective value(s)."""
        metric = float(metrics["val"][cfg.metric])
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("costs", costs)
        if cons.active:
            c = cons.values(metric, costs[ctx.goal_key], ref_cost, ref_metric)
            trial.set_user_attr("constraint", c)
            trial.set_user_attr("feasible", all(v <= 0 for v in c))
        trial.set_user_attr("weights", pack_state(model))
        _save_trial_checkpoint(ctx, trial.number, model, candidate, metrics, costs)
        if cfg.objective == "pareto":
            return metric, float(costs[ctx.goal_key])
        score = ff.score(metric, costs[ctx.goal_key], ref_cost)
        trial.set_user_attr("score", score)
        return score

    def objective(trial: optuna.Trial):
        for k, v in worker_identity().items():
            trial.set_user_attr(k, v)
        candidate = ctx.space.suggest(trial)
        trial.set_user_attr("candidate", candidate.to_dict())
        model, metrics, costs = run_candidate(ctx, candidate, trial=trial,
                                              seed=cfg.seed + seed_number(trial))
        return finish(trial, candidate, model, metrics, costs)

    objective.finish = finish
    return objective


def run_population_worker(study, ctx, budget: int, k: int, on_trial_end=None,
                          progress: bool = False) -> int:
    """Trials in batches of `k`: ask k trials, train their candidates together as one
    population (`hetq.train.population`), tell k results. Members share one batch order
    (seed `config.seed`); a pruned member (per-epoch report to the study's pruner) leaves the
    population at once; each member prunes to its own sampled sparsity with the schedule of
    the sequential path. Returns the number of trials run."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    finish = make_objective(ctx).finish
    ran = failures = 0
    while n_counted(study) < budget:
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise SearchFailed(f"{failures} trials in a row failed (their training diverged); "
                               "stopping")
        recover_dead_trials(study)  # (a batch whose process died: queued again)
        _fail_stale(study)  # (and one on another host, by the database's heartbeat)
        running = len(study.get_trials(deepcopy=False,
                                       states=(optuna.trial.TrialState.RUNNING,)))
        n = min(k, budget - n_counted(study) - running)
        if n < 1:  # the last trials run elsewhere: wait for them (or their failure); asking
            time.sleep(1.0)  # here added an 'overflow' FAIL trial every second
            continue
        with warnings.catch_warnings():  # (the batch records its own heartbeats, below)
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            asked = [study.ask() for _ in range(n)]
        trials = []
        for t in asked:
            if counted_before(study, t.number) >= budget:  # (`hetq worker`s run trials too)
                t.set_user_attr("overflow", True)
                study.tell(t, state=optuna.trial.TrialState.FAIL)
            else:
                trials.append(t)
        if not trials:
            continue
        with contextlib.ExitStack() as beats:  # a database's heartbeat for each trial: a
            # batch whose process died is failed and retried from any host (without it, a
            # resume on another host waited for its RUNNING trials for ever)
            for t in trials:
                beats.enter_context(get_heartbeat_thread(t._trial_id, study._storage))
            outcomes = _run_batch(study, ctx, trials, finish, on_trial_end, progress)
        for failed in outcomes:
            ran += 1
            failures = failures + 1 if failed else 0
    return ran


def _run_batch(study, ctx, trials, finish, on_trial_end, progress=False) -> list[bool]:
    """Train `trials` as one population and tell each its result; whether each failed.
    Ctrl-C or a file-system error at any point queues the trials not yet told again (those
    of the evaluation phase were left RUNNING: a rerun in the same process, a notebook's,
    then waited for them for ever)."""
    from ..train import evaluate
    from ..train.population import ReportFailed, fit_population

    cfg = ctx.config
    cands, models, outcomes = [], [], []

    def report(j, epoch, val):
        if cfg.objective == "pareto" or not math.isfinite(val.get(cfg.metric, math.nan)):
            return False  # Optuna prunes single objectives only
        try:
            trials[j].report(float(val[cfg.metric]), epoch)
            return trials[j].should_prune()
        except Exception as e:  # the database gone (after the storage's retries): the
            if transient(e):  # search's error, as in a single trial; it stopped the member
                raise ReportFailed(storage_lost(e)) from e  # as pruned, and so the batch
            raise

    try:
        for t in trials:
            for key, v in worker_identity().items():
                t.set_user_attr(key, v)
            c = ctx.space.suggest(t)
            t.set_user_attr("candidate", c.to_dict())
            cands.append(c)
            torch.manual_seed(cfg.seed + seed_number(t))  # (as `run_candidate` does)
            models.append(build_candidate(ctx.float_model, c))
        res = fit_population(models, ctx.data, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, lr=[c.lr or cfg.lr for c in cands],
                             seed=cfg.seed, report=report,
                             sparsity=[c.sparsity or None for c in cands],
                             device=cfg.device, progress=progress)
    except (KeyboardInterrupt, OSError, ReportFailed):  # Ctrl-C, a full disk, the database
        # gone: the batch is queued again
        retry_all_later(study, trials)
        raise
    except BaseException:  # an error of the batch itself fails its trials (they were
        with deferred_signals(signal.SIGINT, signal.SIGTERM), \
                contextlib.suppress(OSError):  # left RUNNING for good)
            for t in trials:
                study.tell(t, state=optuna.trial.TrialState.FAIL)
        raise
    try:
        for t, c, m, r in zip(trials, cands, models, res):
            if r.stopped_by_report:
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
                outcomes.append(False)
            elif r.diverged:  # as `fit` raising FloatingPointError in a single trial
                t.set_user_attr("error", "training diverged (non-finite loss)")
                study.tell(t, state=optuna.trial.TrialState.FAIL)
                outcomes.append(True)
            else:
                try:  # (as a single trial's error: that trial fails, the search goes on)
                    metrics = {"val": evaluate(m, ctx.data, split="val", device="cpu"),
                               "test": evaluate(m, ctx.data, split="test", device="cpu")}
                    values = finish(t, c, m, metrics, measure_costs(m, cfg, ctx.data))
                except TRIAL_ERRORS as e:
                    t.set_user_attr("error", f"{type(e).__name__}: {e}")
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                    outcomes.append(True)
                else:
                    study.tell(t, values)
                    outcomes.append(False)
            if on_trial_end is not None:
                # (not study.trials[...]: that deep-copies every trial of the study)
                on_trial_end(study, study.get_trials(deepcopy=False)[t.number])
    except (KeyboardInterrupt, OSError):  # the trials not told yet: queued again
        now = study.get_trials(deepcopy=False)
        retry_all_later(study, [t for t in trials
                                if now[t.number].state == optuna.trial.TrialState.RUNNING])
        raise
    return outcomes


def _check_population(config: SearchConfig) -> None:
    import copy

    from ..models import build as build_model
    from ..train.population.layers import Population

    model = build_model(config.model, **config.model_kwargs)
    try:
        Population([model, copy.deepcopy(model)])
    except ValueError as e:
        raise ValueError(f"--population {config.population}: {e}; use --population 1 "
                         "with this model") from None


def _save_trial_checkpoint(ctx, number, model, candidate, metrics, costs):
    from ..train.checkpoint import save

    path = trial_path(ctx.out, ctx.config.study_name, number)
    save(path, model, model_name=ctx.config.model, model_kwargs=model_kwargs(ctx.config, ctx.data),
         quant_config=candidate.quant_config, widths=candidate.widths, data=ctx.data,
         metrics={**metrics, "costs": costs})


def _constraints_func(trial: optuna.trial.FrozenTrial):
    return trial.user_attrs.get("constraint", [1.0])


# -- studies ----------------------------------------------------------------------------------
def sampler_seed(seed: int | None, n_trials: int, stream: int) -> int | None:
    """The sampler seed of a process joining a study that holds `n_trials` trials: `seed`
    itself for a fresh study's first process (stream 0), so a search is reproducible; else
    one drawn from (seed, n_trials, stream). Every process that opens a study makes its own
    sampler; with the same seed, worker processes drew the same random configurations side
    by side, and a resumed search trained its first configurations again."""
    if seed is None or (n_trials == 0 and stream == 0):
        return seed
    return int(np.random.SeedSequence([seed, n_trials, stream]).generate_state(1)[0])


def open_study(config: SearchConfig, out: Path, storage: str | None, create: bool = True,
               stream: int = 0, search_space: dict | None = None):
    """The search's study (created if `create`), with its sampler seeded by `sampler_seed`:
    `stream` tells apart the processes that work on it (0: the search's own, i: its i-th
    worker process, a random one for `hetq worker` elsewhere). search_space: the Optuna
    distributions of the space, which the grid sampler needs."""
    quiet_optuna()
    st = make_storage(storage, out)
    directions = ["maximize", "minimize"] if config.objective == "pareto" else ["maximize"]
    active = Constraints(config.min_reduction, config.max_metric_loss).active

    def sampler(seed):  # (TPE handles several objectives too; nsga2 is the classic choice)
        return make_sampler(config.sampler, seed, config.objective == "pareto",
                            constraints_func=_constraints_func if active else None,
                            search_space=search_space, trials=config.trials)

    pruner = make_pruner(config.pruner, config.epochs)
    if create:
        study = optuna.create_study(storage=st, study_name=config.study_name,
                                    directions=directions, sampler=sampler(config.seed),
                                    pruner=pruner, load_if_exists=True)
        if _study_settings(study, config, storage, out):  # new, or other --trials: what
            study.set_user_attr("hetq_config", config.to_dict())  # its workers read
    else:
        try:
            study = optuna.load_study(study_name=config.study_name, storage=st,
                                      sampler=sampler(config.seed), pruner=pruner)
        except KeyError:
            raise ValueError(f"no study named {config.study_name!r} in {storage or out}") \
                from None
    seed = sampler_seed(config.seed, len(study.get_trials(deepcopy=False)), stream)
    if seed != config.seed:
        study.sampler = sampler(seed)
    return study


class OtherSettings(ValueError):
    """A run folder or study holds a search with other settings. `changes` maps each setting
    (a SearchConfig field) to (its value there, its value here); `render(name)` gives the
    message with every setting named by `name(field)` and its values written by `value`
    (the command line: its options, as typed)."""

    def __init__(self, template: str, changes: dict[str, tuple[Any, Any]],
                 item: str = "{name}: {old}, now {new}"):
        self.template, self.changes, self.item = template, dict(changes), item
        super().__init__(self.render())

    def render(self, name=str, value=repr) -> str:
        def brief(v) -> str:
            r = value(v)
            return r if len(r) <= 60 else r[:57] + "..."

        items = ", ".join(self.item.format(name=name(k), old=brief(old), new=brief(new))
                          for k, (old, new) in self.changes.items())
        return self.template.replace("{settings}", items)


def _changes(old: dict[str, Any], config: SearchConfig,
             skip: tuple[str, ...] = ("trials",)) -> dict[str, tuple[Any, Any]]:
    """{setting: (value in `old`, value in `config`)} for each that differs (as stored),
    leaving out `skip` (a resumed search may ask for more --trials)."""
    new = json.loads(json.dumps(config.to_dict()))
    return {k: (old.get(k), new.get(k)) for k in _differences(old, new) if k not in skip}


def _study_settings(study: optuna.Study, config: SearchConfig, storage: str | None,
                    out: Path) -> list[str]:
    """The settings in which `config` differs from those `study` was made with (["new"] for
    a study without them). Anything but --trials is refused: two searches that share a
    --storage and --study mixed their trials (and references) in one front."""
    stored = study.user_attrs.get("hetq_config")
    if stored is None:
        return ["new"]
    other = _changes(stored, config)
    if other:
        raise OtherSettings(
            f"study {study.study_name!r} in {redact(storage) if storage else out} was made by "
            "a search with other settings ({settings}); give another --study, or the same "
            "settings to resume it (--trials may change)", other)
    return _differences(stored, config.to_dict())


def check_study_settings(config: SearchConfig, out: Path, storage: str | None) -> None:
    """`_study_settings` before any work, for a study that exists already."""
    if storage is None and not journal_path(out).exists():
        return
    quiet_optuna()
    try:
        study = optuna.load_study(study_name=config.study_name,
                                  storage=make_storage(storage, out))
    except KeyError:
        return
    _study_settings(study, config, storage, out)


def data_fingerprint(data) -> str:
    """A digest of the data a search trains and scores on (every split, as loaded)."""
    import hashlib

    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        for a in data.split(split):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def check_data(study: optuna.Study, ctx: SearchContext) -> None:
    """The study's trials all see the same data: a resumed search or a worker elsewhere that
    reads other data under the same --data (a relative path from another folder, a file
    changed since) is refused; its trials were mixed into the front unnoticed."""
    digest = data_fingerprint(ctx.data)
    stored = study.user_attrs.get("data_fingerprint")
    if stored is None:
        study.set_user_attr("data_fingerprint", digest)
    elif stored != digest:
        raise ValueError(f"--data {ctx.config.data}: these data differ from those study "
                         f"{study.study_name!r} was started with (a relative path read from "
                         "another folder, or a file changed since?); give the same data, or "
                         "start another search (--out, --study)")


class Progress:
    """Prints `trial n/N | best so far | ETA` after every finished trial."""

    def __init__(self, ctx: SearchContext, budget: int, enabled: bool = True):
        self.ctx, self.budget, self.enabled = ctx, budget, enabled
        self.t0 = time.monotonic()
        self.start_done = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial):
        if not self.enabled or trial.user_attrs.get("overflow"):
            return
        done = n_counted(study)
        if self.start_done is None:
            self.start_done = done - 1
        ran = max(1, done - self.start_done)
        rate = (time.monotonic() - self.t0) / ran
        eta = max(0, self.budget - done) * rate
        m = trial.user_attrs.get("metrics", {}).get("val", {}).get(self.ctx.config.metric)
        c = trial.user_attrs.get("costs", {}).get(self.ctx.goal_key)
        state = trial.state.name.lower()
        best = _best_line(study, self.ctx)
        line = f"trial {done}/{self.budget} #{trial.number} {state}"
        if m is not None and c is not None:
            line += (f" val {self.ctx.config.metric}={m:.4f} "
                     f"{self.ctx.config.goal}={_fmt_cost(c)}")
        print(f"{line} | best: {best} | ETA {eta:.0f}s", flush=True)


def _fmt_cost(v: float) -> str:
    return f"{v:.4g}"


def _best_line(study, ctx) -> str:
    done = [t for t in study.get_trials(deepcopy=False,
                                        states=(optuna.trial.TrialState.COMPLETE,))]
    if not done:
        return "-"
    # of the trials that meet --min-reduction / --max-loss, as the table and --trial best
    # (the line named a best that no constraint allowed)
    ok = [t for t in done if t.user_attrs.get("feasible") is not False]
    if not ok:
        return "none meets the constraints yet"
    if ctx.config.objective == "pareto":  # (study.best_trials deep-copies every trial: a
        # progress line per trial then grew with the square of the trials, 1 s at 5,000)
        from .objectives import pareto_front
        return f"{len(pareto_front([tuple(t.values) for t in ok]))} on the front"
    t = block_best(ok, ctx.config.objective)
    return f"#{t.number} score={t.value:.4f}"


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The names of the settings whose values differ, compared as the study stores them
    (JSON: tuples become lists)."""
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def folder_changes(config: SearchConfig, out: Path,
                   skip: tuple[str, ...] = ("trials",)) -> dict[str, tuple[Any, Any]]:
    """{setting: (value in the run folder's search.yaml, in `config`)} for each that
    differs, but `skip` ({} when there is no search.yaml yet)."""
    path = out / "search.yaml"
    return _changes(SearchConfig.load(path).to_dict(), config, skip) if path.exists() else {}


def start_run(config: SearchConfig, out: Path, progress: bool = True,
              storage: str | None = None) -> SearchContext:
    """Record `config` as the run folder's search.yaml (and a database `storage`'s URL) and
    build the context (the float model). If that fails in a folder that held no run before
    (a bad metric, data that cannot be read, Ctrl-C during the float training), what it
    wrote is removed again, so that the corrected command is not refused as "other
    settings"."""
    fresh = not (out / "search.yaml").exists()
    had_float = (out / "float.pt").exists()
    config.save(out / "search.yaml")
    record_run_storage(out, storage)
    try:
        return build_context(config, out, progress)
    except BaseException as e:
        # (a setting refused once the float model is trained: the corrected command was
        # "other settings"; the float model it trained goes too, as its settings were these)
        if fresh and isinstance(e, RefusedAfterFloat) and not had_float:
            (out / "float.pt").unlink(missing_ok=True)
        if fresh and not (out / "float.pt").exists():
            (out / "search.yaml").unlink(missing_ok=True)
            (out / STORAGE_FILE).unlink(missing_ok=True)
        raise


@keeps_global_rng
def run_search(config: SearchConfig, out: str | Path, storage: str | None = None,
               workers: int = 1, progress: bool = True,
               devices: list[str] | None = None) -> optuna.Study:
    """Run (or resume) a search; several local worker processes with `workers` > 1, spread
    round-robin over the CUDA `devices` (ids) when given."""
    if not isinstance(config, SearchConfig):
        raise ValueError(f"run_search needs a SearchConfig (e.g. hetq.SearchConfig(trials=8), "
                         f"or SearchConfig.from_dict(d) for a dict); got "
                         f"{type(config).__name__}")
    if config.strategy == "gradient":  # (it used to run an Optuna search under that name)
        raise ValueError("run_search runs the optuna and hessian strategies; strategy="
                         "'gradient' is run by hetq.search.gradient.run_gradient_strategy("
                         "config, out), as `hetq search --strategy gradient` does")
    if workers > 1 and config.blocks:  # (it was said after the float training)
        raise ValueError("block-wise search runs with one worker per block; use --workers 1")
    if workers > 1 and config.population > 1:
        raise ValueError(f"population training (--population {config.population}) trains its "
                         "batches in one process; use --workers 1 with it")
    out = Path(out)  # (made by the lock, which removes it again if the checks refuse)
    # the checks and the setup (float model, study) one process at a time: a second search
    # started meanwhile with other settings passed the checks, then replaced float.pt (and
    # search.yaml) before the study refused it; one with the same settings now waits, then
    # shares the study (as a worker does)
    with folder_lock(out, wait=True):
        other = folder_changes(config, out)
        if other:  # (a resumed search may ask for more trials)
            raise OtherSettings(f"{out} holds a search with other settings ({{settings}}); use "
                                "another --out, or the same settings to resume (--trials may "
                                "change)", other)
        warm = []  # (folder, its front), read before the float model is trained and recorded
        for folder in config.warm_start:
            try:
                warm.append((folder, _warm_rows(folder, storage)))
            except ValueError as e:
                raise ValueError(f"--warm-start {folder}: {e}") from None
        if config.strategy != "gradient":  # a bad or missing device: before the float training
            from ..train.loop import resolve_device

            resolve_device(config.device)
        if config.population > 1:  # a model population training cannot stack: before it, too
            _check_population(config)
        check_run_storage(out, storage)
        if not config.blocks:  # (a bad URL or an unreachable server, too: before any training)
            check_study_settings(config, out, storage)
        elif storage is not None:
            make_storage(storage, out)
        ctx = start_run(config, out, progress, storage)
        if config.blocks:
            return _run_blocks(config, ctx, out, storage, workers, progress)
        study = open_study(config, out, storage, search_space=ctx.space.distributions())
        check_data(study, ctx)
        study.set_user_attr("reference", ctx.reference)
        _seed_warm_start(study, ctx, warm, progress)
        _seed_hessian_prior(study, ctx, progress)
    done = n_counted(study)
    if progress and done >= config.trials:  # (a rerun with fewer --trials)
        print(f"the study already has {done} finished trials (--trials {config.trials}): "
              "nothing to run", flush=True)
    elif progress and done:
        print(f"resuming: {done}/{config.trials} trials already done", flush=True)
    if workers <= 1 and config.population > 1:
        run_population_worker(study, ctx, config.trials, config.population,
                              on_trial_end=Progress(ctx, config.trials, progress),
                              progress=progress)
    elif workers <= 1:
        run_worker(study, make_objective(ctx), config.trials,
                   on_trial_end=Progress(ctx, config.trials, progress),
                   recover=recover_dead_trials)
    else:
        left = max(config.trials - done, 0)
        if workers > max(left, 1):  # (--workers 1000 for one trial started 1000 processes)
            print(f"note: --workers {workers} for {left} trials left: starting "
                  f"{max(left, 1)}", file=sys.stderr, flush=True)
            workers = max(left, 1)
        codes = _spawn_workers(config, out, storage, workers, progress, devices, study=study)
        if any(codes):
            done = n_counted(study)
            if done < config.trials:
                raise SearchFailed(f"search workers exited with codes {codes} (their "
                                   f"messages are above); {done} of {config.trials} trials "
                                   "done, rerun the same command to go on")
            print(f"note: search workers exited with codes {codes}; the others finished all "
                  f"{config.trials} trials (a killed worker's trial was run again)",
                  file=sys.stderr, flush=True)
    return study


def _goal_share(lc, goal: str) -> float:
    """A layer's cost in `goal`'s terms (energy pJ, bits, EBOPs or LUTs)."""
    if goal == "bits":
        return float(lc.param_bits + lc.act_bits)
    if goal == "ebops":
        return float(lc.ebops)
    if goal == "lut":
        return float(lc.fpga.get("lut", 0.0))
    return float(lc.total)


def _run_blocks(config, ctx, out, storage, workers, progress):
    import dataclasses

    from ..cost import cost
    from .blocks import BlockView, Scheduler, schedule

    # each layer's share of the reference cost in the searched goal (it was energy whatever
    # --goal, as AutoQKeras weighs blocks by the goal's own cost), with the search's inputs
    ref = cost(ctx.float_model, reference=config.reference,
               source_quantizer=config.source_quantizer)
    per_layer = {lc.name: _goal_share(lc, config.goal) for lc in ref.layers}
    plan = schedule(ctx.space, config.blocks, config.schedule_block, per_layer, config.trials)
    sched = Scheduler(out)
    if sched.state["next_block"] >= len(plan) and progress:
        print(f"note: the block-wise search in {out} has finished all {len(plan)} blocks; "
              "more --trials do not reopen them (each froze its best configuration for the "
              "next); use another --out for a new search", flush=True)
    study = None
    full_space = ctx.space
    # a layer no block matches is searched in none: it stays float (it used to get the first
    # candidate of each of its quantizers, unsearched)
    unmatched = {s.name for s in full_space.slots} - {n for b in plan for n in b["layers"]}
    if unmatched and progress:
        print(f"note: layers {sorted(unmatched)} match no --blocks regex: they stay float "
              "(unquantized); give a block for them to search their quantizers", flush=True)
    for k, block in enumerate(plan):
        name = f"{config.study_name}_block{block['index']}"
        later = {n for b in plan[k + 1:] for n in b["layers"]} | unmatched
        ctx.space = BlockView(full_space, set(block["params"]), dict(sched.state["frozen"]),
                              later)
        # a block with nothing to search (each field one choice) trains its one
        # configuration once (it trained it block["trials"] times)
        n_trials = block["trials"] if block["params"] else 1
        bcfg = dataclasses.replace(config, study_name=name, trials=n_trials, blocks=None)
        finished = k < sched.state["next_block"]  # (in an earlier run: its settings stay)
        study = open_study(bcfg, out, storage, create=not finished,
                           search_space=ctx.space.distributions())
        check_data(study, ctx)
        if finished:
            continue
        study.set_user_attr("reference", ctx.reference)
        study.set_user_attr("hetq_block", block["index"])  # (`hetq worker` cannot join it)
        sched.state["current_study"] = name  # (what `hetq report` shows until it finishes)
        sched.save()
        if progress:
            print(f"block {k + 1}/{len(plan)} {block['pattern']!r}: layers {block['layers']}, "
                  + (f"{n_trials} trials" if block["params"] else
                     "nothing to search (each field has one choice): 1 trial"), flush=True)
        bctx = dataclasses.replace(ctx, config=bcfg)
        if workers <= 1:
            run_worker(study, make_objective(bctx), bcfg.trials,
                       on_trial_end=Progress(bctx, bcfg.trials, progress),
                       recover=recover_dead_trials)
        else:
            raise ValueError("block-wise search runs with one worker per block; use --workers 1")
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not done:
            raise RuntimeError(f"block {block['pattern']!r} finished no trial")
        best = block_best(done, config.objective)
        sched.state["frozen"].update({n: best.params[n] for n in block["params"]
                                      if n in best.params})
        sched.state["next_block"] = k + 1
        sched.state["final_study"] = name
        sched.save()
    ctx.space = full_space
    return study


def block_best(done: list, objective: str):
    """The trial a finished block freezes: the best (score, or the metric of a Pareto search)
    of those that meet --min-reduction / --max-loss, as --trial best picks; the best of all
    froze one that misses them, and then no later block's trial met them."""
    pool = [t for t in done if t.user_attrs.get("feasible") is not False] or done
    return max(pool, key=lambda t: t.value if objective != "pareto" else t.values[0])


def _spawn_workers(config, out, storage, workers, progress, devices=None, study=None):
    cmd = [sys.executable, "-m", "hetq.search.worker", "--out", str(out), "--study",
           config.study_name]
    if storage:
        cmd += ["--storage", storage]
    if not progress:
        cmd.append("--no-progress")
    procs = []
    for i in range(workers):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HETQ_WORKER_INDEX": str(i + 1),
               "HETQ_PARENT_PID": str(os.getpid())}  # (a worker dies with its search)
        if devices:
            env["HETQ_DEVICE"] = f"cuda:{devices[i % len(devices)]}"
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        # the workers' trials were interrupted, as a single process's are, not killed: they
        # are queued again without a death (a resume took them for dead workers', and after
        # three stops a configuration was dropped as 'out of memory?')
        with deferred_signals(signal.SIGINT, signal.SIGTERM):
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=30)
            if study is not None:
                ours, here = {p.pid for p in procs}, worker_identity()["host"]
                with contextlib.suppress(Exception):  # (a database gone: the resume's)
                    retry_all_later(study, [
                        t for t in study.get_trials(
                            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                        if t.user_attrs.get("pid") in ours
                        and t.user_attrs.get("host") == here])
        raise


def default_study(out: str | Path | None, storage: str | None) -> str:
    """The study a `hetq worker` without --study joins: the one the run folder `out` records
    (its search.yaml), else the only one in `storage`; a ValueError names the choices."""
    if out and (Path(out) / "search.yaml").exists():
        config = SearchConfig.load(Path(out) / "search.yaml")
        if config.blocks:  # (its studies are NAME_block<N>: 'no study NAME' was said)
            raise ValueError(f"{out} is a block-wise search, which searches its blocks one "
                             "after another within its own `hetq search`; a worker cannot "
                             "join it")
        return config.study_name
    check_storage_exists(storage)
    if storage is None:
        if out:  # (it said "give --out the search's run folder", --out given)
            raise ValueError(f"{out} holds no search (no search.yaml): give --out the "
                             "search's run folder, or --study NAME with the search's --storage")
        raise ValueError("give --study NAME, or --out the search's run folder (its search.yaml "
                         "names the study)")
    quiet_optuna()
    names = optuna.get_all_study_names(storage=make_storage(storage, out))
    # (a block-wise search's studies, NAME_block<N>, are not for workers)
    names = [n for n in names if not re.fullmatch(r".*_block\d+", n)] or names
    if len(names) == 1:
        return names[0]
    where = redact(storage)
    if not names:
        raise ValueError(f"no study in {where}; start one with `hetq search --storage ...`")
    raise ValueError(f"{where} holds {len(names)} studies ({', '.join(sorted(names))}); give "
                     "--study NAME")


def run_worker_process(out: str | Path | None, study_name: str, storage: str | None,
                       progress: bool = True) -> int:
    """Join an existing study (`hetq worker`): its settings come from the study itself."""
    quiet_optuna()
    check_storage_exists(storage)
    hint = "start it with `hetq search` first"
    if not out and storage is None:  # the journal is in the search's folder
        hint += (f", or give the search's run folder with --out (without it the worker looks "
                 f"in runs/{study_name}; `hetq search` writes to runs/search unless given --out)")
    out = Path(out) if out else Path("runs") / study_name
    if is_gradient_run(out):
        raise ValueError(f"{out} is a gradient-strategy run: it trains within its own `hetq "
                         "search` (--runs processes), and has no study for workers to join")
    # (a search still setting up there, its float model say, is waited for: the worker said
    # there was no study)
    # (a search's own --workers wait for each other without a note: it read as a stranger)
    with folder_lock(out, wait=True, quiet=bool(os.environ.get("HETQ_WORKER_INDEX"))):
        study, ctx, config = _join(out, study_name, storage, hint)
    check_data(study, ctx)
    # this process's sampler stream: its index among a search's --workers, else random (a
    # machine of its own), so that no two workers draw the same configurations
    stream = int(os.environ.get("HETQ_WORKER_INDEX") or 0) or \
        int.from_bytes(os.urandom(4), "little") + 1000
    study = open_study(config, out, storage, create=False, stream=stream,
                       search_space=ctx.space.distributions())
    ran = run_worker(study, make_objective(ctx), config.trials,
                     on_trial_end=Progress(ctx, config.trials, progress),
                     recover=recover_dead_trials)
    done = n_counted(study)
    print(f"worker: ran {ran} trial{'s' * (ran != 1)} here; study {study_name!r} has {done} of "
          f"its {config.trials}" + (" (it was complete already)" if not ran else ""))
    return ran


def _join(out: Path, study_name: str, storage: str | None, hint: str):
    """(study, context, settings) of the study a worker joins, its run folder checked."""
    study = existing_study(study_name, storage, out, hint)
    if study.user_attrs.get("hetq_block") is not None:
        raise ValueError(f"study {study_name!r} is one block of a block-wise search, which "
                         "searches its blocks one after another within its own `hetq search` "
                         "(each with the earlier blocks' choices frozen); a worker cannot join "
                         "it")
    config = SearchConfig.from_dict(study.user_attrs["hetq_config"])
    if os.environ.get("HETQ_DEVICE"):  # this worker's GPU (hetq search --devices)
        import dataclasses

        config = dataclasses.replace(config, device=os.environ["HETQ_DEVICE"])
    from ..train.loop import resolve_device

    resolve_device(config.device)  # a device this machine lacks: one error, not failed trials
    _check_worker_folder(study, out, storage)
    return study, build_context(config, out, progress=False), config


def _check_worker_folder(study: optuna.Study, out: Path, storage: str | None) -> None:
    """A worker trains from its --out's float.pt: that must be the study's own float model.
    A folder of another search, or a float.pt with nothing to tell its settings, is refused
    (its trials trained from the wrong model, or failed at saving after training); an empty
    folder is made this study's."""
    config = SearchConfig.from_dict(study.user_attrs["hetq_config"])
    check_run_storage(out, storage)
    if (out / "search.yaml").exists():
        other = folder_changes(config, out)
        if other:
            raise OtherSettings(f"--out {out} holds a search with other settings than study "
                                f"{study.study_name!r} ({{settings}}); give that search's run "
                                "folder, or an empty one", other,
                                item="{name} {old} there, {new} in the study")
    elif (out / "float.pt").exists():
        raise ValueError(f"--out {out} holds a float.pt but no search.yaml, so nothing tells "
                         f"whether it is study {study.study_name!r}'s float model; give the "
                         "search's run folder, or an empty one")
    else:
        config.save(out / "search.yaml")
        record_run_storage(out, storage)


def _warm_rows(folder, storage: str | None) -> list[dict]:
    """The Pareto rows of a --warm-start run folder: its own journal, else its study in this
    search's `storage` (earlier searches in the same database)."""
    try:
        return pareto_rows(Path(folder))
    except ValueError:
        if storage is None:
            raise
        return pareto_rows(Path(folder), storage)


def _seed_warm_start(study, ctx, warm: list[tuple[str, list[dict]]], progress=True):
    """Enqueue the best configurations of earlier studies once: `warm` holds each
    --warm-start run folder with its Pareto rows (`_warm_rows`)."""
    if not warm or study.user_attrs.get("warm_started"):
        return
    n, seen = 0, set()
    for folder, rows in warm:
        k = offered = 0
        for row in rows[:5]:
            params = ctx.space.params_of(Candidate.from_dict(row["candidate"]))
            key = json.dumps(params, sort_keys=True)
            # the same configuration from two folders (one search given twice, a copy) was
            # trained twice; nothing this space offers is no warm start
            offered += bool(params)
            if params and key not in seen:
                seen.add(key)
                study.enqueue_trial(params, user_attrs={"warm_start": folder})
                k += 1
        n += k
        if progress:
            why = ("it has no completed trial" if not rows else
                   "its front's configurations hold nothing this search offers"
                   if not offered else
                   "its front's configurations are queued already (a folder given twice?)"
                   if not k else "")
            print(f"note: --warm-start {folder}: {why}; it adds no trial" if why else
                  f"warm start: {k} configuration{'s' * (k != 1)} of {folder}'s front "
                  "queued first", flush=True)
    study.set_user_attr("warm_started", n)


def _seed_hessian_prior(study, ctx, progress):
    """Enqueue the Hessian ILP configurations once (prior 'hessian' or strategy 'hessian')."""
    cfg = ctx.config
    if not (cfg.prior == "hessian" or cfg.strategy == "hessian") or \
            study.user_attrs.get("hessian_prior") is not None:
        return
    from .hessian import hessian_prior
    from .hessian.traces import TRACE_TOL

    goal = cfg.goal if cfg.goal in ("energy", "bits", "ebops", "lut") else "energy"
    # the costs as the trials are costed (`measure_costs`: a layer left float as in the
    # reference); with --min-reduction, budgets above its cost limit would be infeasible
    limit = None
    if cfg.min_reduction is not None and goal == cfg.goal:
        limit = ctx.reference["costs"][ctx.goal_key] / float(cfg.min_reduction)
    pr = hessian_prior(ctx.space, ctx.float_model, ctx.data, goal=goal, n=cfg.prior_configs,
                       seed=cfg.seed, max_cost=limit, source_quantizer=cfg.source_quantizer,
                       float_as=cfg.reference)
    for params, a in zip(pr.params, pr.allocations):
        budget = float(a.budget) if math.isfinite(a.budget) else None
        study.enqueue_trial(dict(params), user_attrs={"hessian_budget": budget,
                                                      "hessian_omega": float(a.omega)})
    tr = pr.traces
    study.set_user_attr("hessian_prior", {"configs": len(pr.allocations),
                                          "seconds": pr.seconds,
                                          "trace_iterations": tr.iterations,
                                          "traces_converged": tr.converged})
    if progress:
        t = ", ".join(f"{k} {v:.1f} s" for k, v in pr.seconds.items())
        k = len(pr.allocations)
        print(f"Hessian prior: {k} ILP configuration{'s' * (k != 1)} enqueued ({t}); "
              f"traces from {tr.iterations} Hutchinson samples"
              + ("" if tr.converged else " (the limit; some standard errors are still "
                 f"above {TRACE_TOL:.0%})")
              + (f"; within --min-reduction's cost limit {limit:.4g}" if limit else ""),
              flush=True)
        if k == 0:  # (the trials were --sampler's, unsaid)
            print(f"note: no configuration of the space fits "
                  f"{'--min-reduction' if limit else 'the cost budgets'}; every trial is "
                  f"drawn by --sampler {cfg.sampler}", flush=True)
        if k > cfg.trials:
            print(f"note: --trials {cfg.trials} trains only the first {cfg.trials} of them; "
                  "the others stay queued in the study for a resumed search with more "
                  "--trials", flush=True)
