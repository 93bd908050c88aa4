"""Search objectives: the forgiving factor, constraint goals, Pareto fronts and hypervolume.

Forgiving factor (AutoQKeras, spec §5.4), for a trial of cost `trial` against the reference
model's cost `ref`:

    d     = log(stress * ref / trial) / log(rate)
    delta = (delta_p / 100) * d   if trial < stress * ref   (a reward for every `rate`x saving)
            (delta_n / 100) * d   otherwise                 (a penalty for growth)
    score = metric * (1 + delta)

i.e. "accept `delta_p` % of metric loss for every `rate`-fold reduction of the cost".

Deliberate difference: the reference ignores `stress` for the energy goal (its energy
forgiving factor multiplies only the returned value, not the reference used in `delta`);
hetq applies `stress` to every goal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

GOALS = ("energy", "bits", "ebops", "lut")
COST_KEYS = {"energy": "energy_pj", "bits": "bits", "ebops": "ebops", "lut": "lut"}  # in costs


@dataclass(frozen=True)
class ForgivingFactor:
    """score = metric * (1 + delta), delta from the cost ratio (see module docstring)."""

    goal: str = "energy"
    delta_p: float = 8.0
    delta_n: float = 8.0
    rate: float = 2.0
    stress: float = 1.0

    def __post_init__(self):
        if self.goal not in GOALS:
            raise ValueError(f"goal {self.goal!r} is not one of {', '.join(GOALS)}")
        if self.rate <= 1.0:
            raise ValueError(f"rate must be > 1 (a cost ratio per step), got {self.rate!r}")
        if self.stress <= 0:
            raise ValueError(f"stress must be > 0, got {self.stress!r}")

    def delta(self, trial_cost: float, reference_cost: float) -> float:
        if trial_cost <= 0 or reference_cost <= 0:
            raise ValueError(
                f"costs must be > 0 for the forgiving factor, got trial={trial_cost!r}, "
                f"reference={reference_cost!r}" + (" (a trial that costs nothing: every "
                                                   "weight rounds to zero)"
                                                   if trial_cost == 0 else "")
            )
        ref = self.stress * reference_cost
        d = math.log(ref / trial_cost) / math.log(self.rate)
        return (self.delta_p if trial_cost < ref else self.delta_n) / 100.0 * d

    def score(self, metric: float, trial_cost: float, reference_cost: float) -> float:
        return metric * (1.0 + self.delta(trial_cost, reference_cost))


@dataclass(frozen=True)
class Constraints:
    """Hard goals as users state them: "cost reduction >= 4x, metric loss <= 5 %".

    `min_reduction`: reference_cost / trial_cost must be at least this.
    `max_metric_loss`: (reference_metric - metric) / reference_metric (a fraction; 0.05 = 5 %)
    must be at most this. Values <= 0 mean satisfied (Optuna's constraint convention).
    """

    min_reduction: float | None = None
    max_metric_loss: float | None = None

    def values(self, metric: float, trial_cost: float, reference_cost: float,
               reference_metric: float) -> list[float]:
        out = []
        if self.min_reduction is not None:
            out.append(self.min_reduction - reference_cost / trial_cost)
        if self.max_metric_loss is not None:
            loss = (reference_metric - metric) / reference_metric
            out.append(loss - self.max_metric_loss)
        return out

    def satisfied(self, *args) -> bool:
        return all(v <= 0 for v in self.values(*args))

    @property
    def active(self) -> bool:
        return self.min_reduction is not None or self.max_metric_loss is not None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points for (maximise first, minimise second), sorted by
    increasing cost. Ties: identical points keep the first index only."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front, best = [], -math.inf
    for i in order:
        metric = points[i][0]
        if metric > best:
            front.append(i)
            best = metric
    return front


def hypervolume_2d(points: Sequence[tuple[float, float]], cost_ref: float, metric_ref: float,
                   log_cost: bool = True) -> float:
    """Area dominated by (metric to maximise, cost to minimise) points inside the box
    [cost, cost_ref] x [metric_ref, metric]: the union of rectangles
    [log10(cost), log10(cost_ref)] x [metric_ref, metric] (costs on a log10 axis by default).

    Points with metric <= metric_ref or cost >= cost_ref add nothing.
    """
    tr = math.log10 if log_cost else (lambda v: v)
    xref = tr(cost_ref)
    pts = [(m, tr(c)) for m, c in points if m > metric_ref and c > 0 and tr(c) < xref]
    if not pts:
        return 0.0
    area, best = 0.0, metric_ref
    # sweep from cheapest to the reference cost; height = best metric seen so far
    pts.sort(key=lambda p: p[1])
    for k, (m, x) in enumerate(pts):
        best = max(best, m)
        x_next = pts[k + 1][1] if k + 1 < len(pts) else xref
        area += (x_next - x) * (best - metric_ref)
    return area
