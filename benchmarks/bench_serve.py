"""Serving benchmark (`raychat bench serve`): a closed-loop WebSocket load test against the Ray Serve app on
loopback, reported in `vllm bench serve`'s fields (raychat.serve.loadtest).

    .venv/bin/python benchmarks/bench_serve.py                        # random-init d2 model, 32 clients
    .venv/bin/python benchmarks/bench_serve.py --baseline             # the engine before memory-sized slots
    .venv/bin/python benchmarks/bench_serve.py --depth 4 --seq-len 1024 --compare baseline,default
    .venv/bin/python benchmarks/bench_serve.py --depth 4 --seq-len 1024 --turns 4 --max-tokens 150 \
        --num-chats 32 --compare no-reuse,default                     # multi-turn: TTFT per turn
    .venv/bin/python benchmarks/bench_serve.py --run-dir runs/tiny --stage sft   # a real checkpoint
    .venv/bin/python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --api-key $KEY  # a running server

Without --run-dir/--checkpoint/--url it serves a random-init GPT (depth --depth, width 64 per layer, context
--seq-len, byte-level tokenizer) saved to a temp dir: the figures then measure the serving path (Serve
routing, the streaming handle, WebSocket JSON, the engine's batching), not a model's quality. Its lm_head
only ever picks printable ASCII bytes (the other rows are zero, the ASCII rows large), so replies decode to text
that encodes back to the same tokens, as a real model's replies do: the multi-turn test resends them, and
prefix reuse depends on it. No reply ends early (the end-of-turn token is never picked): every chat generates
max_tokens. Sampling is seeded per chat, so two runs generate the same tokens.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from raychat.serve.loadtest import add_arguments, run_from_args


def random_run_dir(root: Path, depth: int, seq_len: int = 256) -> Path:
    import torch

    from raychat.checkpoint import save_checkpoint
    from raychat.model import GPT, GPTConfig
    from raychat.tokenizer import Tokenizer

    tok = Tokenizer.byte_level()
    tok.save(root / "tokenizer")
    cfg = GPTConfig(sequence_len=seq_len, vocab_size=tok.vocab_size, n_layer=depth, n_head=max(1, depth // 2),
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
        printable = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        printable[[tok.encode(chr(c))[0] for c in range(32, 127)]] = True
        model.lm_head.weight[~printable] = 0.0
        model.lm_head.weight[printable] = torch.randn(int(printable.sum()), cfg.n_embd)
    save_checkpoint(root / "checkpoints" / "sft", 1, model, config={"preset": "bench_serve"})
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--depth", type=int, default=2, help="layers of the random-init model (no --run-dir)")
    ap.add_argument("--seq-len", type=int, default=256, help="context of the random-init model (no --run-dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="raychat-bench-serve-") as tmp:
        if args.url is None and args.run_dir is None and args.checkpoint is None:
            args.run_dir = str(random_run_dir(Path(tmp), args.depth, args.seq_len))
        res = run_from_args(args)
    runs = res.values() if args.compare else [res]
    if any(r["failed"] for r in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
