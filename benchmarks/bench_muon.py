"""Muon step time for a few stacked matrix shapes (pytest-benchmark).

    .venv/bin/pytest benchmarks/bench_muon.py --benchmark-columns=mean,stddev,rounds

On CPU it times fp32 stacks small enough for a laptop-class box; on CUDA it times the nanochat d12 shapes
(n_embd 768: K matrices of (768, 768), (3072, 768), (768, 3072)) with bf16 Polar Express. `extra_info`
carries the Polar Express matmul FLOPs per step and the achieved GFLOP/s, so a number can be compared
with the machine's GEMM peak.
"""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_muon_step(benchmark, shape):
    K, m, n = shape
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(m, n, device=DEVICE, generator=gen) * 0.02) for _ in range(K)]
    for p in params:
        p.grad = torch.randn(m, n, device=DEVICE, generator=gen)
    opt = MuonAdamW([{"kind": "muon", "params": params, "lr": 0.02, "weight_decay": 0.1}])
    before = params[0].detach().clone()

    def step():
        opt.step()
        _sync()

    step()  # allocate state outside the timed rounds
    benchmark.pedantic(step, rounds=5 if CUDA else 3, warmup_rounds=1, iterations=1)
    assert not torch.equal(params[0].detach(), before)
    flops = _pe_flops(K, m, n)
    benchmark.extra_info.update(device=str(DEVICE), pe_gflop=flops / 1e9,
                                pe_gflops_per_s=flops / benchmark.stats.stats.mean / 1e9)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_polar_express(benchmark, shape):
    K, m, n = shape
    G = torch.randn(K, m, n, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(0))

    def run():
        out = polar_express(G, steps=NS_STEPS)
        _sync()
        return out

    X = benchmark.pedantic(run, rounds=5 if CUDA else 3, warmup_rounds=1, iterations=1)
    s = torch.linalg.svdvals(X[0].double())
    assert 0.5 < s.median().item() < 1.5
    flops = _pe_flops(K, m, n)
    benchmark.extra_info.update(device=str(DEVICE), dtype=str(X.dtype), pe_gflop=flops / 1e9,
                                gflops_per_s=flops / benchmark.stats.stats.mean / 1e9)
