"""Preallocated KV cache for incremental decoding.

One (B, T_max, H_kv, D) tensor pair per layer, in the compute dtype, plus per-row lengths so that rows of a
batch can be at different positions (continuous batching: a row is a slot that requests come and go from).
The model writes new keys/values at `seqlens[b] .. seqlens[b]+T-1` and advances `seqlens` after the forward.
`prev_emb` holds each row's last normed token embedding, needed by the smear feature (which mixes in the
previous token's embedding) when only the new token is fed.
"""

from __future__ import annotations

import torch


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
