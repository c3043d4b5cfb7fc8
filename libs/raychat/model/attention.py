"""Attention backends behind one signature, for training and for KV-cached decoding.

    attend(q, k, v, window)                                   # training / full forward, causal
    attend_kvcache(q, k_new, v_new, k_cache, v_cache, seqlens, window, positions, mask)

Shapes: q (B, T, H, D); k, v (B, T, H_kv, D) with H % H_kv == 0 (grouped-query attention); caches
(B, T_max, H_kv, D). `window` is the number of keys a query may see including itself (key j is visible from
query i iff j <= i and i - j < window); None = full causal context.

Backends, chosen once per process (RAYCHAT_ATTN=fa3|fa4|fa2|sdpa overrides):
- fa3: FlashAttention-3 on Hopper (SM90), from the `flash_attn_interface` package or the `kernels` hub
  package (kernels-community/flash-attn3; downloads the kernel on first use, so it needs the network or a
  warm hub cache);
- fa4: FlashAttention-4 (`flash-attn-4` on PyPI: CuTe DSL kernels, JIT-compiled on first call, no CUDA
  build at install) on Hopper and Blackwell (SM90+); training forwards only -- it has no KV-cache append,
  so cached decoding takes the SDPA path with it;
- fa2: FlashAttention-2 (`flash_attn`) on SM80+;
- sdpa: torch's scaled_dot_product_attention everywhere else (CPU included). Sliding windows become an
  explicit boolean mask; GQA uses `enable_gqa`.
Flash kernels need bf16/fp16; with fp32 activations the sdpa path is used even where they are installed.
Automatic choice on CUDA: fa3 (SM90), else fa4 (SM90+), else fa2 (SM80+), else sdpa. A backend that fails to
load says why, once per process, on stderr, and the reason is part of `select_backend`'s answer
(`load_errors()` lists them).
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.nn.functional as F

_BACKENDS = ("fa3", "fa4", "fa2", "sdpa")
# Memos in plain dicts, not functools caches: torch.compile traces through these lookups silently, while it warns
# on every lru_cache-wrapped function it meets inside a compiled forward.
_MEMO: dict = {}
_MASKS: dict = {}


def _memo(key, make):
    if key not in _MEMO:
        _MEMO[key] = make()
    return _MEMO[key]


_LOAD_ERRORS: dict[str, str] = {}  # backend -> why it did not load (filled once per process)


def _load_fa3():
    return _memo("fa3", lambda: _import_first("fa3", _FA3_SOURCES))


def _load_fa4():
    return _memo("fa4", lambda: _import_first("fa4", _FA4_SOURCES))


def _load_fa2():
    return _memo("fa2", lambda: _import_first("fa2", _FA2_SOURCES))


def _fa3_from_hub():
    from kernels import get_kernel  # type: ignore

    return get_kernel("kernels-community/flash-attn3")


def _fa3_package():
    import flash_attn_interface  # type: ignore

    return flash_attn_interface


def _fa4_package():
    from flash_attn import cute  # type: ignore  (the flash-attn-4 wheel)

    return cute


def _fa2_package():
    import flash_attn  # type: ignore

    if not hasattr(flash_attn, "flash_attn_with_kvcache"):  # flash_attn may be only FA4's namespace package
        raise ImportError("flash_attn has no flash_attn_with_kvcache (not FlashAttention-2)")
    return flash_attn


_FA3_SOURCES = (("flash_attn_interface", _fa3_package), ("kernels hub", _fa3_from_hub))
_FA4_SOURCES = (("flash_attn.cute", _fa4_package),)
_FA2_SOURCES = (("flash_attn", _fa2_package),)


def _import_first(backend: str, sources):
    """The first source that loads, else None -- with every source's failure recorded and printed once.
    Any exception counts as "not available here" (a hub kernel can fail with network or CUDA errors, a
    wheel with an ABI mismatch), but it is never swallowed silently."""
    reasons = []
    for name, load in sources:
        try:
            return load()
        except Exception as e:  # noqa: BLE001 - reported below
            reasons.append(f"{name}: {type(e).__name__}: {e}".strip())
    _LOAD_ERRORS[backend] = "; ".join(reasons)
    print(f"[attention] {backend} not available: {_LOAD_ERRORS[backend]}", file=sys.stderr, flush=True)
    return None


def load_errors() -> dict[str, str]:
    """Why each backend that was tried failed to load, {backend: reason} (empty before any attempt)."""
    return dict(_LOAD_ERRORS)


def select_backend(device_type: str = "cpu", requested: str | None = None) -> tuple[str, str]:
    """-> (backend, reason), decided once per (device type, request). Raises a clear error when a requested
    backend cannot run here. Training jobs call it before compiling (and print it), so compiled forwards only
    read the memo."""
    requested = requested or os.environ.get("RAYCHAT_ATTN") or None
    return _memo(("backend", device_type, requested), lambda: _select_backend(device_type, requested))


def _clear_backend_choice() -> None:
    """Forget the decisions and load failures (tests and the selftest switch RAYCHAT_ATTN)."""
    _MEMO.clear()
    _LOAD_ERRORS.clear()


select_backend.cache_clear = _clear_backend_choice


def _select_backend(device_type: str, requested: str | None) -> tuple[str, str]:
    if requested is not None and requested not in _BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; expected one of {_BACKENDS}")
    cap = torch.cuda.get_device_capability() if device_type == "cuda" and torch.cuda.is_available() else None
    if requested in ("fa3", "fa4", "fa2"):
        if cap is None:
            raise RuntimeError(f"attention backend {requested} needs a CUDA GPU; this process has {device_type}")
        sm = f"SM{cap[0]}{cap[1]}"
        need = {"fa3": (cap[0] == 9, "a Hopper GPU (SM90)", "flash_attn_interface or kernels (pip install "
                        "'raychat[gpu]')", _load_fa3),
                "fa4": (cap[0] >= 9, "SM90+ (Hopper, Blackwell)", "flash-attn-4", _load_fa4),
                "fa2": (cap[0] >= 8, "SM80+", "flash-attn", _load_fa2)}[requested]
        ok_gpu, gpu_text, pkg, load = need
        if not ok_gpu:
            raise RuntimeError(f"{requested} needs {gpu_text}; this GPU is {sm}")
        if load() is None:
            raise RuntimeError(f"{requested} did not load ({_LOAD_ERRORS.get(requested, 'unknown reason')}); "
                               f"it needs {pkg}")
        return requested, "requested"
    if requested == "sdpa":
        return "sdpa", "requested"
    if cap is None:
        return "sdpa", f"{device_type}: torch SDPA"
    sm = f"SM{cap[0]}{cap[1]}"
    if cap[0] == 9 and _load_fa3() is not None:
        return "fa3", f"{sm} with FlashAttention-3"
    if cap[0] >= 9 and _load_fa4() is not None:
        return "fa4", f"{sm} with FlashAttention-4"
    if cap[0] >= 8 and _load_fa2() is not None:
        return "fa2", f"{sm} with FlashAttention-2"
    why = "; ".join(f"{b}: {r}" for b, r in _LOAD_ERRORS.items()) or "no flash kernel for this GPU"
    return "sdpa", f"{sm}: torch SDPA (flash backends not loaded -- {why})"


def inference_attention(device: torch.device | str):
    """Context for inference forwards (engine prefill/decode, evals): on CUDA, SDPA without its cuDNN backend.

    cuDNN's attention builds an execution graph for every new (batch, query length, key length) it sees, which
    costs tens to hundreds of milliseconds; training repeats one shape, but decoding grows the key length by one
    every step and prompts come in every length, so a generation would rebuild graphs at each token. Flash /
    memory-efficient SDPA kernels have no per-shape setup. Enter it once per forward, not per layer (entering
    costs ~30 us). A no-op off CUDA."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _flash_ok(q: torch.Tensor) -> str | None:
    if q.device.type != "cuda" or q.dtype not in (torch.bfloat16, torch.float16):
        return None
    backend, _ = select_backend("cuda")
    return backend if backend != "sdpa" else None


