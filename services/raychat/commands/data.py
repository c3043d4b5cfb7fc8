"""`raychat data`: list, download and prepare the datasets the stages read (the registry: raychat/data/registry.py).

    raychat data list                                   # every dataset: source, local path, present or not
    raychat data download --for gpt2_8xh100             # exactly what that speedrun preset's stages need
    raychat data download climbmix --num-shards 170     # datasets by name (shard sets: training shards + val)
    raychat data prepare notes/ books.txt corpus.jsonl --out ~/data/mine --field text   # your own corpus

Files go to $RAYCHAT_DATA_DIR (default $RAYCHAT_HOME/data, RAYCHAT_HOME = ~/.cache/raychat) or `--data-dir`.
Downloads honour the Hugging Face Hub's settings: HF_ENDPOINT (a mirror), HF_TOKEN, HF_HUB_OFFLINE, HF_HOME.
A pretraining shard directory holds parquet shards with a `text` column; the last shard is the validation split.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    ls = sub.add_parser("list", formatter_class=fmt, help="every dataset: where it comes from and whether it is here")
    ls.add_argument("--data-dir", default=None, help="data folder; unset = $RAYCHAT_DATA_DIR or $RAYCHAT_HOME/data")

    d = sub.add_parser("download", formatter_class=fmt, help="fetch datasets by name or for a speedrun preset",
                       description="Fetch datasets into the data folder (resumable, verified, safe to run twice "
                       "or from several processes). Names: see `raychat data list`.")
    d.add_argument("names", nargs="*", metavar="NAME", help="datasets to fetch (e.g. climbmix eval_bundle arc)")
    d.add_argument("--for", dest="preset", default=None,
                   help="fetch what the stages of this speedrun preset need and are missing (smoke, tiny_cpu, "
                   "gpt2_8xh100, ...)")
    d.add_argument("--num-shards", type=int, default=None,
                   help="pretraining training shards (-1 = all; the validation shard is always added); unset = 8, "
                   "or the preset's number with --for")
    d.add_argument("--data-dir", default=None, help="data folder; unset = $RAYCHAT_DATA_DIR or $RAYCHAT_HOME/data")
    d.add_argument("--num-workers", type=int, default=4, help="parallel downloads")

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


def preset_needs(preset_name: str) -> tuple[list[str], int, bool]:
    """(datasets, pretraining shards, whether development stand-ins count) for a speedrun preset's stages.
    GPU presets (those that download shards) never count the ../shared stand-ins: a real run trains on real data."""
    from raychat.commands.speedrun import PRESETS
    from raychat.common import RaychatError
    from raychat.data.registry import datasets_for
    from raychat.train.config import get_preset

    if preset_name not in PRESETS:
        raise RaychatError(f"unknown preset {preset_name!r}; choose one of {', '.join(sorted(PRESETS))}")
    p = PRESETS[preset_name]

    sft = get_preset(p.model, "sft").replace(**p.overrides.get("sft", {}))
    rl = get_preset(p.model, "rl").replace(**p.overrides.get("rl", {}))
    stages = ["tokenizer", "tokenizer_eval", "pretrain", "base_eval", "sft", "chat_eval"] + (["rl"] if p.rl else [])
    mixture = [m.split(":")[0] for m in sft.mixture.split(",") if m]
    chat = [t for t in f"{p.chat_tasks},{sft.chat_eval_tasks}".split(",") if t]
    needs = datasets_for(stages, chat_tasks=chat, sft_mixture=mixture, rl_tasks=[rl.task] if p.rl else [])
    return needs, max(1, p.download_shards), p.download_shards == 0


def run(args) -> int:
    if args.data_command in ("list", "download") and args.data_dir:
        os.environ["RAYCHAT_DATA_DIR"] = os.path.abspath(os.path.expanduser(args.data_dir))
    from raychat.common import RaychatError
    from raychat.data import registry

    if args.data_command == "list":
        print(f"data folder: {registry.data_root()}")
        for name, ds in registry.DATASETS.items():
            if not registry.missing([name], dev_default=False):
                state = "downloaded"
            else:
                state = "development copy" if not registry.missing([name]) else "missing"
            src = ds.shard_repo or ", ".join(sorted({s.repo or s.url for s in ds.files.values()}))
            print(f"  {name:<12} {state:<17} from {src}\n  {'':<12} {ds.about}")
        return 0

    if args.data_command == "download":
        if bool(args.names) == bool(args.preset):
            raise RaychatError("give dataset NAMEs or --for PRESET (one of the two)")
        if args.preset:
            names, shards, dev_default = preset_needs(args.preset)
            shards = args.num_shards or shards
            print(f"preset {args.preset} needs: {', '.join(names)} ({shards} pretraining shard(s) + validation)")
            fetched = registry.ensure(names, num_shards=shards, dev_default=dev_default)
            print(f"done: {len(fetched)} dataset(s) fetched, the rest already here -> {registry.data_root()}")
            return 0
        for name in args.names:
            registry.get(name)   # every name checked before the first download starts
        for name in args.names:
            s = registry.download(name, num_shards=args.num_shards or 8, num_workers=args.num_workers)
            print(f"{name}: {s['downloaded']} file(s) downloaded, {s['skipped']} already present, "
                  f"{s['seconds']:.1f} s -> {s['path']}", flush=True)
            if registry.get(name).shard_repo:
                print(f"train with: --data-dir {s['path']}")
        return 0

    from raychat.data.prepare import prepare_dataset

    s = prepare_dataset(args.inputs, args.out, field=args.field, shard_chars=args.shard_chars,
                        val_fraction=args.val_fraction, seed=args.seed, row_group_size=args.row_group_size,
                        text_unit=args.text_unit)
    print(f"wrote {len(s['train_shards'])} training shard(s) ({s['num_train_docs']:,} docs) + 1 validation shard "
          f"({s['num_val_docs']:,} docs), {s['num_chars']:,} chars -> {args.out}")
    print(f"train with: --data-dir {args.out}")
    return 0
