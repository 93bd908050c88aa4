"""Optuna plumbing: samplers, pruners, studies and the worker loop with an exact trial budget.

The search uses Optuna's own samplers, pruners and storages; this module only names them
and keeps the budget exact when several workers share one study: a trial runs only if fewer
than `budget` trials with a smaller number are complete, pruned or running. Trials beyond
the budget are failed at once and tagged `overflow` (they never train).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from ..cli import CommandFailed, deferred_signals
from .config import PRUNERS, SAMPLERS

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
TRIAL_ERRORS = (FloatingPointError, ValueError, RuntimeError)  # failures of one candidate
MAX_CONSECUTIVE_FAILURES = 5


MAX_GRID = 1_000_000  # combinations the grid sampler may list


def check_grid(search_space: dict) -> None:
    """A ValueError unless the grid sampler can list every combination of `search_space`
    (Optuna lists them all up front: the default jet_mlp space's 2.4e8 ran out of memory)."""
    sizes = [len(d.choices) for d in search_space.values()]
    size = math.prod(sizes)
    if size > MAX_GRID:
        raise ValueError(f"the grid sampler tries every combination, and this search space "
                         f"has {size:.3g} ({len(sizes)} parameters with "
                         f"{', '.join(map(str, sizes))} choices); at most {MAX_GRID:,} can be "
                         "listed. Narrow the space (--limit, --quantization-config) or use "
                         "another --sampler")


def nsga2_population(trials: int | None) -> int:
    """NSGA-II's generation size for a budget of `trials`: a fifth of it, 4 to 50 (Optuna's
    default of 50 left a 40-trial search a random one, its first generation)."""
    return 50 if trials is None else max(4, min(50, trials // 5))


def make_sampler(name: str, seed: int | None = None, multi_objective: bool = False,
                 search_space: dict | None = None, constraints_func=None,
                 trials: int | None = None):
    """An Optuna sampler by name: tpe (Bayesian), random, grid, gp (Gaussian-process bandit,
    Vizier's default family), nsga2 (multi-objective evolutionary; generations sized to
    `trials`, `nsga2_population`)."""
    import warnings

    with warnings.catch_warnings():  # (Optuna 5 deprecates constraints_func for a trial
        warnings.simplefilter("ignore", FutureWarning)  # method that Optuna 4 lacks)
        return _make_sampler(name, seed, search_space, constraints_func, trials)


def _make_sampler(name, seed, search_space, constraints_func, trials):
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                          constraints_func=constraints_func)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        if not search_space:
            raise ValueError("the grid sampler needs a search space")
        check_grid(search_space)
        grid = {k: list(d.choices) for k, d in search_space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, constraints_func=constraints_func)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=nsga2_population(trials),
                                             seed=seed, constraints_func=constraints_func)
    raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")


def make_pruner(name: str | None, max_epochs: int):
    """An Optuna pruner by name: none, median, asha (successive halving), hyperband."""
    if name in (None, "none"):
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs,
                                              reduction_factor=3)
    raise ValueError(f"unknown pruner {name!r}; expected one of {', '.join(PRUNERS)}")


class SearchFailed(CommandFailed):
    """The search cannot go on (every trial fails, or its worker processes did); the message
    says why in one line, and the trials' own errors were reported before it."""


class BudgetReached(Exception):
    """Raised inside a trial that would exceed the study's trial budget."""


class _TrialInterrupted(BaseException):
    """Ctrl-C (or SIGTERM) inside a trial, or a file-system error (it would fail every trial
    alike), carried past Optuna: it would record the trial as failed with the traceback in
    its log, and the configuration would not be trained again when the search resumes."""

    def __init__(self, trial: optuna.Trial, interruption: KeyboardInterrupt):
        super().__init__(trial.number)
        self.trial, self.interruption = trial, interruption


ORIGIN_TAGS = ("warm_start", "hessian_budget", "hessian_omega")  # set when enqueued


