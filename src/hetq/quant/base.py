"""Quantizer base class, the name registry and the QKeras string form.

A quantizer is a `torch.nn.Module` that maps a float tensor to a float tensor holding
quantized values ("fake quantization"). Subclasses keep QKeras' names, constructor
arguments and numerics. Every constructor argument is stored as an attribute of the same
name, which gives `get_config()`, `__str__` (the canonical QKeras string) and `__eq__`
for free.

Numeric arguments (`bits`, `integer`, `alpha`, ...) may be Python numbers or tensors that
broadcast against the input (per channel, per population member, or trainable). Tensor
arguments are registered as buffers (or kept as parameters when they are `nn.Parameter`),
so they follow `.to(device)` and appear in `state_dict()`.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import math
import numbers
import re
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .fixed import FixedType

_REGISTRY: dict[str, type[Quantizer]] = {}


def register(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator: make `cls` reachable by its QKeras name in `get_quantizer`."""
    _REGISTRY[cls.name] = cls
    return cls


def quantizer_names() -> list[str]:
    """The names `get_quantizer` parses (quantized_bits, quantized_relu, ...), sorted."""
    return sorted(_REGISTRY)


_SIGNATURES: dict[type, list[inspect.Parameter]] = {}


class Quantizer(nn.Module):
    """Base of all hetq quantizers.

    Class attributes a subclass sets:
      name:       QKeras name (`"quantized_bits"`), used in strings and configs.
      kind:       QTools mode: "fixed", "po2", "ternary", "binary", "binary01", "float" or
                  "other" (cost rules and exporters dispatch on it).
      positional: argument names written positionally in `str()`, in order.
      min_positional: how many positional arguments `str()` always writes.
      stochastic: True if the quantizer samples in training mode.
    """

    name: ClassVar[str] = "quantizer"
    kind: ClassVar[str] = "other"
    positional: ClassVar[tuple[str, ...]] = ()
    min_positional: ClassVar[int] = 0
    stochastic: ClassVar[bool] = False

    def __init__(self):
        super().__init__()
        # last computed scale (alpha) for auto-scaled quantizers; None when not scaled
        self.scale: torch.Tensor | float | None = None

    def __call__(self, x, *args, **kwargs):
        """As QKeras' quantizers take numpy arrays and numbers, so do these (a tensor comes
        back; integer input becomes the default float type)."""
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"{self}: expected a tensor, an array or a number, got "
                                 f"{type(x).__name__}") from None
            if not x.is_floating_point():
                x = x.to(torch.get_default_dtype())
        return super().__call__(x, *args, **kwargs)

    # -- argument handling ---------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        # any change of an argument invalidates the precomputed constants of the fast path
        self.__dict__["_fast"] = None

    def fast_constants(self):
        """Constants of a quantizer's fast path, computed once per argument change (None when
        not computed yet, False when the fast path does not apply)."""
        c = self.__dict__.get("_fast")
        if c is None:
            c = self._fast_constants()
            self.__dict__["_fast"] = c
        return c

    def _fast_constants(self):
        return False

    def _set_arg(self, key: str, value: Any) -> None:
        """Store a constructor argument; tensors become buffers so they move with the module.
        A flag (an argument whose default is True/False, or QKeras' 0/1 `symmetric`) must be
        one: `use_real_tanh='false'` or `symmetric=2` took effect as true."""
        if key in ("symmetric", "use_sigmoid") or any(
                p.name == key and isinstance(p.default, bool) for p in self._signature()):
            # as a plain bool or int (np.int64(1) printed as such, and the string did not
            # parse back; a tensor became a buffer)
            value = check_flag(self.name, key, value)
        if isinstance(value, nn.Parameter):
            self.register_parameter(key, value)
        elif isinstance(value, torch.Tensor):
            self.register_buffer(key, value.detach().clone(), persistent=True)
        else:
            setattr(self, key, value)

    @classmethod
    def _signature(cls) -> list[inspect.Parameter]:
        got = _SIGNATURES.get(cls)  # (per class, once: every argument's check asks for it)
        if got is None:
            params = list(inspect.signature(cls.__init__).parameters.values())[1:]
            got = _SIGNATURES[cls] = [p for p in params
                                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return got

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (tensors as nested lists), enough to rebuild an equal quantizer."""
        cfg = {}
        for p in self._signature():
            v = getattr(self, p.name)
            cfg[p.name] = v.detach().cpu().tolist() if isinstance(v, torch.Tensor) else v
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Quantizer:
        kw = {k: (torch.tensor(v) if isinstance(v, list) else v) for k, v in config.items()}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """Serialisable form `{"class_name": name, "config": {...}}` (as QKeras/Keras)."""
        return {"class_name": self.name, "config": self.get_config()}

    # -- string form ---------------------------------------------------------------------
    def __str__(self) -> str:
        sig = self._signature()
        pos_names = [n for n in self.positional]
        defaults = {p.name: p.default for p in sig}
        values = {p.name: getattr(self, p.name) for p in sig}

        def differs(n):
            return not _same_value(values[n], defaults[n])

        last_pos = self.min_positional
        for i, n in enumerate(pos_names):
            if differs(n):
                last_pos = max(last_pos, i + 1)
        parts = [_fmt(values[n]) for n in pos_names[:last_pos]]
        for p in sig:
            if p.name in pos_names[:last_pos]:
                continue
            if differs(p.name):
                parts.append(f"{p.name}={_fmt(values[p.name])}")
        return f"{self.name}({','.join(parts)})"

    def extra_repr(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return str(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Quantizer) or type(other) is not type(self):
            return NotImplemented
        a, b = self.get_config(), other.get_config()
        return all(_same_value(a[k], b[k]) for k in a)

    __hash__ = nn.Module.__hash__  # modules must stay hashable (identity), see nn.Module

    # -- interface -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def bits_value(self) -> float:
        """Number of bits as a Python float (max over elements for tensor-valued bits)."""
        b = getattr(self, "bits", None)
        if b is None:
            return 32.0
        return float(b.max()) if isinstance(b, torch.Tensor) else float(b)

    def bits_elements(self, shape) -> torch.Tensor | None:
        """Each element's own bits, as float64 broadcast to `shape`, where the quantizer is
        tensor-valued (per channel, per weight, per feature) and broadcasts to `shape`: its
        `bits`, or scalar `bits` with another tensor-valued argument (a per-channel integer:
        each element is `bits` wide, where one type for all of them is wider); None for a
        scalar quantizer (or a shape it does not broadcast to)."""
        b = getattr(self, "bits", None)
        args = self.tensor_shape()
        if b is None:
            return None
        if isinstance(b, torch.Tensor) and b.dim() > 0:
            b = b.detach().double()
        elif args is not None:
            b = torch.tensor(float(b), dtype=torch.float64)
        else:
            return None
        try:
            b = torch.broadcast_to(b, tuple(shape))
            if args is not None:
                torch.broadcast_shapes(args, tuple(shape))  # (its arguments broadcast too)
            return b
        except RuntimeError:
            return None

    def tensor_shape(self) -> tuple[int, ...] | None:
        """The broadcast shape of the quantizer's tensor-valued arguments (more than one
        element), or None when they are all scalars."""
        shapes = [tuple(t.shape) for t in (*self.parameters(recurse=False),
                                           *self.buffers(recurse=False)) if t.numel() > 1]
        return tuple(torch.broadcast_shapes(*shapes)) if shapes else None

    def bits_total(self, shape) -> float:
        """Bits of a whole tensor of `shape` under this quantizer: each element at its own
        width (`bits_elements`), else every element at `bits_value`."""
        e = self.bits_elements(shape)
        return float(e.sum()) if e is not None else math.prod(shape) * self.bits_value

    def fixed_type(self) -> FixedType | None:
        """The `FixedType` of the output grid, or None if the output is not plain fixed point
        (auto-scaled alpha, po2, ...). Tensor-valued parameters: see `fixed_types()`."""
        return None

    def max(self) -> float:
        """The largest value the quantizer outputs."""
        raise NotImplementedError

    def min(self) -> float:
        """The smallest value the quantizer outputs."""
        raise NotImplementedError

    def values(self) -> torch.Tensor | None:
        """All representable output values (ascending) where the set is finite and fixed."""
        ft = self.fixed_type()
        return None if ft is None else ft.values()

    @property
    def is_scalar(self) -> bool:
        """True when no argument is a tensor (one type for the whole tensor)."""
        # tensor-valued arguments are exactly the registered buffers/parameters (see _set_arg)
        return not self._buffers and not self._parameters


class Activation(nn.Module):
    """A float (unquantized) activation given by name: relu, softmax, sigmoid, tanh, linear."""

    FUNCTIONS = {
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softmax": lambda x: torch.softmax(x, dim=1),
        "linear": lambda x: x,
    }
    kind = "float"

    def __init__(self, name: str):
        super().__init__()
        if name not in self.FUNCTIONS:
            raise ValueError(
                f"unknown activation {name!r}; expected one of {sorted(self.FUNCTIONS)}")
        self.name = name
        self._fn = self.FUNCTIONS[name]

    def forward(self, x):
        return self._fn(x)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"

    def __eq__(self, other):
        return isinstance(other, Activation) and other.name == self.name

    __hash__ = nn.Module.__hash__

    def fixed_type(self):
        return None

    def to_dict(self):
        return {"class_name": "Activation", "config": {"name": self.name}}


# -- helpers shared by quantizers -------------------------------------------------------
def _same_value(a: Any, b: Any) -> bool:
    a, b = (x.item() if isinstance(x, torch.Tensor) and x.dim() == 0 else x for x in (a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        return a.shape == b.shape and bool(torch.equal(a.detach().cpu().double(),
                                                      b.detach().cpu().double()))
    if isinstance(a, list) or isinstance(b, list):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b and (a is None) == (b is None)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _fmt(v: Any) -> str:
    """A value as parse_spec reads it back; tensors as QKeras' `[1 2 3]`, nested with commas
    for rank >= 2 (`[[0.5],[2.0]]`)."""
    if isinstance(v, torch.Tensor):
        if v.dim() == 0:  # (a 0-dim tensor printed as [4.0] came back of shape (1,))
            return _fmt(v.item() + 0)
        if v.dim() >= 2:
            return "[" + ",".join(_fmt(row) for row in v) + "]"
        flat = [x + 0 for x in v.detach().cpu().flatten().tolist()]  # (+0: -0.0 prints 0.0)
        return "[" + " ".join(_fmt(x) for x in flat) + "]"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return repr(v)
    return repr(v)


_BRACKET_LIST = re.compile(r"\[([^\[\]]*)\]")


def _literal(node: ast.AST, spec: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if isinstance(node, ast.Name):  # a bare word, e.g. alpha=auto_po2
        if node.id.lower() in ("true", "false"):  # (as JSON and YAML write them: `false`
            return node.id.lower() == "true"  # was the text 'false', which is true)
        return node.id
    raise ValueError(f"cannot parse argument {ast.unparse(node)!r} in quantizer spec {spec!r}")


def parse_spec(spec: str) -> tuple[str, list[Any], dict[str, Any]]:
    """Split a QKeras-style string into (name, positional args, keyword args).

    Accepts `name`, `name()`, `name(1,2,key=value)`, string values in either quote style and
    QKeras' space-separated number lists `[1 2 3]` (which become tensors).
    """
    s = spec.strip()
    if not s:
        raise ValueError("empty quantizer spec ''")
    if "(" not in s:
        if not s.isidentifier():
            raise ValueError(f"cannot parse quantizer spec {spec!r}: not a name or name(args)")
        return s, [], {}
    if not s.endswith(")"):
        raise ValueError(f"cannot parse quantizer spec {spec!r}: missing closing ')'")

    def _commas(m: re.Match) -> str:
        body = m.group(1).strip()
        if "," in body:
            return "[" + body + "]"
        return "[" + ", ".join(body.split()) + "]"

    s2 = _BRACKET_LIST.sub(_commas, s)
    try:
        tree = ast.parse(s2, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse quantizer spec {spec!r}: {e.msg}") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ValueError(f"cannot parse quantizer spec {spec!r}: expected name(args)")
    args = [_literal(a, spec) for a in call.args]
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ValueError(f"cannot parse quantizer spec {spec!r}: '**' is not allowed")
        kwargs[kw.arg] = _literal(kw.value, spec)
    args = [torch.tensor(a, dtype=torch.float32) if isinstance(a, list) else a for a in args]
    kwargs = {
        k: torch.tensor(v, dtype=torch.float32) if isinstance(v, list) else v
        for k, v in kwargs.items()
    }
    return call.func.id, args, kwargs


# QKeras constructor arguments about TensorFlow itself (a variable's name, keeping settings
# in tf.Variables, a faster path that gives the same values): accepted and ignored
QKERAS_ONLY_ARGS = ("var_name", "use_variables", "enable_fast_inference")


# QKeras quantizers and arguments hetq does not provide (README, Differences from QKeras)
NOT_PROVIDED = {
    "bernoulli": "it samples at inference too, so it has no firmware form",
    "quantized_linear": "QKeras's 2023 rewrite, which QTools and AutoQKeras do not use; "
                        "quantized_bits computes the same grid",
}


def _not_provided(name: str, identifier) -> None:
    if name in NOT_PROVIDED:
        raise ValueError(f"{name!r} in {identifier!r} is a QKeras quantizer hetq does not "
                         f"provide: {NOT_PROVIDED[name]}")


def _arguments(cls, identifier, args, kwargs: dict) -> dict:
    """`kwargs` without QKeras' TensorFlow arguments, once `cls` is known to take them with
    `args`; else a ValueError quoting `identifier` and listing what `cls` takes."""
    if "elements_per_scale" in kwargs:
        raise ValueError(f"elements_per_scale in {identifier!r}: grouped scales are a QKeras "
                         "argument hetq does not provide (one scale per channel: scale_axis)")
    kwargs = {k: v for k, v in kwargs.items() if k not in QKERAS_ONLY_ARGS}
    try:
        inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    except TypeError as e:
        params = ", ".join(p.name for p in cls._signature())
        raise ValueError(f"bad arguments in {identifier!r}: {e}; {cls.name} takes "
                         f"({params})") from None
    return kwargs


def get_quantizer(identifier: Any) -> nn.Module | None:
    """Quantizer from a spec: None, a string, a `{"class_name", "config"}` dict or an object.

    Strings follow QKeras: `"quantized_relu(3)"`, `"quantized_bits(4,0,1,alpha='auto_po2')"`,
    `"stochastic_ternary('auto')"`, bare names (`"ternary"`), and the float activations
    `"relu"`, `"softmax"`, `"sigmoid"`, `"tanh"`, `"linear"` (returned as `Activation`).
    Unknown names or bad arguments raise ValueError quoting the string. QKeras' TensorFlow
    arguments (`QKERAS_ONLY_ARGS`: var_name, use_variables, enable_fast_inference) are
    accepted and ignored.
    """
    if identifier is None:
        return None
    if isinstance(identifier, nn.Module):
        return identifier
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        cfg = identifier.get("config", {})
        other = sorted(map(str, set(identifier) - {"class_name", "config", "module",
                                                     "registered_name", "shared_object_id"}))
        if other:  # ('confg' gave the default quantized_bits(8,0) without a word)
            raise ValueError(f"unknown key(s) {', '.join(map(repr, other))} in {identifier!r}; "
                             "expected 'class_name' and 'config' (Keras' 'module', "
                             "'registered_name' and 'shared_object_id' are ignored)")
        if not isinstance(cfg, dict):
            raise ValueError(f"the config of {identifier!r} must be a dict of arguments, got "
                             f"{type(cfg).__name__}")
        if name == "Activation":
            if set(cfg) != {"name"}:
                raise ValueError(f"bad config in {identifier!r}: an Activation takes one "
                                 "argument, 'name' (e.g. {'name': 'relu'})")
            return Activation(**cfg)
        if name not in _REGISTRY:
            _not_provided(name, identifier)
            raise ValueError(
                f"unknown quantizer class_name {name!r} in {identifier!r}; "
                f"valid names: {', '.join(quantizer_names())}"
            )
        cls = _REGISTRY[name]
        return cls.from_config(_arguments(cls, identifier, (), cfg))
    if not isinstance(identifier, str):
        raise ValueError(
            f"cannot make a quantizer from {identifier!r} ({type(identifier).__name__}); "
            "expected None, a string, a dict or a Quantizer"
        )
    name, args, kwargs = parse_spec(identifier)
    if name not in _REGISTRY:
        if name in Activation.FUNCTIONS and not args and not kwargs:
            return Activation(name)
        _not_provided(name, identifier)
        raise ValueError(
            f"unknown quantizer {name!r} in {identifier!r}; valid names: "
            f"{', '.join(quantizer_names())} (float activations: "
            f"{', '.join(sorted(Activation.FUNCTIONS))})"
        )
    cls = _REGISTRY[name]
    kwargs = _arguments(cls, identifier, args, kwargs)
    try:
        return cls(*args, **kwargs)
    except ValueError as e:
        raise ValueError(f"bad quantizer {identifier!r}: {e}") from None


# -- numeric helpers -------------------------------------------------------------------
EPS = 1e-7  # K.epsilon() in the reference


def exp2(v):
    """2**v for a number (Python float) or a tensor (same dtype)."""
    if isinstance(v, torch.Tensor):
        return torch.exp2(v.to(torch.get_default_dtype()) if not v.is_floating_point() else v)
    return math.ldexp(1.0, int(v)) if float(v).is_integer() else 2.0 ** v


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through: forward value exactly `q`, gradient of `x`.

    Written q + (x - stop_gradient(x)) rather than the usual x + stop_gradient(q - x): the
    bracket is exactly 0, so the forward value is bit-exactly q (x + (q - x) can round when q is
    much larger than x, e.g. a binary scale against a tiny weight), which the integer engine
    and the exporters rely on."""
    return q.detach() + (x - x.detach())


