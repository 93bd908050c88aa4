"""Sensitivities of the candidate quantizers and the search prior (steps 2 and 5 of
`hetq.search.hessian`)."""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...quant import get_quantizer
from ...train.loop import keeps_global_rng
from ..build import build_candidate
from ..space import Candidate, SearchSpace
from .costs import CostTable, cost_table
from .ilp import Allocation, sweep
from .traces import TRACE_TOL, Traces, _as_batches, hessian_traces


# -- sensitivities -----------------------------------------------------------------------------
def _trace_key(layer: str, fld: str) -> str:
    return {"kernel": f"{layer}.weight", "bias": f"{layer}.bias"}.get(fld, layer)


@torch.no_grad()
def _activation_io(model, batches, names) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """{module: [(input z, output act(z)) per batch]} on the float model (eval mode)."""
    mods = dict(model.named_modules())
    io: dict[str, list] = {n: [] for n in names}
    pending: dict[str, torch.Tensor] = {}
    hs = []
    for n in names:
        # the input is cloned before the layer runs: an in-place ReLU overwrites it
        hs.append(mods[n].register_forward_pre_hook(
            lambda m, i, n=n: pending.__setitem__(n, i[0].detach().clone())))
        hs.append(mods[n].register_forward_hook(
            lambda m, i, o, n=n: io[n].append((pending.pop(n), o.detach().clone()))))
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    try:
        for x, _ in batches:
            x = torch.as_tensor(x).to(p.device)
            model(x.to(p.dtype) if x.is_floating_point() else x)
    finally:
        model.train(was_training)
        for h in hs:
            h.remove()
    return io


@torch.no_grad()
def sensitivities(space: SearchSpace, model: nn.Module, traces: Traces, batches,
                  ) -> dict[str, dict[str, float]]:
    """{parameter name: {choice: Omega}}, Omega summed over the parameter's layers/fields."""
    batches = _as_batches(batches)
    mods = dict(model.named_modules())
    act_layers = sorted({layer for p in space.params for layer, f in p.targets
                         if f not in ("kernel", "bias")})
    io = _activation_io(model, batches, act_layers) if act_layers else {}
    n_samples = sum(len(x) for x, _ in batches)
    err: dict[tuple[str, str, str], float] = {}

    def error(layer, fld, spec):
        key = (layer, fld, spec)
        if key not in err:
            q = get_quantizer(spec).eval()
            if fld in ("kernel", "bias"):
                t = mods[layer].weight if fld == "kernel" else mods[layer].bias
                err[key] = float(((q(t) - t) ** 2).sum())
            else:
                err[key] = sum(float(((q(z) - a) ** 2).sum()) for z, a in io[layer]) / n_samples
        return err[key]

    out = {}
    for p in space.params:
        out[p.name] = {}
        for c in p.choices:
            total = 0.0
            for layer, fld in p.targets:
                k = _trace_key(layer, fld)
                if k not in traces.params and k not in traces.activations:
                    raise ValueError(f"no Hessian trace for {k!r} (parameter {p.name!r}); "
                                     "compute traces with activations=True on the same model")
                total += max(traces[k], 0.0) * error(layer, fld, c)
            out[p.name][c] = total
    return out


# -- search prior ------------------------------------------------------------------------------
@dataclass
class HessianPrior:
    """The sweep's configurations for one space, with what they were computed from."""

    space: SearchSpace = field(repr=False)
    allocations: list[Allocation]
    traces: Traces = field(repr=False)
    omegas: dict[str, dict[str, float]] = field(repr=False)
    costs: CostTable = field(repr=False)
    seconds: dict[str, float]

    @property
    def params(self) -> list[dict[str, Any]]:
        """Optuna parameter dicts (quantizers, widths at the defaults the costs assumed), for
        `study.enqueue_trial(params)`."""
        return [prior_params(self.space, a.params) for a in self.allocations]

    def candidates(self) -> list[Candidate]:
        return [self.space.candidate(p) for p in self.params]

    def models(self, float_model: nn.Module) -> list[nn.Module]:
        return to_models(self.space, float_model, self.params)


