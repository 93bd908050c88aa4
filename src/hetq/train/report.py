"""Printing metrics as tables and plotting ROC curves (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def metrics_table(m: dict[str, float], classes: list[str], task: str = "classify") -> str:
    lines = []
    if task == "classify":
        lines.append(f"accuracy {m.get('accuracy', float('nan')):.4f}   loss "
                     f"{m.get('loss', float('nan')):.4f}")
        # the key's prefix, up to its first '_' (the FPR is a number): guessed from the class
        # names, a class 'b_jet' gave 'tpr@fpr=0.01_b', and 'b' as the end of 'x_b' gave
        # 'tpr@fpr=0.01_x'; each missing TPR then printed as 0
        fpr_key = next((k.split("_", 1)[0] for k in m if k.startswith("tpr@fpr=")), None)
        rows = [c for c in classes if f"auc_{c}" in m] + (["mean"] if "auc_mean" in m else [])
        w = max([6, *map(len, rows)])  # (a long class name pushed its numbers out of line)
        lines.append(f"{'class':>{w}}  {'AUC':>7}  {fpr_key or 'tpr':>14}")
        for c in rows:
            tpr = m.get(f"{fpr_key}_{c}", float("nan"))
            lines.append(f"{c:>{w}}  {m[f'auc_{c}']:7.4f}  {tpr:14.4f}")
    else:
        lines.append(f"background reconstruction loss {m.get('bg_loss', float('nan')):.5f}")
        signals = [c for c in classes if f"sig_eff_{c}" in m]
        if not signals:  # (the header alone, with no rows, was printed)
            lines.append("no signal samples in this split: an anomaly model's train and val "
                         "splits keep the background only; its signal efficiencies are on "
                         "the test split")
            return "\n".join(lines)
        w = max([6, *map(len, signals)])
        lines.append(f"{'signal':>{w}}  {'AUC':>7}  {'sig eff @ bkg eff 1e-2':>24}")
        for c in signals:
            lines.append(f"{c:>{w}}  {m[f'auc_{c}']:7.4f}  {m[f'sig_eff_{c}']:24.4f}")
    return "\n".join(lines)


def literal(*texts) -> None:
    """Draw these matplotlib texts (a legend's, labels of class, metric or layer names) as
    given: '$\\frac$' in a class name failed the plot (and `hetq train`, after saving), and
    '$\\alpha$' was a Greek letter. The axes' own tick labels keep their math ('10^-4')."""
    for t in texts:
        if hasattr(t, "get_texts"):  # a legend: its entries and title
            literal(*t.get_texts(), t.get_title())
        elif t is not None:
            t.set_parse_math(False)


def _short(label: str, most: int = 32) -> str:
    """A legend label of at most `most` characters (an 80-character class name left the
    axes a strip beside the legend)."""
    return label if len(label) <= most else label[:most - 1] + "…"


def plot_roc(scores: np.ndarray, y: np.ndarray, classes: list[str], path: str | Path,
             title: str = "") -> Path:
    """One-vs-rest ROC curves (signal efficiency vs background efficiency, log x) to PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 4))
    curves = []  # (given to the legend as they are: one named '_bkg' was left out of it)
    for k, c in enumerate(classes):
        lab = y == k
        if lab.all() or not lab.any():
            continue
        fpr, tpr = roc_curve(scores[:, k], lab)
        curves.append((ax.plot(np.maximum(fpr, 1e-4), tpr)[0], c))
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("background efficiency (FPR)")
    ax.set_ylabel("signal efficiency (TPR)")
    ax.axvline(1e-2, color="grey", lw=0.5, ls="--")
    import warnings

    with warnings.catch_warnings():  # (matplotlib's: no curve to label, when the test split
        warnings.simplefilter("ignore", UserWarning)  # has one class; a legend of 50 classes
        literal(ax.legend([h for h, _ in curves], [_short(c) for _, c in curves],  # that
                          title=title or None))                      # leaves no room)
        fig.tight_layout()
    path = Path(path)
    from ..files import write_whole

    try:  # (whole or not at all: a full disk left a cut-off image)
        write_whole(path, lambda tmp: fig.savefig(tmp, dpi=110,
                                                  format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path
