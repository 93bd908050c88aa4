"""`cost(model)`: the per-layer cost table (energy, bits, EBOPs, FPGA estimate) and totals."""

from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..quant.base import check_module
from .energy import MEMORIES
from .graph import as_input_shape, trace
from .model import LayerCost, Settings, layer_costs
from .qtypes import NAMED, qtype_of

ENERGY_LABEL = "energy: QTools-equivalent 45 nm Horowitz model (estimate)"
FPGA_LABEL = ("LUT/DSP/FF/latency: hetq estimate for the hls4ml latency strategy "
              "(not a synthesis result)")


@dataclass
class CostReport:
    layers: list[LayerCost]
    settings: Settings
    size_bits: dict[str, int] | None = None  # AutoQKeras bits-goal count (see cost.bits)

    @property
    def energy_pj(self) -> float:
        """Total energy with QTools' include_energy rule (pJ)."""
        return sum(lc.total for lc in self.layers)

    def summary(self) -> dict[str, float]:
        """Totals: energy_pj (int as QTools' extract_energy_sum), bits (parameters +
        activations), param_bits, act_bits, ebops (weights only), ebops_bias, lut, dsp, ff,
        cycles, latency_ns."""
        f = {k: sum(lc.fpga.get(k, 0.0) for lc in self.layers)
             for k in ("lut", "dsp", "ff", "cycles")}
        sb = self.size_bits or {}
        param = sb.get("parameters", sum(lc.param_bits for lc in self.layers))
        act = sb.get("activations", sum(lc.act_bits for lc in self.layers))
        return {"energy_pj": float(int(self.energy_pj)), "bits": float(param + act),
                "param_bits": float(param), "act_bits": float(act),
                "ebops": float(sum(lc.ebops for lc in self.layers)),
                "ebops_bias": float(sum(lc.ebops_bias for lc in self.layers)),
                **f, "latency_ns": f["cycles"] * 5.0}

    def to_dict(self, reference: tuple[str, CostReport] | None = None) -> dict[str, Any]:
        """The layers and totals; `reference` (its type, its report) is added under
        "reference" (the table's reference column)."""
        out = {"layers": [lc.to_dict() for lc in self.layers], "totals": self.summary(),
               "energy_model": ENERGY_LABEL, "fpga_model": FPGA_LABEL}
        if reference is not None:
            out["reference"] = {"type": reference[0], **reference[1].to_dict()}
        return out

    def to_json(self, path: str | Path | None = None,
                reference: tuple[str, CostReport] | None = None) -> str:
        """The report as JSON text (`to_dict`: layers and totals, and a (type, report)
        `reference` under "reference"), written whole to `path` if given."""
        text = json.dumps(self.to_dict(reference), indent=1)
        if path:
            from ..files import write_whole

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_whole(path, lambda tmp: tmp.write_text(text))  # (never half a file)
        return text

    def table(self, reference: CostReport | None = None) -> str:
        """The per-layer table with totals, as `hetq cost` prints it (with a `reference`
        report: each layer's reference energy, and the total reduction)."""
        ref = {lc.name: lc.total for lc in reference.layers} if reference else {}
        # (columns as wide as the longest name: QGlobalAveragePooling2d pushed its row out)
        nw = max([10] + [len(lc.name) for lc in self.layers])
        tw = max([17] + [len(lc.type) for lc in self.layers])
        head = f"{'layer':<{nw}} {'type':<{tw}} {'precision':<44} {'energy pJ':>11}"
        if reference:
            head += f" {'ref pJ':>11}"
        head += f" {'bits':>8} {'EBOPs':>9} {'LUT':>8} {'DSP':>6}"
        lines = [head, "-" * len(head)]
        for lc in self.layers:
            prec = lc.precision if len(lc.precision) <= 44 else lc.precision[:41] + "..."
            row = f"{lc.name:<{nw}} {lc.type:<{tw}} {prec:<44} {lc.total:11.2f}"
            if reference:
                row += f" {ref.get(lc.name, math.nan):11.2f}"
            row += (f" {lc.param_bits + lc.act_bits:8d} {lc.ebops:9d} "
                    f"{lc.fpga.get('lut', 0):8.0f} {lc.fpga.get('dsp', 0):6.0f}")
            lines.append(row)
        t = self.summary()
        lines.append("-" * len(head))
        line = f"total energy {t['energy_pj'] / 1e6:.6f} uJ ({t['energy_pj']:.0f} pJ)"
        if reference:
            r = reference.summary()["energy_pj"]
            line += f", reference {r / 1e6:.6f} uJ, reduction {r / max(t['energy_pj'], 1):.2f}x"
        lines.append(line)
        # (not the sum of the bits column: that counts each layer's parameters and output,
        # a float one as 32 bits; AutoQKeras' size counts a float tensor as 8 bits)
        lines.append(f"total bits {t['bits']:.0f} (parameters {t['param_bits']:.0f}, "
                     f"activations {t['act_bits']:.0f}: AutoQKeras' model size, a float "
                     f"tensor as 8 bits; the rows' bits count float as 32); EBOPs "
                     f"{t['ebops']:.0f} (+{t['ebops_bias']:.0f} bias)")
        lines.append(f"LUT {t['lut']:.0f}, DSP {t['dsp']:.0f}, FF {t['ff']:.0f}, latency "
                     f"{t['cycles']:.0f} cycles ({t['latency_ns']:.0f} ns at 200 MHz)")
        lines.append(ENERGY_LABEL)
        lines.append(FPGA_LABEL)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def infer_input_shape(model: nn.Module, check: bool = True):
    """A dense model's input size (`check`: that the model runs on it); for an image model
    the one square (C, S, S) with S <= 64 that the model accepts (a flatten into a dense
    layer fixes it)."""
    from ..quant.layers import QSeparableConv2d

    for m in model.modules():
        if isinstance(m, nn.Linear):
            if not check:
                return (m.in_features,)
            # the first dense layer defined need not be the first called (a head defined
            # first): every dense layer's input size in turn
            sizes = dict.fromkeys(d.in_features for d in model.modules()
                                  if isinstance(d, nn.Linear))
            fits = next((n for n in sizes if _accepts(model, (n,))), None)
            if fits is None:
                raise ValueError(f"cannot infer the input shape: the model runs on none of "
                                 f"its dense layers' input sizes "
                                 f"({', '.join(map(str, sizes))}); pass input_shape "
                                 "(CLI: --input-shape)")
            return (fits,)
        if isinstance(m, (nn.Conv2d, QSeparableConv2d)):
            fits = [s for s in range(1, 65) if _accepts(model, (m.in_channels, s, s))]
            if len(fits) == 1:
                return (m.in_channels, fits[0], fits[0])
            raise ValueError("give the input shape of this convolutional model, input_shape="
                             f"({m.in_channels}, H, W) (CLI: --input-shape {m.in_channels},H,W)"
                             + (f"; square images of {fits[0]} to {fits[-1]} pixels fit it"
                                if fits else ""))
        if isinstance(m, nn.Conv1d):
            raise ValueError(f"give the input shape of this convolutional model, input_shape="
                             f"({m.in_channels}, L) (CLI: --input-shape {m.in_channels},L)")
    raise ValueError("cannot infer the input shape; pass input_shape (CLI: --input-shape)")


