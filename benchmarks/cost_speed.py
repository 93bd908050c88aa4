"""Time per cost evaluation of the Q6 jet MLP (it runs inside every search trial; target
< 5 ms), next to one forward pass of the same model on one batch of 1024 for scale.

    python benchmarks/cost_speed.py
"""

import time

import torch

from hetq.cost import cost
from hetq.models import build, preset
from hetq.quant.convert import quantize_model


def per_call(f, n):
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


def main():
    m = quantize_model(build("jet_mlp"), preset("q6")).eval()
    x = torch.randn(1024, 16)
    fresh = per_call(lambda: cost(quantize_model(build("jet_mlp"), preset("q6"))), 20)
    c = per_call(lambda: cost(m), 200)
    with torch.no_grad():
        fwd = per_call(lambda: m(x), 200)
    print(f"cost(jet MLP Q6): {c * 1e3:.2f} ms per call (target < 5 ms)")
    print(f"build + quantize + cost of a new candidate: {fresh * 1e3:.2f} ms")
    print(f"ratio cost / forward(1024 samples): {c / fwd:.1f}x")


if __name__ == "__main__":
    main()
