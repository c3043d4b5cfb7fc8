"""Engine benchmark on this machine: prefill and decode throughput vs batch size, time to first token, and the
aggregate throughput of concurrent requests with continuous batching vs one request at a time.

    .venv/bin/python benchmarks/bench_engine.py                     # d4 (width 256) and d6 (width 384), vocab 8192
    .venv/bin/python benchmarks/bench_engine.py --models d4 --threads 1 --repeats 5
    .venv/bin/python benchmarks/bench_engine.py --threads 1 --clock cpu    # on a busy shared box
    .venv/bin/python benchmarks/bench_engine.py --models d4 --layouts decode,train   # the weight-layout effect

Models are random-init GPTs from the depth dial (head_dim 64, vocab 8192, context 1024, window pattern SSSL),
in fp32 on CPU (bf16 on a GPU if one is visible). Layout "decode" re-lays the long weights (lm_head, c_fc)
column-major for GEMV (runner.use_decode_layout); "train" keeps the training layout; "auto" (the default, what
`raychat serve/chat/eval` use) re-lays those this CPU's GEMV runs faster that way (timed at start).
Completions ignore stop tokens (the engine gets no tokenizer) so every request generates exactly its max_tokens.
Each figure is the best of --repeats runs: on a shared box the best run is the one least disturbed by other
processes (the load average is printed with the results).

Figures (per model):
- prefill tok/s: a 256-token prompt prefilled into a slot (one forward), prompt tokens / time;
- decode tok/s @ B: B requests running together, generated tokens / time over 64 decode steps;
- bare model loop: the model's KV-cached forward + argmax without the engine (what batch-1 decode can reach
  eagerly; on a GPU the engine's CUDA graphs go past it);
- TTFT: add_request -> first token, idle engine, 256-token prompt; and for a request joining 7 running ones;
- aggregate: 8 concurrent requests of 128 tokens (continuous batching, 8 slots) vs the same 8 sequentially
  (1 slot); and 24 requests of mixed lengths (32..256 tokens) through 8 slots vs sequentially.
Scenarios beyond those tables (--scenarios):
- turns: one conversation of 4 turns (60 user + 150 reply tokens each, ~840 tokens at the end), each turn
  resending the history; TTFT per turn with prefix caching off and on (on: turns 2-4 prefill only what is new);
- itl: 7 streams decode, a 1,000-token prompt arrives; the streams' next 100 inter-token gaps each, p50/p99,
  with the prompt prefilled whole and in chunks (--chunks);
- clients: `raychat bench serve`'s load (32 closed-loop clients, 128 requests) on the bare engine, the
  baseline settings (8 slots, no reuse, whole prompts) against the serve defaults: what the engine alone gains;
- capacity: an engine sized from --kv-cache-memory GiB or (CUDA) --gpu-memory-utilization; prints the start-up
  line (budget -> slots) and runs as many requests as it has slots, sharing a 200-token prefix.

    .venv/bin/python benchmarks/bench_engine.py --models d4 --scenarios turns,itl
    .venv/bin/python benchmarks/bench_engine.py --models d4 --scenarios capacity --kv-cache-memory 1
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch

from raychat.engine import Engine, SamplingParams
from raychat.engine.runner import ColumnMajorPick, describe_capacity, use_decode_layout
from raychat.model import GPT, config_for_depth
from raychat.model.attention import inference_attention

GREEDY = dict(temperature=0.0)
now = time.perf_counter  # --clock cpu: time.process_time


def build(depth: int, device: str, dtype: torch.dtype, layout: str = "decode") -> GPT:
    cfg = config_for_depth(depth, head_dim=64, vocab_size=8192, seq_len=1024)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(cfg, compute_dtype=dtype)
    model.to_empty(device=device)
    model.init_weights()
    with torch.no_grad():  # non-degenerate activations (zero-init projections would skip all the blocks' math)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    if layout == "decode":
        use_decode_layout(model)
    elif layout == "auto":
        model.relaid = use_decode_layout(model, pick=ColumnMajorPick())
    return model.eval()


def prompts(n: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(8192) for _ in range(length)] for _ in range(n)]


def best(fn, repeats: int):
    return max(fn() for _ in range(repeats))


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_to_end(eng: Engine) -> int:
    n = 0
    while eng.has_work():
        n += len(eng.step())
    return n


def bench_prefill(model, repeats, length=256):
    eng = Engine(model, None, max_batch_size=1, max_seq_len=1024)
    p = prompts(1, length)[0]

    def once():
        eng.add_request(p, SamplingParams(max_tokens=1, **GREEDY))
        sync(model.get_device())
        t = now()
        eng.step()
        sync(model.get_device())
        return length / (now() - t)

    return best(once, repeats)


def bench_decode(model, batch, repeats, steps=64, prompt_len=64, decode_rows="prefix", slots=None):
    eng = Engine(model, None, max_batch_size=slots or batch, max_seq_len=1024, decode_rows=decode_rows)
    ps = prompts(batch, prompt_len)

    def once():
        for p in ps:
            eng.add_request(p, SamplingParams(max_tokens=steps + 1, **GREEDY))
        eng.step()  # prefill all (first tokens); then only decode steps are timed
        sync(model.get_device())
        t = now()
        n = run_to_end(eng)
        sync(model.get_device())
        return n / (now() - t)

    return best(once, repeats)


def bench_raw_decode(model, repeats, steps=64, prompt_len=64):
    """The floor the engine sits on: the model's own KV-cached forward + argmax in a bare loop, batch 1."""
    from raychat.model.kv_cache import KVCache

    cache = KVCache.for_model(model, 1, 1024)
    p = torch.tensor(prompts(1, prompt_len), device=model.get_device())

    @torch.inference_mode()
    def once():
        cache.reset()
        with inference_attention(model.get_device()):  # as the engine does (no per-shape cuDNN graphs on CUDA)
            nxt = model(p, kv_cache=cache)[:, -1].argmax(-1, keepdim=True)
            sync(model.get_device())
            t = now()
            for _ in range(steps):
                nxt = model(nxt, kv_cache=cache)[:, -1].argmax(-1, keepdim=True)
                nxt.tolist()  # the engine syncs once per step too
        return steps / (now() - t)

    return best(once, repeats)


