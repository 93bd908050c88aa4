"""`quantize_model`: a quantized copy of a float `torch.nn.Module`, driven by a `QuantConfig`.

A config maps keys to per-field quantizer specs:

    {"Linear":  {"kernel": "quantized_bits(6,0,alpha=1)", "bias": "quantized_bits(6,0,alpha=1)"},
     "ReLU":    {"activation": "quantized_relu(6,0)"},      # or just "quantized_relu(6,0)"
                                                            # (a bare string: activations only)
     "fc3":     {"kernel": "ternary"},                      # an exact layer name
     "^conv":   {"kernel": "quantized_bits(4,0,1)"}}        # a name regex (re.match)

Keys are exact layer names (as in `named_modules()`), layer types (PyTorch class names such as
"Linear", "Conv2d", "ReLU", "BatchNorm1d"; hetq names "QDense", "QActivation"; QKeras names
"Dense", "Conv2D", "Activation", "BatchNormalization") or name regexes. Precedence: exact name,
then type, then the first matching regex in the config's order; a key that is a layer's name
is that layer's alone, never also a regex ("fc1" does not take "fc10"). Fields: kernel, bias,
activation, depthwise, pointwise, depthwise_activation, gamma, beta, mean, variance, average.
Layers matched by no key stay float, and so do those whose key's value is null (QKeras'
None); a key matching no layer is reported with a warning. A type or regex key's bias
quantizer skips layers without a bias (QKeras sets it to None there). A module used under
several names (tied weights) becomes one quantized module under all of them. With
fold_batchnorm, QKeras's folded types ("QDenseBatchnorm", "QConv2DBatchnorm") select the
folded pairs, with their `folding_mode` and `ema_freeze_delay`.

QKeras configs (`model_quantize`'s, and `get_quantization_dictionary` /
`save_quantization_dict` files) work unchanged: fields may be spelt `kernel_quantizer`,
`bias_quantizer`, `depthwise_quantizer`, `gamma_quantizer`, ... (the field name plus
`_quantizer`), "None" is no quantizer, `units`/`filters` are checked against the layer's size
(not stored), and an activation entry may be a map by activation function,
`{"QActivation": {"relu": "quantized_relu(4)"}}`, which converts only the activations it
lists (names relu, relu6, leakyrelu, tanh, sigmoid, hard_swish, softmax, linear). As in
`model_quantize`, a QKeras-spelt entry without a kernel quantizer leaves the Dense/Conv layers
it matches float (with a warning); hetq's own spelling, {bias: ...}, quantizes the bias alone.
A layer's float activation as `get_quantization_dictionary` writes it, "<function relu at
0x...>", is that activation ("linear": none).
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .base import Activation, Quantizer, check_module, get_quantizer
from .layers import (
    QActivation,
    QConv1d,
    QConv2d,
    QDense,
    QDepthwiseConv2d,
    QLayer,
    QSeparableConv2d,
)
from .norm import QBatchNorm, QConv2dBatchnorm, QDenseBatchnorm, _FoldedBatchnorm
from .pooling import QAveragePooling2d, QGlobalAveragePooling2d

FIELDS = ("kernel", "bias", "activation", "depthwise", "pointwise", "depthwise_activation",
          "gamma", "beta", "mean", "variance", "inverse", "average")
# the fields that quantize weights and other values, not a layer's output
VALUE_FIELDS = tuple(f for f in FIELDS if f not in ("activation", "depthwise_activation"))

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Hardswish,
                      nn.Identity, nn.Softmax)
# QKeras's activation-name keys ({"QActivation": {"relu": ...}}) and the modules they select
ACTIVATION_NAMES = {"relu": nn.ReLU, "relu6": nn.ReLU6, "leakyrelu": nn.LeakyReLU,
                    "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                    "hard_swish": nn.Hardswish, "softmax": nn.Softmax, "linear": nn.Identity}
SIZE_KEYS = {"units": "out_features", "filters": "out_channels"}  # QKeras layer sizes

# canonical type names for the aliases users may write
TYPE_ALIASES = {
    "Dense": "Linear", "QDense": "Linear", "QLinear": "Linear",
    "Conv1D": "Conv1d", "QConv1D": "Conv1d", "QConv1d": "Conv1d",
    "Conv2D": "Conv2d", "QConv2D": "Conv2d", "QConv2d": "Conv2d",
    "DepthwiseConv2D": "DepthwiseConv2d", "QDepthwiseConv2D": "DepthwiseConv2d",
    "QDepthwiseConv2d": "DepthwiseConv2d",
    "SeparableConv2D": "SeparableConv2d", "QSeparableConv2D": "SeparableConv2d",
    "QSeparableConv2d": "SeparableConv2d",
    "Activation": "Activation", "QActivation": "Activation",
    "BatchNormalization": "BatchNorm", "QBatchNormalization": "BatchNorm",
    "QBatchNorm": "BatchNorm", "BatchNorm1d": "BatchNorm", "BatchNorm2d": "BatchNorm",
    "AveragePooling2D": "AvgPool2d", "QAveragePooling2D": "AvgPool2d",
    "QAveragePooling2d": "AvgPool2d",
    "GlobalAveragePooling2D": "AdaptiveAvgPool2d", "QGlobalAveragePooling2D": "AdaptiveAvgPool2d",
    "QGlobalAveragePooling2d": "AdaptiveAvgPool2d",
}


def _type_names(m: nn.Module) -> set[str]:
    """Every type key that matches module `m`."""
    names = {type(m).__name__}
    if isinstance(m, QSeparableConv2d):
        names.add("SeparableConv2d")
    if isinstance(m, QDepthwiseConv2d) or (isinstance(m, nn.Conv2d) and _is_depthwise(m)):
        # (a depthwise torch Conv2d is no Conv2D to QKeras: a Conv2D key took it, with the
        # key order deciding between that and the DepthwiseConv2D key)
        names = {"DepthwiseConv2d"}
    elif isinstance(m, nn.Linear):
        names.add("Linear")
    elif isinstance(m, nn.Conv1d):
        names.add("Conv1d")
    elif isinstance(m, nn.Conv2d):
        names.add("Conv2d")
    if isinstance(m, (*ACTIVATION_MODULES, QActivation)) and type(m) is not nn.Identity:
        # (an Identity is a placeholder more often than a linear activation: a skip, the
        # batch norm fold_batchnorm removed; QKeras' 'linear' name still selects it)
        names.add("Activation")
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        names.add("BatchNorm")
    if isinstance(m, (nn.AvgPool2d, QAveragePooling2d)):
        names.add("AvgPool2d")
    if isinstance(m, (nn.AdaptiveAvgPool2d, QGlobalAveragePooling2d)):
        names.add("AdaptiveAvgPool2d")
    return names


def _is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.in_channels and m.out_channels % m.in_channels == 0


_KERAS_FUNCTION = re.compile(r"<function (\w+) at 0x[0-9a-fA-F]+>")


def _keras_function(spec: str) -> str:
    """QKeras's text for a layer's float activation (`str(self.activation)`, a Keras
    function: "<function linear at 0x7f...>", in every `get_quantization_dictionary` file of
    a Dense without a quantized activation) as the activation's name; "linear" as "None"."""
    m = _KERAS_FUNCTION.fullmatch(spec.strip())
    if m is None:
        return spec
    return "None" if m.group(1) == "linear" else m.group(1)


