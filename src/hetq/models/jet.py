"""The paper's jet tagger and an anomaly-detection autoencoder for the same 16 features.

Presets (quantization configs for `jet_mlp`, keys are layer types):
  "bf": the paper's baseline, 16-bit fixed point everywhere: ap_fixed<16,6> weights, biases and
        activations (quantized_bits(16,5,alpha=1), quantized_relu(16,6)).
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


def _check_widths(name: str, n_in: int, widths) -> None:
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise ValueError(f"{name}: widths={widths!r}; expected a list of hidden-layer widths, "
                         "e.g. [64, 32, 32]")

    def whole(v) -> bool:
        try:
            return not isinstance(v, bool) and float(v) == int(v) and int(v) >= 1
        except (TypeError, ValueError, OverflowError):
            return False

    if not all(whole(w) for w in widths) or not whole(n_in):
        raise ValueError(f"{name}: widths={list(widths)!r}, n_in={n_in!r}; every width must be "
                         "an integer >= 1")


def jet_mlp(n_in: int = 16, n_out: int = 5, widths=(64, 32, 32), batchnorm: bool = False,
            ) -> nn.Sequential:
    """16-64-32-32-5 MLP with ReLU (Duarte et al. 2018, Coelho et al. 2021); layers are named
    fc1.., relu1.., (bn1..), output. Outputs logits (softmax lives in the loss / predictor)."""
    _check_widths("jet_mlp", n_in, widths)
    layers: list[tuple[str, nn.Module]] = []
    prev = n_in
    for i, w in enumerate(widths, 1):
        layers.append((f"fc{i}", nn.Linear(prev, int(w))))
        if batchnorm:
            layers.append((f"bn{i}", nn.BatchNorm1d(int(w), eps=1e-3, momentum=0.01)))
        layers.append((f"relu{i}", nn.ReLU()))
        prev = int(w)
    layers.append(("output", nn.Linear(prev, n_out)))
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
