"""Bit-exactness of the export on the simulated jets: BF, Q6 and a searched heterogeneous model.

Each model is trained (float, then QAT), then compared over ALL test jets: integer engine vs
the PyTorch model (float64 and float32), QONNX (qonnx executor) vs engine, hls4ml C simulation
(Vivado backend, g++) vs engine. Also prints the cost of each export.

    python benchmarks/export_jets.py [--epochs 5] [--trials 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import FULL, jets
from hetq.cost import cost
from hetq.export import IntegerModel
from hetq.export.hls import export_hls4ml
from hetq.export.qonnx import check_qonnx, to_qonnx
from hetq.models import build, preset
from hetq.quant.convert import quantize_model
from hetq.search.config import SearchConfig
from hetq.search.driver import run_search
from hetq.search.results import trial_model
from hetq.search.space import DEPLOYABLE_QUANTIZATION_CONFIG
from hetq.train import evaluate, fit

INPUT = "ap_fixed<16,6,AP_RND_CONV,AP_SAT>"


def check(label, model, data, tmp: Path):
    x, _ = data.tensors("test")
    t0 = time.time()
    eng = IntegerModel(model, (data.n_features,), INPUT)
    acc = evaluate(model, data)["accuracy"]
    reps = [eng.compare(x)]
    y32 = model(eng.on_grid(x).float()).detach()
    reps.append(eng.compare(x, y32, "PyTorch (float32)"))
    reps.append(check_qonnx(eng, to_qonnx(eng, tmp / f"{label}.onnx"), x))
    _, r = export_hls4ml(eng, tmp / f"{label}_hls", x)
    reps.append(r)
    c = cost(model, (data.n_features,), source_quantizer="quantized_bits(16,5,alpha=1)"
             ).summary()
    print(f"\n{label}: test accuracy {acc:.4f}, output type {eng.output_type}, "
          f"{time.time() - t0:.1f} s")
    print(f"  cost (inputs {INPUT}): {c['ebops']:.0f} EBOPs, {c['energy_pj']:.0f} pJ, "
          f"LUT {c['lut']:.0f}, DSP {c['dsp']:.0f}, FF {c['ff']:.0f}, latency "
          f"{c['latency_ns']:.0f} ns")
    for r in reps:
        print("  " + r.line())
    return reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--trials", type=int, default=6)
    a = ap.parse_args()
    data = jets()
    print(f"data: {data!r}; test jets {len(data.tensors('test')[0])}")
    tmp = Path(tempfile.mkdtemp(prefix="hetq_export_"))
    torch.manual_seed(0)
    f = build("jet_mlp")
    fit(f, data, epochs=a.epochs, lr=3e-3, progress=False)
    results = {}
    for name in ("bf", "q6"):
        m = quantize_model(f, preset(name))
        fit(m, data, epochs=a.epochs, lr=1e-3, progress=False)
        results[name] = check(name.upper(), m.eval(), data, tmp)
    cfg = SearchConfig(data=f"jets-sim:{FULL}" if FULL.exists() else "jets-sim",
                       trials=a.trials, epochs=max(1, a.epochs // 2), float_epochs=a.epochs,
                       quantization_config=DEPLOYABLE_QUANTIZATION_CONFIG)
    study = run_search(cfg, tmp / "search", progress=False)
    best = study.best_trial
    m = trial_model(tmp / "search", best.number)
    print(f"\nsearched model: trial {best.number}, "
          f"{best.user_attrs.get('candidate', {}).get('quant_config', '')}")
    results["searched"] = check("searched", m.eval(), data, tmp)
    bad = sum(r.mismatched_samples for reps in results.values() for r in reps)
    print(f"\ntotal mismatching samples over all checks: {bad}")
    print(f"(projects and QONNX files in {tmp})")


if __name__ == "__main__":
    main()
