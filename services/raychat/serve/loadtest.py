"""`raychat bench serve`: a bounded WebSocket load test, reported in `vllm bench serve`'s fields.

    res = await run_loadtest("http://127.0.0.1:8000", concurrency=32, num_chats=128, max_tokens=64)
    print(format_results(res))
    res = bench_serve(run_dir="runs/tiny", concurrency=32, num_chats=128)   # starts (and stops) Ray + Serve
    res = bench_serve(run_dir="runs/tiny", engine=SETTINGS["baseline"])    # the engine as it was (8 slots)

`concurrency` clients each hold one WebSocket and run chats back to back until `num_chats` chats have been
sent in total (a closed loop: the offered load adapts to the server, nothing queues without bound). With
`turns` > 1 a chat is a conversation: each turn resends the whole history (as the web page and OpenAI clients
do) plus a new user message, and TTFT is also reported per turn (`ttft_turn{t}` medians), which is where prefix
reuse shows. Loopback only by default: a load test is not a way to hammer someone else's server.

Engine settings (`engine=`, ServeConfig fields) are named in SETTINGS: "baseline" is the engine before
memory-sized slots (8 fixed slots, every prompt prefilled whole, no prefix reuse, one stream item per token),
"default" what `raychat serve` runs now, "no-reuse" the default without prefix caching, "per-token" the
default with one replica -> ingress stream item per token (stream_interval 1). `compare` runs several in one process,
back to back, against the same model.

Fields (ms unless noted), as vLLM defines them:
- TTFT: chat sent -> first token message; E2EL: chat sent -> done;
- TPOT: (E2EL - TTFT) / (output tokens - 1) per request, excluding the first token;
- ITL: gaps between consecutive token messages (all requests pooled);
- throughputs over the wall time of the whole run: requests/s, output tokens/s, prompt+output tokens/s.
A chat that ends in an error message, a dropped socket or a timeout counts as failed.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from urllib.parse import urlparse

PROMPTS = ("Tell me a short story about a robot who learns to paint.",
           "What is 12 * 7? Explain the steps.",
           "Write three sentences about the ocean.",
           "Why is the sky blue?")
SETTINGS = {"baseline": {"max_batch_size": 8, "prefix_caching": False, "prefill_chunk": 0, "stream_interval": 1},
            "default": {},
            "per-token": {"stream_interval": 1},
            "no-reuse": {"prefix_caching": False},
            "no-chunking": {"prefill_chunk": 0}}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _summary(prefix: str, xs_s: list[float]) -> dict:
    ms = [x * 1e3 for x in xs_s]
    return {f"mean_{prefix}_ms": statistics.fmean(ms) if ms else 0.0,
            f"median_{prefix}_ms": statistics.median(ms) if ms else 0.0,
            f"p99_{prefix}_ms": _pct(ms, 99)}


async def _one_chat(ws, messages: list[dict], max_tokens: int, temperature: float, seed: int,
                    timeout_s: float) -> dict:
    msg = {"type": "chat", "messages": messages,
           "params": {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}}
    t0 = time.perf_counter()
    await ws.send(json.dumps(msg))
    times: list[float] = []
    text: list[str] = []
    while True:
        ev = json.loads(await asyncio.wait_for(ws.recv(), timeout=timeout_s))
        now = time.perf_counter()
        if ev["type"] in ("token", "tool_call", "tool_result"):
            times.append(now)
            if ev["type"] == "token":
                text.append(ev["text"])
        elif ev["type"] == "done":
            return {"ok": True, "t0": t0, "times": times, "end": now, "prompt_tokens": ev["usage"]["prompt_tokens"],
                    "output_tokens": ev["usage"]["completion_tokens"], "finish_reason": ev["finish_reason"],
                    "text": "".join(text)}
        elif ev["type"] == "error":
            return {"ok": False, "error": f"{ev['code']}: {ev['message']}"}


async def run_loadtest(url: str, *, concurrency: int = 32, num_chats: int = 128, max_tokens: int = 64,
                       temperature: float = 1.0, api_key: str | None = None, timeout_s: float = 120.0,
                       allow_remote: bool = False, turns: int = 1) -> dict:
    """turns > 1: num_chats conversations of `turns` chats each (chat i of a conversation resends turns
    0..i-1 with the assistant's replies)."""
    import websockets

    host = urlparse(url).hostname or ""
    if not allow_remote and host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"load test target {host!r} is not loopback; pass allow_remote=True for your own server")
    ws_url = url.replace("http", "ws", 1).rstrip("/") + "/ws/chat"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    counter = iter(range(num_chats))
    results: list[dict] = []

    async def client(ci: int) -> None:
        try:
            async with websockets.connect(ws_url, additional_headers=headers, max_size=2**22,
                                          open_timeout=timeout_s) as ws:
                for i in counter:
                    messages: list[dict] = []
                    for t in range(turns):  # a new conversation opens with the (i + t)-th prompt
                        messages.append({"role": "user", "content": PROMPTS[(i + t) % len(PROMPTS)]})
                        try:
                            r = await _one_chat(ws, messages, max_tokens, temperature, seed=i * turns + t,
                                                timeout_s=timeout_s)
                        except (asyncio.TimeoutError, websockets.ConnectionClosed) as e:
                            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
                            return
                        r["turn"] = t
                        results.append(r)
                        if not r["ok"]:
                            break
                        messages.append({"role": "assistant", "content": r["text"]})
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as e:
            results.append({"ok": False, "error": f"connect: {type(e).__name__}: {e}"})

    t_start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    duration = time.perf_counter() - t_start
    ok = [r for r in results if r["ok"]]
    failed = [r for r in results if not r["ok"]]
    ttft = [r["times"][0] - r["t0"] for r in ok if r["times"]]
    e2el = [r["end"] - r["t0"] for r in ok]
    tpot = [(r["end"] - r["t0"] - (r["times"][0] - r["t0"])) / (r["output_tokens"] - 1)
            for r in ok if r["times"] and r["output_tokens"] > 1]
    itl = [b - a for r in ok for a, b in zip(r["times"], r["times"][1:])]
    out_tokens = sum(r["output_tokens"] for r in ok)
    in_tokens = sum(r["prompt_tokens"] for r in ok)
    res = {"concurrency": concurrency, "num_chats": num_chats * turns, "max_tokens": max_tokens, "turns": turns,
           "completed": len(ok), "failed": len(failed) + max(0, num_chats * turns - len(results)),
           "duration_s": duration, "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
           "request_throughput": len(ok) / duration, "output_throughput": out_tokens / duration,
           "total_token_throughput": (in_tokens + out_tokens) / duration}
    for name, xs in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2el)):
        res.update(_summary(name, xs))
    if turns > 1:
        for t in range(turns):
            res.update(_summary(f"ttft_turn{t + 1}", [r["times"][0] - r["t0"] for r in ok
                                                      if r["turn"] == t and r["times"]]))
            res[f"prompt_tokens_turn{t + 1}"] = statistics.fmean(
                [r["prompt_tokens"] for r in ok if r["turn"] == t] or [0])
    res["errors"] = sorted({r["error"] for r in failed})[:10]
    return res


