"""`hetq search --strategy gradient`: float model, training runs, the front as hetq
checkpoints under <out>/gradient/, and its table. While the runs train, their fronts so far
are saved under <out>/gradient.progress/ (removed once the front is saved); after a kill,
the same command saves those as the front instead of training."""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ...cli import interrupts_save, saved_after_interruption
from ...train.loop import keeps_global_rng
from .convert import to_hetq_model
from .model import check_mlp
from .runs import read_front_dir, train_gradient_runs
from .training import FrontPoint

PROGRESS = "gradient.progress"  # <out>/gradient.progress: the fronts saved during training


@dataclass
class GradientRow:
    point: FrontPoint
    test_accuracy: float
    ebops: int
    energy_pj: float
    lut: float
    path: str
    settings: dict | None = None  # the run's (`run_settings`); None in older point files


RUN_SETTINGS = ("beta0", "beta1", "ebops_target", "granularity", "activation_granularity",
                "gradient_runs")


def run_settings(config) -> dict:
    """The settings of the run that trained a front point, saved with it: the report
    described the points by search.yaml, which a later run (killed before it saved a point)
    had rewritten."""
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in ((k, getattr(config, k)) for k in RUN_SETTINGS)}


def saved_gradient_rows(out) -> list[GradientRow]:
    """The front of a finished gradient-strategy run, read back from its point files
    (`<out>/gradient/point_NNN.pt`), cheapest first."""
    from ...files import lock_holder
    from ...train.checkpoint import read

    busy = lock_holder(out)  # (a live run's saved progress was taken for a killed one's)
    running = f"; the run in {out} is still training ({busy})" if busy else ""
    rows = []
    def number(path):  # (by number: point_1000 after point_999, not after point_100)
        n = path.stem.removeprefix("point_")
        return (0, int(n)) if n.isdigit() else (1, path.name)

    for path in sorted((Path(out) / "gradient").glob("point_*.pt"), key=number):
        m = read(path).get("metrics") or {}
        try:
            p = FrontPoint(m["epoch"], m["beta"], m["val_accuracy"], m["ebops"],
                           polished=m["polished"])
            rows.append(GradientRow(p, m["test"]["accuracy"], m["ebops"],
                                    m["costs"]["energy_pj"], m["costs"]["lut"], str(path),
                                    m.get("settings")))
        except (KeyError, TypeError) as e:  # (another checkpoint copied there: a traceback)
            what = f"have no {e}" if isinstance(e, KeyError) else "are of another form"
            raise ValueError(f"{path} is not a gradient-strategy front point (its metrics "
                             f"{what}); move it out of {path.parent}") from None
    if rows and busy:
        import warnings

        warnings.warn(f"these are the earlier run's points{running}", stacklevel=2)
    elif rows and any((Path(out) / PROGRESS).glob("*.pt")):
        import warnings

        warnings.warn(f"{Path(out) / PROGRESS} holds the front of a later run that ended "
                      "without saving it (killed?); these are the earlier run's points. Run "
                      "the same `hetq search` command again to save that front", stacklevel=2)
    if not rows:
        if busy:
            raise ValueError(f"{out} has no front points yet{running}")
        if any((Path(out) / PROGRESS).glob("*.pt")):
            raise ValueError(f"{out} is a gradient-strategy run that ended without saving its "
                             f"front (killed?); run the same `hetq search` command again to "
                             f"save the front it had reached (kept in {Path(out) / PROGRESS})")
        raise ValueError(f"{out} is a gradient-strategy run without front points yet (no "
                         f"{Path(out) / 'gradient' / 'point_NNN.pt'}); run it to the end first")
    return rows


def _teacher(config, out, data, progress: bool) -> nn.Module:
    """The float teacher of a distilled gradient search: `config.model` with hidden widths
    `config.teacher_widths`, trained like the float reference and saved as
    <out>/teacher.pt, which a rerun in that folder reuses."""
    from ...models import data_kwargs
    from ...train.checkpoint import load, read
    from ..driver import model_kwargs, train_float_model

    path = out / "teacher.pt"
    kwargs = {**model_kwargs(config, data), "widths": list(config.teacher_widths)}
    if path.exists():
        ckpt = read(path)
        saved = {**data_kwargs(config.model, data), **(ckpt.get("model_kwargs") or {})}
        if (ckpt.get("model"), saved) != (config.model, kwargs):
            raise ValueError(f"{path} is a teacher {ckpt.get('model')!r} with "
                             f"{ckpt.get('model_kwargs')!r}, now {config.model!r} with "
                             f"{kwargs!r}; use another --out")
        return load(path)
    teacher, metrics = train_float_model(config, data, path, kwargs, "the float teacher",
                                         progress)
    if progress:
        print(f"teacher {'-'.join(map(str, config.teacher_widths))}: validation accuracy "
              f"{metrics.get('accuracy', float('nan')):.4f}")
    return teacher


