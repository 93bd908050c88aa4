"""Console output: progress bars in log files, and commands whose output pipe is closed."""

import io
import os
import subprocess
import sys

from hetq.cli import main
from hetq.progress import bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_progress_bar_in_a_log_writes_plain_lines_at_most_every_interval():
    """A log (not a terminal) gets one line per display, no carriage returns, and
    `set_postfix` (which asks for a refresh every time) waits for the interval as updates do:
    within the default 30 s only the opening and the closing line."""
    log = io.StringIO()
    b = bar(total=50, desc="training", unit="epoch", file=log)
    for i in range(50):
        b.set_postfix(loss=f"{1 / (i + 1):.4f}")
        b.update(1)
    b.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 2, lines
    assert lines[0].startswith("training:   0% 0/50 [")
    assert lines[1].startswith("training: 100% 50/50 [") and "loss=0.0200" in lines[1]

    log = io.StringIO()  # with no interval, every update is a line of its own
    b = bar(total=3, desc="x", file=log, mininterval=0, leave=False)
    for _ in range(3):
        b.update(1)
    b.close()  # leave=False clears the bar on a terminal: nothing more in a log
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == [
        "x:   0% 0/3", "x:  33% 1/3", "x:  67% 2/3", "x: 100% 3/3"]

    # a bar that is not kept (the training bar) ended in a log with its last periodic line,
    # '0% 0/3', however far it got: its final state is written once when it closes
    log = io.StringIO()
    b = bar(total=3, desc="training", file=log, leave=False)
    for _ in range(3):
        b.update(1)
    b.close()
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == [
        "training:   0% 0/3", "training: 100% 3/3"]


class _JupyterOutput(io.StringIO):  # ipykernel's OutStream: not a tty, but it redraws
    pass


_JupyterOutput.__module__ = "ipykernel.iostream"


def test_a_log_line_of_unknown_total_gives_no_percentage():
    """A download without a Content-Length: the lines say how much came, not '0%'."""
    log = io.StringIO()
    b = bar(total=None, unit="B", unit_scale=True, desc="downloading j.arff", file=log,
            mininterval=0)
    b.update(3_000_000)
    b.close()
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == [
        "downloading j.arff: 0.00", "downloading j.arff: 3.00M", "downloading j.arff: 3.00M"]
    log = io.StringIO()  # an iterable's length is its total
    for _ in bar(range(2), desc="x", file=log, mininterval=0):
        pass
    assert log.getvalue().splitlines()[-1].startswith("x: 100% 2/2 [")


def test_a_progress_bar_on_a_terminal_or_in_jupyter_redraws_in_place():
    for out in (_Terminal(), _JupyterOutput()):
        b = bar(total=3, desc="x", file=out, mininterval=0)
        for _ in range(3):
            b.update(1)
        b.close()
        assert out.getvalue().count("\r") >= 4 and "|" in out.getvalue()
        assert out.getvalue().count("\n") == 1  # the one at the end


class _PipeClosedAfter:
    """stdout whose reader goes away after `lines` lines, as with `hetq ... | head -1`."""

    def __init__(self, lines):
        self.left, self.text = lines, ""

    def write(self, s):
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.text += s
        self.left -= s.count("\n")
        return len(s)

    def flush(self):
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_does_not_cut_the_work_short(tmp_path, monkeypatch, capsys):
    """`hetq train ... | head -1`: the rest of the output is dropped, and the command still
    writes everything it would have (the ROC plot comes after most of the printing) and
    exits with 0, not with "error: [Errno 32] Broken pipe"."""
    out = _PipeClosedAfter(1)
    monkeypatch.setattr(sys, "stdout", out)
    code = main(["train", "--model-widths", "8", "--epochs", "2", "--data",
                 "synthetic:n=300,seed=1", "--out", str(tmp_path / "t"), "--no-progress"])
    assert code == 0
    assert " on Dataset(" in out.text and out.text.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "metrics.json", "model.pt", "roc.png"]
    assert "Broken pipe" not in capsys.readouterr().err
    assert sys.stdout is out  # the stream is given back as it was


