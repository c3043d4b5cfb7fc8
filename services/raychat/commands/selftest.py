"""`raychat selftest`: prove the GPU paths on this box in about two minutes, item by item, with numbers.

    raychat selftest            # everything this machine can run; GPU items skip with a reason on a CPU box
    raychat selftest --quick    # without the Ray Train run
    raychat selftest --json

Items: attention backends vs SDPA (FA3/FA2; windowed + GQA; forward and backward), a training step that lowers
the loss (bf16 on GPU, fp32 on CPU), an FP8 step (torchao, SM89+), torch.compile, collectives across all visible
GPUs (NCCL; gloo with 2 processes on CPU) against a reference sum, a 20-step tiny run through Ray Train that
learns, the engine's KV-cached decode against a full forward, and the engine's CUDA-graph decode against its
eager decode (same greedy tokens, and the speedup). Exit status 1 if any item fails.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="skip the Ray Train run (the slowest item)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


class Skip(Exception):
    pass


def _tiny_model(device, dtype, vocab=256, window_pattern="SL", n_kv_head=2):
    import torch

    from raychat.model import GPT, GPTConfig

    cfg = GPTConfig(sequence_len=128, vocab_size=vocab, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=128,
                    window_pattern=window_pattern, short_window_frac=0.25)
    torch.manual_seed(0)
    with torch.device("meta"):
        m = GPT(cfg, compute_dtype=dtype)
    m.to_empty(device=device)
    m.init_weights()
    with torch.no_grad():
        for b in m.blocks:
            b.attn.c_proj.weight.normal_(0, 0.02)
            b.mlp.c_proj.weight.normal_(0, 0.02)
        m.lm_head.weight.normal_(0, 0.02)
    return m


def item_attention(dev):
    import torch

    from raychat.model.attention import attend, select_backend

    if dev.device_type != "cuda":
        # CPU: SDPA against an explicit float64 softmax(QK^T)V with a causal window and GQA
        q = torch.randn(2, 64, 4, 32)
        k, v = torch.randn(2, 64, 2, 32), torch.randn(2, 64, 2, 32)
        w = 16
        out = attend(q, k, v, w)
        kk, vv = k.double().repeat_interleave(2, 2), v.double().repeat_interleave(2, 2)
        s = torch.einsum("bthd,bshd->bhts", q.double(), kk) / 32**0.5
        i, j = torch.arange(64)[:, None], torch.arange(64)[None]
        s = s.masked_fill(~((j <= i) & (i - j < w)), float("-inf"))
        ref = torch.einsum("bhts,bshd->bthd", s.softmax(-1), vv)
        err = (out.double() - ref).abs().max().item()
        assert err < 1e-4, f"max error {err:.2e}"
        return f"sdpa vs float64 reference (window 16, GQA 4:2): max err {err:.1e}"
    backend, why = select_backend("cuda")
    if backend == "sdpa":
        raise Skip(f"no flash-attention kernel here ({why})")
    results = []
    for window in (None, 256):
        q = torch.randn(2, 1024, 8, 128, device=dev.device, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(2, 1024, 2, 128, device=dev.device, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(2, 1024, 2, 128, device=dev.device, dtype=torch.bfloat16, requires_grad=True)
        out = attend(q, k, v, window)
        out.float().square().sum().backward()
        g_flash = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        os.environ["RAYCHAT_ATTN"] = "sdpa"
        select_backend.cache_clear()
        try:
            ref = attend(q, k, v, window)
            ref.float().square().sum().backward()
        finally:
            os.environ.pop("RAYCHAT_ATTN", None)
            select_backend.cache_clear()
        fwd = (out.float() - ref.float()).abs().max().item()
        bwd = max((a.float() - t.grad.float()).abs().max().item() / (t.grad.float().abs().max().item() + 1e-6)
                  for a, t in zip(g_flash, (q, k, v)))
        assert fwd < 2e-2 and bwd < 5e-2, f"{backend} window={window}: fwd {fwd:.2e}, bwd rel {bwd:.2e}"
        results.append(f"window {window}: fwd {fwd:.1e}, bwd rel {bwd:.1e}")
    return f"{backend} vs sdpa, GQA 8:2 bf16: " + "; ".join(results)


def _loss_drops(model, device, steps=10, compile_=False):
    import torch

    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, model.config.vocab_size, (4, 65), generator=g).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    fwd = torch.compile(model) if compile_ else model
    first = last = None
    for _ in range(steps):
        loss = fwd(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < first * 0.9, f"loss {first:.3f} -> {last:.3f}"
    return first, last


def item_train_step(dev):
    model = _tiny_model(dev.device, dev.dtype)
    first, last = _loss_drops(model, dev.device)
    return f"{str(dev.dtype).removeprefix('torch.')} on {dev.device}: loss {first:.3f} -> {last:.3f} in 10 steps"


def item_fp8(dev):
    import torch

    if dev.device_type != "cuda":
        raise Skip("FP8 needs a CUDA GPU with SM89+")
    if torch.cuda.get_device_capability() < (8, 9):
        raise Skip(f"SM{''.join(map(str, torch.cuda.get_device_capability()))} < SM89")
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        raise Skip("torchao not installed (pip install 'raychat[gpu]')") from None
    from raychat.train.pretrain import convert_fp8

    model = _tiny_model(dev.device, torch.bfloat16, vocab=512)
    n = convert_fp8(model, "tensorwise")  # the same conversion `raychat pretrain --fp8` does
    assert n > 0, "no linear was converted to FP8"
    first, last = _loss_drops(model, dev.device)
    return f"tensorwise FP8, {n} block linears: loss {first:.3f} -> {last:.3f}"


def item_compile(dev):
    if dev.device_type != "cuda":
        raise Skip("torch.compile is used on GPU presets only (CPU compile time dominates tiny runs)")
    model = _tiny_model(dev.device, dev.dtype)
    t0 = time.time()
    first, last = _loss_drops(model, dev.device, compile_=True)
    return f"compiled in {time.time() - t0:.0f} s, loss {first:.3f} -> {last:.3f}"


def _collective_worker(rank, world, backend, port, out):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(world * 1024, generator=g)
    ref = sum(torch.randn(world * 1024, generator=torch.Generator().manual_seed(r)) for r in range(world))
    t = x.clone().to(device)  # .to() on CPU would alias x, and all_reduce works in place
    dist.all_reduce(t)
    err_ar = (t.cpu() - ref).abs().max().item()
    shard = torch.empty(1024, device=device)
    rs = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    rs(shard, x.clone().to(device))
    err_rs = (shard.cpu() - ref[rank * 1024:(rank + 1) * 1024]).abs().max().item()
    out.put((rank, err_ar, err_rs))
    dist.destroy_process_group()


def item_collectives(dev):
    import socket

    import torch
    import torch.multiprocessing as mp

    if dev.device_type == "cuda":
        world, backend = torch.cuda.device_count(), "nccl"
        if world < 2:
            raise Skip("one GPU: nothing to all-reduce across")
    else:
        world, backend = 2, "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_collective_worker, args=(r, world, backend, port, q)) for r in range(world)]
    for p in procs:
        p.start()
    res = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    worst = max(max(a, b) for _, a, b in res)
    assert worst < 1e-4, f"collective result differs from the CPU sum by {worst:.2e}"
    return f"{backend} all_reduce + reduce_scatter on {world} ranks: max err {worst:.1e}"


def item_ray_train(dev):
    from pathlib import Path

    from raychat.common import shared_data_dir
    from raychat.tokenizer import Tokenizer
    from raychat.train.config import PretrainConfig
    from raychat.train.ray_job import run_job

    data = shared_data_dir()
    if data is None:
        raise Skip("no pretraining shards at ../shared/data/pretrain for the tiny run")
    import torch

    gpus = torch.cuda.device_count() if dev.device_type == "cuda" else 0
    with tempfile.TemporaryDirectory() as d:
        run = Path(d)
        Tokenizer.byte_level().save(run / "tokenizer")
        workers = max(1, gpus)
        cfg = PretrainConfig(run_dir=str(run), data_dir=str(data / "pretrain"), depth=2, aspect_ratio=64,
                             head_dim=64, seq_len=128, window_pattern="L", device_batch_size=4,
                             total_batch_size=4 * 128 * workers, num_iterations=20, eval_every=-1,
                             eval_tokens=4096, sample_every=-1, log_every=5, num_workers=workers,
                             use_gpu=gpus > 0, metrics_port=0, scale_lr=False)
        res = run_job("raychat.train.pretrain", cfg, num_workers=workers, use_gpu=gpus > 0, name="selftest",
                      storage_path=run / "ray", max_failures=0)
        assert res.error is None, f"Ray Train job failed: {res.error}"
        ev = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses = [e["raw_loss"] for e in ev if e.get("event") == "train"]
        assert losses[-1] < losses[0], f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"
        return f"{workers} worker(s): loss {losses[0]:.3f} -> {losses[-1]:.3f} in 20 steps"


def item_engine(dev):
    import torch

    from raychat.model import KVCache

    model = _tiny_model(dev.device, dev.dtype).eval()
    idx = torch.randint(0, 256, (2, 48), device=dev.device)
    with torch.no_grad():
        full = model(idx)
        cache = KVCache.for_model(model, 2)
        inc = torch.cat([model(idx[:, :32], kv_cache=cache)] +
                        [model(idx[:, t:t + 1], kv_cache=cache) for t in range(32, 48)], dim=1)
    err = (inc - full).abs().max().item()
    tol = 1e-3 if dev.dtype == torch.float32 else 0.25
    assert err < tol, f"KV-cached decode differs from the full forward by {err:.2e}"
    same = (inc.argmax(-1) == full.argmax(-1)).float().mean().item()
    return f"max |logit diff| {err:.1e}, argmax agreement {same:.0%}"


def item_cuda_graphs(dev):
    import torch

    from raychat.engine import Engine, SamplingParams

    if dev.device_type != "cuda":
        raise Skip("CUDA graphs need a CUDA device (CPU decoding runs eagerly)")
    model = _tiny_model(dev.device, torch.float32).eval()  # fp32: the two paths must agree token for token
    specials = {"<|bos|>": 0, "<|assistant_end|>": 1}
    prompts = [[(7 * i + j) % 250 + 2 for j in range(5 + 3 * i)] for i in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=48)
    outs, rates = {}, {}
    for graphs in (False, True):
        eng = Engine(model, specials, max_batch_size=8, max_seq_len=128, cuda_graphs=graphs)
        eng.generate_many(prompts, params)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        res = eng.generate_many(prompts, params)
        torch.cuda.synchronize()
        outs[graphs] = [c[0].tokens for c in res]
        rates[graphs] = sum(len(x) for x in outs[graphs]) / (time.perf_counter() - t)
    assert outs[True] == outs[False], "greedy tokens differ between graphed and eager decoding"
    return (f"6 requests x 48 tokens identical; {rates[True]:,.0f} tok/s graphed vs {rates[False]:,.0f} eager "
            f"({rates[True] / rates[False]:.1f}x)")


ITEMS = [("attention backends", item_attention), ("training step", item_train_step), ("fp8 step", item_fp8),
         ("torch.compile", item_compile), ("collectives", item_collectives), ("ray train run", item_ray_train),
         ("kv-cached decode", item_engine), ("cuda graphs decode", item_cuda_graphs)]


def run(args):
    from raychat.common import detect_device

    dev = detect_device()
    rows = []
    for name, fn in ITEMS:
        if args.quick and fn is item_ray_train:
            rows.append({"item": name, "status": "skip", "detail": "--quick"})
            continue
        t0 = time.time()
        try:
            detail, status = fn(dev), "pass"
        except Skip as e:
            detail, status = str(e), "skip"
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next item runs
            detail, status = f"{type(e).__name__}: {e}", "FAIL"
            if os.environ.get("RAYCHAT_DEBUG"):
                traceback.print_exc()
        rows.append({"item": name, "status": status, "detail": detail, "seconds": round(time.time() - t0, 1)})
        if not args.json:
            print(f"{status:>4}  {name:<20} {detail}  ({rows[-1]['seconds']} s)", flush=True)
    failed = [r for r in rows if r["status"] == "FAIL"]
    if args.json:
        print(json.dumps({"device": dev.describe(), "items": rows, "ok": not failed}, indent=2))
    else:
        print(f"{dev.describe()}: {sum(r['status'] == 'pass' for r in rows)} passed, {len(failed)} failed, "
              f"{sum(r['status'] == 'skip' for r in rows)} skipped")
    return 1 if failed else 0
