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

from .cli import positive_int, sh


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="train float and Q6 jet taggers, cost them, run a short "
                                    "search (built-in data)",
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


def run(a) -> int:
    import torch

    from .cost import cost
    from .data import get_dataset
    from .models import build, preset
    from .quant.convert import quantize_model
    from .quant.summary import summary
    from .search.config import SearchConfig
    from .search.driver import changed_settings, run_search
    from .search.results import format_table, pareto_rows
    from .search.space import DEPLOYABLE_QUANTIZATION_CONFIG
    from .train import evaluate, fit, save
    from .train.report import metrics_table

    t0 = time.time()
    data = get_dataset(a.data)
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
                       model_kwargs={"n_in": data.n_features, "n_out": data.n_classes})
    # a rerun into an earlier demo's folder with other settings: refused before steps 1-3
    # replace its checkpoints (step 4 would refuse the search only after them)
    changed = {k: v for k, v in changed_settings(cfg, out / "search").items() if k != "trials"}
    if changed:
        names = {"epochs": "--trial-epochs", "float_epochs": "--epochs", "data": "--data"}
        raise ValueError(f"{out} holds a demo run with other settings ("
                         + ", ".join(f"{names.get(k, k)} {v}, now {getattr(cfg, k)}"
                                     for k, v in changed.items())
                         + "); use another --out, or the same settings to resume its search "
                         "(--trials may change)")
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

    best = study.best_trial.number
    _banner(f"5. export the best searched model (trial {best}), bit-exact check on the test set")
    _export(out, best, data)
    print(f"\nfloat test accuracy {fm['accuracy']:.4f}, Q6 {qm['accuracy']:.4f}; "
          f"demo finished in {time.time() - t0:.0f} s; outputs in {out}/ "
          f"(`hetq report {sh(out / 'search')}` writes the HTML report)")
    return 0
