"""Data: the real jet loader against a local HTTP server, the embedded sample, validation."""

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from hetq.data import get_dataset, load_jets, load_jets_sim, validate_arrays
from hetq.data.jets import CLASSES, EMBEDDED, FEATURES, download_jets, tutorial_split


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """The local servers are asked directly: with http_proxy set (many clusters' CI), urllib
    sent these tests' requests to the proxy."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def make_arff(n=200, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    lines = ["% hls4ml jets fixture", "@relation hls4ml_lhc_jets_hlf"]
    lines += [f"@attribute {f} numeric" for f in FEATURES]
    lines += ["@attribute class {g,q,t,w,z}", "@data"]
    for i in range(n):
        vals = ",".join(f"{v:.5f}" for v in rng.normal(size=16) + i % 5)
        lines.append(f"{vals},'{CLASSES[i % 5]}'")
    return ("\n".join(lines) + "\n").encode()


class Server:
    """Serves a dict path -> bytes on 127.0.0.1; counts requests; can truncate bodies."""

    def __init__(self, files, truncate=(), chunk_delay=0.0, no_length=False, length=None):
        self.files, self.truncate, self.requests = files, set(truncate), []
        self.chunk_delay, self.no_length, self.length = chunk_delay, no_length, length
        self.chunked_cut = set()  # paths sent chunked, the connection closed mid-body
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if self.path in outer.chunked_cut:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"%x\r\n%s\r\n" % (100, body[:100]))
                    self.wfile.write(b"%x\r\n" % 100)  # a chunk announced, never sent
                    return
                if not outer.no_length:  # else the body ends when the connection closes
                    self.send_header("Content-Length", outer.length or str(len(body)))
                self.end_headers()
                body = body[: len(body) // 2] if self.path in outer.truncate else body
                step = len(body) // 8 + 1 if outer.chunk_delay else len(body) or 1
                for i in range(0, len(body), step):  # slowly with chunk_delay
                    self.wfile.write(body[i:i + step])
                    time.sleep(outer.chunk_delay)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


def openml_files(base, arff, md5=None):
    desc = {"data_set_description": {"url": f"{base}/files/jets.arff",
                                     "md5_checksum": md5 or hashlib.md5(arff).hexdigest()}}
    return {"/api/data/42468": json.dumps(desc).encode(), "/files/jets.arff": arff}


def test_download_parse_split_and_cache(tmp_path):
    arff = make_arff()
    srv = Server({})
    srv.files.update(openml_files(srv.url, arff))
    with srv:
        d = load_jets(cache=tmp_path, api=f"{srv.url}/api", progress=False)
        first = list(srv.requests)
        d2 = load_jets(cache=tmp_path, api=f"{srv.url}/api", progress=False)
        assert srv.requests == first  # the second call used the cache only
    assert first == ["/api/data/42468", "/files/jets.arff"]
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (120, 40, 40)
    assert d.classes == CLASSES and d.features == FEATURES
    assert np.allclose(d.X_train.mean(0), 0, atol=1e-5)  # standardised on train only
    assert np.allclose(d.X_train.std(0), 1, atol=1e-4)
    assert np.array_equal(d.X_test, d2.X_test)


def test_split_is_sklearns_train_test_split():
    from sklearn.model_selection import train_test_split

    idx = np.arange(1003)
    tr, te = train_test_split(idx, test_size=0.2, random_state=42)
    mtr, mte = tutorial_split(1003)
    assert np.array_equal(tr, mtr) and np.array_equal(te, mte)


def test_download_problems_of_the_cache_the_address_and_the_headers_are_named(
        tmp_path, monkeypatch):
    """A full disk under the cache was 'cannot download ... If this machine is offline';
    HOME unset (no user entry) a RuntimeError traceback, HOME='' a folder /.cache/hetq; a
    description's bad URL 'Invalid IPv6 URL', naming none; Content-Length: abc an int()
    error; a stalled server 'timed out', saying not how long."""
    from hetq.data.download import cache_dir

    arff = make_arff(2000)
    srv = Server({}, length="abc")
    srv.files.update(openml_files(srv.url, arff))
    with srv:
        code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
                "from hetq.data.jets import download_jets\n"
                "try: download_jets(cache=sys.argv[1], api=sys.argv[2], progress=False)\n"
                "except ValueError as e: print(e)")
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "full"),
                            f"{srv.url}/api"], capture_output=True, text=True, timeout=120)
        assert r.stdout.startswith(f"cannot write the download of {srv.url}/files/jets.arff to "
                                   f"{tmp_path / 'full'} (File too large); nothing was cached: "
                                   "set HETQ_CACHE"), r.stdout + r.stderr
        assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["openml_42468-" + \
            hashlib.sha256(f"{srv.url}/api".encode()).hexdigest()[:12] + ".json"]
        # ... and with room, Content-Length: abc is no length (http.client's reading)
        path = download_jets(cache=tmp_path / "ok", api=f"{srv.url}/api", progress=False)
        assert path.read_bytes() == arff
    srv = Server({})
    srv.files.update(openml_files(srv.url, arff))
    srv.files["/api/data/42468"] = json.dumps({"data_set_description": {
        "url": "http://[::1/f", "md5_checksum": "0" * 32}}).encode()
    with srv, pytest.raises(ValueError, match=r"cannot download 'http://\[::1/f': not a valid "
                                              r"address \(Invalid IPv6 URL\)"):
        download_jets(cache=tmp_path / "u", api=f"{srv.url}/api", progress=False)
    srv = Server({}, chunk_delay=0.6)
    srv.files.update(openml_files(srv.url, arff))
    with srv, pytest.raises(ConnectionError, match=r"cannot download .* \(no data for 0.2 s\)"):
        download_jets(cache=tmp_path / "t", api=f"{srv.url}/api", progress=False, timeout=0.2)
    # a file: address (an offline mirror) has no Content-Length to read (an AttributeError)
    from hetq.data.download import fetch

    (tmp_path / "mirror.arff").write_bytes(arff)
    got = fetch((tmp_path / "mirror.arff").as_uri(), tmp_path / "copy.arff",
                sha256=hashlib.sha256(arff).hexdigest(), progress=False)
    assert got.read_bytes() == arff
    monkeypatch.delenv("HETQ_CACHE", raising=False)
    monkeypatch.setenv("HOME", "")
    with pytest.raises(ValueError, match=r"no home folder for the download cache, the default "
                                         r"~/.cache/hetq \(HOME is ''\); set HETQ_CACHE"):
        cache_dir()
    monkeypatch.delenv("HOME")
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)  # (and no user entry)
    with pytest.raises(ValueError, match=r"\(HOME is None\); set HETQ_CACHE"):
        cache_dir()


def test_checksum_mismatch_deletes_file(tmp_path):
    arff = make_arff()
    srv = Server({})
    srv.files.update(openml_files(srv.url, arff, md5="0" * 32))
    msg = r"checksum mismatch.*expected md5 0{32}.*got [0-9a-f]{32}.*deleted"
    with srv, pytest.raises(ValueError, match=msg):
        download_jets(cache=tmp_path, api=f"{srv.url}/api", progress=False)
    assert not (tmp_path / "hls4ml_lhc_jets_hlf.arff").exists()
    srv2 = Server({})
    srv2.files.update(openml_files(srv2.url, arff))
    with srv2, pytest.raises(ValueError, match="expected sha256 (ab){32}, got "):
        download_jets(cache=tmp_path / "b", api=f"{srv2.url}/api", sha256="ab" * 32,
                      progress=False)
    # a mistyped sha256 is refused before it deletes a good cached file; case and spaces
    # around it do not matter (upper case was a mismatch, and the file was deleted)
    srv3 = Server({})
    srv3.files.update(openml_files(srv3.url, arff))
    with srv3:
        path = download_jets(cache=tmp_path / "c", api=f"{srv3.url}/api", progress=False)
        asked = len(srv3.requests)
        for bad in ("abc", "g" * 64):
            with pytest.raises(ValueError, match=r"sha256=.*; expected 64 hexadecimal digits"):
                download_jets(cache=tmp_path / "c", api=f"{srv3.url}/api", sha256=bad,
                              progress=False)
        good = f" {hashlib.sha256(arff).hexdigest().upper()} "
        assert download_jets(cache=tmp_path / "c", api=f"{srv3.url}/api", sha256=good,
                             progress=False) == path and path.read_bytes() == arff
        assert not [r for r in srv3.requests[asked:] if r.endswith(".arff")]


def test_a_checksum_mismatch_drops_the_cached_description_too(tmp_path):
    """The OpenML description (with the md5) was cached for good: after OpenML replaced the
    file, every run downloaded the new file and refused it against the old md5."""
    arff = make_arff()
    srv = Server({})
    with srv:
        srv.files.update(openml_files(srv.url, arff, md5="0" * 32))
        with pytest.raises(ValueError, match="the file and OpenML's description of it were "
                                             "deleted, so the next run downloads both anew"):
            download_jets(cache=tmp_path, api=f"{srv.url}/api", progress=False)
        srv.files.update(openml_files(srv.url, arff))  # the description now matches the file
        path = download_jets(cache=tmp_path, api=f"{srv.url}/api", progress=False)
        assert path.read_bytes() == arff
        assert srv.requests.count("/api/data/42468") == 2


def test_each_api_address_has_its_own_cached_description(tmp_path):
    arff = make_arff()
    a, b = Server({}), Server({})
    with a, b:
        a.files.update(openml_files(a.url, arff, md5="0" * 32))  # a's file fails its md5
        b.files.update(openml_files(b.url, arff))
        path = download_jets(cache=tmp_path, api=f"{b.url}/api", progress=False)
        assert path.read_bytes() == arff and b.requests == ["/api/data/42468", "/files/jets.arff"]
        path.unlink()
        with pytest.raises(ValueError, match="checksum mismatch"):  # a is asked, not b's copy
            download_jets(cache=tmp_path, api=f"{a.url}/api", progress=False)
        assert a.requests == ["/api/data/42468", "/files/jets.arff"]


def test_a_chunked_download_cut_short_is_named_not_a_traceback(tmp_path):
    """http.client's IncompleteRead (a chunked body cut short) is neither an OSError nor a
    ValueError: it escaped as a traceback that named no URL."""
    from hetq.data.download import fetch

    srv = Server({"/f.bin": bytes(range(256)) * 4})
    srv.chunked_cut.add("/f.bin")
    with srv, pytest.raises(ValueError, match=re.escape(
            f"download of {srv.url}/f.bin is truncated: the connection closed after 100 bytes; "
            "nothing was cached, try again")):
        fetch(f"{srv.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_errors_give_the_status_and_no_offline_hint(tmp_path):
    srv = Server({})
    with srv, pytest.raises(ConnectionError, match=re.escape(
            f"cannot download {srv.url}/api/data/42468 (the server answered HTTP 404 Not Found)."
            " You can download the file elsewhere and pass its path instead")):
        download_jets(cache=tmp_path, api=f"{srv.url}/api", progress=False)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_cache_folder_that_cannot_be_written_is_not_called_a_network_failure():
    """Said 'cannot download ... If this machine is offline', after connecting, for a cache
    folder it could not write ('/proc': not writable even by root)."""
    srv = Server({})
    with srv, pytest.raises(ValueError, match=r"cannot write the download cache folder /proc "
                                              r"\(.+\); set HETQ_CACHE \(or pass cache=\) to a "
                                              r"folder you can write"):
        download_jets(cache="/proc", api=f"{srv.url}/api", progress=False)
    assert srv.requests == []


def test_home_is_expanded_in_the_cache_folder_and_file_paths(tmp_path, monkeypatch):
    """HETQ_CACHE='~/c' made a folder named '~' in the current directory, and
    --data jets:~/x.csv (which the shell does not expand after the colon) was not found."""
    from hetq.data.download import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HETQ_CACHE", "~/c")
    assert cache_dir() == tmp_path / "c" and not (tmp_path / "~").exists()
    (tmp_path / "j.arff").write_bytes(make_arff(100))
    assert len(get_dataset("jets:~/j.arff").y_test) == 20
    np.savez(tmp_path / "s.npz", **{k: v for k, v in np.load(EMBEDDED).items()})
    assert get_dataset("jets-sim:~/s.npz").n_classes == 5


def test_a_download_without_a_length_with_its_progress_bar(tmp_path, capsys):
    """A server that sends no Content-Length (chunked or close-delimited bodies) ended the
    download in 'TypeError: bool() undefined when iterable == total == None' (the bar)."""
    arff = make_arff()
    srv = Server({}, no_length=True)
    srv.files.update(openml_files(srv.url, arff))
    with srv:
        path = download_jets(cache=tmp_path, api=f"{srv.url}/api", progress=True)
    assert path.read_bytes() == arff
    err = capsys.readouterr().err
    assert "downloading hls4ml_lhc_jets_hlf.arff" in err and "%" not in err


def test_a_download_that_is_not_the_data_is_not_kept(tmp_path):
    """A proxy's HTML page where OpenML gives no checksum was cached as the ARFF, and every
    later run failed on it; a description of the wrong shape ended in a TypeError or
    AttributeError traceback, and stayed cached."""
    srv = Server({})
    html = b"<html><body>Please log in to the guest network</body></html>"
    srv.files.update(openml_files(srv.url, html))
    desc = json.loads(srv.files["/api/data/42468"])
    del desc["data_set_description"]["md5_checksum"]
    srv.files["/api/data/42468"] = json.dumps(desc).encode()
    cached = tmp_path / "hls4ml_lhc_jets_hlf.arff"
    with srv:
        with pytest.raises(ValueError, match=r"not an ARFF file .*; the downloaded file was "
                                             r"deleted, so the next run downloads it anew"):
            load_jets(cache=tmp_path, api=f"{srv.url}/api", progress=False)
        assert not cached.exists()
        srv.files["/files/jets.arff"] = make_arff()  # the next run gets the real file
        assert len(load_jets(cache=tmp_path, api=f"{srv.url}/api", progress=False).y_test) == 40
        for bad, why in (({"data_set_description": ["x"]}, "no 'data_set_description' object"),
                         ({"data_set_description": {"url": None}},
                          "its 'url' is None; expected an http(s) address"),
                         ([1, 2], "no 'data_set_description' object"),
                         ("<html>", "not JSON: b'<html>'")):
            srv.files["/api/data/42468"] = (bad.encode() if isinstance(bad, str)
                                            else json.dumps(bad).encode())
            with pytest.raises(ValueError, match=re.escape(
                    f"unexpected OpenML description at {srv.url}/api/data/42468 ({why}); it "
                    "was not kept")):
                download_jets(cache=tmp_path / "new", api=f"{srv.url}/api", progress=False)
            assert not list((tmp_path / "new").glob("openml_42468*.json"))
    # with the checksum right, the same bytes come again: the file is kept and that is said
    # (it was deleted and downloaded on every run, 'the next run downloads it anew')
    srv = Server({})
    srv.files.update(openml_files(srv.url, b"@relation x\n@data\n1,2\n"))
    with srv:
        with pytest.raises(ValueError, match=r"; the download matches its checksum, so "
                                             r"downloading it again would not help"):
            load_jets(cache=tmp_path / "c", api=f"{srv.url}/api", progress=False)
        assert (tmp_path / "c" / "hls4ml_lhc_jets_hlf.arff").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_sigterm_during_a_download_leaves_no_part_file(tmp_path):
    """`kill PID` (or a batch system's limit) during `--data jets`'s download ended the
    process at once: exit 143, and its part file stayed in the cache for a day."""
    import signal
    import subprocess

    arff = make_arff(2000)
    srv = Server({}, chunk_delay=0.5)  # 8 chunks, half a second apart
    srv.files.update(openml_files(srv.url, arff))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "openml_42468.json").write_bytes(srv.files["/api/data/42468"])  # (its URL)
    env = {**os.environ, "HETQ_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "hetq.cli", "train", "--data", "jets", "--epochs", "1",
           "--out", str(tmp_path / "t"), "--no-progress"]
    with srv:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        t0 = time.time()
        while not list(cache.glob("*.part")) and time.time() - t0 < 60:
            time.sleep(0.05)
        assert list(cache.glob("*.part")), "the download did not start"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert out.rstrip().endswith("interrupted") and "Traceback" not in out, out
    assert "downloading" not in out, out  # --no-progress hides the download's bar too
    assert sorted(p.name for p in cache.iterdir()) == ["openml_42468.json"]


def test_a_cache_folder_that_cannot_be_made_is_named(tmp_path, monkeypatch):
    """A bad $HETQ_CACHE gave "[Errno 2] No such file or directory: '/proc/nope'", without
    saying that it was the cache folder, or where it came from."""
    from hetq.data.download import cache_dir

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("HETQ_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.raises(ValueError, match=re.escape(
            f"the download cache folder {tmp_path / 'afile' / 'cache'} ($HETQ_CACHE) cannot be "
            "made: Not a directory; set HETQ_CACHE (or pass cache=) to a folder you can write")):
        cache_dir()
    assert cache_dir(tmp_path / "c") == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_truncated_download_leaves_no_cache(tmp_path):
    arff = make_arff()
    srv = Server({})
    srv.files.update(openml_files(srv.url, arff))
    srv.truncate.add("/files/jets.arff")
    with srv, pytest.raises((ValueError, ConnectionError), match="truncated|cannot download"):
        download_jets(cache=tmp_path, api=f"{srv.url}/api", progress=False)
    assert not any(p.name.startswith("hls4ml") for p in tmp_path.iterdir())


def test_concurrent_downloads_of_one_file_do_not_collide(tmp_path):
    """Two downloads of the same file at once (e.g. two workers sharing a cache): each writes
    its own part file, both succeed, the cache holds the file and no part file is left."""
    from hetq.data.download import fetch

    body = bytes(range(256)) * 4096  # 1 MiB, sent slowly so that the two overlap
    srv = Server({"/f.bin": body}, chunk_delay=0.05)
    dest, errors = tmp_path / "f.bin", []

    def get():
        try:
            fetch(f"{srv.url}/f.bin", dest, sha256=hashlib.sha256(body).hexdigest(),
                  progress=False)
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    with srv:
        threads = [threading.Thread(target=get) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and len(srv.requests) == 2
    assert dest.read_bytes() == body and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    # a part file left by a killed download is removed once it is a day old; a younger one
    # (perhaps a download in progress) is kept
    old, young = tmp_path / "g.bin.1-2.part", tmp_path / "g.bin.3-4.part"
    for p in (old, young):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    srv = Server({"/g.bin": body[:1000]})
    with srv:
        fetch(f"{srv.url}/g.bin", tmp_path / "g.bin", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", "g.bin", young.name]


def test_offline_error_names_url_and_manual_download(tmp_path):
    msg = r"(?s)127\.0\.0\.1:9/api/data/42468.*manual download"
    with pytest.raises(ConnectionError, match=msg):
        download_jets(cache=tmp_path, api="http://127.0.0.1:9/api", timeout=2, progress=False)


def test_local_files_in_published_forms(tmp_path):
    arff = make_arff(100)
    (tmp_path / "j.arff").write_bytes(arff)
    import gzip

    (tmp_path / "j.arff.gz").write_bytes(gzip.compress(arff))
    a, b = load_jets(tmp_path / "j.arff"), load_jets(tmp_path / "j.arff.gz")
    assert np.array_equal(a.X_train, b.X_train)
    rows = [line for line in arff.decode().splitlines() if line and line[0] not in "%@"]
    csv_text = ",".join(FEATURES + ["class"]) + "\n" + "\n".join(r.replace("'", "")
                                                                  for r in rows)
    (tmp_path / "j.csv").write_text(csv_text)
    c = get_dataset(f"jets:{tmp_path / 'j.csv'}")
    assert np.allclose(c.X_train, a.X_train) and np.array_equal(c.y_test, a.y_test)
    (tmp_path / "j.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown format"):
        load_jets(tmp_path / "j.txt")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_jets(tmp_path / "missing.arff")


def test_the_zenodo_hdf5_file_is_read_like_the_arff(tmp_path):
    """The Zenodo `.z` (HDF5, tree t_allpar_new, one-hot j_g..j_z) gives the same dataset as
    the ARFF of the same jets; a file that is not HDF5 is named in the error."""
    h5py = pytest.importorskip("h5py")
    arff = make_arff(100)
    (tmp_path / "j.arff").write_bytes(arff)
    rows = [line.split(",") for line in arff.decode().splitlines()
            if line and line[0] not in "%@"]
    fields = [f"j_{c}" for c in FEATURES + CLASSES] + ["j_index"]  # and a column it ignores
    table = np.zeros(len(rows), dtype=[(name, "<f4") for name in fields])
    for i, row in enumerate(rows):
        for f, v in zip(FEATURES, row[:16]):
            table[i][f"j_{f}"] = float(v)
        table[i][f"j_{row[16].strip(chr(39))}"] = 1.0
        table[i]["j_index"] = i
    with h5py.File(tmp_path / "j.z", "w") as f:
        f["t_allpar_new"] = table
    a, z = load_jets(tmp_path / "j.arff"), load_jets(tmp_path / "j.z")
    assert np.array_equal(z.X_train, a.X_train) and np.array_equal(z.X_test, a.X_test)
    assert np.array_equal(z.y_train, a.y_train) and np.array_equal(z.y_val, a.y_val)
    (tmp_path / "bad.z").write_text("not hdf5")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'bad.z'}: not a readable HDF5 "
                                                   "file (") + ".*expected the Zenodo jet"):
        get_dataset(f"jets:{tmp_path / 'bad.z'}")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"other\.h5: no 't_allpar_new' tree; found \['x'\]"):
        load_jets(tmp_path / "other.h5")


def test_hdf5_rows_that_are_not_one_hot_are_refused(tmp_path):
    """argmax made a jet with no label (all j_g..j_z zero) a gluon, silently."""
    h5py = pytest.importorskip("h5py")
    fields = [f"j_{c}" for c in FEATURES + CLASSES]
    table = np.zeros(10, dtype=[(name, "<f4") for name in fields])
    for i in range(10):
        table[i][f"j_{CLASSES[i % 5]}"] = 1.0
    table[6]["j_q"] = 0.0  # row 7: no label
    with h5py.File(tmp_path / "j.h5", "w") as f:
        f["t_allpar_new"] = table
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'j.h5'}: 1 rows whose labels j_g..j_z are not one-hot, the first row 7 "
            "({'g': 0.0, 'q': 0.0, 't': 0.0, 'w': 0.0, 'z': 0.0}); expected exactly one 1")):
        load_jets(tmp_path / "j.h5")


def test_broken_gzip_arff_headers_and_gzipped_binary_files_are_named(tmp_path):
    """A cut-short .csv.gz raised EOFError, an '@attribute' line without a name IndexError;
    a .parquet.gz went to pandas as if plain."""
    import gzip

    f = tmp_path / "j.csv.gz"
    f.write_bytes(gzip.compress(make_arff(50))[:-20])
    with pytest.raises(ValueError, match=re.escape(f"{f}: a broken gzip file (")):
        get_dataset(f"jets:{f}")
    f = tmp_path / "j.arff"
    f.write_text("@relation x\n@attribute\n@data\n")
    with pytest.raises(ValueError, match=re.escape(
            f"{f}: an @attribute line without a name: '@attribute'; expected '@attribute NAME "
            "TYPE'")):
        get_dataset(f"jets:{f}")
    f = tmp_path / "j.parquet.gz"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match=re.escape(
            f"{f}: gzipped .parquet files are not read directly; decompress it first")):
        get_dataset(f"jets:{f}")


def test_malformed_jet_files_name_the_file_and_row(tmp_path):
    """An empty CSV raised StopIteration; a short row said 'list index out of range'; a bad
    label or a binary file did not name the file; no row was named."""
    from hetq.data.jets import parse_arff, parse_csv

    head = ",".join(FEATURES + ["class"])
    good = ",".join(str(float(i)) for i in range(16)) + ",g"
    cases = {"empty.csv": ("", "empty file; expected a header row with the feature names and "
                               "'class', then the data rows"),
             "head.csv": (head + "\n", "no data rows"),
             "short.csv": (f"{head}\n{good}\n1,2,3\n", "data row 2 has 3 fields; the header "
                                                        "has 17"),
             "text.csv": (f"{head}\n{good}\n{good.replace('3.0', 'x')}\n",
                          "data row 2: could not convert string to float: 'x'"),
             "label.csv": (f"{head}\n{good}\n{good[:-1]}zz\n", "data row 2: unknown jet class "
                                                               "label 'zz'"),
             "bin.csv": (b"\xff\xfe\x00", "not a text file (byte 0 is not UTF-8)"),
             # (the row used to be the sample's in the shuffled split: '(row, column) (571, 3)')
             "nan.csv": (f"{head}\n{good}\n{good}\n{good.replace(',3.0,', ',nan,')}\n",
                         "1 NaN/inf feature values, the first in data row 3 (c1_b2_mmdt)")}
    for name, (body, msg) in cases.items():
        f = tmp_path / name
        f.write_bytes(body if isinstance(body, bytes) else body.encode())
        with pytest.raises(ValueError, match=re.escape(f"{f}: {msg}")):
            get_dataset(f"jets:{f}")
    f = tmp_path / "blank_lines.csv"  # blank lines (e.g. a trailing one) are skipped
    f.write_text(f"{head}\n{good}\n\n{good}\n\n")
    X, y = parse_csv(f)
    assert X.shape == (2, 16) and X[1, 15] == 15.0 and y.tolist() == [0, 0]
    arff = make_arff(3).decode().replace("0.", "x.", 1)  # the first data row's first value
    (tmp_path / "j.arff").write_text(arff)
    with pytest.raises(ValueError, match=r"j.arff: data row 1: could not convert string to "
                                         r"float: '\S*x\.\d+'"):
        parse_arff(tmp_path / "j.arff")


def test_embedded_simulated_jets():
    d = load_jets_sim()
    assert d.n_features == 16 and d.n_classes == 5 and d.classes == ["g", "q", "t", "w", "z"]
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (15028, 4973, 4999)
    assert np.bincount(np.r_[d.y_train, d.y_val, d.y_test]).tolist() == [5000] * 5
    assert d.features[0] == "zlogz" and d.features[-1] == "multiplicity"


def test_a_file_that_is_not_jets_sim_is_a_clear_error(tmp_path):
    for name, write in (("a.csv", lambda f: f.write_text("a,b\n1,2\n")),
                        ("b.npy", lambda f: np.save(f, np.zeros(3))),
                        ("c.npz", lambda f: np.savez(f, X=np.zeros((3, 16)), y=np.zeros(3)))):
        f = tmp_path / name
        write(f)
        msg = ("not a jets_sim file (missing ['split'])" if name == "c.npz" else
               "not a jets_sim file (expected an .npz archive with the arrays X, y and split)")
        with pytest.raises(ValueError, match=re.escape(f"{f}: {msg}")):
            get_dataset(f"jets-sim:{f}")


def test_validation_errors_name_the_problem():
    X = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        validate_arrays(np.zeros(4), np.zeros(4, int))
    bad = X.copy()
    bad[1, 2] = np.nan
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 NaN/inf feature values, first at .*\(1, 2\), "
                                         r"\(3, 0\)"):
        validate_arrays(bad, np.zeros(4, int))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.4, found \[7\]"):
        validate_arrays(X, np.array([0, 1, 7, 2]), n_classes=5)
    with pytest.raises(ValueError, match="4 samples but 3 labels"):
        validate_arrays(X, np.zeros(3, int))
    with pytest.raises(ValueError, match="non-integer"):
        validate_arrays(X, np.array([0.0, 1.5, 1.0, 0.0]))
    with pytest.raises(ValueError, match="unknown dataset 'jetz'"):
        get_dataset("jetz")
    with pytest.raises(ValueError, match="unknown jet class label 'x'"):
        from hetq.data.jets import _labels

        _labels(["g", "x"])


def test_dataset_names_ignore_case_and_a_bare_file_gets_a_hint(tmp_path):
    assert get_dataset(" Digits").X_train.shape == get_dataset("digits").X_train.shape
    f = tmp_path / "jets_sim.npz"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"unknown dataset .*; {re.escape(str(f))} is a file: "
                                         rf"give jets-sim:{re.escape(str(f))} \(a simulated "
                                         rf"jets .npz\) or jets:"):
        get_dataset(str(f))


def test_a_spec_with_an_empty_path_is_refused_not_the_default():
    """`jets-sim:$FILE` with FILE unset used to load the built-in 25,000-jet sample (and
    `jets:` to download), so a run meant for a user's file trained on other data silently."""
    for spec, whole in (("jets-sim:", "the built-in sample"),
                        ("jets: ", "the dataset downloaded once")):
        name = spec.split(":")[0]
        with pytest.raises(ValueError) as e:
            get_dataset(spec)
        assert str(e.value) == (f"{spec!r} has no path after the colon; give {name}:PATH for "
                                f"a file, or {name} alone for {whole}")
    assert get_dataset("jets-sim").X_train.shape == (15028, 16)  # the name alone still works


def test_broken_jets_sim_files_and_data_that_cannot_be_used_are_clear_errors(tmp_path):
    """An empty file (EOFError), object arrays (numpy's message without the file), a split of
    another length (IndexError), an empty split ('axis 1 is out of bounds'), a column of 1e37
    (NaN after standardising, then 'training diverged ... lower the learning rate') and a
    negative synthetic seed (numpy's 'expected non-negative integer')."""
    good = dict(np.load(EMBEDDED))
    cases = {"empty.npz": None,
             "obj.npz": {**good, "features": np.array(list(good["features"]), dtype=object)},
             "short.npz": {**good, "split": good["split"][:100]},
             "noval.npz": {**good, "split": np.where(good["split"] == 1, 0, good["split"])}}
    msgs = {"empty.npz": "not a jets_sim file (expected an .npz archive with the arrays X, y "
                         "and split)",
            "obj.npz": "unreadable jets_sim array (Object arrays cannot be loaded when "
                       "allow_pickle=False)",
            "short.npz": "X has 25000 rows, y 25000 and split 100 (shape (100,)); expected one "
                         "label and one split (0 train, 1 validation, 2 test) per row",
            "noval.npz": "the val split has no samples (train 20001, val 0, test 4999); "
                         "training, validation and test each need some"}
    for name, arrays in cases.items():
        f = tmp_path / name
        if arrays is None:
            f.write_bytes(b"")
        else:
            np.savez(f, **arrays)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (no numpy overflow warnings on the way)
            with pytest.raises(ValueError) as e:
                get_dataset(f"jets-sim:{f}")
        assert msgs[name] in str(e.value)
        if name in ("empty.npz", "obj.npz", "short.npz"):
            assert str(f) in str(e.value)
    with pytest.raises(ValueError, match="seed >= 0; got n=6000, features=16, classes=5, "
                                         "seed=-1"):
        get_dataset("synthetic:seed=-1")


def test_features_of_any_float32_scale_standardise(tmp_path):
    """The statistics were computed in float32: features near 1e18 and above overflowed
    the sum of squares (std inf, every value 0: accuracy at the majority rate, without a
    word; 1e37 was refused), those near 1e-20 and below underflowed (std 0: left as they
    were, ~1e-30)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    split = np.repeat([0, 1, 2], 200)
    loaded = {}
    for scale in (1.0, 1e20, 1e37, 1e-30):
        f = tmp_path / f"s{scale:g}.npz"
        np.savez(f, X=(X * np.float32(scale)).astype(np.float32), y=y, split=split,
                 classes=np.array(["a", "b"]), features=np.array(list("pqrs")))
        d = get_dataset(f"jets-sim:{f}")
        loaded[scale] = d.X_test
        assert np.isfinite(d.X_train).all()
        assert np.allclose(d.X_train.mean(0), 0, atol=1e-5)
        assert np.allclose(d.X_train.std(0), 1, atol=1e-4)
    for scale in (1e20, 1e37, 1e-30):
        assert np.allclose(loaded[scale], loaded[1.0], atol=1e-4), scale


def test_class_names_that_clash_one_class_and_untrained_classes(tmp_path):
    """Per-class metrics are keyed by name: two classes named alike overwrote each other,
    one named 'mean' showed the average; one class failed in training as 'diverged; lower
    the learning rate'; a named class without training samples was taken silently."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    split = np.repeat([0, 1, 2], 100)
    for classes, y, msg in (
            (["a", "a", "b"], np.arange(300) % 3, "class names ['a', 'a', 'b']: ['a'] given "
                                                  "twice; give each class its own name"),
            (["mean", "b"], np.arange(300) % 2, "class names ['mean', 'b']: 'mean' is taken by "
                                                "the metrics' average over the classes"),
            (["a"], np.zeros(300, int), "1 class (['a']); a classifier needs at least 2")):
        f = tmp_path / "c.npz"
        np.savez(f, X=X, y=y, split=split, classes=np.array(classes),
                 features=np.array(list("pqr")))
        with pytest.raises(ValueError) as e:
            get_dataset(f"jets-sim:{f}")
        assert msg in str(e.value), str(e.value)
    y = np.arange(300) % 2
    y[200:210] = 2  # class c in the test split only
    np.savez(tmp_path / "t.npz", X=X, y=y, split=split, classes=np.array(["a", "b", "c"]),
             features=np.array(list("pqr")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (loading is not training: no warning)
        d = get_dataset(f"jets-sim:{tmp_path / 't.npz'}")
    from hetq.models import build
    from hetq.train import Anomaly, fit

    with pytest.warns(UserWarning, match=r"the train split has no sample of class \['c'\]; "
                                         "the classifier cannot learn it"):
        fit(build("jet_mlp", n_in=3, n_out=3, widths=[4]), d, epochs=1, progress=False)
    with warnings.catch_warnings():  # the anomaly task trains on its background only
        warnings.simplefilter("error")
        fit(build("jet_autoencoder", n_in=3, widths=[2]), d, epochs=1, progress=False,
            task=Anomaly(background=["a"]))


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    """Excel saves UTF-8 CSV with a byte-order mark: 'missing columns ['zlogz']; found
    ['\\ufeffzlogz', ...]'."""
    rows = [line for line in make_arff(60).decode().splitlines() if line and line[0] not in "%@"]
    text = ",".join(FEATURES + ["class"]) + "\n" + "\n".join(r.replace("'", "") for r in rows)
    (tmp_path / "plain.csv").write_text(text, encoding="utf-8")
    (tmp_path / "excel.csv").write_text(text, encoding="utf-8-sig")
    a, b = (get_dataset(f"jets:{tmp_path / n}") for n in ("plain.csv", "excel.csv"))
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_test, b.y_test)


def test_a_csv_with_other_separators_or_no_header_says_so(tmp_path):
    """A ';'- or tab-separated CSV, or one without a header row, gave only the long
    'missing columns [17 names]' message."""
    rows = [line for line in make_arff(10).decode().splitlines() if line and line[0] not in "%@"]
    header = FEATURES + ["class"]
    for name, text, hint in (
            ("semi.csv", ";".join(header) + "\n" + "\n".join(r.replace(",", ";") for r in rows),
             "the header is one column holding ';' or tabs: the file must be comma-separated"),
            ("tabs.csv", "\t".join(header) + "\n", "the header is one column holding ';' or "
                                                   "tabs"),
            ("noheader.csv", "\n".join(r.replace("'", "").rsplit(",", 1)[0] + ",1"
                                       for r in rows),
             "the first row holds numbers: the file needs a header row of column names")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match="missing columns") as e:
            get_dataset(f"jets:{tmp_path / name}")
        assert str(e.value).endswith(hint) or hint in str(e.value), str(e.value)


def test_a_dataset_of_many_classes_prints_on_one_line():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (classes without training samples)
        d = get_dataset("synthetic:n=600,classes=30")
    assert repr(d) == ("Dataset('synthetic', train=420, val=90, test=90, input=(16,), classes="
                       "['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ... 30 in all])")
    assert repr(get_dataset("synthetic:n=300")).endswith("classes=['0', '1', '2', '3', '4'])")


def test_dataset_from_splits_checks_its_arguments():
    """classes=None was a TypeError ('NoneType' object is not iterable) although the names
    are optional; a missing split a KeyError; 10 feature names for 16 columns passed."""
    from hetq.data import Dataset

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)).astype(np.float32), np.arange(30) % 3
    d = Dataset.from_splits("x", {"train": (X, y), "val": (X, y), "test": (X, y)})
    assert d.classes == [] and d.features == [] and d.n_classes == 3
    for splits, msg in (({"train": (X, y)}, r"splits must be a dict with the keys \['train', "
                                            r"'val', 'test'\], each an \(X, y\) pair; missing "
                                            r"\['val', 'test'\]"),
                        ({"train": (X, y), "val": (X, y), "test": X},
                         r"splits\['test'\] must be an \(X, y\) pair")):
        with pytest.raises(ValueError, match=msg):
            Dataset.from_splits("x", splits)
    with pytest.raises(ValueError, match="x: 1 feature names for 4 features per sample"):
        Dataset.from_splits("x", {"train": (X, y), "val": (X, y), "test": (X, y)}, ["a"])


