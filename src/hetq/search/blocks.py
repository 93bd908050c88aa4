"""Block-wise search (AutoQKeras' scheduler, spec §5.8): N*B trials instead of N**B.

Layers are grouped into blocks by name regexes (`re.match`; a layer belongs to the first block
it matches). Blocks run one after another, in the given order ("sequential") or by decreasing
reference cost ("cost"). Block i gets max(min(10, trials), trials * cost_i / total_cost) trials
of its own Optuna study `<study>_block<i>`; in it the earlier blocks are frozen at their best
trial's choices, the block's own layers are searched and later blocks stay float. The schedule
(`scheduler.json` in the run folder: chosen values and the next block) makes it resumable.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .space import Candidate, SearchSpace


class BlockView:
    """A view of a `SearchSpace` that searches only `active` parameters, pins `frozen`
    values, and leaves `float_layers` unquantized. Same interface the driver uses."""

    def __init__(self, space: SearchSpace, active: set[str], frozen: dict[str, Any],
                 float_layers: set[str]):
        self.space, self.active, self.frozen, self.float_layers = space, active, frozen, \
            float_layers

    def distributions(self):
        return {n: d for n, d in self.space.distributions().items() if n in self.active}

    def suggest(self, trial) -> Candidate:
        params = {n: trial.suggest_categorical(n, d.choices)
                  for n, d in self.distributions().items()}
        return self.candidate(params)

    def candidate(self, params: dict[str, Any]) -> Candidate:
        c = self.space.candidate({**self.frozen, **params})
        c.quant_config = {k: v for k, v in c.quant_config.items() if k not in self.float_layers}
        return c

    def params_of(self, candidate: Candidate) -> dict[str, Any]:
        return {k: v for k, v in self.space.params_of(candidate).items() if k in self.active}


def assign_blocks(space: SearchSpace, blocks: list[str]) -> list[list[str]]:
    """Layer names of each block (first matching regex wins); unmatched layers: no block."""
    out: list[list[str]] = [[] for _ in blocks]
    for slot in space.slots:
        for i, pattern in enumerate(blocks):
            if re.match(pattern, slot.name):
                out[i].append(slot.name)
                break
    for pattern, layers in zip(blocks, out):
        if not layers:
            taken = [s.name for s in space.slots if re.match(pattern, s.name)]
            if taken:  # (said as 'matches no layer', which it does)
                raise ValueError(f"block regex {pattern!r} matches only layers an earlier "
                                 f"block takes ({', '.join(taken)}); each layer is in the "
                                 "first block that matches it")
            raise ValueError(f"block regex {pattern!r} matches no layer; layers: "
                             f"{[s.name for s in space.slots]}")
    return out


def _params_of_layers(space: SearchSpace, layers: set[str]) -> set[str]:
    names = set()
    for p in space.params:
        if any(layer in layers for layer, _ in p.targets):
            names.add(p.name)
    for n, (members, _) in space.width_params.items():
        if any(m in layers for m in members):
            names.add(n)
    for n, (layer, _) in space.sparsity_params.items():
        if layer in layers:
            names.add(n)
    return names


def schedule(space: SearchSpace, blocks: list[str], order: str, layer_cost: dict[str, float],
             trials: int) -> list[dict[str, Any]]:
    """[{"index", "pattern", "layers", "params", "cost", "trials"}] in run order."""
    if order not in ("sequential", "cost"):
        raise ValueError(f"schedule_block={order!r}; expected 'sequential' or 'cost'")
    groups = assign_blocks(space, blocks)
    total = sum(layer_cost.values()) or 1.0
    plan = []
    for i, (pattern, layers) in enumerate(zip(blocks, groups)):
        c = sum(layer_cost.get(n, 0.0) for n in layers)
        plan.append({"index": i, "pattern": pattern, "layers": layers,
                     "params": sorted(_params_of_layers(space, set(layers))), "cost": c,
                     "trials": max(min(10, trials), int(trials * c / total))})
    if order == "cost":
        plan.sort(key=lambda b: -b["cost"])
    # a parameter shared by layers of several blocks (--tune-filters block's one multiplier)
    # is searched by the first of them and stays frozen after it, not searched again
    taken: set[str] = set()
    for b in plan:
        b["params"] = [n for n in b["params"] if n not in taken]
        taken.update(b["params"])
    # parameters of no layer (--learning-rates' lr) are searched by the first block, then
    # frozen like the others (no block had them: every trial trained at --lr, unsaid)
    # (only those: the parameters of layers no block matches were searched by the first
    # block, and those layers, to stay float, were narrowed and pruned)
    of_layers = _params_of_layers(space, {s.name for s in space.slots})
    if plan:
        plan[0]["params"] += sorted(n for n in space.distributions()
                                    if n not in taken and n not in of_layers)
    return plan


class Scheduler:
    """State of a block-wise search in `<run>/scheduler.json`."""

    def __init__(self, out: Path):
        self.path = Path(out) / "scheduler.json"
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {
            "next_block": 0, "frozen": {}, "final_study": None}

    def save(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.path)
