"""`hetq export`: integer engine check, QONNX file, hls4ml project with C-sim check, cost table
(the command's help: DESCRIPTION)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..cli import check_output, sh

DEFAULT_INPUT_TYPE = "ap_fixed<16,6,AP_RND_CONV,AP_SAT>"
DESCRIPTION = """\
Run a model on the integer engine, write it as a QONNX graph and/or an hls4ml project, check
each against the engine sample by sample (bit-exactness report), then print its cost.

example:
  hetq export runs/demo/q6.pt --input-type 'ap_fixed<16,6,AP_RND_CONV,AP_SAT>' --hls4ml out/hls

The source is a checkpoint, or a search run folder with --trial N (--trial best: the study's
best trial). The inputs compared are the test split of --data."""


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="bit-exact export: integer engine, QONNX, hls4ml C-sim",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("source", help="checkpoint (.pt, or the folder `hetq train` wrote), or a "
                                  "search run folder (with --trial)")
    e.add_argument("--trial", default=None, help="trial number in a search run, or 'best'")
    e.add_argument("--storage", default=None,
                   help="with --trial: the search's database URL, if it used --storage "
                        "(default: its journal file)")
    e.add_argument("--input-type", default=None,
                   help="fixed-point type of the inputs, e.g. 'ap_fixed<16,6,AP_RND_CONV,"
                        "AP_SAT>' (needed unless the model starts with an input QActivation)")
    e.add_argument("--qonnx", default=None, help="write the QONNX graph here (.onnx)")
    e.add_argument("--hls4ml", default=None, help="write the hls4ml project into this folder")
    e.add_argument("--backend", default="Vivado", choices=["Vivado", "Vitis"],
                   type=lambda v: {"vivado": "Vivado", "vitis": "Vitis"}.get(v.lower(), v),
                   help="hls4ml backend of the project (default %(default)s)")
    e.add_argument("--no-compile", action="store_true",
                   help="write the hls4ml project without building the C simulation")
    e.add_argument("--data", default=None,
                   help="jets-sim | jets-sim:PATH | jets | jets:PATH | digits | synthetic: the "
                        "data whose test split is compared (default: the data the model was "
                        "trained on)")
    e.add_argument("--samples", type=int, default=5000,
                   help="test samples compared (0: all; default %(default)s)")
    e.set_defaults(func=_export)


def resolve_source(source: str, trial: str | None, storage: str | None = None):
    """(model, label) for a checkpoint path or a search run folder + trial (its study in
    `storage` when the search used one)."""
    p = Path(source)
    if p.is_dir() and trial is None and (p / "model.pt").is_file():  # a `hetq train` folder
        p = source = p / "model.pt"
    if p.is_dir():
        from ..search.results import (
            gradient_run_error,
            is_gradient_run,
            load_run,
            study_trial_model,
            trial_number,
        )
        if trial is None and not (p / "search.yaml").exists():
            raise ValueError(f"{source} is a folder with neither a model.pt (what `hetq train` "
                             "writes) nor a search run (search.yaml)")
        if trial is None:
            if is_gradient_run(p):
                raise gradient_run_error(p)
            raise ValueError(f"{source} is a search run folder; give --trial N or --trial best")
        config, study = load_run(p, storage)
        number = trial_number(study, trial, source)
        return study_trial_model(p, config, study, number), f"{source} trial {number}"
    if not p.exists():
        raise FileNotFoundError(f"{source}: no such checkpoint or run folder")
    for option, value in (("--trial", trial), ("--storage", storage)):
        if value is not None:
            raise ValueError(f"{option} is for a search run folder; {source} is a checkpoint "
                             f"file (leave {option} out)")
    from ..train.checkpoint import load
    return load(p), str(source)


def source_quantizer(ft) -> str:
    """The quantizer string of `ft`'s width and signedness (for the cost model's input, which
    counts the width only). A type whose integer bits exceed its width (ap_fixed<4,8>: a grid
    step of 16) has no quantized_bits of its own; its integer bits are capped at the width."""
    if ft.signed:
        return f"quantized_bits({ft.width},{min(ft.integer - 1, ft.width - 1)},alpha=1)"
    return f"quantized_bits({ft.width},{min(ft.integer, ft.width)},keep_negative=False,alpha=1)"


def export_model(model, x, input_type=None, qonnx=None, hls4ml=None, backend="Vivado",
                 compile=True, out=print) -> dict:
    """Run every requested export on inputs `x` and print the bit-exactness report.

    Returns {"engine": IntegerModel, "reports": [BitExactReport, ...], "cost": CostReport}.
    """
    import contextlib

    from .hls import project_lock

    # the project folder's lock first: an export refused there wrote its --qonnx already,
    # and with two models the two files could come from different runs
    with project_lock(hls4ml) if hls4ml else contextlib.nullcontext():
        return _export_model(model, x, input_type, qonnx, hls4ml, backend, compile, out)


def _export_model(model, x, input_type, qonnx, hls4ml, backend, compile, out) -> dict:
    from ..cost import cost
    from .engine import IntegerModel
    from .steps import ExportError

    shape = tuple(x.shape[1:])
    t0 = time.time()
    eng = IntegerModel(model, shape, input_type)
    out(f"integer program ({len(eng.steps)} steps), input {eng.input_type}, output "
        f"{eng.output_type}:")
    out(eng.layer_table())
    reports = [eng.compare(x)]
    # (an --input-type that wraps or saturates them was 'bit-exact', and the firmware
    # useless: ap_ufixed<16,6> wrapped every negative standardised input; a type the model's
    # own input quantizer sets clips as the model was trained to)
    bad, n = eng.outside_range(x) if input_type is not None else (0, 1)
    if bad > 0.01 * n:
        import warnings

        warnings.warn(f"{bad:,} of the {n:,} input values ({bad / n:.1%}) lie outside the "
                      f"input type {eng.input_type}'s range [{eng.input_type.min_value:g}, "
                      f"{eng.input_type.max_value:g}], so they saturate or wrap: the firmware "
                      "sees other inputs than the model was trained on; choose an input type "
                      "that holds them (the checks below run on the cast inputs)", stacklevel=2)
    failed = []  # a layer one format cannot express: the other checks still run and print
    if qonnx:
        from .qonnx import check_qonnx, to_qonnx
        try:
            proto = to_qonnx(eng, qonnx)
        except ExportError as e:
            failed.append(f"--qonnx {qonnx} not written: {e}")
        else:
            out(f"QONNX: {qonnx}")
            try:
                reports.append(check_qonnx(eng, proto, x))
            except ExportError as e:  # written, but not checked: the other steps still run
                failed.append(f"--qonnx {qonnx} written but not checked: {e}")
    if hls4ml:
        from .hls import earlier_project, export_hls4ml
        replaced = earlier_project(hls4ml)
        try:
            _, rep = export_hls4ml(eng, hls4ml, x if compile else None, backend=backend,
                                   compile=compile, locked=True)
        except ExportError as e:
            failed.append(f"--hls4ml {hls4ml} not written: {e}")
        else:
            if rep is not None:
                reports.append(rep)
            out(f"hls4ml project ({backend}, io_parallel, latency): {hls4ml}"
                + (" (replaced the earlier project there)" if replaced else ""))
    rep_cost = cost(model, shape, source_quantizer=source_quantizer(eng.input_type))
    out("")
    out(f"bit-exactness vs the integer engine ({len(x)} samples on the input grid, "
        f"{time.time() - t0:.1f} s):")
    for r in reports:
        out("  " + r.line())
    out("")
    out(f"cost of the exported model (input {eng.input_type}, as "
        f"--source {sh(source_quantizer(eng.input_type))} in hetq cost):")
    out(rep_cost.table())
    if failed:
        raise ExportError("; ".join(failed))
    return {"engine": eng, "reports": reports, "cost": rep_cost}


def _export(a) -> int:
    import torch

    from ..data import get_dataset_for
    from ..train.checkpoint import read

    if not a.hls4ml and (a.no_compile or a.backend != "Vivado"):  # (silently ignored)
        given = ["--no-compile"] * a.no_compile + [f"--backend {a.backend}"] * (
            a.backend != "Vivado")
        raise ValueError(f"{' and '.join(given)} set up the hls4ml project: give --hls4ml DIR "
                         "too")
    model, label = resolve_source(a.source, a.trial, a.storage)
    if a.qonnx:  # before the engine check and the C simulation
        check_output(a.qonnx, "--qonnx")
    if a.hls4ml:
        from .hls import earlier_project

        check_output(a.hls4ml, "--hls4ml", folder=True)
        try:  # a folder with other files is refused here, before any work
            earlier_project(a.hls4ml)
        except ValueError as e:
            raise ValueError(f"--hls4ml {e}") from None
    # a checkpoint's own data standardisation (as `hetq evaluate`), and its features and
    # classes checked against --data's (a model trained on other data was compared on
    # jets-sim, the default, without a word)
    src = Path(a.source)
    if src.is_dir() and a.trial is None:
        src = src / "model.pt"
    norm = read(src).get("normalization") if src.is_file() else None
    spec = a.data
    if spec is None and src.is_dir() and (src / "search.yaml").exists():  # a search's trial
        from ..search.config import SearchConfig

        spec = SearchConfig.load(src / "search.yaml").data
    data = get_dataset_for(spec, norm, label)
    x, _ = data.tensors("test")
    if a.samples < 0:
        raise ValueError(f"--samples must be >= 0, got {a.samples}")
    if a.samples:
        x = x[: a.samples]
    first = next((m for m in model.modules() if hasattr(m, "in_features")), None)
    if first is not None and x.dim() == 2 and first.in_features != x.shape[1]:
        raise ValueError(f"{label} takes {first.in_features} inputs but {data.name} has "
                         f"{x.shape[1]} features")
    print(f"exporting {label}")
    res = export_model(model.cpu().eval(), x.to(torch.float32), a.input_type, a.qonnx,
                       a.hls4ml, a.backend, not a.no_compile)
    return 0 if all(r.exact for r in res["reports"]) else 1
