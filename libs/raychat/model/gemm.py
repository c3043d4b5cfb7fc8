"""fp32 matrix products on CPU through oneDNN where it beats the BLAS torch links, chosen at run time.

torch's x86 wheels send every fp32 `mm`/`bmm`/`linear` to MKL's sgemm. On AMD CPUs MKL runs its AVX2 kernels even
where the CPU has AVX-512 (it dispatches on the vendor), so it reaches half the machine's fp32 rate; oneDNN, which
torch also ships, dispatches on the CPU's features. Measured on the project's 2-core AMD EPYC (AVX-512, 2 threads,
`raychat bench gemm`, 2026-12-08): a (2048 x 256) x (256 x 1024) product 6.5 ms with MKL, 3.1 ms with oneDNN, the
same IEEE fp32 arithmetic (no bf16/tf32 math mode: results agree with float64 to fp32 round-off, tested).

`cpu_gemm_backend()` decides once per process: RAYCHAT_CPU_GEMM=onednn|aten forces one, `auto` (the default) times
a training-sized product both ways and takes oneDNN only when it is 15% faster (where MKL runs its AVX-512 kernels,
as on Intel CPUs, the gap should close and auto keeps MKL; not yet measured on such a CPU). Products smaller than
MIN_WORK multiply-adds stay with aten whatever the choice: a oneDNN call has a fixed cost of 10-20 us, more than a
small GEMV takes (decode steps; `raychat bench gemm`: a 1 x 256 x 1024 GEMV 0.021 ms with MKL, 0.034 ms with
oneDNN).

The products are a custom op (`raychat::onednn_mm_nt`), so torch.compile keeps them as calls (inductor's own
lowering of the oneDNN linear wants frozen, constant weights) and fuses the elementwise work around them.
Used by the model's Linear (forward and both backward products), the chunked training head and Polar Express;
anything not fp32 on CPU (CUDA, bf16, float64 reference models) goes through torch as before.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_WORK = 1 << 22  # multiply-adds (rows x out x in) from which a product goes to oneDNN
_CHOICES = ("auto", "onednn", "aten")
_CHOSEN: dict[str, tuple[str, str]] = {}


@torch.library.custom_op("raychat::onednn_mm_nt", mutates_args=(), tags=(torch.Tag.needs_exact_strides,))
def _onednn_mm_nt(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T for 2-D fp32 CPU tensors of any strides, by oneDNN's inner-product primitive."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


@_onednn_mm_nt.register_fake
def _(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty((a.shape[0], b.shape[0]))


def _available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _best_of(fn, rounds: int = 7) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _choose(requested: str) -> tuple[str, str]:
    if requested not in _CHOICES:
        raise ValueError(f"RAYCHAT_CPU_GEMM={requested!r}: expected one of {', '.join(_CHOICES)}")
    if requested == "aten":
        return "aten", "RAYCHAT_CPU_GEMM=aten"
    if not _available():
        if requested == "onednn":
            raise RuntimeError("RAYCHAT_CPU_GEMM=onednn, but this torch build has no oneDNN "
                               "(torch.backends.mkldnn.is_available() is False); use auto or aten")
        return "aten", "this torch build has no oneDNN"
    if requested == "onednn":
        return "onednn", "RAYCHAT_CPU_GEMM=onednn"
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(512, 256, generator=g), torch.randn(1024, 256, generator=g)
    with torch.no_grad():
        t_aten, t_dnnl = _best_of(lambda: F.linear(a, w)), _best_of(lambda: _onednn_mm_nt(a, w))
        t_aten = min(t_aten, _best_of(lambda: F.linear(a, w)))  # interleaved twice: a load change hits both
        t_dnnl = min(t_dnnl, _best_of(lambda: _onednn_mm_nt(a, w)))
    choice = "onednn" if t_dnnl * 1.15 < t_aten else "aten"
    return choice, (f"auto: a 512x256x1024 product took {t_dnnl * 1e3:.2f} ms with oneDNN, "
                    f"{t_aten * 1e3:.2f} ms with torch's BLAS ({torch.get_num_threads()} threads)")


def cpu_gemm_choice(error: type[Exception] | None = None) -> tuple[str, str]:
    """('onednn' | 'aten', why): which library runs this process's fp32 CPU products, decided on the first call
    (timed at the thread count in force then) and kept. A bad or unusable RAYCHAT_CPU_GEMM raises ValueError /
    RuntimeError, or `error` with the same message (callers above pass their user-error class, so a command ends
    on one line: the training harness, `raychat info` and checkpoint loading decide here, before any forward)."""
    requested = os.environ.get("RAYCHAT_CPU_GEMM", "auto").strip().lower() or "auto"
    if requested not in _CHOSEN:
        try:
            _CHOSEN[requested] = _choose(requested)
        except (ValueError, RuntimeError) as e:
            if error is None:
                raise
            raise error(str(e)) from None
    return _CHOSEN[requested]


@torch.compiler.assume_constant_result
def cpu_gemm_backend() -> str:
    """cpu_gemm_choice()'s library (a compiled graph reads it as a constant)."""
    return cpu_gemm_choice()[0]


def uses_onednn(a: Tensor, b: Tensor, work: int) -> bool:
    """Does a product of operands like a and b, of `work` multiply-adds, go to oneDNN? (For callers that pick a
    layout or a fused torch op by the answer: Polar Express, the chunked head.)"""
    return (work >= MIN_WORK and a.device.type == "cpu" and a.dtype == torch.float32 and b.dtype == torch.float32
            and b.device.type == "cpu" and cpu_gemm_backend() == "onednn")


def mm_nt(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T for 2-D a (m, p) and b (n, p)."""
    if uses_onednn(a, b, a.shape[0] * b.shape[0] * a.shape[1]):
        return _onednn_mm_nt(a, b)
    return a @ b.T


def mm_nn(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for 2-D a (m, p) and b (p, n)."""
    if uses_onednn(a, b, a.shape[0] * b.shape[1] * a.shape[1]):
        return _onednn_mm_nt(a, b.T)
    return a @ b


def mm_tn(a: Tensor, b: Tensor) -> Tensor:
    """a.T @ b for 2-D a (p, m) and b (p, n) (a weight gradient: activations' sum over rows). oneDNN is fastest
    with the smaller side as the product's rows, so for m > n it computes (b.T @ a).T and returns that view."""
    if uses_onednn(a, b, a.shape[1] * b.shape[1] * a.shape[0]):
        # oneDNN reads its first operand in rows; a transposed one is copied (here, so a compiled graph can
        # write it from the kernel that produces it instead of an extra strided pass)
        if a.shape[1] > b.shape[1]:
            return _onednn_mm_nt(b.T.contiguous(), a.T).T
        return _onednn_mm_nt(a.T.contiguous(), b.T)
    return a.T @ b


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return mm_nt(x, w)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, w = ctx.saved_tensors
        dx = mm_nn(dy, w) if ctx.needs_input_grad[0] else None
        dw = mm_tn(dy, x) if ctx.needs_input_grad[1] else None
        return dx, dw


def linear(x: Tensor, w: Tensor) -> Tensor:
    """F.linear(x, w) without bias, x (..., in), w (out, in); through oneDNN (with its backward) where chosen."""
    rows = x.numel() // max(x.shape[-1], 1)
    if not uses_onednn(x, w, rows * w.shape[0] * w.shape[1]):
        return F.linear(x, w)
    return _Linear.apply(x.reshape(rows, x.shape[-1]), w).view(*x.shape[:-1], w.shape[0])
