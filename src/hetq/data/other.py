"""Small datasets for examples and tests: scikit-learn's 8x8 digits and a synthetic problem."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset


def _split3(n, seed, val=0.15, test=0.15):
    perm = np.random.default_rng(seed).permutation(n)
    n_te, n_va = int(round(test * n)), int(round(val * n))
    return perm[n_te + n_va:], perm[n_te:n_te + n_va], perm[:n_te]


def load_digits(standardize: bool = False, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits as (N, 1, 8, 8) images in [0, 1], 10 classes."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise ValueError("the digits dataset needs scikit-learn: pip install scikit-learn") \
            from None
    d = sk_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    tr, va, te = _split3(len(y), seed)
    return Dataset.from_splits("digits", {"train": (X[tr], y[tr]), "val": (X[va], y[va]),
                                          "test": (X[te], y[te])}, [],
                               [str(i) for i in range(10)], standardize)


def make_synthetic(n: int = 6000, n_features: int = 16, n_classes: int = 5, seed: int = 0,
                   noise: float = 1.0, standardize: bool = True) -> Dataset:
    """A learnable Gaussian-mixture classification problem (deterministic given `seed`):
    each class has two random centres in feature space; samples = centre + noise * N(0, 1)."""
    if n < 3 * n_classes or n_features < 1 or n_classes < 2 or seed < 0:
        raise ValueError(f"synthetic data needs n >= 3*classes, features >= 1, classes >= 2, "
                         f"seed >= 0; got n={n}, features={n_features}, classes={n_classes}, "
                         f"seed={seed}")
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, size=(n_classes, 2, n_features))
    y = rng.integers(0, n_classes, size=n)
    which = rng.integers(0, 2, size=n)
    X = (centres[y, which] + noise * rng.normal(size=(n, n_features))).astype(np.float32)
    tr, va, te = _split3(n, seed + 1)
    return Dataset.from_splits("synthetic", {"train": (X[tr], y[tr]), "val": (X[va], y[va]),
                                             "test": (X[te], y[te])},
                               [f"x{i}" for i in range(n_features)],
                               [str(i) for i in range(n_classes)], standardize)
