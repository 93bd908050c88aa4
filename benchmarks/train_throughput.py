"""Training throughput (samples/s) of the hetq loop, float and Q6, against the common plain
PyTorch loop with a DataLoader over a TensorDataset (batch 1024, shuffle), same model, same
data (simulated jets), each warmed up by one epoch, then interleaved, median of --repeats
epochs each, in --threads torch threads.

    python benchmarks/train_throughput.py [--repeats 5] [--threads 1]
"""

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from common import jets
from hetq.cli import positive_int
from hetq.models import build, preset
from hetq.quant.convert import quantize_model
from hetq.train import fit


def dataloader_epoch(model, opt, loader):
    t = time.perf_counter()
    for xb, yb in loader:
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def hetq_epoch(model, d):
    t = time.perf_counter()
    fit(model, d, epochs=1, batch_size=1024, lr=1e-3, progress=False, restore_best=False)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=positive_int, default=5,
                    help="timed epochs per loop (median)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d = jets()
    n = len(d.y_train)
    X, y = d.tensors("train")
    loader = DataLoader(TensorDataset(X, y), batch_size=1024, shuffle=True)
    torch.manual_seed(0)
    base = build("jet_mlp")
    opt = torch.optim.Adam(base.parameters(), lr=1e-3)
    f = build("jet_mlp")
    q = quantize_model(build("jet_mlp"), preset("q6"))
    loops = {"plain PyTorch + DataLoader (float)": lambda: dataloader_epoch(base, opt, loader),
             "hetq fit (float)": lambda: hetq_epoch(f, d),
             "hetq fit (Q6 QAT)": lambda: hetq_epoch(q, d)}
    for run in loops.values():  # warm-up: first-call costs out of every measurement
        run()
    times = {k: [] for k in loops}
    for _ in range(a.repeats):
        for k, run in loops.items():
            times[k].append(run())
    base_t = statistics.median(times["plain PyTorch + DataLoader (float)"])
    print(f"{n} training samples per epoch (hetq epochs include the validation pass); "
          f"{a.threads} thread(s), median of {a.repeats} interleaved epochs")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:<36} {n / m:10.0f} samples/s   ratio to DataLoader baseline "
              f"{base_t / m:5.2f}x")


if __name__ == "__main__":
    main()