def format_results(res: dict) -> str:
    """The `vllm bench serve` result block."""
    rows = [("Successful requests:", res["completed"], "d"), ("Failed requests:", res["failed"], "d"),
            ("Maximum request concurrency:", res["concurrency"], "d"),
            ("Benchmark duration (s):", res["duration_s"], ".2f"),
            ("Total input tokens:", res["total_input_tokens"], "d"),
            ("Total generated tokens:", res["total_output_tokens"], "d"),
            ("Request throughput (req/s):", res["request_throughput"], ".2f"),
            ("Output token throughput (tok/s):", res["output_throughput"], ".2f"),
            ("Total Token throughput (tok/s):", res["total_token_throughput"], ".2f")]
    lines = ["{s:{c}^50}".format(s=" Serving Benchmark Result ", c="=")]
    lines += [f"{k:<40}{v:<10{f}}" for k, v, f in rows]
    for key, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                       ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):
        lines.append("{s:{c}^50}".format(s=f" {title} ", c="-"))
        for stat in ("mean", "median", "p99"):
            label = f"{stat.capitalize() if stat != 'p99' else 'P99'} {key.upper()} (ms):"
            lines.append(f"{label:<40}{res[f'{stat}_{key}_ms']:<10.2f}")
    if res.get("turns", 1) > 1:
        lines.append("{s:{c}^50}".format(s=" Median TTFT per turn (ms), prompt tokens ", c="-"))
        for t in range(1, res["turns"] + 1):
            ttft, n = res[f"median_ttft_turn{t}_ms"], res[f"prompt_tokens_turn{t}"]
            lines.append(f"{f'Turn {t}:':<40}{ttft:<10.2f}{n:.0f}")
    lines.append("=" * 50)
    if res.get("errors"):
        lines.append("errors: " + "; ".join(res["errors"]))
    return "\n".join(lines)


