"""`raychat tok-train`: train the byte-level BPE tokenizer on the training shards of a dataset.

    raychat tok-train --run-dir runs/tiny                      # shared Wikipedia shards, vocab 32768
    raychat tok-train --data-dir DIR --max-chars 2000000000 --vocab-size 32768 --out DIR

Only training shards are read (never the validation shard), each document cut to --doc-cap characters so a
few very long documents cannot dominate the statistics (nanochat's recipe: 2B chars, cap 10,000).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from raychat.common import RaychatError, resolve_run_dir


def add_arguments(p) -> None:
    p.add_argument("--data-dir", default=None,
                   help="dataset directory of parquet shards; unset = the downloaded climbmix shards (data registry), "
                   "else ../shared/data/pretrain")
    p.add_argument("--max-chars", type=int, default=2_000_000_000,
                   help="train on at most this many characters of text (chars)")
    p.add_argument("--doc-cap", type=int, default=10_000, help="cut each document to this many characters (chars)")
    p.add_argument("--vocab-size", type=int, default=32768,
                   help="vocabulary size including 256 byte tokens and 9 special tokens (tokens)")
    p.add_argument("--out", default=None, help="tokenizer output directory; unset = <run-dir>/tokenizer")
    p.add_argument("--run-dir", default=None, help="run directory; the tokenizer goes to <run-dir>/tokenizer")


def tokenizer_dir(args) -> Path:
    if args.out:
        return Path(args.out).expanduser()
    return resolve_run_dir(args.run_dir) / "tokenizer"


def run(args) -> int:
    from raychat.data.shards import estimate_text_bytes, iter_texts, list_shards, resolve_data_dir
    from raychat.progress import Progress
    from raychat.tokenizer import train_tokenizer

    if args.max_chars < 1 or args.doc_cap < 1:
        raise RaychatError("--max-chars and --doc-cap must be positive")
    data_dir = resolve_data_dir(args.data_dir)
    train_paths, _ = list_shards(data_dir)
    out = tokenizer_dir(args)
    expected = min(args.max_chars, estimate_text_bytes(train_paths))
    print(f"training a {args.vocab_size}-token BPE on up to {args.max_chars:,} chars of {data_dir} "
          f"({len(train_paths)} training shards) -> {out}", flush=True)

    bar = Progress(expected, desc="read", unit="chars")
    counts = {"chars": 0, "docs": 0}

    def texts():
        for t in iter_texts(train_paths, max_chars=args.max_chars, doc_cap=args.doc_cap):
            counts["chars"] += len(t)
            counts["docs"] += 1
            bar.update(len(t))
            yield t
        bar.close()
        print("counting pairs and merging (no progress shown; a few seconds to minutes)...", flush=True)

    t0 = time.monotonic()
    tok = train_tokenizer(texts(), args.vocab_size)
    seconds = time.monotonic() - t0
    tok.save(out)
    meta = {"data_dir": str(data_dir), "max_chars": args.max_chars, "doc_cap": args.doc_cap,
            "chars": counts["chars"], "docs": counts["docs"], "vocab_size": tok.vocab_size,
            "train_seconds": round(seconds, 2)}
    (out / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"trained vocab {tok.vocab_size} on {counts['chars']:,} chars ({counts['docs']:,} docs) in "
          f"{seconds:.1f} s; saved to {out}")
    return 0
