"""Getting one file onto this node, whole and verified: from a Hugging Face Hub repository, or from a plain URL.

Hub files (`fetch_hub_file`) go through `huggingface_hub.hf_hub_download` into a plain local folder (`local_dir`),
so the Hub's conventions hold: `HF_ENDPOINT` (a mirror), `HF_TOKEN` / `hf auth login`, `HF_HUB_OFFLINE`,
`HF_HOME` (token, Xet cache). The library gives the ETag/size check, a per-file lock, a process-unique temporary
file renamed into place, and resume after a dropped connection within one call (from the last whole 10 MB
chunk; a killed process starts that file again: its temporary file is per process). What it does not do, added
here:
- retries across requests: a 5xx, a refused connection or a short body is retried with backoff (huggingface_hub
  retries a few rate-limit and connection cases only, then raises);
- content hashing: when the Hub's ETag is a sha256 (every LFS file: parquet shards, zips) the finished file is
  hashed and a mismatch deletes it and retries;
- an error that names the dataset and the URL.

Files that live outside the Hub (nanochat's CORE bundle zip on S3, the dwyl word list on GitHub) use
`download_file`, the hand-written downloader kept for them: huggingface_hub has no public API for arbitrary URLs.
Per file it gives:
- retries with exponential backoff and jitter; an attempt that made progress resets the retry budget, so a
  link that drops every few hundred MB still finishes;
- resume: bytes go to `<name>.part` and a retry asks for the rest with an HTTP Range request;
- size check against Content-Length / Content-Range, and a parquet magic-number check (b"PAR1" at both ends);
- atomic rename `<name>.part` -> `<name>` only when complete, so a file that exists is whole;
- a file lock (`<name>.lock`, fcntl) so several processes on a node (e.g. 8 ranks) never fetch one file twice:
  the second waits, then sees the finished file and skips it.
Non-retryable HTTP errors (404, 403, 401) fail at once with the URL in the message.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.client import HTTPException
from pathlib import Path

from raychat.common import RaychatError

try:
    import fcntl
except ImportError:  # non-POSIX: no cross-process lock, everything else works
    fcntl = None


RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RaychatError):
    pass


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


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise RaychatError(f"{name} must be a number, got {os.environ[name]!r}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def fetch_hub_file(repo_id: str, filename: str, local_dir: str | os.PathLike, revision: str = "main",
                   repo_type: str = "dataset", what: str = "", max_attempts: int | None = None,
                   backoff: float | None = None) -> Path:
    """`local_dir/filename` from the Hub repository, downloaded if absent; verified (size, and sha256 when the
    Hub's ETag is one). Retries transient failures; raises DownloadError naming `what` and the URL otherwise.

    Retry knobs (tests, slow links): RAYCHAT_DOWNLOAD_ATTEMPTS (default 6), RAYCHAT_DOWNLOAD_BACKOFF (seconds,
    default 2, doubled per failed attempt, capped at 60)."""
    from huggingface_hub import constants, hf_hub_url

    dest = Path(local_dir).expanduser() / filename
    if dest.is_file():
        return dest
    endpoint = os.environ.get("HF_ENDPOINT") or None          # read now, not at huggingface_hub import time
    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
    label = f"dataset '{what}' " if what else ""
    if constants.is_offline_mode():
        raise DownloadError(f"{label}is not on disk ({dest}) and HF_HUB_OFFLINE is set: fetch it on a machine "
                            f"with access to {url}, or unset HF_HUB_OFFLINE")
    attempts = int(max_attempts or env_float("RAYCHAT_DOWNLOAD_ATTEMPTS", 6))
    wait = backoff if backoff is not None else env_float("RAYCHAT_DOWNLOAD_BACKOFF", 2.0)
    # One fetcher per file across processes: huggingface_hub's own lock does not stop a second process that
    # was already waiting from deleting and re-fetching the file the first one just finished.
    lock = Path(local_dir).expanduser() / ".cache" / "raychat" / f"{filename}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock):
        if dest.is_file():
            return dest
        return _fetch_hub_locked(repo_id, filename, local_dir, revision, repo_type, url, endpoint, label, attempts,
                                 wait)


def _fetch_hub_locked(repo_id, filename, local_dir, revision, repo_type, url, endpoint, label, attempts,
                      wait) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    dest = Path(local_dir).expanduser() / filename
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            meta = get_hf_file_metadata(url)
            path = Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision,
                                        local_dir=str(local_dir), endpoint=endpoint))
            etag = (meta.etag or "").strip('"').removeprefix("W/").strip('"')
            if re.fullmatch(r"[0-9a-f]{64}", etag) and _sha256(path) != etag:
                path.unlink(missing_ok=True)
                raise OSError(f"sha256 of the downloaded file does not match the Hub's ETag {etag[:12]}...")
            if meta.size is not None and path.stat().st_size != meta.size:
                path.unlink(missing_ok=True)
                raise OSError(f"got {path.stat().st_size} bytes, the Hub says {meta.size}")
            return path
        except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError, EntryNotFoundError) as e:
            hint = " (set HF_TOKEN for a gated or private repository)" if isinstance(e, GatedRepoError) else ""
            raise DownloadError(f"{label}file {filename} not available at {url}: "
                                f"{type(e).__name__}{hint}") from None
        except OfflineModeIsEnabled:
            raise DownloadError(f"{label}is not on disk ({dest}) and HF_HUB_OFFLINE is set") from None
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status is not None and status not in RETRYABLE_HTTP:
                raise DownloadError(f"{label}HTTP {status} for {url}") from None
            last = f"HTTP {status}"
        except Exception as e:  # noqa: BLE001 - httpx errors, consistency errors, refused connections
            last = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        if attempt < attempts:
            time.sleep(min(60.0, wait * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))
    raise DownloadError(f"could not download {label}file {filename} from {url} after {attempts} attempts: {last}")