class QuantConfig:
    """Per-layer quantizer specs; see the module docstring. Round-trips through YAML/JSON."""

    def __init__(self, entries: Mapping[str, Any] | None = None):
        self.entries: dict[str, dict[str, Any]] = {}
        self.sizes: dict[str, dict[str, int]] = {}  # QKeras units/filters, checked on use
        self.plain: set[str] = set()  # keys given a bare quantizer string (activations only)
        # keys spelt as QKeras (kernel_quantizer, ...) without a kernel quantizer: QKeras'
        # model_quantize leaves the weight layers they match as they are (spec 3.1)
        self.kernelless: set[str] = set()
        self.fold_args: dict[str, dict[str, Any]] = {}  # QKeras folding_mode, ema_freeze_delay
        if entries is not None and not isinstance(entries, Mapping):
            raise ValueError("a quantization config maps layer names or types to quantizers "
                             f"(e.g. {{Linear: {{kernel: 'quantized_bits(6,0,1)'}}}}); got a "
                             f"{type(entries).__name__}")
        for key, value in (entries or {}).items():
            if value is None or isinstance(value, str):
                value = {"activation": value}
                self.plain.add(str(key))
            elif isinstance(value, Mapping):
                value = dict(value)
            else:
                raise ValueError(f"quantization config key {key!r}: expected a quantizer string "
                                 f"or a {{field: quantizer}} map, got {value!r}")
            self.entries[str(key)] = self._fields(str(key), value)
            fields = self.entries[str(key)]
            if any(str(f).endswith("_quantizer") for f in value) and \
                    not ({"kernel", "depthwise"} & set(fields)):
                self.kernelless.add(str(key))

    def _fields(self, key: str, value: dict) -> dict[str, Any]:
        """`value`'s fields in hetq's spelling (QKeras's `<field>_quantizer` accepted, "None"
        as None); units/filters go to `self.sizes`."""
        out: dict[str, Any] = {}
        for fld, spec in value.items():
            fld = str(fld)
            if fld in SIZE_KEYS:
                try:
                    self.sizes.setdefault(key, {})[fld] = int(spec)
                except (TypeError, ValueError):
                    raise ValueError(f"quantization config key {key!r}: {fld}={spec!r} is not "
                                     "a layer size") from None
                continue
            if fld in FOLD_ARGS:
                self.fold_args.setdefault(key, {})[fld] = _fold_arg(key, fld, spec)
                continue
            name = fld[:-len("_quantizer")] if fld.endswith("_quantizer") else fld
            if name not in FIELDS and name not in ACTIVATION_NAMES:
                raise ValueError(f"quantization config key {key!r}: unknown field {fld!r}; "
                                 f"expected one of {', '.join(FIELDS)} (or QKeras's "
                                 "kernel_quantizer, bias_quantizer, ...; activation names "
                                 f"such as relu for activation layers)")
            if name in out:
                raise ValueError(f"quantization config key {key!r}: {name!r} is given twice "
                                 f"(as {name!r} and {name + '_quantizer'!r})")
            if not (spec is None or isinstance(spec, (str, Mapping, Quantizer))):
                raise ValueError(f"quantization config key {key!r}: {fld}={spec!r}; expected a "
                                 "quantizer string such as 'quantized_bits(4,0,1)', or None")
            if isinstance(spec, str):
                spec = _keras_function(spec)
            if isinstance(spec, (str, Mapping)) and spec != "None":
                try:  # parsed here so that the message says where the spec is
                    made = get_quantizer(spec)
                    if isinstance(made, Activation) and name in VALUE_FIELDS:
                        raise ValueError(  # ('relu' zeroed the negative weights unsaid)
                            f"{spec!r} is a float activation function, not a quantizer of "
                            f"values; expected a quantizer such as 'quantized_bits(4,0,1)', "
                            "or None for float values")
                except ValueError as e:
                    hint = ""
                    if isinstance(spec, str) and spec.count("(") > spec.count(")"):
                        hint = (" (a YAML flow map, {kernel: quantized_bits(4,0,1)}, splits "
                                "at the commas: quote the quantizer, "
                                "{kernel: 'quantized_bits(4,0,1)'})")
                    raise ValueError(f"quantization config key {key!r}: {fld}: {e}{hint}") \
                        from None
            out[name] = None if spec == "None" else spec
        by_name = [f for f in out if f in ACTIVATION_NAMES]
        if by_name and len(by_name) != len(out):
            raise ValueError(f"quantization config key {key!r}: activation names "
                             f"({', '.join(by_name)}) pick a quantizer per activation function "
                             "and cannot be mixed with fields "
                             f"({', '.join(f for f in out if f not in ACTIVATION_NAMES)})")
        return out

    # -- lookup ----------------------------------------------------------------------------
    def lookup(self, name: str, module: nn.Module, layer_names=()) -> tuple[str | None,
                                                                          dict[str, Any] | None]:
        """(key, fields) of the entry that applies to layer `name`, or (None, None). A key
        that is the name of one of `layer_names` (the model's) is that layer's alone, not
        also a regex: '1' took '10' and '11' too, so a config of exact names (as
        get_quantization_config writes) did not reproduce its model."""
        if name in self.entries:
            return name, self.entries[name]
        types = _type_names(module)
        for key, value in self.entries.items():
            if TYPE_ALIASES.get(key, key) in types:
                return key, value
            if isinstance(module, nn.Identity) and TYPE_ALIASES.get(key) == "Activation" \
                    and "linear" in value:  # (an Identity only by QKeras' 'linear' name)
                return key, value
        for key, value in self.entries.items():
            if key in _ALL_TYPE_KEYS or key in layer_names:
                continue
            try:
                if re.match(key, name):
                    return key, value
            except re.error:
                continue
        return None, None

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Each spec as its quantizer string (a QKeras {class_name, config} map too: its
        Python text could not be read back, so a checkpoint holding it was refused after
        training)."""
        def text(spec):
            if spec is None or isinstance(spec, str):
                return spec
            return str(get_quantizer(spec) if isinstance(spec, Mapping) else spec)

        def fields(k, v):
            # a QKeras-spelt entry without a kernel stays so (hetq's spelling quantizes the
            # bias alone), and its units/filters check stays
            suffix = "_quantizer" if k in self.kernelless else ""
            return {**{f + suffix: text(s) for f, s in v.items()}, **self.sizes.get(k, {}),
                    **self.fold_args.get(k, {})}

        return {k: None if k in self.plain and v == {"activation": None} else fields(k, v)
                for k, v in self.entries.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantConfig:
        return cls(d)

    def to_yaml(self) -> str:
        """The config as YAML text (what `save` writes for a .yaml path)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> QuantConfig:
        return cls(parse_yaml(text) or {})

    def to_json(self) -> str:
        """The config as JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        try:
            data = json.loads(text, object_pairs_hook=_unique_json_keys)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON: {e}") from None
        except ValueError as e:
            raise ValueError(f"not valid as a config: {e}") from None
        return cls(data)

    def save(self, path: str | Path) -> None:
        """Write the config to `path` whole: JSON for a .json path, else YAML."""
        from ..files import write_whole

        p = Path(path)
        text = self.to_json() if p.suffix == ".json" else self.to_yaml()
        write_whole(p, lambda tmp: tmp.write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> QuantConfig:
        p = Path(path)
        if not p.exists():
            hint = ""
            if p.suffix == "" and len(p.parts) == 1:  # a bare name: maybe a zoo preset
                from ..models import PRESETS

                if str(path).lower() in PRESETS:
                    hint = (f"; for the jet_mlp preset give its config, "
                            f"hetq.preset({str(path).lower()!r}) (CLI: --preset)")
            raise FileNotFoundError(f"quantization config file not found: {path}{hint}")
        text = p.read_text()
        try:
            return cls.from_json(text) if p.suffix == ".json" else cls.from_yaml(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __eq__(self, other):
        return isinstance(other, QuantConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        body = ", ".join(f"{k!r}: {v!r}" for k, v in self.to_dict().items())
        return f"QuantConfig({{{body}}})"


def _fold_arg(key: str, fld: str, value):
    """A folded layer's setting from a config (QKeras's QDenseBatchnorm fields)."""
    if fld == "folding_mode" and value not in _FoldedBatchnorm.FOLDING_MODES:
        raise ValueError(f"quantization config key {key!r}: folding_mode={value!r}; expected "
                         f"one of {', '.join(_FoldedBatchnorm.FOLDING_MODES)}")
    if fld == "ema_freeze_delay" and value is not None and (
            isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"quantization config key {key!r}: ema_freeze_delay={value!r}; "
                         "expected a whole number of training steps, or None")
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, a key given twice in one map refused (it kept the last one: two
    `Dense:` entries, the first without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                hint = ""  # (the numbers of two unquoted quantizers, split at the commas)
                if node.flow_style and not (isinstance(key, str) and key.isidentifier()):
                    hint = (" (a YAML flow map, {kernel: quantized_bits(4,0,1)}, splits at "
                            "the commas: quote the quantizer, {kernel: 'quantized_bits(4,0,1)'})")
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one map{hint}",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _unique_json_keys(pairs):
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key {twice[0]!r} is given twice in one object")
    return dict(pairs)


def parse_yaml(text: str):
    """yaml.safe_load, its errors as one line: "not valid YAML: line L, column C: problem"."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValueError(f"not valid YAML: {where}{getattr(e, 'problem', None) or e}") from None