def test_jets_sim_files_with_unknown_split_values_or_a_scalar_x_are_refused(tmp_path):
    """Rows with split 3 were dropped without a word; a 0-d X raised 'len() of unsized
    object'."""
    d = dict(np.load(EMBEDDED))
    split = d["split"].copy()
    split[:7] = 3
    np.savez(tmp_path / "s.npz", **{**d, "split": split})
    with pytest.raises(ValueError, match=re.escape(
            "s.npz: split has values [3] in 7 rows; expected 0 (train), 1 (validation) or "
            "2 (test)")):
        get_dataset(f"jets-sim:{tmp_path / 's.npz'}")
    np.savez(tmp_path / "x.npz", **{**d, "X": np.float32(1.0)})
    with pytest.raises(ValueError, match=re.escape(
            "x.npz: X has shape () and y (25000,); expected X with one row of features per jet "
            "(2-D)")):
        get_dataset(f"jets-sim:{tmp_path / 'x.npz'}")


def test_data_set_options_are_checked_and_named():
    """'synthetic:n=--100' passed the digit check and failed in int() without naming the
    option; a repeated option kept the last; a keyword another loader takes (cache= for
    jets-sim) was a raw TypeError; a huge n a raw MemoryError; 'digits:' was taken."""
    for spec in ("synthetic:n=--100", "synthetic:n=²", "synthetic:size=9"):
        with pytest.raises(ValueError, match=re.escape(
                f"in {spec!r}; expected n=, features=, classes=, seed= with integers")):
            get_dataset(spec)
    with pytest.raises(ValueError, match=re.escape("n= is given twice in 'synthetic:n=100,n=200'")):
        get_dataset("synthetic:n=100,n=200")
    assert len(get_dataset("synthetic: n = 900 ,classes=3").y_train) == 630  # spaces allowed
    with pytest.raises(ValueError, match=re.escape(
            "the 'jets-sim' data set does not take cache; it takes standardize")):
        get_dataset("jets-sim", cache="/tmp")
    with pytest.raises(ValueError, match=re.escape(
            "'synthetic:n=10000000000000' does not fit in memory (10000000000000 x 16 values, "
            "1192092.9 GiB while it is made); ask for fewer samples")):
        get_dataset("synthetic:n=10000000000000")
    with pytest.raises(ValueError, match=re.escape("unknown dataset 'digits:'")):
        get_dataset("digits:")


