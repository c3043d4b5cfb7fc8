"""Serving benchmark (`raychat bench serve`): a closed-loop WebSocket load test against the Ray Serve app on
loopback, reported in `vllm bench serve`'s fields (raychat.serve.loadtest).

    .venv/bin/python benchmarks/bench_serve.py                        # random-init d2 model, 32 clients
    .venv/bin/python benchmarks/bench_serve.py --max-batch-size 32 --num-chats 512
    .venv/bin/python benchmarks/bench_serve.py --run-dir runs/tiny --stage sft   # a real checkpoint
    .venv/bin/python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --api-key $KEY  # a running server

Without --run-dir/--checkpoint/--url it serves a random-init GPT (depth --depth, width 64 per layer, context
256, byte-level tokenizer) saved to a temp dir: the figures then measure the serving path (Serve routing, the
streaming handle, WebSocket JSON, the engine's batching), not a model's quality. Sampling is seeded per chat,
so two runs generate the same tokens.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from raychat.serve.loadtest import add_arguments, bench_serve, format_results


def random_run_dir(root: Path, depth: int) -> Path:
    import torch

    from raychat.checkpoint import save_checkpoint
    from raychat.model import GPT, GPTConfig
    from raychat.tokenizer import Tokenizer

    tok = Tokenizer.byte_level()
    tok.save(root / "tokenizer")
    cfg = GPTConfig(sequence_len=256, vocab_size=tok.vocab_size, n_layer=depth, n_head=max(1, depth // 2),
                    n_kv_head=max(1, depth // 2), n_embd=64 * depth, window_pattern="L")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    with torch.no_grad():  # non-degenerate activations (zero-init projections would skip the blocks' math)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    save_checkpoint(root / "checkpoints" / "sft", 1, model, config={"preset": "bench_serve"})
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--depth", type=int, default=2, help="layers of the random-init model (no --run-dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="raychat-bench-serve-") as tmp:
        run_dir = args.run_dir
        if args.url is None and run_dir is None and args.checkpoint is None:
            run_dir = str(random_run_dir(Path(tmp), args.depth))
        res = bench_serve(run_dir=run_dir, checkpoint=args.checkpoint, stage=args.stage, url=args.url,
                          api_key=args.api_key, concurrency=args.concurrency, num_chats=args.num_chats,
                          max_tokens=args.max_tokens, replicas=args.replicas, max_batch_size=args.max_batch_size,
                          replica_cpus=args.replica_cpus, port=args.port)
    print(json.dumps(res, indent=2) if args.json else format_results(res))
    if res["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
