"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def write_whole(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` to a temporary file beside `path`, then a rename onto `path`: a reader
    (a browser, a second process) or a kill mid-write never sees half a file. The temporary
    is named by this process, so two writers of one path do not clash, and it is removed
    when anything fails (a folder at `path`, a full disk, Ctrl-C)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        # made here first, so that a folder that cannot be written is an OSError (torch.save
        # raised a RuntimeError, after the work, that named no file)
        open(tmp, "wb").close()
        write(tmp)
        os.replace(tmp, path)
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
    return path
