"""KV-cache bookkeeping: how many slots fit a memory budget, which tokens each slot holds, and the prefix index
that lets a new prompt reuse what a slot already computed. Pure Python (the runner does the tensor work).

Design: *reusable slots with a per-slot token history* (not paged blocks). The cache is `num_slots` rows of
`max_seq_len` positions each (raychat.model.kv_cache.KVCache, the layout the model, the flash kernels and the
CUDA-graph decode already use). Every slot remembers the token ids whose keys/values it holds (`tokens`), also
after its sequence finished or was cancelled: a free slot is a cached prefix until it is reused. Causal
attention makes every prefix of a slot valid on its own: positions 0..n-1 depend only on tokens 0..n-1, so a
prompt that shares n tokens with a slot can start at position n.

- `allocate(prompt)` finds the slot with the longest common prefix (LCP) with the prompt, busy or free:
  a free one is taken as it is (its tail past the match is simply overwritten); a busy one (a running turn,
  another request with the same system prompt) is copied up to the match into a free slot. At most
  len(prompt) - 1 tokens are reused: the last prompt token must be fed to get the first output's logits.
- A free slot is evicted least-recently-used first (empty slots before any cached one), so memory pressure
  drops the oldest conversations; nothing is reserved, a cached prefix costs no capacity that a request needs.
- Matching is exact on token ids, so a reused prefix holds the same keys/values a fresh prefill would compute.

Why slots rather than vLLM's paged blocks: the existing cache layout, the flash-attention `cache_seqlens` call and
the CUDA graphs stay as they are, and the bookkeeping is a list per slot. The cost: every admitted sequence
reserves `max_seq_len` positions (no packing of short sequences), and two requests sharing a prefix hold two
copies of it. At 1-2K contexts and chat-length replies that is the trade this engine takes; paged blocks would
pack memory better but need a block table in every attention path.

Prefix-cache counters follow vLLM: `queries` counts prompt tokens looked up, `hits` the tokens reused.

A cached prefix is only valid for the weights that computed it: whoever changes the model (an RL loop after an
optimizer step) calls `clear()` (Engine.reset_prefix_cache, as vLLM's reset_prefix_cache) or leaves prefix
caching off, the Engine's default.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


def kv_bytes_per_slot(n_layer: int, n_kv_head: int, head_dim: int, max_seq_len: int, dtype_bytes: int,
                      n_embd: int = 0) -> int:
    """Bytes of one cache row: keys + values for every layer and position, plus the smear state (n_embd)."""
    return 2 * n_layer * max_seq_len * n_kv_head * head_dim * dtype_bytes + n_embd * dtype_bytes


def slots_for_budget(budget_bytes: int, slot_bytes: int, max_num_seqs: int) -> int:
    """How many slots a budget holds, capped at max_num_seqs (a decode step computes every row up to the highest
    busy one, so more rows than sequences ever run together only cost time)."""
    if budget_bytes < slot_bytes:
        raise ValueError(f"KV-cache budget of {budget_bytes / 2**20:.1f} MiB holds no sequence: one slot of "
                         f"max_seq_len positions needs {slot_bytes / 2**20:.1f} MiB; raise the budget or lower "
                         "max_seq_len")
    return max(1, min(max_num_seqs, budget_bytes // slot_bytes))


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix; compares 64-token slices first (C speed), then token by token."""
    n = min(len(a), len(b))
    i = 0
    while i + 64 <= n and a[i:i + 64] == b[i:i + 64]:
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Allocation:
    """Where a sequence goes: slot `row`; `src` is the slot to copy the first `reuse` positions from (None when
    the row already holds them, or reuse is 0)."""

    row: int
    reuse: int = 0
    src: int | None = None


@dataclass
class SlotTable:
    num_slots: int
    max_seq_len: int
    prefix_caching: bool = True
    tokens: list[list[int]] = field(init=False)  # per slot: the ids whose K/V it holds, positions 0..n-1
    busy: set[int] = field(init=False, default_factory=set)
    hits: int = 0      # prompt tokens served from the cache
    queries: int = 0   # prompt tokens looked up

    def __post_init__(self):
        self.tokens = [[] for _ in range(self.num_slots)]
        self._clock = itertools.count()
        self._last_used = [-1] * self.num_slots  # -1: never used, evicted first

    @property
    def num_free(self) -> int:
        return self.num_slots - len(self.busy)

    def cached_tokens(self) -> int:
        """Positions holding tokens, busy and free slots together (the KV-cache usage numerator)."""
        return sum(len(t) for t in self.tokens)

    def _victim(self) -> int:
        """The free slot to overwrite: an empty one first, lowest index (keeps the decode span short), else the
        least recently used cached prefix."""
        free = (r for r in range(self.num_slots) if r not in self.busy)
        return min(free, key=lambda r: (bool(self.tokens[r]), self._last_used[r] if self.tokens[r] else 0, r))

    def allocate(self, prompt: list[int], n: int = 1) -> list[Allocation] | None:
        """Slots for a request of n sequences (None if fewer than n are free). The first one gets the prefix
        match; the others are filled by copying the first after its prefill (num_samples > 1)."""
        if n > self.num_free:
            return None
        self.queries += len(prompt)
        best, best_len = None, 0
        if self.prefix_caching:
            for r, toks in enumerate(self.tokens):
                if toks and toks[0] == prompt[0]:
                    m = common_prefix_len(prompt, toks)
                    if m > best_len or (m == best_len and best is not None and best in self.busy
                                        and r not in self.busy):
                        best, best_len = r, m
        reuse = min(best_len, len(prompt) - 1)
        if reuse > 0 and best not in self.busy:
            first = Allocation(best, reuse)
        else:
            first = Allocation(self._victim(), reuse, best if reuse > 0 else None)
        self.hits += reuse
        self._take(first.row, prompt[:reuse])
        out = [first]
        for _ in range(n - 1):
            r = self._victim()
            self._take(r, [])
            out.append(Allocation(r))
        return out

    def _take(self, row: int, tokens: list[int]) -> None:
        self.busy.add(row)
        self.tokens[row] = list(tokens)

    def extend(self, row: int, tokens) -> None:
        """Tokens written into a busy slot's cache (a prefill chunk, a decoded token, a row copy)."""
        self.tokens[row].extend(tokens)

    def release(self, row: int) -> int:
        """The slot's sequence ended: it becomes a cached prefix (LRU-evictable). Its history is kept to at most
        max_seq_len - 1 tokens, so a decode step that passes over the free row can write a dummy token at its
        length without overflowing. Returns the length kept (the runner sets the row's length to it)."""
        self.busy.discard(row)
        toks = self.tokens[row]
        if not self.prefix_caching:
            toks.clear()
        del toks[self.max_seq_len - 1:]
        self._last_used[row] = next(self._clock)
        return len(toks)

    def clear(self) -> None:
        """Forget everything (abort_all: the cache contents are no longer trusted)."""
        self.busy.clear()
        for t in self.tokens:
            t.clear()
        self._last_used = [-1] * self.num_slots
