"""Several gradient-strategy trainings in parallel processes, their fronts merged."""

from __future__ import annotations

import copy
import signal
import time

import torch
from torch import nn

from .model import GradientBitsMLP
from .training import (
    FrontPoint,
    GradientResult,
    ParetoCheckpoints,
    interrupt_workers,
    polish_front,
    quiet_worker,
    read_front_file,
    spawning,
    train_gradient,
)


def _one_run(float_model, data, threads: int, kwargs: dict, submitted: float | None = None):
    """A worker process's training (top level: spawned processes import it). submitted: the
    `time.time()` of submission for a run that starts at once; starting the process
    (seconds: it imports torch) then comes out of its time_budget instead of adding to the
    wall time."""
    from ...cli import interrupts_save

    torch.set_num_threads(threads)
    if submitted is not None and kwargs.get("time_budget") is not None:
        kwargs = {**kwargs, "time_budget": max(kwargs["time_budget"] - (time.time() - submitted),
                                               1.0)}
    with interrupts_save((signal.SIGINT, signal.SIGTERM)):  # the front so far is returned
        return train_gradient(float_model, data, progress=False, **kwargs)


POLISHED = "polished.pt"  # the polish's front file in a front_dir


def read_front_dir(folder, float_model: nn.Module, x_train: torch.Tensor
                   ) -> tuple[GradientBitsMLP, list[FrontPoint]] | None:
    """The merged front saved in `folder` by `train_gradient_runs(front_dir=folder)` (the
    runs' fronts and the polish's, as far as each got), with a model of their structure
    built from `float_model` (the one they trained from) and rows of its training data;
    None when the folder holds no front file."""
    from pathlib import Path

    files = sorted(Path(folder).glob("run_[0-9]*.pt")) + sorted(Path(folder).glob(POLISHED))
    keeper, model, first = ParetoCheckpoints(), None, None
    for path in files:
        structure, points = read_front_file(path)
        if model is None:
            model, first = GradientBitsMLP.rebuild(copy.deepcopy(float_model).cpu(), x_train,
                                                   structure), (path, structure)
        elif structure != first[1]:
            raise ValueError(f"{path} holds points of another model structure than "
                             f"{first[0]} ({structure} against {first[1]})")
        for p in points:
            if path.name != POLISHED:
                p.run = int(path.stem.removeprefix("run_"))
            keeper.offer(p)
    return None if model is None else (model, keeper.points)


def default_workers(runs: int) -> int:
    """Processes `train_gradient_runs` uses by default: one per run, at most one per core."""
    import os

    return min(runs, os.cpu_count() or 1)


