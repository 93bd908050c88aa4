"""Accuracy vs uniform bit width (2..16): post-training quantization vs QAT (simulated jets),
as in the paper's figure: QAT holds float accuracy down to about 6 bits, PTQ degrades earlier.

Both start from the same trained float jet MLP. PTQ: integer bits per tensor from observed
ranges (quantized_bits(b, i, alpha=1) weights and biases, quantized_relu(b, i)
activations), no retraining. QAT: the same b-bit quantizers, then --qat-epochs of training.
Prints a table and writes bitwidth_scan.png.

    python benchmarks/bitwidth_scan.py [--qat-epochs 8] [--out runs/bitwidth_scan.png]
"""

import argparse
from pathlib import Path

import torch

from common import jets
from hetq.models import build
from hetq.quant.convert import quantize_model
from hetq.train import evaluate, fit
from hetq.train.ptq import ptq_config


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--float-epochs", type=int, default=40)
    p.add_argument("--qat-epochs", type=int, default=8)
    p.add_argument("--out", default="runs/bitwidth_scan.png",
                   help="the plot (default %(default)s: runs/ is git-ignored)")
    a = p.parse_args(argv)
    d = jets()
    torch.manual_seed(0)
    f = build("jet_mlp")
    fit(f, d, epochs=a.float_epochs, batch_size=256, lr=2e-3, progress=False)
    facc = evaluate(f, d)["accuracy"]
    X, _ = d.tensors("train")
    rows = []
    print(f"float accuracy {facc:.4f}")
    print(f"{'bits':>4} {'PTQ acc':>8} {'QAT acc':>8}")
    for b in range(2, 17):
        cfg = ptq_config(f, X[:20000], b)
        pacc = evaluate(quantize_model(f, cfg), d)["accuracy"]
        q = quantize_model(f, cfg)
        fit(q, d, epochs=a.qat_epochs, batch_size=256, lr=1e-3, progress=False)
        qacc = evaluate(q, d)["accuracy"]
        rows.append((b, pacc, qacc))
        print(f"{b:4d} {pacc:8.4f} {qacc:8.4f}", flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label="PTQ")
    ax.plot([r[0] for r in rows], [r[2] for r in rows], "s-", label="QAT")
    ax.axhline(facc, color="grey", ls="--", label="float")
    ax.set_xlabel("uniform bit width")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"plot: {a.out}")


if __name__ == "__main__":
    main()
