"""Build a trial's model from the float model and a `Candidate`."""

from __future__ import annotations

import copy
import warnings

from torch import nn

from ..models.resize import resize_model
from ..quant.convert import FUNCTION_CHANGE, quantize_model
from .space import Candidate

# the warnings build_candidate has shown in this process, (category, text)
_SAID: set[tuple[type, str]] = set()


def build_candidate(float_model: nn.Module, candidate: Candidate) -> nn.Module:
    """The trial model: resized (widths, float weights warm-started), then quantized. A
    warning of the quantization (a kernel quantizer without negative values, say) is shown
    the first time only: Python's once-per-place record is reset whenever any code changes
    the warning filters (each checkpoint save does), and a search repeated it every trial."""
    resized = resize_model(float_model, candidate.widths) if candidate.widths else float_model
    if not candidate.quant_config:  # (every layer float in this trial: a copy, no warning)
        return copy.deepcopy(resized)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = quantize_model(resized, candidate.quant_config)
    for w in caught:
        if FUNCTION_CHANGE in str(w.message):  # (the space's own choice: relu on a Tanh)
            continue
        key = (w.category, str(w.message))
        if key not in _SAID:
            _SAID.add(key)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model
