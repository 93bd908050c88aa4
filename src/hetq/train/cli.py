"""`hetq train`, `hetq evaluate`, `hetq ptq`."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import warnings
from pathlib import Path

from ..cli import (
    check_output,
    describe,
    interrupts_save,
    name_type,
    positive_float,
    positive_int,
    quantize_zoo_model,
    saved_after_interruption,
    seed_int,
)


def _common(p, checkpoint: bool = False):
    if checkpoint:  # (evaluate, ptq: the data the checkpoint was trained on)
        p.add_argument("--data", default=None, help="jets-sim | jets-sim:PATH | jets | "
                       "jets:PATH | digits | synthetic (see hetq.data; default: the data the "
                       "checkpoint was trained on)")
    else:
        p.add_argument("--data", default=None, help="jets-sim | jets-sim:PATH | jets | "
                       "jets:PATH | digits | synthetic (see hetq.data; default jets-sim, "
                       "digits for --model cnn_digits)")
    p.add_argument("--device", default="cpu",
                   help="cpu | cuda | cuda:N | mps | auto (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a float or quantized model (QAT)",
                       **describe("Train a model from the zoo with a quantization preset or "
                                  "config; writes OUT/model.pt, OUT/metrics.json and, for "
                                  "classification, OUT/roc.png.",
                                  "hetq train --model jet_mlp --preset q6 --data jets-sim "
                                  "--epochs 30 --out runs/q6"))
    t.add_argument("--model", type=name_type, default=None,
                   help="zoo model: jet_mlp | jet_autoencoder | cnn_digits (with --data digits) "
                        "(default jet_mlp; with --task anomaly jet_autoencoder)")
    t.add_argument("--model-widths", type=positive_int, nargs="+", default=None, metavar="N",
                   help="hidden layer widths of jet_mlp (default 64 32 32) or jet_autoencoder "
                        "(default 32 8 32)")
    t.add_argument("--preset", type=name_type, default=None,
                   help="float | bf | q6 (jet_mlp presets; default: none, a float model unless "
                        "--config)")
    t.add_argument("--config", default=None, help="quantization config (.yaml/.json)")
    t.add_argument("--task", default="classify", choices=["classify", "anomaly"],
                   help="classify: cross-entropy on the labels; anomaly: an autoencoder "
                        "trained on the --background classes (default %(default)s)")
    t.add_argument("--background", default=None,
                   help="anomaly task: the background classes, separated by commas (default "
                        "q,g); the others are the signals")
    t.add_argument("--epochs", type=positive_int, default=30,
                   help="training epochs (default %(default)s)")
    t.add_argument("--batch-size", type=positive_int, default=1024, help="default %(default)s")
    t.add_argument("--lr", type=positive_float, default=3e-3,
                   help="Adam learning rate, cosine schedule (default %(default)s)")
    t.add_argument("--patience", type=positive_int, default=None,
                   help="stop after this many epochs without a better validation loss "
                        "(default: never; the best epoch's weights are kept either way)")
    t.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the initial weights and the batch order (default %(default)s)")
    t.add_argument("--init", default=None, help="start from this checkpoint's float weights")
    t.add_argument("--out", default="runs/train",
                   help="folder for model.pt, metrics.json and roc.png (default %(default)s); "
                        "one that already holds a model.pt is refused before training")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the model.pt (and metrics, ROC plot) already in --out")
    _common(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a dataset split",
                       **describe("Print a checkpoint's metrics (accuracy, AUC and TPR at fixed "
                                  "FPR per class) on one split of a data set.",
                                  "hetq evaluate runs/train --split val"))
    e.add_argument("checkpoint", help="a hetq checkpoint (model.pt, or its folder)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="default %(default)s")
    _common(e, checkpoint=True)
    e.set_defaults(func=_evaluate)

    q = sub.add_parser("ptq", help="post-training fixed-point quantization of a float model",
                       **describe("Quantize a float checkpoint without training: every type "
                                  "--bits wide, integer bits from the ranges seen on "
                                  "--calibration training samples. Prints the test metrics and "
                                  "writes the quantized checkpoint.",
                                  "hetq ptq runs/train --bits 8"))
    q.add_argument("checkpoint", help="a float hetq checkpoint (model.pt, or its folder)")
    q.add_argument("--bits", type=int, default=8,
                   help="total width (2 to 32) of every weight, bias and activation type, integer "
                        "bits from the calibration ranges (default %(default)s)")
    q.add_argument("--calibration", type=positive_int, default=10000,
                   help="calibration samples (default %(default)s)")
    q.add_argument("--out", default=None,
                   help="checkpoint to write, or a folder to write ptqBITS.pt into (default: "
                        "ptqBITS.pt next to the input); an existing checkpoint is refused "
                        "before any work")
    q.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    _common(q, checkpoint=True)
    q.set_defaults(func=_ptq)


def _task(args, ckpt: dict | None = None):
    """The task of `hetq train` (--task, --background), or of a checkpoint (what it was
    trained for, with its background classes)."""
    from .tasks import get_task

    name = ckpt.get("task") if ckpt else args.task
    background = getattr(args, "background", None)
    if name != "anomaly":
        if background is not None:
            raise ValueError(f"--background {background} is for --task anomaly (the classes "
                             "an autoencoder is trained on); leave it out for classify")
        return get_task(name or "classify")
    if ckpt:
        background = ",".join(ckpt.get("background") or ("q", "g"))
    background = ("q,g" if background is None else background).split(",")
    if not all(c.strip() for c in background):
        raise ValueError(f"--background {','.join(background)!r}: expected class names "
                         "separated by commas, e.g. q,g")
    names = [c.strip() for c in background]
    if len(set(names)) != len(names):
        twice = sorted({c for c in names if names.count(c) > 1})
        raise ValueError(f"--background {','.join(background)!r}: {', '.join(twice)} given "
                         "twice")
    return get_task("anomaly", background=tuple(names))


def _task_extra(task) -> dict | None:
    """What a checkpoint keeps of its task beyond the name: an anomaly task's background
    (read back by `_task`)."""
    return {"background": list(task.background)} if task.name == "anomaly" else None


def _train(a) -> int:
    from ..files import folder_lock

    if a.model is None:  # (the anomaly task needs a model that reconstructs its input)
        a.model = "jet_autoencoder" if a.task == "anomaly" else "jet_mlp"
    if a.data is None:
        from ..models import default_data

        a.data = default_data(a.model)

    check_output(a.out, "--out", folder=True)
    # one `hetq train` per --out at a time (a second one, started meanwhile, passed the
    # "already holds a model.pt" check, and the later model replaced the first unsaid)
    with folder_lock(a.out):
        return _train_locked(a)


def _train_locked(a) -> int:
    import torch

    from ..data import get_dataset
    from ..models import build, data_kwargs, widths_kwargs
    from ..quant.layers import QLayer
    from .checkpoint import check_new, save
    from .loop import check_model_fits, evaluate, fit, resolve_device
    from .report import metrics_table

    if a.preset and a.config:  # before the data are loaded
        raise ValueError("give either --preset or --config, not both")
    task = _task(a)
    resolve_device(a.device)  # a bad or missing device: said before the data are loaded
    out = Path(a.out)  # (checked by `_train` before the lock, and before a download)
    check_new(out / "model.pt", overwrite=a.overwrite)
    data = get_dataset(a.data, progress=not a.no_progress)
    kwargs = {**data_kwargs(a.model, data), **widths_kwargs(a.model, a.model_widths)}
    torch.manual_seed(a.seed)
    model = build(a.model, **kwargs)
    if a.init:
        _init_weights(model, a.init)
    model, qc = quantize_zoo_model(model, a.model, a.preset, a.config)
    check_model_fits(model, data.tensors("train")[0][:2], task, data)
    kind = ("quantization " + (a.preset or a.config) if qc else
            "as built (its own quantizers)" if any(isinstance(m, QLayer) for m in model.modules())
            else "float")
    print(f"{a.model} on {data!r}, {kind}")
    # Ctrl-C, or SIGTERM (kill, a batch system's time limit): the best epoch so far is saved,
    # and a second one cannot cut the saving short (it left a stale roc.png beside the
    # new model)
    with interrupts_save((signal.SIGINT, signal.SIGTERM)) as guard:
        res = fit(model, data, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                  patience=a.patience, device=a.device, task=task, progress=not a.no_progress,
                  interruptible=True)
        guard.hold()  # the model is saved whatever comes now (SIGKILL aside)
        if res.interrupted:
            print(res.interruption_note())
            saved_after_interruption()
        model.cpu()
        metrics = evaluate(model, data, "test", task)
        out.mkdir(parents=True, exist_ok=True)
        save(out / "model.pt", model, model_name=a.model, model_kwargs=kwargs, data=data,
             metrics={"test": metrics, "history": res.history}, task=task.name,
             # cnn_digits is quantized as built: its checkpoint records only what
             # --preset / --config changed (None: the model as built)
             quant_config="auto" if a.model != "cnn_digits" else qc,
             extra=_task_extra(task))
        from ..files import write_whole

        text = json.dumps({"test": metrics, "history": res.history,
                           "interrupted": res.interrupted},  # (the best epochs' of those run)
                          indent=1)
        write_whole(out / "metrics.json", lambda tmp: tmp.write_text(text))
        n = len(res.history)
        print(f"trained {n} epoch{'' if n == 1 else 's'} in {res.seconds:.1f} s (best epoch "
              f"{res.best_epoch})")
        print(metrics_table(metrics, data.classes, task.name))
        if task.name == "classify":
            try:
                _roc(model, data, task, out / "roc.png")
            except OSError as e:  # (it ended the command with an error, as if nothing was saved)
                from ..cli import path_problem

                # (--overwrite: an earlier model's curves would pass for this one's)
                with contextlib.suppress(OSError):
                    (out / "roc.png").unlink(missing_ok=True)
                warnings.warn(f"the ROC plot was not written ({path_problem(e)}); the model "
                              "and its metrics are saved", stacklevel=1)
        else:  # (--overwrite: an earlier classifier's curves would pass for this model's)
            (out / "roc.png").unlink(missing_ok=True)
    print(f"checkpoint: {out / 'model.pt'}")
    return 0


def _init_weights(model, path) -> None:
    """`--init`: the weights of checkpoint `path` (float or quantized; its quantizer state is
    not used) into the float `model`; a checkpoint of another architecture is an error."""
    from .checkpoint import build_from, load_problem, read

    ckpt = read(path)
    state = ckpt.get("state_dict")
    if state is None:  # a stored module (e.g. a gradient-strategy point)
        state = build_from(ckpt, path).state_dict()
    try:
        res = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise ValueError(f"--init {path}: its weights do not fit this model "
                         f"({load_problem(e)})") from None
    if res.missing_keys:
        raise ValueError(f"--init {path}: the checkpoint lacks {len(res.missing_keys)} of the "
                         f"model's tensors (e.g. {', '.join(res.missing_keys[:3])}); it holds "
                         "another architecture")


def _roc(model, data, task, path):
    import torch

    from .loop import predict_scores
    from .report import plot_roc

    X, y = data.tensors("test")
    scores = predict_scores(model, X, task)
    plot_roc(scores, y.numpy(), data.classes, path)
    del torch


def _evaluate(a) -> int:
    from ..data import get_dataset_for
    from .checkpoint import build_from, read
    from .loop import evaluate
    from .report import metrics_table

    ckpt = read(a.checkpoint)
    model = build_from(ckpt, a.checkpoint)
    data = get_dataset_for(a.data, ckpt.get("normalization"), str(a.checkpoint))
    task = _task(a, ckpt)
    m = evaluate(model, data, a.split, task, a.device)
    spec = a.data or getattr(data, "spec", None) or ""  # (the checkpoint's data file was
    where = f" ({spec.split(':', 1)[1]})" if ":" in spec else ""  # not named)
    print(f"{a.checkpoint} on {data.name}{where} ({a.split} split)")
    print(metrics_table(m, data.classes, task.name))
    return 0


def _ptq(a) -> int:
    from ..data import get_dataset_for
    from ..quant.convert import quantize_model
    from ..quant.layers import QLayer
    from .checkpoint import build_from, check_new, in_folder, read, save
    from .loop import _split_tensors, check_model_fits, evaluate, resolve_device
    from .ptq import ptq_config
    from .report import metrics_table

    resolve_device(a.device)  # (it evaluates there; calibration runs on the CPU)
    src, name = Path(a.checkpoint), f"ptq{a.bits}.pt"
    out = a.out or (src / name if src.is_dir() else src.with_name(name))
    ckpt = read(a.checkpoint)  # (first: `ptq metrics.json` said 'ptq8.pt already exists')
    out = check_new(in_folder(out, name), overwrite=a.overwrite)
    source = src / "model.pt" if src.is_dir() else src
    if Path(out).resolve() == source.resolve():  # (--overwrite replaced the float model,
        # and its folder's metrics.json then described the quantized one)
        raise ValueError(f"--out {out} is the float checkpoint being quantized; give another "
                         "file")
    model = build_from(ckpt, a.checkpoint)
    if ckpt.get("quant_config") or any(isinstance(m, QLayer) for m in model.modules()):
        raise ValueError(f"{a.checkpoint} is already quantized; PTQ starts from a float model")
    if ckpt.get("model") is None:  # a stored module that no zoo name rebuilds
        raise ValueError(f"{a.checkpoint} holds a model that is not in the zoo; PTQ needs a "
                         "float checkpoint from `hetq train` (or hetq.train.save)")
    data = get_dataset_for(a.data, ckpt.get("normalization"), str(a.checkpoint))
    task = _task(a, ckpt)
    # what the model trained on: an autoencoder's background (the signal jets were in the
    # calibration, and the 'all the train split has' note was measured against them too)
    X, _ = (data.tensors("train") if task.name == "classify" else
            _split_tensors(data, "train", task, "cpu"))
    check_model_fits(model, X[:2], task, data)  # before calibrating on data it cannot take
    cfg = ptq_config(model, X[:a.calibration], a.bits)
    qmodel = quantize_model(model, cfg).eval()
    m = evaluate(qmodel, data, "test", task, a.device)
    used = min(a.calibration, len(X))
    print(f"PTQ {a.bits} bits of {a.checkpoint} (calibrated on {used} training "
          f"sample{'s' * (used != 1)}"
          + (", all the train split has" if used < a.calibration else "") + "):")
    print(metrics_table(m, data.classes, task.name))
    out = save(out, qmodel, model_name=ckpt["model"], model_kwargs=ckpt["model_kwargs"],
               quant_config=cfg, data=data, metrics={"test": m}, task=task.name,
               extra=_task_extra(task), overwrite=a.overwrite)
    print(f"checkpoint: {out}")
    return 0
