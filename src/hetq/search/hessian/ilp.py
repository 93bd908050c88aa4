"""The allocation ILP and the budget sweep (step 4 of `hetq.search.hessian`)."""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .costs import CostTable


@contextlib.contextmanager
def _solver_output_hidden():
    """File descriptor 1 points at /dev/null inside: HiGHS (C++) prints some diagnostics
    to the process's stdout (descriptor 1, whatever Python's sys.stdout is) whatever its
    options say, and they landed in the middle of the search's output. Python's own stdout
    is flushed first (a full one is an error: swallowed here, it lost every later line)."""
    try:
        sys.stdout.flush()
    except (AttributeError, ValueError):
        pass
    try:
        saved = os.dup(1)
    except OSError:  # (no descriptor 1)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _Problem:
    """Variables: x[g, c] (binary, one-hot per group), then z[k, a] per joint table entry."""

    def __init__(self, omegas: Mapping[str, Mapping[str, float]], costs):
        from scipy.sparse import coo_array

        table = costs if isinstance(costs, CostTable) else CostTable(
            {g: dict(v) for g, v in costs.items()})
        self.groups = list(omegas)
        if not self.groups:
            raise ValueError("allocate: no groups to choose for")
        for g in self.groups:
            if not omegas[g]:
                raise ValueError(f"allocate: group {g!r} has no choices")
            if g not in table.unary or set(table.unary[g]) != set(omegas[g]):
                raise ValueError(f"allocate: group {g!r} has choices {sorted(omegas[g])} in "
                                 f"omegas but {sorted(table.unary.get(g, {}))} in costs")
            for what, d in (("an Omega", omegas[g]), ("a cost", table.unary[g])):
                bad = {c: v for c, v in d.items() if not math.isfinite(float(v))}
                if bad:
                    raise ValueError(f"allocate: group {g!r} has {what} that is not a finite "
                                     f"number: {bad}")
        extra = set(table.unary) - set(self.groups)
        if extra:  # (their cost would be left out of every configuration)
            raise ValueError(f"allocate: cost groups {sorted(extra)} have no omegas")
        stray = {g for key, _ in table.joint for g in key} - set(self.groups)
        if stray:
            raise ValueError(f"allocate: cost table groups {sorted(stray)} have no omegas")
        self.table = table
        self.x = [(g, c) for g in self.groups for c in omegas[g]]
        pos = {gc: j for j, gc in enumerate(self.x)}
        om, co = [omegas[g][c] for g, c in self.x], [table.unary[g][c] for g, c in self.x]
        rows, cols, vals, r = [], [], [], 0
        for g in self.groups:
            for c in omegas[g]:
                rows.append(r)
                cols.append(pos[(g, c)])
                vals.append(1.0)
            r += 1
        n = len(self.x)
        for key, entries in table.joint:
            marg = {}
            for g in key:
                for c in omegas[g]:
                    marg[(g, c)] = r
                    rows.append(r)
                    cols.append(pos[(g, c)])
                    vals.append(-1.0)
                    r += 1
            for a, v in entries.items():
                for g, c in zip(key, a):
                    rows.append(marg[(g, c)])
                    cols.append(n)
                    vals.append(1.0)
                om.append(0.0)
                co.append(v)
                n += 1
        self.n_one_hot = len(self.groups)
        self.A = coo_array((vals, (rows, cols)), shape=(r, n)).tocsr()
        self.omega, self.cost = np.array(om, float), np.array(co, float)
        self.integrality = np.r_[np.ones(len(self.x)), np.zeros(n - len(self.x))]

    def _scale(self, objective: np.ndarray) -> float:
        """What the objective is divided by: the unconstrained optimum (the sum of each
        group's least value), so the optimum is about 1 and HiGHS's absolute gap (1e-6) is
        small against it. Divided by the largest value instead, Omegas from 1e3 down to 1e-6
        left every configuration within that gap of the best (a worse one came back)."""
        top = float(np.abs(objective).max())
        lows = [min(abs(objective[j]) for j, (g2, _) in enumerate(self.x) if g2 == g)
                for g in self.groups]
        return max(float(sum(lows)), 1e-9 * top, 1e-300)

    def solve(self, objective: np.ndarray, bounds: list[tuple[np.ndarray, float]] = ()):
        """argmin objective . v subject to the structure and each (coef . v <= ub); None if
        infeasible."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        eq = np.r_[np.ones(self.n_one_hot), np.zeros(self.A.shape[0] - self.n_one_hot)]
        cons = [LinearConstraint(self.A, eq, eq)]
        for coef, ub in bounds:
            s = max(np.abs(coef).max(), 1e-300)
            cons.append(LinearConstraint(coef[None, :] / s, -np.inf, ub / s))
        s = self._scale(objective) if objective is self.omega else \
            max(np.abs(objective).max(), 1e-300)
        with _solver_output_hidden():
            res = milp(objective / s, constraints=cons, integrality=self.integrality,
                       bounds=Bounds(0, 1), options={"mip_rel_gap": 1e-9})
        if res.x is None:
            return None
        chosen = np.round(res.x[:len(self.x)]).astype(bool)
        return {g: c for (g, c), on in zip(self.x, chosen) if on}

    def omega_of(self, choice) -> float:
        return float(sum(self.omega[self.x.index((g, c))] for g, c in choice.items()))

    def best(self, budget: float = math.inf) -> dict[str, str] | None:
        """Least Omega within budget; among equal Omega, the cheapest (a second solve)."""
        slack = 1e-9 * max(1.0, abs(budget)) if math.isfinite(budget) else 0.0
        cb = [(self.cost, budget - self.table.const + slack)] if math.isfinite(budget) else []
        first = self.solve(self.omega, cb)
        if first is None:
            return None
        om = self.omega_of(first)
        tie = self.solve(self.cost, cb + [(self.omega, om + 1e-9 * max(abs(om), 1e-300))])
        # the solver's tolerance on that cap is absolute (about 1e-7 of the largest Omega):
        # with Omegas spanning orders of magnitude, a cheaper but worse choice passed it
        if tie is None or self.omega_of(tie) > om * (1 + 1e-9) + 1e-300:
            return first
        return tie

    def min_cost(self) -> float:
        return self.table(self.solve(self.cost))

    def min_live_cost(self, scale: float) -> float | None:
        """The cost of the cheapest configuration that costs more than nothing; None if
        every one costs nothing (or less than a thousandth of `scale`, the optimum's cost).
        Asked as cost >= floor, the floor rising from a millionth of `scale` while the
        solver's tolerance lets a configuration of cost 0 pass it."""
        floor = 1e-6 * max(abs(scale), 1e-300)
        for _ in range(4):
            choice = self.solve(self.cost, [(-self.cost, self.table.const - floor)])
            if choice is None:
                return None
            if self.table(choice) > 0:
                return self.table(choice)
            floor *= 10
        return None


def allocate(omegas: Mapping[str, Mapping[str, float]], costs, budget: float) -> dict[str, str]:
    """The choice per group minimising sum Omega subject to cost <= budget (an ILP, solved
    by HiGHS to within about 1e-6 of the optimal Omega, relative).

    Args:
        omegas: {group: {choice: Omega}}.
        costs: {group: {choice: cost}} (additive) or a `CostTable` (from `cost_table`).
        budget: the cost limit (same units as costs).
    Raises ValueError naming the minimum achievable cost when no configuration fits.
    """
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"allocate: budget {budget!r} is not a number") from None
    if math.isnan(budget):
        raise ValueError("allocate: budget is NaN; expected a cost limit (inf: no limit)")
    prob = _Problem(omegas, costs)
    choice = prob.best(budget) if budget != -math.inf else None
    if choice is None:
        raise ValueError(f"budget {budget:.6g} is infeasible: the minimum achievable cost is "
                         f"{prob.min_cost():.6g}")
    return choice


