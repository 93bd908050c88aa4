"""Console output that suits a terminal, a log file and a closed pipe alike.

`bar(...)` is a tqdm progress bar. On a terminal (or in Jupyter) it redraws in place. When
stderr is a file or a pipe (a batch job's log, `2> log`), each redraw is one plain line
instead of a carriage return, and at most one comes every `LOG_INTERVAL` seconds. So an
hours-long training leaves a readable line every half minute in the log rather than
megabytes of redraws.

`surviving_closed_output()` keeps a command running when its stdout or stderr is closed under
it (`hetq report runs/s1 | head`, a `tee` that was stopped): what it would still print is
dropped, and the work, and the files it writes, go on to the end.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

LOG_INTERVAL = 30.0  # seconds between two progress lines in a log


def _is_terminal(stream) -> bool:
    """A terminal, or a Jupyter cell's output (not a tty, but it redraws carriage returns in
    place as a terminal does)."""
    if type(stream).__module__.split(".")[0] == "ipykernel":
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


class _Lines:
    """A stream for tqdm that writes each redraw as one line and drops the blank ones it
    writes to clear the bar."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> int:
        line = s.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(s)

    def flush(self):
        self.stream.flush()


@functools.cache
def _log_bar_class():
    """tqdm whose refreshes (`set_postfix` asks for one every time) also wait for
    `mininterval`, as its updates do. (Made on first use: `hetq --help` need not load
    tqdm.)"""
    from tqdm import tqdm

    class LogBar(tqdm):
        def refresh(self, *args, **kwargs):
            now = self._time()
            last = getattr(self, "last_print_t", None)  # None: the first display
            if last is not None and now - last < self.mininterval:
                return False
            self.last_print_t = now
            return super().refresh(*args, **kwargs)

        def close(self):
            # a bar that is not kept (leave=False: the training bar) would end in a log with
            # its last periodic line, e.g. '0% 0/1'; its final state is written once instead
            if not self.disable and not self.leave and self.last_print_n != self.n:
                tqdm.refresh(self)
            super().close()

    return LogBar


def bar(*args, **kwargs):
    """`tqdm(*args, **kwargs)` that writes plain lines, at most every `LOG_INTERVAL` seconds,
    when its stream (stderr unless `file=` says otherwise) is not a terminal."""
    stream = kwargs.pop("file", None) or sys.stderr
    if kwargs.get("disable") or _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(*args, file=stream, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL)
    total = kwargs.get("total")
    if total is None and args:
        total = len(args[0]) if hasattr(args[0], "__len__") else None
    kwargs.setdefault("bar_format", "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} "
                                    "[{elapsed}<{remaining}, {rate_fmt}{postfix}]"
                      if total else "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]")
    return _log_bar_class()(*args, file=_Lines(stream), **kwargs)


class _Survivor:
    """A text stream that turns into /dev/null once its reader has gone (EPIPE), or from the
    start where there is none (None: the command was started with that descriptor closed,
    `hetq ... >&-`). log: a stream of messages only (stderr), which turns into /dev/null on
    any write error too (a full disk under `2> log`: the training was lost, for its log);
    other streams' errors are raised naming `name` ('No space left on device: standard
    output')."""

    def __init__(self, stream, name: str = "standard output", log: bool = False):
        self._stream = stream
        self.gone = stream is None
        self.name, self.log = name, log

    def _failed(self, e: OSError):
        if isinstance(e, BlockingIOError) and self.log:  # (EAGAIN: this line lost, only)
            return
        if isinstance(e, BrokenPipeError) or self.log:
            self._drop()
            return
        # raised, and the stream kept until the error is reported (`abandon_stdout`): a
        # caller that swallowed it lost every later line without a word
        if e.filename is None and e.errno is not None:
            raise type(e)(e.errno, e.strerror, self.name) from None
        raise e

    def _drop(self):
        self.gone = True
        # later writes, and the interpreter's final flush of what is still buffered, go to
        # /dev/null instead of failing again (child processes started later inherit it too)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = self._stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)

    def write(self, s: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(s)
            except OSError as e:
                self._failed(e)
        return len(s)

    def flush(self):
        if not self.gone:
            try:
                self._stream.flush()
            except OSError as e:
                self._failed(e)

    def isatty(self) -> bool:
        return not self.gone and _is_terminal(self._stream)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def abandon_stdout() -> None:
    """Once a write error on stdout has been reported: what stdout still holds goes to
    /dev/null (it failed again at the exit's flush: a second error, exit status 120)."""
    out = sys.stdout
    (out if isinstance(out, _Survivor) else _Survivor(out))._drop()


@contextlib.contextmanager
def surviving_closed_output():
    """Within the block, `sys.stdout` and `sys.stderr` drop writes once their reader has
    closed the pipe, instead of raising BrokenPipeError into the work; stderr also once it
    cannot be written at all (a full disk). stdout's other write errors name it, also from
    the flush at the end of the block."""
    saved = sys.stdout, sys.stderr
    sys.stdout = _Survivor(sys.stdout)
    sys.stderr = _Survivor(sys.stderr, "standard error", log=True)
    try:
        yield
    finally:
        out, err = sys.stdout, sys.stderr
        try:
            for survivor in (err, out):
                if isinstance(survivor, _Survivor):
                    survivor.flush()
        finally:
            sys.stdout, sys.stderr = saved
