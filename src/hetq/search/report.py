"""`hetq report`: an HTML page with the Pareto plot, the per-layer precision of the chosen
models and the search history, next to the Pareto table; for a gradient-strategy run, its
front and where each point spends its EBOPs."""

from __future__ import annotations

import html
from pathlib import Path

import optuna

from ..files import write_whole
from ..train.report import literal


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    """Write one figure of the report page (whole or not at all) and free it."""
    fig.tight_layout()
    write_whole(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".")))
    plt.close(fig)


def _write_page(path: Path, page: str) -> Path:
    """report.html, written whole or not at all: a browser (or a second `hetq report`)
    reading it while the search runs saw an empty file. In UTF-8, as its charset says (the
    locale's: an ASCII one failed on a run folder named 'ü-run'); a path's bytes that the
    locale could not decode are written back as they were."""
    return write_whole(path, lambda tmp: tmp.write_text(page, encoding="utf-8",
                                                        errors="surrogateescape"))


def write_html_report(run: str | Path, storage: str | None = None, *, loaded=None,
                      rows: list | None = None) -> Path:
    """The HTML report of search run `run`; `loaded`: its (config, study) from `load_run`
    and `rows` its `front_rows`, when the caller has them (each load reads the whole
    study: seconds at 10,000 trials)."""
    from .objectives import COST_KEYS
    from .results import constraint_options, format_table, front_rows, load_run

    run = Path(run)
    config, study = loaded or load_run(run, storage)
    goal = COST_KEYS[config.goal]
    done = [t for t in study.get_trials(deepcopy=False,
                                        states=(optuna.trial.TrialState.COMPLETE,))
            if "costs" in t.user_attrs]
    rows = front_rows(config, study) if rows is None else rows
    plt = _plt()
    # Pareto plot (a log axis has no place for a trial that costs nothing)
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = [t for t in done if t.user_attrs["costs"][goal] > 0]
    front = [r for r in rows if r["costs"][goal] > 0]
    # trials that miss --min-reduction / --max-loss drawn apart: they may lie above the front,
    # which is of those that meet them (when any does)
    meet = [t.user_attrs.get("feasible") is not False for t in plotted]
    for pts, style in (([t for t, ok in zip(plotted, meet) if ok],
                        dict(c="grey", label="trials")),
                       ([t for t, ok in zip(plotted, meet) if not ok],
                        dict(facecolors="none", edgecolors="grey",
                             label="trials missing the constraints"))):
        if pts:
            ax.scatter([t.user_attrs["costs"][goal] for t in pts],
                       [t.user_attrs["metrics"]["val"][config.metric] for t in pts], s=12,
                       **style)
    ax.plot([r["costs"][goal] for r in front],
            [r["metrics"]["val"][config.metric] for r in front], "o-", c="C3",
            label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(f"{config.goal} ({goal}; {_MODEL_OF.get(goal, 'estimate')})")
    literal(ax.set_ylabel(f"validation {config.metric}"))
    ax.legend()
    _save(plt, fig, run / "pareto.png")
    # history
    fig, ax = plt.subplots(figsize=(6, 3))
    vals = [t.user_attrs["metrics"]["val"][config.metric] for t in done]
    ax.plot([t.number for t in done], vals, ".", label="trial")
    best, cur = [], -1e9
    for v in vals:
        cur = max(cur, v)
        best.append(cur)
    ax.plot([t.number for t in done], best, "-", drawstyle="steps-post",  # (a slope between
            label="best so far")  # two trials looked like improvement between them)
    ax.set_xlabel("trial")
    literal(ax.set_ylabel(config.metric))
    ax.legend()
    _save(plt, fig, run / "history.png")
    # per-layer precision of the front
    fig, ax = plt.subplots(figsize=(6, 3.5))
    from ..quant import get_quantizer

    layers = []
    for r in rows:
        for layer in r["candidate"]["quant_config"]:
            if layer not in layers:
                layers.append(layer)
    for r in rows:
        bits = []
        for layer in layers:
            q = r["candidate"]["quant_config"].get(layer, {})
            spec = q.get("kernel") or q.get("activation")
            bits.append(get_quantizer(spec).bits_value if spec else 32)
        ax.plot(range(len(layers)), bits, "o-", label=f"trial {r['trial']}")
    ax.set_xticks(range(len(layers)), layers, rotation=45)
    literal(*ax.get_xticklabels())
    ax.set_ylabel("bits (kernel / activation)")
    ax.legend(fontsize=7)
    _save(plt, fig, run / "precision.png")
    table = format_table(rows, config, study.user_attrs.get("reference"))
    limits = constraint_options(config)
    n_meet = sum(t.user_attrs.get("feasible") is not False for t in done)
    from .storage import resume_advice, retried_numbers

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)  # (interrupted ones were counted as failed)
    ended = ["retried" if t.number in retried else t.state for t in trials
             if t.state in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
             and not t.user_attrs.get("overflow")]  # (overflow trials never trained)
    others = ", ".join(f"{n} {word}" for state, word in (
        (optuna.trial.TrialState.PRUNED, "pruned"), (optuna.trial.TrialState.FAIL, "failed"),
        ("retried", "interrupted and run again")) if (n := ended.count(state)))
    others = f" ({others})" if others else ""
    constraints = (f"; constraints {limits}: {n_meet} of {len(done)} trials meet them"
                   if limits else "")
    total, where = config.trials, ""
    if config.blocks:  # (a block's own trials, not the whole --trials: it read as unfinished)
        total = (study.user_attrs.get("hetq_config") or {}).get("trials", total)
        b = study.user_attrs.get("hetq_block")
        if isinstance(b, int) and 0 <= b < len(config.blocks):
            where = f" in the study of block {config.blocks[b]!r}"
    counted = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                  for t in trials)
    unfinished = ""
    if counted < total:  # (a killed or still running search's report looked finished)
        unfinished = f" The search has not finished: {resume_advice(study)}."
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hetq search {
        html.escape(config.study_name)}</title></head><body>