@dataclass
class Allocation:
    """One ILP configuration: {group: choice}, its total Omega and cost, the budget asked."""

    params: dict[str, str]
    omega: float
    cost: float
    budget: float


def sweep(omegas: Mapping[str, Mapping[str, float]], costs, n: int = 12,
          budgets: Iterable[float] | None = None, *, zero_is_dead: bool = True,
          max_cost: float | None = None) -> list[Allocation]:
    """Distinct ILP configurations over `n` budgets, log-spaced from the cheapest
    configuration's cost to the cost of the unconstrained optimum (n=1: that optimum alone;
    or the given `budgets`; ones below the cheapest configuration are skipped); returned by
    increasing cost with strictly decreasing Omega (dominated ones dropped).
    zero_is_dead: a configuration that costs nothing (EBOPs or LUTs: every weight rounds to
    zero) computes nothing: it is left out, and the sweep starts from the cheapest one that
    costs more than nothing (its trial was a dead network that the forgiving factor could not
    even score). False for costs where 0 is ordinary (DSPs: small products go to LUTs).
    max_cost: the sweep's budgets end there instead, if lower (a hard cost constraint of the
    search: configurations above it would be infeasible trials)."""
    prob = _Problem(omegas, costs)
    if budgets is None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"sweep: n={n!r}; expected a number of budgets >= 1")
        hi = prob.table(prob.best())
        if max_cost is not None:
            if not float(max_cost) > 0:  # (NaN too)
                raise ValueError(f"sweep: max_cost={max_cost!r}; expected a cost > 0")
            hi = min(hi, float(max_cost))
        lo = prob.min_live_cost(hi) if zero_is_dead else prob.min_cost()
        if lo is None or lo > hi:
            return []  # (no configuration that computes something fits max_cost)
        if n == 1:
            budgets = [hi]
        else:
            budgets = np.geomspace(lo, hi, n) if 0 < lo < hi else np.linspace(lo, hi, n)
    else:
        budgets = list(budgets)
        for b in budgets:
            try:
                bad = math.isnan(float(b))
            except (TypeError, ValueError):
                bad = True
            if bad:
                raise ValueError(f"sweep: budget {b!r} is not a number; expected cost limits "
                                 "(inf: no limit)")
    found = {}
    for b in budgets:
        choice = prob.best(float(b))
        if choice is None or (zero_is_dead and prob.table(choice) <= 0):
            continue
        key = tuple(sorted(choice.items()))
        if key not in found:
            found[key] = Allocation(choice, prob.omega_of(choice), float(prob.table(choice)),
                                    float(b))
    front: list[Allocation] = []
    for a in sorted(found.values(), key=lambda a: (a.cost, a.omega)):
        if not front or a.omega < front[-1].omega:
            front.append(a)
    return front
