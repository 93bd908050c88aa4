"""Training throughput (samples/s) of the hetq loop, float and Q6, against the common plain
PyTorch loop with a DataLoader over a TensorDataset (batch 1024, shuffle), same model, same
data (simulated jets), interleaved, median of 3 epochs each.

    python benchmarks/train_throughput.py
"""

import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from common import jets
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
    d = jets()
    n = len(d.y_train)
    X, y = d.tensors("train")
    loader = DataLoader(TensorDataset(X, y), batch_size=1024, shuffle=True)
    torch.manual_seed(0)
    base = build("jet_mlp")
    opt = torch.optim.Adam(base.parameters(), lr=1e-3)
    f = build("jet_mlp")
    q = quantize_model(build("jet_mlp"), preset("q6"))
    times = {"plain PyTorch + DataLoader (float)": [], "hetq fit (float)": [],
             "hetq fit (Q6 QAT)": []}
    dataloader_epoch(base, opt, loader)
    for _ in range(3):
        times["plain PyTorch + DataLoader (float)"].append(dataloader_epoch(base, opt, loader))
        times["hetq fit (float)"].append(hetq_epoch(f, d))
        times["hetq fit (Q6 QAT)"].append(hetq_epoch(q, d))
    base_t = statistics.median(times["plain PyTorch + DataLoader (float)"])
    print(f"{n} training samples per epoch (hetq epochs include the validation pass)")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:<36} {n / m:10.0f} samples/s   ratio to DataLoader baseline "
              f"{base_t / m:5.2f}x")


if __name__ == "__main__":
    main()