def no_gradient(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward value exactly `q`, gradient 0 to `x` but attached to it: QKeras' use_ste=False
    at qnoise_factor 1, (1 - 1) x + Q(x). (A detached `q` made backward() fail with 'does
    not require grad'.) Infinite inputs keep `q` finite."""
    return q.detach() + torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) * 0.0


def check_bits(name: str, bits: Any, minimum: int = 1) -> None:
    """Raise ValueError unless `bits` (number or tensor) is >= minimum everywhere."""
    lo = float(bits.min()) if isinstance(bits, torch.Tensor) else bits
    if isinstance(lo, bool) or not isinstance(lo, (int, float)) or lo < minimum:
        raise ValueError(f"{name}: bits must be >= {minimum}, got {bits!r}")
    hi = float(bits.max()) if isinstance(bits, torch.Tensor) else bits
    if hi > MAX_BITS:  # (200 bits overflowed float inside torch, blamed on the data)
        raise ValueError(f"{name}: bits must be <= {MAX_BITS} (the widest exact integers), got "
                         f"{bits!r}")
    check_whole(name, "bits", bits)


MAX_BITS = 64


def check_qnoise(name: str, qnoise_factor: Any) -> None:
    """qnoise_factor mixes the float and the quantized value: a fraction in [0, 1]."""
    if isinstance(qnoise_factor, torch.Tensor):
        ok = bool(((qnoise_factor >= 0) & (qnoise_factor <= 1)).all())
    else:
        ok = (isinstance(qnoise_factor, (int, float)) and not isinstance(qnoise_factor, bool)
              and 0.0 <= qnoise_factor <= 1.0)
    if not ok:
        raise ValueError(f"{name}: qnoise_factor={qnoise_factor!r}; expected a fraction in "
                         "[0, 1] (1: fully quantized)")


def check_positive(name: str, what: str, value: Any, zero: bool = False) -> None:
    """Raise ValueError unless `value` (a number, or a non-empty tensor / list) is finite and
    > 0 everywhere (`zero`: >= 0); a bool is no number here. (0, negative and empty scales,
    bounds and temperatures were taken, and gave NaN, zeros or flipped signs.)"""
    ok = not isinstance(value, (bool, str, bytes))
    if ok:
        try:
            t = torch.as_tensor(value, dtype=torch.float64)
            ok = t.numel() > 0 and bool(torch.isfinite(t).all()) and bool(
                ((t >= 0) if zero else (t > 0)).all())
        except (TypeError, ValueError, RuntimeError):
            ok = False
    if not ok:
        raise ValueError(f"{name}: {what}={value!r}; expected a finite number "
                         f"{'>= 0' if zero else '> 0'} (or one per channel)")


def check_scale(name: str, alpha: Any) -> None:
    """A numeric `alpha` (a scale, or one per channel) must be > 0: 0, negative, empty or
    True was taken (zeros, flipped signs); None and the strings are the caller's to check."""
    if alpha is None or isinstance(alpha, str):
        return
    try:
        check_positive(name, "alpha", alpha)
    except ValueError:
        raise ValueError(f"{name}: alpha={alpha!r}; expected a scale > 0 (a number or one per "
                         "channel), None, 'auto' or 'auto_po2'") from None


def check_flag(name: str, what: str, value: Any) -> bool | int:
    """`value` as a plain bool, or 0 / 1; ValueError unless it is True/False or 0/1
    (keep_negative=2 was taken): a bool, a number, or a numpy or one-element tensor
    scalar."""
    v = value
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if not (isinstance(v, (bool, numbers.Real)) and v in (0, 1)):
        raise ValueError(f"{name}: {what}={value!r}; expected True or False (or 1 / 0)")
    return v if isinstance(v, bool) else int(v)


def check_whole(name: str, what: str, value: Any) -> None:
    """Raise ValueError unless `value` (number or tensor) is a whole number everywhere: a
    width of 4.5 bits has no fixed-point type (and QKeras would quietly use 2**3.5 levels)."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
        whole = bool(torch.isfinite(t).all()) and not bool((t != torch.round(t)).any())
    except (TypeError, ValueError, RuntimeError):
        whole = False
    if not whole:
        raise ValueError(f"{name}: {what} must be a whole number, got {value!r}")


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """`model` in eval mode inside the block, back in the mode it had after it (also when the
    block raises)."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def check_module(model: Any, who: str, values: bool = False) -> nn.Module:
    """`model` if it is a torch module; else a ValueError naming `who` and what it got (a
    zoo name is pointed to `hetq.build`). values: `who` computes with the weights, so a
    model on the 'meta' device (shapes only) is a ValueError too (torch's own was "Cannot
    copy out of meta tensor" from deep inside)."""
    if isinstance(model, nn.Module):
        if values:
            meta = next((n for n, t in (*model.named_parameters(), *model.named_buffers())
                         if t.is_meta), None)
            if meta is not None:
                raise ValueError(f"{who}: the model's tensors are on the 'meta' device (shapes "
                                 f"without values; the first: {meta}); give them values first, "
                                 "e.g. model.to_empty(device='cpu') and load_state_dict")
        return model
    hint = f"; build one with hetq.build({model!r})" if isinstance(model, str) else ""
    raise ValueError(f"{who} needs a torch.nn.Module, got {type(model).__name__}{hint}")
