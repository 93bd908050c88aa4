"""Shared helpers for the benchmarks: the full simulated jets file when present."""

from pathlib import Path

from hetq.data import get_dataset

FULL = Path(__file__).resolve().parents[2] / "shared" / "data" / "jets_sim.npz"


def jets():
    """The full simulated jets (../shared/data/jets_sim.npz) if present, else the sample."""
    if FULL.exists():
        return get_dataset(f"jets-sim:{FULL}")
    print(f"note: {FULL} not found, using the embedded 25k-jet sample")
    return get_dataset("jets-sim")