def _fa_window(window: int | None) -> tuple[int, int]:
    return (-1, 0) if window is None else (window - 1, 0)


def _window_mask(T: int, window: int, device: torch.device) -> torch.Tensor:
    if torch.compiler.is_compiling():  # inside a compiled graph the mask is built (and fused) by the graph itself
        return _make_window_mask(T, window, device)
    key = (T, window, device)
    mask = _MASKS.get(key)
    if mask is None:
        if len(_MASKS) >= 16:  # prompts come in every length: keep a few (T, T) masks, not one per length
            _MASKS.clear()
        mask = _MASKS[key] = _make_window_mask(T, window, device)
    return mask


def _make_window_mask(T: int, window: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j <= i) & (i - j < window)  # (T, T) bool, True = may attend


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None) -> torch.Tensor:
    """Causal (optionally windowed) attention. q (B,T,H,D), k/v (B,T,Hkv,D) -> (B,T,H,D)."""
    T = q.size(1)
    backend = _flash_ok(q)
    if backend in ("fa3", "fa4"):
        mod = _load_fa3() if backend == "fa3" else _load_fa4()
        # FA4 spells "no window" (None, None); FA3 (-1, 0)
        win = (None, None) if backend == "fa4" and window is None else _fa_window(window)
        out = mod.flash_attn_func(q, k, v, causal=True, window_size=win)
        return out[0] if isinstance(out, tuple) else out
    if backend == "fa2":
        return _load_fa2().flash_attn_func(q, k, v, causal=True, window_size=_fa_window(window))
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    gqa = qt.size(1) != kt.size(1)
    if window is None or window >= T:
        y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
    else:
        y = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=_window_mask(T, window, q.device), enable_gqa=gqa)
    return y.transpose(1, 2)


