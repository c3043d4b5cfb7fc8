"""CORE evaluation throughput (examples/s) on this machine, for a random-init GPT of the tiny_cpu shape.

    .venv/bin/python benchmarks/bench_core.py                                  # d4 / width 256 / seq 256
    .venv/bin/python benchmarks/bench_core.py --max-per-task 50 --batch-sizes 1,16 --tokenizer DIR
    .venv/bin/python benchmarks/bench_core.py --device cuda --depth 12 --seq-len 2048 --max-per-task 500

The tokenizer is a vocab-8192 BPE trained on 2,000 documents of the shared Wikipedia shard (a few seconds),
unless `--tokenizer DIR` (a saved raychat tokenizer) or `--tokenizer bytes` is given: CORE prompts are long
(10-shot), so the tokenizer's compression sets the sequence lengths and therefore the cost. The bundle is the
shared one (20 tasks). Accuracy of a random model is meaningless; only the time is measured. Each batch size is
run twice and the faster run is reported (the first run also pays for parsing the task files).

Prints markdown tables for benchmarks/RESULTS.md: overall examples/s per batch size, and per task at the
largest batch size.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

print = functools.partial(print, flush=True)  # noqa: A001 - progress visible when piped


def build_model(vocab_size: int, depth: int, width: int, head_dim: int, seq_len: int, device):
    import torch

    from raychat.model import GPT, GPTConfig

    torch.manual_seed(0)
    n_head = max(1, width // head_dim)
    cfg = GPTConfig(sequence_len=seq_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head, n_kv_head=n_head,
                    n_embd=width, window_pattern="L")
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.init_weights()
    model.set_compute_dtype(torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
    return model.eval()


def main() -> int:
    import torch

    from raychat.data import registry
    from raychat.evals.core import evaluate_core
    from raychat.tokenizer import Tokenizer, train_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory, or 'bytes'; unset = train vocab 8192")
    ap.add_argument("--depth", type=int, default=4, help="transformer layers")
    ap.add_argument("--width", type=int, default=256, help="model width n_embd")
    ap.add_argument("--head-dim", type=int, default=64, help="attention head size")
    ap.add_argument("--seq-len", type=int, default=256, help="context length: prompts are left-cropped to it")
    ap.add_argument("--max-per-task", type=int, default=20, help="examples per task (-1 = all)")
    ap.add_argument("--batch-sizes", default="1,16", help="comma-separated rows per forward to compare")
    ap.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per forward at most")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--bundle", default=None, help="eval bundle directory; unset = the data registry's eval_bundle "
                    "(downloaded, else ../shared/data/eval_bundle)")
    args = ap.parse_args()

    if args.tokenizer == "bytes":
        tok, tok_desc = Tokenizer.byte_level(), "byte-level (265)"
    elif args.tokenizer:
        tok = Tokenizer.load(args.tokenizer)
        tok_desc = f"{args.tokenizer} ({tok.vocab_size})"
    else:
        import pyarrow.parquet as pq

        shard = sorted(registry.shard_dir("climbmix").glob("shard_*.parquet"))[0]
        texts = pq.read_table(shard, columns=["text"]).column("text").slice(0, 2000).to_pylist()
        tok, tok_desc = train_tokenizer(iter(texts), 8192), f"BPE 8192 (2,000 docs of {shard.parent.name}/{shard.name})"
    bundle = args.bundle or registry.resolve("eval_bundle")
    model = build_model(tok.vocab_size, args.depth, args.width, args.head_dim, args.seq_len, args.device)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"# CORE eval throughput ({os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f}, device {args.device})\n")
    print(f"model: random-init GPT d{args.depth} width {args.width} seq {args.seq_len} ({nparams / 1e6:.1f} M "
          f"params); tokenizer {tok_desc}; {args.max_per_task} examples per task\n")

    print("| batch rows | tasks | examples | seconds | examples/s |\n|---|---|---|---|---|")
    last = None
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        best = None
        for _ in range(2):
            t0 = time.perf_counter()
            r = evaluate_core(model, tok, bundle, device=args.device, max_per_task=args.max_per_task, batch_size=bs,
                              max_seq_len=args.seq_len, max_batch_tokens=args.max_batch_tokens, progress=False)
            dt = time.perf_counter() - t0
            if best is None or dt < best[0]:
                best = (dt, r)
        dt, r = best
        n = sum(r["num_examples"].values())
        print(f"| {bs} | {r['num_tasks']} | {n} | {dt:.1f} | {n / dt:.1f} |")
        last = r
    print("\n| task | type | shots | examples | seconds | examples/s |\n|---|---|---|---|---|---|")
    for t in last["tasks"]:
        lab = t["label"]
        n, s = last["num_examples"][lab], last["seconds"][lab]
        print(f"| {lab} | {t['task_type']} | {t['num_fewshot']} | {n} | {s:.2f} | {n / s:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
