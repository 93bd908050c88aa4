"""Hutchinson estimates of the average Hessian trace of each quantizable tensor, and the
top eigenvalue by power iteration (step 1 of `hetq.search.hessian`)."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...quant.layers import QLayer
from ..space import ACTIVATION_TYPES, LINEAR_TYPES

WEIGHT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d)
TRACE_TOL = 0.05  # default relative standard error of the trace estimates


@dataclass
class Traces:
    """Average Hessian traces: `params` {"<layer>.weight": tr/numel}, `activations`
    {"<module>": per-sample tr/numel of its output}; `iterations` run, `converged` (tol met)."""

    params: dict[str, float]
    activations: dict[str, float]
    iterations: int
    converged: bool
    seconds: float

    def __getitem__(self, name: str) -> float:
        return self.params[name] if name in self.params else self.activations[name]


def _as_batches(batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A list of (x, y) batches, each non-empty with finite inputs (a NaN gave NaN traces,
    and the ILP then blamed an Omega)."""
    if isinstance(batches, tuple) and len(batches) == 2 and torch.is_tensor(batches[0]):
        batches = [batches]
    out = list(batches)
    if not out:
        raise ValueError("no batches: expected (x, y) or an iterable of (x, y) pairs")
    for k, (x, _) in enumerate(out):
        x = torch.as_tensor(x)
        if len(x) == 0:
            raise ValueError(f"batch {k} is empty")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            row = int((~torch.isfinite(x.reshape(len(x), -1))).any(1).nonzero()[0])
            raise ValueError(f"batch {k} has inputs that are not finite numbers (row {row}: "
                             f"{x[row].flatten()[:8].tolist()}); clean the data first")
    return out


def quantizable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Kernel and bias of every Linear/Conv1d/Conv2d module, by parameter name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_MODULES):
            out[f"{name}.weight"] = m.weight
            if m.bias is not None:
                out[f"{name}.bias"] = m.bias
    return out


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules a search space quantizes as activations (ReLU, Tanh, ..., Identity)."""
    return {n: m for n, m in model.named_modules()
            if n and isinstance(m, ACTIVATION_TYPES + LINEAR_TYPES)}


def _check_float(model: nn.Module):
    for n, m in model.named_modules():
        if isinstance(m, QLayer):
            raise ValueError(f"Hessian traces are taken on the float model; layer {n!r} is "
                             f"quantized ({type(m).__name__})")


@contextmanager
def _differentiable_eval(model: nn.Module, params: Mapping[str, torch.Tensor]):
    """Eval mode (batch norm statistics, no dropout), gradients on for `params`; restored."""
    was_training = model.training
    req = {n: p.requires_grad for n, p in params.items()}
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)
        for n, p in params.items():
            p.requires_grad_(req[n])


def _forward_capture(model, x, acts: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """model(x) and the output tensor of each module in `acts` (each must run once)."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name, out):
        if name in seen:
            raise ValueError(f"activation module {name!r} runs more than once per forward "
                             "pass; give each use its own module")
        seen[name] = out

    hs = [m.register_forward_hook(lambda mod, i, o, n=n: hook(n, o)) for n, m in acts.items()]
    try:
        out = model(x)
    finally:
        for h in hs:
            h.remove()
    return out, seen


class _Graphs:
    """Per batch: loss gradients w.r.t. the parameters and the activation outputs, kept with
    their graphs (create_graph=True) so Hessian-vector products can be taken repeatedly."""

    def __init__(self, model, loss_fn, batches, params: dict, acts: dict):
        dev = next(model.parameters()).device
        self.params, self.act_names, self.items = params, list(acts), []
        n_total = sum(len(x) for x, _ in batches)
        dtype = next(model.parameters()).dtype
        for x, y in batches:
            x, y = torch.as_tensor(x).to(dev), torch.as_tensor(y).to(dev)
            if x.is_floating_point():  # (a float64 model took float32 data: a torch error)
                x = x.to(dtype)
            try:
                out, seen = _forward_capture(model, x, acts)
            except RuntimeError as e:
                raise ValueError(f"the model does not take these samples (shape "
                                 f"{tuple(x.shape[1:])}): {str(e).splitlines()[0]}") from None
            loss = loss_fn(out, y)
            missing = [n for n in acts if n not in seen]
            if missing:
                raise ValueError(f"activation modules {missing} did not run in the forward pass")
            tensors = list(params.values()) + [seen[n] for n in self.act_names]
            grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            self.items.append((tensors, [grads[i] for i in live], live, len(x) / n_total,
                               len(x)))

    @staticmethod
    def block_hvp(item, i: int, v: torch.Tensor) -> torch.Tensor | None:
        """H_ii v for tensor i of one batch: its own Hessian block, none of the cross terms
        (None where the loss is at most linear in it)."""
        tensors, grads, live, _, _ = item
        if i not in live:
            return None
        (h,) = torch.autograd.grad(grads[live.index(i)], [tensors[i]], grad_outputs=v,
                                   retain_graph=True, allow_unused=True)
        return h


