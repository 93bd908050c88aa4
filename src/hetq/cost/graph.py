"""Trace a model once: the leaf modules in call order with their input/output shapes.

One forward pass on a fixed random sample with forward hooks records which leaf modules run,
in what order, on what shapes. Types are then propagated along that order (a chain, as in the
jet and CNN models; branching graphs are traced in call order too, each layer taking the type
of the previously executed layer). The same pass checks that this order is the model (`Chain`):
each layer takes the previous one's output and the model returns the last one's. What a
forward does outside its layers (F.relu, a residual `+ x`, torch.cat, a parent's own
arithmetic) breaks that, and so does a layer whose output is no tensor (LSTM, GRU), which the
trace leaves out. The integer engine refuses such models; the cost model warns.

Traces are cached per architecture, so repeated cost calls inside a search (new weights and
quantizers, the same layers) skip the forward pass. The key holds everything the trace
depends on: the input shape, each module's name, class and the class's forward (an
instance's own forward and hooks too), parameter and buffer shapes, and its settings (stride,
padding, pooling sizes, ... : its plain attributes), leaving out only the quantizers inside
hetq layers (elementwise: they change no shape and no call). A model with a setting the key
cannot hold by value (a tensor attribute, say) is traced every time.
"""

from __future__ import annotations

import functools
import math
import types
from dataclasses import dataclass

import torch
from torch import nn

from ..quant.base import eval_mode
from ..quant.layers import QLayer

_CACHE: dict[tuple, tuple[list[tuple[str, tuple, tuple]], Chain]] = {}


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
    if math.prod(ints) > 2**31:  # (a sample of 1e20 values ended in an overflow traceback)
        raise ValueError(f"input shape {input_shape!r}: {math.prod(ints):.3g} values in one "
                         "sample; expected a sample of at most 2**31 values")
    return ints


@dataclass(frozen=True)
class Chain:
    """Whether running the traced layers one after another is the model's forward, as seen on
    the traced sample: each layer takes the previous one's output (the first, the model's
    input) and the model returns the last one's."""

    left_out: tuple[str, ...] = ()  # layers whose output is no tensor (LSTM, GRU: a tuple)
    detour: str | None = None  # where the data first goes another way, e.g. through F.relu
    reshape: str | None = None  # where a layer's output is first reshaped before the next

    def broken(self) -> str | None:
        """What breaks the chain (the first of those), or None."""
        return self.left_out[0] if self.left_out else self.detour or self.reshape


class _Recorder:
    """Forward (pre-)hooks that record the leaf calls and check that they form a chain."""

    def __init__(self, x: torch.Tensor):
        self.calls: list[tuple[str, tuple, tuple]] = []
        self.left_out: list[str] = []
        self.detour: str | None = None
        self.reshape: str | None = None
        self.prev: torch.Tensor | None = x.clone()
        self.prev_name = "the model's input"

    def before(self, name, mod, args, kwargs):
        if self.detour is not None:
            return
        x = args[0] if len(args) == 1 and not kwargs else None
        if not isinstance(x, torch.Tensor):
            self.detour = (f"{name!r} is called with {len(args)} positional and {len(kwargs)} "
                           "keyword arguments, not one tensor")
        elif not _same_values(x, self.prev):
            self.detour = f"the input of {name!r} is not {self.prev_name}"
        elif x.shape != self.prev.shape and self.reshape is None:
            self.reshape = (f"{self.prev_name} is reshaped from {tuple(self.prev.shape[1:])} to "
                            f"{tuple(x.shape[1:])} before {name!r}")

    def after(self, name, mod, args, kwargs, out):
        self.prev_name = f"the output of {name!r}"
        if not isinstance(out, torch.Tensor):
            self.left_out.append(f"{name!r} ({type(mod).__name__}) returns a "
                                 f"{type(out).__name__}, not a tensor")
            self.prev = None
            return
        x = args[0] if args else None
        if isinstance(x, torch.Tensor):
            self.calls.append((name, tuple(x.shape[1:]), tuple(out.shape[1:])))
        self.prev = out.detach().clone()  # (as returned: the next op may change it in place)

    def end(self, y) -> Chain:
        # (only the values count here: a reshaped output compares the same)
        if self.detour is None and not (isinstance(y, torch.Tensor)
                                        and _same_values(y, self.prev)):
            self.detour = f"the model's output is not {self.prev_name}"
        return Chain(tuple(self.left_out), self.detour, self.reshape)


def _same_values(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """The same values, sample by sample, in the same order (shapes aside), NaN equal NaN."""
    if b is None or a.dtype != b.dtype or a.shape[:1] != b.shape[:1] or a.numel() != b.numel():
        return False
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return torch.equal(a, b) or (a.is_floating_point() and bool(
        torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all()))


def _record(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list, Chain]:
    names = leaf_modules(model)
    hooks = []
    try:
        p = next(model.parameters(), None)
        dev = p.device if p is not None else "cpu"
        dt = p.dtype if p is not None and p.is_floating_point() else torch.float32
        # a fixed random sample (not zeros: an added input or a ReLU outside the layers
        # would change nothing on zeros), without touching the global random stream
        g = torch.Generator().manual_seed(0)
        x = torch.randn((2, *input_shape), generator=g).to(device=dev, dtype=dt)
        rec = _Recorder(x)
        for n, m in model.named_modules():
            if id(m) in names and n == names[id(m)]:
                hooks.append(m.register_forward_pre_hook(
                    lambda mod, a, k, n=n: rec.before(n, mod, a, k), with_kwargs=True))
                hooks.append(m.register_forward_hook(
                    lambda mod, a, k, o, n=n: rec.after(n, mod, a, k, o), with_kwargs=True))
        with torch.no_grad(), eval_mode(model):
            try:
                y = model(x)
            except RuntimeError as e:  # e.g. a Linear layer of another width
                raise ValueError(f"the model does not run on inputs of shape "
                                 f"{tuple(input_shape)} (batch dimension excluded): "
                                 f"{str(e).splitlines()[0]}") from None
    finally:
        for h in hooks:
            h.remove()
    return rec.calls, rec.end(y)


def traced(model: nn.Module, input_shape, *, fresh: bool = False) -> tuple[list[Node], Chain]:
    """The leaf modules of `model` in execution order, with shapes (batch dimension dropped),
    and whether they form a chain (`Chain`); `fresh`: trace again rather than reuse a cached
    trace of the same architecture (another model's weights)."""
    input_shape = as_input_shape(input_shape)
    key = _signature(model, input_shape)
    modules = dict(model.named_modules())
    hit = _CACHE.get(key) if key is not None and not fresh else None
    if hit is None:
        hit = _record(model, input_shape)
        if key is not None:
            _CACHE[key] = hit
    calls, chain = hit
    return [Node(n, modules[n], i, o) for n, i, o in calls], chain


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> list[Node]:
    """Leaf modules of `model` in execution order, with shapes (batch dimension dropped)."""
    return traced(model, input_shape)[0]
