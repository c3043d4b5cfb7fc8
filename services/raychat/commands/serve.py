"""`raychat serve`: serve a checkpoint on Ray Serve — the web chat page, WebSocket chat, an OpenAI-compatible
API and Prometheus metrics, all on one port.

    raychat serve --run-dir runs/tiny --stage sft                       # local Ray, http://127.0.0.1:8000
    raychat serve --checkpoint /ckpt/sft/step_000800 --api-key "$KEY"  # one GPU: one replica with num_gpus=1
    raychat serve --run-dir /shared/run --replicas 2 --max-replicas 8 --host 0.0.0.0 --address auto   # cluster

Starts a local Ray (or joins `--address`), deploys the app, waits until the model is loaded, prints the
URLs and blocks. Ctrl-C or SIGTERM (`docker stop`, Kubernetes) drains: it waits until the engines have no
request running or waiting (at most --drain-timeout seconds), then shuts Serve (and the local Ray) down and
exits 0. Our SIGTERM handler is installed after ray.init, replacing the one Ray installs in the driver (which
dumps a stack and dies).
"""

from __future__ import annotations

import os
import signal
import time

from raychat.serve.protocol import Limits

_LIMIT_FLAGS = {  # flag -> (Limits field, help)
    "--max-concurrent-requests": ("max_concurrent_requests", "generations in flight per ingress before 429"),
    "--max-concurrent-per-client": ("max_concurrent_per_client", "generations in flight per client IP, 0 = off "
                                                                 "(default: half of --max-concurrent-requests)"),
    "--max-connections-per-client": ("max_connections_per_client", "open WebSockets per client IP, 0 = off "
                                                                   "(default: half of the 512 per ingress)"),
    "--max-messages": ("max_messages", "messages per request"),
    "--max-message-chars": ("max_message_chars", "characters per message"),
    "--max-total-chars": ("max_total_chars", "characters over all messages of a request"),
    "--default-max-tokens": ("default_max_tokens", "completion tokens when a request names none (capped by "
                                                   "the context left)"),
}


def add_arguments(p):
    p.add_argument("--run-dir", default=None, help="run directory holding tokenizer/ and checkpoints/<stage>/")
    p.add_argument("--stage", default="sft", choices=["base", "sft", "rl"], help="checkpoint stage to serve")
    p.add_argument("--checkpoint", default=None,
                   help="explicit checkpoint (step dir, stage dir or run dir); overrides --run-dir/--stage")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to expose beyond this machine)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port for the page, WebSocket, API and /metrics")
    p.add_argument("--replicas", type=int, default=1, help="engine replicas (the minimum when autoscaling)")
    p.add_argument("--max-replicas", type=int, default=None,
                   help="autoscale engine replicas between --replicas and this, on ongoing requests")
    p.add_argument("--api-key", default=None,
                   help="require this key on every route but /health (default: $RAYCHAT_API_KEY; unset = open)")
    p.add_argument("--model-name", default=None, help="model id reported by /v1/models (default raychat-<stage>)")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="sequences decoded together per engine replica at most (vLLM's --max-num-seqs)")
    p.add_argument("--kv-cache-memory", type=_bytes, default=None,
                   help="KV-cache memory per replica, e.g. 2GiB, 512MiB or bytes (default: "
                        "--gpu-memory-utilization on a GPU, 2GiB on CPU); slots = what fits, <= --max-batch-size")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="share of the GPU's memory a replica may use, weights included, as vLLM's flag")
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="prompt tokens prefilled per engine step beside decoding (chunked prefill; default 16 on "
                        "CPU, 512 on a GPU); 0 = whole prompts, a step prefills or decodes")
    p.add_argument("--stream-interval", type=int, default=4,
                   help="tokens the engine replica gathers per stream item to the ingress after the first token "
                        "(vLLM's --stream-interval; 1 = one item per token); clients still get one frame per token")
    p.add_argument("--no-prefix-caching", action="store_true",
                   help="prefill every prompt in full (default: reuse the KV cache of a matching prefix)")
    p.add_argument("--max-seq-len", type=int, default=None, help="context per sequence (default: the model's)")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per engine replica (fractions ok)")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per engine replica (default: 1 if CUDA is visible here, else 0)")
    p.add_argument("--device", default=None, help="engine device override: cpu | cuda")
    p.add_argument("--enforce-eager", action="store_true",
                   help="decode without CUDA graphs on a GPU (as vLLM's flag; graphs are on by default there)")
    p.add_argument("--compile-decode", action="store_true",
                   help="CPU: compile the decode step (one graph per batch bucket) with torch.compile when a replica "
                        "starts: batch-1 decode at d4 1.3-1.8x nanochat's in three runs, seconds to minutes more "
                        "start-up (benchmarks/RESULTS.md, decode-peer); a GPU uses CUDA graphs instead")
    p.add_argument("--address", default=None,
                   help="Ray cluster address to join (e.g. auto); default: start a local Ray")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on Ctrl-C/SIGTERM, seconds to wait for in-flight requests before shutting down")
    p.add_argument("--allowed-hosts", default=None,
                   help="comma-separated Host names to answer (default: loopback + --host without a key, else any)")
    p.add_argument("--allowed-origins", default=None,
                   help="comma-separated web origins (https://app.example) whose pages may call this server")
    p.add_argument("--ws-idle-timeout", type=float, default=Limits().ws_idle_timeout_s,
                   help="close a WebSocket with no chat running that sends nothing for this many seconds")
    for flag, (field, help_) in _LIMIT_FLAGS.items():
        per_client = field.endswith("_per_client")  # None: derived from the global bound (Limits)
        p.add_argument(flag, type=int, default=None if per_client else getattr(Limits(), field), help=help_)


