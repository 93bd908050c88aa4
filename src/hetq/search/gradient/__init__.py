"""Gradient-based bit-widths (HGQ style): one training run yields a Pareto front.

Every weight has its own trainable fractional bit count f (per weight), every input feature
its own (per feature), every hidden neuron its own (per_neuron=False: one per layer), where
f < 0 is allowed (grid steps of 2, 4, ... for neurons with a large range). Forward values use
the rounded f; the gradient reaches f through a surrogate of the quantization error
(d err / d f = -ln 2 * err, the error shrinking by half per extra bit; a value clipped at
the top of its range gives f no gradient, since more bits do not shrink that error). Integer
bits come from the values (weights) or from ranges: inputs from a quantile of the training
data; activations are trained (`learn_integer`, the default), starting from a quantile of
their values, or else come from a quantile recomputed after every epoch (or HGQ1's tracked
maxima); values above the range saturate. The loss is
cross-entropy + beta * EBOPs, with EBOPs differentiable in f and beta ramped geometrically
from `beta0` to `beta1` over training; a weight whose f drops below its magnitude's exponent
rounds to zero and stops costing anything, so pruning is learned too; so does an input
feature whose width would fall below 2 bits (it is then always 0).

After every epoch a callback measures the exact (rounded) EBOPs and the validation accuracy
and keeps each non-dominated (accuracy, EBOPs) state. `polish` then fine-tunes a front point's
weights at its frozen bits (its EBOPs can only fall). `to_hetq_model` turns a state into an
ordinary hetq model: `QActivation(quantized_bits(bits=[...], integer=[...]))` for the inputs
(per-feature tensors), `QDense` with per-weight tensor-valued `quantized_bits` kernels whose
stored weights are the quantized ones, `quantized_relu(b, i)` activations (neurons with f < 0
rescaled by powers of two, so that integer <= bits). The integer engine
and the QONNX export run it bit-exactly; hls4ml needs one type per tensor, which
`activations="layer"` gives (one bit-width for the inputs and one per activation layer). The
weights' bit-widths are per weight, or with `granularity` per neuron ("channel") or layer.

EBOPs here = sum over nonzero weights of (weight width) x (width of its input), biases
excluded; a weight's width is i + f + 1 (HGQ's training count plus the sign bit: i the
integer bits of its quantized value, f its own frac bits), the width of the type it is
exported with; an input's the width of its type (sign included for the signed inputs).
`weight_widths` gives the (never larger) minimal widths of the values. HGQ1's exact EBOPs
count less: a weight's significant bits only, without the trailing zero bits of its code nor
its sign (`GradientBitsMLP.ebops(hgq1=True)`, for comparing with figures measured that way).
"""

from .convert import to_hetq_model
from .model import (
    GradientBitsMLP,
    weight_widths,
)
from .runs import default_workers, train_gradient_runs
from .strategy import (
    GradientRow,
    format_gradient_table,
    run_gradient_strategy,
    saved_gradient_rows,
)
from .training import (
    BetaController,
    FrontPoint,
    GradientResult,
    ParetoCheckpoints,
    beta_at,
    ebops_target_at,
    polish,
    polish_front,
    train_gradient,
)

__all__ = ["BetaController", "FrontPoint", "GradientBitsMLP", "GradientResult", "GradientRow",
           "ParetoCheckpoints", "beta_at", "default_workers", "ebops_target_at",
           "format_gradient_table", "polish", "polish_front", "run_gradient_strategy",
           "saved_gradient_rows", "to_hetq_model", "train_gradient", "train_gradient_runs",
           "weight_widths"]
