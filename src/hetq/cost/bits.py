"""Model size in bits as AutoQKeras' bits goal counts it (spec §5.4, ForgivingFactorBits).

parameters: weight layers: sum over weight tensors of (elements x quantizer bits), `ref_bits`
            for unquantized tensors (the reference model has every tensor at `ref_bits`);
            batch norm: ref_bits x C x (1 + affine) (QBatchNorm: 6 C + 5 C as in the reference).
activations: the model input: input_bits x size; activation layers (QActivation: its bits;
            float activations, any torch one: ref_bits; softmax/sigmoid: output_bits;
            linear: 0); a weight layer's own fused activation likewise (per-feature bits:
            feature by feature); linear outputs count 0.
"""

from __future__ import annotations

import math

from torch import nn

from ..quant.layers import QActivation, QLayer
from ..quant.norm import QBatchNorm
from .graph import trace

OUTPUT_ACTS = (nn.Softmax, nn.Sigmoid)
OUTPUT_NAMES = ("softmax", "sigmoid")  # float activations by name (QActivation("softmax"))
LINEAR_NAMES = ("linear", None)


def _float_activation(m: nn.Module) -> bool:
    """A torch activation module (ELU, Softplus, ... too: the reference counts every
    non-linear activation, not a list of them)."""
    return type(m).__module__ == "torch.nn.modules.activation" and \
        not isinstance(m, (nn.MultiheadAttention, *OUTPUT_ACTS))


def _act_bits(q, shape, ref_bits: int, output_bits: int, reference: bool) -> int:
    """An activation's output bits as the reference counts them: a linear one 0, softmax
    and sigmoid `output_bits`, others their quantizer's bits (`ref_bits` unquantized)."""
    if getattr(q, "kind", None) == "float":
        name = getattr(q, "name", None)
        if name in LINEAR_NAMES:
            return 0
        if name in OUTPUT_NAMES:
            return math.prod(shape) * output_bits
    return _bits(q, shape, ref_bits, reference)


def _bits(q, shape, ref_bits: int, reference: bool) -> int:
    """Bits of a tensor of `shape` quantized by `q`: `ref_bits` per element for the reference
    or an unquantized tensor, else the quantizer's bits (tensor-valued: element by element)."""
    n = math.prod(shape)
    if reference or q is None or getattr(q, "kind", None) == "float":
        return n * ref_bits
    e = q.bits_elements(shape)
    return int(round(float(e.sum()))) if e is not None else n * int(round(q.bits_value))


def model_bits(model: nn.Module, input_shape, input_bits: int = 8, output_bits: int = 8,
               ref_bits: int = 8, reference: bool = False) -> dict[str, int]:
    """{"parameters", "activations", "total"} bits; `reference` counts every tensor at
    ref_bits (the forgiving factor's reference size)."""
    params = 0
    acts = input_bits * math.prod(input_shape)
    for node in trace(model, tuple(input_shape)):
        m = node.module
        size = math.prod(node.out_shape)
        if isinstance(m, QBatchNorm) and not reference:
            params += 6 * m.num_features + 5 * m.num_features * int(m.affine)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            params += ref_bits * m.num_features * (1 + int(m.affine))
        elif isinstance(m, QLayer) and not isinstance(m, QActivation):
            q = m.quantizers
            tensors = {"kernel": "weight", "depthwise": "weight", "bias": "bias",
                       "pointwise": "pointwise_weight"}
            if "depthwise" in q and hasattr(m, "depthwise_weight"):
                tensors["depthwise"] = "depthwise_weight"
            for fld, attr in tensors.items():
                t = getattr(m, attr, None)
                if fld in q and t is not None:
                    params += _bits(q[fld], t.shape, ref_bits, reference)
            act = q.get("activation")
            if act is not None:
                acts += _act_bits(act, node.out_shape, ref_bits, output_bits, reference)
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            params += ref_bits * sum(p.numel() for p in m.parameters(recurse=False))
        elif isinstance(m, QActivation):
            acts += _act_bits(m.activation_quantizer, node.out_shape, ref_bits, output_bits,
                              reference)
        elif isinstance(m, OUTPUT_ACTS):
            acts += size * output_bits
        elif _float_activation(m):
            acts += size * ref_bits
    return {"parameters": params, "activations": acts, "total": params + acts}
