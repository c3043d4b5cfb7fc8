"""The d4 quality race (issue 16): equal tokens, equal data, equal tokenizer settings; val bpb and training speed.

    python benchmarks/bench_quality.py                        # the race with raychat's defaults
    python benchmarks/bench_quality.py --set warmup_steps=0   # the same with PretrainConfig fields overridden
    python benchmarks/bench_quality.py --peer ./nc_race.sh --rounds 2   # interleave a peer run: peer, us, peer, us
    raychat bench quality                                     # the same, recorded into benchmarks/RESULTS.md

The race: a 8192-token BPE trained on the first 20,000,000 characters of the training shards (documents cut to
10,000 characters; cached on disk after the first run), depth 4, head dim 64, width 256, window pattern L,
sequence 256, device batch 8, total batch 2,048 tokens, 300 optimizer steps, fp32, 2 threads, torch.compile;
every other hyperparameter is PretrainConfig's default, resolved by `derive` (the recipe under test). The run
is raychat's own pretraining (`raychat pretrain --no-ray`'s code path: harness loop, evals, final checkpoint)
in a scratch run directory next to the tokenizer cache. Val bpb is measured on the first 65,536 tokens of the
validation shard at steps 0, 100, 200 and 300.

Training tokens/s counts only the optimizer steps after the 10th (compile and allocator warm-up excluded, the
definition nanochat's base_train uses for its total training time), so a peer's log gives a comparable figure:
`--peer CMD` runs CMD (a shell command printing nanochat base_train's log) and reads its "Validation bpb" and
"dt:" lines. Rounds alternate the two systems so a load change on a shared box hits both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RACE = {"depth": 4, "aspect_ratio": 64, "head_dim": 64, "seq_len": 256, "window_pattern": "L",
        "device_batch_size": 8, "total_batch_size": 2048, "num_iterations": 300, "eval_every": 100,
        "eval_tokens": 65536, "compile": True, "num_threads": 2, "dtype": "float32", "device": "cpu"}
TOKENIZER = {"vocab_size": 8192, "max_chars": 20_000_000, "doc_cap": 10_000}
SKIP_STEPS = 10  # steps not counted in tokens/s


def parse_overrides(items: list[str]) -> dict:
    """--set k=v pairs -> PretrainConfig fields, each value parsed by its field's type."""
    from raychat.train.config import PretrainConfig

    types = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(types))}")
        kind = types[key]
        try:
            if kind == "bool":
                if val.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(val)
                out[key] = val.lower() in ("true", "1")
            else:
                out[key] = {"int": int, "float": float}.get(kind, str)(val)
        except ValueError:
            raise SystemExit(f"--set {item!r}: {val!r} is not a valid {kind}") from None
    return out


def race_tokenizer(data_dir: Path, tok_dir: Path):
    """The race's tokenizer, trained once into tok_dir (reused when its train_meta.json matches)."""
    from raychat.data.shards import iter_texts, list_shards
    from raychat.tokenizer import Tokenizer, train_tokenizer

    meta_path = tok_dir / "train_meta.json"
    want = {**TOKENIZER, "data_dir": str(data_dir)}
    if meta_path.is_file() and json.loads(meta_path.read_text()) == want:
        return Tokenizer.load(tok_dir)
    train_paths, _ = list_shards(data_dir)
    t0 = time.perf_counter()
    tok = train_tokenizer(iter_texts(train_paths, max_chars=TOKENIZER["max_chars"], doc_cap=TOKENIZER["doc_cap"]),
                          TOKENIZER["vocab_size"])
    tok.save(tok_dir)
    meta_path.write_text(json.dumps(want, indent=2) + "\n")
    print(f"trained the race tokenizer in {time.perf_counter() - t0:.1f} s -> {tok_dir}", flush=True)
    return tok


def run_raychat(cfg, data_dir: Path, tokenizer_dir: Path, run_dir: Path) -> dict:
    """One race through raychat's own pretraining (`raychat pretrain --no-ray`: the harness loop, its evals and
    checkpoint), in this process, in a fresh run_dir; val bpb and step times are read back from its metrics.jsonl."""
    from raychat.train.harness import launch

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shutil.copytree(tokenizer_dir, run_dir / "tokenizer")
    cfg = cfg.replace(run_dir=str(run_dir), data_dir=str(data_dir), log_every=1, save_every=-1, keep_checkpoints=1,
                      metrics_port=0, sample_every=-1, core_every=-1, num_workers=1)
    summary = launch("pretrain", cfg, no_ray=True)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = {e["step"]: e["val_bpb"] for e in events if e.get("event") == "eval"}
    times = [e["step_seconds"] for e in sorted((e for e in events if e.get("event") == "train"),
                                               key=lambda e: e["step"])]
    counted = times[SKIP_STEPS:]  # steps 11.. (the first is step 1)
    plan = {k: v for k, v in next(e for e in events if e.get("event") == "plan").items()
            if k not in ("job", "time", "event", "resumed_from", "source_checkpoint")}
    return {"system": "raychat", "val_bpb": evals, "tokens_per_s": plan["total_batch_size"] * len(counted) /
            sum(counted), "median_step_s": statistics.median(counted), "first_step_s": times[0],
            "final_loss": summary["final_loss"], "plan": plan}


