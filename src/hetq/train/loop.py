"""The training loop, built for tiny models.

Data stay as tensors on the device; each epoch draws one random permutation and slices
batches (no DataLoader, no per-sample Python). The loss is accumulated on the device and read
once per epoch (no `.item()` per step). Validation after every epoch drives early stopping on
the validation loss, restores the best weights at the end, and is handed to `report(epoch,
metrics)` — the hook through which a search prunes hopeless trials (it may raise).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..quant.base import check_module, eval_mode
from .tasks import Classify


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    interrupted: bool = False  # Ctrl-C ended training (fit(interruptible=True))
    seconds: float = 0.0

    def interruption_note(self) -> str:
        """What a command prints when Ctrl-C ended training ("" otherwise)."""
        if not self.interrupted:
            return ""
        return (f"interrupted after {len(self.history)} epochs: saving the best of them (epoch "
                f"{self.best_epoch})")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        d = None
    if d is None or d.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}; expected cpu, cuda, cuda:N (a GPU index), mps or "
                         "auto")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use "
                         "--device cpu (or auto)")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), 0 to {torch.cuda.device_count() - 1}")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available here; use "
                         "--device cpu (or auto)")
    return d


def as_dataset(data):
    """`data` itself, or for a data spec string such as 'jets-sim' (what `--data` takes) the
    data set `hetq.data.get_dataset` loads."""
    if isinstance(data, str):
        from ..data import get_dataset

        return get_dataset(data)
    return data


def class_names(data) -> list[str]:
    """The data's class names; for data without names ("0", "1", ...) by label, so that the
    per-class metrics (AUC, TPR at FPR) are there too (they were left out)."""
    names = list(getattr(data, "classes", None) or [])
    if names or not hasattr(data, "n_classes"):
        return names
    return [str(k) for k in range(data.n_classes)]


def _float_dtype(model) -> torch.dtype:
    """The dtype of the model's floating-point parameters (the data is given it: a float64
    model took float32 data and failed with a shape-style message), float32 if none."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


def _split_tensors(data, split, task, device, dtype=None):
    if isinstance(data, (str, torch.Tensor, np.ndarray)) or \
            not callable(getattr(data, "split", None)):  # (a tensor has a .split of its own)
        raise ValueError("data must be a hetq Dataset with train/val/test splits, e.g. "
                         "hetq.data.get_dataset('jets-sim') or Dataset.from_splits(name, "
                         f"{{'train': (X, y), 'val': ..., 'test': ...}}, features, classes); "
                         f"got {type(data).__name__}")
    X, y = data.split(split)
    X, y = task.select(X, y, split, getattr(data, "classes", None))
    X = torch.from_numpy(np.ascontiguousarray(X))
    if dtype is not None and X.is_floating_point():
        X = X.to(dtype)
    return X.to(device), torch.from_numpy(np.ascontiguousarray(y)).to(device)


def check_hyperparameters(lr: float, weight_decay: float, patience: int | None,
                          member: int | None = None) -> None:
    """ValueError for a learning rate that is not > 0 (nan included), a negative weight decay,
    or a patience below 1 epoch (0 stopped after the first epoch, however it went);
    `member`: the population member the values belong to, named in the message."""
    of = "" if member is None else f" (member {member})"
    for name, v in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"{name} must be a number, got {v!r} ({type(v).__name__}){of}")
    if patience is not None and (isinstance(patience, bool)
                                 or not isinstance(patience, numbers.Integral)):
        raise ValueError(f"patience must be a whole number of epochs (or None), got "
                         f"{patience!r}{of}")
    if not 0.0 < lr < math.inf:
        raise ValueError(f"lr must be a learning rate > 0, got {lr!r}{of}")
    if not 0.0 <= weight_decay < math.inf:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}{of}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 epoch (or None: never stop early), got "
                         f"{patience!r}{of}")


def plain_number(v):
    """A numpy scalar or a one-element tensor as the Python number it holds; anything else
    as it is (for the checks, which take Python numbers)."""
    if isinstance(v, np.generic) or (isinstance(v, torch.Tensor) and v.dim() == 0):
        return v.item()
    return v