# QKeras's folded layer types: their keys select the Linear / Conv2d of a folded pair
FOLDED_KEYS = {"QDenseBatchnorm": nn.Linear, "DenseBatchnorm": nn.Linear,
               "QConv2DBatchnorm": nn.Conv2d, "QConv2dBatchnorm": nn.Conv2d,
               "Conv2DBatchnorm": nn.Conv2d}
FOLD_ARGS = ("folding_mode", "ema_freeze_delay")  # QKeras's settings of a folded layer

_ALL_TYPE_KEYS = set(TYPE_ALIASES) | set(TYPE_ALIASES.values()) | set(FOLDED_KEYS) | {
    c.__name__ for c in (nn.Linear, nn.Conv1d, nn.Conv2d, *ACTIVATION_MODULES, nn.BatchNorm1d,
                         nn.BatchNorm2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)}


def as_config(config) -> QuantConfig:
    """`config` as a QuantConfig: one itself, a {key: fields} dict, or the path of a .yaml or
    .json file holding one."""
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, (str, Path)):
        return QuantConfig.load(config)
    if isinstance(config, Mapping):
        return QuantConfig(config)
    raise ValueError(f"quantization config must be a QuantConfig, a dict or a .yaml/.json path, "
                     f"got {type(config).__name__}")


