"""Preallocated KV cache for incremental decoding.

One (B, T_max, H_kv, D) tensor pair per layer, in the compute dtype, plus per-row lengths so that rows of a
batch can be at different positions (continuous batching: a row is a slot that requests come and go from).
The model writes new keys/values at `seqlens[b] .. seqlens[b]+T-1` and advances `seqlens` after the forward.
`prev_emb` holds each row's last normed token embedding, needed by the smear feature (which mixes in the
previous token's embedding) when only the new token is fed.

The cache also computes what attention needs for a forward's new tokens (`segments`): absolute positions,
rotary slices, per-window masks and the attended length, so GPT.forward has one KV path. Three cases:
- one row, not static: positions are a slice p0..p0+T, attention needs no index tensors and no mask;
- several rows: (B, T) positions from the per-row lengths, masks over keys 0..max(len)+T-1;
- static (set on the views CUDA graphs capture): fixed shapes and no host reads, attention over every cache
  position with the length masks.
A `PackedKV` is several such row ranges fed in one forward, their tokens packed into one (1, N) sequence (a
prefill chunk and a decode step sharing the weights' pass: the engine's chunked prefill on CPU); the model's
linear layers see N tokens, its attention one segment at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raychat.model.attention import kvcache_mask


@dataclass
class KVSegment:
    """Attention inputs for B rows x T new tokens of one cache (view)."""

    cache: KVCache
    B: int
    T: int
    positions: int | torch.Tensor  # p0 (one row) or (B, T)
    masks: dict | None             # window -> (B, 1, T, L) bool, None on the slice path
    L: int                         # keys attended: 0..L-1
    cos: torch.Tensor              # (B or 1, T, 1, D)
    sin: torch.Tensor


def split_tokens(segs: list[KVSegment], x: torch.Tensor, packed: bool) -> list[torch.Tensor]:
    """A forward's tokens as one (B_i, T_i, ...) tensor per segment: x itself for a plain cache, slices of the
    packed (1, N, ...) sequence for a PackedKV."""
    if not packed:
        return [x]
    out, off = [], 0
    for s in segs:
        n = s.B * s.T
        out.append(x[0, off:off + n].view(s.B, s.T, *x.shape[2:]))
        off += n
    return out


def join_tokens(parts: list[torch.Tensor], packed: bool) -> torch.Tensor:
    """The inverse of split_tokens."""
    return torch.cat([p.reshape(1, -1, *p.shape[2:]) for p in parts], dim=1) if packed else parts[0]


class KVCache:
    def __init__(self, batch_size: int, max_seq_len: int, n_layer: int, n_kv_head: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n_embd: int | None = None):
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.n_layer = n_layer
        shape = (batch_size, max_seq_len, n_kv_head, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.seqlens = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.prev_emb = torch.zeros(batch_size, n_embd, device=device, dtype=dtype) if n_embd else None

    @classmethod
    def for_model(cls, model, batch_size: int, max_seq_len: int | None = None) -> KVCache:
        c = model.config
        max_seq_len = max_seq_len or c.sequence_len
        return cls(batch_size, max_seq_len, c.n_layer, c.n_kv_head, c.head_dim, device=model.get_device(),
                   dtype=model.compute_dtype, n_embd=c.n_embd)

    def segments(self, T: int, cos: torch.Tensor, sin: torch.Tensor, windows, dtype) -> list[KVSegment]:
        """Attention inputs for T new tokens in every row, from the model's rotary tables (cos, sin) and its
        per-layer windows. Raises ValueError when the tokens would not fit the cache or the rotary table."""
        limit = min(self.max_seq_len, cos.size(0))
        if self.batch_size == 1 and not getattr(self, "static", False):
            p0 = int(self.seqlens[0])
            L = p0 + T
            if L > limit:
                raise ValueError(f"KV cache overflow: {L} positions needed, cache holds {self.max_seq_len}")
            rope = cos[None, p0:L, None].to(dtype), sin[None, p0:L, None].to(dtype)
            return [KVSegment(self, 1, T, p0, None, L, *rope)]
        start = self.seqlens.long()
        positions = start[:, None] + torch.arange(T, device=start.device)[None, :]  # (B, T)
        if getattr(self, "static", False):
            L = self.max_seq_len  # the caller guarantees that seqlens + T fits the cache
        else:
            L = int(start.max()) + T
            if L > limit:
                raise ValueError(f"KV cache overflow: {L} positions needed, cache holds {self.max_seq_len}")
        masks = {w: kvcache_mask(self.seqlens, T, L, w) for w in set(windows)}
        return [KVSegment(self, self.batch_size, T, positions, masks, L, cos[positions][:, :, None].to(dtype),
                          sin[positions][:, :, None].to(dtype))]

    def reset_rows(self, rows) -> None:
        self.seqlens[rows] = 0
        if self.prev_emb is not None:
            self.prev_emb[rows] = 0

    def reset(self) -> None:
        self.seqlens.zero_()
        if self.prev_emb is not None:
            self.prev_emb.zero_()

    def copy_row_from(self, src: KVCache, src_row: int, dst_row: int) -> None:
        """Copy one row's keys/values/length (e.g. a B=1 prefill cache into a slot of the batch cache)."""
        n = int(src.seqlens[src_row])
        if n > self.max_seq_len:
            raise ValueError(f"row of length {n} does not fit a cache of {self.max_seq_len} positions")
        for i in range(self.n_layer):
            self.k[i][dst_row, :n].copy_(src.k[i][src_row, :n])
            self.v[i][dst_row, :n].copy_(src.v[i][src_row, :n])
        self.seqlens[dst_row] = n
        if self.prev_emb is not None and src.prev_emb is not None:
            self.prev_emb[dst_row].copy_(src.prev_emb[src_row])

    def usage(self) -> float:
        """Fraction of cache positions holding tokens (the kv_cache_usage_perc gauge)."""
        return float(self.seqlens.sum()) / (self.batch_size * self.max_seq_len)


class PackedKV:
    """Several caches (views over disjoint rows, or overlapping only where a row is a throw-away hole) fed in one
    forward: parts = [(cache, T)], the forward's input packed as (1, sum B_i * T_i) in that order. The model
    returns the logits of the last new token of every row, (sum B_i, 1, V). Later parts are written after
    earlier ones in every layer, so a row that is a hole of an earlier part and real in a later one ends with
    the later part's keys."""

    def __init__(self, parts: list[tuple[KVCache, int]]):
        self.parts = parts

    def segments(self, T: int, cos, sin, windows, dtype) -> list[KVSegment]:
        n = sum(c.batch_size * t for c, t in self.parts)
        if T != n:
            raise ValueError(f"packed forward of {T} tokens, but its parts hold {n}")
        return [c.segments(t, cos, sin, windows, dtype)[0] for c, t in self.parts]
