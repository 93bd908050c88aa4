"""The results of a search run folder: its settings and study, the Pareto rows, a trial's
trained model, and the table `hetq search` and `hetq report` print."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna

from ..cli import sh
from ..files import lock_holder
from .build import build_candidate
from .config import SearchConfig
from .objectives import COST_KEYS
from .space import Candidate
from .storage import (
    check_run_storage,
    existing_study,
    quiet_optuna,
    resume_advice,
    trial_path,
    unpack_state,
)


def is_gradient_run(out: str | Path) -> bool:
    """Whether `out` holds a gradient-strategy search: front point files, no study."""
    path = Path(out) / "search.yaml"
    return path.exists() and SearchConfig.load(path).strategy == "gradient"


def gradient_run_error(out: str | Path) -> ValueError:
    """What a command that needs trials says of a gradient-strategy run folder."""
    out = Path(out)
    return ValueError(f"{out} is a gradient-strategy run: it has no trials, but front points "
                      f"{out / 'gradient' / 'point_NNN.pt'} (`hetq report {sh(out)}` lists them; "
                      "`hetq export`, `hetq evaluate` and `hetq cost` take one of those files; "
                      "there is nothing to retrain: the strategy fine-tunes them at their "
                      "bits itself, --polish-epochs)")


def load_run(out: str | Path, storage: str | None = None):
    """(SearchConfig, optuna.Study) of the run folder `out` (the study in `storage` when the
    search ran with one; the last block's study for a block-wise search)."""
    out = Path(out)
    if not (out / "search.yaml").exists():
        if (out / "study.journal").exists():  # (the settings file was removed)
            raise ValueError(f"{out} has a study (study.journal) but no search.yaml, the "
                             "settings it was run with; restore it (or rerun the same `hetq "
                             f"search --out {sh(out)}` command, which writes it again)")
        raise ValueError(f"{out} is not a search run folder (no search.yaml)")
    config = SearchConfig.load(out / "search.yaml")
    if config.strategy == "gradient":
        raise gradient_run_error(out)
    check_run_storage(out, storage, reading=True)
    quiet_optuna()
    name = config.study_name
    hint = ("if the search ran with --storage, give the same --storage" if storage is None
            else "check --storage")
    busy = lock_holder(out)
    if busy:  # (it said there was no study while the search trained its float model)
        hint = (f"the search in {out} is still setting up ({busy}: its float model, say); "
                "try again once its trials have started")
    if config.blocks and (out / "scheduler.json").exists():  # block-wise: the last block's study
        import json

        state = json.loads((out / "scheduler.json").read_text())
        current, final = state.get("current_study"), state.get("final_study")
        if current and current != final:  # a block under way (interrupted, or running)
            study = existing_study(current, storage, out, hint)
            if final is None or study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                return config, study  # (its trials are whole models: the earlier blocks'
        name = final or name                 # choices frozen in them)
    study = existing_study(name, storage, out, hint)
    if not config.blocks:
        _check_settings_file(out, config, study)
    return config, study


def _check_settings_file(out: Path, config: SearchConfig, study: optuna.Study) -> None:
    """search.yaml must hold the settings the study was made with: a damaged one (cut
    short, edited) was filled with defaults, and the report recomputed the front on energy
    for an EBOPs search, retrain trained on other data."""
    from .driver import OtherSettings, _changes

    stored = study.user_attrs.get("hetq_config")
    # (settings the study does not record, fields newer than the hetq that made it, are not
    # held against it: such a run was read before)
    other = {k: v for k, v in _changes(stored, config).items() if k in stored} \
        if stored is not None else {}
    if other:
        raise OtherSettings(
            f"{out / 'search.yaml'} differs from the settings its study was made with "
            "({settings}); restore it (rerunning the same `hetq search` command writes it "
            "again)", other, item="{name}: {new} in the file, {old} in the study")


def pareto_rows(out: str | Path, storage: str | None = None) -> list[dict[str, Any]]:
    """Rows of the (metric, cost) Pareto front of finished trials, cheapest first."""
    return front_rows(*load_run(out, storage))


def front_rows(config: SearchConfig, study: optuna.Study) -> list[dict[str, Any]]:
    """`pareto_rows` of a run already loaded (`load_run`): each load reads the whole study."""
    from .objectives import pareto_front

    goal_key = COST_KEYS[config.goal]
    trials = [t for t in study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.COMPLETE,))
              if "costs" in t.user_attrs]
    # with --min-reduction / --max-loss, the front of the trials that meet them (rows of
    # infeasible trials, feasible False, only when none does)
    feasible = [t for t in trials if t.user_attrs.get("feasible") is not False]
    trials = feasible or trials
    pts = [(t.user_attrs["metrics"]["val"][config.metric], t.user_attrs["costs"][goal_key])
           for t in trials]
    rows = []
    for i in pareto_front(pts):
        t = trials[i]
        rows.append({"trial": t.number, "metrics": t.user_attrs["metrics"],
                     "costs": t.user_attrs["costs"], "candidate": t.user_attrs["candidate"],
                     "score": t.user_attrs.get("score"), "feasible": t.user_attrs.get("feasible")})
    return rows


