"""Make the embedded simulated-jets sample shipped in the package.

Takes a seeded, class-stratified random subsample of `jets_sim.npz` (Pythia 8 + FastJet
stand-in for the hls4ml jet dataset, see its README) keeping each jet's train/val/test label,
and writes `src/hetq/data/jets_sim_small.npz` (compressed).

    python scripts/make_embedded_jets.py ../shared/data/jets_sim.npz [--per-class 5000]
"""

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "hetq" / "data" / "jets_sim_small.npz"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("--per-class", type=int, default=5000)
    p.add_argument("--seed", type=int, default=2024)
    a = p.parse_args()
    d = np.load(a.source)
    rng = np.random.default_rng(a.seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(d["y"] == c), a.per_class, replace=False)
                          for c in range(len(d["classes"]))])
    idx = rng.permutation(idx)
    np.savez_compressed(OUT, X=d["X"][idx], y=d["y"][idx], split=d["split"][idx],
                        features=d["features"], classes=d["classes"])
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(idx)} jets)")


if __name__ == "__main__":
    main()
