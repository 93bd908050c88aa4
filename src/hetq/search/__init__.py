"""Per-layer quantizer and width search on Optuna, the Hessian-aware and gradient-based
strategies, and the search's results.

    from hetq.search import SearchConfig, run_search, pareto_rows
    run_search(SearchConfig(goal="ebops", objective="pareto", trials=40), "runs/s1")
    for row in pareto_rows("runs/s1"):
        print(row["trial"], row["metrics"]["test"]["accuracy"], row["costs"])

The names are imported on first use (Optuna is not loaded by `import hetq.search`).
"""

from __future__ import annotations

from hetq import _lazy_names

_API = {
    "SearchConfig": "hetq.search.config",
    "run_search": "hetq.search.driver",
    "run_worker_process": "hetq.search.driver",
    "load_run": "hetq.search.results",
    "pareto_rows": "hetq.search.results",
    "trial_model": "hetq.search.results",
    "format_table": "hetq.search.results",
}

__all__ = list(_API)


__getattr__, __dir__ = _lazy_names("hetq.search", globals(), _API)