def trial_number(study: optuna.Study, trial: str | int, out: str | Path) -> int:
    """The trial of `study` (the run folder `out`'s, from `load_run`) that `--trial` names: a
    number, or 'best' (the single best trial; a Pareto search has none, so its front's trials
    are listed)."""
    if isinstance(trial, str) and trial.strip().lower() == "best":  # (BEST was refused)
        trial = "best"
    if trial != "best":
        if isinstance(trial, float) and not trial.is_integer():
            raise ValueError(f"--trial must be a number or 'best', got {trial!r}")
        try:
            return int(trial)
        except (TypeError, ValueError):
            raise ValueError(f"--trial must be a number or 'best', got {trial!r}") from None
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        raise ValueError(f"{out}: no trial has completed yet, so there is no best one "
                         f"({resume_advice(study)})")
    if not any(t.user_attrs.get("feasible") is not False for t in done):
        raise ValueError(f"{out}: no completed trial meets the search's constraints "
                         "(--min-reduction / --max-loss), so there is no best one; give "
                         f"--trial N (`hetq report {sh(out)}` lists the front of the others)")
    if len(study.directions) > 1:  # a Pareto search: a front, not one best
        from .objectives import pareto_front

        # (of the trials that meet the constraints, as the table's: it listed one that
        # misses them)
        ok = [t for t in done if t.user_attrs.get("feasible") is not False]
        front = sorted(ok[i].number for i in pareto_front([tuple(t.values) for t in ok]))
        raise ValueError(f"{out} is a Pareto search: no single best trial; give a trial "
                         f"number (--trial N), one of its front's trials {front} (`hetq "
                         f"report {sh(out)}` shows their metrics and costs)")
    # the best of the trials that meet the constraints, as the table marks it and a block
    # freezes it: Optuna's best_trial knows them only through a sampler's constraints_func,
    # which the random and grid samplers lack (retrain took a trial of 7.1x under
    # --min-reduction 10)
    from .driver import block_best

    return block_best(done, "forgiving").number  # (the one single objective)


def trial_model(out: str | Path, number: int | str, storage: str | None = None):
    """The trained model of trial `number` (from its checkpoint, else from the study);
    "best" (as `hetq export --trial best`): the single best trial."""
    config, study = load_run(out, storage)
    return study_trial_model(out, config, study, trial_number(study, number, out))


def study_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """Trial `number` of `study`, read-only (not `study.trials[number]`, which deep-copies
    every trial: seconds at 10,000 trials), or a ValueError naming the trials there are."""
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise ValueError(f"trial {number} does not exist (the study has trials 0 to "
                         f"{len(trials) - 1})" if trials else
                         f"trial {number} does not exist (the study has no trials yet)")
    return trials[number]


def study_trial_model(out: str | Path, config: SearchConfig, study: optuna.Study,
                      number: int):
    """`trial_model` with the run's config and study already loaded (`load_run`)."""
    from ..train.checkpoint import load

    t = study_trial(study, number)
    path = trial_path(out, study.study_name, number)
    if path.exists():
        try:
            return load(path)
        except ValueError as e:  # (a copy cut short): the study holds the weights as well
            if "weights" not in t.user_attrs:
                raise
            import warnings

            warnings.warn(f"{e}; trial {number}'s weights are taken from the study instead",
                          stacklevel=2)
    if "weights" not in t.user_attrs:
        raise ValueError(f"trial {number} has no stored weights (state {t.state.name})")
    from ..models import build as build_model
    from ..train.checkpoint import read

    cand = Candidate.from_dict(t.user_attrs["candidate"])
    # (as the float model was built: its size follows the data)
    float_path = Path(out) / "float.pt"
    kwargs = read(float_path).get("model_kwargs") if float_path.exists() else None
    model = build_candidate(build_model(config.model, **(kwargs or config.model_kwargs)), cand)
    model.load_state_dict(unpack_state(t.user_attrs["weights"]))
    return model.eval()


