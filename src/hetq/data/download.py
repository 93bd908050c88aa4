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
    if override:
        d, source = override, "the cache argument"
    elif env:
        d, source = env, "$HETQ_CACHE"
    else:
        home = os.path.expanduser("~")
        if os.environ.get("HOME") == "" or not os.path.isabs(home):  # (HOME unset and no
            # user entry: a RuntimeError traceback; HOME='': a folder /.cache/hetq)
            raise ValueError(f"no home folder for the download cache, the default "
                             f"~/.cache/hetq (HOME is {os.environ.get('HOME')!r}); "
                             f"{_WRITABLE}")
        d, source = Path(home) / ".cache" / "hetq", "the default, ~/.cache/hetq"
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


class _BadURL(Exception):
    pass


class _CacheFull(Exception):
    pass


class _writing:
    """The part file, opened for writing; a write that fails (a full disk, a file-size limit)
    is the cache's problem, not the network's ('If this machine is offline...')."""

    def __init__(self, part: Path, dest: Path, url: str):
        self.part, self.dest, self.url = part, dest, url

    def _failed(self, e: OSError):
        return _CacheFull(f"cannot write the download of {self.url} to {self.dest.parent} "
                          f"({e.strerror or e}); nothing was cached: {_WRITABLE} with room "
                          "for it")

    def __enter__(self):
        try:
            self.f = open(self.part, "wb")
        except OSError as e:
            raise self._failed(e) from None
        return self

    def write(self, chunk: bytes) -> None:
        try:
            self.f.write(chunk)
        except OSError as e:
            raise self._failed(e) from None

    def __exit__(self, *exc):
        try:
            self.f.close()
        except OSError as e:  # (the last buffered bytes)
            if exc[0] is None:
                raise self._failed(e) from None
        return False


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
    if sha256 is not None:  # (a mistyped one deleted a good cached file, then blamed the
        want = str(sha256).strip().lower()  # download; upper case was a mismatch)
        if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
            raise ValueError(f"sha256={sha256!r}; expected 64 hexadecimal digits")
        sha256 = want
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
        try:
            r = urllib.request.urlopen(url, timeout=timeout)
        except ValueError as e:  # (not a URL: 'Invalid IPv6 URL', with no URL named)
            raise _BadURL(f"cannot download {url!r}: not a valid address ({e})") from None
        except UnicodeError:
            raise _BadURL(f"cannot download {url!r}: not a valid address (it has characters "
                          "outside ASCII)") from None
        with r:
            # (http.client's parse of Content-Length: None when chunked, or not a length;
            # the raw header gave int('abc'), or 'truncated' for a whole chunked body)
            length = getattr(r, "length", None)  # (a file: or data: answer has none)
            total = length if isinstance(length, int) and length > 0 else 0
            bar = None
            if progress:
                try:
                    from hetq.progress import bar as progress_bar

                    bar = progress_bar(total=total or None, unit="B", unit_scale=True,
                               desc=f"downloading {dest.name}")
                except ImportError:  # pragma: no cover
                    bar = None
            try:
                with _writing(part, dest, url) as f:
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
    except (_BadURL, _CacheFull) as e:
        part.unlink(missing_ok=True)
        raise ValueError(str(e)) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError,
            http.client.HTTPException) as e:
        part.unlink(missing_ok=True)
        if isinstance(e, urllib.error.HTTPError):  # the server answered: not offline
            reason, instead = f"the server answered HTTP {e.code} {e.reason}", "You can"
        else:
            reason, instead = getattr(e, "reason", e), "If this machine is offline,"
            if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
                reason = (f"no data for {timeout:g} s" if timeout else  # ('timed out'
                          "timed out")  # said not how long)
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
