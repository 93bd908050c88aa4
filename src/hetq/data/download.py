"""Download with a cache, a checksum and no partial files left behind."""

from __future__ import annotations

import glob
import hashlib
import http.client
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """`override`, else $HETQ_CACHE, else ~/.cache/hetq."""
    env = os.environ.get("HETQ_CACHE")
    d, source = ((override, "the cache argument") if override else (env, "$HETQ_CACHE") if env
                 else (Path.home() / ".cache" / "hetq", "the default, ~/.cache/hetq"))
    d = Path(d).expanduser()  # (a quoted HETQ_CACHE='~/...' reaches us unexpanded)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"the download cache folder {d} ({source}) cannot be made: "
                         f"{e.strerror or e}; {_WRITABLE}") from None
    return d


_WRITABLE = "set HETQ_CACHE (or pass cache=) to a folder you can write"


def sha256sum(path: Path) -> str:
    return file_digest(path, "sha256")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


STALE_PART_SECONDS = 24 * 3600


def _remove_stale_parts(dest: Path) -> None:
    """Delete the part files of `dest` that nobody has written to for a day (left by a
    process that was killed outright); younger ones may belong to a download in progress."""
    now = time.time()
    for p in dest.parent.glob(f"{glob.escape(dest.name)}.*.part"):
        try:
            if now - p.stat().st_mtime > STALE_PART_SECONDS:
                p.unlink()
        except OSError:  # gone meanwhile, or not ours to delete
            pass


def fetch(url: str, dest: Path, sha256: str | None = None, timeout: float = 30.0,
          progress: bool = True, manual_hint: str = "") -> Path:
    """Download `url` to `dest` unless it is already there (and matches `sha256`).

    The body is streamed to a part file of this call's own (`dest.PID-THREAD.part`) and renamed
    when complete, so an interrupted or truncated download never looks like a cached file,
    and concurrent downloads of one file do not write into each other's. A checksum mismatch
    deletes the file and raises ValueError naming both hashes.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256 is None or sha256sum(dest) == sha256:
            return dest
        dest.unlink(missing_ok=True)  # (another process may have deleted it first)
    _remove_stale_parts(dest)
    # a part file of its own: two processes (or threads) fetching the same file at once
    # each write theirs, and the last rename wins with the same bytes
    part = dest.with_name(f"{dest.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:  # made before connecting: a folder we cannot write is not a network failure
        part.touch()
    except OSError as e:
        raise ValueError(f"cannot write the download cache folder {dest.parent} "
                         f"({e.strerror or e}); {_WRITABLE}") from None
    n = 0  # bytes received
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            total = int(r.headers.get("Content-Length") or 0)
            bar = None
            if progress:
                try:
                    from hetq.progress import bar as progress_bar

                    bar = progress_bar(total=total or None, unit="B", unit_scale=True,
                               desc=f"downloading {dest.name}")
                except ImportError:  # pragma: no cover
                    bar = None
            try:
                with open(part, "wb") as f:
                    while True:
                        chunk = r.read(1 << 16)
                        if not chunk:
                            break
                        f.write(chunk)
                        n += len(chunk)
                        if bar is not None:  # (`if bar:` raises for a bar of unknown total)
                            bar.update(len(chunk))
            finally:  # (also when interrupted: its last line comes before the message)
                if bar is not None:
                    bar.close()
        if total and n != total:
            raise ValueError(f"download of {url} is truncated: got {n} of {total} bytes; "
                             "nothing was cached, try again")
    except http.client.IncompleteRead as e:  # a chunked body cut short (no Content-Length)
        part.unlink(missing_ok=True)
        raise ValueError(f"download of {url} is truncated: the connection closed after "
                         f"{n + len(e.partial)} bytes; nothing was cached, try again") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError,
            http.client.HTTPException) as e:
        part.unlink(missing_ok=True)
        if isinstance(e, urllib.error.HTTPError):  # the server answered: not offline
            reason, instead = f"the server answered HTTP {e.code} {e.reason}", "You can"
        else:
            reason, instead = getattr(e, "reason", e), "If this machine is offline,"
        raise ConnectionError(
            f"cannot download {url} ({reason}). {instead} download the file elsewhere and "
            f"pass its path instead{manual_hint}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if sha256 is not None:
        got = sha256sum(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise ValueError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
                             "the corrupted download was deleted")
    os.replace(part, dest)
    return dest