def prior_params(space: SearchSpace, choice: Mapping[str, str]) -> dict[str, Any]:
    """A full Optuna parameter dict for an ILP choice: quantizer parameters as chosen, width
    parameters at 1.0 when the space offers it, else at its first multiplier (the widths the
    cost table was computed at; the traces are the float model's, at its own widths);
    sparsity and learning rate are left for the sampler."""
    out = dict(choice)
    for n, (_, mults) in space.width_params.items():
        out[n] = 1.0 if 1.0 in mults else mults[0]
    return out


def to_models(space: SearchSpace, float_model: nn.Module, params_list) -> list[nn.Module]:
    """The hetq models (quantized copies of `float_model`) of Optuna parameter dicts."""
    return [build_candidate(float_model, space.candidate(p)) for p in params_list]


def _subset(data, samples: int, seed: int):
    if hasattr(data, "tensors"):
        x, y = data.tensors("train")
    elif isinstance(data, tuple) and len(data) == 2:
        x, y = data
    else:
        raise ValueError("data: expected a hetq Dataset or an (x, y) pair of tensors")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if samples and len(x) > samples:
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples]
        x, y = x[idx], y[idx]
    return x, y


@keeps_global_rng
def hessian_prior(space: SearchSpace, float_model: nn.Module, data, goal: str = "energy",
                  n: int = 12, *, loss_fn: Callable = F.cross_entropy, samples: int = 2048,
                  batch_size: int | None = None, input_shape=None, tol: float = TRACE_TOL,
                  max_iter: int = 200, seed: int = 0, max_cost: float | None = None,
                  **cost_kwargs) -> HessianPrior:
    """Traces on `samples` training samples, sensitivities, the cost table and an ILP sweep
    (`sweep`; with goal "dsp" a configuration that costs nothing is not left out).

    Args:
        space: the search space (built from `float_model`).
        float_model: the trained float model.
        data: a hetq Dataset (its train split) or an (x, y) pair of tensors.
        goal: "energy", "bits", "ebops", "lut" or "dsp".
        n: number of budgets in the sweep (distinct configurations may be fewer).
        samples: how many training samples (at most) the traces are taken on.
        max_cost: the sweep's budgets end there (a hard cost limit of the search).
        loss_fn: loss_fn(model(x), y), a batch mean.
        batch_size: split the samples into batches (None: one batch).
        cost_kwargs: passed to `hetq.cost.cost` (e.g. source_quantizer="int8").
    """
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise ValueError(f"hessian_prior: samples={samples!r}; expected a number of training "
                         "samples >= 1")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, numbers.Integral) or batch_size < 1):
        raise ValueError(f"hessian_prior: batch_size={batch_size!r}; expected a number of "
                         "samples >= 1, or None for one batch")
    t0 = time.perf_counter()
    x, y = _subset(data, samples, seed)
    bs = batch_size or len(x)
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]
    traces = hessian_traces(float_model, loss_fn, batches, tol=tol, max_iter=max_iter,
                            seed=seed)
    t1 = time.perf_counter()
    omegas = sensitivities(space, float_model, traces, batches)
    t2 = time.perf_counter()
    if input_shape is None:
        input_shape = getattr(data, "input_shape", None) or tuple(x.shape[1:])
    costs = cost_table(space, float_model, goal, input_shape, seed=seed, **cost_kwargs)
    t3 = time.perf_counter()
    allocs = sweep(omegas, costs, n, zero_is_dead=goal != "dsp", max_cost=max_cost)
    t4 = time.perf_counter()
    return HessianPrior(space, allocs, traces, omegas, costs,
                        {"traces": t1 - t0, "sensitivities": t2 - t1, "costs": t3 - t2,
                         "ilp": t4 - t3})