def run_peer(cmd: str, log_path: Path) -> dict:
    """Run a peer (nanochat base_train) command and read val bpb per step and per-step dt from its log."""
    t0 = time.perf_counter()
    with open(log_path, "w") as f:
        rc = subprocess.run(cmd, shell=True, stdout=f, stderr=subprocess.STDOUT).returncode
    text = log_path.read_text()
    if rc != 0:
        raise SystemExit(f"peer command failed (exit {rc}); its log: {log_path}\n{text[-2000:]}")
    evals = {int(s): float(v) for s, v in re.findall(r"Step (\d+) \| Validation bpb: ([\d.]+)", text)}
    dts = [(int(s), float(d) / 1000) for s, d in re.findall(r"step (\d+)/\d+ .*?\| dt: ([\d.]+)ms", text)]
    counted = [d for s, d in dts if s > SKIP_STEPS]
    if not evals or not counted:
        raise SystemExit(f"could not read val bpb / dt lines from the peer's log {log_path}")
    batch = int(re.search(r"Total batch size ([\d,]+)", text).group(1).replace(",", ""))
    for s, v in sorted(evals.items()):
        print(f"[peer] step {s}: val bpb {v:.4f}", flush=True)
    return {"system": "peer", "val_bpb": evals, "tokens_per_s": batch * len(counted) / sum(counted),
            "median_step_s": statistics.median(counted), "wall_s": time.perf_counter() - t0, "log": str(log_path)}


def to_markdown(rows: list[dict], cfg, peer_cmd: str | None) -> str:
    steps = sorted({s for r in rows for s in r["val_bpb"]})
    lines = ["| round | system | " + " | ".join(f"val bpb @{s}" for s in steps) + " | tokens/s | median step (s) | "
             "load at start |", "|" + "---|" * (len(steps) + 5)]
    for r in rows:
        bpbs = " | ".join(f"{r['val_bpb'][s]:.4f}" if s in r["val_bpb"] else "-" for s in steps)
        lines.append(f"| {r['round']} | {r['system']} | {bpbs} | {r['tokens_per_s']:,.0f} | {r['median_step_s']:.3f} | "
                     f"{r['load']} |")
    ours = [r for r in rows if r["system"] == "raychat"]
    peers = [r for r in rows if r["system"] == "peer"]
    if ours and peers:
        ratio = statistics.mean(r["tokens_per_s"] for r in ours) / statistics.mean(r["tokens_per_s"] for r in peers)
        lines += ["", f"raychat / peer training tokens/s (means over rounds): {ratio:.2f}x"]
    if peer_cmd:
        lines += ["", f"peer command: `{peer_cmd}`"]
    plan = ours[0]["plan"] if ours else {}
    lines += ["", "config: " + json.dumps({k: getattr(cfg, k) for k in (
        "depth", "aspect_ratio", "head_dim", "seq_len", "window_pattern", "device_batch_size", "total_batch_size",
        "num_iterations", "embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr", "weight_decay",
        "warmup_steps", "warmdown_ratio", "final_lr_frac", "target_param_data_ratio", "compile", "num_threads",
        "dtype", "seed")}), "plan: " + json.dumps({k: (round(v, 6) if isinstance(v, float) else v)
                                                   for k, v in plan.items()}),
        f"tokenizer: {json.dumps(TOKENIZER)}; torch {torch.__version__}"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    from raychat.common import RaychatError
    from raychat.data.shards import resolve_data_dir
    from raychat.train.config import PretrainConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="parquet shards; unset = ../shared/data/pretrain")
    ap.add_argument("--tok-dir", default="~/.cache/raychat/bench-quality/tokenizer",
                    help="where the race tokenizer is cached (trained on the first run)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a PretrainConfig field (repeatable), e.g. --set warmup_steps=0")
    ap.add_argument("--iterations", type=int, default=None, help="optimizer steps (default: the race's 300)")
    ap.add_argument("--peer", default=None, help="shell command of a peer run whose log is read (nanochat)")
    ap.add_argument("--rounds", type=int, default=1, help="how many times to run each system, alternating")
    ap.add_argument("--no-compile", action="store_true", help="eager mode (the race is compiled)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    try:
        data_dir = resolve_data_dir(args.data_dir)
    except RaychatError as e:
        raise SystemExit(str(e)) from None
    overrides = {**RACE, **parse_overrides(args.set)}
    if args.iterations:
        overrides["num_iterations"] = args.iterations
    if args.no_compile:
        overrides["compile"] = False
    try:
        cfg = PretrainConfig(**overrides)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    tok_dir = Path(args.tok_dir).expanduser()
    race_tokenizer(data_dir, tok_dir)
    rows = []
    for rnd in range(1, args.rounds + 1):
        order = ["peer", "raychat"] if args.peer else ["raychat"]
        for system in order:
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            if system == "peer":
                res = run_peer(args.peer, tok_dir.parent / f"peer-round{rnd}.log")
            else:
                res = run_raychat(cfg, data_dir, tok_dir, tok_dir.parent / "run")
            rows.append({**res, "round": rnd, "load": load})
    md = to_markdown(rows, cfg, args.peer)
    print(md)
    out = {"rows": rows, "markdown": md, "config": cfg.to_dict()}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
