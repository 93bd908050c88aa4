"""hetq: heterogeneously quantized neural networks for ultra-low-latency inference on FPGAs.

The main verbs are here, imported on first use (so `import hetq` stays instant):

    import hetq
    model = hetq.quantize_model(hetq.build("jet_mlp"), hetq.preset("q6"))
    hetq.fit(model, hetq.get_dataset("jets-sim"), epochs=20)
    print(hetq.cost.cost(model).table())       # hetq.cost is the cost-model package

and the sub-packages: `hetq.quant`, `hetq.cost`, `hetq.train`, `hetq.search`, `hetq.export`,
`hetq.data`, `hetq.models`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module it lives in
_API = {
    "get_quantizer": "hetq.quant",
    "quantize_model": "hetq.quant.convert",
    "summary": "hetq.quant.summary",
    "build": "hetq.models",
    "preset": "hetq.models",
    "get_dataset": "hetq.data",
    "fit": "hetq.train",
    "evaluate": "hetq.train",
    "save": "hetq.train",
    "SearchConfig": "hetq.search.config",
    "run_search": "hetq.search.driver",
    "load_run": "hetq.search.driver",
    "pareto_rows": "hetq.search.driver",
    "trial_model": "hetq.search.driver",
    "IntegerModel": "hetq.export",
}
_PACKAGES = ("quant", "cost", "train", "search", "export", "data", "models")

__all__ = ["load", *_API]


def load(path):
    """Load a hetq checkpoint (see `hetq.train.checkpoint`) as a ready model in eval mode."""
    from .train.checkpoint import load as _load

    return _load(path)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in _PACKAGES:
        return importlib.import_module(f"hetq.{name}")
    raise AttributeError(f"module 'hetq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *_PACKAGES])
