"""Datasets: the real hls4ml jets (download/cache/checksum/parse), the simulated jets
(embedded sample), scikit-learn's digits, and synthetic data.

`get_dataset(spec)` understands the CLI's `--data` strings:
    jets-sim                  the sample shipped with hetq (25,000 simulated jets)
    jets-sim:/path/file.npz   a full jets_sim.npz
    jets                      the real dataset (downloaded once from OpenML)
    jets:/path/to/file        the real dataset from a local ARFF/CSV/parquet/HDF5 file
    digits                    scikit-learn's 8x8 digits, (N, 1, 8, 8)
    synthetic[:n=...,features=...,classes=...,seed=...]
"""

from __future__ import annotations

from pathlib import Path

from .dataset import Dataset, validate_arrays
from .jets import load_jets, load_jets_sim
from .other import load_digits, make_synthetic

SPECS = ("jets-sim", "jets-sim:PATH", "jets", "jets:PATH", "digits",
         "synthetic[:n=N,features=F,classes=C,seed=S]")


def get_dataset(spec: str, **kw) -> Dataset:
    """The data set named by `spec`, one of `SPECS`: 'jets-sim' (the built-in simulated
    jets sample) or 'jets-sim:PATH' (a simulated jets .npz), 'jets' (the real jets,
    downloaded once and cached) or 'jets:PATH' (a local copy), 'digits', or
    'synthetic[:n=N,features=F,classes=C,seed=S]'. Split into train/val/test and
    standardised with the train split's mean and std (digits: not by default; `standardize=`
    chooses); other keywords go to the loader, e.g. `get_dataset('jets', cache_dir=...)`."""
    if not isinstance(spec, str):
        raise ValueError(f"a data set is named by a string such as {SPECS[0]!r}; got "
                         f"{type(spec).__name__}")
    name, colon, arg = spec.partition(":")
    name = name.strip().lower()  # (the path after ':' is kept as written)
    if name in ("jets-sim", "jets") and colon and not arg.strip():  # e.g. jets-sim:$UNSET
        whole = "the built-in sample" if name == "jets-sim" else "the dataset downloaded once"
        raise ValueError(f"{spec!r} has no path after the colon; give {name}:PATH for a file, "
                         f"or {name} alone for {whole}")
    if name == "jets-sim":
        return load_jets_sim(arg or None, **kw)
    if name == "jets":
        return load_jets(arg or None, **kw)
    if name == "digits" and not arg:
        return load_digits(**kw)
    if name == "synthetic":
        opts = {}
        keys = {"n": "n", "features": "n_features", "classes": "n_classes", "seed": "seed"}
        for part in filter(None, arg.split(",")):
            k, _, v = part.partition("=")
            if k not in keys or not v.lstrip("-").isdigit():
                raise ValueError(f"bad synthetic option {part!r} in {spec!r}; expected "
                                 "n=, features=, classes=, seed= with integers")
            opts[keys[k]] = int(v)
        return make_synthetic(**opts, **kw)
    hint = ""
    if Path(spec).is_file():
        hint = (f"; {spec} is a file: give jets-sim:{spec} (a simulated jets .npz) or "
                f"jets:{spec} (the real jets dataset)")
    raise ValueError(f"unknown dataset {spec!r}; expected one of: {', '.join(SPECS)}{hint}")


def get_dataset_for(spec: str, norm: dict | None, label: str = "the checkpoint") -> Dataset:
    """`get_dataset(spec)` standardised as a checkpoint's training data were (`norm`, the
    checkpoint's "normalization"), not with the train split of `spec`: a model evaluated on
    another file of the same features sees the inputs it was trained for. Checks that the
    features and classes are the same (`Dataset.as_trained`)."""
    if not norm:
        return get_dataset(spec)
    return get_dataset(spec, standardize=False).as_trained(norm, label)


__all__ = ["Dataset", "SPECS", "get_dataset", "get_dataset_for", "load_digits", "load_jets",
           "load_jets_sim", "make_synthetic", "validate_arrays"]
