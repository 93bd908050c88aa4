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

import inspect
from pathlib import Path

from .dataset import Dataset, validate_arrays
from .jets import load_jets, load_jets_sim
from .other import load_digits, make_synthetic

SPECS = ("jets-sim", "jets-sim:PATH", "jets", "jets:PATH", "digits",
         "synthetic[:n=N,features=F,classes=C,seed=S]")


def get_dataset(spec: str, *, progress: bool = True, **kw) -> Dataset:
    """See `_get_dataset`; the data set also records `spec` (a path made absolute), which
    checkpoints keep, so that `hetq evaluate` and the like default to the same data."""
    ds = _get_dataset(spec, progress=progress, **kw)
    name, colon, arg = spec.partition(":")
    name = name.strip().lower()
    if name in ("jets-sim", "jets") and arg:
        arg = str(Path(arg).expanduser().resolve())
    ds.spec = name + colon + arg
    return ds


def _get_dataset(spec: str, *, progress: bool = True, **kw) -> Dataset:
    """The data set named by `spec`, one of `SPECS`: 'jets-sim' (the built-in simulated
    jets sample) or 'jets-sim:PATH' (a simulated jets .npz), 'jets' (the real jets,
    downloaded once and cached) or 'jets:PATH' (a local copy), 'digits', or
    'synthetic[:n=N,features=F,classes=C,seed=S]'. Split into train/val/test and
    standardised with the train split's mean and std (digits: not by default; `standardize=`
    chooses); `progress` shows the download of 'jets'; other keywords go to the loader, e.g.
    `get_dataset('jets', cache='/data/hetq-cache')` (see `load_jets`)."""
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
        return _load(load_jets_sim, name, arg or None, **kw)
    if name == "jets":
        if not arg:  # (only a download has progress to show)
            kw["progress"] = progress
        return _load(load_jets, name, arg or None, **kw)
    if name == "digits" and not colon:
        return _load(load_digits, name, **kw)
    if name == "synthetic":
        opts = _synthetic_options(spec, arg)
        try:
            return _load(make_synthetic, name, **opts, **kw)
        except MemoryError:
            raise ValueError(f"{spec!r} does not fit in memory; ask for fewer samples (n=) or "
                             "features") from None
    hint = ""
    if Path(spec).is_file():
        hint = (f"; {spec} is a file: give jets-sim:{spec} (a simulated jets .npz) or "
                f"jets:{spec} (the real jets dataset)")
    raise ValueError(f"unknown dataset {spec!r}; expected one of: {', '.join(SPECS)}{hint}")


def _load(loader, name: str, *args, **kw) -> Dataset:
    """`loader(*args, **kw)`, a keyword it does not take named with the ones it does."""
    params = inspect.signature(loader).parameters
    wrong = [k for k in kw if k not in params]
    if wrong:
        takes = [k for k in params if k not in ("source", "path")]
        raise ValueError(f"the {name!r} data set does not take {', '.join(wrong)}; it takes "
                         f"{', '.join(takes) or 'no options'}")
    return loader(*args, **kw)


def _synthetic_options(spec: str, arg: str) -> dict:
    keys = {"n": "n", "features": "n_features", "classes": "n_classes", "seed": "seed"}
    opts = {}
    for part in filter(None, arg.split(",")):
        k, _, v = (t.strip() for t in part.partition("="))
        try:
            if k not in keys or not v.isascii():
                raise ValueError
            value = int(v)
        except ValueError:
            raise ValueError(f"bad synthetic option {part!r} in {spec!r}; expected n=, "
                             "features=, classes=, seed= with integers") from None
        if keys[k] in opts:
            raise ValueError(f"{k}= is given twice in {spec!r}")
        opts[keys[k]] = value
    n, f = opts.get("n", 6000), opts.get("n_features", 16)  # (make_synthetic's defaults)
    if n > 0 and f > 0 and n * f * 8 > _memory_bytes() / 4:  # (features=1e8: killed for memory)
        raise ValueError(f"{spec!r} does not fit in memory ({n} x {f} values, "
                         f"{n * f * 8 / 2**30:.1f} GiB while it is made); ask for fewer "
                         "samples (n=) or features")
    return opts


def _memory_bytes() -> float:
    """This machine's memory (inf where unknown)."""
    import os

    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def get_dataset_for(spec: str | None, norm: dict | None,
                    label: str = "the checkpoint") -> Dataset:
    """`get_dataset(spec)` standardised as a checkpoint's training data were (`norm`, the
    checkpoint's "normalization"), not with the train split of `spec`: a model evaluated on
    another file of the same features sees the inputs it was trained for. Checks that the
    features and classes are the same (`Dataset.as_trained`)."""
    if spec is None:  # the data the checkpoint was trained on (older ones: jets-sim)
        spec = (norm or {}).get("spec") or "jets-sim"
    if not norm:
        return get_dataset(spec)
    return get_dataset(spec, standardize=False).as_trained(norm, label)


__all__ = ["Dataset", "SPECS", "get_dataset", "get_dataset_for", "load_digits", "load_jets",
           "load_jets_sim", "make_synthetic", "validate_arrays"]
