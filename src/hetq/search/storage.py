"""Where a study lives: a journal file in the run folder (one machine, many processes, no
server) or a database URL (PostgreSQL for many machines); where a trial's trained model is
saved, and its weights packed into the trial itself.

Dead workers: with a database, Optuna's heartbeat marks a trial whose worker stopped
beating as failed and `RetryFailedTrialCallback` enqueues its parameters again. Journal files
have no heartbeat in Optuna, so hetq records the worker's host and PID on every trial and
`recover_dead_trials` fails and re-enqueues RUNNING trials whose process on this host is
gone. Either way no completed trial is lost: they are in the storage the moment they end.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import threading
import zlib
from datetime import datetime
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from ..cli import sh
from ..files import expand_storage
from .engine import db_reason, retry_later, retry_stale, transient

# seconds between heartbeats of a running trial, and of silence after which a trial counts as
# dead (database storage); the environment may shorten them (tests)
HEARTBEAT_INTERVAL = int(os.environ.get("HETQ_HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = int(os.environ.get("HETQ_GRACE_PERIOD", "30"))


def journal_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "study.journal"


def check_storage_exists(storage: str | None) -> None:
    """For a command that joins a study (`hetq worker`): a journal file or SQLite database
    that does not exist is a ValueError, before anything is made (a worker with a mistyped
    path created an empty database, then said there was no study in it)."""
    if storage is None:
        return
    storage = expand_storage(storage)
    path = _journal_file(storage)
    if path is None and storage.startswith("sqlite:///"):
        path = Path(storage.removeprefix("sqlite:///"))
    if path is not None and not path.is_file():
        raise ValueError(f"--storage {storage}: there is no {path}; start the search there "
                         "first (`hetq search --storage ...`)")


def _journal_file(storage: str) -> Path | None:
    """The journal file a --storage names (a path ending in .journal, or journal:PATH), or
    None for a database URL."""
    if storage.endswith(".journal") or storage.startswith("journal:"):
        return Path(expand_storage(storage).removeprefix("journal:"))  # (journal:~/s.journal)
    return None


def make_storage(storage: str | None, out_dir: str | Path | None = None):
    """An Optuna storage from a URL, a journal path, or None (journal file in `out_dir`)."""
    if storage is None or _journal_file(storage) is not None:
        if storage is None:
            if out_dir is None:
                raise ValueError("no storage given and no run folder to put a journal file in")
            path = journal_path(out_dir)
        else:
            path = _journal_file(storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FlockJournalLock(str(path))
        repair_journal(path, lock)
        backend = NamedJournalBackend(str(path), lock_obj=lock)
        try:
            return optuna.storages.JournalStorage(backend)
        except ValueError as e:  # (json.JSONDecodeError is one) a record damaged inside it
            raise ValueError(f"{path} has a damaged record ({e}); the trials recorded before "
                             "it can be kept by cutting the file at that line") from None
    if "://" not in storage:
        raise ValueError(f"storage {storage!r}: expected a database URL like "
                         "postgresql://user@host/db, a path ending in .journal, or nothing")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks heartbeats as experimental
            return RetryingRDBStorage(
                database_url(storage),
                heartbeat_interval=HEARTBEAT_INTERVAL,
                grace_period=GRACE_PERIOD,
                heartbeat_stale_trial_callback=retry_stale,
                engine_kwargs={"pool_pre_ping": True},
            )
    except Exception as e:  # sqlalchemy errors: unreachable host, bad credentials, no driver
        msg = str(e).splitlines()[0].rstrip(". ") if str(e) else type(e).__name__
        raise ValueError(
            f"cannot open storage {redact(storage)}: {msg}. Check that the database server is "
            "running and reachable, the user/password and database exist, and the driver is "
            "installed (PostgreSQL: pip install 'psycopg[binary]', or hetq[postgres])."
        ) from None


RETRY_SECONDS = float(os.environ.get("HETQ_STORAGE_RETRY", "60"))  # a database outage


class NamedJournalBackend(optuna.storages.journal.JournalFileBackend):
    """Optuna's journal file, whose write errors name it (a full disk ended a search with
    'error: No space left on device', naming no file)."""

    def append_logs(self, logs: list[dict]) -> None:
        try:
            super().append_logs(logs)
        except OSError as e:
            if e.filename is not None or e.errno is None:
                raise
            raise type(e)(e.errno, e.strerror, str(self._file_path)) from None


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's database storage, riding out a short outage (a server restart, a network
    blip): each call retries a lost connection for up to RETRY_SECONDS before it fails, and a
    heartbeat that cannot be recorded is skipped, not fatal. Before, a 2-second restart
    killed every search and worker with a 300-line traceback, and Optuna's heartbeat thread
    died on its first error, so a live worker's trial was later failed as stale."""

    _said = False

    def _retrying(self, call, *args, **kwargs):
        import time
        import warnings

        delay, end = 0.5, time.monotonic() + RETRY_SECONDS
        while True:
            try:
                return call(self, *args, **kwargs)
            except Exception as e:
                if not transient(e) or time.monotonic() >= end:
                    raise
                if not RetryingRDBStorage._said:
                    RetryingRDBStorage._said = True
                    warnings.warn(f"lost the connection to the study's database "
                                  f"({db_reason(e)}); retrying for up to "
                                  f"{RETRY_SECONDS:g} s", stacklevel=3)
                time.sleep(min(delay, max(0.0, end - time.monotonic())))
                delay = min(2 * delay, 8.0)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._retrying(optuna.storages.RDBStorage.record_heartbeat, trial_id)
        except Exception as e:  # (the heartbeat thread ended on its first error)
            if not transient(e):
                raise

    def set_trial_state_values(self, trial_id: int, state, values=None) -> bool:
        """As RDBStorage's, retried; a retry of a change whose commit went through before
        the connection broke finds the trial finished already: it is done, not an error
        (a FAIL set by `retry_later` that way returned False, and the configuration was
        never queued again)."""
        lost = []

        def attempt(storage, *args):
            try:
                return optuna.storages.RDBStorage.set_trial_state_values(storage, *args)
            except optuna.exceptions.UpdateFinishedTrialError:
                if lost:
                    t = optuna.storages.RDBStorage.get_trial(storage, trial_id)
                    if t.state == state and (values is None or list(t.values or []) ==
                                             list(values)):
                        return True
                raise
            except Exception as e:
                if transient(e):
                    lost.append(e)
                raise

        return self._retrying(attempt, trial_id, state, values)


