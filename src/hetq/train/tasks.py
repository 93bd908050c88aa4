"""Tasks: what a model is trained to do — its loss, its metrics and which data it sees.

Losses and metrics are plain callables, so a search can optimise any metric a task reports.

* `Classify`: cross-entropy on logits; metrics accuracy, per-class AUC, TPR at FPR = 1e-2.
* `Anomaly`: an autoencoder trained on background classes only (e.g. q and g jets), anomaly
  score = mean squared reconstruction error per sample; metrics: for every signal class
  (e.g. t, w, z) the signal efficiency at a background efficiency of 1e-2, and AUC.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import auc, classification_metrics, log_odds, tpr_at_fpr


def check_fpr(fpr) -> float:
    """`fpr` as a float if it is a false-positive rate strictly between 0 and 1 (the TPR
    metrics' working point); else a ValueError (fpr=5 gave a TPR of 1.0, nan gave nan)."""
    if isinstance(fpr, bool) or not isinstance(fpr, numbers.Real) or not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr={fpr!r}; expected a false-positive rate between 0 and 1, "
                         "e.g. 1e-2")
    return float(fpr)


class Classify:
    """Classification: cross-entropy on the model's logits (one output per class, no softmax
    in the model); metrics accuracy, per-class AUC and TPR at FPR = `fpr`."""

    name = "classify"
    primary = "accuracy"

    def __init__(self, fpr: float = 1e-2):
        self.fpr = check_fpr(fpr)

    def select(self, X, y, split, classes=None):
        """The samples of a split this task sees (all of them); a warning when the train
        split has no sample of a named class (the anomaly task trains on some classes only:
        it is not warned, nor is loading data)."""
        if split == "train" and classes:
            seen = set(np.unique(np.asarray(y)).tolist())
            absent = [str(c) for k, c in enumerate(classes) if k not in seen]
            if absent:
                warnings.warn(f"the train split has no sample of class"
                              f"{'es' * (len(absent) > 1)} {absent[:10]}"
                              f"{' ...' if len(absent) > 10 else ''}; the classifier cannot "
                              f"learn {'them' if len(absent) > 1 else 'it'}", stacklevel=2)
        return X, y

    def loss(self, out, x, y):
        """Cross-entropy of the logits `out` against the labels `y`."""
        return F.cross_entropy(out, y)

    def scores(self, out, x):
        """Per-class scores the metrics rank: the log-odds of the softmax of `out`."""
        return log_odds(out)  # (float64; the softmax probability's ranking, never saturated)

    def check_output(self, out, x, n_classes: int, named: bool = False) -> None:
        """The model's output on x must hold one logit per class: exactly n_classes when the
        data name their classes (extra outputs would be classes no sample has), else at
        least as many as the highest label seen."""
        if out.dim() != 2 or out.shape[1] < n_classes or (named and out.shape[1] != n_classes):
            raise ValueError(f"classify task: the model gives outputs of shape "
                             f"{tuple(out.shape[1:])} per sample; the data has {n_classes} "
                             f"classes, so ({n_classes},) logits were expected")
        p = out.detach().double()
        if len(p) and bool(((p >= 0) & (p <= 1)).all()) and \
                bool(torch.allclose(p.sum(1), torch.ones(len(p), dtype=p.dtype), atol=1e-4)):
            warnings.warn("classify task: the model's outputs are probabilities (each row is "
                          ">= 0 and sums to 1: a softmax at its end?); the loss is the "
                          "cross-entropy of logits, so remove the softmax from the model "
                          "(the metrics and the export apply it themselves)", stacklevel=2)

    def metrics(self, scores: np.ndarray, y: np.ndarray, classes) -> dict[str, float]:
        """Accuracy, per-class AUC and TPR at `fpr` (and their means) of `scores`."""
        return classification_metrics(scores, y, classes, self.fpr)


class Anomaly:
    """Anomaly detection with an autoencoder trained on the `background` classes only: the
    loss is the reconstruction's mean squared error, the score of a sample its own; metrics
    per signal class: efficiency at a background efficiency of `fpr`, and AUC."""

    name = "anomaly"
    primary = "sig_eff_mean"

    def __init__(self, background=("q", "g"), fpr: float = 1e-2):
        if isinstance(background, str):
            background = [c for c in background.split(",") if c]
        self.background = tuple(background)
        self.fpr = check_fpr(fpr)

    def _bg_ids(self, classes):
        self.check_classes(classes)
        return [classes.index(c) for c in self.background]

    def check_classes(self, classes) -> None:
        """The background must be classes of the data, and leave at least one as signal."""
        classes = list(classes)
        missing = [c for c in self.background if c not in classes]
        if missing and not classes:  # ('not in []')
            raise ValueError(f"anomaly task: the data set names no classes, so the background "
                             f"{missing} cannot be picked out; give the data class names "
                             "(Dataset.from_splits(..., classes=[...]))")
        if missing:
            raise ValueError(f"anomaly task: background classes {missing} not in {classes}")
        if classes and not set(classes) - set(self.background):
            raise ValueError(f"anomaly task: the background {','.join(self.background)} takes "
                             f"every class of the data ({','.join(classes)}), leaving no signal "
                             "to detect")

    def select(self, X, y, split, classes=None):
        """Training and validation use background only; test keeps everything."""
        if split == "test" or classes is None:
            return X, y
        keep = np.isin(y, self._bg_ids(classes))
        return X[keep], y[keep]

    def loss(self, out, x, y):
        """Mean squared error of the reconstruction `out` of `x`."""
        return F.mse_loss(out, x)

    def scores(self, out, x):
        """Each sample's mean squared reconstruction error (its anomaly score)."""
        # (float64: float16's squares overflow from an error of about 300 per element)
        return ((out.double() - x.double()) ** 2).flatten(1).mean(1)

    def check_output(self, out, x, n_classes: int, named: bool = False) -> None:
        """The model must reconstruct its input (an autoencoder)."""
        if out.shape != x.shape:
            raise ValueError(f"anomaly task: the model must reconstruct its input (an "
                             f"autoencoder such as jet_autoencoder); it maps samples of shape "
                             f"{tuple(x.shape[1:])} to {tuple(out.shape[1:])}")

    def metrics(self, scores: np.ndarray, y: np.ndarray, classes) -> dict[str, float]:
        """Background loss, and per signal class the efficiency at `fpr` and the AUC."""
        bg = np.isin(y, self._bg_ids(classes))
        # (evaluate adds "loss": the reconstruction loss over every sample of the split)
        out = {"bg_loss": float(scores[bg].mean()) if bg.any() else float("nan")}
        effs = []
        for k, c in enumerate(classes):
            if c in self.background:
                continue
            sig = y == k
            if not sig.any() or not bg.any():
                continue
            sel = sig | bg
            e = tpr_at_fpr(scores[sel], sig[sel], self.fpr)
            out[f"sig_eff_{c}"] = e
            out[f"auc_{c}"] = auc(scores[sel], sig[sel])
            effs.append(e)
        if effs:
            out["sig_eff_mean"] = float(np.mean(effs))
        return out


TASKS = {"classify": Classify, "anomaly": Anomaly}


def get_task(name: str, **kw):
    """The task called `name` ('classify' or 'anomaly'), made with the keywords `kw`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected 'classify' or 'anomaly'")
    return TASKS[name](**kw)
