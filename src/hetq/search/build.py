"""Build a trial's model from the float model and a `Candidate`."""

from __future__ import annotations

import copy

from torch import nn

from ..models.resize import resize_model
from ..quant.convert import quantize_model
from .space import Candidate


def build_candidate(float_model: nn.Module, candidate: Candidate) -> nn.Module:
    """The trial model: resized (widths, float weights warm-started), then quantized."""
    resized = resize_model(float_model, candidate.widths) if candidate.widths else float_model
    if not candidate.quant_config:  # (every layer float in this trial: a copy, no warning)
        return copy.deepcopy(resized)
    return quantize_model(resized, candidate.quant_config)