def bench_serve(*, run_dir: str | None = None, checkpoint: str | None = None, stage: str = "sft",
                url: str | None = None, api_key: str | None = None, concurrency: int = 32, num_chats: int = 128,
                max_tokens: int = 64, temperature: float = 1.0, replicas: int = 1, replica_cpus: float = 1.0,
                port: int = 8000, turns: int = 1, engine: dict | None = None) -> dict:
    """Load-test `url`, or (url None) start Ray + Serve with the given checkpoint on loopback, run the test,
    and shut Serve (and a Ray started here) down again. engine: ServeConfig engine fields (max_batch_size,
    kv_cache_memory, prefix_caching, prefill_chunk; see SETTINGS). Returns the result dict (plus the settings)."""
    load = dict(concurrency=concurrency, num_chats=num_chats, max_tokens=max_tokens, temperature=temperature,
                api_key=api_key, turns=turns)
    if url is not None:
        return asyncio.run(run_loadtest(url, **load))
    import ray
    from ray import serve

    from raychat.serve.app import start
    from raychat.serve.config import ServeConfig
    from raychat.serve.protocol import Limits

    config = ServeConfig(run_dir=run_dir, checkpoint=checkpoint, stage=stage, host="127.0.0.1", port=port,
                         replicas=replicas, num_cpus=replica_cpus, ingress_cpus=0.25, api_key=api_key,
                         limits=Limits(max_concurrent_requests=max(128, 2 * concurrency)), **(engine or {}))
    started = not ray.is_initialized()
    if started:
        ray.init(configure_logging=False, include_dashboard=False, log_to_driver=False)  # stdout = the table
    try:
        base = start(config)
        res = asyncio.run(run_loadtest(base, **load))
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    res.update({"replicas": replicas, "replica_cpus": replica_cpus, "max_batch_size": config.max_batch_size,
                "prefix_caching": config.prefix_caching, "prefill_chunk": config.prefill_chunk,
                "stream_interval": config.stream_interval})
    return res


def compare(names: list[str], **kw) -> dict[str, dict]:
    """Run bench_serve once per named setting, back to back in one Ray session (same box, same load)."""
    import ray

    started = kw.get("url") is None and not ray.is_initialized()
    if started:
        ray.init(configure_logging=False, include_dashboard=False, log_to_driver=False)
    try:
        return {name: bench_serve(**kw, engine=dict(SETTINGS[name])) for name in names}
    finally:
        if started:
            ray.shutdown()