<h1>hetq search: {html.escape(str(run))}</h1>
<p>{len(done)} completed trials {
        f"of {total}" if len(done) <= total else f"(the last run asked for {total})"}{
        html.escape(where)}{others}; goal {config.goal},
objective {config.objective}, {html.escape(_drawn_by(config))}{html.escape(constraints)}. Costs are
estimates (QTools 45 nm energy model, hetq FPGA estimate).{html.escape(unfinished)}</p>
<h2>Pareto front</h2><img src="pareto.png">{
        f"<p>({len(done) - len(plotted)} trial(s) at 0 {goal}, every weight rounded to zero, "
        "are left out of the plot, whose cost axis is logarithmic; the table lists those on "
        "the front.)</p>" if len(plotted) < len(done)
        else ""}<pre>{html.escape(table)}</pre>
<h2>Per-layer precision of the front</h2><img src="precision.png">
<h2>History</h2><img src="history.png">
</body></html>"""
    return _write_page(run / "report.html", page)


# the cost model behind each goal's axis (the plot named none)
_MODEL_OF = {"energy_pj": "QTools 45 nm Horowitz estimate", "lut": "hetq FPGA estimate",
             "dsp": "hetq FPGA estimate"}


def _drawn_by(config) -> str:
    """Where the trials' configurations come from ('sampler tpe' left out the Hessian ILP
    that chose them)."""
    if config.strategy == "hessian" or config.prior == "hessian":
        return (f"the Hessian ILP's configurations first ({config.prior_configs} cost "
                f"budgets), then sampler {config.sampler}")
    return f"sampler {config.sampler}"


def _trained_with(rows, config, later: str) -> str:
    """How the points were trained, from the settings saved with them: search.yaml's are
    those of the last run started here, which may not have saved a point (`later`), and an
    interrupted rerun's front merges points of two runs."""
    from .gradient.strategy import run_settings

    kinds = {repr(r.settings) for r in rows if r.settings is not None}
    if len(kinds) > 1:
        return (f"its points come from {len(kinds)} runs with other settings (a rerun that "
                "was interrupted keeps the earlier points its own do not beat)")
    if kinds:
        s = next(r.settings for r in rows if r.settings is not None)
    elif later and rows:
        return "the settings they were trained with are not recorded (older point files)"
    else:
        s = run_settings(config)
    target = s["ebops_target"]
    beta = (f"beta set by a controller for EBOPs from {target[0]:g} to {target[1]:g} "
            f"(starting at {s['beta0']:g})" if target else
            f"beta {s['beta0']:g} to {s['beta1']:g}")
    return (f"{beta}, weight bit-widths per {s['granularity']}, activations per "
            f"{s['activation_granularity']}, {s['gradient_runs']} run(s)")


