"""The paper's jet tagger and an anomaly-detection autoencoder for the same 16 features.

Presets (quantization configs for `jet_mlp`, keys are layer types):
  "bf": the paper's baseline, 16-bit fixed point everywhere: ap_fixed<16,6> weights and
        biases (quantized_bits(16,5,alpha=1)) and ap_ufixed<16,6> ReLU activations
        (quantized_relu(16,6): unsigned, up to 64 - 2**-10).
  "q6": uniform 6-bit QKeras model: quantized_bits(6,0,alpha=1) weights and biases,
        quantized_relu(6,0) activations (hls4ml tutorial part 4).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

PRESETS = {
    "float": {},
    "bf": {
        "Linear": {"kernel": "quantized_bits(16,5,alpha=1)",
                   "bias": "quantized_bits(16,5,alpha=1)"},
        "ReLU": {"activation": "quantized_relu(16,6)"},
    },
    "q6": {
        "Linear": {"kernel": "quantized_bits(6,0,alpha=1)", "bias": "quantized_bits(6,0,alpha=1)"},
        "ReLU": {"activation": "quantized_relu(6,0)"},
    },
}


def _whole(v, least: int = 1) -> bool:
    """Whether `v` is an integer (numpy and integral floats too, not bool or str) >= least."""
    try:
        return (not isinstance(v, (bool, str, bytes)) and float(v) == int(v)
                and int(v) >= least)
    except (TypeError, ValueError, OverflowError):
        return False


def check_sizes(model: str, **sizes: tuple) -> None:
    """ValueError naming the first of `sizes` (name=(value, least)) that is not an integer
    >= its least value, e.g. check_sizes('jet_mlp', n_out=(n_out, 1))."""
    for name, (v, least) in sizes.items():
        if not _whole(v, least):
            raise ValueError(f"{model}: {name}={v!r}; expected an integer >= {least}")


def _check_widths(name: str, n_in: int, widths) -> None:
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise ValueError(f"{name}: widths={widths!r}; expected a list of hidden-layer widths, "
                         "e.g. [64, 32, 32]")
    if not all(_whole(w) for w in widths) or not _whole(n_in):
        raise ValueError(f"{name}: widths={list(widths)!r}, n_in={n_in!r}; every width must be "
                         "an integer >= 1")


def jet_mlp(n_in: int = 16, n_out: int = 5, widths=(64, 32, 32), batchnorm: bool = False,
            ) -> nn.Sequential:
    """16-64-32-32-5 MLP with ReLU (Duarte et al. 2018, Coelho et al. 2021); layers are named
    fc1.., relu1.., (bn1..), output. Outputs logits (softmax lives in the loss / predictor)."""
    _check_widths("jet_mlp", n_in, widths)
    check_sizes("jet_mlp", n_out=(n_out, 1))
    layers: list[tuple[str, nn.Module]] = []
    prev = n_in
    for i, w in enumerate(widths, 1):
        layers.append((f"fc{i}", nn.Linear(prev, int(w))))
        if batchnorm:
            layers.append((f"bn{i}", nn.BatchNorm1d(int(w), eps=1e-3, momentum=0.01)))
        layers.append((f"relu{i}", nn.ReLU()))
        prev = int(w)
    layers.append(("output", nn.Linear(prev, int(n_out))))
    return nn.Sequential(OrderedDict(layers))


def jet_autoencoder(n_in: int = 16, widths=(32, 8, 32)) -> nn.Sequential:
    """Dense autoencoder (encoder - bottleneck - decoder) with ReLU, linear output."""
    _check_widths("jet_autoencoder", n_in, widths)
    layers: list[tuple[str, nn.Module]] = []
    prev = n_in
    for i, w in enumerate(widths, 1):
        layers += [(f"fc{i}", nn.Linear(prev, int(w))), (f"relu{i}", nn.ReLU())]
        prev = int(w)
    layers.append(("output", nn.Linear(prev, n_in)))
    return nn.Sequential(OrderedDict(layers))
