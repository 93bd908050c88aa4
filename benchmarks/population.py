"""Population training throughput: K jet-MLP candidates in one batched pass vs one by one.

    python benchmarks/population.py [--ks 1 4 16 64] [--seq-max 16]

For K = 1, 4, 16, 64 heterogeneous candidates (random per-layer bit widths 2..8, as a search
draws them): candidate-epochs per second (1 epoch of the training jets each, batch 1024,
validation included), the ratio to training the same candidates one after another with
`hetq.train.fit` in this process, the achieved GFLOP/s (2 x MACs x 3 for forward + backward
per sample) and the peak resident memory. Also: a mixed-kind population (ternary, po2,
auto_po2 and fixed point in the same layer) with grouping, against computing every kind for
all members and selecting.
"""

from __future__ import annotations

import argparse
import copy
import random
import resource
import time

import torch

from common import jets
from hetq.models import build
from hetq.quant.convert import quantize_model
from hetq.train import fit
from hetq.train.population import fit_population

MACS = 16 * 64 + 64 * 32 + 32 * 32 + 32 * 5


def candidates(f, k, seed=0, mixed=False):
    rng = random.Random(seed)
    out = []
    kinds = ["quantized_bits({b},0,alpha=1)", "ternary(alpha=1)", "quantized_po2(4,1)",
             "quantized_bits({b},0,1,alpha='auto_po2')"]
    for _ in range(k):
        cfg = {}
        for layer in ("fc1", "fc2", "fc3", "output"):
            b = rng.randint(2, 8)
            kern = rng.choice(kinds) if mixed else kinds[0]
            cfg[layer] = {"kernel": kern.format(b=b),
                          "bias": f"quantized_bits({max(b, 4)},2,alpha=1)"}
        for layer in ("relu1", "relu2", "relu3"):
            cfg[layer] = {"activation": f"quantized_relu({rng.randint(3, 8)},2)"}
        out.append(quantize_model(f, cfg))
    return out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", type=int, nargs="*", default=[1, 4, 16, 64])
    ap.add_argument("--seq-max", type=int, default=16,
                    help="sequential baseline measured on at most this many candidates "
                         "(its per-candidate time is extrapolated for larger K)")
    a = ap.parse_args()
    data = jets()
    n = len(data.tensors("train")[0])
    print(f"data {data!r}; {n} training jets, batch 1024, 1 epoch per candidate; "
          f"{torch.get_num_threads()} threads")
    torch.manual_seed(0)
    f = build("jet_mlp")
    flops_per_epoch = 2 * MACS * 3 * n
    # warm-up (allocator, first-call overheads)
    fit_population(candidates(f, 2), data, epochs=1)
    fit(candidates(f, 1)[0], data, epochs=1, progress=False)
    print(f"\n{'K':>4} {'pop s':>8} {'cand-ep/s':>10} {'seq s':>8} {'seq cand-ep/s':>14} "
          f"{'ratio':>6} {'GFLOP/s':>8} {'peak MB':>8}")
    for k in a.ks:
        ms = candidates(f, k, seed=k)
        t = time.perf_counter()
        fit_population(ms, data, epochs=1, batch_size=1024)
        tp = time.perf_counter() - t
        m_seq = min(k, a.seq_max)
        seq = [copy.deepcopy(m) for m in candidates(f, k, seed=k)[:m_seq]]
        t = time.perf_counter()
        for m in seq:
            fit(m, data, epochs=1, batch_size=1024, progress=False)
        ts = (time.perf_counter() - t) * k / m_seq
        print(f"{k:>4} {tp:8.2f} {k / tp:10.1f} {ts:8.2f} {k / ts:14.1f} {ts / tp:6.2f} "
              f"{flops_per_epoch * k / tp / 1e9:8.1f} {peak_mb():8.0f}"
              + ("" if m_seq == k else f"   (sequential: {m_seq} measured)"))
    k = 16
    ms = candidates(f, k, seed=99, mixed=True)
    t = time.perf_counter()
    fit_population(ms, data, epochs=1)
    tg = time.perf_counter() - t
    seq = candidates(f, k, seed=99, mixed=True)
    t = time.perf_counter()
    for m in seq:
        fit(m, data, epochs=1, progress=False)
    ts = time.perf_counter() - t
    print(f"\nmixed kinds, K={k}: population (grouped) {tg:.2f} s, sequential {ts:.2f} s, "
          f"ratio {ts / tg:.2f}")
    # compute-all-and-select: every member runs every kind present, then one is selected
    x = torch.randn(k, 64, 16)
    qs = [m.fc2.kernel_quantizer for m in ms]
    w = torch.randn(k, 32, 64)
    kinds = {str(q): q for q in qs}
    t = time.perf_counter()
    for _ in range(200):
        [torch.stack([q(w[j]) for j in range(k)]) for q in kinds.values()]
    t_all = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(200):
        torch.stack([qs[j](w[j]) for j in range(k)])
    t_grp = time.perf_counter() - t
    del x
    print(f"fc2 kernel quantization, {len(kinds)} kinds over {k} members: compute-all-and-"
          f"select {t_all / 200 * 1e3:.2f} ms, grouped {t_grp / 200 * 1e3:.2f} ms "
          f"({t_all / t_grp:.1f}x)")


if __name__ == "__main__":
    main()
