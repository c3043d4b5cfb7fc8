"""Data pipeline benchmark: tokenizer training time, encoding throughput and PackedLoader tokens/s.

    .venv/bin/python benchmarks/bench_loader.py                        # trains a vocab-32768 tokenizer first
    .venv/bin/python benchmarks/bench_loader.py --tokenizer DIR --seconds 10

Uses the shared Wikipedia shards (../shared/data/pretrain, ~51 MB of text in the 5 training shards).
Prints markdown tables for benchmarks/RESULTS.md:
1. tokenizer training: rustbpe on all training text (no per-document cap), vocab 32768;
2. tiktoken batch encoding throughput by thread count (the loader's bottleneck);
3. loader throughput (B*T tokens delivered per second, after the first batch, which fills the 1000-document
   buffer) for several (B, T), with background prefetch on and off, and the cropped-token fraction;
4. stall: with a simulated training step (sleep, which like real compute releases the GIL), the average time
   next() blocks, i.e. what the training loop actually waits for data.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import pyarrow.parquet as pq


def main() -> int:
    from raychat.common import get_dist_info  # noqa: F401 - import check: run from the repo's venv
    from raychat.data import PackedLoader, iter_texts, list_shards, resolve_data_dir
    from raychat.tokenizer import Tokenizer, train_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory; unset = train a vocab-32768 one")
    ap.add_argument("--data-dir", default=None, help="dataset; unset = ../shared/data/pretrain")
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring time per loader configuration (s)")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="tokenizer threads in the loader")
    args = ap.parse_args()

    data_dir = resolve_data_dir(args.data_dir)
    train_paths, _ = list_shards(data_dir)
    print(f"# data pipeline benchmark ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})\n")

    if args.tokenizer:
        tok = Tokenizer.load(args.tokenizer)
    else:
        texts = list(iter_texts(train_paths))
        chars = sum(map(len, texts))
        nbytes = sum(len(t.encode()) for t in texts)
        t0 = time.perf_counter()
        tok = train_tokenizer(iter(texts), 32768)
        dt = time.perf_counter() - t0
        print("| tokenizer training | text | vocab | seconds | MB/s |\n|---|---|---|---|---|")
        print(f"| rustbpe, {len(texts):,} docs | {chars / 1e6:.1f} M chars ({nbytes / 1e6:.1f} MB) | "
              f"{tok.vocab_size} | {dt:.1f} | {nbytes / 1e6 / dt:.2f} |\n")
        tok.save(tempfile.mkdtemp(prefix="bench_tok_"))

    sample = pq.read_table(train_paths[0], columns=["text"]).column("text").to_pylist()[:2000]
    nbytes = sum(len(t.encode()) for t in sample)
    print("| encode_batch threads | tokens/s | MB/s | bytes/token |\n|---|---|---|---|")
    for th in (1, 2, 4):
        t0 = time.perf_counter()
        ids = tok.encode_batch(sample, num_threads=th)
        dt = time.perf_counter() - t0
        n = sum(map(len, ids))
        print(f"| {th} | {n / dt:,.0f} | {nbytes / 1e6 / dt:.2f} | {nbytes / n:.2f} |")
    print()

    # wall-clock tokens/s depends on how busy the machine is; tokens per CPU-second (all threads of this
    # process) does not, and times the core count bounds what an idle machine would do
    print("| B | T | prefetch | tokens/s (wall) | tokens per CPU-second | cropped fraction |")
    print("|---|---|---|---|---|---|")
    for B, T in ((8, 256), (32, 512), (8, 2048)):
        for prefetch in (2, 0):
            with PackedLoader(tok, data_dir, "train", batch_size=B, seq_len=T, prefetch=prefetch,
                              tokenizer_threads=args.threads) as loader:
                next(loader)
                n, t0, c0 = 0, time.perf_counter(), time.process_time()
                while time.perf_counter() - t0 < args.seconds:
                    x, _ = next(loader)
                    n += x.numel()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                print(f"| {B} | {T} | {prefetch} | {n / dt:,.0f} | {n / dc:,.0f} | "
                      f"{loader.stats()['cropped_fraction']:.3f} |")
                sys.stdout.flush()
    print()

    print("| B | T | simulated step (ms) | consumed tokens/s | median / max wait in next() (ms) |")
    print("|---|---|---|---|---|")
    for B, T, step_ms in ((8, 256, 200), (8, 256, 20)):
        with PackedLoader(tok, data_dir, "train", batch_size=B, seq_len=T, prefetch=2,
                          tokenizer_threads=args.threads) as loader:
            next(loader)
            time.sleep(3.0)  # let the buffer and prefetch queues fill, as during the first training steps
            waits, t0 = [], time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                w = time.perf_counter()
                next(loader)
                waits.append(time.perf_counter() - w)
                time.sleep(step_ms / 1000)
            dt = time.perf_counter() - t0
            waits.sort()
            print(f"| {B} | {T} | {step_ms} | {len(waits) * B * T / dt:,.0f} | "
                  f"{1000 * waits[len(waits) // 2]:.2f} / {1000 * waits[-1]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
