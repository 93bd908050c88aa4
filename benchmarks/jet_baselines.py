"""Float and Q6 jet taggers vs scikit-learn references on the same test split (simulated
jets).

Acceptance: float within 1 point of the scikit-learn MLP / gradient boosting references
(trained here on train+val, as in the data README, with their own early-stopping split; the
hetq models train on train and pick their best epoch on val), Q6 within 0.5 points of
float. Prints accuracy and TPR at FPR = 1e-2 per class.

    python benchmarks/jet_baselines.py [--epochs 60]
"""

import argparse
import time

import numpy as np
import torch

from common import jets
from hetq.models import build, preset
from hetq.quant.convert import quantize_model
from hetq.train import evaluate, fit
from hetq.train.metrics import classification_metrics


def sklearn_refs(d):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier

    X = np.r_[d.X_train, d.X_val]
    y = np.r_[d.y_train, d.y_val]
    out = {}
    mlp = MLPClassifier((64, 32, 32), batch_size=512, early_stopping=True, random_state=0,
                        max_iter=200)
    hgb = HistGradientBoostingClassifier(max_iter=300, early_stopping=True, random_state=0)
    for name, clf in (("sklearn MLP 16-64-32-32-5", mlp), ("sklearn HistGradientBoosting", hgb)):
        t = time.time()
        clf.fit(X, y)
        out[name] = (classification_metrics(clf.predict_proba(d.X_test), d.y_test, d.classes),
                     time.time() - t)
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--q6-epochs", type=int, default=30)
    a = p.parse_args(argv)
    d = jets()
    print(d)
    results = sklearn_refs(d)
    torch.manual_seed(0)
    f = build("jet_mlp")
    t = time.time()
    fit(f, d, epochs=a.epochs, batch_size=256, lr=2e-3, progress=False)
    results["hetq float"] = (evaluate(f, d), time.time() - t)
    q = quantize_model(f, preset("q6"))  # warm start from the float weights
    t = time.time()
    fit(q, d, epochs=a.q6_epochs, batch_size=256, lr=1e-3, progress=False)
    results["hetq Q6 (QAT)"] = (evaluate(q, d), time.time() - t)
    tk = "tpr@fpr=0.01"
    print(f"{'model':<30} {'accuracy':>8} " + " ".join(f"{tk + '_' + c:>16}" for c in d.classes)
          + f" {'time s':>7}")
    for name, (m, sec) in results.items():
        print(f"{name:<30} {m['accuracy']:8.4f} "
              + " ".join(f"{m[f'{tk}_{c}']:16.4f}" for c in d.classes) + f" {sec:7.1f}")
    best_ref = max(v[0]["accuracy"] for k, v in results.items() if k.startswith("sklearn"))
    fa, qa = results["hetq float"][0]["accuracy"], results["hetq Q6 (QAT)"][0]["accuracy"]
    gap, loss = 100 * (fa - best_ref), 100 * (qa - fa)
    print(f"float - best sklearn reference: {gap:+.2f} points (target: at most 1 below: "
          f"{'met' if gap >= -1 else 'NOT met'})")
    print(f"Q6 - float: {loss:+.2f} points (target: at most 0.5 below: "
          f"{'met' if loss >= -0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