# -- conversion ----------------------------------------------------------------------------
def _check_fields(name: str, module: nn.Module, fields: dict, allowed: tuple[str, ...]):
    for fld, spec in fields.items():
        if spec is not None and fld not in allowed and fld in ACTIVATION_NAMES and \
                isinstance(module, QActivation):
            raise ValueError(f"layer {name!r} is a quantized activation already "
                             f"({module.quantizers.get('activation')}); a map by activation "
                             f"function ({fld}: ...) converts float activations (nn.ReLU, "
                             "...): give {activation: ...} to replace its quantizer, or name "
                             "the layer")
        if spec is not None and fld not in allowed:
            raise ValueError(f"layer {name!r} ({type(module).__name__}) has no {fld!r} field "
                             f"to quantize; it has: {', '.join(allowed) or 'none'}")


def _convert(name: str, m: nn.Module, f: dict, modules: dict | None = None
             ) -> nn.Module | None:
    """The quantized replacement of module `m` under fields `f` (None: leave it); `modules`:
    the model's, by name."""
    g = f.get
    if isinstance(m, (QLayer,)):
        return _requantize(name, m, f)
    if isinstance(m, nn.Linear):
        _check_fields(name, m, f, ("kernel", "bias", "activation") if m.bias is not None
                      else ("kernel", "activation"))
        new = QDense(m.in_features, m.out_features, m.bias is not None, g("kernel"), g("bias"),
                     g("activation"))
    elif isinstance(m, nn.Conv2d) and _is_depthwise(m):
        allowed = ("depthwise", "kernel", "bias", "activation")
        _check_fields(name, m, f, allowed if m.bias is not None else allowed[:2] + allowed[3:])
        new = QDepthwiseConv2d(m.in_channels, m.kernel_size, m.out_channels // m.in_channels,
                               m.stride, m.padding, m.dilation, m.bias is not None,
                               g("depthwise") or g("kernel"), g("bias"), g("activation"))
    elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
        _check_fields(name, m, f, ("kernel", "bias", "activation") if m.bias is not None
                      else ("kernel", "activation"))
        cls = QConv1d if isinstance(m, nn.Conv1d) else QConv2d
        new = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                  m.groups, m.bias is not None, m.padding_mode, g("kernel"), g("bias"),
                  g("activation"))
    elif isinstance(m, ACTIVATION_MODULES):
        if f and all(k in ACTIVATION_NAMES for k in f):  # QKeras: by activation function
            if type(m) is nn.ReLU6 and f.get("relu") is not None and "relu6" not in f:
                warnings.warn(f"layer {name!r} (ReLU6) stays float: the map by activation "
                              "function names relu, not relu6 (QKeras's relu also takes "
                              "ReLU(max_value=6) layers); add relu6: ... to quantize it",
                              stacklevel=4)
            f = {"activation": next((spec for k, spec in f.items()
                                     if type(m) is ACTIVATION_NAMES[k]), None)}
            g = f.get
        _check_fields(name, m, f, ("activation",))
        if g("activation") is None:
            return None
        new = QActivation(g("activation"))
        _warn_function_change(name, m, new.quantizers.get("activation"))
        return _finish(name, m, new)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        allowed = ("gamma", "beta", "mean", "variance", "inverse")
        _check_fields(name, m, f, allowed)
        both = [k for k in ("gamma", "variance") if f.get(k) is not None]
        if f.get("inverse") is not None and both:  # (QBatchNorm's message named no layer)
            raise ValueError(f"layer {name!r} ({type(m).__name__}): its inverse quantizer "
                             f"excludes {' and '.join(both)} (the product gamma / "
                             "sqrt(variance + eps) is quantized instead); give one or the "
                             "other")
        new = QBatchNorm(m.num_features, m.eps, _bn_momentum(name, m), m.affine, g("gamma"),
                         g("beta"), g("mean"), g("variance"), g("inverse"))
    elif isinstance(m, nn.AvgPool2d):
        _check_fields(name, m, f, ("average", "activation"))
        odd = [f"{k}={v!r}" for k, v, plain in (
            ("count_include_pad", m.count_include_pad, True), ("ceil_mode", m.ceil_mode, False),
            ("divisor_override", m.divisor_override, None)) if v != plain]
        if odd:  # (they were dropped: 0.44 off, or another output shape)
            raise ValueError(f"layer {name!r}: AvgPool2d({', '.join(odd)}) has no quantized "
                             "form (QAveragePooling2d, as QKeras's, divides by the window "
                             "area with padding counted and floors the output size); use the "
                             "defaults, or leave this layer out of the config")
        return _finish(name, m, QAveragePooling2d(m.kernel_size, m.stride, m.padding,
                                                  g("average"), g("activation")))
    elif isinstance(m, nn.AdaptiveAvgPool2d):
        if m.output_size not in (1, (1, 1)):
            raise ValueError(f"layer {name!r}: only AdaptiveAvgPool2d(1) converts to "
                             "QGlobalAveragePooling2d (it flattens to (N, C))")
        _check_fields(name, m, f, ("average", "activation"))
        if _not_flattened_after(name, modules or {}):
            warnings.warn(f"layer {name!r}: AdaptiveAvgPool2d(1) becomes "
                          "QGlobalAveragePooling2d, whose output is (N, C), as Keras's "
                          "GlobalAveragePooling2D, not (N, C, 1, 1): a layer after it that "
                          "expects 4-d inputs fails", stacklevel=3)
        return _finish(name, m, QGlobalAveragePooling2d(g("average"), g("activation")))
    else:
        raise ValueError(f"layer {name!r} ({type(m).__name__}) cannot be quantized; quantizable "
                         f"types: {QUANTIZABLE_TYPES}")
    _warn_unsigned_weights(name, new)
    state = m.state_dict()
    lost = [k for k in new.state_dict() if k not in state and not k.startswith(
        tuple(f"{f}_quantizer." for f in FIELDS))]
    if lost:  # (a parametrization, weight_norm say, stores them under other names)
        raise ValueError(f"layer {name!r} ({type(m).__name__}) does not store its "
                         f"{', '.join(lost)} under that name (its state holds "
                         f"{', '.join(list(state)[:4])}: a parametrization such as weight_norm?); "
                         "remove it (torch.nn.utils.parametrize.remove_parametrizations) "
                         "before quantizing: its weights would be lost")
    new.load_state_dict(state, strict=False)
    return _finish(name, m, new)


