"""Model zoo: `build(name, **kwargs)` by name, so checkpoints can rebuild architectures."""

from __future__ import annotations

from torch import nn

from .cnn import cnn_digits
from .jet import PRESETS, jet_autoencoder, jet_mlp
from .resize import resize_model

MODELS = {"jet_mlp": jet_mlp, "jet_autoencoder": jet_autoencoder, "cnn_digits": cnn_digits}


def build(name: str, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for model {name!r}: {e}") from None


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


__all__ = ["MODELS", "PRESETS", "build", "cnn_digits", "jet_autoencoder", "jet_mlp", "preset",
           "resize_model"]
