"""`raychat data`: get pretraining shards.

    raychat data download --dataset climbmix --num-shards 170 --out ~/data/climbmix     # GPU box, real data
    raychat data prepare notes/ books.txt corpus.jsonl --out ~/data/mine --field text   # your own corpus

A dataset directory holds parquet shards with a `text` column; the last shard is the validation split.
Point training at it with `--data-dir DIR`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raychat.common import default_runs_root


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    fmt = argparse.ArgumentDefaultsHelpFormatter
    d = sub.add_parser("download", formatter_class=fmt, help="fetch real pretraining shards (ClimbMix or FineWeb-Edu)",
                       description="Fetch training shards 0..N-1 plus the pinned validation shard (resumable).")
    d.add_argument("--dataset", choices=["climbmix", "fineweb-edu"], default="climbmix",
                   help="shard set: climbmix (6,542 train shards) or fineweb-edu (1,822 train shards)")
    d.add_argument("--num-shards", type=int, default=8,
                   help="training shards to fetch (-1 = all); the validation shard is always added")
    d.add_argument("--out", default=None, help="output directory; unset = $RAYCHAT_HOME/data/<dataset> "
                   "(RAYCHAT_HOME: ~/.cache/raychat)")
    d.add_argument("--num-workers", type=int, default=4, help="parallel downloads")
    d.add_argument("--max-attempts", type=int, default=8, help="retries per shard without progress before giving up")
    d.add_argument("--base-url", default=None, help="mirror URL serving shard_XXXXX.parquet; unset = Hugging Face")

    q = sub.add_parser("prepare", formatter_class=fmt,
                       help="turn text/jsonl/parquet files into shuffled parquet shards",
                       description="Read INPUT files (or directories), shuffle documents, write parquet shards; "
                       "the last shard is validation. Nothing is written if any input is bad.")
    q.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".txt/.md (documents split by --text-unit), .jsonl (--field), .parquet (--field), .gz ok, "
                   "or directories of them")
    q.add_argument("--out", required=True, help="output directory (new, or without parquet files)")
    q.add_argument("--field", default="text", help="jsonl field / parquet column holding the text")
    q.add_argument("--shard-chars", type=int, default=100_000_000, help="characters per training shard (chars)")
    q.add_argument("--val-fraction", type=float, default=0.01,
                   help="share of documents in the validation shard (at least one document)")
    q.add_argument("--text-unit", choices=["paragraph", "line", "file"], default="paragraph",
                   help="how .txt files split into documents: blank-line paragraphs, lines, or whole files")
    q.add_argument("--row-group-size", type=int, default=1024,
                   help="rows per parquet row group (the unit ranks split the data by)")
    q.add_argument("--seed", type=int, default=42, help="shuffle seed")


def run(args) -> int:
    if args.data_command == "download":
        from raychat.data.download import download_shards

        out = Path(args.out).expanduser() if args.out else default_runs_root().parent / "data" / args.dataset
        print(f"downloading {args.dataset}: {args.num_shards} training shard(s) + validation -> {out}", flush=True)
        s = download_shards(args.dataset, args.num_shards, out, num_workers=args.num_workers,
                            base_url=args.base_url, max_attempts=args.max_attempts)
        print(f"done: {s['downloaded']} downloaded, {s['skipped']} already present, {s['bytes'] / 1e6:.1f} MB "
              f"in {s['seconds']:.1f} s -> {out}")
        print(f"train with: --data-dir {out}")
        return 0

    from raychat.data.prepare import prepare_dataset

    s = prepare_dataset(args.inputs, args.out, field=args.field, shard_chars=args.shard_chars,
                        val_fraction=args.val_fraction, seed=args.seed, row_group_size=args.row_group_size,
                        text_unit=args.text_unit)
    print(f"wrote {len(s['train_shards'])} training shard(s) ({s['num_train_docs']:,} docs) + 1 validation shard "
          f"({s['num_val_docs']:,} docs), {s['num_chars']:,} chars -> {args.out}")
    print(f"train with: --data-dir {args.out}")
    return 0
