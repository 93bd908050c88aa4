"""Width search warm start: which units a narrowed layer keeps, side by side.

    python benchmarks/resize_transfer.py [--epochs 10] [--seeds 3]

The float jet MLP (64-32-32) is narrowed to each width below, the narrow model warm-started
from the float weights in two ways: keeping the first units (AutoQKeras' choice, hetq's
`keep="first"`) or the most important ones (`keep="magnitude"`, the default). Each is then
quantized (4-bit weights and activations, as a typical search candidate) and trained with
QAT for --epochs epochs, as a search trial is. Prints the test accuracy right after resizing
(float) and after QAT for both, and the difference.
"""

import argparse

import torch

from common import jets
from hetq.models import build, resize_model
from hetq.quant.convert import quantize_model
from hetq.train import evaluate, fit

Q4 = {"Linear": {"kernel": "quantized_bits(4,0,alpha=1)", "bias": "quantized_bits(4,0,alpha=1)"},
      "ReLU": {"activation": "quantized_relu(4,0)"}}
WIDTHS = {
    "0.5 all hidden": {"fc1": 0.5, "fc2": 0.5, "fc3": 0.5},
    "0.5 fc1": {"fc1": 0.5},
    "0.75 all hidden": {"fc1": 0.75, "fc2": 0.75, "fc3": 0.75},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--float-epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    data = jets()
    torch.manual_seed(0)
    f = build("jet_mlp")
    fit(f, data, epochs=a.float_epochs, lr=3e-3, progress=False)
    print(f"float 64-32-32: test accuracy {evaluate(f, data)['accuracy']:.4f}; QAT "
          f"{a.epochs} epochs at 4 bits, mean of {a.seeds} seeds")
    print(f"{'widths':<16} {'keep':<10} {'after resize':>12} {'after QAT':>10}")
    for label, widths in WIDTHS.items():
        res = {}
        for keep in ("first", "magnitude"):
            r = resize_model(f, widths, keep=keep)
            before = evaluate(r, data)["accuracy"]
            after = []
            for s in range(a.seeds):
                torch.manual_seed(s)
                q = quantize_model(r, Q4)
                fit(q, data, epochs=a.epochs, lr=1e-3, seed=s, progress=False)
                after.append(evaluate(q, data)["accuracy"])
            res[keep] = (before, sum(after) / len(after))
            print(f"{label:<16} {keep:<10} {before:>12.4f} {res[keep][1]:>10.4f}")
        d0 = res["magnitude"][0] - res["first"][0]
        d1 = res["magnitude"][1] - res["first"][1]
        print(f"{label:<16} {'magnitude - first':<10}: {100 * d0:+.2f} points after resize, "
              f"{100 * d1:+.2f} points after QAT")


if __name__ == "__main__":
    main()