def test_digits_and_synthetic():
    d = get_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.n_classes == 10
    assert 0.0 <= d.X_train.min() and d.X_train.max() <= 1.0
    s = get_dataset("synthetic:n=900,classes=3,seed=1")
    s2 = get_dataset("synthetic:n=900,classes=3,seed=1")
    assert s.n_classes == 3 and np.array_equal(s.X_train, s2.X_train)


def test_train_refuses_an_existing_out_before_downloading(tmp_path, monkeypatch, capsys):
    """`hetq train --data jets --out X`, X holding a model, downloaded (and parsed) the whole
    data set before refusing X, although the README says that is refused before any work."""
    from hetq.cli import main

    srv = Server({})
    srv.files.update(openml_files(srv.url, make_arff()))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "openml_42468.json").write_bytes(srv.files["/api/data/42468"])
    monkeypatch.setenv("HETQ_CACHE", str(cache))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.pt").write_bytes(b"an earlier run's model")
    with srv:
        assert main(["train", "--data", "jets", "--epochs", "1", "--out",
                     str(tmp_path / "out")]) == 2
    assert "already exists (from an earlier run)" in capsys.readouterr().err
    assert srv.requests == []


def test_a_read_only_cache_keeps_the_checksum_message_and_an_unchecked_download_warns(
        tmp_path, monkeypatch):
    """In a read-only shared cache, a damaged file said only 'Permission denied' (from the
    deletion), hiding the checksum mismatch; a download that neither a length nor an md5
    checks (a cut at a line end parses as a smaller data set) passed without a word."""
    from pathlib import Path

    arff = make_arff()
    srv = Server({})
    srv.files.update(openml_files(srv.url, arff, md5="0" * 32))
    real_unlink = Path.unlink

    def read_only(self, missing_ok=False):
        if self.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)
    with srv:
        monkeypatch.setattr(Path, "unlink", read_only)
        with pytest.raises(ValueError, match=r"checksum mismatch for .* expected md5 0{32} "
                                             r"\(OpenML\), got [0-9a-f]{32}; they could not be "
                                             r"deleted \(a read-only cache\?\)"):
            download_jets(cache=tmp_path, api=f"{srv.url}/api", progress=False)
        monkeypatch.setattr(Path, "unlink", real_unlink)
        desc = json.loads(srv.files["/api/data/42468"])
        del desc["data_set_description"]["md5_checksum"]
        srv.files["/api/data/42468"] = json.dumps(desc).encode()
        with pytest.warns(UserWarning, match="OpenML's description gives no md5, so the "
                                             "download could not be checked"):
            download_jets(cache=tmp_path / "b", api=f"{srv.url}/api", progress=False)