def kvcache_mask(seqlens: torch.Tensor, T: int, L: int, window: int | None) -> torch.Tensor:
    """(B, 1, T, L) bool mask for queries at positions seqlens[b]+t over cache keys 0..L-1."""
    pos = seqlens.long()[:, None] + torch.arange(T, device=seqlens.device)[None, :]  # (B, T)
    j = torch.arange(L, device=seqlens.device)[None, None, :]
    m = j <= pos[:, :, None]
    if window is not None:
        m = m & (pos[:, :, None] - j < window)
    return m[:, None]


def attend_kvcache(q, k_new, v_new, k_cache, v_cache, seqlens, window, positions, mask, L):
    """Write k_new/v_new into the caches and attend over cache keys 0..L-1. Returns (B, T, H, D).

    `positions` is either (B, T) absolute positions with `mask` (B,1,T,L) and `L` (= max(seqlens)+T), computed
    once per forward by the model, or an int p0 for a single row starting at p0 (the common batch-1 case:
    prefill of one request, one-request decode), which needs no index tensors and no mask: plain slices.
    """
    backend = _flash_ok(q)
    if backend in ("fa3", "fa2"):
        # flash kernels write the new keys into the cache in place and read per-row lengths themselves
        mod = _load_fa3() if backend == "fa3" else _load_fa2()
        out = mod.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_seqlens=seqlens,
                                          causal=True, window_size=_fa_window(window))
        return out[0] if isinstance(out, tuple) else out
    T = q.size(1)
    if isinstance(positions, int):
        p0 = positions
        k_cache[:, p0:L] = k_new
        v_cache[:, p0:L] = v_new
        if p0 == 0:  # fresh row: ordinary causal (windowed) attention over the new tokens
            return attend(q, k_new, v_new, window)
        if T == 1:  # one new token sees the last `window` keys, all valid: no mask needed
            lo = max(0, L - window) if window is not None else 0
            qt, kt, vt = q.transpose(1, 2), k_cache[:, lo:L].transpose(1, 2), v_cache[:, lo:L].transpose(1, 2)
            y = F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=qt.size(1) != kt.size(1))
            return y.transpose(1, 2)
        mask = kvcache_mask(seqlens, T, L, window)
    else:
        rows = torch.arange(q.size(0), device=q.device)[:, None]
        k_cache[rows, positions] = k_new
        v_cache[rows, positions] = v_new
    qt = q.transpose(1, 2)
    kt = k_cache[:, :L].transpose(1, 2)
    vt = v_cache[:, :L].transpose(1, 2)
    y = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=qt.size(1) != kt.size(1))
    return y.transpose(1, 2)
