"""`hetq cost`: the per-layer cost table of a checkpoint (or a zoo model + config)."""

from __future__ import annotations

import argparse

from ..cli import check_output, describe, name_type, positive_int, quantize_zoo_model
from .energy import MEMORIES


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive sizes, e.g. 16 or "
                                         f"1,8,8; got {text!r}")
    return shape


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cost", help="energy / bits / EBOPs / FPGA estimate per layer",
                       **describe("Print the per-layer cost table of a checkpoint, or of a "
                                  "zoo model with a preset/config.",
                                  "hetq cost runs/q6/model.pt --reference int8"))
    c.add_argument("checkpoint", nargs="?", help="a hetq checkpoint (model.pt, or its folder)")
    c.add_argument("--model", type=name_type, default=None,
                   help="zoo model instead of a checkpoint")
    c.add_argument("--model-widths", type=positive_int, nargs="+", default=None, metavar="N",
                   help="with --model jet_mlp/jet_autoencoder: its hidden layer widths (default "
                        "64 32 32 and 32 8 32)")
    c.add_argument("--preset", type=name_type, default=None,
                   help="with --model: float | bf | q6 (default: none, the model as built)")
    c.add_argument("--config", default=None, help="quantization config .yaml/.json")
    c.add_argument("--input-shape", type=_shape, default=None,
                   help="input size without the batch dimension, e.g. 16 or 1,8,8 (default: "
                        "from the first layer of a dense model)")
    c.add_argument("--source", default="int8", help="input type: int8, fp32 or a quantizer")
    c.add_argument("--reference", default=None,
                   help="add a reference column (QTools' reference mode): every weight costed "
                        "as this type (int8, int16, int32, fp16, fp32 or a quantizer string), "
                        "accumulators and activations as int32")
    c.add_argument("--float-as", default=None, metavar="TYPE",
                   help="cost the model's unquantized layers with weights of this type and "
                        "int32 outputs, as QTools costs hybrid models and as a search with "
                        "--reference TYPE costs its trials (default: fp32)")
    c.add_argument("--memory", default="sram", choices=list(MEMORIES),
                   help="where weights and activations are read from, for the energy "
                        "(QTools' modes; fixed: weights and activations free, the model's input "
                        "and output still read and written in SRAM; default %(default)s)")
    c.add_argument("--json", default=None,
                   help="write the full report as JSON to this file ('-': print it instead "
                        "of the table); with --reference it holds the reference's report too")
    c.set_defaults(func=_cost)


def _cost(a) -> int:
    from ..models import build, widths_kwargs
    from .report import cost

    if a.checkpoint and (a.model or a.preset or a.config or a.model_widths):
        given = next(f"--{k.replace('_', '-')}" for k in ("model", "preset", "config",
                                                         "model_widths") if getattr(a, k))
        raise ValueError(f"give a checkpoint or --model (with --preset/--config), not both: "
                         f"{a.checkpoint} and {given}")
    if a.preset and a.config:
        raise ValueError("give --preset or --config, not both")
    if (a.preset or a.config) and not a.model:
        raise ValueError("--preset/--config quantize a zoo model: give --model too")
    if a.checkpoint:
        from ..train.checkpoint import build_from, read

        ckpt = read(a.checkpoint)
        model = build_from(ckpt, a.checkpoint)
        label = a.checkpoint
    elif a.model:
        import torch

        from ..quant.layers import QLayer

        torch.manual_seed(0)  # (its weights decide EBOPs and LUTs: the same on every run)
        model = build(a.model, **widths_kwargs(a.model, a.model_widths))
        model, _ = quantize_zoo_model(model, a.model, a.preset, a.config)
        built_in = any(isinstance(m, QLayer) for m in model.modules())
        label = (f"{a.model}{' ' + '-'.join(map(str, a.model_widths)) if a.model_widths else ''}"
                 f" {a.preset or a.config or ('as built' if built_in else 'float')}")
    else:
        raise ValueError("give a checkpoint, or --model (with --preset/--config)")
    to_stdout = a.json == "-"
    if a.json and not to_stdout:  # before the table: a path that cannot be written fails
        check_output(a.json, "--json")  # with nothing printed
        _check_replaceable(a.json)
    shape = a.input_shape
    kw = dict(source_quantizer=a.source, weights_on_memory=a.memory,
              activations_on_memory=a.memory)
    rep = cost(model, shape, float_as=a.float_as, **kw)
    ref = cost(model, shape, reference=a.reference, **kw) if a.reference else None
    if a.json:
        text = rep.to_json(None if to_stdout else a.json,
                           reference=(a.reference, ref) if ref is not None else None)
        if to_stdout:
            print(text)
            return 0
    print(f"cost of {label} (input {a.source})")
    print(rep.table(ref))
    if a.json:
        print(f"JSON: {a.json}")
    return 0


def _check_replaceable(path: str) -> None:
    """An existing --json file is replaced only when it holds JSON (an earlier report): a
    slip such as `--json model.pt` replaced the checkpoint being costed."""
    import os

    if not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head and not head.startswith((b"{", b"[")):
        raise ValueError(f"--json {path} exists and holds no JSON (a checkpoint?); it is not "
                         "replaced: remove it or give another path")
