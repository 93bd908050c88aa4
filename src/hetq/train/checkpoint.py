"""Checkpoints: one file with everything needed to use a trained model without the code that
trained it — architecture (registry name + arguments, width multipliers), quantization config,
weights, data normalisation, task and metrics. `load(path)` rebuilds the model."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import torch_save_whole

FORMAT = "hetq-checkpoint-1"


def save(path: str | Path, model: nn.Module, *, model_name: str, model_kwargs: dict | None = None,
         quant_config: Any = "auto", widths: dict | None = None, data=None,
         metrics: dict | None = None, task: str = "classify", fold_batchnorm: bool = False,
         extra: dict | None = None, overwrite: bool = True) -> Path:
    """Write a checkpoint of `model` to `path` atomically (temporary file, then rename); `load`
    rebuilds it. Returns the path.

    Args:
        model_name: the zoo name that builds the architecture (`hetq.models.build`, e.g.
            "jet_mlp"); for a model of your own class use `save_module`.
        model_kwargs: the keywords that name needs (e.g. {"widths": [32, 16]}).
        quant_config: the model's quantization config ("auto": read from its layers; None:
            float).
        widths: width multipliers the model was resized with (a search trial's).
        data: the Dataset it was trained on: its standardisation (mean/std) is stored, so that
            `hetq evaluate` and export standardise new data the same way.
        metrics: any JSON-able metrics to keep with it (e.g. {"test": evaluate(...)}).
        task: "classify" or "anomaly". fold_batchnorm: the model was quantized with
            quantize_model(..., fold_batchnorm=True) (load rebuilds it so).
        extra: more JSON-able entries for the checkpoint dict.
        overwrite: False: a file at `path` is not replaced, also one another process wrote
            while this one trained; the model then goes to a free name beside it (`path`
            with -2, -3, ...; a warning says which) and that path is returned.
    """
    from .. import __version__
    from ..quant.base import check_module
    from ..quant.convert import QuantConfig, get_quantization_config

    check_module(model, "save", values=True)
    _check_extras(data, task)
    if quant_config == "auto":
        qc = get_quantization_config(model).to_dict()
    elif quant_config is None:
        qc = None
    else:
        qc = quant_config.to_dict() if isinstance(quant_config, QuantConfig) else \
            QuantConfig(quant_config).to_dict()
    ckpt = {
        "format": FORMAT, "hetq_version": __version__,
        "model": model_name, "model_kwargs": dict(model_kwargs or {}),
        "widths": dict(widths or {}), "quant_config": qc or None,
        "fold_batchnorm": fold_batchnorm,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "normalization": data.normalization() if data is not None else None,
        "task": task, "metrics": metrics or {}, **(extra or {}),
    }
    _check_rebuilds(ckpt, model)
    return _write(path, ckpt, overwrite)


def _check_extras(data, task) -> None:
    """ValueError unless `data` is None or a Dataset (its normalisation is stored) and `task`
    a task name `load` knows (a misspelt one was stored, and evaluating failed later)."""
    if data is not None and not callable(getattr(data, "normalization", None)):
        raise ValueError(f"data must be the hetq Dataset the model was trained on (its "
                         f"standardisation is stored) or None, got {type(data).__name__}")
    from .tasks import TASKS

    if task not in TASKS:
        raise ValueError(f"task={task!r}; expected 'classify' or 'anomaly'")


def load_problem(e: Exception) -> str:
    """The line of an error that says what went wrong: for `load_state_dict`'s ("Error(s) in
    loading state_dict for ...:" and then the problem), the line naming the tensors."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1:
        return lines[1]
    return lines[0]


def _check_rebuilds(ckpt: dict, model: nn.Module) -> None:
    """A checkpoint that `load` could not turn back into `model` is refused before it is
    written: e.g. a model built by hand (nn.Sequential) saved as model_name='jet_mlp' saved
    without a word, and loading it then failed on tensor names."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (a config key matching no layer: not the point)
            _build(ckpt)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        why = load_problem(e)
        why = why if len(why) <= 160 else why[:157] + "..."
        raise ValueError(
            f"model_name={ckpt['model']!r} with model_kwargs {ckpt['model_kwargs']} does not "
            f"rebuild this {type(model).__name__} ({why}); "
            "save a model that hetq.models.build(model_name, **model_kwargs) makes, or any "
            "other module with hetq.train.checkpoint.save_module") from None


def check_new(path: str | Path, *, overwrite: bool = False, option: str = "--out",
              hint: str = "--overwrite") -> Path:
    """Before any work, that a checkpoint can be written at `path`: not a folder, and not an
    existing file unless `overwrite` (so a second run does not silently replace the first
    one's model after its training); `option` and `hint` name the options in the message."""
    from ..cli import check_output

    path = Path(path)
    check_output(path, option)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists (from an earlier run); give another {option}, "
                         f"or {hint} to replace it")
    return path


def in_folder(out: str | Path, name: str) -> Path:
    """`out`, or `out/name` where `out` names a folder: an existing one, or a new one given
    with a trailing slash (`--out new/` wrote a file named new)."""
    folder = Path(out).is_dir() or str(out).endswith(("/", os.sep))
    return Path(out) / name if folder else Path(out)


def _write(path: str | Path, ckpt: dict, overwrite: bool = True) -> Path:
    """Atomic write (`torch_save_whole`), its folder made first; overwrite=False: to the first
    free name of `path`, `path` with -2, -3, ... (see `save`)."""
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        to = path if k == 1 else path.with_name(f"{path.stem}-{k}{path.suffix}")
        try:
            torch_save_whole(ckpt, to, replace=overwrite)
        except FileExistsError:
            continue
        if to != path:  # (two runs given one --out: the first one's model stays)
            warnings.warn(f"{path} was written by another run while this one worked; this "
                          f"model is saved as {to}", stacklevel=3)
        return to
    raise FileExistsError(f"{path} and 998 names like it already exist")


def save_module(path: str | Path, model: nn.Module, *, data=None, metrics: dict | None = None,
                task: str = "classify", extra: dict | None = None) -> Path:
    """Checkpoint of a model that no registry name rebuilds (e.g. per-weight bit-widths from
    the gradient strategy): the module itself is stored (pickled; load only trusted files)."""
    from .. import __version__
    from ..quant.base import check_module

    check_module(model, "save_module", values=True)
    _check_extras(data, task)
    ckpt = {"format": FORMAT, "hetq_version": __version__, "model": None, "module": model,
            "normalization": data.normalization() if data is not None else None,
            "task": task, "metrics": metrics or {}, **(extra or {})}
    return _write(path, ckpt)


def read(path: str | Path) -> dict:
    """A checkpoint's contents; `path` may also be the folder `hetq train` wrote
    (FOLDER/model.pt is read)."""
    path = Path(path)
    if not path.exists():
        from ..models import MODELS

        hint = (f" ({path.name} is a zoo model: give it as --model {path.name})"
                if str(path).strip().lower() in MODELS else "")
        raise FileNotFoundError(f"checkpoint not found: {path}{hint}")
    if path.is_dir():
        if (path / "model.pt").is_file():
            path = path / "model.pt"
        else:
            from ..search.results import gradient_run_error, is_gradient_run

            if is_gradient_run(path):  # (its float.pt was suggested: the float reference)
                raise gradient_run_error(path)
            found = sorted(p.name for p in path.glob("*.pt"))
            raise ValueError(f"{path} is a folder without a model.pt; expected a checkpoint "
                             "file" + (f", e.g. one of {', '.join(found[:5])}"
                                       + (", ..." if len(found) > 5 else "") if found else ""))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except AttributeError as e:  # a pickled module whose class this program does not define
        found = re.search(r"attribute '([^']+)' on <module '([^']+)'", str(e))
        if not found:
            raise ValueError(f"{path} is not a readable hetq checkpoint ({e})") from None
        raise ValueError(
            f"{path} stores a model of class {found[1]} from module {found[2]}, which this "
            "program does not define; define or import that class (for a script's own class: "
            "in __main__) before loading, or save the weights instead (model.state_dict() and "
            "hetq.quant.convert.get_quantization_config(model)) and rebuild the model from them"
        ) from None
    except Exception as e:  # (the first line: torch's pickle errors run to several)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable hetq checkpoint ({why})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a hetq checkpoint (format {FORMAT} expected)")
    return ckpt


def build_from(ckpt: dict, path: str | Path | None = None) -> nn.Module:
    """The model of a checkpoint read by `read`; ValueError (naming `path` where given) when
    its entries or weights do not make one."""
    where = f"{path}: " if path is not None else ""
    if ckpt.get("module") is not None:
        return ckpt["module"].eval()
    missing = [k for k in ("model", "model_kwargs", "state_dict") if k not in ckpt]
    if missing:
        raise ValueError(f"{where}the checkpoint lacks its {', '.join(map(repr, missing))} "
                         "entries (and stores no module); it was not written by hetq's save")
    try:
        return _build(ckpt)
    except RuntimeError as e:  # load_state_dict: missing, unexpected or mis-shaped tensors
        raise ValueError(f"{where}the checkpoint's weights do not fit its model "
                         f"{ckpt['model']!r} ({load_problem(e)})") from None


def _build(ckpt: dict) -> nn.Module:
    from ..models import build, resize_model
    from ..quant.convert import quantize_model

    model = build(ckpt["model"], **ckpt["model_kwargs"])
    if ckpt.get("widths"):
        model = resize_model(model, ckpt["widths"])
    if ckpt.get("quant_config"):
        import warnings

        with warnings.catch_warnings():
            # a config key that matches no layer (q6's 'ReLU' on cnn_digits, whose activations
            # are quantized as built) was said when the model was trained, not on every load
            warnings.filterwarnings("ignore", message="quantization config key ")
            model = quantize_model(model, ckpt["quant_config"],
                                   fold_batchnorm=ckpt.get("fold_batchnorm", False))
    # the parameters' own float type (a float64 model came back float32, 3.7e-8 apart)
    params = dict(model.named_parameters())
    kinds = {v.dtype for k, v in ckpt["state_dict"].items()
             if k in params and v.is_floating_point()}
    if len(kinds) == 1 and (kind := kinds.pop()) != next(iter(params.values())).dtype:
        model = model.to(kind)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load(path: str | Path) -> nn.Module:
    """The model stored in a checkpoint, in eval mode."""
    return build_from(read(path), path)
