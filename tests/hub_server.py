"""A local stand-in for the Hugging Face Hub, for tests and for offline GPU boxes: the file surface that
`huggingface_hub.hf_hub_download` uses, served from a folder laid out as `<root>/datasets/<org>/<repo>/<path>`.

    HEAD|GET /datasets/<org>/<repo>/resolve/<revision>/<path>
        200 with ETag (the file's sha256, quoted, as the Hub gives for LFS files), X-Repo-Commit (40 hex),
        Content-Length, Accept-Ranges; `Range: bytes=N-` -> 206 with Content-Range; missing file -> 404 with
        X-Error-Code: EntryNotFound (what huggingface_hub maps to EntryNotFoundError)

`faults=True` makes every file misbehave before it behaves: the first HEAD answers 503; GETs answer 503, then
send half the body and close (a truncated transfer), then close without answering (a dropped connection), then
send a body of the right length with flipped bytes (caught only by the sha256 check); after that, the truth.

    python tests/hub_server.py build --shared ../shared/data --out /tmp/hub     # small slices of the shared data
    python tests/hub_server.py serve /tmp/hub --port 8765                       # then HF_ENDPOINT=http://127.0.0.1:8765
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import socket
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MIRROR_REPO = "raychat/mirror"   # RAYCHAT_DATA_REPO: the files that are plain URLs upstream
GET_FAULTS = ("503", "truncate", "drop", "corrupt")


class HubServer:
    def __init__(self, root, faults: bool = False, port: int = 0, log: bool = False):
        self.root, self.faults, self.log = Path(root), faults, log
        self.counts: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str, str]] = []   # (method, path, range)
        self.lock = threading.Lock()
        self._sha: dict[Path, str] = {}
        self._open: set = set()   # live connections: closed by stop(), or keep-alive clients could still talk
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with server.lock:
                    server._open.add(self.connection)

            def finish(self):
                with server.lock:
                    server._open.discard(self.connection)
                super().finish()

            def do_HEAD(self):
                server._handle(self, body=False)

            def do_GET(self):
                server._handle(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            for conn in list(self._open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def sha256(self, path: Path) -> str:
        if path not in self._sha:
            self._sha[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._sha[path]

    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        parts = h.path.split("?")[0].lstrip("/").split("/")
        rng = h.headers.get("Range", "")
        with self.lock:
            self.requests.append((h.command, h.path, rng))
            if self.log:
                print(h.command, h.path, rng, flush=True)
        if len(parts) < 6 or parts[0] != "datasets" or parts[3] != "resolve":
            return self._send(h, 404, b"not a resolve URL", {"X-Error-Code": "RepoNotFound"}, body)
        repo, rel = f"{parts[1]}/{parts[2]}", "/".join(parts[5:])
        path = self.root / "datasets" / repo / rel
        if not (self.root / "datasets" / repo).is_dir():
            return self._send(h, 404, b"repo not found", {"X-Error-Code": "RepoNotFound"}, body)
        if not path.is_file():
            return self._send(h, 404, b"entry not found", {"X-Error-Code": "EntryNotFound"}, body)
        data = path.read_bytes()
        headers = {"ETag": f'"{self.sha256(path)}"', "X-Repo-Commit": hashlib.sha1(repo.encode()).hexdigest(),
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        with self.lock:
            n = self.counts.get((h.command, rel), 0)
            self.counts[(h.command, rel)] = n + 1
        fault = None
        if self.faults:
            fault = ("503" if n == 0 else None) if not body else (GET_FAULTS[n] if n < len(GET_FAULTS) else None)
        if fault == "503":
            return self._send(h, 503, b"busy", {}, body)
        if fault == "drop":
            h.close_connection = True
            h.connection.close()
            return None
        start = 0
        if rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
        if start >= len(data) and start:
            return self._send(h, 416, b"", {"Content-Range": f"bytes */{len(data)}"}, body)
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        payload = data[start:]
        if fault == "corrupt":
            payload = bytes(b ^ 0xFF for b in payload[:64]) + payload[64:]
        headers["Content-Length"] = str(len(payload))
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if not body:
            return None
        if fault == "truncate":
            h.wfile.write(payload[: len(payload) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.close()
            return None
        h.wfile.write(payload)
        return None

    @staticmethod
    def _send(h, status: int, payload: bytes, headers: dict, body: bool) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if body:
            h.wfile.write(payload)


# ---- a bundle: small slices of ../shared/data, laid out as the Hub repositories the registry names ----------------
def _jsonl(path: Path, n: int) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def _parquet(rows: list[dict], dest: Path, row_group_size: int = 100) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), dest, row_group_size=row_group_size)


def build_bundle(shared, out, rows: int = 60, train_docs: int = 1500, val_docs: int = 200) -> Path:
    """Write a hub-layout folder with every dataset of the registry, each a small slice of the shared data."""
    import pyarrow.parquet as pq

    from raychat.data.registry import DATASETS, shard_name

    shared, out = Path(shared), Path(out)
    ds = out / "datasets"
    texts = pq.read_table(shared / "pretrain" / "shard_00000.parquet", columns=["text"]).column("text").to_pylist()
    val = pq.read_table(shared / "pretrain" / "shard_00005.parquet", columns=["text"]).column("text").to_pylist()
    for name in ("climbmix", "fineweb-edu"):
        spec = DATASETS[name]
        for i in range(2):
            _parquet([{"text": t} for t in texts[i * train_docs:(i + 1) * train_docs]],
                     ds / spec.shard_repo / shard_name(i))
        _parquet([{"text": t} for t in val[:val_docs]], ds / spec.shard_repo / shard_name(spec.max_shard))
    for split, f in (("test", "test"), ("validation", "val"), ("dev", "dev"), ("auxiliary_train", "val")):
        _parquet(_jsonl(shared / "tasks" / "mmlu" / f"{f}.jsonl", rows),
                 ds / "cais/mmlu" / f"all/{split}-00000-of-00001.parquet")
    for split in ("train", "test"):
        _parquet(_jsonl(shared / "tasks" / "gsm8k" / f"{split}.jsonl", rows),
                 ds / "openai/gsm8k" / f"main/{split}-00000-of-00001.parquet")
    for subset in ("ARC-Easy", "ARC-Challenge"):
        src = _jsonl(shared / "tasks" / "arc" / f"{subset}_test.jsonl", 3 * rows)
        arc = [{"id": f"{subset}-{i}", **r} for i, r in enumerate(src)]
        for k, split in enumerate(("train", "validation", "test")):
            _parquet(arc[k * rows:(k + 1) * rows],
                     ds / "allenai/ai2_arc" / f"{subset}/{split}-00000-of-00001.parquet")
    _parquet(_jsonl(shared / "tasks" / "humaneval" / "HumanEval.jsonl.gz", 20),
             ds / "openai/openai_humaneval" / "openai_humaneval/test-00000-of-00001.parquet")
    src = _jsonl(shared / "chat" / "gpteacher_codegen.jsonl", 2 * rows)
    chat = [{"messages": r["messages"], "source": "gpteacher"} for r in src]
    for i in range(4):   # SmolTalk's train split is 4 files on the Hub
        _parquet(chat[i * rows // 4:(i + 1) * rows // 4],
                 ds / "HuggingFaceTB/smol-smoltalk" / f"data/train-{i:05d}-of-00004.parquet")
    _parquet(chat[rows:], ds / "HuggingFaceTB/smol-smoltalk" / "data/test-00000-of-00001.parquet")
    # the files that are plain URLs upstream, in the mirror repository as <dataset>/<file>
    mirror = ds / MIRROR_REPO
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        src = shared / "eval_bundle"
        for p in sorted(src.rglob("*")):
            if p.is_file():
                arc_name = f"eval_bundle/{p.relative_to(src)}"
                if p.suffix == ".jsonl":
                    z.writestr(arc_name, "".join(json.dumps(r) + "\n" for r in _jsonl(p, 8)))
                else:
                    z.write(p, arc_name)
    (mirror / "eval_bundle").mkdir(parents=True, exist_ok=True)
    (mirror / "eval_bundle" / "eval_bundle.zip").write_bytes(buf.getvalue())
    (mirror / "words").mkdir(parents=True, exist_ok=True)
    from raychat.data.registry import PACKAGED_WORDS

    # the packaged list plus one word, so a test can tell the downloaded list from the packaged one
    (mirror / "words" / "words_alpha.txt").write_text(PACKAGED_WORDS.read_text() + "zyzzyva\n")
    (mirror / "identity").mkdir(parents=True, exist_ok=True)
    conv = {"messages": [{"role": "user", "content": "who are you?"}, {"role": "assistant", "content": "raychat"}]}
    (mirror / "identity" / "identity_conversations.jsonl").write_text(json.dumps(conv) + "\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write a hub-layout bundle of small slices of the shared data")
    b.add_argument("--shared", required=True)
    b.add_argument("--out", required=True)
    s = sub.add_parser("serve", help="serve a bundle on 127.0.0.1")
    s.add_argument("root")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--faults", action="store_true", help="503s, truncations, dropped connections, corrupt bodies first")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        print(build_bundle(args.shared, args.out))
        return 0
    srv = HubServer(args.root, faults=args.faults, port=args.port, log=True)
    print(srv.url, flush=True)
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