def _not_flattened_after(name: str, modules: dict) -> bool:
    """Whether layer `name` is followed, in its nn.Sequential, by a layer other than an
    nn.Flatten (False where that is not known: last in it, or in a forward of its own)."""
    parent = modules.get(name.rpartition(".")[0]) if "." in name else modules.get("")
    if not isinstance(parent, nn.Sequential):
        return False
    items = [n for n, _ in parent.named_children()]
    k = items.index(name.rpartition(".")[2])
    return k + 1 < len(items) and not isinstance(parent[k + 1], nn.Flatten)


FUNCTION_CHANGE = "the quantizer is the activation function (as QKeras's QActivation)"


def _warn_function_change(name: str, m: nn.Module, q) -> None:
    """A warning when the quantizer replacing activation `m` computes another function: the
    quantizer is the activation (as in QKeras's QActivation), so a relu quantizer on a Tanh
    made it a ReLU, and a LeakyReLU lost its slope, without a word. Quantizers that are no
    particular function (quantized_bits, po2, binary, ternary) are not said, nor is a
    search's trial (`build_candidate`: the space offers relu quantizers for any
    activation, as AutoQKeras does)."""
    from .activations import quantized_sigmoid, quantized_tanh
    from .fixed_point import quantized_hswish, quantized_relu
    from .po2 import quantized_relu_po2

    kind = {nn.ReLU: "relu", nn.ReLU6: "relu", nn.LeakyReLU: "relu", nn.Tanh: "tanh",
            nn.Sigmoid: "sigmoid", nn.Hardswish: "hard swish", nn.Softmax: "softmax"}
    have = kind.get(type(m))
    if isinstance(q, (quantized_relu, quantized_relu_po2)) and not isinstance(q, quantized_hswish):
        gets = "relu"
    else:
        gets = next((k for c, k in ((quantized_hswish, "hard swish"), (quantized_tanh, "tanh"),
                                     (quantized_sigmoid, "sigmoid")) if isinstance(q, c)), None)
    why = None
    if have == "softmax":
        why = "replaces the softmax (its output is the quantized input, no softmax)"
    elif have and gets and have != gets:
        why = f"makes this {have} a {gets}"
    elif isinstance(m, nn.ReLU6) and isinstance(q, quantized_relu) and \
            (top := _relu_top(q)) is not None and top > 6.0:
        why = (f"lifts this ReLU6's cap at 6 to {top:g} (quantized_relu(..., "
               "relu_upper_bound=6, is_quantized_clip=False) keeps it)")
    elif isinstance(m, nn.LeakyReLU) and gets == "relu" and \
            float(getattr(q, "negative_slope", 0) or 0) != m.negative_slope:
        why = (f"gives this LeakyReLU(negative_slope={m.negative_slope}) the slope "
               f"{float(getattr(q, 'negative_slope', 0) or 0)}")
    if why:
        warnings.warn(f"layer {name!r} ({type(m).__name__}): the quantizer {q} {why}; "
                      f"{FUNCTION_CHANGE}", stacklevel=4)


def _relu_top(q) -> float | None:
    """The largest output of a quantized_relu (None: not a fixed grid)."""
    vals = q.values()
    return None if vals is None else float(vals.max())


def _finish(name: str, m: nn.Module, new: nn.Module) -> nn.Module:
    """`new`, the replacement of `m`, on `m`'s device and floating dtype, in its train/eval
    mode (a layer made in training mode inside an eval model drew stochastic quantizers and
    moved batch-norm statistics at inference), its parameters frozen where `m`'s were."""
    like = next((t for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()), None)
    if like is not None:
        new.to(device=like.device, dtype=like.dtype)
    new.train(m.training)
    old = dict(m.named_parameters())
    for pname, p in new.named_parameters():
        if pname in old:
            p.requires_grad_(old[pname].requires_grad)
    if getattr(m, "padding_mode", "zeros") != getattr(new, "padding_mode", "zeros"):
        if not isinstance(new, nn.Conv2d):
            raise ValueError(f"layer {name!r}: padding_mode={m.padding_mode!r} is not "
                             f"supported by {type(new).__name__}")
        new.padding_mode = m.padding_mode  # (its forward pads by it; it was left 'zeros')
    return new

def _warn_unsigned_weights(name: str, layer: nn.Module) -> None:
    """A weight quantizer with no negative values (quantized_relu on a kernel, say) sets every
    negative weight to 0: legal, and almost always a slip, so it is said."""
    for f in ("kernel", "depthwise", "pointwise", "bias"):
        q = getattr(layer, "quantizers", {}).get(f)
        if q is None or not hasattr(q, "min"):
            continue
        try:
            lowest = float(q.min())
        except (TypeError, ValueError, RuntimeError):  # (tensor-valued parameters)
            continue
        if lowest >= 0:
            warnings.warn(f"layer {name!r}: {f} quantizer {q} has no negative values, so every "
                          f"negative {f} weight becomes 0; use a signed quantizer (e.g. "
                          "quantized_bits(4,0,1)) unless that is meant", stacklevel=4)


