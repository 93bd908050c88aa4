"""Search space: per-layer, per-field quantizer choices, layer widths, sparsity, learning rate.

A `SearchSpace` is built from a float model and turns into Optuna distributions. A sampled
point becomes a `Candidate`: a per-layer quantization config (exact layer names), width
multipliers, sparsities and a learning rate, from which the trial model is built.

`limit` (AutoQKeras semantics, spec §5.3, with two quirks fixed):
    keys   exact layer names, name regexes (`re.match`), layer types ("Linear", "Dense",
           "Conv2d", "ReLU", "Activation", ...) or "default" (which only pads, below);
    values [kernel, bias, activation] for weight layers (Linear, Conv1d and Conv2d, a
           depthwise one included; a separable convolution or a QActivation the model is
           built with keeps its quantizers and is no slot), [activation] for activation
           layers (the last
           entry is used); each entry is a maximum bit count (candidates with bits <= it) or
           an explicit list of quantizer strings; short lists of type keys are padded from
           "default" (8 when absent).
    Layers matched by a regex share one choice per field (one Optuna parameter
    `<regex>/<field>`); every other layer gets its own (`<layer>/<field>`). A single candidate
    is fixed (no parameter). Layers matched by no key stay float.
Precedence: exact name, then the first matching regex in dict order, then type; "default"
matches no layer itself. Fixed quirks of the reference: type keys are never also tried as
regexes, and a layer whose name contains "kernel" or "bias" is not mis-classified.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import MAX_WEIGHTS
from ..models.resize import new_width, resizable_layers
from ..quant import get_quantizer

# AutoQKeras' default candidates with their bit cost (spec §5.2), written with the alpha they
# effectively train with: QKeras layers silently turn a kernel quantizer's alpha=None into
# 'auto_po2', hetq never does, so the binary/ternary kernel candidates say 'auto_po2' and the
# fixed-point ones alpha=1 (as the AutoQKeras notebook writes them).
DEFAULT_QUANTIZATION_CONFIG: dict[str, dict[str, int]] = {
    "kernel": {
        "binary(alpha='auto_po2')": 1,
        "stochastic_binary(alpha='auto_po2')": 1,
        "ternary(alpha='auto_po2')": 2,
        "stochastic_ternary(alpha='auto_po2')": 2,
        "quantized_bits(2,1,1,alpha=1.0)": 2,
        "quantized_bits(4,0,1,alpha=1.0)": 4,
        "quantized_bits(8,0,1,alpha=1.0)": 8,
        "quantized_po2(4,1)": 4,
    },
    "bias": {
        "quantized_bits(4,0,1)": 4,
        "quantized_bits(8,3,1)": 8,
        "quantized_po2(4,8)": 4,
    },
    "activation": {
        "binary": 1,
        "binary(alpha='auto_po2')": 1,
        "ternary": 2,
        "quantized_relu(3,1)": 3,
        "quantized_relu(4,2)": 4,
        "quantized_relu(8,2)": 8,
        "quantized_relu(8,4)": 8,
        "quantized_relu(16,8)": 16,
        "quantized_relu_po2(4,4)": 4,
    },
    "linear": {
        "binary": 1,
        "ternary": 2,
        "quantized_bits(4,1)": 4,
        "quantized_bits(8,2)": 8,
        "quantized_bits(16,10)": 16,
        "quantized_po2(6,4)": 6,
    },
}

# The same maps with only the activations the hls4ml export runs bit-exactly (ap_fixed casts:
# quantized_relu / quantized_bits). The reference's defaults also hold binary/ternary/po2
# activations (table lookups in the integer engine, no exact hls4ml layer) and
# binary(alpha='auto_po2'), whose scale depends on the batch and so cannot be deployed.
DEPLOYABLE_QUANTIZATION_CONFIG: dict[str, dict[str, int]] = {
    "kernel": dict(DEFAULT_QUANTIZATION_CONFIG["kernel"]),
    "bias": dict(DEFAULT_QUANTIZATION_CONFIG["bias"]),
    "activation": {k: v for k, v in DEFAULT_QUANTIZATION_CONFIG["activation"].items()
                   if k.startswith("quantized_relu(")},
    "linear": {k: v for k, v in DEFAULT_QUANTIZATION_CONFIG["linear"].items()
               if k.startswith("quantized_bits(")},
}

DEFAULT_WIDTH_MULTIPLIERS = (0.5, 0.75, 1.0, 1.5, 2.0)

# layer kinds: which config map each field draws from
WEIGHT_TYPES = {
    nn.Linear: ("kernel", "bias"),
    nn.Conv1d: ("kernel", "bias"),
    nn.Conv2d: ("kernel", "bias"),
}
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Hardswish)
LINEAR_TYPES = (nn.Identity,)
TYPE_ALIASES = {
    "Dense": "Linear", "QDense": "Linear", "QLinear": "Linear",
    "Conv1D": "Conv1d", "QConv1D": "Conv1d", "QConv1d": "Conv1d",
    "Conv2D": "Conv2d", "QConv2D": "Conv2d", "QConv2d": "Conv2d",
    "Activation": "activation", "QActivation": "activation",
}


@dataclass
class LayerSlot:
    """One searchable layer: its name, kind ("weight"/"activation"/"linear") and fields."""

    name: str
    kind: str
    type_name: str
    fields: tuple[str, ...]
    module: nn.Module = field(repr=False)


@dataclass
class Param:
    """One Optuna parameter: a categorical over quantizer strings shared by `targets`."""

    name: str
    choices: tuple[str, ...]
    targets: list[tuple[str, str]]  # (layer name, field)


@dataclass
class Candidate:
    """A point of the space, ready to build a trial model from."""

    quant_config: dict[str, dict[str, str]]
    widths: dict[str, float] = field(default_factory=dict)
    sparsity: dict[str, float] = field(default_factory=dict)
    lr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"quant_config": self.quant_config, "widths": self.widths,
                "sparsity": self.sparsity, "lr": self.lr}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(dict(d["quant_config"]), dict(d.get("widths", {})),
                   dict(d.get("sparsity", {})), d.get("lr"))


def _layer_slots(model: nn.Module) -> list[LayerSlot]:
    slots = []
    for name, m in model.named_modules():
        if not name:
            continue
        for t, fields in WEIGHT_TYPES.items():
            if type(m) is t or (isinstance(m, t) and type(m).__name__.startswith("Q")):
                has_bias = getattr(m, "bias", None) is not None
                f = tuple(x for x in fields if x != "bias" or has_bias)
                slots.append(LayerSlot(name, "weight", t.__name__, f, m))
                break
        else:
            if isinstance(m, ACTIVATION_TYPES):
                slots.append(LayerSlot(name, "activation", type(m).__name__, ("activation",), m))
            elif isinstance(m, LINEAR_TYPES):
                slots.append(LayerSlot(name, "linear", type(m).__name__, ("activation",), m))
    return slots


def _check_call_order(model: nn.Module, layers: list[str],
                      shape: Sequence[int] | None) -> None:
    """Width search resizes a chain in module order: the forward must call `layers` in that
    order (a model registering its output layer first would have it resized). `shape`: one
    sample's (the data's), else inferred from the model."""
    from ..cost.graph import trace
    from ..cost.report import infer_input_shape

    if shape is None:
        try:
            shape = infer_input_shape(model, check=False)  # (checked below, in its words)
        except ValueError:  # (an image model of several sizes: its order is not checked)
            return
    shape = tuple(shape)
    order = ("width search resizes the layers in the order they are registered, which must "
             "be the order the forward calls them; register them in call order (e.g. an "
             "nn.Sequential), or search without --tune-filters")
    try:
        called = [n.name for n in trace(model, shape) if n.name in layers]
    except ValueError:  # the first layer registered does not take the model's input
        raise ValueError(f"width search: the model does not run on inputs of its first "
                         f"registered layer {layers[0]!r}, shape {shape}; {order}") from None
    if called != layers:
        raise ValueError(f"width search: the model's layers are registered in the order "
                         f"{layers} but its forward calls them in the order {called}; {order}")


def _canonical(spec: str) -> str:
    try:
        return str(get_quantizer(spec))
    except ValueError as e:
        raise ValueError(f"search space: candidate quantizer does not parse: {e}") from None


class SearchSpace:
    """Per-layer quantizer choices (plus optional widths, sparsity, learning rate).

    Args:
        model: the float model (nn.Module); layers are found by `named_modules()`.
        quantization_config: {"kernel"|"bias"|"activation"|"linear": {spec: bits}}; missing maps
            come from `DEFAULT_QUANTIZATION_CONFIG`.
        limit: see the module docstring; None searches every layer with the full maps.
        tune_filters: "none", "layer" (one multiplier per layer) or "block" (one shared).
        width_multipliers: the multiplier choices.
        tune_filters_exceptions: regex of layer names whose width is never changed; the last
            weight layer (the classifier) is always excepted.
        sparsity: choices of the fraction of weights pruned per weight layer (None: no pruning).
        learning_rates: choices of learning rate (None: not searched).
        input_shape: one sample's shape (the data's), for the width search's check that the
            forward calls the layers in their registered order (None: inferred).
    """

    def __init__(self, model: nn.Module, quantization_config: Mapping | None = None,
                 limit: Mapping | None = None, tune_filters: str = "none",
                 width_multipliers: Sequence[float] = DEFAULT_WIDTH_MULTIPLIERS,
                 tune_filters_exceptions: str | None = None,
                 sparsity: Sequence[float] | None = None,
                 learning_rates: Sequence[float] | None = None,
                 input_shape: Sequence[int] | None = None):
        if tune_filters not in ("none", "layer", "block"):
            raise ValueError(f"tune_filters={tune_filters!r}; expected 'none', 'layer' or 'block'")
        qc = {k: dict(v) for k, v in DEFAULT_QUANTIZATION_CONFIG.items()}
        for k, v in (quantization_config or {}).items():
            if k not in qc:
                raise ValueError(f"quantization_config key {k!r}; expected one of {sorted(qc)}")
            if not isinstance(v, Mapping):
                raise ValueError(f"quantization_config {k}: expected a mapping of candidate "
                                 f"to bit cost, e.g. {{'quantized_bits(4,0,1)': 4}}; got "
                                 f"{type(v).__name__} {v!r}")
            for spec, b in v.items():
                if isinstance(b, bool) or not isinstance(b, int) or b < 0:
                    raise ValueError(f"quantization_config {k}: {spec!r}: {b!r}; expected its "
                                     "bit cost, an integer >= 0")
            qc[k] = dict(v)
        for k in qc:  # every map, given or default, in canonical spelling (parsed once)
            qc[k] = {_canonical(s): b for s, b in qc[k].items()}
        self.quantization_config = qc
        self.limit = _checked_limit(limit) if limit is not None else None
        self.slots = _layer_slots(model)
        if not self.slots:
            raise ValueError("search space is empty: the model has no Linear/Conv/activation "
                             "layers to quantize")
        self.params: list[Param] = []
        self.fixed: list[tuple[str, str, str]] = []  # (layer, field, spec) with one choice
        self._build_quantizer_params()
        weight_slots = [s for s in self.slots if s.kind == "weight"]
        self.width_params: dict[str, tuple[list[str], tuple[float, ...]]] = {}
        if tune_filters != "none":
            exc = re.compile(tune_filters_exceptions) if tune_filters_exceptions else None
            # every layer resize_model can resize (a separable convolution too), but the
            # output layer, the last of them in the order the forward calls them
            resizable = resizable_layers(model)
            _check_call_order(model, resizable, input_shape)
            tunable = [n for n in resizable[:-1] if not (exc and exc.match(n))]
            if exc and len(tunable) == len(resizable[:-1]):
                warnings.warn(f"search space: tune_filters_exceptions "
                              f"{tune_filters_exceptions!r} matches no resizable layer "
                              f"({', '.join(resizable[:-1])})", stacklevel=3)
            elif not tunable:
                warnings.warn("search space: width search has no layer left to resize "
                              "(tune_filters_exceptions takes them all)", stacklevel=3)
            if tunable:  # a model too large to build: said now, not killed for memory later
                _check_widest(model, tunable, max(float(m) for m in width_multipliers))
            if tunable and set(width_multipliers) == {1}:
                warnings.warn("search space: width multipliers of 1 only: the width search "
                              "changes nothing", stacklevel=3)
            if tunable:
                mults = tuple(float(m) for m in width_multipliers)
                if tune_filters == "layer":
                    for n in tunable:
                        self.width_params[f"width/{n}"] = ([n], mults)
                else:
                    self.width_params["width/block"] = (tunable, mults)
        self.sparsity_params = {}
        if sparsity:
            choices = tuple(float(s) for s in sparsity)
            for s in weight_slots:
                self.sparsity_params[f"sparsity/{s.name}"] = (s.name, choices)
        self.learning_rates = tuple(learning_rates) if learning_rates else None
        if not self.params and not self.width_params and not self.sparsity_params \
                and not self.learning_rates:
            raise ValueError("search space is empty: every field has a single choice (check "
                             "`limit` and `quantization_config`)")

    # -- construction --------------------------------------------------------------------
    def _match(self, slot: LayerSlot):
        """(key, is_group) of the limit entry that applies to `slot`, or (None, False)."""
        if self.limit is None:
            return None, False
        if slot.name in self.limit:
            return slot.name, False
        types = {slot.type_name, "activation" if slot.kind != "weight" else slot.type_name}
        type_keys = [k for k in self.limit if TYPE_ALIASES.get(k, k) in types]
        for k in self.limit:
            if k == "default" or k in type_keys or TYPE_ALIASES.get(k, k) in _ALL_TYPE_NAMES:
                continue
            if re.match(k, slot.name):
                return k, True
        if type_keys:
            return type_keys[0], False
        # ("default" only pads the lists of type keys: a layer no other key matches stays
        # float, as in AutoQKeras; it was searched here)
        return None, False

    def _entry(self, key, slot: LayerSlot, field_index: int):
        if key is None:
            return None  # no limit at all: every candidate
        value = self.limit[key]
        if isinstance(value, (int, float, str)):
            value = [value]
        value = list(value)
        if slot.kind != "weight":
            return value[-1] if value else None
        default = self.limit.get("default", 8)
        default = list(default) if isinstance(default, (list, tuple)) else [default] * 3
        while len(value) < 3:
            value.append(default[len(value)] if len(value) < len(default) else default[-1])
        return value[field_index]

    def _choices(self, map_name: str, entry) -> tuple[str, ...]:
        cands = self.quantization_config[map_name]
        if entry is None:
            return tuple(cands)
        if isinstance(entry, (int, float)) and not isinstance(entry, bool):
            return tuple(s for s, b in cands.items() if b <= entry)
        if isinstance(entry, str):
            entry = [entry]
        return tuple(_canonical(s) for s in entry)

    def _build_quantizer_params(self):
        matched_keys = set()
        unmatched = []
        groups: dict[tuple[str, str], Param] = {}
        for slot in self.slots:
            key, is_group = self._match(slot)
            if self.limit is not None and key is None:
                unmatched.append(slot.name)
                continue  # unmatched layers stay float
            matched_keys.add(key)
            for fld in slot.fields:
                map_name = {"kernel": "kernel", "bias": "bias"}.get(fld)
                if map_name is None:
                    map_name = "linear" if slot.kind == "linear" else "activation"
                entry = self._entry(key, slot, {"kernel": 0, "bias": 1}.get(fld, 2))
                choices = self._choices(map_name, entry)
                if not choices:
                    have = dict(self.quantization_config[map_name])
                    if not have:
                        raise ValueError(f"search space: the quantization config has no "
                                         f"{map_name} candidates (layer {slot.name!r} needs one)")
                    raise ValueError(
                        f"search space: no {map_name} candidate fits limit {entry!r} for layer "
                        f"{slot.name!r} (key {key!r}); candidates: {have}")
                if len(choices) == 1:
                    self.fixed.append((slot.name, fld, choices[0]))
                    continue
                if is_group:
                    p = groups.get((key, fld))
                    if p is None:
                        p = Param(f"{key}/{fld}", choices, [])
                        groups[(key, fld)] = p
                        self.params.append(p)
                    p.targets.append((slot.name, fld))
                else:
                    self.params.append(Param(f"{slot.name}/{fld}", choices, [(slot.name, fld)]))
        if self.limit is not None:
            for k in self.limit:
                if k != "default" and k not in matched_keys:
                    warnings.warn(f"search space: limit key {k!r} matches no layer", stacklevel=3)
            if unmatched:  # (as in AutoQKeras; said nowhere, and such a model cannot be exported)
                warnings.warn(f"search space: layers {', '.join(map(repr, unmatched))} match no "
                              "limit key, so they stay float (as in AutoQKeras); add a key for "
                              "them (a name, regex or layer type) to search them",
                              stacklevel=3)

    # -- Optuna ----------------------------------------------------------------------------
    def distributions(self) -> dict[str, Any]:
        import optuna

        d = {p.name: optuna.distributions.CategoricalDistribution(p.choices) for p in self.params}
        for n, (_, mults) in self.width_params.items():
            d[n] = optuna.distributions.CategoricalDistribution(mults)
        for n, (_, choices) in self.sparsity_params.items():
            d[n] = optuna.distributions.CategoricalDistribution(choices)
        if self.learning_rates:
            d["lr"] = optuna.distributions.CategoricalDistribution(self.learning_rates)
        return d

    def suggest(self, trial) -> Candidate:
        """Sample a candidate through an Optuna trial."""
        params = {n: trial.suggest_categorical(n, dist.choices)
                  for n, dist in self.distributions().items()}
        return self.candidate(params)

    def candidate(self, params: Mapping[str, Any]) -> Candidate:
        """The candidate for a dict of parameter values (missing ones: first choice)."""
        qc: dict[str, dict[str, str]] = {}
        for layer, fld, spec in self.fixed:
            qc.setdefault(layer, {})[fld] = spec
        for p in self.params:
            v = params.get(p.name, p.choices[0])
            if v not in p.choices:
                raise ValueError(f"value {v!r} for {p.name!r} is not one of {list(p.choices)}")
            for layer, fld in p.targets:
                qc.setdefault(layer, {})[fld] = v
        # a layer without a value (a block-wise search's later or unmatched blocks, which stay
        # float) keeps the float model's width and is not pruned; they were built at the
        # first offered multiplier and sparsity
        widths = {}
        for n, (layers, _) in self.width_params.items():
            for layer in layers:
                widths[layer] = float(params.get(n, 1.0))
        sparsity = {layer: float(params.get(n, 0.0))
                    for n, (layer, _) in self.sparsity_params.items()}
        lr = params.get("lr") if self.learning_rates else None
        return Candidate(qc, widths, sparsity, lr)

    def params_of(self, candidate: Candidate) -> dict[str, Any]:
        """Inverse of `candidate()`: the parameter dict that yields `candidate` (warm starts).
        Values this space does not offer (another search's quantizers, width multipliers,
        sparsities or learning rates) are left out, for the sampler to choose."""
        out = {}
        for p in self.params:
            layer, fld = p.targets[0]
            spec = candidate.quant_config.get(layer, {}).get(fld)
            if spec is not None:
                spec = _canonical(spec)
                if spec in p.choices:
                    out[p.name] = spec
        # (a run without width or sparsity search trained every layer at width 1 and
        # unpruned: those, where offered; they were drawn at random)
        for n, (layers, mults) in self.width_params.items():
            w = candidate.widths.get(layers[0], 1.0)
            if w in mults:
                out[n] = w
        for n, (layer, choices) in self.sparsity_params.items():
            sp = candidate.sparsity.get(layer, 0.0)
            if sp in choices:
                out[n] = sp
        if self.learning_rates and candidate.lr in self.learning_rates:
            out["lr"] = candidate.lr
        return out

    def bits_of(self, map_name: str, spec: str) -> int:
        return self.quantization_config[map_name][_canonical(spec)]

    def __repr__(self) -> str:
        lines = [f"SearchSpace({len(self.params)} quantizer parameters, "
                 f"{len(self.width_params)} width, {len(self.sparsity_params)} sparsity"
                 f"{', lr' if self.learning_rates else ''})"]
        for p in self.params:
            lines.append(f"  {p.name}: {list(p.choices)}")
        for layer, fld, spec in self.fixed:
            lines.append(f"  {layer}/{fld} = {spec} (fixed)")
        return "\n".join(lines)


def _check_widest(model: nn.Module, tunable: list[str], widest: float) -> None:
    """ValueError when every tunable layer at the largest multiplier makes a model of more
    than MAX_WEIGHTS weights (--width-multipliers 1000 was killed for memory after
    the float model's training)."""
    total, scale_in = 0, 1.0
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2:
            continue
        scale_out = new_width(w.shape[0], widest) / w.shape[0] if name in tunable else 1.0
        total += int(w.numel() * scale_in * scale_out)
        scale_in = scale_out
    if total > MAX_WEIGHTS:
        raise ValueError(f"width multiplier {widest:g} makes a model of about {total:.3g} "
                         f"weights (at most {MAX_WEIGHTS:.0e}); give smaller "
                         "--width-multipliers")


def _checked_limit(limit: Mapping) -> dict:
    """`limit` as a dict, each key a string (a type name, "default" or a regex that compiles)
    and each value a max bit count, a quantizer string, or a list of those and of candidate
    lists; else a ValueError naming the entry."""
    if not isinstance(limit, Mapping):
        raise ValueError(f"limit: expected a mapping such as {{Linear: [4, 4], ReLU: [4]}}; got "
                         f"{type(limit).__name__}")

    def entry_ok(e):
        if isinstance(e, bool):
            return False
        if isinstance(e, (int, float)):  # a bit count: whole, >= 0 (8.5 was taken as 8)
            return float(e).is_integer() and e >= 0
        if isinstance(e, str):
            return True
        return isinstance(e, (list, tuple)) and all(isinstance(c, str) for c in e)

    for key, value in limit.items():
        if not isinstance(key, str):
            raise ValueError(f"limit key {key!r}: expected a layer name, regex, type or "
                             "'default' (a string)")
        if key != "default" and TYPE_ALIASES.get(key, key) not in _ALL_TYPE_NAMES:
            try:
                re.compile(key)
            except re.error as e:
                raise ValueError(f"limit key {key!r} is not a layer-name regular expression "
                                 f"({e})") from None
        entries = value if isinstance(value, (list, tuple)) else [value]
        if len(entries) > 4:  # ([kernel, bias, recurrent, activation] at most, AutoQKeras')
            raise ValueError(f"limit {key}: {value!r} has {len(entries)} entries; expected "
                             "[kernel, bias, activation] (AutoQKeras' RNN lists have 4)")
        if not all(entry_ok(e) for e in entries):
            raise ValueError(f"limit {key}: {value!r}; expected [kernel, bias, activation], "
                             "each a max bit count or a list of candidate quantizers, e.g. "
                             "[4, 8, 4] or [['quantized_bits(4,0,1)'], 8, 4]")
    return dict(limit)


_ALL_TYPE_NAMES = {"Linear", "Conv1d", "Conv2d", "activation", "ReLU", "ReLU6", "LeakyReLU",
                   "Tanh", "Sigmoid", "Hardswish", "Identity"}
