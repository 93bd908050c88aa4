"""Printing metrics as tables and plotting ROC curves (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def metrics_table(m: dict[str, float], classes: list[str], task: str = "classify") -> str:
    lines = []
    if task == "classify":
        lines.append(f"accuracy {m.get('accuracy', float('nan')):.4f}   loss "
                     f"{m.get('loss', float('nan')):.4f}")
        # (the key's prefix, by the class names: a class 'b_jet' made rsplit('_') give
        # 'tpr@fpr=0.01_b', and every TPR printed as 0)
        fpr_key = next((k[:-len(c) - 1] for k in m if k.startswith("tpr@fpr=")
                        for c in [*classes, "mean"] if k.endswith(f"_{c}")), None)
        lines.append(f"{'class':>6}  {'AUC':>7}  {fpr_key or 'tpr':>14}")
        for c in classes:
            if f"auc_{c}" in m:
                lines.append(f"{c:>6}  {m[f'auc_{c}']:7.4f}  {m.get(f'{fpr_key}_{c}', 0):14.4f}")
        if "auc_mean" in m:
            lines.append(f"{'mean':>6}  {m['auc_mean']:7.4f}  {m.get(f'{fpr_key}_mean', 0):14.4f}")
    else:
        lines.append(f"background reconstruction loss {m.get('bg_loss', float('nan')):.5f}")
        signals = [c for c in classes if f"sig_eff_{c}" in m]
        if not signals:  # (the header alone, with no rows, was printed)
            lines.append("no signal samples in this split: an anomaly model's train and val "
                         "splits keep the background only; its signal efficiencies are on "
                         "the test split")
            return "\n".join(lines)
        lines.append(f"{'signal':>6}  {'AUC':>7}  {'sig eff @ bkg eff 1e-2':>24}")
        for c in signals:
            lines.append(f"{c:>6}  {m[f'auc_{c}']:7.4f}  {m[f'sig_eff_{c}']:24.4f}")
    return "\n".join(lines)


def plot_roc(scores: np.ndarray, y: np.ndarray, classes: list[str], path: str | Path,
             title: str = "") -> Path:
    """One-vs-rest ROC curves (signal efficiency vs background efficiency, log x) to PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 4))
    for k, c in enumerate(classes):
        lab = y == k
        if lab.all() or not lab.any():
            continue
        fpr, tpr = roc_curve(scores[:, k], lab)
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=c)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("background efficiency (FPR)")
    ax.set_ylabel("signal efficiency (TPR)")
    ax.axvline(1e-2, color="grey", lw=0.5, ls="--")
    import warnings

    with warnings.catch_warnings():  # (matplotlib's: no curve to label, when the test split
        warnings.simplefilter("ignore", UserWarning)  # has one class; a legend of 50 classes
        ax.legend(title=title or None)                # that leaves no room to lay out)
        fig.tight_layout()
    path = Path(path)
    from ..files import write_whole

    try:  # (whole or not at all: a full disk left a cut-off image)
        write_whole(path, lambda tmp: fig.savefig(tmp, dpi=110,
                                                  format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path
