"""`hetq report`: an HTML page with the Pareto plot, the per-layer precision of the chosen
models and the search history, next to the Pareto table."""

from __future__ import annotations

import html
from pathlib import Path

import optuna


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_html_report(run: str | Path, storage: str | None = None) -> Path:
    from .objectives import COST_KEYS
    from .results import format_table, load_run, pareto_rows

    run = Path(run)
    config, study = load_run(run, storage)
    goal = COST_KEYS[config.goal]
    done = [t for t in study.get_trials(deepcopy=False,
                                        states=(optuna.trial.TrialState.COMPLETE,))
            if "costs" in t.user_attrs]
    rows = pareto_rows(run, storage)
    plt = _plt()
    # Pareto plot
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([t.user_attrs["costs"][goal] for t in done],
               [t.user_attrs["metrics"]["val"][config.metric] for t in done], s=12, c="grey",
               label="trials")
    ax.plot([r["costs"][goal] for r in rows], [r["metrics"]["val"][config.metric] for r in rows],
            "o-", c="C3", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(f"{config.goal} ({goal}, estimate)")
    ax.set_ylabel(f"validation {config.metric}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "pareto.png", dpi=110)
    plt.close(fig)
    # history
    fig, ax = plt.subplots(figsize=(6, 3))
    vals = [t.user_attrs["metrics"]["val"][config.metric] for t in done]
    ax.plot([t.number for t in done], vals, ".", label="trial")
    best, cur = [], -1e9
    for v in vals:
        cur = max(cur, v)
        best.append(cur)
    ax.plot([t.number for t in done], best, "-", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(config.metric)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "history.png", dpi=110)
    plt.close(fig)
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
    ax.set_ylabel("bits (kernel / activation)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run / "precision.png", dpi=110)
    plt.close(fig)
    table = format_table(rows, config, study.user_attrs.get("reference"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hetq search {
        html.escape(config.study_name)}</title></head><body>
<h1>hetq search: {html.escape(str(run))}</h1>
<p>{len(done)} completed trials of {config.trials}; goal {config.goal}, objective
{config.objective}, sampler {config.sampler}. Costs are estimates (QTools 45 nm energy model,
hetq FPGA estimate).</p>
<h2>Pareto front</h2><img src="pareto.png"><pre>{html.escape(table)}</pre>
<h2>Per-layer precision of the front</h2><img src="precision.png">
<h2>History</h2><img src="history.png">
</body></html>"""
    out = run / "report.html"
    out.write_text(page)
    return out
