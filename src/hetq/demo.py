"""`hetq demo`: the main job on the built-in data, end to end in a few minutes on a laptop.

1. train the float jet tagger (16-64-32-32-5) on the embedded simulated jets;
2. quantization-aware fine-tuning of the paper's uniform 6-bit model (Q6) from it;
3. the per-layer cost tables (energy, bits, EBOPs, FPGA estimate) of both;
4. a short per-layer quantizer search (energy goal, forgiving factor, TPE) and its Pareto table;
5. bit-exact export of the best searched model: integer engine, QONNX, hls4ml C simulation
   (when the `export` extra is installed), with the bit-exactness report.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .cli import check_output, positive_int, sh

# the options of `hetq demo` that set a field of its search (the others are fixed)
DEMO_OPTIONS = {"epochs": "--trial-epochs", "float_epochs": "--epochs", "data": "--data",
                "trials": "--trials"}


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="train float and Q6 jet taggers, cost them, run a short "
                                    "search, export the best bit-exactly (built-in data)",
                       description=__doc__.split("\n", 1)[1].strip()
                       + "\n\nexample:\n  hetq demo --out runs/demo",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", default="runs/demo",
                   help="folder for the checkpoints, search run and export (default "
                        "%(default)s)")
    d.add_argument("--data", default="jets-sim",
                   help="data set (default: the built-in simulated jets sample)")
    d.add_argument("--epochs", type=positive_int, default=20,
                   help="float training epochs; the Q6 fine-tune gets half (default "
                        "%(default)s)")
    d.add_argument("--trials", type=positive_int, default=16,
                   help="search trials (default %(default)s)")
    d.add_argument("--trial-epochs", type=positive_int, default=5,
                   help="QAT epochs per search trial (default %(default)s)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=run)


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _export(out: Path, number: int, data) -> None:
    import importlib.util

    from .export.cli import DEFAULT_INPUT_TYPE, export_model
    from .search.results import trial_model

    model = trial_model(out / "search", number)
    x, _ = data.tensors("test")
    kw = {}
    if importlib.util.find_spec("qonnx") and importlib.util.find_spec("hls4ml"):
        kw = {"qonnx": out / "export" / "model.onnx", "hls4ml": out / "export" / "hls"}
    else:
        print("(QONNX/hls4ml not installed: pip install 'hetq[export]'; checking the integer "
              "engine only)")
    export_model(model, x, DEFAULT_INPUT_TYPE, **kw)


def _preflight(out: Path, cfg) -> None:
    """Before step 1: every output the demo writes can be written (a read-only folder, a
    folder where model.onnx goes or a foreign folder where the hls4ml project goes failed
    only at step 5, after the search), `out` holds no `hetq search` run (its float.pt was
    replaced, and the search could no longer resume), and an earlier demo's search has the
    same settings (step 4 refused it only after steps 1-3 had replaced its checkpoints)."""
    from .search.driver import OtherSettings, folder_changes

    # (`out` itself: checked by `run`, before its lock made the folder)
    if (out / "search.yaml").exists() or (out / "study.journal").exists():
        raise ValueError(f"{out} holds a `hetq search` run; the demo would replace its "
                         "float.pt; use another --out")
    check_output(out / "search", "--out", folder=True)
    check_output(out / "export" / "model.onnx", "--out")
    check_output(out / "export" / "hls", "--out", folder=True)
    from .export.hls import earlier_project

    try:  # (importing hls4ml is not needed for this check)
        earlier_project(out / "export" / "hls")
    except ValueError as e:
        raise ValueError(f"--out: {e}") from None
    changed = folder_changes(cfg, out / "search")
    if not changed:
        return
    fixed = sorted(k for k in changed if k not in DEMO_OPTIONS)
    if fixed:
        raise ValueError(f"{out / 'search'} holds a search with settings this demo does not "
                         f"make ({', '.join(fixed)}: another hetq version's demo, or a `hetq "
                         "search` run); use another --out")
    raise ValueError(OtherSettings(
        f"{out} holds a demo run with other settings ({{settings}}); use another --out, or "
        "the same settings to resume its search (--trials may change)", changed,
        item="{name} {old}, now {new}").render(DEMO_OPTIONS.get, str))


def run(a) -> int:
    """The demo, one per --out at a time (two at once failed together at step 5); Ctrl-C
    ends it with what a rerun keeps."""
    from .files import folder_lock

    try:
        check_output(a.out, "--out", folder=True)
        with folder_lock(a.out):
            return _run(a)
    except KeyboardInterrupt:
        search = Path(a.out) / "search"
        print(f"\ndemo stopped. A rerun of the same command trains steps 1-3 again and resumes "
              f"the search in {search} (its finished trials are kept)", flush=True)
        raise


def _run(a) -> int:
    import torch

    from .cost import cost
    from .data import get_dataset
    from .export.cli import DEFAULT_INPUT_TYPE, source_quantizer
    from .models import build, preset
    from .quant.convert import quantize_model
    from .quant.fixed import FixedType
    from .quant.summary import summary
    from .search.config import SearchConfig
    from .search.driver import run_search
    from .search.results import format_table, pareto_rows, trial_number
    from .search.space import DEPLOYABLE_QUANTIZATION_CONFIG
    from .train import evaluate, fit, save
    from .train.report import metrics_table

    t0 = time.time()
    data = get_dataset(a.data, progress=not a.no_progress)
    if len(data.input_shape) != 1:
        raise ValueError(f"the demo trains the jet tagger (jet_mlp), which takes flat feature "
                         f"vectors; {data.name} has samples of shape {data.input_shape}. Use "
                         "a feature data set (e.g. --data jets-sim), or train an image model "
                         f"with `hetq train --model cnn_digits --data {data.name}`")
    out = Path(a.out)
    # deployable activations only, so the best model exports bit-exactly to hls4ml (step 5)
    cfg = SearchConfig(data=a.data, trials=a.trials, epochs=a.trial_epochs,
                       quantization_config=DEPLOYABLE_QUANTIZATION_CONFIG,
                       float_epochs=a.epochs, batch_size=256, lr=2e-3,
                       model_kwargs={"n_in": data.n_features, "n_out": data.n_classes},
                       # the inputs costed as step 5 exports them (the search's default,
                       # int8, costed other models than the export table then showed)
                       source_quantizer=source_quantizer(FixedType.parse(DEFAULT_INPUT_TYPE)))
    _preflight(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    _banner(f"1. float jet tagger on {data!r}")
    torch.manual_seed(0)
    f = build("jet_mlp", n_in=data.n_features, n_out=data.n_classes)
    fit(f, data, epochs=a.epochs, batch_size=256, lr=2e-3, progress=not a.no_progress)
    fm = evaluate(f, data)
    print(metrics_table(fm, data.classes))
    save(out / "float.pt", f, model_name="jet_mlp", model_kwargs={
        "n_in": data.n_features, "n_out": data.n_classes}, data=data, metrics={"test": fm})

    _banner("2. Q6: quantized_bits(6,0,alpha=1) weights, quantized_relu(6,0) (QAT from float)")
    q6 = quantize_model(f, preset("q6"))
    fit(q6, data, epochs=max(1, a.epochs // 2), batch_size=256, lr=1e-3,
        progress=not a.no_progress)
    qm = evaluate(q6, data)
    print(metrics_table(qm, data.classes))
    print(summary(q6))
    save(out / "q6.pt", q6, model_name="jet_mlp", model_kwargs={
        "n_in": data.n_features, "n_out": data.n_classes}, data=data, metrics={"test": qm})

    _banner("3. cost (float costed as the int8/int32 reference, and Q6)")
    print("float model, int8 weights / int32 accumulators (QTools reference mode):")
    print(cost(f, reference="int8").table())
    print("\nQ6 model:")
    print(cost(q6).table(cost(f, reference="int8")))

    _banner(f"4. search: {a.trials} trials x {a.trial_epochs} epochs, energy goal, TPE")
    study = run_search(cfg, out / "search", progress=not a.no_progress)
    print()
    print(format_table(pareto_rows(out / "search"), cfg, study.user_attrs.get("reference")))

    best = trial_number(study, "best", out / "search")  # (the trial the table marks)
    _banner(f"5. export the best searched model (trial {best}), bit-exact check on the test set")
    _export(out, best, data)
    print(f"\nfloat test accuracy {fm['accuracy']:.4f}, Q6 {qm['accuracy']:.4f}; "
          f"demo finished in {time.time() - t0:.0f} s; outputs in {out}/ "
          f"(`hetq report {sh(out / 'search')}` writes the HTML report)")
    return 0
