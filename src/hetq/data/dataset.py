"""`Dataset`: in-memory splits with their normalisation, and input validation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

SPLITS = ("train", "val", "test")


def validate_arrays(X, y, n_classes: int | None = None, name: str = "data",
                    n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check features/labels and return them as float32 / int64 arrays.

    Raises ValueError naming the problem: wrong shape, NaN/inf (how many, first positions),
    labels that are not integers in 0..n_classes-1, or X/y length mismatch.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim < 2:
        raise ValueError(f"{name}: features must have shape (n_samples, n_features, ...), "
                         f"got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name}: expected {n_features} features per sample, got shape "
                         f"{X.shape}")
    if y.ndim != 1:
        raise ValueError(f"{name}: labels must have shape (n_samples,), got shape {y.shape}")
    if len(X) != len(y):
        raise ValueError(f"{name}: {len(X)} samples but {len(y)} labels")
    if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):  # (complex: cast to
        raise ValueError(f"{name}: features must be real numbers, got dtype {X.dtype}")  # real)
    if X.shape[1] == 0:  # (it blamed the model: 'n_in=0; every width must be ...')
        raise ValueError(f"{name}: samples of shape {X.shape[1:]} have no features")
    bad = ~np.isfinite(X)
    if bad.any():
        pos = np.argwhere(bad)[:5].tolist()
        raise ValueError(f"{name}: {int(bad.sum())} NaN/inf feature values, first at "
                         f"(row, column) {', '.join(str(tuple(p[:2])) for p in pos)}")
    with np.errstate(over="ignore"):  # (float64 values beyond float32's range became inf)
        X32 = X.astype(np.float32)
    big = ~np.isfinite(X32)
    if big.any():
        pos = np.argwhere(big)[:5].tolist()
        raise ValueError(f"{name}: {int(big.sum())} feature values beyond float32's range "
                         f"(about 3.4e38), first at (row, column) "
                         f"{', '.join(str(tuple(p[:2])) for p in pos)}; rescale them")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{name}: labels must be integers, got non-integer values "
                             f"{np.unique(y[~np.isfinite(y) | (y != np.round(y))])[:5].tolist()}")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"{name}: labels must be integers, got dtype {y.dtype}")
    if y.dtype.kind == "f" and y.size and float(np.abs(y).max()) >= 2 ** 62:
        raise ValueError(f"{name}: labels must be class indices, got {float(np.abs(y).max())}")
    y = y.astype(np.int64)
    if (y < 0).any():  # (a negative label failed inside torch, 'Target -1 is out of bounds')
        raise ValueError(f"{name}: labels must be class indices >= 0, found "
                         f"{sorted(set(y[y < 0].tolist()))[:10]}")
    if n_classes is not None:
        bad_y = (y < 0) | (y >= n_classes)
        if bad_y.any():
            raise ValueError(f"{name}: labels must be in 0..{n_classes - 1}, found "
                             f"{sorted(set(y[bad_y].tolist()))[:10]}")
    return X32, y


def _standardized(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """X standardised in float64 with float32 `mean` and `std`, as float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        return ((X.astype(np.float64) - mean) / std).astype(np.float32)


def _check_classes(name: str, classes, arrays: dict):
    """The class names, checked: at least 2 classes, no two named alike nor 'mean' (the
    per-class metrics are keyed by name: one overwrote the other, or the mean)."""
    n = len(classes) if classes else int(max(a[1].max() for a in arrays.values())) + 1
    if n < 2:
        raise ValueError(f"{name}: {n} class ({list(classes or [0])}); a classifier needs at "
                         "least 2")
    if classes:
        names = [str(c) for c in classes]
        twice = sorted({c for c in names if names.count(c) > 1})
        if twice or "mean" in names:
            raise ValueError(f"{name}: class names {names}: "
                             + (f"{twice} given twice" if twice else "'mean' is taken by the "
                                "metrics' average over the classes")
                             + "; give each class its own name")
    return classes


