"""bf16 KV-cache decode under CUDA graphs equals eager decode, on a model that takes the inference attention
path a served model takes (bf16 activations: flash kernels when one loaded, else SDPA inside
`inference_attention`), with sliding windows. The selftest's CUDA-graph item runs an fp32 model, which never
takes the flash path.

    python benchmarks/gpu_decode_check.py               # exits 1 when the paths disagree
    python benchmarks/gpu_decode_check.py --json out.json

Same engine settings both times except `cuda_graphs`; greedy decoding of 8 prompts of different lengths for 64
tokens. Every decode step's logits are recorded (the runner's decode output) and compared while the token
streams agree: greedy tokens must be identical and logits within bf16 tolerance (--atol, default 0.25 on
logits soft-capped to +-15: a few bf16 ulps at that magnitude, also the selftest's KV-cache tolerance).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def build_model(device, depth: int, width: int, head_dim: int, seq_len: int, vocab: int):
    from raychat.model import GPT, GPTConfig

    cfg = GPTConfig(sequence_len=seq_len, vocab_size=vocab, n_layer=depth, n_head=width // head_dim,
                    n_kv_head=width // head_dim // 2, n_embd=width, window_pattern="SL", short_window_frac=0.25)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(cfg, compute_dtype=torch.bfloat16)
    model.to_empty(device=device)
    model.init_weights()
    with torch.no_grad():  # an untrained model with non-zero projections and well-separated logits
        for b in model.blocks:
            b.attn.c_proj.weight.normal_(0, width**-0.5)
            b.mlp.c_proj.weight.normal_(0, (4 * width) ** -0.5)
        model.lm_head.weight.normal_(0, 4 * width**-0.5)
    return model.eval()


def run(model, graphs: bool, prompts, max_tokens: int):
    from raychat.engine import Engine, SamplingParams

    eng = Engine(model, {"<|bos|>": 0, "<|assistant_end|>": 1}, max_batch_size=8,
                 max_seq_len=model.config.sequence_len, cuda_graphs=graphs)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    eng.generate_many(prompts[:2], params)  # warm-up (graph capture, allocator)
    logits = []
    decode = eng.runner.decode

    def recording(tokens, holes):
        out = decode(tokens, holes)
        logits.append(out.float().cpu())
        return out

    eng.runner.decode = recording
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = eng.generate_many(prompts, params)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = [c[0].tokens for c in res]
    return tokens, logits, sum(map(len, tokens)) / seconds


def main(argv=None) -> int:
    from raychat.model.attention import load_errors, select_backend

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--head-dim", type=int, default=128, help="flash kernels want 64 or 128")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--atol", type=float, default=0.25, help="max |logit difference| allowed")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_decode_check needs a CUDA GPU: CUDA graphs and the bf16 flash/SDPA decode path exist "
                         "only there")
    backend, why = select_backend("cuda")
    print(f"attention: {backend} ({why}); load errors: {load_errors() or 'none'}", flush=True)
    model = build_model(torch.device("cuda"), args.depth, args.width, args.head_dim, args.seq_len, args.vocab)
    prompts = [[0] + [(37 * i + 11 * j) % (args.vocab - 2) + 2 for j in range(3 + 9 * i)] for i in range(8)]
    eager_tok, eager_logits, eager_rate = run(model, False, prompts, args.max_tokens)
    graph_tok, graph_logits, graph_rate = run(model, True, prompts, args.max_tokens)
    same_tokens = eager_tok == graph_tok
    first_diff = next((i for i, (a, b) in enumerate(zip(eager_tok, graph_tok)) if a != b), None)
    steps = min(len(eager_logits), len(graph_logits))
    pairs = zip(eager_logits[:steps], graph_logits[:steps])
    diffs = [(a - b).abs().max().item() for a, b in pairs if a.shape == b.shape]
    max_diff = max(diffs) if diffs else float("nan")
    ok = same_tokens and len(eager_logits) == len(graph_logits) and max_diff <= args.atol
    out = {"attention": backend, "attention_reason": why, "dtype": "bfloat16", "prompts": len(prompts),
           "decode_steps": [len(eager_logits), len(graph_logits)], "greedy_tokens_equal": same_tokens,
           "first_differing_request": first_diff, "max_abs_logit_diff": max_diff, "atol": args.atol,
           "tokens_per_s": {"eager": eager_rate, "graphs": graph_rate}, "ok": ok,
           "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