def check_seed(seed) -> None:
    """ValueError unless `seed` is a whole number from 0 to 2**63 - 1 (torch's generators
    take that; a larger one failed inside torch with 'Overflow when unpacking long long')."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or \
            not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")


def check_counts(**counts) -> None:
    """ValueError unless each of `counts` (epochs=..., batch_size=...) is a whole number
    >= 1."""
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name} must be a whole number, got {v!r} ({type(v).__name__})")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


def check_model_fits(model, X: torch.Tensor, task, data) -> None:
    """Run two samples through `model`: a model that cannot take `data`'s samples, or whose
    output does not suit `task`, is a ValueError naming both (instead of a shape error from
    inside torch in the first training step)."""
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(X[:2])
    except RuntimeError as e:
        raise ValueError(f"the model does not take the samples of {data.name} (shape "
                         f"{tuple(X.shape[1:])}): {str(e).splitlines()[0]}") from None
    task.check_output(out, X[:2], data.n_classes, bool(getattr(data, "classes", None)))
    if hasattr(task, "check_classes"):
        task.check_classes(getattr(data, "classes", None) or [])


def _train_val_tensors(data, task, device, dtype=None):
    """(Xtr, ytr, Xva, yva) on `device` (inputs of `dtype`); an empty training split is an
    error."""
    Xtr, ytr = _split_tensors(data, "train", task, device, dtype)
    Xva, yva = _split_tensors(data, "val", task, device, dtype)
    if Xtr.shape[0] == 0:
        raise ValueError("the training split is empty")
    return Xtr, ytr, Xva, yva


@torch.no_grad()
def predict_scores(model, X: torch.Tensor, task, batch_size: int = 8192):
    """Scores of `model` on X (eval mode), in batches, as float64; a ValueError if the model
    gives NaN for some samples (they have no rank: every metric of them would be noise)."""
    outs = []
    with eval_mode(model):
        for i in range(0, X.shape[0], batch_size):
            xb = X[i:i + batch_size]
            outs.append(task.scores(model(xb), xb).double().cpu())
    s = torch.cat(outs).numpy() if outs else np.zeros((0,))
    bad = np.isnan(s).reshape(len(s), -1).any(axis=1) if s.size else np.zeros(0, bool)
    if bad.any():
        raise ValueError(f"the model gives NaN outputs for {int(bad.sum())} of {len(s)} "
                         f"samples (the first: sample {int(np.flatnonzero(bad)[0])}); its "
                         "metrics would be meaningless (a diverged training, or NaN inputs)")
    return s


@torch.no_grad()
def _val_loss(model, X, y, task, batch_size=8192):
    total = torch.zeros((), device=X.device)
    for i in range(0, X.shape[0], batch_size):
        xb, yb = X[i:i + batch_size], y[i:i + batch_size]
        total += task.loss(model(xb), xb, yb) * xb.shape[0]
    return float(total) / max(1, X.shape[0])


def evaluate(model, data, split: str = "test", task=None, device=None,
             batch_size: int = 8192) -> dict[str, float]:
    """Metrics of `model` on a split of `data` (a hetq Dataset or a data spec string such as
    'jets-sim'): the task's metrics plus `loss`. device: where to run (the model is moved
    there); None: where the model is (it used to be "cpu", which moved a GPU model off its
    GPU as a side effect)."""
    check_module(model, "evaluate", values=True)
    check_counts(batch_size=batch_size)
    data = as_dataset(data)
    task = task or Classify()
    if device is None:
        first = next(model.parameters(), None)
        dev = first.device if first is not None else torch.device("cpu")
    else:
        dev = resolve_device(device)
        model = model.to(dev)
    X, y = _split_tensors(data, split, task, dev, _float_dtype(model))
    check_model_fits(model, X, task, data)
    return evaluate_tensors(model, X, y, task, data, batch_size)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each training batch; a last batch of one sample joins the one before
    (batch norm cannot train on one sample: torch's refuses it, and its variance is 0)."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def fit(model: torch.nn.Module, data, *, epochs: int = 30, batch_size: int = 1024,
        lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0,
        schedule: str = "cosine", patience: int | None = None, seed: int = 0,
        device="cpu", task=None, progress: bool = True, report=None, pruner=None,
        restore_best: bool = True, interruptible: bool = False) -> TrainResult:
    """Train `model` in place on `data` (a hetq Dataset, or a data spec string such as
    'jets-sim'); returns the history.

    Args:
        model: any nn.Module (float or hetq-quantized), trained on `device`; it is left in
            eval mode, with the best validation epoch's weights when `restore_best`.
        data: a `hetq.data.Dataset` (train/val/test splits) or a `--data` spec string; the
            inputs come in the dtype of the model's parameters.
        epochs: full passes over the training split (an integer >= 1).
        batch_size: samples per optimiser step (the batches are in-memory slices).
        lr: the learning rate (1e-3 here, the usual Adam rate for fine-tuning; `hetq train`
            uses 3e-3 by default, for training from scratch).
        device: "cpu", "cuda", "cuda:N" or "mps"; the model is moved there.
        task: `hetq.train.Classify()` (default: cross-entropy; accuracy, AUC, TPR@FPR) or
            `hetq.train.Anomaly(background=...)` (an autoencoder's reconstruction).
        progress: a progress bar per epoch (a plain line every 30 s in a log).
        optimizer: "adam" or "adamw". schedule: "cosine" (per epoch) or "none".
        patience: stop after this many epochs without a better validation loss (None: never).
        seed: fixes the batch order (model initialisation is the caller's: seed before build).
        report: called as report(epoch, val_metrics) after each epoch; may raise to stop.
        pruner: an object with attach(optimizer) / on_epoch_end(epoch) / detach() (sparsity).
        interruptible: Ctrl-C after the first finished epoch ends training like early stopping
            (the best epoch's weights restored, `interrupted` set) instead of raising, so a
            command can still save what was trained. Off for callers that must stop (a search
            trial must not complete half-trained).
    """
    check_module(model, "fit", values=True)
    # numpy and 0-d tensor scalars as numbers (np.int64(1) passed the seed's check and failed
    # inside torch; torch.tensor(1e-3) was 'lr must be a number', as fit_population takes it)
    epochs, batch_size, lr, weight_decay, patience, seed = map(
        plain_number, (epochs, batch_size, lr, weight_decay, patience, seed))
    check_counts(epochs=epochs, batch_size=batch_size)
    check_seed(seed)
    check_hyperparameters(lr, weight_decay, patience)
    data = as_dataset(data)
    task = task or Classify()
    dev = resolve_device(device)
    model.to(dev)
    dtype = _float_dtype(model)
    if dtype == torch.float16:
        raise ValueError("fit: the model is float16, whose range and precision are too small "
                         "for training without loss scaling (it diverged after the first "
                         "step, whatever the learning rate); train it in float32 (or "
                         "bfloat16) and convert afterwards: model.float()")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"fit: the {type(model).__name__} has no trainable parameters (all "
                         "have requires_grad=False); unfreeze some, or evaluate it instead")
    Xtr, ytr, Xva, yva = _train_val_tensors(data, task, dev, dtype)
    check_model_fits(model, Xtr, task, data)
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer {optimizer!r}; expected 'adam' or 'adamw'")
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    elif schedule == "none":
        sched = None
    else:
        raise ValueError(f"schedule {schedule!r}; expected 'cosine' or 'none'")
    if pruner is not None:
        pruner.attach(opt)
    gen = torch.Generator().manual_seed(seed)
    rng = contextlib.ExitStack()  # (closed in the finally below)
    rng.enter_context(seeded(seed, dev))
    res = TrainResult()
    best_state = None
    bar = None
    if progress:
        from hetq.progress import bar as progress_bar

        bar = progress_bar(total=epochs, desc="training", unit="epoch", leave=False)
    t0 = time.perf_counter()
    n = Xtr.shape[0]
    try:
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=gen).to(dev)
            total = torch.zeros((), device=dev)
            for i, j in batch_bounds(n, batch_size):
                idx = perm[i:j]
                xb, yb = Xtr[idx], ytr[idx]
                loss = task.loss(model(xb), xb, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * xb.shape[0]
            if sched is not None:
                sched.step()
            if pruner is not None:
                pruner.on_epoch_end(epoch)
            train_loss = float(total) / n
            if not math.isfinite(train_loss):  # (before validation: it refuses NaN outputs)
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss "
                                         f"{train_loss}); lower the learning rate")
            try:
                val = evaluate_tensors(model, Xva, yva, task, data)
            except ValueError as e:  # NaN outputs on the validation data only
                raise FloatingPointError(f"training diverged at epoch {epoch} ({e}); lower "
                                         "the learning rate") from None
            row = {"epoch": epoch, "loss": train_loss, **{f"val_{k}": v for k, v in val.items()}}
            res.history.append(row)
            if val["loss"] < res.best_val_loss:
                res.best_val_loss, res.best_epoch = val["loss"], epoch
                if restore_best:
                    best_state = copy.deepcopy(model.state_dict())
            if bar is not None:
                bar.set_postfix(loss=f"{train_loss:.4f}", val_loss=f"{val['loss']:.4f}",
                                **({task.primary: f"{val[task.primary]:.4f}"}
                                   if task.primary in val else {}))
                bar.update(1)
            if report is not None:
                report(epoch, val)
            if patience is not None and epoch - res.best_epoch >= patience:
                res.stopped_early = True
                break
    except KeyboardInterrupt:
        if not interruptible or not res.history:
            raise
        res.interrupted = True
    finally:
        rng.close()
        if bar is not None:
            bar.close()
        if pruner is not None:
            pruner.detach()
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
        if pruner is not None:
            pruner.apply()
    res.seconds = time.perf_counter() - t0
    model.eval()
    return res


@contextlib.contextmanager
def seeded(seed: int, device):
    """The global random generators seeded with `seed` inside the block (stochastic
    quantizers draw from them), and given back as they were after it: fit used to leave them
    reseeded, so every model built after a fit with the default seed started the same."""
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def keeps_global_rng(fn):
    """`fn` (a search, a gradient training) seeds torch's global CPU generator for its own
    work; its caller gets the generator back as it was (every model built after one used to
    start from the same weights)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)

    return wrapper


def evaluate_tensors(model, X, y, task, data, batch_size: int = 8192) -> dict[str, float]:
    """Metrics and loss in eval mode (the loss in train mode, as fit's validation had it, ran
    dropout and moved batch-norm statistics with the validation data)."""
    with eval_mode(model):
        scores = predict_scores(model, X, task, batch_size)
        m = task.metrics(scores, y.cpu().numpy(), class_names(data))
        m["loss"] = _val_loss(model, X, y, task, batch_size)
    return m
