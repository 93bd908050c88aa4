"""Population training throughput: K jet-MLP candidates in one batched pass vs one by one.

    python benchmarks/population.py [--ks 1 4 16 64] [--epochs 1] [--repeat 3] [--device cpu]

For K = 1, 4, 16, 64 candidates of the jet MLP (16-64-32-32-5) with random per-layer bit
widths as a search draws them (quantized_bits kernels and biases, quantized_relu activations):
one epoch of the training jets each (batch 1024, validation with all metrics included, as
`hetq.train.fit` does), timed as a population (`fit_population`) and as K `fit` calls one
after another in this process, each the fastest of --repeat runs (fresh models each run; the
two are interleaved, so a busy machine slows both). Printed: candidate-epochs per second both
ways and their ratio, the achieved GFLOP/s of the population (2 x MACs x 3 per sample: forward
+ backward; validation not counted) and the peak resident memory of the process after the row
(it only grows; rows run in order of K).

Then a mixed population (K = 16: ternary, binary, po2, auto_po2-scaled and fixed-point kernels
in the same layer, two widths): quantizer kinds computed per group and scattered
(mixed="group") against every kind computed over the whole stack and selected
(mixed="select"), and against sequential training.
"""

from __future__ import annotations

import argparse
import random
import resource
import time

import torch

from common import jets
from hetq.models import build
from hetq.models.resize import resize_model
from hetq.quant.convert import quantize_model
from hetq.train import fit
from hetq.train.population import fit_population

LAYERS = ("fc1", "fc2", "fc3", "output")
MACS = 16 * 64 + 64 * 32 + 32 * 32 + 32 * 5  # per sample, the full-width jet MLP


def candidates(f, k: int, seed: int = 0, mixed: bool = False) -> list:
    """k quantized copies of `f` with random bit widths (and, when mixed, kinds and widths)."""
    rng = random.Random(seed)
    kinds = ["quantized_bits({b},0,alpha=1)", "ternary(alpha=1)", "binary(alpha=1)",
             "quantized_po2({b},1)", "quantized_bits({b},0,1,alpha='auto_po2')"]
    out = []
    for _ in range(k):
        cfg = {}
        for layer in LAYERS:
            b = rng.randint(2, 8)
            kern = rng.choice(kinds) if mixed else kinds[0]
            cfg[layer] = {"kernel": kern.format(b=b),
                          "bias": f"quantized_bits({max(b, 4)},2,alpha=1)"}
        for layer in ("relu1", "relu2", "relu3"):
            cfg[layer] = {"activation": f"quantized_relu({rng.randint(3, 8)},2)"}
        base = resize_model(f, {"fc1": 0.5}) if mixed and rng.random() < 0.5 else f
        out.append(quantize_model(base, cfg))
    return out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_population(models, data, epochs, device, mixed="group") -> float:
    t = time.perf_counter()
    fit_population(models, data, epochs=epochs, device=device, mixed=mixed)
    return time.perf_counter() - t


def time_sequential(models, data, epochs, device) -> float:
    t = time.perf_counter()
    for m in models:
        fit(m, data, epochs=epochs, progress=False, device=device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", type=int, nargs="*", default=[1, 4, 16, 64])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mixed-k", type=int, default=16)
    a = ap.parse_args()
    data = jets()
    n = len(data.tensors("train")[0])
    E = a.epochs
    print(f"data {data!r}\n{n} training jets, batch 1024, {E} epoch(s) per candidate, device "
          f"{a.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    torch.manual_seed(0)
    f = build("jet_mlp")
    flops = 2 * MACS * 3 * n * E
    # warm-up: first-call costs (allocator, kernels, imports) out of the timings
    fit_population(candidates(f, 2), data, epochs=1, device=a.device)
    fit(candidates(f, 1)[0], data, epochs=1, progress=False, device=a.device)
    print(f"rss after warm-up {peak_mb():.0f} MB\n")
    head = (f"{'K':>4} {'pop s':>7} {'pop cand-ep/s':>14} {'seq s':>7} {'seq cand-ep/s':>14} "
            f"{'speedup':>8} {'GFLOP/s':>8} {'peak MB':>8}")
    print(head)
    print("-" * len(head))
    for k in a.ks:
        tp = ts = float("inf")
        for _ in range(a.repeat):
            tp = min(tp, time_population(candidates(f, k, seed=k), data, E, a.device))
            ts = min(ts, time_sequential(candidates(f, k, seed=k), data, E, a.device))
        pk = peak_mb()
        print(f"{k:>4} {tp:7.2f} {k * E / tp:14.1f} {ts:7.2f} {k * E / ts:14.1f} "
              f"{ts / tp:7.2f}x {flops * k / tp / 1e9:8.1f} {pk:8.0f}", flush=True)

    k = a.mixed_k
    if k:
        print(f"\nmixed quantizer kinds and widths in one layer, K = {k}:")
        t = {"group": float("inf"), "select": float("inf"), "sequential": float("inf")}
        for _ in range(a.repeat):
            for mode in ("group", "select"):
                t[mode] = min(t[mode], time_population(candidates(f, k, seed=99, mixed=True),
                                                       data, E, a.device, mixed=mode))
            t["sequential"] = min(t["sequential"], time_sequential(
                candidates(f, k, seed=99, mixed=True), data, E, a.device))
        for mode, s in t.items():
            print(f"  {mode:>10}: {s:6.2f} s  {k * E / s:6.1f} cand-ep/s  "
                  f"(select / this: {t['select'] / s:.2f})")
        faster = min(("group", "select"), key=t.get)
        print(f"  faster: mixed={faster!r} ({max(t['group'], t['select']) / t[faster]:.2f}x)")


if __name__ == "__main__":
    main()
