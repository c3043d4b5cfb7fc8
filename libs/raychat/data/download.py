"""Download the real pretraining shard sets (the ones nanochat uses) robustly.

    climbmix     karpathy/climbmix-400b-shuffle    shard_00000 .. shard_06542 (~6,543 parquet files)
    fineweb-edu  karpathy/fineweb-edu-100b-shuffle shard_00000 .. shard_01822 (~1,823 parquet files, ~94 MB each)

`--num-shards N` fetches training shards 0..N-1 plus the last shard of the set, which is pinned as the
validation split (it sorts last in the directory, so `list_shards` picks it as validation however many
training shards are present, and every run validates on the same text).

What makes it robust, per file:
- parallel workers (threads: the work is network-bound);
- retries with exponential backoff and jitter; an attempt that made progress resets the retry budget, so a
  link that drops every few hundred MB still finishes;
- resume: bytes go to `<name>.part` and a retry asks for the rest with an HTTP Range request;
- size check against Content-Length / Content-Range, and a parquet magic-number check (b"PAR1" at both ends);
- atomic rename `<name>.part` -> `<name>` only when complete, so a shard that exists is whole;
- a file lock (`<name>.lock`, fcntl) so several processes on a node (e.g. 8 ranks) never fetch one file twice:
  the second waits, then sees the finished file and skips it.
Non-retryable HTTP errors (404, 403, 401) fail that file at once with the URL in the message.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from raychat.common import RaychatError
from raychat.progress import Progress

try:
    import fcntl
except ImportError:  # non-POSIX: no cross-process lock, everything else works
    fcntl = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    base_url: str
    max_shard: int  # index of the last shard; pinned as validation
    about: str

    @property
    def num_train_shards(self) -> int:
        return self.max_shard


DATASETS = {
    "climbmix": DatasetSpec(
        "climbmix", "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main", 6542,
        "NVIDIA ClimbMix (400B tokens), reshuffled into parquet shards by karpathy; nanochat's current default"),
    "fineweb-edu": DatasetSpec(
        "fineweb-edu", "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main", 1822,
        "FineWeb-Edu 100BT sample, reshuffled into parquet shards by karpathy; nanochat's earlier default"),
}

RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RaychatError):
    pass


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def shard_indices(spec: DatasetSpec, num_shards: int) -> list[int]:
    """The pinned validation shard first (so a partial directory never mistakes a training shard for it),
    then training shards 0..num_shards-1 (-1 = all)."""
    if num_shards == -1:
        num_shards = spec.num_train_shards
    if not 1 <= num_shards <= spec.num_train_shards:
        raise RaychatError(f"--num-shards must be 1..{spec.num_train_shards} (or -1 for all) for {spec.name}, "
                           f"got {num_shards}")
    return [spec.max_shard, *range(num_shards)]


@contextmanager
def file_lock(path: Path):
    """Exclusive advisory lock on `path` (created if missing), held for the with-block."""
    if fcntl is None:
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _parquet_ok(path: Path) -> bool:
    """Cheap integrity check: a parquet file starts and ends with b"PAR1"."""
    try:
        size = path.stat().st_size
        if size < 12:
            return False
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(size - 4)
            return head == b"PAR1" and f.read(4) == b"PAR1"
    except OSError:
        return False


class _Retry(Exception):
    """A transient failure: try again (resuming)."""


def _fetch(url: str, part: Path, timeout: float, chunk_size: int, on_bytes) -> int | None:
    """One HTTP attempt, appending to `part` from its current size. Returns the full size if known."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "raychat-data/1"})
    if have:
        req.add_header("Range", f"bytes={have}-")  # add_header: kept across redirects (HF -> CDN)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the partial file is complete, or too long
            m = re.search(r"/(\d+)", e.headers.get("Content-Range", "") or "")
            if m and int(m.group(1)) == have:
                return have
            part.unlink(missing_ok=True)
            raise _Retry("partial file does not match the remote size; restarting") from None
        if e.code in RETRYABLE_HTTP:
            raise _Retry(f"HTTP {e.code}") from None
        raise DownloadError(f"HTTP {e.code} {e.reason} for {url}") from None
    with resp:
        total = None
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                part.unlink(missing_ok=True)
                raise _Retry("server answered the range request with a different range; restarting")
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        else:  # 200: the server ignored the range (or there was none): start over
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None else None
            mode = "wb"
        with open(part, mode) as f:
            while True:
                buf = resp.read(chunk_size)
                if not buf:
                    break
                f.write(buf)
                if on_bytes is not None:
                    on_bytes(len(buf))
    return total


