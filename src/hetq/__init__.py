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
    "load_run": "hetq.search.results",
    "pareto_rows": "hetq.search.results",
    "trial_model": "hetq.search.results",
    "IntegerModel": "hetq.export",
}
_PACKAGES = ("quant", "cost", "train", "search", "export", "data", "models")

__all__ = ["load", *_API]


def load(path):
    """Load a hetq checkpoint (see `hetq.train.checkpoint`) as a ready model in eval mode."""
    from .train.checkpoint import load as _load

    return _load(path)


def _lazy_names(package: str, namespace: dict, api: dict[str, str],
               subpackages: tuple[str, ...] = ()):
    """A package's module-level `__getattr__` and `__dir__` (PEP 562) that import each name
    of `api` (name -> the module holding it) and each of `subpackages` on first use."""
    def getattr_(name: str):
        if name in api:
            return getattr(importlib.import_module(api[name]), name)
        if name in subpackages:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted({*namespace, *api, *subpackages})

    return getattr_, dir_


__getattr__, __dir__ = _lazy_names("hetq", globals(), _API, _PACKAGES)
