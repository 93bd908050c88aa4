"""`hetq retrain`: fine-tune a trial's trained model (it starts from the trial's weights)."""

from __future__ import annotations

import copy
import signal
from pathlib import Path

from .results import load_run, study_trial, study_trial_model, trial_number
from .sparsity import MagnitudePruner


def retrain(run, number: int | str, epochs: int = 100, lr: float | None = None, out=None,
            storage=None, progress: bool = True, overwrite: bool = False) -> Path:
    """Fine-tune trial `number` (or "best": the single best trial) of search run `run` for
    `epochs` (the best validation epoch is kept) and save it to `out` (default
    RUN/retrain_NNNNN.pt); an existing checkpoint there is refused before any training unless
    `overwrite`. Returns the path written."""
    from ..cli import interrupts_save, saved_after_interruption
    from ..data import get_dataset
    from ..train import evaluate, fit
    from ..train.checkpoint import check_new, in_folder, save
    from ..train.report import metrics_table
    from .driver import model_kwargs
    from .space import Candidate

    config, study = load_run(run, storage)
    number = trial_number(study, number, run)
    model = study_trial_model(run, config, study, number)  # (refuses a trial not there)
    name = f"retrain_{number:05d}.pt"
    path = check_new(in_folder(out, name) if out else Path(run) / name, overwrite=overwrite)
    t = study_trial(study, number)
    cand = Candidate.from_dict(t.user_attrs["candidate"])
    data = get_dataset(config.data, progress=progress)
    before = evaluate(model, data, device="cpu")
    start = {"val": evaluate(model, data, split="val", device="cpu"),
             "state": copy.deepcopy(model.state_dict())}
    # the trial's pruned weights stay zero (they grew back, and the model cost more)
    pruner = MagnitudePruner.keeping(model, cand.sparsity) if cand.sparsity else None
    # Ctrl-C, or SIGTERM (kill, a batch system's time limit): the best epoch so far is saved,
    # and a second one cannot cut the saving short (it left a stale roc.png beside the
    # new model)
    with interrupts_save((signal.SIGINT, signal.SIGTERM)) as guard:
        res = fit(model, data, epochs=epochs, lr=lr or config.lr / 3, batch_size=config.batch_size,
                  seed=config.seed, device=config.device, progress=progress, interruptible=True,
                  pruner=pruner)
        guard.hold()  # the model is saved whatever comes now (SIGKILL aside)
        if res.interrupted:
            print(res.interruption_note())
            saved_after_interruption()
        val = evaluate(model.cpu(), data, split="val", device="cpu")
        if val["loss"] > start["val"]["loss"]:  # the trial's own weights were the best epoch
            model.load_state_dict(start["state"])
            print(f"no retrained epoch beat the trial's validation loss "
                  f"({start['val']['loss']:.5f}; best {val['loss']:.5f}): the trial's weights "
                  "are kept")
        after = evaluate(model, data, device="cpu")
        path = save(path, model, model_name=config.model,
                    model_kwargs=model_kwargs(config, data), quant_config=cand.quant_config,
                    widths=cand.widths, data=data, metrics={"test": after, "before": before},
                    overwrite=overwrite)
    print(f"trial {number}: test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}")
    print(metrics_table(after, data.classes))
    print(f"checkpoint: {path}")
    return path