def _retried(name: str):
    def method(self, *args, **kwargs):
        return self._retrying(getattr(optuna.storages.RDBStorage, name), *args, **kwargs)

    method.__name__ = name
    return method


# what Optuna's study (through its cache, `_CachedStorage`) calls; public methods that only
# call a private one (create_new_trial, get_all_trials, ...) are retried there
for _name in ("_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
              "_get_stale_trial_ids", "get_trial_id_from_study_id_trial_number", "get_trial",
              "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
              "get_study_user_attrs", "get_study_system_attrs", "set_study_user_attr",
              "set_study_system_attr", "get_all_studies", "get_study_id_from_name",
              "get_study_name_from_id", "get_study_directions"):
    setattr(RetryingRDBStorage, _name, _retried(_name))


class FlockJournalLock:
    """The journal's lock, an flock on `<journal>.flock`, which the kernel releases when its
    process dies. Optuna's lock file (O_EXCL) stayed after a `kill -9`, and the next run
    waited 30 s, printing Optuna's warnings, before it broke it. For one machine's
    processes, as a journal is (several machines share a database). It has the methods of
    Optuna's journal file locks (acquire, release), whose base class is private."""

    def __init__(self, filepath: str):
        self._path = filepath + ".flock"
        self._fd: int | None = None
        self._thread = threading.Lock()  # (one process's threads share this object)

    def acquire(self) -> bool:
        import fcntl

        self._thread.acquire()
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # (closing releases the flock)
            self._thread.release()