def _rademacher(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    v = torch.randint(0, 2, t.shape, generator=gen, dtype=torch.int8)
    return (v.to(t.dtype) * 2 - 1).to(t.device)


def hessian_traces(model: nn.Module, loss_fn: Callable, batches, *, tol: float = TRACE_TOL,
                   max_iter: int = 200, min_iter: int = 20, seed: int = 0,
                   activations: bool | Iterable[str] = True) -> Traces:
    """Average Hessian trace of every quantizable tensor by Hutchinson's method.

    Args:
        model: the float model (no quantized layers); it is evaluated in eval mode.
        loss_fn: loss_fn(model(x), y) -> scalar batch mean (e.g. `F.cross_entropy`).
        batches: (x, y) or an iterable of (x, y); their losses are averaged by batch size.
        tol: stop when the standard error of every trace's estimate is at most tol x its
            magnitude (after `min_iter` iterations; at most `max_iter`). One Rademacher
            sample of a jet MLP's trace has a spread of about 50% of the trace, so the
            default 5% takes about 100-150 iterations there. (HAWQ's criterion, the running
            mean moving by < 1e-3 in one step, is met only after ~400 there: it mostly
            measures luck, not precision.)
        activations: True for every activation module, False for none, or module names.
    """
    t0 = time.perf_counter()
    if isinstance(max_iter, bool) or not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter={max_iter!r}; expected a whole number >= 1 (0 gave every "
                         "trace 0.0)")
    if isinstance(min_iter, bool) or not (isinstance(min_iter, int) and 0 <= min_iter):
        raise ValueError(f"min_iter={min_iter!r}; expected a whole number >= 0")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or \
            not 0.0 <= tol < math.inf:  # ('0.1' was a TypeError from a comparison)
        raise ValueError(f"tol={tol!r}; expected a relative tolerance >= 0")
    _check_float(model)
    batches = _as_batches(batches)
    params = quantizable_params(model)
    if isinstance(activations, str):  # ("fc1" was read as the modules "f", "c" and "1")
        raise ValueError(f"activations={activations!r}; expected True, False or a list of "
                         f"module names, e.g. [{activations!r}]")
    if activations is True or activations is False:
        acts = activation_modules(model) if activations else {}
    else:
        mods = dict(model.named_modules())
        unknown = [n for n in activations if n not in mods]
        if unknown:
            raise ValueError(f"activations: no modules named {unknown} in the model")
        acts = {n: mods[n] for n in activations}
    with _differentiable_eval(model, params):
        graphs = _Graphs(model, loss_fn, batches, params, acts)
        names = list(params) + list(acts)
        sums, squares = np.zeros(len(names)), np.zeros(len(names))
        it, converged = 0, False
        gen = torch.Generator().manual_seed(seed)
        n_p = len(params)
        for it in range(1, max_iter + 1):
            est = np.zeros(len(names))
            for item in graphs.items:
                tensors, _, _, w, n_b = item
                for i, t in enumerate(tensors):
                    v = _rademacher(t, gen)
                    h = graphs.block_hvp(item, i, v)
                    if h is None:
                        continue
                    val = float((h * v).sum())
                    # parameters: trace of the size-weighted mean loss; activations: per
                    # sample and element (x batch size / numel), averaged over batches
                    est[i] += w * (val if i < n_p else val * n_b / max(t.numel(), 1))
            sums += est
            squares += est * est
            if it >= max(min_iter, 2):
                means = sums / it
                var = np.maximum(squares / it - means * means, 0.0) * it / (it - 1)
                if np.all(np.sqrt(var / it) <= tol * np.abs(means)):
                    converged = True
                    break
    numel = [p.numel() for p in params.values()] + [1] * len(acts)
    means = sums / max(it, 1) / np.array(numel, float)
    vals = {n: float(v) for n, v in zip(names, means)}
    return Traces({n: vals[n] for n in params}, {n: vals[n] for n in acts}, it, converged,
                  time.perf_counter() - t0)


def top_eigenvalue(model: nn.Module, loss_fn: Callable, batches, names: Iterable[str] | None
                   = None, *, max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
                   ) -> dict[str, float]:
    """Largest-magnitude eigenvalue of each parameter's Hessian block, by power iteration
    (v <- H v / ||H v||, lambda = v^T H v; stops when lambda moves by < tol relative)."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r}; expected a whole number >= 1 (0 gave every "
                         "eigenvalue 0.0)")
    _check_float(model)
    batches = _as_batches(batches)
    allp = dict(model.named_parameters())
    names = list(names) if names is not None else list(quantizable_params(model))
    unknown = [n for n in names if n not in allp]
    if unknown:
        raise ValueError(f"top_eigenvalue: no parameters named {unknown}")
    params = {n: allp[n] for n in names}
    out = {}
    gen = torch.Generator().manual_seed(seed)
    with _differentiable_eval(model, params):
        graphs = _Graphs(model, loss_fn, batches, params, {})
        for i, (name, p) in enumerate(params.items()):
            v = torch.randn(p.shape, generator=gen).to(p)
            v = v / v.norm()
            lam = 0.0
            for _ in range(max_iter):
                hv = torch.zeros_like(p)
                for item in graphs.items:
                    h = graphs.block_hvp(item, i, v)
                    if h is not None:
                        hv += item[3] * h
                new = float((hv * v).sum())
                v = hv / hv.norm().clamp_min(1e-30)
                done = abs(new - lam) <= tol * abs(new)
                lam = new
                if done:
                    break
            out[name] = lam
    return out