@keeps_global_rng
def run_gradient_strategy(config, out, progress: bool = True,
                          time_budget: float | None = None) -> list[GradientRow]:
    """Float model (trained or reused from the run folder), one HGQ-style training, then each
    Pareto point as an ordinary hetq model: test accuracy, cost, checkpoint under
    <out>/gradient/. Prints the front table. One at a time per folder: a second one started
    meanwhile is refused (it took the first one's live front as a killed run's, and the two
    replaced each other's points)."""
    from ...files import folder_lock

    with folder_lock(out):
        return _run_gradient_strategy(config, out, progress, time_budget)


def _run_gradient_strategy(config, out, progress, time_budget) -> list[GradientRow]:
    from ...models import build
    from ..driver import OtherSettings, folder_changes, start_run

    out = Path(out)
    changed = folder_changes(config, out, skip=())
    if "strategy" in changed:  # its study and trials would stay, under a gradient search.yaml
        raise ValueError(f"{out} holds a search with --strategy {changed['strategy'][0]}; use "
                         "another --out for the gradient strategy")
    running = out / PROGRESS  # the fronts saved while training (removed once saved below)
    if changed and any(running.glob("*.pt")):  # (its search.yaml would describe others)
        raise OtherSettings(f"{out} holds the front of a run that was killed before it saved "
                            "it, with other settings ({settings}); run the same command as "
                            f"then to save that front, or remove {running} to train anew "
                            "without it", changed)
    check_mlp(build(config.model, **config.model_kwargs))  # (before the float training)
    out.mkdir(parents=True, exist_ok=True)  # (after the checks: a refusal left it empty)
    # the float model saved there is reused: it must be the same model on the same data,
    # trained as long (a changed --float-epochs was ignored, and search.yaml then said it)
    # (its seed, learning rate and batch size, too: `train_float_model`)
    changed = {k: v for k, v in changed.items()
               if k in ("model", "model_kwargs", "data", "float_epochs", "seed", "lr",
                        "batch_size")}
    if changed and (out / "float.pt").exists():
        raise OtherSettings(f"{out} holds a float model for other settings ({{settings}}); "
                            "use another --out", changed)
    ctx = start_run(config, out, progress)
    try:
        recovered = read_front_dir(running, ctx.float_model, ctx.data.tensors("train")[0])
    except ValueError as e:
        raise ValueError(f"{e}; remove {running} to train anew without the points saved "
                         "there") from None
    if recovered is not None:  # an earlier run here was killed before it saved its front
        rows, earlier = _save_front(*recovered, ctx, config, out, merge=True)
        shutil.rmtree(running, ignore_errors=True)
        print(f"{out}: the last run here ended without saving its front (killed?); saved "
              f"the {_points(len(recovered[1]))} its training had reached to "
              f"{out / 'gradient'}"
              + (f", merged with the {_points(earlier)} there: {_points(len(rows))} on the "
                 "front" if earlier else "")
              + ". Run the same command again to train anew (that replaces them).")
        saved_after_interruption()  # (not a finished search: exit status 130)
        if progress:
            print(format_gradient_table(rows))
        return rows
    teacher = _teacher(config, out, ctx.data, progress) if config.teacher_widths else None
    earlier = _front_size(out / "gradient")
    if earlier and progress:  # (a finished rerun replaced it without a word)
        print(f"note: {out / 'gradient'} holds a front of {_points(earlier)}; this run "
              "replaces it when it finishes (if it is interrupted, the points of both that "
              "no other beats are kept)", flush=True)
    t0 = time.time()
    budget = time_budget if time_budget is not None else config.time_budget
    target = tuple(config.ebops_target) if config.ebops_target else None
    # Ctrl-C, or SIGTERM (kill, a batch system's time limit): the front reached is saved,
    # and a second one cannot cut the saving short (it left a stale roc.png beside the
    # new model)
    with interrupts_save((signal.SIGINT, signal.SIGTERM)) as guard:
        g, res = train_gradient_runs(
            ctx.float_model, ctx.data, runs=config.gradient_runs, epochs=config.epochs,
            batch_size=config.batch_size, lr=config.lr, beta0=config.beta0, beta1=config.beta1,
            bits_lr=config.bits_lr, seed=config.seed, time_budget=budget, target=target,
            polish_epochs=config.polish_epochs, compile=config.gradient_compile,
            stop_below=config.stop_below, input_quantile=config.input_quantile,
            act_quantile=config.act_quantile, learn_integer=config.learn_integer,
            teacher=teacher, distill=config.distill, granularity=config.granularity,
            activations=config.activation_granularity, front_dir=running, progress=progress)
        guard.hold()  # the points are saved whatever comes now (SIGKILL aside)
        if res.interrupted:
            saved_after_interruption()
            if not res.front and (out / "gradient").is_dir():
                print("gradient strategy: interrupted before its first front point; the "
                      f"earlier front in {out / 'gradient'} is kept")
                shutil.rmtree(running, ignore_errors=True)
                return []
            print("gradient strategy: interrupted; saving the front reached so far")
        # an interrupted rerun keeps the earlier front's points its own do not beat (its
        # first minutes' points replaced a finished run's front)
        rows, earlier = _save_front(g, res.front, ctx, config, out, merge=res.interrupted)
    shutil.rmtree(running, ignore_errors=True)
    if earlier and res.interrupted:
        print(f"merged with the earlier front in {out / 'gradient'} ({_points(earlier)}): "
              f"{_points(len(rows))} on the front")
    elif earlier:
        print(f"replaced the earlier front in {out / 'gradient'} ({_points(earlier)})")
    if progress:
        print("(epoch: where the point was saved during training; p: its weights then "
              "polished at frozen bits)")
        ref = ctx.reference.get("test", {}).get("accuracy")
        print(f"\ngradient strategy: {len(res.history)} epochs"
              + (" (--stop-below ended training early)" if res.stopped_early else "")
              + (", then the polish," if any(p.polished for p in res.front) else "")
              + f" in {res.seconds:.1f} s; front of {len(rows)} "
              f"point{'s' if len(rows) != 1 else ''} "
              f"(total {time.time() - t0:.1f} s); float test accuracy "
              f"{ref if ref is None else round(ref, 4)}")
        print(format_gradient_table(rows))
    return rows