def repair_journal(path: Path, lock) -> int:
    """Cut off a last record whose write was cut short (a full disk, a killed machine):
    Optuna skips it when reading but appends the next record onto it, which then makes the
    whole journal unreadable. Done under the journal's lock, so never to a write in
    progress. Returns the number of bytes removed."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb") as f:  # the usual case without the lock (a read-only run folder)
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            end = size
            while end > 0:  # back to the last newline, a block at a time (weights make
                start = max(0, end - (1 << 20))  # journals large)
                f.seek(start)
                block = f.read(end - start)
                i = block.rfind(b"\n")
                if i >= 0:
                    end = start + i + 1
                    break
                end = start
            if end == size:
                return 0
            f.truncate(end)
    finally:
        lock.release()
    import sys

    print(f"note: {path}: removed the last {size - end} bytes, a record whose write was cut "
          "off (a full disk or a killed process); the trials recorded before it are kept",
          file=sys.stderr, flush=True)
    return size - end


STORAGE_FILE = "storage.txt"  # a run folder whose study is in a database: its URL, no password


def _database(storage: str | None, out: Path) -> str | None:
    """`storage` as recorded in a run folder: None for the folder's own journal file."""
    if storage is None:
        return None
    storage = expand_storage(storage)  # (a ~ was recorded as typed)
    if "://" not in storage and (Path(storage.removeprefix("journal:")).resolve()
                                 == journal_path(out).resolve()):
        return None
    return redact(storage)


def check_run_storage(out: Path, storage: str | None, reading: bool = False) -> None:
    """A run folder's study stays where it was started: a rerun without the database's
    --storage began a second study in a journal file, whose trials then overwrote the
    database trials' checkpoints in trials/ (their paths are the study name and number).
    `reading`: for report, retrain and export, which have no --out to change."""
    elsewhere = "" if reading else ", or use another --out"
    rec = Path(out) / STORAGE_FILE
    # (redacted again: a record written before `redact` dropped ?password= holds it)
    recorded = redact(rec.read_text().strip()) if rec.exists() else None
    given = _database(storage, Path(out))
    if recorded and given is None:
        raise ValueError(f"{out}'s study is in {recorded}: give --storage with that URL "
                         "(and its password, if it has one)" if "://" in recorded else
                         f"{out}'s study is in {recorded}: give --storage {sh(recorded)}")
    if recorded and given != recorded:
        raise ValueError(f"{out}'s study is in {recorded}, not in {given}: give that "
                         f"--storage{elsewhere}")
    if given and not recorded and journal_path(out).exists():
        raise ValueError(f"{out}'s study is in its journal file {journal_path(out)}, not in "
                         f"{given}: leave --storage out to use it{elsewhere}")


def record_run_storage(out: Path, storage: str | None) -> None:
    database = _database(storage, Path(out))
    if database:
        (Path(out) / STORAGE_FILE).write_text(database + "\n")


def database_url(url: str) -> str:
    """`url` with the PostgreSQL driver that is installed spelled out. SQLAlchemy before 2.1
    reads a bare postgresql:// as psycopg2, while hetq[postgres] installs psycopg 3; and it
    no longer reads the postgres:// of many hosting services at all."""
    import importlib.util

    url = expand_storage(url)  # (sqlite:///~/x.db: the home folder's)
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg"):
        return f"postgresql+psycopg{sep}{rest}"
    return f"postgresql{sep}{rest}"


def redact(url: str) -> str:
    """The URL without its password: user:password@ or a password=... query parameter (which
    was saved in storage.txt and printed in the dashboard line)."""
    import re

    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        url = f"{scheme}://{user}@{host}"
    if "?" in url:  # (the other parameters and their separators as they were)
        base, query = url.split("?", 1)
        query = re.sub(r"(?i)(^|[&;])(password|pass|passwd|sslpassword)=[^&;]*", "", query)
        query = query.lstrip("&;")
        url = base + ("?" + query if query else "")
    return url


