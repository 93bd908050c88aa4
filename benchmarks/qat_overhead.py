"""QAT overhead: one training epoch of the Q6 jet MLP vs the same float MLP in plain PyTorch.

Both run the same plain loop (200k x 16 synthetic samples in memory, batch 1024, Adam,
cross-entropy), interleaved, median of 3 epochs each, in one process. Prints the ratio
Q6 / float (target <= 1.5, aim <= 1.2; for reference QKeras measured 1.9x, Brevitas 6.1x).

    python benchmarks/qat_overhead.py [--samples 200000] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from hetq.quant.convert import quantize_model

Q6 = {
    "Linear": {"kernel": "quantized_bits(6,0,alpha=1)", "bias": "quantized_bits(6,0,alpha=1)"},
    "ReLU": {"activation": "quantized_relu(6,0)"},
}


def jet_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
        nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5),
    )


def epoch(model, opt, x, y, batch):
    n = x.shape[0]
    perm = torch.randperm(n)
    xs, ys = x[perm], y[perm]
    loss_fn = nn.functional.cross_entropy
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        out = model(xs[i:i + batch])
        loss = loss_fn(out, ys[i:i + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    a = p.parse_args(argv)
    if min(a.samples, a.batch, a.repeats) < 1 or a.threads < 0:
        p.error(f"--samples, --batch and --repeats must be >= 1 and --threads >= 0; got "
                f"{a.samples}, {a.batch}, {a.repeats}, {a.threads}")
    if a.threads:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.samples, 16, generator=g)
    y = torch.randint(0, 5, (a.samples,), generator=g)
    torch.manual_seed(0)
    fmodel = jet_mlp()
    qmodel = quantize_model(fmodel, Q6)
    fopt = torch.optim.Adam(fmodel.parameters(), lr=1e-3)
    qopt = torch.optim.Adam(qmodel.parameters(), lr=1e-3)
    epoch(fmodel, fopt, x[:20_000], y[:20_000], a.batch)  # warm-up both paths
    epoch(qmodel, qopt, x[:20_000], y[:20_000], a.batch)
    tf, tq = [], []
    for _ in range(a.repeats):  # interleaved so machine noise hits both alike
        tf.append(epoch(fmodel, fopt, x, y, a.batch))
        tq.append(epoch(qmodel, qopt, x, y, a.batch))
    mf, mq = statistics.median(tf), statistics.median(tq)
    print(f"samples={a.samples} batch={a.batch} threads={torch.get_num_threads()} "
          f"repeats={a.repeats}")
    print(f"float epoch (plain PyTorch): {mf * 1e3:8.1f} ms  (runs: "
          + ", ".join(f"{t * 1e3:.0f}" for t in tf) + ")")
    print(f"Q6 QAT epoch (hetq)        : {mq * 1e3:8.1f} ms  (runs: "
          + ", ".join(f"{t * 1e3:.0f}" for t in tq) + ")")
    print(f"QAT overhead ratio Q6/float: {mq / mf:.2f}x  (target <= 1.5, aim <= 1.2)")
    return mq / mf


if __name__ == "__main__":
    main()