def _bytes(text: str) -> int:
    """'2GiB', '512MiB', '1.5GB', '1000000' -> bytes (argparse turns the ValueError into a usage error)."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
    t = text.strip().lower()
    unit = next((u for u in units if t.endswith(u)), "b" if t.endswith("b") else "")
    try:
        n = float(t[: len(t) - len(unit)] if unit else t) * units.get(unit, 1)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 2GiB, 512MiB or a number of bytes)") from None
    if not n >= 1:
        raise ValueError(f"size must be at least 1 byte, got {text!r}")
    return int(n)


_bytes.__name__ = "size"  # argparse names the type in its error: "invalid size value: 'x'"


def config_from_args(args):
    from raychat.common import RaychatError
    from raychat.serve.config import ServeConfig

    limits = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _) in _LIMIT_FLAGS.items()}
    limits["ws_idle_timeout_s"] = args.ws_idle_timeout
    if not (args.drain_timeout >= 0):
        raise RaychatError(f"--drain-timeout must be >= 0, got {args.drain_timeout}")
    autoscaling = None
    if args.max_replicas is not None and args.max_replicas > args.replicas:
        autoscaling = {"min_replicas": args.replicas, "max_replicas": args.max_replicas}
    try:
        return ServeConfig(run_dir=args.run_dir, stage=args.stage, checkpoint=args.checkpoint, step=args.step,
                           model_name=args.model_name, host=args.host, port=args.port, replicas=args.replicas,
                           autoscaling=autoscaling, api_key=args.api_key or os.environ.get("RAYCHAT_API_KEY"),
                           limits=Limits(**limits), max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len,
                           num_cpus=args.replica_cpus, num_gpus=args.num_gpus, device=args.device,
                           enforce_eager=args.enforce_eager, compile_decode=args.compile_decode,
                           kv_cache_memory=args.kv_cache_memory,
                           gpu_memory_utilization=args.gpu_memory_utilization,
                           prefill_chunk=args.prefill_chunk, prefix_caching=not args.no_prefix_caching,
                           stream_interval=args.stream_interval,
                           allowed_hosts=args.allowed_hosts, allowed_origins=args.allowed_origins or [])
    except (ValueError, TypeError) as e:
        raise RaychatError(str(e)) from None


class _Terminate(Exception):
    """SIGTERM, turned into an exception in the main thread so the drain below runs."""


def _on_sigterm(signum, frame):
    raise _Terminate()


def drain(url: str, api_key: str | None, timeout_s: float) -> bool:
    """Wait until no engine replica has a request running or waiting (two scrapes in a row, so a request
    between the ingress and its replica is not missed). -> True when idle, False at the deadline."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline, idle = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"{url}/metrics", headers=headers, timeout=5.0).text
            busy = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith(("raychat:num_requests_running{", "raychat:num_requests_waiting{")))
        except (httpx.HTTPError, ValueError, IndexError):
            return False  # the app is gone or broken: nothing left to wait for
        idle = idle + 1 if busy == 0 else 0
        if idle >= 2:
            return True
        time.sleep(0.25)
    return False


def run(args):
    import ray
    from ray import serve

    from raychat.checkpoint import resolve_checkpoint
    from raychat.serve.app import start

    config = config_from_args(args)
    ckpt = resolve_checkpoint(config.model_path, config.stage, config.step)  # fail here, not in a replica
    print(f"raychat serve: {ckpt}")
    print(config.to_json())
    t0 = time.time()
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=args.address, configure_logging=False)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    url = None
    try:
        url = start(config)
        print(f"raychat serve: ready in {time.time() - t0:.1f} s", flush=True)
        ws = url.replace("http", "ws", 1)
        key_hint = "?api_key=<key>" if config.api_key else ""
        print(f"  chat page   {url}/{key_hint}\n  websocket   {ws}/ws/chat\n  openai api  {url}/v1  "
              f"(model {config.model_name!r})\n  metrics     {url}/metrics\n  health      {url}/health, "
              f"{url}/ready\nCtrl-C to stop.", flush=True)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, _Terminate) as e:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the drain short
        why = "SIGTERM" if isinstance(e, _Terminate) else "Ctrl-C"
        print(f"raychat serve: {why}: draining in-flight requests (at most {args.drain_timeout:g} s)", flush=True)
        if url is not None and not drain(url, config.api_key, args.drain_timeout):
            print("raychat serve: drain timed out; requests still running are cut", flush=True)
        print("raychat serve: shutting down", flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0