def worker_identity() -> dict[str, str | int]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead(t, host: str, mine_too: bool = False) -> bool:
    """Whether RUNNING trial `t`'s process is gone. mine_too: a trial that names this
    process is dead too (asked by a process that runs no trial now: a restarted
    container's search got the dead one's pid, and waited for its trial for ever)."""
    if "pid" not in t.user_attrs:
        # a live worker names itself within milliseconds of starting a trial; one killed before
        # that (and before its first heartbeat) leaves an anonymous RUNNING trial
        start = t.datetime_start
        return start is not None and (datetime.now() - start).total_seconds() > GRACE_PERIOD
    pid = int(t.user_attrs["pid"])
    return t.user_attrs.get("host") == host and (
        (mine_too and pid == os.getpid()) or not _pid_alive(pid))


def still_running(study: optuna.Study) -> int:
    """How many of the study's trials are running now: RUNNING, with a live worker (a
    process of this host that exists, or one on another host; Optuna's heartbeat fails
    those that stop)."""
    host = socket.gethostname()
    return sum(not _dead(t, host)
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def resume_advice(study: optuna.Study) -> str:
    """What to do about a search that has not finished: wait for its running trials, or
    rerun its command."""
    n = still_running(study)
    if n:
        return (f"its search is still running ({n} trial{'s' * (n != 1)} in progress); try "
                "again when some have finished")
    trials = study.get_trials(deepcopy=False)
    # (the error each failed trial keeps: `run_worker` and the population batches set it)
    failed = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("error")]
    if failed and not any(t.state == TrialState.COMPLETE for t in trials):
        # (a rerun was the advice, and it fails the same way)
        t = failed[-1]
        return (f"{len(failed)} of its trials failed (trial {t.number}: "
                f"{t.user_attrs['error']}); a rerun with the same settings fails the same "
                "way: change them (a lower --lr, say) in another --out")
    return "rerun the same `hetq search` command to resume it"


def retried_numbers(trials) -> set[int]:
    """The numbers of the trials that were interrupted (Ctrl-C, a killed worker), failed and
    queued again: a later trial names each as its `retry_of`."""
    return {t.user_attrs.get("retry_of") for t in trials} - {None}


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker process (on this host) no longer exists, and enqueue
    their parameters again. Returns the numbers of the trials recovered."""
    host = socket.gethostname()
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if _dead(t, host, mine_too=True) and retry_later(study, t, dead=True)]


def quiet_optuna():
    """Optuna's own log at warnings only (hetq prints its progress itself)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def existing_study(name: str, storage: str | None, out: Path, hint: str) -> optuna.Study:
    """The study `name` in `storage` (None: the run folder's journal file), without creating
    anything; a missing one is a ValueError that ends with `hint`."""
    try:
        if storage is None and not journal_path(out).exists():  # (opening would create it)
            raise KeyError(name)
        return optuna.load_study(study_name=name, storage=make_storage(storage, out))
    except KeyError:
        raise ValueError(f"no study {name!r} in {storage or journal_path(out)}; {hint}") from None


def trial_path(out: str | Path, study_name: str, number: int) -> Path:
    """Where a trial's trained model is saved: <run>/trials/<study>/<number>.pt."""
    return Path(out) / "trials" / study_name / f"{number:05d}.pt"


# -- weights travel with the trial (no shared file system needed between machines) ---------
def pack_state(model: torch.nn.Module) -> str:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return base64.b64encode(zlib.compress(buf.getvalue(), 6)).decode("ascii")


def unpack_state(blob: str) -> dict[str, torch.Tensor]:
    raw = zlib.decompress(base64.b64decode(blob))
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
