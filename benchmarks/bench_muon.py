"""Muon step time for a few stacked matrix shapes: a plain script (no pytest needed, so it runs in the image).

    python benchmarks/bench_muon.py [--rounds N]          # or: raychat bench muon

On CPU it times fp32 stacks small enough for a laptop-class box; on CUDA it times the nanochat d12 shapes
(n_embd 768: K matrices of (768, 768), (3072, 768), (768, 3072)) with bf16 Polar Express. The table carries the
Polar Express matmul FLOPs per step and the achieved GFLOP/s, so a number can be compared with the machine's
GEMM peak. Each row also checks its result (the step changed the weights; Polar Express output has singular
values near 1), so a broken optimizer cannot post a fast time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from raychat.optim import MuonAdamW, polar_express

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# (K, m, n): K same-shape matrices updated as one stack
SHAPES = ([(48, 768, 768), (12, 3072, 768), (12, 768, 3072)] if CUDA
          else [(12, 256, 256), (4, 1024, 256), (4, 256, 1024)])
NS_STEPS = 5


def _pe_flops(K: int, m: int, n: int, steps: int = NS_STEPS) -> float:
    """Matmul FLOPs of Polar Express: per iteration X X^T (2 s^2 l), A A (2 s^3), B X (2 s^2 l), s = min, l = max."""
    s, l = min(m, n), max(m, n)
    return K * steps * (4 * s * s * l + 2 * s**3)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _time(fn, rounds: int) -> list[float]:
    fn()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return times


def muon_step(shape, rounds: int) -> list[float]:
    K, m, n = shape
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(m, n, device=DEVICE, generator=gen) * 0.02) for _ in range(K)]
    for p in params:
        p.grad = torch.randn(m, n, device=DEVICE, generator=gen)
    opt = MuonAdamW([{"kind": "muon", "params": params, "lr": 0.02, "weight_decay": 0.1}])
    before = params[0].detach().clone()
    times = _time(opt.step, rounds)
    if torch.equal(params[0].detach(), before):
        raise SystemExit(f"muon step {shape}: the weights did not change")
    return times


def polar(shape, rounds: int) -> list[float]:
    K, m, n = shape
    G = torch.randn(K, m, n, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(0))
    out = []
    times = _time(lambda: out.append(polar_express(G, steps=NS_STEPS)), rounds)
    s = torch.linalg.svdvals(out[-1][0].double())
    if not 0.5 < s.median().item() < 1.5:
        raise SystemExit(f"polar express {shape}: median singular value {s.median().item():.3f}, expected ~1")
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5 if CUDA else 3, help="timed rounds per row (after one warm-up)")
    args = ap.parse_args(argv)
    print(f"device {DEVICE}, {NS_STEPS} Polar Express steps, {args.rounds} rounds per row")
    print(f"{'benchmark':<28}{'min ms':>10}{'median ms':>11}{'mean ms':>10}{'PE GFLOP':>10}{'GFLOP/s':>10}")
    for name, fn in (("muon_step", muon_step), ("polar_express", polar)):
        for shape in SHAPES:
            t = fn(shape, args.rounds)
            flops = _pe_flops(*shape)
            mean, label = statistics.mean(t), f"{name}[{'x'.join(map(str, shape))}]"
            print(f"{label:<28}{min(t) * 1e3:>10.2f}{statistics.median(t) * 1e3:>11.2f}{mean * 1e3:>10.2f}"
                  f"{flops / 1e9:>10.2f}{flops / mean / 1e9:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