def train_gradient_runs(float_model: nn.Module, data, *, runs: int = 1,
                        workers: int | None = None, seed: int = 0, progress: bool = True,
                        polish_epochs: int = 0, polish_lr: float = 1e-3,
                        polish_time: float | None = None, front_dir=None,
                        **kwargs) -> tuple[GradientBitsMLP, GradientResult]:
    """`runs` independent `train_gradient` runs (seeds seed, seed + 1, ...) in `workers`
    processes at once, one torch thread each (default: one process per run, at most one per
    CPU core), their fronts merged into one. For this model size one thread per process runs
    about as many epochs as two threads in one, so two cores give two runs in the time of
    one, and runs differ enough (a run can lose a region of the front) that the merged front
    is better than either. kwargs: as `train_gradient` (time_budget applies to each run; for
    the runs that start at once it counts from the call, so starting the processes comes
    out of it).
    Returns a model to use with `to_hetq_model` and the merged result (each point's `run`
    says where it came from; the history entries carry "run" too).
    polish_epochs > 0: afterwards `polish_front` fine-tunes the merged front's points at
    their bits (Adam, `polish_lr`), most accurate first, in the same processes, for at most
    `polish_time` seconds (None: every point), plus whatever of time_budget the runs left
    when `stop_below` ended them early.
    Ctrl-C stops every run; the fronts reached so far are merged and returned.
    front_dir: a folder where each run saves the front it reached so far while it trains
    (run_R.pt; see `train_gradient`'s front_file) and the polish its merged front
    (polished.pt): `read_front_dir` gets them back after a kill."""
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    from ...cli import CommandFailed
    from ...progress import bar as progress_bar

    t0 = time.time()
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    workers = workers or default_workers(runs)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if polish_epochs < 0:
        raise ValueError(f"polish_epochs must be >= 0, got {polish_epochs}")
    polish_kw = dict(epochs=polish_epochs, lr=polish_lr, progress=progress,
                     **{k: kwargs[k] for k in ("teacher", "distill", "save_every")
                        if k in kwargs})
    if front_dir is not None:
        from pathlib import Path

        front_dir = Path(front_dir)
        polish_kw["front_file"] = front_dir / POLISHED

    def run_file(r):
        return {} if front_dir is None else {"front_file": front_dir / f"run_{r}.pt"}

    budget = kwargs.get("time_budget")
    waves = -(-runs // workers)  # runs one after another in each process

    def polish_seconds():
        """polish_time, plus the training time that runs stopped early (stop_below) left."""
        if polish_time is None:
            return None
        spare = max(0.0, t0 + waves * budget - time.time()) if budget else 0.0
        return polish_time + spare

    if runs == 1 and workers == 1:
        model, res = train_gradient(float_model, data, seed=seed, progress=progress,
                                    **run_file(0), **kwargs)
        if polish_epochs and res.front and not res.interrupted:
            res.front = polish_front(model, res.front, data, seconds=polish_seconds(),
                                     **polish_kw)
            res.interrupted = res.front.interrupted
            res.seconds = time.time() - t0
        return model, res
    threads = max(1, (os.cpu_count() or 1) // workers)
    float_model = copy.deepcopy(float_model).cpu()
    results: dict[int, tuple[GradientBitsMLP, GradientResult]] = {}
    bar = progress_bar(total=runs, disable=not progress, unit="run",
                       desc=f"gradient bits: {runs} runs in {workers} processes"
                            + (f", {budget:.0f} s each" if budget else ""))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=quiet_worker, initargs=(os.getpid(),)) as pool:
        now = time.time()
        futs, interrupted = {}, False
        try:  # (the processes start here: a Ctrl-C meanwhile is raised as `spawning` ends)
            with spawning():
                for r in range(runs):
                    futs[pool.submit(_one_run, float_model, data, threads,
                                     {**kwargs, "seed": seed + r, **run_file(r)},
                                     now if r < workers else None)] = r
        except KeyboardInterrupt:
            interrupted = True
            interrupt_workers(pool, futs)  # (runs still queued do not start)
        procs = list((getattr(pool, "_processes", None) or {}).values())  # (all started)
        lost = []  # runs whose results never came back (a worker process died)

        def broken() -> CommandFailed:
            """A worker died: the pool sent SIGTERM to the others, which take it as Ctrl-C:
            they saved their fronts (front_dir) and wait to send them back, which nobody
            reads any more, and the pool's clean-up would wait for them forever."""
            for proc in procs:
                proc.kill()
            return CommandFailed(
                "a gradient-strategy training process ended abruptly (killed, or out of "
                "memory?); the runs still going were stopped"
                + ("" if front_dir is None else
                   f"; the fronts the runs had saved are in {front_dir}: the same command "
                   "run again saves them as its front"))

        pending = set(futs)
        while pending:
            try:
                done, pending = wait(pending, timeout=5.0, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:  # the running runs return their fronts so far
                interrupted = True
                interrupt_workers(pool, pending)  # (runs still queued do not start)
                continue
            for fut in done:
                if fut.cancelled():
                    continue
                try:
                    results[futs[fut]] = fut.result()
                except BrokenProcessPool:
                    # a Ctrl-C in a terminal reaches every process: one still importing (not
                    # yet ignoring it) dies of it, and the pool breaks; this process's own
                    # KeyboardInterrupt comes at the same moment
                    if not interrupted:
                        try:
                            time.sleep(2.0)
                        except KeyboardInterrupt:
                            interrupted = True
                    if not interrupted:
                        raise broken() from None
                    lost.append(futs[fut])  # (its front: from front_dir, below)
                    continue
                bar.update(1)
            bar.set_postfix(elapsed=f"{time.time() - t0:.0f}s")
        bar.close()
        if lost:  # (after Ctrl-C: the pool's clean-up must not wait for them)
            broken()
        keeper = ParetoCheckpoints()
        history = []
        for r in sorted(results):
            for p in results[r][1].front:
                p.run = r
                keeper.offer(p)
            history += [{**h, "run": r} for h in results[r][1].history]
        for r in lost:  # what those runs had saved
            path = run_file(r).get("front_file")
            if path is not None and path.exists():
                for p in read_front_file(path)[1]:
                    p.run = r
                    keeper.offer(p)
        if not results:  # interrupted before any run started
            raise KeyboardInterrupt
        model = results[min(results)][0]  # every run builds the same structure
        interrupted = interrupted or any(res.interrupted for _, res in results.values())
        front = keeper.points
        if polish_epochs and front and not interrupted:
            try:
                front = polish_front(model, front, data, pool=pool, seconds=polish_seconds(),
                                     **polish_kw)
            except BrokenProcessPool:
                raise broken() from None
            interrupted = front.interrupted
    if front:
        model.load_state_dict(front[-1].state)
    early = any(res.stopped_early for _, res in results.values())
    diverged = any(res.diverged for _, res in results.values())
    return model, GradientResult(front, history, time.time() - t0, interrupted, early,
                                 diverged)
