"""Trace a model once: the leaf modules in call order with their input/output shapes.

One forward pass on a zero tensor with forward hooks records which leaf modules run, in what
order, on what shapes. Types are then propagated along that order (a chain, as in the jet
and CNN models; branching graphs are traced in call order too, each layer taking the type of
the previously executed layer). Traces are cached per architecture (module types, weight
shapes, input shape), so repeated cost calls inside a search skip the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..quant.layers import QLayer

_CACHE: dict[tuple, list[tuple[str, tuple, tuple]]] = {}


@dataclass
class Node:
    name: str
    module: nn.Module
    in_shape: tuple[int, ...]  # without the batch dimension
    out_shape: tuple[int, ...]


def leaf_modules(model: nn.Module) -> dict[int, str]:
    """{id: name} of the units the cost model sees: hetq layers (their quantizers are part of
    them) and float modules without children."""
    out, inside = {}, []
    for n, m in model.named_modules():
        if not n or any(n.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, QLayer):
            out[id(m)] = n
            inside.append(n)
        elif not any(True for _ in m.children()):
            out[id(m)] = n
    return out


def _signature(model: nn.Module, input_shape) -> tuple:
    return (tuple(input_shape),) + tuple(
        (n, type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
        for n, m in model.named_modules() if n)


def as_input_shape(input_shape) -> tuple[int, ...]:
    """One sample's shape as a tuple of ints (an int n is (n,)); a ValueError for anything
    that is not positive integer sizes."""
    bad = ValueError(f"input shape {input_shape!r}: expected positive integer sizes without the "
                     "batch dimension, e.g. (16,) or (1, 8, 8)")
    if isinstance(input_shape, int) or hasattr(input_shape, "__index__"):
        input_shape = (input_shape,)
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__"):
        raise bad
    dims = tuple(input_shape)
    try:
        ints = tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        raise bad from None
    if not ints or any(i < 1 or i != d for i, d in zip(ints, dims)):
        raise bad
    return ints


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> list[Node]:
    """Leaf modules of `model` in execution order, with shapes (batch dimension dropped)."""
    input_shape = as_input_shape(input_shape)
    key = _signature(model, input_shape)
    modules = dict(model.named_modules())
    if key not in _CACHE:
        calls: list[tuple[str, tuple, tuple]] = []
        names = leaf_modules(model)
        hooks = []

        def hook(mod, inp, out, name=None):
            x = inp[0] if inp else None
            if isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor):
                calls.append((name, tuple(x.shape[1:]), tuple(out.shape[1:])))

        for n, m in model.named_modules():
            if id(m) in names and n == names[id(m)]:
                hooks.append(m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)))
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                p = next(model.parameters(), None)
                dev = p.device if p is not None else "cpu"
                dt = p.dtype if p is not None and p.is_floating_point() else torch.float32
                try:
                    model(torch.zeros((1, *input_shape), device=dev, dtype=dt))
                except RuntimeError as e:  # e.g. a Linear layer of another width
                    raise ValueError(f"the model does not run on inputs of shape "
                                     f"{tuple(input_shape)} (batch dimension excluded): "
                                     f"{str(e).splitlines()[0]}") from None
        finally:
            model.train(was)
            for h in hooks:
                h.remove()
        _CACHE[key] = calls
    return [Node(n, modules[n], i, o) for n, i, o in _CACHE[key]]