@dataclass
class Dataset:
    """Train/val/test splits in memory, standardised with statistics of the train split."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    features: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def from_splits(cls, name, splits: dict, features=None, classes=None,
                    standardize=True) -> Dataset:
        """`splits`: {"train": (X, y), "val": (X, y), "test": (X, y)}; `features` and
        `classes`: their names (optional; the number of classes is then the largest label
        + 1). Standardised with the train split's mean and std unless standardize=False."""
        n_classes = len(classes) if classes else None
        missing = [s for s in SPLITS if s not in (splits or {})]
        if not isinstance(splits, dict) or missing:
            raise ValueError(f"{name}: splits must be a dict with the keys {list(SPLITS)}, each "
                             f"an (X, y) pair; missing {missing}")
        arrays = {}
        for s in SPLITS:
            try:
                X, y = splits[s]
            except (TypeError, ValueError):
                raise ValueError(f"{name}: splits[{s!r}] must be an (X, y) pair") from None
            arrays[s] = validate_arrays(X, y, n_classes, f"{name} ({s} split)")
            if s != "train" and arrays[s][0].shape[1:] != arrays["train"][0].shape[1:]:
                raise ValueError(f"{name} ({s} split): samples of shape "
                                 f"{arrays[s][0].shape[1:]}; the train split's are "
                                 f"{arrays['train'][0].shape[1:]}")
        if n_classes is None and len(arrays["train"][1]):  # (labels only val or test have
            top = {s: int(a[1].max()) for s, a in arrays.items() if len(a[1])}  # failed in torch)
            if top["train"] < max(top.values()):
                s = max(top, key=top.get)
                raise ValueError(f"{name}: the {s} split has label {top[s]}, which the "
                                 f"train split never has (its labels go to "
                                 f"{top['train']}); give the classes "
                                 "(classes=[...]) or train on every class")
        if features and len(features) != arrays["train"][0].shape[1]:
            raise ValueError(f"{name}: {len(features)} feature names for "
                             f"{arrays['train'][0].shape[1]} features per sample")
        empty = [s for s in SPLITS if len(arrays[s][1]) == 0]
        if empty:
            sizes = ", ".join(f"{s} {len(arrays[s][1])}" for s in SPLITS)
            raise ValueError(f"{name}: the {' and '.join(empty)} split{'s' * (len(empty) > 1)} "
                             f"{'have' if len(empty) > 1 else 'has'} no samples ({sizes}); "
                             "training, validation and test each need some")
        classes = _check_classes(name, classes, arrays)
        mean = std = None
        if standardize:
            Xtr = arrays["train"][0]
            axes = tuple(i for i in range(Xtr.ndim) if i != 1)
            # in float64 (float32's sum of squares overflowed from ~1e18 and underflowed
            # below ~1e-20: every value became 0, or stayed unscaled, without a word)
            with np.errstate(over="ignore", invalid="ignore"):  # (checked below)
                X64 = Xtr.astype(np.float64)
                mean = X64.mean(axis=axes, keepdims=True)[0].astype(np.float32)
                std = X64.std(axis=axes, keepdims=True)[0]
                std = np.where(std > 0, std, 1.0).astype(np.float32)
                del X64
                arrays = {s: (_standardized(X, mean, std), y) for s, (X, y) in arrays.items()}
            for s, (X, _) in arrays.items():
                bad = ~np.isfinite(X)
                if bad.any():  # finite values beyond float32's range once summed (1e37 ...)
                    cols = sorted(set(np.argwhere(bad)[:, 1].tolist()))[:5]
                    top = float(np.abs(Xtr[:, cols] if Xtr.ndim == 2 else Xtr).max())
                    raise ValueError(f"{name} ({s} split): feature columns {cols} do not "
                                     "standardise in float32 (values up to "
                                     f"{top:.3g} in the train split overflow its mean or "
                                     "spread); rescale them")
        return cls(name, *arrays["train"], *arrays["val"], *arrays["test"],
                   list(features or []), list(classes or []), mean, std)

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) arrays of the split `which`: "train", "val" or "test"."""
        if which not in SPLITS:
            raise ValueError(f"split {which!r}; expected one of {SPLITS}")
        return getattr(self, f"X_{which}"), getattr(self, f"y_{which}")

    def tensors(self, which: str, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(X, y) of the split `which` as tensors on `device`."""
        X, y = self.split(which)
        return torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.X_train.shape[1:]))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.y_train.max()) + 1

    def normalization(self) -> dict:
        """The standardisation applied to the features ({"mean": [...], "std": [...]}, None
        where there is none), as a checkpoint stores it."""
        return {"mean": None if self.mean is None else self.mean.tolist(),
                "std": None if self.std is None else self.std.tolist(),
                "features": self.features, "classes": self.classes, "name": self.name,
                "spec": getattr(self, "spec", None)}

    def as_trained(self, norm: dict | None, label: str = "the checkpoint") -> Dataset:
        """This data standardised as the model's training data were (`norm`: a checkpoint's
        "normalization", from `normalization()`), so that a model is evaluated on the inputs it
        was trained for, whatever this data's own train split holds. Exact (the same values
        as in training) for data loaded with standardize=False, as `get_dataset_for` does
        (for checkpoints of hetq before 3267035, which standardised in float32, within an
        ulp).
        The features and classes must be the training data's (when both have names);
        `label` names the checkpoint in the messages."""
        if not norm:
            return self
        for what, theirs, ours in (("features", norm.get("features"), self.features),
                                   ("classes", norm.get("classes"), self.classes)):
            if theirs and ours and list(theirs) != list(ours):
                # (this data's first, as the sentence names it first)
                diff = next((f"{b!r} where it had {a!r}, at position {i}" for i, (a, b) in
                             enumerate(zip(theirs, ours)) if a != b),
                            f"{len(ours)} where it had {len(theirs)}")
                raise ValueError(f"{self.name} has other {what} than the data {label} was "
                                 f"trained on ({norm.get('name', '?')}): {diff}")
        mean = None if norm.get("mean") is None else np.asarray(norm["mean"], np.float32)
        std = None if norm.get("std") is None else np.asarray(norm["std"], np.float32)
        if mean is not None and (mean.ndim != len(self.input_shape)
                                 or mean.shape[0] != self.input_shape[0]):
            raise ValueError(f"{label} was trained on {mean.shape[0]} features (or channels) "
                             f"per sample; {self.name} has samples of shape {self.input_shape}")
        same = (mean is None and self.mean is None) or (
            mean is not None and self.mean is not None and np.array_equal(mean, self.mean)
            and np.array_equal(std, self.std))
        if same:
            return self

        def restandardize(X):  # on unstandardised data, the same arithmetic as from_splits
            raw = X if self.mean is None else X.astype(np.float64) * self.std + self.mean
            return raw.astype(np.float32) if mean is None else _standardized(raw, mean, std)

        arrays = [a for s in SPLITS for a in (restandardize(self.split(s)[0]),
                                               self.split(s)[1])]
        out = Dataset(self.name, *arrays, list(self.features), list(self.classes), mean, std)
        if hasattr(self, "spec"):  # (a ptq checkpoint recorded none: its evaluate and export
            out.spec = self.spec   # took the built-in jets-sim)
        return out

    def __repr__(self) -> str:
        classes = (repr(self.classes) if len(self.classes) <= 20 else  # (1,000 names: a page)
                   f"[{', '.join(map(repr, self.classes[:10]))}, ... {len(self.classes)} in all]")
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
                f"test={len(self.y_test)}, input={self.input_shape}, classes={classes})")