def _front_size(folder: Path) -> int:
    """How many front points a <out>/gradient folder holds (0: none, or no folder)."""
    return len(list(folder.glob("point_*.pt")))


def _points(n: int) -> str:
    return f"{n} point{'s' * (n != 1)}"


def _save_front(g, front, ctx, config, out, merge: bool = False
                ) -> tuple[list[GradientRow], int]:
    """Each point of `front` as an ordinary hetq model in <out>/gradient/point_NNN.pt, with
    its test accuracy and costs; returns the rows and how many points the folder held
    before. The points go to a new folder that then replaces <out>/gradient whole: an
    earlier run's front (a rerun here reuses the float model) leaves no stale point files,
    and stays as it was if this fails before the swap. merge: the earlier front's points
    that no new one beats (validation accuracy and EBOPs) are kept with the new ones (a
    killed run's recovered front, perhaps of one epoch-0 point, replaced a finished one)."""
    from ...cost import cost
    from ...train import evaluate
    from ...train.checkpoint import save_module

    rows = []
    dest, part = out / "gradient", out / "gradient.partial"
    shutil.rmtree(part, ignore_errors=True)
    for k, p in enumerate(front):
        m = to_hetq_model(g, p.state)
        acc = evaluate(m, ctx.data)["accuracy"]
        s = cost(m, ctx.data.input_shape, source_quantizer=config.source_quantizer).summary()
        name = f"new_{k:03d}.pt"
        settings = run_settings(config)
        save_module(part / name, m, data=ctx.data, metrics={
            "test": {"accuracy": acc}, "ebops": p.ebops, "val_accuracy": p.val_accuracy,
            "epoch": p.epoch, "beta": p.beta, "polished": p.polished, "costs": s,
            "settings": settings})
        rows.append(GradientRow(p, acc, p.ebops, s["energy_pj"], s["lut"], str(part / name),
                                settings))
    part.mkdir(exist_ok=True)  # (an empty front: an empty folder)
    earlier = _front_size(dest)
    if merge and earlier:
        import warnings

        from ..objectives import pareto_front

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (its note on the unsaved front: being saved)
                rows += saved_gradient_rows(out)
        except (ValueError, KeyError, TypeError) as e:  # (a damaged or foreign point file)
            why = e if isinstance(e, ValueError) else f"a point file lacks the front's {e}"
            aside, k = out / "gradient.unread", 1
            while aside.exists():
                k += 1
                aside = out / f"gradient.unread-{k}"
            dest.rename(aside)
            warnings.warn(f"the earlier front in {dest} could not be read ({why}); it is kept "
                          f"as {aside}, not merged with the new points", stacklevel=2)
            earlier = 0
        # the rows no other beats in validation accuracy and EBOPs, cheapest first
        rows = [rows[i] for i in pareto_front([(r.point.val_accuracy, r.ebops) for r in rows])]
    for k, r in enumerate(rows):
        name = f"point_{k:03d}.pt"
        (shutil.copyfile if Path(r.path).parent == dest else os.replace)(r.path, part / name)
        r.path = str(dest / name)
    for left in part.glob("new_*.pt"):  # (new points an earlier one beats)
        left.unlink()
    shutil.rmtree(dest, ignore_errors=True)
    part.rename(dest)
    return rows, earlier


def format_gradient_table(rows: list[GradientRow]) -> str:
    lines = [f"{'point':>5} {'epoch':>6} {'val acc':>8} {'test acc':>8} {'EBOPs':>8} "
             f"{'energy pJ':>9} {'LUT':>7}  checkpoint",
             "-" * 79]
    for k, r in enumerate(rows):
        ep = f"{r.point.epoch}{'p' if r.point.polished else ''}"
        lines.append(f"{k:>5} {ep:>6} {r.point.val_accuracy:>8.4f} "
                     f"{r.test_accuracy:>8.4f} {r.ebops:>8} {r.energy_pj:>9.0f} "
                     f"{r.lut:>7.0f}  {r.path}")
    from ..results import COST_MODELS

    lines.append(COST_MODELS)  # (the table named no model for its energy and LUT)
    return "\n".join(lines)
