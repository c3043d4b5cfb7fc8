"""fp32 matrix products on this CPU: torch's BLAS (MKL in the x86 wheels) vs oneDNN, at the shapes a d4 race step
and a decode step run, and which one `raychat.model.gemm` sends each to.

    python benchmarks/bench_gemm.py               # table on stdout
    python benchmarks/bench_gemm.py --threads 1   # at another thread count
    raychat bench gemm                            # the same, recorded into benchmarks/RESULTS.md

Each row times one product both ways (best of --repeats rounds of --seconds, the two interleaved) and checks the
oneDNN result against float64. The race shapes: rows = 2,048 tokens (device batch 8 x 256), width 256, MLP 1024,
vocab 8192 in 256-row head blocks; Polar Express's Gram products on 256 x 1024 matrices; decode: one row.
"""

from __future__ import annotations

import argparse
import time

import torch

from raychat.model import gemm

# name, (m, p), (n, p) of an a @ b.T product, and which operand is a transposed view (the backward's layouts)
SHAPES = [
    ("fwd: x W^T, q/k/v/proj", (2048, 256), (256, 256), ""),
    ("fwd: x W^T, mlp fc", (2048, 256), (1024, 256), ""),
    ("fwd: x W^T, mlp proj", (2048, 1024), (256, 1024), ""),
    ("bwd dX: dy W, mlp fc", (2048, 1024), (256, 1024), "b"),
    ("bwd dW: dy^T x, mlp fc (short side as rows)", (256, 2048), (1024, 2048), "ab"),
    ("head block: x W^T", (256, 256), (8192, 256), ""),
    ("head block dW^T: x^T g", (256, 256), (8192, 256), "b"),
    ("Polar Express: X X^T", (256, 1024), (256, 1024), ""),
    ("Polar Express: B X", (256, 256), (1024, 256), "b"),
    ("decode: lm_head GEMV", (1, 256), (8192, 256), ""),
    ("decode: mlp fc GEMV", (1, 256), (1024, 256), ""),
]


def _operands(m_p, n_p, transposed: str):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(*m_p, generator=g)
    b = torch.randn(*n_p, generator=g)
    if "a" in transposed:
        a = a.T.contiguous().T  # same values, column-major storage: a transposed view as the backward hands it
    if "b" in transposed:
        b = b.T.contiguous().T
    return a, b


def _best(fn, repeats: int, seconds: float) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds per figure; the best is reported")
    ap.add_argument("--seconds", type=float, default=0.2, help="length of one round")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    choice, why = gemm.cpu_gemm_choice()
    print(f"# bench_gemm: torch {torch.__version__}, {args.threads} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; raychat's choice: {choice} ({why})\n")
    print("| product | m x p x n | torch BLAS (ms) | oneDNN (ms) | oneDNN speedup | GFLOP/s (BLAS / oneDNN) "
          "| max rel. error vs float64 | raychat uses |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    with torch.no_grad():
        for name, m_p, n_p, tr in SHAPES:
            a, b = _operands(m_p, n_p, tr)
            m, p, n = a.shape[0], a.shape[1], b.shape[0]
            def blas(a=a, b=b):
                return a @ b.T

            def dnnl(a=a, b=b):
                return gemm._onednn_mm_nt(a, b)

            t_blas = _best(blas, args.repeats, args.seconds)
            t_dnnl = _best(dnnl, args.repeats, args.seconds)
            t_blas = min(t_blas, _best(blas, args.repeats, args.seconds))
            ref = a.double() @ b.double().T
            err = ((gemm._onednn_mm_nt(a, b).double() - ref).abs().max() / ref.abs().max()).item()
            used = "oneDNN" if choice == "onednn" and m * n * p >= gemm.MIN_WORK else "BLAS"
            flops = 2 * m * n * p
            rows.append({"product": name, "m": m, "p": p, "n": n, "blas_ms": t_blas * 1e3, "onednn_ms": t_dnnl * 1e3,
                         "rel_err": err, "used": used})
            print(f"| {name} | {m} x {p} x {n} | {t_blas * 1e3:.3f} | {t_dnnl * 1e3:.3f} | {t_blas / t_dnnl:.2f}x "
                  f"| {flops / t_blas / 1e9:.0f} / {flops / t_dnnl / 1e9:.0f} | {err:.1e} | {used} |")
    return rows


if __name__ == "__main__":
    main()