def _chain(e: BaseException | None):
    """`e` and the exceptions it was raised from or during, outermost first."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def transient(e: BaseException) -> bool:
    """Whether `e` (or an exception it was raised from or during) is a lost or refused
    database connection, which may come back: SQLAlchemy's OperationalError or
    InterfaceError (Optuna wraps a failed commit's in a StorageInternalError), except
    SQLite's own errors other than a locked database (a read-only file, say, is no outage)."""
    for x in _chain(e):
        if type(x).__module__.startswith("sqlalchemy") and \
                type(x).__name__ in ("OperationalError", "InterfaceError"):
            orig = getattr(x, "orig", None)
            sqlite = orig is not None and type(orig).__module__.startswith("sqlite3")
            return not sqlite or "locked" in str(orig)
    return False


def db_reason(e: BaseException) -> str:
    """The first line of the database driver's own error in `e`'s chain (Optuna's
    StorageInternalError only says that a commit failed, 'typically ... invalid data')."""
    chain = list(_chain(e))
    found = next((x for x in chain if type(x).__module__.startswith("sqlalchemy")), None) or \
        next((x for x in chain if isinstance(x, optuna.exceptions.StorageInternalError)), None)
    if found is None:
        return "?"
    return (str(found).strip().splitlines() or [type(found).__name__])[0][:160]


def storage_lost(e: BaseException) -> str:
    """The one-line error for a database connection lost for good (`transient`)."""
    why = db_reason(e)
    return (f"lost the connection to the study's database ({why}); the finished trials are "
            "kept there: run the same command again once it is back (a trial that was "
            "running is run again)")


MAX_DEATHS = 3  # a configuration whose worker died this often is not queued again


def retry_later(study: optuna.Study, trial, dead: bool = False) -> bool:
    """Fail a trial that did not finish (its worker died, or was interrupted) and queue its
    configuration again (`retry_of`), so that a worker or the resumed search trains it.
    False when the trial was finished already (e.g. another worker got there first).
    dead: its worker died (not an interruption); after MAX_DEATHS such deaths the
    configuration is not queued again (one that kills its worker, out of memory, say, was
    queued for ever), and the trial's error says so."""
    deaths = int(trial.user_attrs.get("deaths", 0)) + int(dead)
    last = dead and deaths >= MAX_DEATHS
    if last:  # (before it is failed: a finished trial takes no attributes)
        with contextlib.suppress(Exception):
            study._storage.set_trial_user_attr(
                trial._trial_id, "error", f"its worker died {deaths} times training this "
                "configuration (out of memory?); it is not run again")
    try:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except Exception:
        return False
    if not last:
        _queue_again(study, trial, deaths)
    return True


def _queue_again(study: optuna.Study, trial, deaths: int) -> None:
    # (where it came from stays: a warm start's or the Hessian prior's configuration; not
    # its worker's host and pid, which would make the retry look dead as soon as it runs)
    tags = {k: v for k, v in trial.user_attrs.items() if k in ORIGIN_TAGS}
    study.enqueue_trial(trial.params, user_attrs={**tags, "retry_of": trial.number,
                                                  "seed_trial": seed_number(trial),
                                                  **({"deaths": deaths} if deaths else {})},
                        skip_if_exists=False)


def retry_stale(study: optuna.Study, trial) -> None:
    """The database heartbeat's callback for a trial whose worker stopped beating (failed
    by Optuna): its configuration queued again as `retry_later` queues a dead worker's
    (not after MAX_DEATHS deaths). Optuna's own callback copied every user attribute, the
    dead worker's host and pid among them, so the retry looked dead (and was failed again)
    while a live worker on that host trained it, and `hetq report` counted it as failed,
    not retried."""
    deaths = int(trial.user_attrs.get("deaths", 0)) + 1
    if deaths < MAX_DEATHS:
        _queue_again(study, trial, deaths)


def retry_all_later(study: optuna.Study, trials) -> None:
    """`retry_later` for each of `trials` that a Ctrl-C or a file-system error stopped, with
    Ctrl-C and SIGTERM held back meanwhile (a second Ctrl-C here lost the retry, and the
    configuration was never trained) and a file-system error tolerated (a full disk: the
    next run finds the trial running and retries it)."""
    with deferred_signals(signal.SIGINT, signal.SIGTERM):
        for t in trials:
            with contextlib.suppress(OSError):
                retry_later(study, t)


def seed_number(trial) -> int:
    """The trial number whose seed trains `trial`: its own, or for a configuration queued
    again after an interruption or a dead worker, that of the trial that first had it, so
    that it trains as it would have (it trained with its new number's seed)."""
    n = trial.user_attrs.get("seed_trial")
    if n is None:  # Optuna's own retry of a database trial whose heartbeat stopped
        try:
            n = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        except AttributeError:  # (a FrozenTrial)
            n = trial.system_attrs.get("failed_trial")
    return trial.number if n is None else int(n)


def counted_before(study: optuna.Study, number: int) -> int:
    """Trials with a smaller number that are complete, pruned or running."""
    states = (*COUNTED, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if t.number < number)


def n_counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def run_worker(study: optuna.Study, objective: Callable, budget: int,
               on_trial_end: Callable | None = None, recover: Callable | None = None,
               timeout: float | None = None) -> int:
    """Run trials of `study` until it holds `budget` complete/pruned trials. Several workers
    (processes or machines) may run this on the same study. Returns trials run here."""
    t0 = time.monotonic()
    ran = 0

    # the trial this process is running, while its objective ended as Optuna will tell it
    # (returned a value, or raised an error of `catch`): a tell that then fails on a trial
    # another process finished is that process's takeover, not an error of this search
    current: list[optuna.Trial] = []

    def guarded(trial: optuna.Trial):
        if counted_before(study, trial.number) >= budget:
            trial.set_user_attr("overflow", True)
            raise BudgetReached
        try:
            value = objective(trial)
        except (KeyboardInterrupt, OSError) as e:  # (OSError: a full disk, a read-only
            raise _TrialInterrupted(trial, e) from None  # trials/ folder: every trial's)
        except TRIAL_ERRORS as e:  # kept with the trial: `hetq report` says why they failed
            current[:] = [trial]
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                trial.set_user_attr("error", f"{type(e).__name__}: {str(e).splitlines()[0]}"
                                    if str(e) else type(e).__name__)
            raise
        current[:] = [trial]
        return value

    mine: list[optuna.trial.FrozenTrial] = []  # the trial this process just ran (other
    # workers' trials, e.g. one that overflowed the budget, land in the study meanwhile)
    callbacks = [lambda _study, trial: mine.append(trial)]
    if on_trial_end:
        callbacks.append(on_trial_end)
    failures = 0
    say_waiting_at = None  # (when a wait for other processes' trials is said, once)
    while n_counted(study) < budget:
        if timeout is not None and time.monotonic() - t0 > timeout:
            break
        if recover is not None:
            recover(study)
        if _only_others_running(study, budget):
            _fail_stale(study)
            if say_waiting_at is None:
                say_waiting_at = time.monotonic() + WAIT_NOTE_AFTER
            elif time.monotonic() >= say_waiting_at:  # (it said nothing while it waited,
                say_waiting_at = math.inf  # for ever when the trial was lost)
                _say_waiting(study)
            time.sleep(1.0)  # the last trials run elsewhere; wait for them (or their failure)
            continue
        mine.clear()
        current.clear()
        # a trial that fails (diverged training, a candidate that cannot be built) is recorded
        # as FAIL with its error by Optuna and does not count; the search goes on, unless
        # MAX_CONSECUTIVE_FAILURES in a row say something is wrong with every trial
        try:
            study.optimize(guarded, n_trials=1, catch=(BudgetReached, *TRIAL_ERRORS),
                           callbacks=callbacks, gc_after_trial=False, show_progress_bar=False)
        except _TrialInterrupted as e:
            retry_all_later(study, [e.trial])
            raise e.interruption from None
        except (ValueError, RuntimeError, AssertionError):  # (Optuna's 'Should not reach.')
            if not (current and mine == [] and _taken_over(study, current[0])):
                raise
            import warnings  # (it ended the whole command: 'Cannot tell a FAIL trial')

            warnings.warn(f"trial {current[0].number} was failed by another process while "
                          "this one trained it (its heartbeat was not recorded in time: a "
                          "database outage?); its configuration is run again", stacklevel=2)
            continue
        if not mine or mine[-1].user_attrs.get("overflow"):
            continue
        ran += 1
        if mine[-1].state == TrialState.FAIL:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                why = mine[-1].user_attrs.get("error") or "see the warnings above"
                raise SearchFailed(f"{failures} trials in a row failed (last: trial "
                                   f"{mine[-1].number}: {why}); stopping")
        else:
            failures = 0
    return ran


def _taken_over(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether `trial`, whose objective had ended when telling its result failed, was
    failed by another process (a database heartbeat's stale-trial check)."""
    try:
        return study._storage.get_trial(trial._trial_id).state == TrialState.FAIL
    except Exception:
        return False


def _fail_stale(study: optuna.Study) -> None:
    """Let a database storage's heartbeat fail (and retry) trials of dead workers."""
    import warnings

    from optuna.storages._heartbeat import BaseHeartbeat

    storage = study._storage
    if isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


WAIT_NOTE_AFTER = 60.0  # seconds of waiting for other processes' trials before it is said


def _say_waiting(study: optuna.Study) -> None:
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    who = ", ".join(f"#{t.number} (host {t.user_attrs.get('host', '?')}, pid "
                    f"{t.user_attrs.get('pid', '?')})" for t in running[:5])
    print(f"note: waiting for the budget's last trial{'s' * (len(running) != 1)}, which other "
          f"processes run: {who}{', ...' if len(running) > 5 else ''}; a process that is gone "
          "on another host is failed by the database's heartbeat (a journal file has none: "
          "stop this and rerun on that host)", file=sys.stderr, flush=True)


def _only_others_running(study: optuna.Study, budget: int) -> bool:
    done = n_counted(study)
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    return done + running >= budget and waiting == 0