def write_gradient_html_report(run: str | Path, rows=None) -> Path:
    """`hetq report` of a gradient-strategy run: its front (validation and test accuracy
    against EBOPs), where each point spends its EBOPs (per dense layer), and the table.
    rows: its `saved_gradient_rows`, when the caller has read them already."""
    from ..cost import cost
    from ..train.checkpoint import load
    from .config import SearchConfig
    from .gradient import format_gradient_table, saved_gradient_rows

    run = Path(run)
    config = SearchConfig.load(run / "search.yaml")
    rows = saved_gradient_rows(run) if rows is None else rows
    # (number on the front, row); a log axis has no place for 0 EBOPs
    shown = [(k, r) for k, r in enumerate(rows) if r.ebops > 0]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r.ebops for _, r in shown]
    ax.plot(x, [r.point.val_accuracy for _, r in shown], "o-", c="C3", label="validation")
    ax.plot(x, [r.test_accuracy for _, r in shown], "s--", c="C0", ms=4, label="test")
    ax.set_xscale("log")
    ax.set_xlabel("EBOPs")
    ax.set_ylabel("accuracy")
    ax.legend()
    _save(plt, fig, run / "pareto.png")
    # each point's EBOPs by dense layer, as shares of its total
    per_layer = []
    for _, r in shown:
        rep = cost(load(r.path), source_quantizer=config.source_quantizer)
        per_layer.append({lc.name: lc.ebops for lc in rep.layers if lc.ebops})
    layers = list(dict.fromkeys(name for d in per_layer for name in d))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0.0] * len(shown)
    bars = []  # (handed to the legend as they are: a layer named '_x' was left out)
    for name in layers:
        share = [d.get(name, 0) / max(sum(d.values()), 1) for d in per_layer]
        bars.append(ax.bar(range(len(shown)), share, bottom=bottom))
        bottom = [b + v for b, v in zip(bottom, share)]
    ax.set_xticks(range(len(shown)), [f"{k}\n{r.ebops}" for k, r in shown], fontsize=6)
    ax.set_xlabel("front point, its EBOPs")
    ax.set_ylabel("share of the EBOPs")
    if bars:  # (a front of 0 EBOPs alone: matplotlib warned of a legend without entries)
        literal(ax.legend(bars, layers, fontsize=7, loc="lower right"))
    _save(plt, fig, run / "layers.png")
    left = len(rows) - len(shown)
    from ..files import lock_holder
    from .gradient.strategy import PROGRESS

    state = ""  # (a report of a run still training, or killed, read as a finished one)
    if lock_holder(run):
        state = " A later run is still training here; these are the earlier run's points."
    elif any((run / PROGRESS).glob("*.pt")):
        state = (" A later run ended without saving its front (killed?); these are the "
                 "earlier run's points: rerun the same `hetq search` command to save it.")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hetq search {
        html.escape(str(run))}</title></head><body>
<h1>hetq search (gradient strategy): {html.escape(str(run))}</h1>
<p>{len(rows)} points on the front; {html.escape(_trained_with(rows, config, state))}. Costs
are estimates (QTools 45 nm energy model, hetq FPGA estimate).{html.escape(state)}</p>
<h2>Front</h2><img src="pareto.png">{
        f"<p>({left} point(s) at 0 EBOPs, a constant output, are left out of the plots.)</p>"
        if left else ""}
<pre>{html.escape(format_gradient_table(rows))}</pre>
<h2>Where each point spends its EBOPs</h2><img src="layers.png">
</body></html>"""
    return _write_page(run / "report.html", page)