def download_file(url: str, dest: str | os.PathLike, max_attempts: int = 8, backoff: float = 1.0,
                  max_backoff: float = 60.0, timeout: float = 60.0, chunk_size: int = 1 << 20,
                  on_bytes=None) -> str:
    """Fetch `url` to `dest` (resume, retry, size check, atomic rename, lock). -> "downloaded" | "skipped"."""
    dest = Path(dest)
    check = _parquet_ok if dest.suffix == ".parquet" else (lambda p: True)
    if dest.exists() and check(dest):
        return "skipped"
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = dest.with_name(dest.name + ".lock")
    part = dest.with_name(dest.name + ".part")
    with file_lock(lock):
        if dest.exists() and check(dest):  # another process finished it while we waited for the lock
            return "skipped"
        failures = 0
        while True:
            before = part.stat().st_size if part.exists() else 0
            try:
                total = _fetch(url, part, timeout, chunk_size, on_bytes)
                size = part.stat().st_size if part.exists() else 0
                if total is not None and size < total:
                    raise _Retry(f"connection ended after {size} of {total} bytes")
                if total is not None and size > total:
                    part.unlink()
                    raise _Retry(f"got {size} bytes, expected {total}; restarting")
                if not check(part):
                    part.unlink()
                    raise _Retry("downloaded file is not a valid parquet file; restarting")
                os.replace(part, dest)
                lock.unlink(missing_ok=True)  # safe: waiters re-check `dest`, which now exists
                return "downloaded"
            except (_Retry, HTTPException, OSError) as e:  # OSError covers URLError, timeouts, resets
                after = part.stat().st_size if part.exists() else 0
                failures = 0 if after > before else failures + 1  # progress resets the retry budget
                if failures >= max_attempts:
                    raise DownloadError(f"giving up on {url} after {max_attempts} attempts without progress: "
                                        f"{e}") from None
                delay = min(max_backoff, backoff * 2 ** failures) * (0.5 + random.random() / 2)
                time.sleep(delay)


def download_shards(dataset: str, num_shards: int, out_dir: str | os.PathLike, num_workers: int = 4,
                    base_url: str | None = None, progress: bool = True, **file_kwargs) -> dict:
    """Fetch `num_shards` training shards + the validation shard of `dataset` into `out_dir` (idempotent).

    `base_url` overrides the dataset's URL (a mirror, or a local server in tests). Returns a summary;
    raises DownloadError naming every shard that failed (the others are kept).
    """
    if dataset not in DATASETS:
        raise RaychatError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    indices = shard_indices(spec, num_shards)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    base = (base_url or spec.base_url).rstrip("/")
    bar = Progress(len(indices), desc=f"download {dataset}", unit="shards", disable=not progress)
    lock = threading.Lock()
    nbytes = [0]
    t0 = time.monotonic()

    def on_bytes(n: int) -> None:
        with lock:
            nbytes[0] += n
        bar.set_postfix(MB=round(nbytes[0] / 1e6, 1), MBps=round(nbytes[0] / 1e6 / (time.monotonic() - t0), 1))

    results: dict[int, str] = {}
    errors: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        futures = {pool.submit(download_file, f"{base}/{shard_name(i)}", out / shard_name(i), on_bytes=on_bytes,
                               **file_kwargs): i for i in indices}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except RaychatError as e:
                errors[i] = str(e)
            bar.update(1)
    bar.close()
    summary = {"dataset": dataset, "out": str(out), "shards": len(indices),
               "downloaded": sum(r == "downloaded" for r in results.values()),
               "skipped": sum(r == "skipped" for r in results.values()), "failed": len(errors),
               "bytes": nbytes[0], "seconds": round(time.monotonic() - t0, 2)}
    if errors:
        detail = "; ".join(f"{shard_name(i)}: {msg}" for i, msg in sorted(errors.items())[:5])
        raise DownloadError(f"{len(errors)} of {len(indices)} shards failed ({detail}); re-run to resume")
    return summary
