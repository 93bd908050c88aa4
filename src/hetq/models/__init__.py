"""Model zoo: `build(name, **kwargs)` by name, so checkpoints can rebuild architectures."""

from __future__ import annotations

import copy

from torch import nn

from .cnn import cnn_digits
from .jet import PRESETS, jet_autoencoder, jet_mlp
from .resize import resize_model

MODELS = {"jet_mlp": jet_mlp, "jet_autoencoder": jet_autoencoder, "cnn_digits": cnn_digits}


def _key(name):
    """A zoo model or preset name as the registries spell it (case and spaces ignored)."""
    return name.strip().lower() if isinstance(name, str) else name


def build(name: str, **kwargs) -> nn.Module:
    """Zoo model `name` (case-insensitive) built with `kwargs`."""
    key = _key(name)
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[key](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for model {name!r}: {e}") from None


def widths_kwargs(name: str, widths) -> dict:
    """`build` keywords for the CLI's --model-widths: {"widths": [...]} for the zoo models
    with hidden widths (jet_mlp, jet_autoencoder), {} when none are given."""
    if not widths:
        return {}
    if _key(name) not in ("jet_mlp", "jet_autoencoder"):
        raise ValueError(f"--model-widths sets the hidden layers of jet_mlp or jet_autoencoder, "
                         f"not {name}")
    widths = list(widths)
    # (100000 100000 100000 failed to allocate 40 GB, or was killed for memory)
    weights = sum(a * b for a, b in zip(widths, widths[1:])) + 16 * widths[0]
    if weights > MAX_WEIGHTS:
        raise ValueError(f"--model-widths {' '.join(map(str, widths))} makes a model of about "
                         f"{weights:.3g} weights (at most {MAX_WEIGHTS:.0e}); give smaller "
                         "widths")
    return {"widths": widths}


MAX_WEIGHTS = 2 * 10**8  # the largest model --model-widths or a width search may build


def default_data(name: str) -> str:
    """The data spec zoo model `name` is trained on when none is given: the digits for
    cnn_digits (the jets failed with 'does not take the samples'), else the jets."""
    return "digits" if _key(name) == "cnn_digits" else "jets-sim"


def data_kwargs(name: str, data) -> dict:
    """`build` keywords that fit zoo model `name` to `data` (a hetq Dataset): its feature
    count, class count or image size, for the models that take them."""
    key = _key(name)
    if key == "jet_mlp":
        return {"n_in": data.n_features, "n_out": data.n_classes}
    if key == "jet_autoencoder":
        return {"n_in": data.n_features}
    if key == "cnn_digits":
        return {"in_channels": data.input_shape[0], "image_size": data.input_shape[-1],
                "n_classes": data.n_classes}
    return {}


def preset(name: str) -> dict:
    """The quantization config of jet_mlp preset `name` (case-insensitive: 'Q6' is 'q6')."""
    key = _key(name)
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[key])  # (a copy: a caller's tweak stays the caller's)


__all__ = ["MODELS", "PRESETS", "build", "cnn_digits", "data_kwargs", "default_data",
           "jet_autoencoder",
           "jet_mlp", "preset",
           "resize_model", "widths_kwargs"]
