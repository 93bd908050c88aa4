"""`summary(model)`: per-layer quantizers, fixed-point types, parameter counts and weight bits.

The equivalent of QKeras' `print_qstats` weight profiling, except that it never touches the
model (QKeras overwrites the float weights with quantized values while printing).
Weight bits of a layer = sum over its quantized weight tensors of (number of elements x bits of
that tensor's quantizer); unquantized tensors count 32 bits (float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .base import check_module
from .layers import QLayer

# the tensor each quantizer field acts on
FIELD_TENSORS = {"kernel": "weight", "depthwise": "weight", "bias": "bias",
                 "pointwise": "pointwise_weight", "gamma": "weight", "beta": "bias",
                 "mean": "running_mean", "variance": "running_var"}
FLOAT_BITS = 32


@dataclass
class LayerRow:
    name: str
    type: str
    quantizers: dict[str, str] = field(default_factory=dict)
    fixed_types: dict[str, str] = field(default_factory=dict)
    params: int = 0
    weight_bits: int = 0


def _tensor_for(m: nn.Module, fld: str):
    if fld == "depthwise" and hasattr(m, "depthwise_weight"):  # separable convolution
        return m.depthwise_weight
    attr = FIELD_TENSORS.get(fld)
    return getattr(m, attr, None) if attr else None


class ModelSummary:
    """Rows per layer with parameters or quantizers, and totals; `str()` prints a table."""

    def __init__(self, rows: list[LayerRow]):
        self.rows = rows

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def total_weight_bits(self) -> int:
        return sum(r.weight_bits for r in self.rows)

    def to_dict(self) -> dict:
        return {"layers": [r.__dict__ for r in self.rows], "total_params": self.total_params,
                "total_weight_bits": self.total_weight_bits}

    def __str__(self) -> str:
        head = ("layer", "type", "params", "weight bits", "quantizers (ap_fixed type)")
        lines = []
        for r in self.rows:
            q = "; ".join(f"{f}={s}" + (f" [{r.fixed_types[f]}]" if r.fixed_types.get(f) else "")
                          for f, s in r.quantizers.items()) or "float"
            lines.append((r.name, r.type, str(r.params), str(r.weight_bits), q))
        w = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h)
             for i, h in enumerate(head[:4])]
        out = [f"{head[0]:<{w[0]}}  {head[1]:<{w[1]}}  {head[2]:>{w[2]}}  {head[3]:>{w[3]}}  "
               f"{head[4]}"]
        out.append("-" * len(out[0]))
        for x in lines:
            out.append(f"{x[0]:<{w[0]}}  {x[1]:<{w[1]}}  {x[2]:>{w[2]}}  {x[3]:>{w[3]}}  {x[4]}")
        out.append("-" * len(out[0]))
        out.append(f"total: {self.total_params} parameters, {self.total_weight_bits} weight bits")
        return "\n".join(out)

    def __repr__(self) -> str:
        return (f"ModelSummary({len(self.rows)} layers, {self.total_params} params, "
                f"{self.total_weight_bits} weight bits)")


def summary(model: nn.Module) -> ModelSummary:
    """Per-layer table of quantizers, fixed types, parameter counts and weight bits."""
    check_module(model, "summary")
    rows = []
    for name, m in model.named_modules():
        if not name:
            continue
        own = list(m.parameters(recurse=False))
        if not isinstance(m, QLayer) and not own:
            continue
        row = LayerRow(name, type(m).__name__)
        row.params = sum(p.numel() for p in own)
        counted = set()
        if isinstance(m, QLayer):
            fts = m.fixed_types()
            for fld, q in m.quantizers.items():
                if q is None:
                    continue
                row.quantizers[fld] = str(q)
                if fts.get(fld) is not None:
                    row.fixed_types[fld] = fts[fld].to_hls()
                t = _tensor_for(m, fld)
                if t is not None and t.requires_grad:
                    row.weight_bits += int(q.bits_total(t.shape) if hasattr(q, "bits_total")
                                           else t.numel() * FLOAT_BITS)
                    counted.add(id(t))
        row.weight_bits += sum(p.numel() * FLOAT_BITS for p in own if id(p) not in counted)
        rows.append(row)
    return ModelSummary(rows)
