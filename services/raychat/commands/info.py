"""`raychat info`: what raychat will use on this machine, and why."""

from __future__ import annotations

import json
import platform
from importlib import metadata


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-gemm", action="store_true", help="skip the ~1 s CPU GEMM peak measurement")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def run(args):
    import torch

    from raychat.common import RaychatError, code_version, detect_device
    from raychat.model.attention import select_backend
    from raychat.model.gemm import cpu_gemm_choice
    from raychat.perf import peak_flops

    dev = detect_device()
    backend, why = select_backend(dev.device_type)
    gemm = cpu_gemm_choice(RaychatError)
    info = {
        "raychat": code_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": _version("ray"),
        "device": str(dev.device),
        "dtype": str(dev.dtype).removeprefix("torch."),
        "device_reason": dev.reason,
        "attention_backend": backend,
        "attention_reason": why,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_gemm": gemm[0],
        "cpu_gemm_reason": gemm[1],
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    if not args.no_gemm:
        peak, how = peak_flops(dev.device_type)
        info["peak_flops"] = peak
        info["peak_flops_source"] = how
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        if k == "peak_flops":
            v = f"{v / 1e9:.1f} GFLOP/s"
        print(f"{k:>18}: {v}")
    return 0
