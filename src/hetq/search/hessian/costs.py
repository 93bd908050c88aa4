"""The cost of a configuration as a sum of tabulated per-layer rows (step 3 of
`hetq.search.hessian`)."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ...quant import get_quantizer
from ..build import build_candidate
from ..space import SearchSpace

GOALS = ("energy", "bits", "ebops", "lut", "dsp")
SMALL_TABLE = 256  # joint tables up to this size are always tabulated (no additivity probe)


@dataclass
class CostTable:
    """cost(config) = const + sum_g unary[g][config[g]] + sum_k table_k[config restricted to
    groups_k]; `joint` is a list of (groups, {choices tuple: cost}). `max_error`: the largest
    relative difference from the cost model seen on the check configurations (None: unchecked).
    """

    unary: dict[str, dict[str, float]]
    joint: list[tuple[tuple[str, ...], dict[tuple[str, ...], float]]] = field(
        default_factory=list)
    const: float = 0.0
    goal: str = ""
    max_error: float | None = None

    def __call__(self, config: Mapping[str, str]) -> float:
        total = self.const + sum(self.unary[g][config[g]] for g in self.unary)
        for groups, table in self.joint:
            total += table[tuple(config[g] for g in groups)]
        return total

    def __repr__(self) -> str:
        sizes = [len(t) for _, t in self.joint]
        return (f"CostTable(goal={self.goal!r}, {len(self.unary)} groups, joint tables "
                f"{sizes}, const={self.const:.6g}, max_error={self.max_error})")


def _rows(report, goal: str) -> np.ndarray:
    if goal == "energy":
        return np.array([lc.total for lc in report.layers])
    if goal == "ebops":
        return np.array([float(lc.ebops) for lc in report.layers])
    if goal in ("lut", "dsp"):
        return np.array([float(lc.fpga.get(goal, 0.0)) for lc in report.layers])
    if goal == "bits":
        s = report.summary()
        return np.array([s["param_bits"], s["act_bits"]])
    raise ValueError(f"goal {goal!r}; expected one of {', '.join(GOALS)}")


class _Evaluator:
    """Cost rows of configurations: one built model whose quantizers are swapped in place
    (fast), and `fresh` for a model built from scratch by `build_candidate` (the check)."""

    def __init__(self, space, float_model, goal, input_shape, cost_kwargs):
        from ...cost import cost

        self.space, self.float_model, self.goal = space, float_model, goal
        self._cost = lambda m: cost(m, input_shape, **cost_kwargs)
        base = {p.name: p.choices[0] for p in space.params}
        self.model = build_candidate(float_model, space.candidate(base)).eval()
        self.mods = dict(self.model.named_modules())
        self.count = 0

    def rows(self, config: Mapping[str, str]) -> np.ndarray:
        for p in self.space.params:
            for layer, fld in p.targets:
                setattr(self.mods[layer], f"{fld}_quantizer",
                        get_quantizer(config[p.name]).eval())
        self.count += 1
        return _rows(self._cost(self.model), self.goal)

    def fresh(self, config: Mapping[str, str]) -> float:
        m = build_candidate(self.float_model, self.space.candidate(config)).eval()
        return float(_rows(self._cost(m), self.goal).sum())


def cost_table(space: SearchSpace, float_model: nn.Module, goal: str = "energy",
               input_shape=None, *, max_table: int = 1024, probes: int = 4, check: int = 3,
               seed: int = 0, **cost_kwargs) -> CostTable:
    """Tabulate the cost model over the space's quantizer parameters (see the module doc).

    A row depending on several groups gets a joint table unless the table would be large
    (> SMALL_TABLE entries) and the row is additive over its groups on `probes` random
    configurations, or it would have more than `max_table` entries; those rows are sums of
    one-group terms measured from the base configuration (first choices). What a row depends
    on is found by changing one group at a time from the first choices and from the last
    ones. `check` random
    configurations built from scratch measure the table's error (`max_error`; a warning when
    above 1e-9). Keyword arguments go to `hetq.cost.cost` (e.g. source_quantizer).
    """
    if goal not in GOALS:
        raise ValueError(f"goal {goal!r}; expected one of {', '.join(GOALS)}")
    ev = _Evaluator(space, float_model, goal, input_shape, cost_kwargs)
    groups = {p.name: p.choices for p in space.params}
    base = {g: ch[0] for g, ch in groups.items()}
    seen: list[tuple[dict, np.ndarray]] = []
    deps: list[set[str]] = []

    def sweep(start: dict[str, str]):
        """(the rows of `start`, those of `start` with one group changed at a time by
        (group, choice)); the groups that change a row go to its `deps`."""
        r_start = ev.rows(start)
        seen.append((start, r_start))
        deps.extend(set() for _ in range(len(r_start) - len(deps)))
        out = {}
        for g, choices in groups.items():
            for c in choices:
                if c == start[g]:
                    out[(g, c)] = r_start
                    continue
                cfg = {**start, g: c}
                out[(g, c)] = r = ev.rows(cfg)
                seen.append((cfg, r))
                changed = np.abs(r - r_start) > 1e-9 * np.maximum(1.0, np.abs(r_start))
                for i in np.flatnonzero(changed):
                    deps[i].add(g)
        return r_start, out

    r0, single = sweep(base)
    # the same from the last choices: a dependency can hide at the base (a first kernel
    # choice that rounds every weight of a layer to zero made its input's activation free)
    far = {g: ch[-1] for g, ch in groups.items()}
    if far != base:
        sweep(far)
    order = list(groups)
    rng = np.random.default_rng(seed)

    def additive(i, cfg):
        return r0[i] + sum(single[(g, cfg[g])][i] - r0[i] for g in deps[i])

    # large joint tables cost one evaluation per entry: rows that are sums of one-group terms
    # on random probes (model size in bits) do without
    multi = [i for i, d in enumerate(deps)
             if len(d) > 1 and math.prod(len(groups[g]) for g in d) > SMALL_TABLE]
    nonadditive: set[int] = set()
    for _ in range(probes if multi else 0):
        cfg = {g: ch[rng.integers(len(ch))] for g, ch in groups.items()}
        r = ev.rows(cfg)
        seen.append((cfg, r))
        nonadditive |= {i for i in multi
                        if abs(r[i] - additive(i, cfg)) > 1e-9 * max(1.0, abs(r[i]))}
    unary = {g: dict.fromkeys(ch, 0.0) for g, ch in groups.items()}
    const = 0.0
    joint_rows: dict[tuple[str, ...], list[int]] = {}
    for i, d in enumerate(deps):
        key = tuple(g for g in order if g in d)
        size = math.prod(len(groups[g]) for g in key)
        if len(key) == 0:
            const += r0[i]
        elif len(key) == 1 or (i in multi and i not in nonadditive) or size > max_table:
            # one group: exact; additive on the probes, or too many joint choices: linear
            const += r0[i]
            for g in key:
                for c in groups[g]:
                    unary[g][c] += single[(g, c)][i] - r0[i]
        else:
            joint_rows.setdefault(key, []).append(i)
    tables = {key: {} for key in joint_rows}

    def record(cfg, r):
        for key, idx in joint_rows.items():
            a = tuple(cfg[g] for g in key)
            if a not in tables[key]:
                tables[key][a] = float(r[idx].sum())

    for cfg, r in seen:
        record(cfg, r)
    # cover every joint choice of every multi-group row with as few configurations as we can:
    # rows on disjoint groups are filled in by the same configuration
    todo = {key: [a for a in itertools.product(*(groups[g] for g in key)) if a not in tables[key]]
            for key in joint_rows}
    while any(todo.values()):
        cfg: dict[str, str] = {}
        for key in sorted(todo, key=lambda k: -len(todo[k])):
            for j, a in enumerate(todo[key]):
                if all(cfg.get(g, c) == c for g, c in zip(key, a)):
                    cfg.update(zip(key, a))
                    todo[key].pop(j)
                    break
        cfg = {**base, **cfg}
        record(cfg, ev.rows(cfg))
        for key in todo:
            todo[key] = [a for a in todo[key] if a not in tables[key]]
    table = CostTable(unary, [(k, tables[k]) for k in joint_rows], float(const), goal)
    if check:
        errs = []
        for _ in range(check):
            cfg = {g: ch[rng.integers(len(ch))] for g, ch in groups.items()}
            true = ev.fresh(cfg)
            errs.append(abs(table(cfg) - true) / max(1.0, abs(true)))
        table.max_error = float(max(errs))
        if table.max_error > 1e-9:
            warnings.warn(f"cost table for goal {goal!r} differs from the cost model by up to "
                          f"{table.max_error:.2%} (rows linearised or a missed dependency); "
                          "the ILP optimises the table", stacklevel=2)
    return table