def bench_ttft(model, repeats, length=256, running=0):
    eng = Engine(model, None, max_batch_size=running + 1, max_seq_len=1024)

    def once():
        for p in prompts(running, 64, seed=1):
            eng.add_request(p, SamplingParams(max_tokens=1000, **GREEDY))
        for _ in range(4):
            eng.step()  # the running batch is mid-generation
        rid = eng.add_request(prompts(1, length)[0], SamplingParams(max_tokens=4, **GREEDY))
        t = now()
        while not any(e.request_id == rid for e in eng.step()):
            pass
        dt = now() - t
        eng.abort_all()
        return -dt  # best = smallest

    return -best(once, repeats) * 1e3


def bench_aggregate(model, repeats, lengths: list[int], slots: int):
    ps = prompts(len(lengths), 32, seed=2)

    def once_batched():
        eng = Engine(model, None, max_batch_size=slots, max_seq_len=1024)
        for p, n in zip(ps, lengths):
            eng.add_request(p, SamplingParams(max_tokens=n, **GREEDY))
        t = now()
        n = run_to_end(eng)
        return n / (now() - t)

    def once_sequential():
        eng = Engine(model, None, max_batch_size=1, max_seq_len=1024)
        t = now()
        n = 0
        for p, k in zip(ps, lengths):
            eng.add_request(p, SamplingParams(max_tokens=k, **GREEDY))
            n += run_to_end(eng)
        return n / (now() - t)

    return best(once_batched, repeats), best(once_sequential, repeats)


def bench_turns(model, turns=4, user=60, reply=150, prefix_caching=True):
    """TTFT (ms) of each turn of one conversation growing to ~800 tokens: turn t resends turns 1..t-1 with the
    replies, as a chat client does. One engine for the whole conversation (what a serving replica sees)."""
    eng = Engine(model, None, max_batch_size=8, max_seq_len=1024, prefix_caching=prefix_caching)
    users = prompts(turns, user, seed=5)
    history, ttft, replies = [], [], []
    for u in users:
        history = history + u
        rid = eng.add_request(history, SamplingParams(max_tokens=reply, **GREEDY))
        sync(model.get_device())
        t = now()
        out = [e.token_id for e in eng.step() if e.request_id == rid]
        while not out:
            out = [e.token_id for e in eng.step() if e.request_id == rid]
        ttft.append((now() - t) * 1e3)
        while eng.has_work():
            out += [e.token_id for e in eng.step() if e.request_id == rid and e.token_id >= 0]
        history = history + out
        replies.append(out)
    return ttft, len(history), eng.stats()["prefix_cache_hits"], replies