def format_comparison(results: dict[str, dict]) -> str:
    """Each setting's table, then the ratios of the last setting to the first."""
    out = [f"### {name}  ({_settings_line(res)})\n{format_results(res)}" for name, res in results.items()]
    (a_name, a), (b_name, b) = list(results.items())[0], list(results.items())[-1]

    def ratio(key, invert=False):
        x, y = (a[key], b[key]) if not invert else (b[key], a[key])
        return f"{y / x:.2f}x" if x else "n/a"

    out.append(f"{b_name} vs {a_name}: request throughput {ratio('request_throughput')}, median TTFT "
               f"{ratio('median_ttft_ms', invert=True)} lower, p99 ITL {b['p99_itl_ms']:.1f} vs "
               f"{a['p99_itl_ms']:.1f} ms")
    if a.get("turns", 1) > 1:
        out.append("median TTFT per turn, " + ", ".join(
            f"turn {t}: {a[f'median_ttft_turn{t}_ms']:.0f} -> {b[f'median_ttft_turn{t}_ms']:.0f} ms "
            f"({ratio(f'median_ttft_turn{t}_ms', invert=True)} lower)" for t in range(1, a["turns"] + 1)))
    return "\n".join(out)


def _settings_line(res: dict) -> str:
    return (f"max_batch_size {res.get('max_batch_size')}, prefix caching {res.get('prefix_caching')}, "
            f"prefill chunk {res.get('prefill_chunk')}, stream interval {res.get('stream_interval')}")


def add_arguments(p) -> None:
    """Flags for `raychat bench serve` (bench.py delegates here)."""
    p.add_argument("--run-dir", default=None, help="run directory to serve (when no --url)")
    p.add_argument("--checkpoint", default=None, help="checkpoint to serve (when no --url)")
    p.add_argument("--stage", default="sft", help="checkpoint stage")
    p.add_argument("--url", default=None, help="load-test a running server instead (loopback only)")
    p.add_argument("--api-key", default=None, help="API key of the server")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent WebSocket clients")
    p.add_argument("--num-chats", type=int, default=128, help="chats in total (conversations with --turns)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens per chat")
    p.add_argument("--turns", type=int, default=1, help="chats per conversation, each resending the history")
    p.add_argument("--replicas", type=int, default=1, help="engine replicas (when starting the server)")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per engine replica")
    p.add_argument("--port", type=int, default=8000, help="port (when starting the server)")
    p.add_argument("--baseline", action="store_true",
                   help="the engine before memory-sized slots: 8 fixed slots, no prefix reuse, no chunked prefill")
    p.add_argument("--compare", default=None,
                   help=f"comma-separated settings to run back to back, e.g. baseline,default ({', '.join(SETTINGS)})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run_from_args(args) -> dict:
    from raychat.common import RaychatError

    if args.url is None and args.run_dir is None and args.checkpoint is None:
        raise RaychatError("bench serve needs --url of a running server, or --run-dir/--checkpoint to serve")
    kw = dict(run_dir=args.run_dir, checkpoint=args.checkpoint, stage=args.stage, url=args.url,
              api_key=args.api_key, concurrency=args.concurrency, num_chats=args.num_chats,
              max_tokens=args.max_tokens, replicas=args.replicas, replica_cpus=args.replica_cpus, port=args.port,
              turns=args.turns)
    if args.compare:
        names = [n.strip() for n in args.compare.split(",") if n.strip()]
        unknown = [n for n in names if n not in SETTINGS]
        if unknown or len(names) < 2 or args.url is not None:
            raise RaychatError(f"--compare takes two or more of {', '.join(SETTINGS)} (and no --url); got "
                               f"{args.compare!r}")
        results = compare(names, **kw)
        print(json.dumps(results, indent=2) if args.json else format_comparison(results))
        return results
    res = bench_serve(**kw, engine=SETTINGS["baseline"] if args.baseline else None)
    print(json.dumps(res, indent=2) if args.json else format_results(res))
    return res
