"""Why inference runs SDPA without cuDNN on CUDA (raychat.model.attention.inference_attention): time one decode
step's attention while the key length grows by one per step, as in generation, with torch's default SDPA
backends and with cuDNN switched off; and the same for a fixed key length (what training sees).

    python benchmarks/bench_sdpa_shapes.py          # GPU only: prints a table of ms per call

Shapes: batch 1, 12 query heads over 12 KV heads of 128, bf16; 64 steps from key length 257.
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F


def per_call_ms(lengths, no_cudnn: bool, H: int = 12, D: int = 128) -> float:
    from raychat.model.attention import inference_attention

    dev = torch.device("cuda")
    q = torch.randn(1, H, 1, D, device=dev, dtype=torch.bfloat16)
    kv = torch.randn(1, H, max(lengths), D, device=dev, dtype=torch.bfloat16)
    ctx = inference_attention(dev) if no_cudnn else contextlib.nullcontext()
    with ctx:
        F.scaled_dot_product_attention(q, kv[:, :, :8], kv[:, :, :8])  # kernel load, handles
        torch.cuda.synchronize()
        t = time.perf_counter()
        for L in lengths:
            F.scaled_dot_product_attention(q, kv[:, :, :L], kv[:, :, :L])
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / len(lengths) * 1e3


def main():
    if not torch.cuda.is_available():
        raise SystemExit("bench_sdpa_shapes: needs a CUDA GPU (the cuDNN backend exists only there)")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    print("| key lengths | default SDPA backends (ms/call) | without cuDNN (ms/call) |\n|---|---|---|")
    growing = list(range(257, 321))
    for label, lengths in (("growing 257..320 (decode)", growing), ("fixed 320, 64 calls", [320] * 64)):
        on = per_call_ms(lengths, False)  # first: no graph for these shapes exists yet (flash keeps no per-shape state)
        off = per_call_ms(lengths, True)
        print(f"| {label} | {on:.3f} | {off:.3f} |")


if __name__ == "__main__":
    main()
