"""Attention backends behind one signature, for training and for KV-cached decoding.

    attend(q, k, v, window)                                   # training / full forward, causal
    attend_kvcache(q, k_new, v_new, k_cache, v_cache, seqlens, window, positions, mask)

Shapes: q (B, T, H, D); k, v (B, T, H_kv, D) with H % H_kv == 0 (grouped-query attention); caches
(B, T_max, H_kv, D). `window` is the number of keys a query may see including itself (key j is visible from
query i iff j <= i and i - j < window); None = full causal context.

Backends, chosen once per process (RAYCHAT_ATTN=fa3|fa2|sdpa overrides):
- fa3: FlashAttention-3 on Hopper (SM90), from the `flash_attn_interface` package or the `kernels` hub
  package (kernels-community/flash-attn3);
- fa2: FlashAttention-2 (`flash_attn`) on SM80+;
- sdpa: torch's scaled_dot_product_attention everywhere else (CPU included). Sliding windows become an
  explicit boolean mask; GQA uses `enable_gqa`.
Flash kernels need bf16/fp16; with fp32 activations the sdpa path is used even where they are installed.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

_BACKENDS = ("fa3", "fa2", "sdpa")
# Memos in plain dicts, not functools caches: torch.compile traces through these lookups silently, while it warns
# on every lru_cache-wrapped function it meets inside a compiled forward.
_MEMO: dict = {}
_MASKS: dict = {}


def _memo(key, make):
    if key not in _MEMO:
        _MEMO[key] = make()
    return _MEMO[key]


def _load_fa3():
    return _memo("fa3", _import_fa3)


def _load_fa2():
    return _memo("fa2", _import_fa2)


def _import_fa3():
    try:
        import flash_attn_interface  # type: ignore

        return flash_attn_interface
    except ImportError:
        pass
    try:
        from kernels import get_kernel  # type: ignore

        return get_kernel("kernels-community/flash-attn3")
    except Exception:  # noqa: BLE001 - any failure means "not available here"
        return None


def _import_fa2():
    try:
        import flash_attn  # type: ignore

        return flash_attn
    except ImportError:
        return None


def select_backend(device_type: str = "cpu", requested: str | None = None) -> tuple[str, str]:
    """-> (backend, reason), decided once per (device type, request). Raises a clear error when a requested
    backend cannot run here. Training jobs call it before compiling (and print it), so compiled forwards only
    read the memo."""
    requested = requested or os.environ.get("RAYCHAT_ATTN") or None
    return _memo(("backend", device_type, requested), lambda: _select_backend(device_type, requested))


def _clear_backend_choice() -> None:
    """Forget the decisions (tests and the selftest switch RAYCHAT_ATTN)."""
    _MEMO.clear()


select_backend.cache_clear = _clear_backend_choice


def _select_backend(device_type: str, requested: str | None) -> tuple[str, str]:
    if requested is not None and requested not in _BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; expected one of {_BACKENDS}")
    cap = torch.cuda.get_device_capability() if device_type == "cuda" and torch.cuda.is_available() else None
    if requested in ("fa3", "fa2"):
        if cap is None:
            raise RuntimeError(f"attention backend {requested} needs a CUDA GPU; this process has {device_type}")
        if requested == "fa3" and (cap[0] != 9 or _load_fa3() is None):
            raise RuntimeError(f"fa3 needs a Hopper GPU (SM90, found SM{cap[0]}{cap[1]}) and the flash_attn_interface "
                               "or kernels package (pip install 'raychat[gpu]')")
        if requested == "fa2" and (cap[0] < 8 or _load_fa2() is None):
            raise RuntimeError(f"fa2 needs SM80+ (found SM{cap[0]}{cap[1]}) and flash-attn installed")
        return requested, "requested"
    if requested == "sdpa":
        return "sdpa", "requested"
    if cap is None:
        return "sdpa", f"{device_type}: torch SDPA"
    if cap[0] == 9 and _load_fa3() is not None:
        return "fa3", f"SM{cap[0]}{cap[1]} with FlashAttention-3"
    if cap[0] >= 8 and _load_fa2() is not None:
        return "fa2", f"SM{cap[0]}{cap[1]} with FlashAttention-2"
    return "sdpa", f"SM{cap[0]}{cap[1]}: no flash-attn package installed, torch SDPA"


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
    if backend == "fa3":
        out = _load_fa3().flash_attn_func(q, k, v, causal=True, window_size=_fa_window(window))
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
    if backend is not None:
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
