"""`hetq retrain`: fine-tune a trial's trained model (it starts from the trial's weights)."""

from __future__ import annotations

from pathlib import Path

from .driver import load_run, trial_model


def retrain(run, number: int, epochs: int = 100, lr: float | None = None, out=None,
            storage=None, progress: bool = True) -> Path:
    from ..data import get_dataset
    from ..train import evaluate, fit
    from ..train.checkpoint import save
    from ..train.report import metrics_table
    from .space import Candidate

    config, study = load_run(run, storage)
    if number < 0 or number >= len(study.trials):
        raise ValueError(f"trial {number} does not exist (the study has {len(study.trials)})")
    t = study.trials[number]
    model = trial_model(run, number, storage)
    data = get_dataset(config.data)
    before = evaluate(model, data)
    res = fit(model, data, epochs=epochs, lr=lr or config.lr / 3, batch_size=config.batch_size,
              seed=config.seed, device=config.device, progress=progress, interruptible=True)
    if res.interrupted:
        print(res.interruption_note())
    after = evaluate(model, data)
    cand = Candidate.from_dict(t.user_attrs["candidate"])
    path = Path(out) if out else Path(run) / f"retrain_{number:05d}.pt"
    save(path, model, model_name=config.model, model_kwargs=config.model_kwargs,
         quant_config=cand.quant_config, widths=cand.widths, data=data,
         metrics={"test": after, "before": before})
    print(f"trial {number}: test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}")
    print(metrics_table(after, data.classes))
    print(f"checkpoint: {path}")
    return path