def test_data_layer_slips_found_by_a_probe(tmp_path):
    """A CSV row with an extra field (a decimal comma) was read with its values shifted;
    negative labels, labels only val/test have, float64 values beyond float32 and val/test
    samples of another shape passed `from_splits` (and failed later inside torch or numpy);
    an HDF5 't_allpar_new' group and a 0-d 'classes' array were tracebacks; a NaN split
    value was counted in 0 rows."""
    from hetq.data import Dataset
    from hetq.data.jets import parse_file

    rows = [",".join(["class", *FEATURES])]
    rows += [",".join(["g"] + ["0.5"] * 16), ",".join(["q", "0,126"] + ["0.5"] * 15)]
    (tmp_path / "j.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"j.csv: data row 2 has 18 fields; the header has 17"):
        parse_file(tmp_path / "j.csv")

    X = np.random.default_rng(0).normal(size=(30, 4))
    y = np.arange(30) % 3

    def splits(Xs=X, ys=y):
        return {"train": (Xs[:10], ys[:10]), "val": (Xs[10:20], ys[10:20]),
                "test": (Xs[20:], ys[20:])}
    for ys, msg in ((y - 1, r"d \(train split\): labels must be class indices >= 0, "
                            r"found \[-1\]"),
                    (np.where(np.arange(30) >= 20, 5, y),
                     r"d: the test split has label 5, which the train split never has")):
        with pytest.raises(ValueError, match=msg):
            Dataset.from_splits("d", splits(ys=ys))
    big = X.copy()
    big[25, 1] = 1e39
    with pytest.raises(ValueError, match=r"d \(test split\): 1 feature values beyond float32's "
                                         r"range \(about 3.4e38\), first at \(row, column\) "
                                         r"\(5, 1\)"):
        Dataset.from_splits("d", splits(Xs=big), standardize=False)
    s = splits()
    s["val"] = (X[10:20, :3], y[10:20])
    with pytest.raises(ValueError, match=r"d \(val split\): samples of shape \(3,\); the train "
                                         r"split's are \(4,\)"):
        Dataset.from_splits("d", s, standardize=False)

    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "g.z", "w") as f:
        f.create_group("t_allpar_new").create_dataset("table", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"g.z: 't_allpar_new' is a group; expected"):
        parse_file(tmp_path / "g.z")
    arrays = dict(np.load(EMBEDDED).items())
    np.savez(tmp_path / "c.npz", **{**arrays, "classes": np.array("gqtwz")})
    with pytest.raises(ValueError, match=r"c.npz: classes has shape \(\); expected a list"):
        load_jets_sim(tmp_path / "c.npz")
    split = arrays["split"].astype(float)
    split[:3] = np.nan
    np.savez(tmp_path / "n.npz", **{**arrays, "split": split})
    with pytest.raises(ValueError, match=r"split has values \[nan\] in 3 rows"):
        load_jets_sim(tmp_path / "n.npz")