def constraint_options(config: SearchConfig) -> str:
    """The search's hard constraints as options, e.g. '--min-reduction 40' ('' for none)."""
    return ", ".join(f"{opt} {v:g}" for opt, v in (
        ("--min-reduction", config.min_reduction), ("--max-loss", config.max_metric_loss))
        if v is not None)


def format_table(rows: list[dict[str, Any]], config: SearchConfig,
                 reference: dict | None = None) -> str:
    """The Pareto table: metric, energy, bits, EBOPs, LUT/DSP and each layer's quantizers;
    with the forgiving factor also each trial's score, the best (`--trial best`) marked."""
    forgiving = config.objective == "forgiving"
    # the test column shows the searched metric too (with --metric auc_mean it showed test
    # accuracy beside validation auc_mean)
    metric = config.metric
    test_head = "test acc" if metric == "accuracy" else "test " + metric
    tw = max(8, len(test_head))
    vw = max(13, len("val " + metric))  # (a long metric name pushed the header out of line)
    head = (f"{'trial':>5}  {'score':>7}  " if forgiving else f"{'trial':>5}  ") + (
        f"{'val ' + metric:>{vw}}  {test_head:>{tw}}  {'energy pJ':>9}  "
        f"{'bits':>8}  {'EBOPs':>8}  {'LUT':>7}  {'DSP':>5}  quantizers")
    lines = [head, "-" * len(head)]
    scores = [r["score"] for r in rows if r.get("score") is not None
              and r.get("feasible") is not False]
    best = max(scores) if forgiving and scores else None

    def fmt(label, metrics, costs, quant, score=None):
        if forgiving:
            mark = "*" if best is not None and score == best else ""
            label = f"{f'{label}{mark}':>5}  " + (f"{score:7.4f}" if score is not None
                                                 else f"{'':>7}")
        return (f"{label:>5}  {metrics['val'].get(metric, math.nan):{vw}.4f}  "
                f"{metrics['test'].get(metric, math.nan):{tw}.4f}  "
                f"{costs.get('energy_pj', math.nan):9.0f}  {costs.get('bits', 0):8.0f}  "
                f"{costs.get('ebops', 0):8.0f}  {costs.get('lut', 0):7.0f}  "
                f"{costs.get('dsp', 0):5.0f}  {quant}")

    if reference:
        lines.append(fmt("float", {"val": reference["metrics"], "test": reference.get(
            "test", {})}, reference["costs"], f"float model, costed as {config.reference} "
            "reference" + (" (the forgiving factor's baseline)"
                           if config.objective == "forgiving" else "")))
    for r in rows:
        qc = r["candidate"]["quant_config"]
        quant = "; ".join(f"{layer}: " + ", ".join(f"{f}={s}" for f, s in fields_.items())
                          for layer, fields_ in qc.items())
        widths = {k: v for k, v in r["candidate"].get("widths", {}).items() if v != 1.0}
        if widths:
            quant += f" | widths {widths}"
        # (searched sparsity and learning rate: trials that differ in them alone printed
        # the same row)
        pruned = {k: v for k, v in (r["candidate"].get("sparsity") or {}).items() if v}
        if pruned:
            quant += f" | sparsity {pruned}"
        if r["candidate"].get("lr") is not None:
            quant += f" | lr {r['candidate']['lr']:g}"
        lines.append(fmt(r["trial"], r["metrics"], r["costs"], quant, r.get("score")))
    limits = constraint_options(config)
    if any(r.get("feasible") is False for r in rows):
        lines.append(f"no trial meets the constraints ({limits}): the rows above are the "
                     "front of the trials that do not")
    elif limits and rows:  # (the trials that miss them are not on this front)
        lines.append(f"constraints {limits}: the front of the trials that meet them")
    if best is not None:
        lines.append("* the best forgiving-factor score: the trial `--trial best` picks")
    lines.append(COST_MODELS)
    return "\n".join(lines)


COST_MODELS = ("energy: QTools-equivalent 45 nm Horowitz model; LUT/DSP: hetq latency-strategy "
               "estimate (estimates, not synthesis results)")
