"""Classification and trigger metrics (numpy, no scikit-learn needed).

ROC of a score for a binary label: thresholds at every distinct score, TPR = TP / P,
FPR = FP / N. AUC by the trapezoid rule. The trigger metric is the signal efficiency (TPR)
at a fixed background efficiency (FPR), linearly interpolated on the ROC curve; for multi-class
outputs each class is taken one-vs-rest with its softmax probability as the score.
"""

from __future__ import annotations

import numpy as np


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) arrays, starting at (0, 0) and ending at (1, 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    p, n = labels.sum(), (~labels).sum()
    if p == 0 or n == 0:
        raise ValueError(f"ROC needs both classes present; got {p} positives, {n} negatives")
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(lab)[last]
    fps = np.cumsum(~lab)[last]
    return np.r_[0.0, fps / n], np.r_[0.0, tps / p]


def auc(scores, labels) -> float:
    fpr, tpr = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(
        np.trapz(tpr, fpr))


def tpr_at_fpr(scores, labels, fpr_target: float = 1e-2) -> float:
    """Signal efficiency at background efficiency `fpr_target` (interpolated)."""
    fpr, tpr = roc_curve(scores, labels)
    return float(np.interp(fpr_target, fpr, tpr))


def per_class_metrics(column, y: np.ndarray, classes: list[str],
                      fpr: float = 1e-2) -> dict[str, float]:
    """Per-class one-vs-rest AUC and TPR at `fpr`, and their means. column(k, labels) gives
    class k's scores and its 0/1 labels, in any (the same) order; classes absent from y or
    covering all of it are left out."""
    out = {}
    aucs, tprs = [], []
    for k, c in enumerate(classes):
        lab = y == k
        if lab.all() or not lab.any():
            continue
        s, ls = column(k, lab)
        a, t = auc(s, ls), tpr_at_fpr(s, ls, fpr)
        out[f"auc_{c}"], out[f"tpr@fpr={fpr:g}_{c}"] = a, t
        aucs.append(a)
        tprs.append(t)
    if aucs:
        out["auc_mean"] = float(np.mean(aucs))
        out[f"tpr@fpr={fpr:g}_mean"] = float(np.mean(tprs))
    return out


def classification_metrics(probs: np.ndarray, y: np.ndarray, classes: list[str],
                           fpr: float = 1e-2) -> dict[str, float]:
    """accuracy, per-class one-vs-rest AUC and TPR at `fpr`, and their means."""
    out = {"accuracy": float((probs.argmax(1) == y).mean())}
    out.update(per_class_metrics(lambda k, lab: (probs[:, k], lab), y, classes, fpr))
    return out
