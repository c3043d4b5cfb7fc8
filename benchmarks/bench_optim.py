"""MuonAdamW.step() time on the pretraining models, eager vs compiled (MuonAdamW(compile=True)): a plain script.

    python benchmarks/bench_optim.py [--depths 4,8] [--steps 10] [--threads 2]     # or: raychat bench optim

Each depth builds the GPT of the d4 quality race's recipe (benchmarks/bench_quality.py RACE: aspect ratio 64,
head_dim 64, vocab 8192) at that depth, with `build_optimizer` and the lrs `derive` gives it, and runs the same
schedule on both paths: every step sets new lrs, Muon momentum and weight decay (as the training loop does) and
fresh gradients (a fixed random set times a per-step factor; the backward pass is not timed). The first step of
each path is timed apart (the compiled path compiles there); the table reports the median of the rest, the
number of graphs dynamo compiled (one per tensor shape: a schedule that recompiled would show more), and the
largest relative parameter difference between the two paths after the last step, so a fast path that changed
the math cannot post a time. CPU timings on a shared box are noisy: the load average is printed per row.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import RACE, TOKENIZER  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def build(depth: int, compile: bool):
    """(model, optimizer, lr plan) for the race recipe at `depth`, parameters from seed 0."""
    from raychat.checkpoint import build_model
    from raychat.optim import build_optimizer
    from raychat.train.config import PretrainConfig, derive, model_config_for

    cfg = PretrainConfig(**{**RACE, "depth": depth})
    vocab = TOKENIZER["vocab_size"]
    torch.manual_seed(0)
    model = build_model(dataclasses.asdict(model_config_for(cfg, vocab)), device=DEVICE)
    plan = derive(cfg, vocab, 1)
    lrs = {k: plan[k] for k in ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr", "weight_decay")}
    return model, build_optimizer(model, **lrs, compile=compile), plan


def run(depth: int, compile: bool, steps: int) -> dict:
    from raychat.optim import muon_momentum

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model, opt, plan = build(depth, compile)
    params = [p for p in model.parameters()]
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    base = [torch.randn(p.shape, device=DEVICE, generator=gen) * 1e-2 for p in params]
    for p, g in zip(params, base):
        p.grad = g.clone()
    wd0 = [g["weight_decay"] for g in opt.param_groups]
    times = []
    for step in range(steps):
        frac = 1 - step / (2 * steps)  # a schedule: every hyperparameter the loop sets changes every step
        for g, wd in zip(opt.param_groups, wd0):
            g["lr"] = g["initial_lr"] * frac
            if g["kind"] == "muon":
                g["momentum"] = muon_momentum(step)
                g["weight_decay"] = wd * frac
        for p, g in zip(params, base):
            p.grad.copy_(g).mul_(1 + 0.1 * step)
        _sync()
        t0 = time.perf_counter()
        opt.step()
        _sync()
        times.append(time.perf_counter() - t0)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return {"first": times[0], "median": statistics.median(times[1:]), "graphs": graphs,
            "params": [p.detach().clone() for p in params], "n_params": sum(p.numel() for p in params),
            "shapes": len({tuple(p.shape) for p in params}), "load": os.getloadavg()[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="4,8", help="comma-separated model depths (4 = the race)")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per path (the first is timed apart)")
    ap.add_argument("--threads", type=int, default=RACE["num_threads"], help="torch CPU threads (the race's 2)")
    args = ap.parse_args(argv)
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (the first step is timed apart)")
    if not CUDA:
        torch.set_num_threads(args.threads)
    print(f"device {DEVICE}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.steps} steps")
    print("| depth | params | shapes | eager ms | compiled ms | speed-up | first step eager / compiled s | "
          "graphs | max rel diff | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for depth in [int(d) for d in args.depths.split(",")]:
        e = run(depth, False, args.steps)
        c = run(depth, True, args.steps)
        diff = max(((a - b).norm() / a.norm().clamp_min(1e-30)).item() for a, b in zip(e["params"], c["params"]))
        ok &= diff < 1e-4
        print(f"| d{depth} | {e['n_params'] / 1e6:.1f}M | {e['shapes']} | {e['median'] * 1e3:.1f} | "
              f"{c['median'] * 1e3:.1f} | {e['median'] / c['median']:.2f}x | {e['first']:.2f} / {c['first']:.1f} | "
              f"{c['graphs']} | {diff:.1e} | {e['load']:.2f} / {c['load']:.2f} |", flush=True)
    if not ok:
        print("FAIL: the compiled step's parameters differ from eager's by more than 1e-4 (relative)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
