"""Peak FLOPs and model-FLOPs utilisation (MFU), the nanochat way: model FLOPs per token x tokens per second /
peak FLOPs. GPU peaks are the vendors' dense bf16 figures; on a CPU there is no datasheet number worth using, so
the peak is measured: the sustained rate of a square fp32 matmul loop on this machine's threads, through the
library the model's own products use (model/gemm.py: oneDNN where it beats the BLAS)."""

from __future__ import annotations

import functools
import time

import torch

from raychat.model import gemm

# dense bf16 tensor-core peaks per GPU (no sparsity)
GPU_PEAK_BF16 = {
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def gpu_peak_flops(name: str) -> float | None:
    for key, val in sorted(GPU_PEAK_BF16.items(), key=lambda kv: -len(kv[0])):
        if key.lower() in name.lower():
            return val
    return None


def measure_gemm_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024,
                      seconds: float = 1.0) -> float:
    """Sustained FLOP/s of a plain loop of n x n @ n x n matmuls (2 n^3 FLOPs each) over ~`seconds`: total FLOPs
    over total time, the rate a matmul-bound model could actually hold (the best single repeat is ~10-20% higher
    on a CPU with turbo boost and would flatter nobody)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gemm.mm_nn(a, b)  # warm-up (thread pool, kernel selection)
    sync()
    reps = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        gemm.mm_nn(a, b)  # the library the model's fp32 CPU products use (model/gemm.py), torch's elsewhere
        sync()
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


@functools.cache
def peak_flops(device_type: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[float, str]:
    """-> (peak FLOP/s per device, how it was obtained)."""
    if device_type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = gpu_peak_flops(name)
        if peak is not None:
            return peak, f"{name} datasheet dense bf16"
        return measure_gemm_peak("cuda", torch.bfloat16, n=8192), f"{name} measured bf16 GEMM"
    threads = torch.get_num_threads()
    lib = gemm.cpu_gemm_backend() if dtype == torch.float32 else "aten"
    return measure_gemm_peak("cpu", dtype), f"measured fp32 GEMM ({lib}), {threads} threads"


def mfu(flops_per_token: float, tokens_per_second: float, peak: float, num_devices: int = 1) -> float:
    return flops_per_token * tokens_per_second / (peak * num_devices)
