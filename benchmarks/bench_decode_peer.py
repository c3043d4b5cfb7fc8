"""Greedy decode tokens/s against nanochat's own Engine, on the same checkpoint (issue 16: batch-1 decode >= 1.5x).

    python benchmarks/bench_decode_peer.py                               # d4 step 300, threads 1 and 2, B 1 and 8
    python benchmarks/bench_decode_peer.py --threads 1 --batches 1 --repeats 7
    python benchmarks/bench_decode_peer.py --nanochat ~/nanochat --nanochat-python ~/nc-venv/bin/python \
        --base-dir ~/.cache/nanochat --checkpoint ~/.cache/nanochat/base_checkpoints/d20
    raychat bench decode-peer                                            # the same, recorded into RESULTS.md

Both sides load one nanochat checkpoint: nanochat through its own `checkpoint_manager.build_model` and
`engine.Engine.generate`, in its own interpreter (--nanochat-python, a subprocess running the driver below with
PYTHONPATH=--nanochat and NANOCHAT_BASE_DIR=--base-dir); raychat through `raychat import nanochat`'s conversion
(`interop.nanochat.load_nanochat`) and `raychat.engine.Engine` with the weight layout `raychat serve/chat` use
(decode_layout="auto"). fp32 on CPU, the same torch thread count on both sides, the same prompt ids (the
--prompt text encoded with the checkpoint's tokenizer, <|bos|> first), greedy.

What is timed, identically on both sides: the prompt's prefill and the first token (chosen from the prefill's
logits) are NOT timed; the clock starts once the first token is out and stops when --tokens more have been
emitted, so a figure is B x --tokens / the time of --tokens decode steps (each: one forward of B new tokens,
argmax, the engine's bookkeeping). For B > 1 both sides decode B copies of the prompt (nanochat's
num_samples; raychat's SamplingParams.num_samples), each from one shared prefill. Each figure is the best of
--repeats runs (on a shared box the least disturbed one); the two systems alternate run by run.

Cross-check: the greedy tokens of both sides must be equal (printed: the first position where they differ, if
any); and both models score the same sequence (prompt + nanochat's batch-1 tokens) in one full forward each,
the largest |logit difference| over every position is printed. Prompt + tokens must stay within the
checkpoint's sequence_len: past it nanochat's "L" layers slide their window and raychat's see everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

SCRATCH = Path("/work/scratch")
MARK = "PEER_RESULT "

# Runs in nanochat's interpreter: argv[1] is a JSON spec; prints MARK + JSON. nanochat's code only, no raychat.
PEER_DRIVER = r'''
import json, sys, time
spec = json.loads(sys.argv[1])
import torch
torch.set_num_threads(spec["threads"])
from nanochat.checkpoint_manager import build_model
from nanochat.engine import Engine
model, tokenizer, _ = build_model(spec["checkpoint"], spec["step"], torch.device("cpu"), "eval")
engine, n, prompt = Engine(model, tokenizer), spec["tokens"], spec["prompt"]
out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": str(model.cos.dtype), "runs": []}
for r in range(spec["repeats"]):
    for b in spec["batches"]:
        gen = engine.generate(prompt, num_samples=b, max_tokens=n + 1, temperature=0.0)
        cols = [next(gen)[0]]  # prefill + first token: not timed
        t0 = time.perf_counter()
        for col, _ in gen:
            cols.append(col)
            if len(cols) == n + 1:
                break
        dt = time.perf_counter() - t0
        gen.close()
        out["runs"].append({"batch": b, "seconds": dt, "steps": len(cols) - 1, "tokens": [c[0] for c in cols]})
if spec.get("logits_out"):
    ids = prompt + next(x for x in out["runs"] if x["batch"] == min(spec["batches"]))["tokens"]
    with torch.inference_mode():
        torch.save(model(torch.tensor([ids]))[0].float(), spec["logits_out"])
print("PEER_RESULT " + json.dumps(out), flush=True)
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanochat", default=str(SCRATCH / "nanochat"), help="nanochat checkout (put on PYTHONPATH)")
    ap.add_argument("--nanochat-python", default=str(SCRATCH / "nc-venv/bin/python"),
                    help="the interpreter of nanochat's own environment")
    ap.add_argument("--base-dir", default=str(SCRATCH / "nc-base"),
                    help="NANOCHAT_BASE_DIR (its tokenizer/ is the checkpoint's tokenizer)")
    ap.add_argument("--checkpoint", default=None,
                    help="nanochat checkpoint directory (default: <base-dir>/base_checkpoints/d4)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    ap.add_argument("--tokens", type=int, default=224, help="decode steps timed per run (after the first token)")
    ap.add_argument("--batches", default="1,8", help="comma-separated decode batch sizes (copies of the prompt)")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts, the same on both sides")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure; the best is reported")
    ap.add_argument("--prompt", default="The capital of France is", help="prompt text (<|bos|> is prepended)")
    ap.add_argument("--modes", default="eager,compiled",
                    help="raychat decode paths: eager (Engine's default), compiled (Engine(compile_decode=True))")
    ap.add_argument("--no-peer", action="store_true", help="time raychat only (no nanochat subprocess)")
    args = ap.parse_args(argv)
    try:
        args.batches = [int(x) for x in args.batches.split(",")]
        args.threads = [int(x) for x in args.threads.split(",")]
    except ValueError:
        ap.error("--batches and --threads take comma-separated integers, e.g. 1,8")
    args.modes = args.modes.split(",")
    if not args.modes or set(args.modes) - {"eager", "compiled"}:
        ap.error(f"--modes: expected eager and/or compiled, got {','.join(args.modes)}")
    if min(args.batches + args.threads) < 1 or args.tokens < 1 or args.repeats < 1:
        ap.error("--batches, --threads, --tokens and --repeats must be >= 1")
    args.checkpoint = args.checkpoint or str(Path(args.base_dir) / "base_checkpoints" / "d4")
    return args


def parse_peer_output(text: str) -> dict:
    """The driver's stdout -> its result: {"runs": [{batch, seconds, steps, tokens}], torch, threads, dtype}.
    nanochat prints its own log lines too; the result is the last line starting with MARK."""
    lines = [ln[len(MARK):] for ln in text.splitlines() if ln.startswith(MARK)]
    if not lines:
        raise SystemExit(f"nanochat driver printed no {MARK.strip()} line; its output ends:\n{text[-2000:]}")
    res = json.loads(lines[-1])
    if not isinstance(res.get("runs"), list) or not all({"batch", "seconds", "steps", "tokens"} <= set(r)
                                                        for r in res["runs"]):
        raise SystemExit(f"nanochat driver result has no usable runs: {lines[-1][:500]}")
    return res


def best_runs(runs: list[dict]) -> dict[int, dict]:
    """Per batch size, the fastest run (by seconds per decode step)."""
    out: dict[int, dict] = {}
    for r in runs:
        b = r["batch"]
        if b not in out or r["seconds"] / r["steps"] < out[b]["seconds"] / out[b]["steps"]:
            out[b] = r
    return out


def tokens_per_s(run: dict) -> float:
    return run["batch"] * run["steps"] / run["seconds"]


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or of the shorter list's end); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run_peer(args, threads: int, prompt: list[int], logits_out: str | None, repeats: int) -> dict:
    spec = {"checkpoint": args.checkpoint, "step": args.step, "tokens": args.tokens, "batches": args.batches,
            "threads": threads, "repeats": repeats, "prompt": prompt, "logits_out": logits_out}
    env = {**os.environ, "PYTHONPATH": args.nanochat, "NANOCHAT_BASE_DIR": args.base_dir,
           "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([args.nanochat_python, "-c", PEER_DRIVER, json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"nanochat driver failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return parse_peer_output(proc.stdout)


def raychat_engine(model, tokenizer, batch: int, mode: str):
    """mode "eager" (what `raychat serve/chat` run) or "compiled" (Engine(compile_decode=True): compiled here, at
    engine start, not in the timed runs)."""
    from raychat.engine import Engine

    return Engine(model, tokenizer, max_batch_size=batch, decode_layout="auto", compile_decode=mode == "compiled")


def run_raychat(eng, prompt: list[int], tokens: int, batch: int) -> dict:
    from raychat.engine import SamplingParams

    eng.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=tokens + 1, num_samples=batch))
    cols: dict[int, list[int]] = {}
    first = eng.step()  # prefill + first token: not timed
    for e in first:
        cols.setdefault(e.sample_index, []).append(e.token_id)
    t0 = time.perf_counter()
    steps = 0
    while eng.has_work():
        evs = eng.step()
        steps += 1
        for e in evs:
            if e.token_id >= 0:
                cols.setdefault(e.sample_index, []).append(e.token_id)
    dt = time.perf_counter() - t0
    steps = min(steps, len(cols[0]) - 1)
    return {"batch": batch, "seconds": dt, "steps": steps, "tokens": cols[0]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from raychat.interop.nanochat import load_nanochat, read_tokenizer

    tokenizer = read_tokenizer(Path(args.base_dir) / "tokenizer")
    prompt = tokenizer.encode(args.prompt, prepend=tokenizer.bos_id)
    model, step, vintage, meta = load_nanochat(args.checkpoint, args.step)
    args.step = step  # the peer loads the same step
    limit = model.config.sequence_len
    if len(prompt) + args.tokens + 1 > limit:
        raise SystemExit(f"prompt ({len(prompt)}) + {args.tokens + 1} tokens exceeds the checkpoint's sequence_len "
                         f"{limit}: lower --tokens (past it the two models attend differently by design)")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# bench_decode_peer: {args.checkpoint} step {step} ({vintage.name} layout), d{model.config.n_layer} width "
          f"{model.config.n_embd} vocab {model.config.vocab_size}; prompt {len(prompt)} tokens, {args.tokens} "
          f"decode steps timed; fp32 CPU; best of {args.repeats}; torch {torch.__version__}; load {load}\n")
    rows, checks = [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        logits_out = tempfile.mktemp(suffix=".pt") if threads == args.threads[0] and not args.no_peer else None
        engines = {(m, b): raychat_engine(model, tokenizer, b, m) for m in args.modes for b in args.batches}
        ours, peer_runs = {m: [] for m in args.modes}, []
        for r in range(args.repeats):  # alternate: a load change on a shared box hits both
            if not args.no_peer:
                peer_runs += run_peer(args, threads, prompt, logits_out if r == 0 else None, 1)["runs"]
            for (m, b), eng in engines.items():
                ours[m].append(run_raychat(eng, prompt, args.tokens, b))
        theirs = best_runs(peer_runs)
        for m in args.modes:
            mine = best_runs(ours[m])
            for b in args.batches:
                rc, nc = tokens_per_s(mine[b]), (tokens_per_s(theirs[b]) if b in theirs else None)
                rows.append((threads, b, m, rc, nc))
                ref = theirs[b]["tokens"] if b in theirs else best_runs(ours[args.modes[0]])[b]["tokens"]
                d = first_difference(mine[b]["tokens"], ref)
                checks.append(f"threads {threads}, B={b}, raychat {m}: greedy tokens vs "
                              f"{'nanochat' if b in theirs else 'raychat ' + args.modes[0]} " +
                              (f"equal ({len(ref)})" if d is None else f"DIFFER from position {d}"))
        if logits_out and os.path.exists(logits_out):
            ref = torch.load(logits_out, weights_only=True)
            os.unlink(logits_out)
            ids = prompt + theirs[min(args.batches)]["tokens"]
            with torch.inference_mode():
                got = model(torch.tensor([ids]))[0].float()
            checks.append(f"full forward of prompt + nanochat's tokens ({len(ids)} positions): max |logit "
                          f"difference| {(got - ref).abs().max().item():.2e} (logits within +-"
                          f"{model.config.logit_softcap:g})")
    print("| threads | batch | raychat decode | raychat tok/s | nanochat tok/s | raychat / nanochat |")
    print("|---|---|---|---|---|---|")
    for threads, b, m, rc, nc in rows:
        print(f"| {threads} | {b} | {m} | {rc:,.0f} | " + (f"{nc:,.0f} | {rc / nc:.2f}x |" if nc else "- | - |"))
    print("\n" + "\n".join(checks))
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