def _requantize(name: str, m: QLayer, f: dict) -> nn.Module:
    """Replace the quantizers of an already-quantized layer (fields not given are kept)."""
    from .base import get_quantizer

    fields = m.quantizer_fields
    if getattr(m, "bias", True) is None and not getattr(m, "folded_bias", False):
        fields = tuple(x for x in fields if x != "bias")  # (it was accepted, and did nothing)
    _check_fields(name, m, f, fields)
    new = copy.deepcopy(m)
    for fld, spec in f.items():
        setattr(new, f"{fld}_quantizer", get_quantizer(spec))
    new.train(m.training)  # (a new quantizer starts in training mode)
    return new


def _quantizable(m: nn.Module) -> bool:
    return isinstance(m, (QLayer, nn.Linear, nn.Conv1d, nn.Conv2d, *ACTIVATION_MODULES,
                          nn.modules.batchnorm._BatchNorm, nn.AvgPool2d, nn.AdaptiveAvgPool2d))


def _layer_then_bn(model: nn.Module):
    """(full name, layer, full name of the batch norm, the batch norm, the Sequential's
    name) for each layer directly followed by a batch norm inside an nn.Sequential."""
    for pname, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        items = list(parent.named_children())
        for (n1, m1), (n2, m2) in zip(items, items[1:]):
            if isinstance(m2, nn.modules.batchnorm._BatchNorm):
                yield (f"{pname}.{n1}" if pname else n1, m1,
                       f"{pname}.{n2}" if pname else n2, m2, pname)


def _fold_pairs(model: nn.Module, config: QuantConfig) -> dict[str, tuple[str, str]]:
    """Linear/Conv2d modules directly followed by a BatchNorm inside a Sequential."""
    return {full1: (full2, pname) for full1, m1, full2, bn, pname in _layer_then_bn(model)
            if isinstance(m1, (nn.Linear, nn.Conv2d)) and not isinstance(m1, QLayer)
            and isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d))
            and not (isinstance(m1, nn.Conv2d) and m1.groups != 1)}


def _warn_unfolded(model: nn.Module, folds: dict) -> None:
    """fold_batchnorm=True: a warning for each weight layer followed by a batch norm that is
    not folded (a Conv1d, a grouped or depthwise Conv2d), which was skipped without a word
    (and the export then said to quantize the model, which it was)."""
    for full, m1, *_ in _layer_then_bn(model):
        if full not in folds and isinstance(m1, (nn.Conv1d, nn.Conv2d)) and \
                not isinstance(m1, QLayer):
            what = (f"a {type(m1).__name__}" if isinstance(m1, nn.Conv1d) else
                    f"a Conv2d with groups={m1.groups}")
            warnings.warn(f"fold_batchnorm: layer {full!r} ({what}) is not folded with its "
                          "batch norm (hetq folds Linear and Conv2d with groups=1, as "
                          "QKeras's QDenseBatchnorm and QConv2DBatchnorm); the batch norm "
                          "stays a layer of its own: give it quantizers (inverse, beta, "
                          "mean) to export it", stacklevel=3)


