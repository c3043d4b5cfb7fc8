"""The plain-URL downloader (`download_file`: files not on the Hub, e.g. the CORE bundle zip) against a local HTTP
server, on a set of parquet shards: connections dropped midway (resume with Range), transient errors (retry with
backoff), servers that ignore Range, stale partial files, 404s, corrupt payloads, two downloaders racing on one
directory (file lock: each file fetched once), idempotence. Hub downloads: test_data_hub.py."""

import io
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raychat.data import DATASETS, DownloadError, download_file, list_shards
from raychat.data.registry import shard_indices, shard_name

FAST = dict(backoff=0.001, max_backoff=0.01, timeout=10)


def download_shards(names, out, url, **kwargs) -> dict:
    """Every shard through download_file; -> {"downloaded": n, "skipped": n}; DownloadError lists the failures."""
    results, errors = [], []
    for n in names:
        try:
            results.append(download_file(f"{url}/{n}", out / n, **kwargs))
        except DownloadError as e:
            errors.append(f"{n}: {e}")
    if errors:
        raise DownloadError(f"{len(errors)} of {len(names)} failed: {'; '.join(errors)}")
    return {"downloaded": results.count("downloaded"), "skipped": results.count("skipped")}


def parquet_bytes(seed: int, n_docs: int = 200) -> bytes:
    rng = random.Random(seed)
    docs = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(rng.randint(50, 800)))
            for _ in range(n_docs)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": docs}), buf, compression="none")
    return buf.getvalue()


class ShardServer:
    """Serves `files` (name -> bytes). drop_after: bytes sent per response before the connection is cut;
    ranges: honour Range requests; fail_first: 503s before the first success, per file; delay: seconds per
    8 KiB chunk (to make downloads overlap)."""

    def __init__(self, files, drop_after=None, ranges=True, fail_first=0, delay=0.0):
        self.files = files
        self.drop_after, self.ranges, self.fail_first, self.delay = drop_after, ranges, fail_first, delay
        self.requests = []  # (name, range header or None, status)
        self.sent = {}
        self.lock = threading.Lock()
        self.failures = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                outer.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"

    def handle(self, h):
        name = h.path.rsplit("/", 1)[-1]
        rng = h.headers.get("Range")
        data = self.files.get(name)
        with self.lock:
            fails = self.failures.get(name, 0)
            if data is not None and fails < self.fail_first:
                self.failures[name] = fails + 1
                status = 503
            elif data is None:
                status = 404
            else:
                status = 200
            start = int(rng.split("=")[1].split("-")[0]) if (rng and self.ranges and status == 200) else 0
            if status == 200 and start:
                status = 206 if start < len(data) else 416
            self.requests.append((name, rng, status))
        if status in (404, 503):
            h.send_error(status)
            return
        if status == 416:
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = data[start:]
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if self.drop_after is not None:
            body = body[:self.drop_after]
        for i in range(0, len(body), 8192):
            h.wfile.write(body[i:i + 8192])
            with self.lock:
                self.sent[name] = self.sent.get(name, 0) + len(body[i:i + 8192])
            if self.delay:
                time.sleep(self.delay)
        h.wfile.flush()
        h.close_connection = True

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def shards():
    names = [shard_name(i) for i in shard_indices(DATASETS["climbmix"], 3)]
    assert names[0] == "shard_06542.parquet"  # the pinned validation shard, fetched first
    return {n: parquet_bytes(i) for i, n in enumerate(names)}


@pytest.fixture
def server(request, shards):
    srv = ShardServer(dict(shards), **getattr(request, "param", {}))
    yield srv
    srv.close()


def check_complete(out, shards):
    assert {p.name: p.read_bytes() for p in out.iterdir()} == shards  # no .part / .lock left, bytes exact
    train, val = list_shards(out)
    assert len(train) == 3 and val.name == "shard_06542.parquet"


