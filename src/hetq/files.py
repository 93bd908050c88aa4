"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path


def write_whole(path: str | Path, write: Callable[[Path], object],
                replace: bool = True) -> Path:
    """`write(tmp)` to a temporary file beside `path`, then a rename onto `path`: a reader
    (a browser, a second process) or a kill mid-write never sees half a file. The temporary
    is named by this process, so two writers of one path do not clash, and it is removed
    when anything fails (a folder at `path`, a full disk, Ctrl-C). replace=False: a file
    at `path` is kept, and FileExistsError raised, also when another process made it in the
    meantime (a hard link, which cannot replace)."""
    given = path = Path(path)
    if path.is_symlink():  # written where it points (the link was replaced by a file, and a
        path = Path(os.path.realpath(path))  # dangling one taken for another run's file)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        # made here first, so that a folder that cannot be written is an OSError (torch.save
        # raised a RuntimeError, after the work, that named no file)
        open(tmp, "wb").close()
        write(tmp)
        if replace:
            os.replace(tmp, path)
        else:
            _create(tmp, path)
    except OSError as e:  # named by the file asked for, not the temporary (a read-only folder)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if e.errno is None:
            raise
        raise type(e)(e.errno, e.strerror, str(path)) from None
    except BaseException:
        with contextlib.suppress(OSError):  # (EROFS even for a file that is not there)
            tmp.unlink(missing_ok=True)
        raise
    return given  # (the link, where one was given: what the user named)


def expand_storage(storage: str | None) -> str | None:
    """A `--storage` with `~` for the home folder in its journal path (`~/s.journal`,
    `journal:~/s.journal`) or SQLite path (`sqlite:///~/x.db`) made absolute, so that every
    command reads it alike; anything else as it is."""
    if storage is None:
        return None
    for prefix in ("", "journal:", "sqlite:///"):
        if storage.startswith(prefix + "~"):
            return prefix + os.path.expanduser(storage[len(prefix):])
    return storage


def torch_save_whole(obj, path: str | Path, replace: bool = True) -> Path:
    """`torch.save(obj)` to `path` through `write_whole`, into a file object: a full disk
    is then an OSError naming `path` (torch's own writer, given a file name, raised a
    RuntimeError, 'unexpected pos 4032 vs 3926', with a traceback)."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return write_whole(path, write, replace)


def _create(tmp: Path, path: Path) -> None:
    """`tmp` renamed to `path` unless `path` exists (FileExistsError, `tmp` left)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: checked, then renamed
        if path.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


LOCK_NAME = ".hetq.lock"
COMMAND: list[str] | None = None  # the hetq command line, as `hetq.cli.main` was given it


def _me() -> str:
    """This process as a folder's lock names it: its pid and whole command (it held only the
    first two words: 'hetq train --epochs')."""
    import shlex
    import sys

    words = COMMAND or ["hetq", *sys.argv[1:]]
    me = f"pid {os.getpid()}: {shlex.join(words)}"
    return me if len(me) <= 290 else me[:287] + "..."


def _holder(fd: int) -> str:
    """What the holder of a lock file wrote in it (its pid and command)."""
    return os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"


def lock_holder(folder: str | Path) -> str | None:
    """Who holds `folder`'s lock (see `folder_lock`), or None when nobody does."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | Path, option: str = "--out", wait: bool = False,
                lock_name: str = LOCK_NAME, label: str | Path | None = None,
                quiet: bool = False):
    """Hold `folder`'s exclusive lock (a `.hetq.lock` file in it, locked with flock: the
    kernel releases it when the process dies) for the block. Held by another hetq command:
    a ValueError naming it (`wait`: a note, then wait for it). Two commands writing one
    folder at once replaced each other's files (a model.pt, a front, a float.pt) without a
    word. The lock file goes when the lock does, and a folder made here that holds nothing
    else is removed again. `lock_name`, `label`: another lock file in `folder`, and what the
    message names; `quiet`: wait without the note (a search's own workers, which wait for
    each other)."""
    import fcntl
    import sys

    folder = Path(folder)
    path = folder / lock_name
    made = said = False
    while True:
        if not folder.is_dir():  # (or made again: the holder waited for removed it)
            top = folder  # the highest folder made here (`runs/` of `runs/s1` too)
            while not top.parent.is_dir() and top.parent != top:
                top = top.parent
            folder.mkdir(parents=True, exist_ok=True)
            made = made or top
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # (the folder went between the two lines)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            if not wait:
                os.close(fd)
                raise ValueError(f"{label or folder} is in use by another hetq command "
                                 f"({who}); wait for it to finish, or give another "
                                 f"{option}") from None
            if not said and not quiet:
                print(f"{label or folder} is in use by another hetq command ({who}); waiting "
                      "for it", file=sys.stderr, flush=True)
                said = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # (the holder removed the file as it let go: lock the new one instead)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        try:  # (surrogateescape: a non-ASCII --out under an ASCII locale failed to encode)
            os.ftruncate(fd, 0)
            os.pwrite(fd, _me().encode(errors="surrogateescape"), 0)
        except OSError as e:  # (a full disk: 'No space left on device', naming no file)
            raise type(e)(e.errno, e.strerror, str(path)) from None
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if made:  # each folder made here that holds nothing, up to the highest
            here = folder
            with contextlib.suppress(OSError):
                while True:
                    here.rmdir()  # (only if empty)
                    if here == made:
                        break
                    here = here.parent
