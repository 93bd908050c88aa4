"""`hetq` command line: one sub-command per verb.

Each feature package contributes its sub-commands through a `register(subparsers)` function
in its own `cli.py` module (e.g. `hetq.train.cli`), so this file stays a thin dispatcher and
a feature's options live next to its code.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import textwrap
import threading
import warnings

from hetq.progress import surviving_closed_output

# feature modules that add sub-commands, in the order they appear in `hetq --help`
COMMAND_MODULES = (
    "hetq.train.cli",
    "hetq.cost.cli",
    "hetq.search.cli",
    "hetq.export.cli",
    "hetq.demo",
)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a batch system's time limit) inside `interrupts_save`: raised
    where Ctrl-C would be, so the work stops the same way and keeps what it reached."""


@contextlib.contextmanager
def interrupts_save(signals=(signal.SIGTERM,)):
    """While inside (in the main thread), the first of `signals` raises KeyboardInterrupt
    (`Terminated` for SIGTERM), as Ctrl-C does, so that training stops and keeps what it
    reached; further ones do nothing but make `main` exit 130. `hold()` on the yielded object
    makes them do only that from then on (the saving: a signal cannot cut it short; SIGKILL
    still can). On leaving, the previous handlers come back."""
    main = threading.current_thread() is threading.main_thread()
    state = {"armed": True}

    class Guard:
        @staticmethod
        def hold():
            state["armed"] = False

    def handler(signum, frame):  # (a Python handler throughout: switching to SIG_IGN
        if state["armed"]:       # while another signal waits makes Python print an error)
            state["armed"] = False
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        # one that comes while the work is saved does not cut the saving short, and the
        # command still exits as interrupted (it exited 0, as if no signal had come)
        _INTERRUPTED["saved"] = True

    # (a signal the process inherited as ignored stays ignored: `nohup`, `cmd &` in a script)
    previous = {s: signal.signal(s, handler) for s in signals
                if signal.getsignal(s) is not signal.SIG_IGN} if main else {}
    try:
        yield Guard
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def die_with_parent(parent: int) -> None:
    """Linux: this process is killed (SIGKILL) when `parent` ends, however it ends (a worker
    process of a search: one whose parent was killed outright used to work on, orphaned).
    Elsewhere nothing is done."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # (it died before the prctl: nobody is left to signal it)
        os._exit(1)


_INTERRUPTED = {"saved": False}


def saved_after_interruption() -> None:
    """Called by work that Ctrl-C or SIGTERM stopped early and that then saved what it had
    reached (train, retrain, the gradient strategy): `main` exits with status 130 all the
    same, as for any interrupted command, so a script (`hetq train ... && hetq export ...`)
    does not go on as if the work had run to its end."""
    _INTERRUPTED["saved"] = True


@contextlib.contextmanager
def deferred_signals(*signums: int):
    """`signums` (Ctrl-C, SIGTERM) held back while the block runs, then raised as they would
    have been (their own handlers: Ctrl-C, or a worker's death on SIGTERM): a clean-up that
    writes a study is not cut short by a second Ctrl-C. Main thread only (elsewhere, as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    previous = {s: signal.getsignal(s) for s in signums}
    previous = {s: h for s, h in previous.items() if h is not None}  # (set outside Python)
    for s in previous:
        signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for s in dict.fromkeys(got):
        signal.raise_signal(s)


def ignore_signal(signum, frame) -> None:
    """A signal handler that does nothing (unlike SIG_IGN, safe to switch from and to while
    a signal is pending)."""


class CommandFailed(RuntimeError):
    """The work itself failed (not the user's input): `main` prints the message as one line
    and exits with status 1 (e.g. `hetq.search.engine.SearchFailed`)."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (epochs, trials, workers, widths, ...)."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def seed_int(text: str) -> int:
    """argparse type: a random seed, 0 <= seed < 2**63 (what torch.manual_seed takes; a larger
    one failed with 'Overflow when unpacking long long')."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates, ...)."""
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not 0.0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def name_type(text: str) -> str:
    """argparse type of zoo model and preset names: matched case- and space-insensitively
    (`--preset Q6` as the paper writes it)."""
    return text.strip().lower()


def describe(text: str, example: str) -> dict:
    """add_parser keywords for a sub-command's help page: `text` wrapped, then an example
    command line kept as written."""
    body = textwrap.fill(" ".join(text.split()), 79)
    return {"description": f"{body}\n\nexample:\n  {example}",
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def _file_on_path(p: str) -> str | None:
    """The nearest existing part of path `p` (`p` itself first), if it is not a folder."""
    import os

    while p and not os.path.exists(p):
        p = os.path.dirname(p)
    return p if p and not os.path.isdir(p) else None


def _broken_link_on_path(p: str) -> str | None:
    """What is wrong with the nearest part of path `p` that is there (`p` itself first) when
    it is a symbolic link that leads nowhere or in a loop, else None."""
    while p and not os.path.lexists(p):
        p = os.path.dirname(p)
    if not p or not os.path.islink(p) or os.path.exists(p):
        return None
    if _link_loops(p):
        return f"{p} is a symbolic link loop"
    return f"{p} is a symbolic link to {os.readlink(p)}, which is not there"


def _link_loops(p: str) -> bool:
    try:
        os.path.realpath(p, strict=True)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def sh(path) -> str:
    """`path` as it must be typed in a shell command that hetq prints for copying (quoted
    when it holds spaces or other special characters)."""
    import shlex

    return shlex.quote(str(path))


def path_problem(e: OSError) -> str:
    """One line for an OSError from the file system: what went wrong and with which path
    ("runs/x is a file, where a folder is needed" for a folder that cannot be made)."""
    path = e.filename
    if e.filename2 is not None and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                                               errno.EROFS):
        path = e.filename2  # (shutil's copies name the source first: a template of hls4ml)
    if path is not None and isinstance(e, (FileExistsError, NotADirectoryError)):
        blocking = _file_on_path(os.fspath(path))
        if blocking:
            return f"{blocking} is a file, where a folder is needed"
    what = e.strerror or str(e)
    return f"{what}: {os.fspath(path)}" if path is not None else what


def check_output(path, option: str, folder: bool = False) -> None:
    """Before any work: that `path` can be written as a file (`folder`: made as a folder),
    so a command does not fail on its output after its work. ValueError, in path_problem's
    words, when it names the other kind or when a part of it is a file."""
    import os

    p = os.fspath(path)
    broken = _broken_link_on_path(p if folder else os.path.dirname(p))
    if broken:  # ('File exists: X', or the work first and then that)
        raise ValueError(f"{option} {p}: {broken}")
    if os.path.isdir(p) and not folder:
        raise ValueError(f"{option} {p} is a folder; expected a file to write")
    if p.endswith(os.sep) and not folder:  # (the file was written as `newq`, the slash lost)
        raise ValueError(f"{option} {p} names a folder (a trailing {os.sep}); expected a file "
                         "to write")
    if os.path.exists(p) and not os.path.isdir(p) and folder:
        raise ValueError(f"{option} {p} is a file; expected a folder")
    blocking = _file_on_path(os.path.dirname(p))
    if blocking:
        raise ValueError(f"{option} {p}: {blocking} is a file, where a folder is needed")
    # a file given as a link is written where it points, even where nothing is yet: that
    # folder must be there (it failed after the work) and writable
    target = p
    if not folder and os.path.islink(p):
        if _link_loops(p):
            raise ValueError(f"{option} {p}: {p} is a symbolic link loop")
        target = os.path.realpath(p)
        if not os.path.isdir(os.path.dirname(target)):
            raise ValueError(f"{option} {p} is a symbolic link to {target}, whose folder is "
                             "not there")
    # and that the nearest folder there is can be written (a read-only or foreign folder
    # failed only at the saving, after the training)
    import tempfile

    here = p if folder and os.path.isdir(p) else os.path.dirname(os.path.abspath(target))
    while not os.path.isdir(here):
        here = os.path.dirname(here)
    try:
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as e:
        raise ValueError(f"{option} {p}: {here} cannot be written ({e.strerror or e})") \
            from None


def quantize_zoo_model(model, model_name: str, preset: str | None, config: str | None):
    """`--preset` / `--config` of train and cost applied to the zoo model `model`; returns
    (model, QuantConfig or None). A config file must quantize some layer, and a preset
    without entries (`float`) cannot make a model with built-in quantizers float."""
    from .models import preset as preset_config
    from .quant.convert import QuantConfig, check_quantizes, quantize_model
    from .quant.layers import QLayer

    if not (preset or config):  # (the callers refuse both together)
        return model, None
    qc = QuantConfig.load(config) if config else QuantConfig(preset_config(preset))
    built_in = [n for n, m in model.named_modules() if isinstance(m, QLayer)]
    if preset and not qc.entries and built_in:
        raise ValueError(f"--preset {preset}: {model_name} has its quantizers built in "
                         f"({', '.join(built_in)}), so it cannot be a float model; leave out "
                         "--preset for the model as built")
    if qc.entries:  # (an empty --config is refused just below, without quantize's warning)
        model = quantize_model(model, qc)
    if config:
        check_quantizes(model, qc, config)
    return model, qc


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that help that cannot be written (`hetq --help > /dev/full`)
    is an error: argparse ignores the write's error, so the command exited 0 without help."""

    def print_help(self, file=None):
        (file or sys.stdout).write(self.format_help())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hetq",
        description="Find, train and deploy heterogeneously quantized networks for FPGAs.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):
                continue  # feature not built (yet): its commands are simply absent
            raise
        module.register(sub)
    for command in sub.choices.values():
        show_defaults(command)
        refuse_empty(command)
    return parser


def refuse_empty(parser: argparse.ArgumentParser) -> None:
    """Every option (and argument) that takes a value refuses an empty one: `--preset ""`
    (an unset shell variable) trained a float model, `--hls4ml ""` skipped the export,
    `--out ""` wrote a search run into the current folder, each with exit status 0."""
    for action in parser._actions:
        if action.nargs == 0 or isinstance(action, argparse._HelpAction):
            continue
        t = action.type
        hint = ", or leave the option out" if action.option_strings else ""

        def typed(text, t=t, hint=hint):
            if isinstance(text, str) and not text.strip():
                raise argparse.ArgumentTypeError(
                    f"an empty value {text!r} (an unset shell variable?); give one{hint}")
            return t(text) if t is not None else text
        typed.__name__ = getattr(t, "__name__", "str")  # (argparse's "invalid X value")
        action.type = typed


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option whose help does not state its default gets "(default X)": the README
    promises that `hetq COMMAND --help` gives each one."""
    for action in parser._actions:
        d = action.default
        if (not action.option_strings or not action.help or action.help == argparse.SUPPRESS
                or "default" in action.help or d in (None, False, [], argparse.SUPPRESS)
                or isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction))):
            continue
        shown = " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)
        if isinstance(action, argparse.BooleanOptionalAction):
            shown = action.option_strings[0] if d else action.option_strings[-1]
        action.help += f" (default {shown})".replace("%", "%%")


def main(argv: list[str] | None = None) -> int:
    # once a closed pipe (`hetq report RUN | head`) cuts the output, the work still ends;
    # SIGTERM (kill, a batch system's limit) stops any command as Ctrl-C does, so that its
    # clean-up runs (a download's part file, a trial queued again) and it exits with 130
    from . import files  # (what a folder's lock says holds it: `hetq worker --out X`, where
    #                       python -m hetq.search.worker's argv gave `hetq --out X`)
    words = sys.argv[1:] if argv is None else list(argv)
    files.COMMAND = ["hetq", *words]
    signals = (signal.SIGTERM,)
    if words[:1] == ["worker"]:
        signals = ()  # a worker ends at once on SIGTERM (its search stops it so), from the
        # start: raised as Ctrl-C it could land inside Optuna's journal lock and leave that
        # broken; its running trial is failed and retried by the next worker or resumed search
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with surviving_closed_output(), interrupts_save(signals):
            return _main(argv)
    except KeyboardInterrupt:  # in the start-up (the parser, before _main's own handling):
        print("interrupted", file=sys.stderr)  # it was a traceback with exit status 1
        return 130
    except OSError as e:  # the output's last flush (`hetq --version > /dev/full`): a traceback
        print(f"hetq: error: {path_problem(e)}", file=sys.stderr)
        _abandon_stdout(e)
        return 1
    finally:
        files.COMMAND = None


# the options that name files or folders (export's `source` is a checkpoint; search's and
# cost's a quantizer string, which never starts with ~); --storage's journal and SQLite
# paths by `files.expand_storage`, --data's where the data is read
PATH_OPTIONS = ("checkpoint", "config", "hls4ml", "init", "json", "limit", "out", "qonnx",
                "quantization_config", "run", "source", "warm_start")


def _abandon_stdout(e: OSError) -> None:
    if e.filename == "standard output":  # (named so by progress._Survivor)
        from hetq.progress import abandon_stdout

        abandon_stdout()


def _expand_home(args) -> None:
    """`~` at the start of a path option's value, which the shell leaves as it is after `=`
    (`--out=~/runs`) or in quotes, is the home folder, as `--data jets-sim:~/x` took it
    (it made a folder named `~` in the current one). Names and regexes are left as given."""
    def expand(v):
        if isinstance(v, str) and v.startswith("~"):
            return os.path.expanduser(v)
        if isinstance(v, list):
            return [expand(x) for x in v]
        return v

    for k in PATH_OPTIONS:
        if hasattr(args, k):
            setattr(args, k, expand(getattr(args, k)))
    if isinstance(getattr(args, "storage", None), str):
        from .files import expand_storage

        args.storage = expand_storage(args.storage)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # (said by the command's parser, with its usage: it was 'hetq: error:
            # unrecognized arguments' under the top-level usage), unless given before it
            words = sys.argv[1:] if argv is None else list(argv)
            command = getattr(args, "command", None)
            before = words[:words.index(command)] if command in words else words
            subs = next(a for a in parser._actions
                        if isinstance(a, argparse._SubParsersAction))
            (parser if set(extra) & set(before) else
             subs.choices.get(command) or parser).error(
                f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        if not e.code:  # `--help`: its text is the output, which must reach its file
            sys.stdout.flush()
        raise
    _expand_home(args)
    if args.version:
        from hetq import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    shown = warnings.formatwarning  # warnings as one line each, like the errors
    warnings.formatwarning = lambda message, category, *_a, **_k: (
        f"hetq {args.command}: warning: {message}\n")
    _INTERRUPTED["saved"] = False
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # (a full stdout is the command's error, buffered or not)
        return 130 if code == 0 and _INTERRUPTED["saved"] else code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ConnectionError) as e:  # user errors: no traceback
        print(f"hetq {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (CommandFailed, FloatingPointError) as e:  # (training that diverged)
        print(f"hetq {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:
        text = str(e)
        if not isinstance(e, MemoryError) and not any(
                k in text for k in ("can't allocate memory", "out of memory",
                                    "CUDA out of memory")):
            raise
        first = text.splitlines()[0] if text else "MemoryError"
        print(f"hetq {args.command}: error: out of memory ({first}); a model, width or input "
              "shape too large for this machine?", file=sys.stderr)
        return 1
    except OSError as e:  # a path it cannot write (a file where a folder goes, ...), disk full
        print(f"hetq {args.command}: error: {path_problem(e)}", file=sys.stderr)
        _abandon_stdout(e)
        return 2 if isinstance(e, (FileExistsError, NotADirectoryError, IsADirectoryError,
                                   PermissionError)) else 1
    except Exception as e:  # a study's database gone for longer than its retries
        from .search.engine import storage_lost, transient

        if not transient(e):
            raise
        print(f"hetq {args.command}: error: {storage_lost(e)}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":  # pragma: no cover
    # `python -m hetq.cli`: run the imported module's main, whose state (the interruption
    # flag) is the one the commands' modules use, not this __main__ copy's
    from hetq.cli import main as _main_of_the_module

    sys.exit(_main_of_the_module())
