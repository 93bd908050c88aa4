"""Steps per second of the gradient strategy's training step, eager vs torch.compile.

    python benchmarks/gradient_compile.py [--steps 300] [--threads 1] [--widths 64 32 32]

The jet MLP (or the hidden --widths given) with trainable bit-widths (`GradientBitsMLP`),
batch 1024, Adam: one forward and backward pass of cross-entropy + beta * EBOPs, then the
optimizer step. Eager and compiled
steps are timed alternately in one run (the machine is noisy); prints the compile time, both
step times and their ratio. `train_gradient(compile=True)` / `hetq search --strategy gradient
--compile` use this compiled step.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import jets
from hetq.models import build
from hetq.search.gradient import GradientBitsMLP
from hetq.search.gradient.training import bits_optimizer, loss_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300, help="timed steps per side (>= 3)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (the strategy runs one per process)")
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 32, 32],
                    help="hidden widths (default the jet MLP's; strategies_jets.py starts "
                         "from 32 16)")
    a = ap.parse_args()
    if a.steps < 3 or a.threads < 1:
        ap.error(f"--steps must be >= 3 (got {a.steps}) and --threads >= 1 (got {a.threads})")
    torch.set_num_threads(a.threads)
    X, y = jets().tensors("train")
    torch.manual_seed(0)
    g = GradientBitsMLP(build("jet_mlp", widths=a.widths), X)
    opt = bits_optimizer(g, 1e-2)  # train_gradient's optimizer and step
    fwd_bwd = loss_step(g)
    compiled = torch.compile(fwd_bwd)
    gen = torch.Generator().manual_seed(0)

    def timed(fn, n):
        t = time.perf_counter()
        for _ in range(n):
            idx = torch.randint(0, len(X), (1024,), generator=gen)
            opt.zero_grad(set_to_none=True)
            fn(X[idx], y[idx], torch.tensor(1e-5))
            opt.step()
        return time.perf_counter() - t

    t = time.perf_counter()
    timed(compiled, 1)
    print(f"compile: {time.perf_counter() - t:.1f} s (first step; less when torch's "
          "compile cache already holds it)")
    timed(fwd_bwd, 20)  # warm up
    eager = comp = 0.0
    for _ in range(3):  # alternate, so both see the same machine load
        eager += timed(fwd_bwd, a.steps // 3)
        comp += timed(compiled, a.steps // 3)
    n = 3 * (a.steps // 3)
    print(f"eager:    {1000 * eager / n:.2f} ms/step")
    print(f"compiled: {1000 * comp / n:.2f} ms/step")
    print(f"compiled / eager steps per second: {eager / comp:.2f}x "
          f"({a.threads} thread{'s' if a.threads > 1 else ''}, widths "
          f"{'-'.join(map(str, a.widths))})")


if __name__ == "__main__":
    main()