def test_bytes_labels_and_a_file_too_small_to_split(tmp_path):
    """A bytes class column (parquet, HDF5) was refused as the unknown label "b'q'"; a file
    of 3 rows ended in 'the splits have no samples' without naming the file."""
    from hetq.data.jets import _labels

    assert _labels([b"q", b"'t'", "z"]).tolist() == [1, 2, 4]
    rows = [",".join([*FEATURES, "class"])] + [",".join(["0.5"] * 16 + [c]) for c in "gqt"]
    (tmp_path / "tiny.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"tiny.csv \(3 rows\): jets: the .* split"):
        load_jets(tmp_path / "tiny.csv")


def test_data_without_features_complex_features_a_folder_and_default_classes(tmp_path):
    """No features blamed the model ('n_in=0'); complex features were cast to real (numpy's
    ComplexWarning); a folder was 'not a jets_sim file'; labels beyond the jet classes a
    file without 'classes' falls back to said 'labels must be in 0..4' from nowhere."""
    from hetq.data import Dataset

    with pytest.raises(ValueError, match=r"^t \(train split\): samples of shape \(0,\) have no "
                                         r"features$"):
        Dataset.from_splits("t", {s: (np.zeros((4, 0)), np.arange(4) % 2)
                                  for s in ("train", "val", "test")})
    with pytest.raises(ValueError, match=r"features must be real numbers, got dtype complex128"):
        Dataset.from_splits("t", {s: (np.ones((4, 2)) * 1j, np.arange(4) % 2)
                                  for s in ("train", "val", "test")})
    with pytest.raises(ValueError, match=rf"^{tmp_path} is a folder; expected a jets_sim .npz "
                                         r"file$"):
        get_dataset(f"jets-sim:{tmp_path}")
    f = tmp_path / "seven.npz"
    np.savez(f, X=np.random.default_rng(0).normal(size=(30, 16)).astype(np.float32),
             y=np.arange(30) % 8, split=np.arange(30) % 3)
    with pytest.raises(ValueError, match=r"labels must be in 0..4, found \[5, 6, 7\]; .*seven"
                                         r"\.npz has no 'classes' array, so the jet classes "
                                         r"\['g', 'q', 't', 'w', 'z'\] were taken: save the "
                                         r"class names as 'classes'$"):
        get_dataset(f"jets-sim:{f}")