def bench_itl_long_prompt(model, chunk, streams=7, long_len=1000, after=100):
    """7 streams decode; a long prompt arrives; the streams' inter-token gaps (ms) from that moment until each
    has emitted `after` more tokens -> (p50, p99, max, long prompt's TTFT ms)."""
    eng = Engine(model, None, max_batch_size=streams + 1, max_seq_len=1024, prefill_chunk=chunk,
                 prefix_caching=False)
    ids = [eng.add_request(p, SamplingParams(max_tokens=after + 40, **GREEDY)) for p in prompts(streams, 32, 7)]
    for _ in range(20):
        eng.step()
    long_id = eng.add_request(prompts(1, long_len, seed=8)[0], SamplingParams(max_tokens=4, **GREEDY))
    sync(model.get_device())
    t0 = now()
    gaps, counts, ttft, last = [], dict.fromkeys(ids, 0), None, dict.fromkeys(ids, t0)
    while min(counts.values()) < after:
        evs = eng.step()
        sync(model.get_device())
        t = now()
        for e in evs:
            if e.request_id in counts and counts[e.request_id] < after:
                counts[e.request_id] += 1
                gaps.append((t - last[e.request_id]) * 1e3)
                last[e.request_id] = t
            elif e.request_id == long_id and ttft is None:
                ttft = (t - t0) * 1e3
    gaps.sort()
    eng.abort_all()
    return gaps[len(gaps) // 2], gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))], gaps[-1], ttft


def bench_clients(model, baseline: bool, clients=32, chats=128, max_tokens=64):
    """`raychat bench serve`'s load without the serving stack: `clients` closed-loop clients, `chats` requests
    over the same 4 prompts (bos + 40 tokens), temperature 1 -> (requests/s, median TTFT ms). baseline: the
    engine before memory-sized slots (8 slots, no prefix reuse, whole-prompt prefill); else the serve defaults
    on CPU (64 slots, prefix reuse, chunks of 32)."""
    kw = dict(max_batch_size=8) if baseline else dict(max_batch_size=64, prefill_chunk=32, prefix_caching=True)
    eng = Engine(model, None, max_seq_len=1024, **kw)
    ps = [[0] + p for p in prompts(4, 40, seed=1)]
    sent, added, ttft = 0, {}, []
    t0 = now()
    while sent < chats or eng.has_work():
        while len(added) < clients and sent < chats:
            rid = eng.add_request(ps[sent % 4], SamplingParams(temperature=1.0, seed=sent, max_tokens=max_tokens))
            added[rid] = now()
            sent += 1
        for e in eng.step():
            t = added.get(e.request_id)
            if t is not None and t > 0:
                ttft.append((now() - t) * 1e3)
                added[e.request_id] = -1.0
            if e.finish_reason is not None:
                added.pop(e.request_id, None)
    ttft.sort()
    return chats / (now() - t0), ttft[len(ttft) // 2]


def capacity_demo(model, kv_cache_memory, gpu_memory_utilization, max_num_seqs=256):
    """Size an engine from a budget (printing the start-up line), then run as many requests as it has slots
    with a shared 200-token prefix: -> (kv_info, tokens/s, prefix-cache hits, queries)."""
    eng = Engine(model, None, max_batch_size=max_num_seqs, max_seq_len=1024, kv_cache_memory=kv_cache_memory,
                 gpu_memory_utilization=gpu_memory_utilization, prefill_chunk=512, prefix_caching=True)
    shared = prompts(1, 200, seed=9)[0]
    tails = prompts(eng.max_batch_size, 16, seed=10)
    eng.add_request(shared + tails[0], SamplingParams(max_tokens=32, **GREEDY))
    sync(model.get_device())
    t = now()
    n = len(eng.step())  # the first request's prefill puts the shared prefix in the cache; the others reuse it
    for tail in tails[1:]:
        eng.add_request(shared + tail, SamplingParams(max_tokens=32, **GREEDY))
    n += run_to_end(eng)
    sync(model.get_device())
    st = eng.stats()
    return eng.kv_info, n / (now() - t), st["prefix_cache_hits"], st["prefix_cache_queries"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="d4,d6", help="comma-separated depths to run, e.g. d4,d6")
    ap.add_argument("--layouts", default="auto",
                    help="comma-separated weight layouts: auto (what serve/chat/eval use), decode, train")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure; the best is reported")
    ap.add_argument("--batches", default="1,8,32", help="decode batch sizes")
    ap.add_argument("--scenarios", default="core,turns,itl",
                    help="comma-separated: core (the tables above), turns (multi-turn TTFT with/without prefix "
                         "reuse), itl (7 streams' ITL under a 1,000-token prompt, chunked or not), clients "
                         "(bench serve's load on the bare engine, baseline vs default), capacity")
    ap.add_argument("--chunks", default="0,16,32,64,128", help="prefill chunks for the itl scenario (0 = none)")
    ap.add_argument("--kv-cache-memory", type=float, default=None,
                    help="capacity scenario: KV-cache budget in GiB (default on CUDA: --gpu-memory-utilization)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None,
                    help="capacity scenario on CUDA: share of the GPU's memory (vLLM's meaning); default 0.9")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: real time; cpu: this process's CPU time (with --threads 1, what an otherwise idle "
                         "core would take: use it on a box shared with other jobs, and say so with the figures)")
    args = ap.parse_args()
    global now
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    batches = [int(b) for b in args.batches.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# bench_engine: device={dev} dtype={str(dtype)[6:]} threads={torch.get_num_threads()} "
          f"torch={torch.__version__} clock={args.clock} repeats={args.repeats} (best of) load-avg-1min={load:.1f}\n")
    scenarios = set(args.scenarios.split(","))
    known = {"core", "turns", "itl", "clients", "capacity"}
    if scenarios - known:
        raise SystemExit(f"--scenarios: unknown {sorted(scenarios - known)} (known: {', '.join(sorted(known))})")
    rows = []
    models = {}
    for name, layout in [(n, lay) for n in args.models.split(",") for lay in args.layouts.split(",")]:
        if layout not in ("auto", "decode", "train"):
            raise SystemExit(f"--layouts: unknown layout {layout!r} (expected auto, decode or train)")
        depth = int(name.strip().lstrip("d"))
        model = build(depth, dev, dtype, layout)
        c = model.config
        how = f", {model.relaid} weights re-laid" if layout == "auto" and dev.type == "cpu" else ""
        label = f"d{depth} (width {c.n_embd}, {c.n_head} heads, vocab {c.vocab_size}, {layout} layout{how})"
        models[label] = model
        if "core" not in scenarios:
            continue
        r = {"model": label}
        r["prefill"] = bench_prefill(model, args.repeats)
        r["raw@1"] = bench_raw_decode(model, args.repeats)
        for b in batches:
            r[f"decode@{b}"] = bench_decode(model, b, args.repeats)
        r["decode@1 in 8 slots, full"] = bench_decode(model, 1, args.repeats, slots=8, decode_rows="full")
        r["decode@1 in 8 slots, prefix"] = bench_decode(model, 1, args.repeats, slots=8)
        r["ttft"] = bench_ttft(model, args.repeats)
        r["ttft_join"] = bench_ttft(model, args.repeats, running=7)
        r["agg8"] = bench_aggregate(model, args.repeats, [128] * 8, slots=8)
        rng = random.Random(3)
        r["agg24"] = bench_aggregate(model, max(1, args.repeats - 1), [rng.randint(32, 256) for _ in range(24)], 8)
        rows.append(r)
        print(f"done {label}", flush=True)

    if rows:
        print_core(rows, batches)
    for label, model in models.items():
        if "turns" in scenarios:
            print(f"\n{label}: one conversation, 4 turns of 60 user + 150 reply tokens, TTFT per turn (ms)\n")
            print("| prefix caching | turn 1 | turn 2 | turn 3 | turn 4 | final length | tokens reused |")
            print("|---|---|---|---|---|---|---|")
            res = {}
            bench_turns(model)  # warm-up: first-call costs (allocator, kernels) would land on turn 1 of "off"
            for on in (False, True):
                runs = [bench_turns(model, prefix_caching=on) for _ in range(args.repeats)]
                res[on] = ([min(r[0][t] for r in runs) for t in range(4)], *runs[0][1:])  # best of
                ttft, n, hits, _ = res[on]
                print(f"| {'on' if on else 'off'} | " + " | ".join(f"{x:.1f}" for x in ttft) + f" | {n} | {hits} |")
            print("| speedup | " + " | ".join(f"{a / b:.1f}×" for a, b in zip(res[False][0], res[True][0])) + " | | |")
            same = [sum(x == y for x, y in zip(a, b)) for a, b in zip(res[False][3], res[True][3])]
            print(f"\ngreedy replies with reuse equal to without: {res[False][3] == res[True][3]} "
                  f"(tokens matching per turn: {same} of {len(res[True][3][0])})")
        if "itl" in scenarios:
            print(f"\n{label}: 7 streams decoding, a 1,000-token prompt arrives; the streams' next 100 gaps each\n")
            print("| prefill chunk | ITL p50 ms | ITL p99 ms | p99 / p50 | max gap ms | long prompt TTFT ms |")
            print("|---|---|---|---|---|---|")
            bench_itl_long_prompt(model, 128)  # warm-up
            for chunk in [int(x) for x in args.chunks.split(",")]:  # best of --repeats, figure by figure
                runs = [bench_itl_long_prompt(model, chunk or None) for _ in range(args.repeats)]
                p50, p99, mx, ttft = (min(r[i] for r in runs) for i in range(4))
                print(f"| {chunk or 'none (whole prompt)'} | {p50:.2f} | {p99:.2f} | {p99 / p50:.2f} | {mx:.1f} | "
                      f"{ttft:.1f} |")
        if "clients" in scenarios:
            print(f"\n{label}: 32 closed-loop clients, 128 requests of 64 tokens over 4 prompts (no serving stack)\n")
            print("| engine | requests/s | median TTFT ms |\n|---|---|---|")
            res = {}
            for base in (True, False):
                runs = [bench_clients(model, base) for _ in range(args.repeats)]
                res[base] = (max(r[0] for r in runs), min(r[1] for r in runs))
                print(f"| {'baseline (8 slots)' if base else 'default (64 slots, reuse, chunks 32)'} | "
                      f"{res[base][0]:.1f} | {res[base][1]:.1f} |")
            print(f"| ratio | {res[False][0] / res[True][0]:.2f}× | {res[True][1] / res[False][1]:.1f}× lower |")
        if "capacity" in scenarios:
            mem = int(args.kv_cache_memory * 2**30) if args.kv_cache_memory else None
            util = args.gpu_memory_utilization if args.gpu_memory_utilization or mem else None
            if mem is None and util is None:
                if dev.type != "cuda":
                    raise SystemExit("--scenarios capacity on CPU needs --kv-cache-memory GIB")
                util = 0.9
            info, tps, hits, queries = capacity_demo(model, mem, util)
            print(f"\n{label}: capacity from a budget\n{describe_capacity(info)}\n"
                  f"{info['num_slots']} requests (200 shared + 16 own prompt tokens, 32 generated each): "
                  f"{tps:,.0f} generated tok/s, prefix cache {hits:,} of {queries:,} prompt tokens reused "
                  f"({hits / max(1, queries):.0%})")


def print_core(rows, batches):
    print()
    head = ["model", "prefill tok/s (256-tok prompt)"] + [f"decode tok/s @B={b}" for b in batches] + [
        "TTFT ms (idle / joining 7)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["model"], f"{r['prefill']:,.0f}"] + [f"{r[f'decode@{b}']:,.0f}" for b in batches] + [
            f"{r['ttft']:.1f} / {r['ttft_join']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    head = ["model", "8 × 128 tok: continuous tok/s", "sequential tok/s", "speedup",
            "24 mixed (32-256 tok), 8 slots: continuous", "sequential", "speedup",
            "1 request in 8 slots: prefix / full rows", "bare model loop @B=1 (no engine)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        (b8, s8), (b24, s24) = r["agg8"], r["agg24"]
        print(f"| {r['model']} | {b8:,.0f} | {s8:,.0f} | {b8 / s8:.2f}× | {b24:,.0f} | {s24:,.0f} | {b24 / s24:.2f}× | "
              f"{r['decode@1 in 8 slots, prefix']:,.0f} / {r['decode@1 in 8 slots, full']:,.0f} | {r['raw@1']:,.0f} |")


if __name__ == "__main__":
    main()