def _accepts(model: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether `model` runs on a sample of `shape`: `graph.trace` (which caches the trace of
    the shape that fits, for the costing that follows)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trace(model, shape)
        except ValueError:
            return False
    return True


def _named_type(q, what: str):
    """qtype_of(q); a float activation's name (relu, softmax, linear) is refused: as a type
    it is read as fp32, and `--source relu` was costed as fp32 under the heading 'relu'."""
    t = qtype_of(q)
    if isinstance(q, str) and q not in NAMED and t.mode == "float":
        raise ValueError(f"{what} {q!r} is a float activation, not a number type; expected "
                         f"{', '.join(NAMED)} or a quantizer such as quantized_bits(8,0,1)")
    return t


def _check_memory(weights_on_memory, activations_on_memory, min_sram_size, rd_wr_on_io):
    """ValueError for a memory setting `cost` would misread: a placement other than sram,
    dram or fixed, a negative or non-finite min_sram_size (-5 and nan were taken as 0), a
    non-bool rd_wr_on_io ('yes' was taken as True)."""
    for name, v in (("weights_on_memory", weights_on_memory),
                    ("activations_on_memory", activations_on_memory)):
        if v not in MEMORIES:
            raise ValueError(f"{name}={v!r}; expected 'sram', 'dram' or 'fixed'")
    if isinstance(min_sram_size, bool) or not isinstance(min_sram_size, numbers.Real) or \
            not 0 <= min_sram_size < math.inf:
        raise ValueError(f"min_sram_size={min_sram_size!r}; expected a number of bits >= 0")
    if not isinstance(rd_wr_on_io, bool):
        raise ValueError(f"rd_wr_on_io={rd_wr_on_io!r}; expected True or False")


def cost(model: nn.Module, input_shape=None, *, source_quantizer="int8", reference=None,
         reference_accumulator="int32", weights_on_memory="sram", activations_on_memory="sram",
         min_sram_size=0, rd_wr_on_io=False, float_as=None) -> CostReport:
    """Cost of `model` (quantized or float) per layer and in total.

    Args:
        input_shape: one sample's shape (batch excluded); inferred for dense models.
        source_quantizer: type of the model input ("int8" = quantized_bits(8,0,1), any quantizer
            string, or "fp32").
        reference: None for the model as quantized, or "int8"/"int16"/"int32"/"fp16"/"fp32" to
            cost it with every weight of that type and `reference_accumulator` accumulators and
            activations (QTools' for_reference mode, the forgiving factor's baseline).
        weights_on_memory / activations_on_memory: "sram", "dram" or "fixed"; defaults follow
            the paper's setting (SRAM, min size 0, no DRAM reads/writes at the model's I/O).
        float_as: for a model as quantized (reference None), the type of an unquantized
            layer's weights, whose outputs (and float activations') are then
            `reference_accumulator`, as QTools costs hybrid models (the search passes its
            --reference: a layer it leaves float costs as in the reference). None (the
            default): unquantized layers and quantizers cost as fp32, a deliberate difference
            from QTools, which costs them as quantized_bits(8,0,1).
    """
    check_module(model, "cost", values=True)
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        import copy  # (a model left on the GPU by fit: the counts are made on the CPU)

        model = copy.deepcopy(model).cpu()
    _check_memory(weights_on_memory, activations_on_memory, min_sram_size, rd_wr_on_io)
    input_shape = infer_input_shape(model) if input_shape is None else as_input_shape(input_shape)
    s = Settings(_named_type(source_quantizer, "source_quantizer"),
                 _named_type(reference, "reference") if reference else None,
                 _named_type(reference_accumulator, "reference_accumulator"),
                 weights_on_memory, activations_on_memory, float(min_sram_size), rd_wr_on_io)
    if reference is None and float_as is not None:
        s.float_as = _named_type(float_as, "float_as")
    from .bits import model_bits

    ib = s.source.bits  # (fp16: 16; it counted every float input as 32 bits)
    size = model_bits(model, input_shape, input_bits=ib, reference=reference is not None,
                      ref_bits=8 if reference is None else s.reference.bits)
    return CostReport(layer_costs(model, input_shape, s), s, size)