@pytest.mark.parametrize("server", [{"drop_after": 30_000}], indirect=True)
def test_dropped_connections_resume(tmp_path, server, shards):
    s = download_shards(list(shards), tmp_path, server.url, max_attempts=2, **FAST)
    check_complete(tmp_path, shards)
    assert s["downloaded"] == 4
    # every byte was sent once: each retry asked for the rest with a Range request
    assert server.sent == {n: len(b) for n, b in shards.items()}
    ranges = [r for n, r, _ in server.requests if n == "shard_00000.parquet"]
    assert ranges[0] is None and ranges[1:] == [f"bytes={k * 30_000}-" for k in range(1, len(ranges))]
    assert len(ranges) >= 3


@pytest.mark.parametrize("server", [{"fail_first": 2}], indirect=True)
def test_transient_errors_are_retried(tmp_path, server, shards):
    download_shards(list(shards), tmp_path, server.url, max_attempts=3, **FAST)
    check_complete(tmp_path, shards)
    assert sum(st == 503 for _, _, st in server.requests) == 2 * len(shards)


@pytest.mark.parametrize("server", [{"fail_first": 100}], indirect=True)
def test_persistent_errors_give_up(tmp_path, server, shards):
    with pytest.raises(DownloadError, match=r"4 of 4 failed.*giving up on .* after 3 attempts"):
        download_shards(list(shards), tmp_path, server.url, max_attempts=3, **FAST)
    assert not list(tmp_path.glob("*.parquet"))


@pytest.mark.parametrize("server", [{"ranges": False}], indirect=True)
def test_stale_partial_and_server_without_ranges(tmp_path, server, shards):
    name = "shard_00001.parquet"
    (tmp_path / (name + ".part")).write_bytes(b"garbage from an older attempt")
    download_shards(list(shards), tmp_path, server.url, **FAST)
    check_complete(tmp_path, shards)  # the 200 answer restarted the file from scratch


def test_resume_from_partial_file(tmp_path, server, shards):
    name = "shard_00002.parquet"
    half = len(shards[name]) // 2
    (tmp_path / (name + ".part")).write_bytes(shards[name][:half])
    too_long = "shard_00000.parquet"
    (tmp_path / (too_long + ".part")).write_bytes(shards[too_long] + b"extra")  # 416 -> restart
    download_shards(list(shards), tmp_path, server.url, **FAST)
    check_complete(tmp_path, shards)
    assert [(r, st) for n, r, st in server.requests if n == name] == [(f"bytes={half}-", 206)]
    assert server.sent[name] == len(shards[name]) - half
    assert [st for n, _, st in server.requests if n == too_long] == [416, 200]


def test_404_fails_fast_and_keeps_the_rest(tmp_path, server, shards):
    del server.files["shard_00001.parquet"]
    with pytest.raises(DownloadError, match=r"shard_00001.parquet: HTTP 404 Not Found for http://127.0.0.1:\d+/data/shard_00001"):
        download_shards(list(shards), tmp_path, server.url, **FAST)
    assert sum(n == "shard_00001.parquet" for n, _, _ in server.requests) == 1  # not retried
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == sorted(set(shards) - {"shard_00001.parquet"})


def test_corrupt_payload_is_rejected(tmp_path, server, shards):
    server.files["shard_00000.parquet"] = b"<html>rate limited</html>" * 10
    with pytest.raises(DownloadError, match="not a valid parquet"):
        download_shards(list(shards), tmp_path, server.url, max_attempts=2, **FAST)
    assert not (tmp_path / "shard_00000.parquet").exists()


@pytest.mark.parametrize("server", [{"delay": 0.005}], indirect=True)
def test_concurrent_downloaders_fetch_each_shard_once(tmp_path, server, shards):
    results, errors = [], []

    def worker():
        try:
            results.append(download_shards(list(shards), tmp_path, server.url, **FAST))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    check_complete(tmp_path, shards)
    assert server.sent == {n: len(b) for n, b in shards.items()}  # nobody downloaded a shard twice
    assert sum(r["downloaded"] for r in results) == 4 and sum(r["skipped"] for r in results) == 4


def test_idempotent(tmp_path, server, shards):
    assert download_shards(list(shards), tmp_path, server.url, **FAST)["downloaded"] == 4
    n = len(server.requests)
    assert download_shards(list(shards), tmp_path, server.url, **FAST)["skipped"] == 4
    assert len(server.requests) == n  # nothing fetched again