def _bn_momentum(name: str, bn: nn.Module) -> float:
    """The momentum a quantized batch norm continues with; a float BN that keeps no running
    statistics is refused (it normalises each batch by its own moments, also in eval)."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError(f"layer {name!r}: a {type(bn).__name__} with track_running_stats="
                         "False normalises every batch with its own statistics, also in eval; "
                         "a quantized batch norm (and the hardware) uses running statistics: "
                         "train the float model with track_running_stats=True")
    if bn.momentum is None:
        warnings.warn(f"layer {name!r}: momentum=None (a cumulative average) continues as "
                      "momentum=0.01 in quantization-aware training", stacklevel=4)
        return 0.01
    return bn.momentum


def _fold(name: str, lin: nn.Module, bn_name: str, bn: nn.Module, f: dict) -> nn.Module:
    _check_fields(name, lin, f, ("kernel", "bias", "activation"))
    g = f.get
    momentum = _bn_momentum(bn_name, bn)
    if isinstance(lin, nn.Linear):
        new = QDenseBatchnorm(lin.in_features, lin.out_features, True, g("kernel"), g("bias"),
                              g("activation"), bn.eps, momentum)
    else:
        new = QConv2dBatchnorm(lin.in_channels, lin.out_channels, lin.kernel_size, lin.stride,
                               lin.padding, lin.dilation, lin.groups, True, g("kernel"),
                               g("bias"), g("activation"), bn.eps, momentum)
    with torch.no_grad():
        new.weight.copy_(lin.weight)
        new.bias.copy_(lin.bias if lin.bias is not None else torch.zeros_like(new.bias))
        if bn.affine:
            new.gamma.copy_(bn.weight)
            new.beta.copy_(bn.bias)
        new.running_mean.copy_(bn.running_mean)
        new.running_var.copy_(bn.running_var)
    return _finish(name, lin, new)


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent = root
    *path, last = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)


QUANTIZABLE_TYPES = ("Linear, Conv1d, Conv2d (incl. depthwise), activations, BatchNorm, "
                     "AvgPool2d, AdaptiveAvgPool2d(1)")


def quantize_model(float_model: nn.Module, config, *, fold_batchnorm: bool = False,
                   inplace: bool = False) -> nn.Module:
    """A quantized copy of `float_model` (weights copied); see the module docstring.

    Args:
        float_model: any nn.Module tree (Sequential or custom modules).
        config: QuantConfig, dict, or a path to a .yaml/.json file.
        fold_batchnorm: Linear/Conv2d followed by BatchNorm in a Sequential become one
            QDenseBatchnorm/QConv2dBatchnorm (the BatchNorm is replaced by Identity). Without
            it, only the layers whose exact-name entry has a folding setting (`folding_mode`
            or `ema_freeze_delay`, as `get_quantization_config` writes for a folded layer)
            are folded.
        inplace: modify `float_model` itself instead of a deep copy.
    """
    check_module(float_model, "quantize_model")
    config = as_config(config)
    if next(float_model.children(), None) is None and _quantizable(float_model):
        # a model that is one layer (an nn.Linear; it came back float): converted as a layer
        # named "model" inside a container, by the same rules as any other layer
        model = float_model if inplace else copy.deepcopy(float_model)
        holder = nn.ModuleDict({"model": model})
        return quantize_model(holder, config, fold_batchnorm=fold_batchnorm,
                              inplace=True)["model"]
    if not config.entries and not fold_batchnorm:  # (folding alone changes the model)
        warnings.warn("quantize_model: the quantization config is empty, so the model is "
                      "returned unquantized (a copy)", stacklevel=2)
    model = float_model if inplace else copy.deepcopy(float_model)
    used: set[str] = set()
    acted: set[str] = set()  # keys that gave some layer its quantizers
    left_float: dict[str, list[str]] = {}
    left_as_is: dict[str, list[str]] = {}  # weight layers of a kernel-less QKeras entry
    # every path to every module: one used twice (tied weights, `self.a = self.b = lin`) was
    # converted under its first name only, the other use left float and untied
    modules = dict(model.named_modules(remove_duplicate=False))
    names = set(modules)
    folds = _fold_pairs(model, config)
    if fold_batchnorm:
        _warn_unfolded(model, folds)
    else:  # only layers whose own entry is a folded one's (folding_mode...)
        folds = {n: p for n, p in folds.items() if n in config.fold_args}
    folded_bns = {bn: lin for lin, (bn, _) in folds.items()}
    for bn, lin in folded_bns.items():
        if bn in config.entries:  # (it was dropped, said as 'another key takes precedence')
            raise ValueError(f"quantization config key {bn!r}: that batch norm is folded into "
                             f"{lin!r} (fold_batchnorm=True); give the folded layer's "
                             f"quantizers under {lin!r}")
    aliases: dict[int, list[str]] = {}  # a module's names (several: shared weights)
    for n, mod in modules.items():
        aliases.setdefault(id(mod), []).append(n)
    aliases = {i: ns for i, ns in aliases.items() if len(ns) > 1}
    done: dict[int, nn.Module] = {}  # id of a converted module: its replacement
    folded_keys: set[str | None] = set()
    skip: set[str] = set()
    for name, m in list(modules.items()):
        if not name or name in skip or any(name.startswith(s + ".") for s in skip):
            continue
        if id(m) in done:  # another name of a module converted already: the same new one
            _set(model, name, done[id(m)])
            skip.add(name)
            continue
        key, fields = config.lookup(name, m, names)
        exact = [n for n in aliases.get(id(m), ()) if n in config.entries]
        if len(exact) > 1 and len({repr(config.entries[n]) for n in exact}) > 1:
            raise ValueError(f"quantization config keys {', '.join(map(repr, exact))} name one "
                             "module (its weights are shared): give it one entry")
        if exact and key != name:  # (an exact key of another of its names: 'b' of a = b)
            key, fields = exact[0], config.entries[exact[0]]
            used.update(exact)
        if name in folds:
            if key is None or key not in (name, *FOLDED_KEYS):
                key, fields = _folded_key(config, m) or (key, fields)
            bn_name, _ = folds[name]
            fields = _fresh(fields or {})
            if key:
                used.add(key)
            new = _fold(name, m, bn_name, modules[bn_name], fields)
            for attr, v in config.fold_args.get(key, {}).items():
                setattr(new, attr, v)
            folded_keys.add(key)
            _set(model, name, new)
            done[id(m)] = new
            _set(model, bn_name, nn.Identity())
            skip.add(bn_name)
            continue
        if key is None:
            continue
        used.add(key)
        if key != name and _not_replaceable(name, m, modules):
            continue
        if key in config.plain and fields == {"activation": None}:
            skip.add(name)  # `key: null` (QKeras: None): the layer stays float
            continue
        if key in config.plain and _quantizable(m) and \
                not isinstance(m, (*ACTIVATION_MODULES, QActivation)):
            raise ValueError(f"quantization config key {key!r}: a bare quantizer string is for "
                             f"activation layers, but it matches layer {name!r} "
                             f"({type(m).__name__}); give that layer's fields, e.g. "
                             "{kernel: 'quantized_bits(4,0,1)', bias: ...} (activation: ... "
                             "quantizes its output)")
        for fld, n in config.sizes.get(key, {}).items():
            have = getattr(m, SIZE_KEYS[fld], None)
            if have is not None and have != n:
                raise ValueError(f"quantization config key {key!r} is for a layer of {fld}={n}, "
                                 f"but layer {name!r} has {have}")
        if key != name and not _quantizable(m):
            # type/regex keys skip containers and layers without quantizers; a leaf (an
            # LSTM, say) a key names that hetq cannot quantize is said, if it does nothing else
            if next(m.children(), None) is None:
                left_float.setdefault(key, []).append(f"{name} ({type(m).__name__})")
            continue
        if key in config.kernelless and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            left_as_is.setdefault(key, []).append(name)
            continue
        acted.add(key)
        if key != name and getattr(m, "bias", True) is None:
            # a type or regex key's bias quantizer does not apply to a layer without a bias
            # (QKeras sets it to None there); an exact name asking for one is an error
            fields = {f: v for f, v in fields.items() if f != "bias"}
        new = _convert(name, m, _fresh(fields), modules)
        if new is not None:
            _set(model, name, new)
            done[id(m)] = new
            skip.add(name)
    for key in config.fold_args:
        if key not in folded_keys:  # (they were taken and did nothing)
            warnings.warn(f"quantization config key {key!r}: folding_mode / ema_freeze_delay "
                          "set up folded batch norms (fold_batchnorm=True, a Linear or Conv2d "
                          "followed by a BatchNorm); no layer of this key was folded, so they "
                          "are not used", stacklevel=2)
    for key, names in left_as_is.items():
        warnings.warn(f"quantization config key {key!r} gives no kernel_quantizer, so its "
                      f"weight layers stay float, as QKeras' model_quantize leaves them: "
                      f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''} (hetq's "
                      "own spelling, {bias: ...}, quantizes the bias alone)", stacklevel=2)
    for key in config.entries:
        if key in left_as_is and key not in acted:
            continue
        if key not in used:
            warnings.warn(f"quantization config key {key!r} "
                          f"{_unused(key, modules, folded_bns)}", stacklevel=2)
        elif key in left_float and key not in acted:
            names = left_float[key]
            warnings.warn(f"quantization config key {key!r} matches only layers hetq cannot "
                          f"quantize, which stay float: {', '.join(names[:5])}"
                          f"{', ...' if len(names) > 5 else ''} (quantizable types: "
                          f"{QUANTIZABLE_TYPES})", stacklevel=2)
    return model


def _fresh(fields: dict) -> dict:
    """`fields` with quantizer objects copied: one object given in a config was shared by
    every layer it matched (an auto_po2 scale of one layer's shape, bits set on one layer
    changing all)."""
    return {f: copy.deepcopy(v) if isinstance(v, nn.Module) else v for f, v in fields.items()}


def _folded_key(config: QuantConfig, m: nn.Module):
    """(key, fields) of the first folded-type key (QDenseBatchnorm, ...) for a folded pair's
    weight layer `m`, or None."""
    for key, value in config.entries.items():
        if key in FOLDED_KEYS and isinstance(m, FOLDED_KEYS[key]):
            return key, value
    return None


def _not_replaceable(name: str, m: nn.Module, modules: dict) -> bool:
    """Whether a type or regex key must leave `m` as it is, with a warning: a subclass of a
    quantizable layer with its own forward (replacing it lost that forward), or a layer
    inside an nn.MultiheadAttention (which reads its weights directly, so a quantizer on
    them would never run)."""
    parent = modules.get(name.rpartition(".")[0]) if "." in name else None
    why = None
    if isinstance(parent, nn.MultiheadAttention):
        why = "is read directly by its nn.MultiheadAttention, so a quantizer would never run"
    else:
        for base in (nn.Linear, nn.Conv1d, nn.Conv2d):
            if isinstance(m, base) and not isinstance(m, QLayer) and \
                    type(m).forward is not base.forward:
                why = (f"is a {type(m).__name__}, a {base.__name__} with its own forward, "
                       "which a quantized layer would replace")
    if why:
        warnings.warn(f"quantize_model: layer {name!r} {why}; it stays as it is", stacklevel=4)
    return why is not None


def _unused(key: str, modules: dict[str, nn.Module], folded=()) -> str:
    """Why a config key quantized nothing: no layer matches it, the layers it matches are
    batch norms `folded` into their layers, or they were taken by a key that comes first
    (exact name, then type in the config's order, then regex); "matches no layer" said the
    first for all."""
    if key in FOLDED_KEYS:
        return ("matches no folded layer (a QKeras folded type: it selects a Linear or "
                "Conv2d followed by a BatchNorm, with fold_batchnorm=True)")
    if key in _ALL_TYPE_KEYS:
        hits = [n for n, m in modules.items()
                if n and TYPE_ALIASES.get(key, key) in _type_names(m) and _quantizable(m)]
    else:
        try:
            hits = [n for n, m in modules.items() if n and (n == key or (
                key not in modules and re.match(key, n) and _quantizable(m)))]
        except re.error as e:
            return f"is neither a layer name or type nor a valid regular expression ({e})"
    if not hits:
        return "matches no layer of the model"
    if all(n in folded for n in hits):  # (said as 'another key takes precedence')
        return (f"matches only batch norms folded into their layers (fold_batchnorm=True): "
                f"{', '.join(f'{n!r} into {folded[n]!r}' for n in hits[:5])}"
                f"{', ...' if len(hits) > 5 else ''}; give the folded layer's quantizers "
                "under its key")
    return (f"matches {', '.join(hits[:5])}{', ...' if len(hits) > 5 else ''}, but another "
            "key takes precedence there (exact name, then type keys in the config's order, "
            "then regexes)")


def get_quantization_config(model: nn.Module) -> QuantConfig:
    """The model's quantizers as a QuantConfig keyed by layer name (re-applying it to the
    float model reproduces `model`'s quantizers; a folded batch norm's entry has its
    `folding_mode`, so it is folded again)."""
    check_module(model, "get_quantization_config")
    entries = {}
    for name, m in model.named_modules():
        if isinstance(m, QLayer) and name:
            fields = {f: str(q) for f, q in m.quantizers.items() if q is not None
                      and not isinstance(q, Activation)}
            fields.update({f: str(q) for f, q in m.quantizers.items()
                           if isinstance(q, Activation)})
            if isinstance(m, _FoldedBatchnorm):  # its settings: the entry folds the layer
                fields["folding_mode"] = m.folding_mode  # (again, without fold_batchnorm)
                if m.ema_freeze_delay is not None:
                    fields["ema_freeze_delay"] = m.ema_freeze_delay
            if fields:
                entries[name] = fields
    return QuantConfig(entries)


def check_quantizes(model: nn.Module, config: QuantConfig, source: str) -> None:
    """For a config file given on the command line: ValueError if `model` (already passed
    through quantize_model) has no quantized layer, which would train or cost a float model
    under the config's name."""
    if any(isinstance(m, QLayer) for m in model.modules()):
        return
    names = [n for n, m in model.named_modules() if n and _quantizable(m)]
    why = ("it is empty" if not config.entries else
           f"its keys {', '.join(map(repr, config.entries))} match none of the layers "
           f"{', '.join(names)} or their types")
    raise ValueError(f"{source} quantizes no layer of the model ({why}); for a float model "
                     "leave out --config")
