"""Classification and trigger metrics (numpy, no scikit-learn needed).

ROC of a score for a binary label: thresholds at every distinct score, TPR = TP / P,
FPR = FP / N. AUC by the trapezoid rule. The trigger metric is the signal efficiency (TPR)
at a fixed background efficiency (FPR), linearly interpolated on the ROC curve; for multi-class
outputs each class is taken one-vs-rest with its log-odds as the score,
log(p_c / (1 - p_c)) = l_c - logsumexp_{j != c} l_j of the logits l in float64: the ranking of
the softmax probability p_c, which itself rounds to exactly 1 (a tie) once a margin passes
about 17 in float32 (37 in float64), right where TPR at FPR = 1e-2 is measured.
"""

from __future__ import annotations

import numpy as np
import torch


def log_odds(logits: torch.Tensor) -> torch.Tensor:
    """One-vs-rest log-odds of each class (last axis) from logits, in float64. The other
    classes' logsumexp runs over them sorted, so that tied logits give exactly tied scores
    (and the argmax of the scores is that of the logits)."""
    x = logits.detach().to(torch.float64)
    c = x.shape[-1]
    if c < 2:
        raise ValueError(f"one-vs-rest scores need at least 2 classes; got logits of shape "
                         f"{tuple(x.shape)}")
    others = torch.tensor([[j for j in range(c) if j != k] for k in range(c)])  # (C, C-1)
    rows = x.reshape(-1, c)
    out = torch.empty_like(rows)
    # rows in chunks of ~16M (row, class, other) entries: all at once took 8.7 GB for 1,000
    # rows of 600 classes
    step = max(1, (1 << 24) // (c * (c - 1)))
    for s in range(0, len(rows), step):
        r = rows[s:s + step]
        rest = r[:, others].sort(dim=-1, descending=True).values  # (n, C, C-1)
        out[s:s + step] = r - torch.logsumexp(rest, dim=-1)
    return out.reshape(x.shape)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) arrays, starting at (0, 0) and ending at (1, 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    p, n = labels.sum(), (~labels).sum()
    if p == 0 or n == 0:
        raise ValueError(f"ROC needs both classes present; got {p} positives, {n} negatives")
    bad = np.isnan(scores)
    if bad.any():  # (they have no rank: each was its own threshold, in input order)
        raise ValueError(f"{int(bad.sum())} of {len(scores)} scores are NaN (the first: "
                         f"sample {int(np.flatnonzero(bad)[0])}); a ROC needs numbers")
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], labels[order]
    # last index of each distinct score (!=, not np.diff: inf - inf is NaN, which split tied
    # infinite scores in input order)
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
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
    """accuracy, per-class one-vs-rest AUC and TPR at `fpr`, and their means, from per-class
    scores (`log_odds`, or probabilities: any score that ranks as they do)."""
    out = {"accuracy": float((probs.argmax(1) == y).mean())}
    out.update(per_class_metrics(lambda k, lab: (probs[:, k], lab), y, classes, fpr))
    return out