def test_a_command_whose_stdout_pipe_is_already_closed_runs_to_the_end(tmp_path):
    """The same with a real pipe whose reading end is closed before the command starts:
    every write fails with EPIPE, including Python's last flush at exit, which would
    otherwise print "Exception ignored ... BrokenPipeError" and exit with 120."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hetq.cli", "train", "--model-widths", "8", "--epochs", "2",
             "--data", "synthetic:n=300,seed=1", "--out", "t"],
            cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert "Broken pipe" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert (tmp_path / "t" / "roc.png").is_file()
    assert "training:   0% 0/2 [" in proc.stderr  # the progress, as log lines


def test_a_command_started_without_stdout_or_stderr_runs_to_the_end(tmp_path):
    """`hetq ... >&-` (or 2>&-): Python then has no sys.stdout (None), which print() skips
    but the closed-pipe guard must also take as a stream to drop."""
    for closed in (1, 2):
        out = tmp_path / f"t{closed}"
        proc = subprocess.run(
            [sys.executable, "-m", "hetq.cli", "train", "--model-widths", "8", "--epochs", "2",
             "--data", "synthetic:n=300,seed=1", "--out", str(out)],
            capture_output=True, text=True, timeout=120,
            preexec_fn=lambda fd=closed: os.close(fd))  # after the pipes are set up
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt", "roc.png"]
        assert proc.stdout == "" if closed == 1 else "checkpoint:" in proc.stdout
        assert proc.stderr == "" if closed == 2 else "Traceback" not in proc.stderr


def test_a_full_log_does_not_lose_the_work_and_a_full_output_is_named(tmp_path):
    """`2> /dev/full` (a log on a full disk): the first progress line raised ENOSPC and the
    training was lost, exit 1 without a word. A full stdout, where the command's output
    goes, is an error naming it (`hetq --version > /dev/full` was a traceback)."""
    if not os.path.exists("/dev/full"):
        import pytest

        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "hetq.cli", "train", "--model-widths", "8", "--epochs", "2",
             "--data", "synthetic:n=300,seed=1", "--out", "t"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=full, text=True, timeout=120)
        assert proc.returncode == 0
        assert sorted(p.name for p in (tmp_path / "t").iterdir()) == \
            ["metrics.json", "model.pt", "roc.png"]
        assert "checkpoint:" in proc.stdout
        for args, prefix in ((["--version"], "hetq"), (["--help"], "hetq"),
                             (["train", "--help"], "hetq"),  # (argparse exited 0)
                             (["cost", "--model", "jet_mlp", "--preset", "q6"], "hetq cost")):
            for unbuffered in ("1", ""):  # (the error comes at a write, or at the last flush)
                proc = subprocess.run([sys.executable, "-m", "hetq.cli", *args], cwd=tmp_path,
                                      stdout=full, stderr=subprocess.PIPE, text=True,
                                      timeout=120,
                                      env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
                assert proc.returncode == 1
                assert proc.stderr == \
                    f"{prefix}: error: No space left on device: standard output\n"


def test_a_full_stdout_stays_an_error_until_reported_and_eagain_keeps_stderr(monkeypatch):
    """The stdout wrapper dropped the stream before raising: a caller that swallowed the
    error (the ILP's flush) lost every later line without a word. stderr was dropped on
    EAGAIN too (a non-blocking terminal), for good."""
    import errno

    import pytest

    from hetq.progress import abandon_stdout, surviving_closed_output
    from hetq.search.hessian.ilp import _solver_output_hidden

    class Full(io.StringIO):
        def flush(self):
            if self.getvalue():
                raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self):
            raise io.UnsupportedOperation

    class Busy(io.StringIO):
        busy = True

        def write(self, s):
            if self.busy:
                self.busy = False
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            return super().write(s)

    monkeypatch.setattr(sys, "stdout", Full())
    err = Busy()
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(OSError) as e:
        with surviving_closed_output():
            print("line 1")
            with pytest.raises(OSError):
                with _solver_output_hidden():
                    pass
            print("line 2")
            print("lost", file=sys.stderr)
            print("kept", file=sys.stderr)
            sys.stdout.flush()  # still an error: nothing was reported yet
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, "standard output")
    assert err.getvalue() == "\nkept\n"  # ("lost" itself: print writes its end apart)
    with surviving_closed_output():
        abandon_stdout()
        print("after the report")  # (gone: no second error)
