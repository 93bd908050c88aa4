"""Trace a model once: the leaf modules in call order with their input/output shapes.

One forward pass on a zero tensor with forward hooks records which leaf modules run, in what
order, on what shapes. Types are then propagated along that order (a chain, as in the jet
and CNN models; branching graphs are traced in call order too, each layer taking the type of
the previously executed layer). Traces are cached per architecture, so repeated cost calls
inside a search (new weights and quantizers, the same layers) skip the forward pass. The key
holds everything the trace depends on: the input shape, each module's name, class and the
class's forward (an instance's own forward and hooks too), parameter and buffer shapes, and
its settings (stride, padding, pooling sizes, ... : its plain attributes), leaving out only the
quantizers inside hetq layers (elementwise: they change no shape and no call). A model with a
setting the key cannot hold by value (a tensor attribute, say) is traced every time.
"""

from __future__ import annotations

import functools
import types
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


_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device)
_CODE = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)


class _Unkeyable(Exception):
    """A setting the cache key cannot hold by value: trace that model every time."""


def _value(v):
    if isinstance(v, _PLAIN):
        return v
    if isinstance(v, (tuple, list)):  # (torch.Size is a tuple)
        return (type(v).__name__,) + tuple(_value(e) for e in v)
    if isinstance(v, _CODE):
        return v  # by identity: the same function object runs the same code
    raise _Unkeyable


def _settings(m: nn.Module) -> tuple:
    """The module's own plain attributes (stride, padding, kernel_size, ...); a hetq layer's
    quantizer slots are left out (quantizers are elementwise: no shape or call depends on
    them, and a search changes them every trial)."""
    skip = {f"{f}_quantizer" for f in m.quantizer_fields} if isinstance(m, QLayer) else ()
    return tuple((k, _value(v)) for k, v in sorted(vars(m).items())
                 if k[0] != "_" and k != "training" and k not in skip)


def _shapes(tensors: dict) -> tuple:
    return tuple((k, None if t is None else tuple(t.shape)) for k, t in tensors.items())


def _module_key(m: nn.Module, name: str, key: list) -> None:
    cls = type(m)
    d = vars(m)
    key.append((name, cls, getattr(cls, "forward", None), _shapes(d["_parameters"]),
                _shapes(d["_buffers"]), tuple(d["_forward_pre_hooks"].values()),
                tuple(d["_forward_hooks"].values()), _settings(m)))
    if not isinstance(m, QLayer):  # (a hetq layer's children are its quantizers)
        for n, c in d["_modules"].items():
            if c is not None:
                _module_key(c, f"{name}.{n}" if name else n, key)


def _signature(model: nn.Module, input_shape) -> tuple | None:
    """The cache key of `model`'s trace on `input_shape`; None if it cannot be keyed."""
    key: list = [tuple(input_shape)]
    try:
        _module_key(model, "", key)
    except _Unkeyable:
        return None
    return tuple(key)


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
    calls = _CACHE.get(key) if key is not None else None
    if calls is None:
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
        if key is not None:
            _CACHE[key] = calls
    return [Node(n, modules[n], i, o) for n, i, o in calls]
