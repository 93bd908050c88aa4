"""Time per cost evaluation of the Q6 jet MLP (it runs inside every search trial; target
< 5 ms), next to one forward pass of the same model on one batch of 1024 for scale: both
timed in one thread (--threads), interleaved, after a warm-up, median of --repeats rounds.

    python benchmarks/cost_speed.py [--repeats 7] [--threads 1]
"""

import argparse
import statistics
import time

import torch

from hetq.cli import positive_int
from hetq.cost import cost
from hetq.models import build, preset
from hetq.quant.convert import quantize_model


def per_call(f, n):
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=positive_int, default=7, help="timed rounds (median)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = quantize_model(build("jet_mlp"), preset("q6")).eval()
    x = torch.randn(1024, 16)

    def fresh():
        return cost(quantize_model(build("jet_mlp"), preset("q6")))

    def forward():
        with torch.no_grad():
            return m(x)

    calls = {"cost": (lambda: cost(m), 50), "fresh": (fresh, 10), "forward": (forward, 50)}
    for f, _ in calls.values():  # warm-up
        f()
    times = {k: [] for k in calls}
    for _ in range(a.repeats):  # interleaved, so that load changes hit all three alike
        for k, (f, n) in calls.items():
            times[k].append(per_call(f, n))
    c, new, fwd = (statistics.median(times[k]) for k in ("cost", "fresh", "forward"))
    print(f"{a.threads} thread(s), median of {a.repeats} interleaved rounds")
    print(f"cost(jet MLP Q6): {c * 1e3:.2f} ms per call (target < 5 ms)")
    print(f"build + quantize + cost of a new candidate: {new * 1e3:.2f} ms")
    print(f"forward pass (1024 samples): {fwd * 1e3:.3f} ms")
    print(f"ratio cost / forward(1024 samples): {c / fwd:.2f}x")


if __name__ == "__main__":
    main()
