"""All device work of the engine: the preallocated KV cache, prefill, batched one-token decode, row copies and
the tensor side of sampling. The scheduler and the state machines never touch a tensor; this file never makes a
scheduling decision.

KV cache layout (raychat.model.kv_cache.KVCache): per layer (max_batch_size, max_seq_len, H_kv, D) in the
compute dtype, plus per-row lengths. A row is a slot a sequence occupies while it runs. The model reads and
writes the cache through `cache.k[i]`, `cache.v[i]`, `cache.seqlens`, `cache.prev_emb` and advances `seqlens`
in place, so a *view* of rows lo..hi-1 (a shallow copy of the cache object whose tensors are slices of the
big ones) is itself a valid cache. That gives us, without copying any K/V:
- prefill straight into a slot: a forward of the prompt (1, T) on the one-row view of that slot;
- decode on the prefix rows[0:hi] that holds every running sequence (the scheduler hands out low slots first),
  instead of the full preallocated batch. Free rows inside the prefix ("holes") are fed a dummy token at
  position 0 and their length is reset afterwards, which is cheaper than gathering the live rows (a gather
  would copy the whole cache). `decode_rows="full"` always runs every slot (for the benchmark's comparison).
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
import torch.nn.functional as F

from raychat.common import RaychatError
from raychat.engine.sampling import SamplingParams, sample_rows
from raychat.model.attention import inference_attention


class ColumnMajorPick:
    """For GPT.use_decode_layout(pick=...): does a one-row GEMV (a batch-1 decode step's matmul) run faster on
    this CPU with the weight stored column-major? Timed once per weight shape, both layouts interleaved, best of
    several rounds; the re-layout must win by 10% (it is a change to a shared model, so a tie keeps the layout
    training uses). A few tens of ms at engine start for a small model. On one AMD EPYC box column-major was
    ~1.5x faster at vocab 8192 x width 256, on an Intel Xeon box no faster: hence measured, not assumed."""

    def __init__(self, rounds: int = 5, calls: int = 8, margin: float = 0.9):
        self.rounds, self.calls, self.margin = rounds, calls, margin
        self.decided: dict[tuple, bool] = {}

    def __call__(self, w: torch.Tensor) -> bool:
        key = (tuple(w.shape), w.dtype)
        if key not in self.decided:
            self.decided[key] = self._faster_column_major(w)
        return self.decided[key]

    @torch.inference_mode()
    def _faster_column_major(self, w: torch.Tensor) -> bool:
        x = torch.randn(1, w.size(1), dtype=w.dtype, device=w.device)
        layouts = [w.detach(), w.detach().t().contiguous().t()]  # row-major as trained, column-major copy
        best = [float("inf"), float("inf")]
        for m in layouts:
            F.linear(x, m)  # warm-up
        for _ in range(self.rounds):
            for i, m in enumerate(layouts):
                t0 = time.perf_counter()
                for _ in range(self.calls):
                    F.linear(x, m)
                best[i] = min(best[i], time.perf_counter() - t0)
        return best[1] < self.margin * best[0]


def _cuda_capture(fn, device, pool):
    """Record fn() (already warmed up) into a CUDA graph; returns (replay, outputs of the recorded call)."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool):
        out = fn()
    return g.replay, out


class GraphedDecode:
    """The one-token decode step as CUDA graphs, one per batch bucket (1, 2, 4, ... max_batch_size).

    On a GPU a small model's decode step is a few hundred kernel launches from Python, and the launches, not the
    GPU, set the pace (`benchmarks/RESULTS.md`, GPU section: ~7 ms a step at d12). A graph replays them in one
    call. Graphs need fixed shapes and no host reads, so the captured forward runs the model's static KV path
    (`cache.static`: attention over every cache position with a per-row length mask, positions gathered on the
    device). Rows past the live ones are padded like holes (dummy token, length reset around the step). The
    returned logits live in a static buffer that the next replay overwrites: consume them before the next step.
    """

    def __init__(self, runner: ModelRunner, capture=_cuda_capture):
        """capture(fn, device, pool) -> (replay, outputs): CUDA graph capture; tests pass an eager stand-in."""
        self.runner = runner
        n, buckets = 1, []
        while n < runner.max_batch_size:
            buckets.append(n)
            n *= 2
        self.buckets = buckets + [runner.max_batch_size]
        self.graphs: dict[int, tuple] = {}
        state = [t for t in (runner.cache.seqlens, getattr(runner.cache, "prev_emb", None)) if t is not None]
        saved = [t.clone() for t in state]
        pool = torch.cuda.graph_pool_handle() if capture is _cuda_capture else None
        try:
            for b in reversed(self.buckets):  # largest first: the smaller graphs reuse its memory pool
                self.graphs[b] = self._capture(b, capture, pool)
        finally:  # warm-up forwards advanced the lengths and smear state: put them back
            for t, v in zip(state, saved):
                t.copy_(v)

    @torch.inference_mode()
    def _capture(self, b: int, capture, pool):
        runner = self.runner
        view = copy.copy(runner.view(0, b))
        view.static = True
        idx = torch.zeros(b, 1, dtype=torch.long, device=runner.device)
        lens = view.seqlens.clone()

        def fwd():
            with inference_attention(runner.device):
                return runner.model(idx, kv_cache=view)[:, -1]  # (b, V)

        if capture is _cuda_capture:
            side = torch.cuda.Stream(runner.device)
            side.wait_stream(torch.cuda.current_stream(runner.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up off the capture stream: kernel selection, workspaces
                    fwd()
                    view.seqlens.copy_(lens)
            torch.cuda.current_stream(runner.device).wait_stream(side)
        replay, out = capture(fwd, runner.device, pool)
        view.seqlens.copy_(lens)
        return replay, idx, out

    def decode(self, tokens: list[int], holes: list[int]) -> torch.Tensor:
        n = len(tokens)
        b = next(b for b in self.buckets if b >= n)
        holes = holes + list(range(n, b))
        replay, idx, out = self.graphs[b]
        idx.copy_(torch.tensor(tokens + [0] * (b - n), dtype=torch.long).view(b, 1), non_blocking=True)
        seqlens = self.runner.cache.seqlens
        if holes:
            seqlens[holes] = 0
        replay()
        if holes:
            seqlens[holes] = 0
        return out[:n]


class ModelRunner:
    def __init__(self, model, max_batch_size: int, max_seq_len: int, decode_rows: str = "prefix",
                 decode_layout: bool | str = False, cuda_graphs: bool | None = None):
        from raychat.model.kv_cache import KVCache

        if decode_rows not in ("prefix", "full"):
            raise ValueError(f"decode_rows must be 'prefix' or 'full', got {decode_rows!r}")
        rope = getattr(model, "cos", None)
        if isinstance(rope, torch.Tensor) and max_seq_len > rope.size(0):
            raise RaychatError(f"max_seq_len {max_seq_len} exceeds the model's rotary table ({rope.size(0)} "
                               f"positions = sequence_len {model.config.sequence_len} x rope_len_mult)")
        self.model = model
        if decode_layout not in (True, False, "auto"):
            raise ValueError(f"decode_layout must be True, False or 'auto', got {decode_layout!r}")
        if decode_layout and hasattr(model, "use_decode_layout"):
            model.use_decode_layout(pick=ColumnMajorPick() if decode_layout == "auto" else None)
        self.device = model.get_device()
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.decode_rows = decode_rows
        self.cache = KVCache.for_model(model, max_batch_size, max_seq_len)
        self._views: dict[tuple[int, int], object] = {}
        # cuda_graphs: None = on where the model is on a CUDA device; True there too, refused elsewhere
        if cuda_graphs and self.device.type != "cuda":
            raise RaychatError(f"cuda_graphs=True needs the model on a CUDA device; it is on {self.device}")
        self.graphed: GraphedDecode | None = None
        if cuda_graphs is not False and self.device.type == "cuda":
            try:
                self.graphed = GraphedDecode(self)
            except Exception as e:  # noqa: BLE001 - an engine without graphs still works, only slower
                if cuda_graphs:
                    raise
                warnings.warn(f"CUDA graphs for decoding are off ({type(e).__name__}: {e}); decoding eagerly",
                              stacklevel=2)

    def view(self, lo: int, hi: int):
        """The cache restricted to rows lo..hi-1 (shares storage; views are cached, the storage never moves)."""
        v = self._views.get((lo, hi))
        if v is None:
            c = self.cache
            v = copy.copy(c)
            v.batch_size = hi - lo
            v.k = [t[lo:hi] for t in c.k]
            v.v = [t[lo:hi] for t in c.v]
            v.seqlens = c.seqlens[lo:hi]
            if getattr(c, "prev_emb", None) is not None:
                v.prev_emb = c.prev_emb[lo:hi]
            self._views[(lo, hi)] = v
        return v

    @torch.inference_mode()
    def prefill(self, row: int, prompt: list[int]) -> torch.Tensor:
        """Run the whole prompt through the model into slot `row`. Returns the last position's logits (1, V)."""
        v = self.view(row, row + 1)
        v.seqlens.zero_()
        if getattr(v, "prev_emb", None) is not None:
            v.prev_emb.zero_()
        idx = torch.tensor([prompt], dtype=torch.long, device=self.device)
        with inference_attention(self.device):
            logits = self.model(idx, kv_cache=v, last_only=True)  # (1, 1, V)
        return logits[:, -1]

    @torch.inference_mode()
    def copy_row(self, src: int, dst: int) -> None:
        """Duplicate a prefilled row (num_samples > 1 share one prefill)."""
        self.cache.copy_row_from(self.cache, src, dst)

    @torch.inference_mode()
    def decode(self, tokens: list[int], holes: list[int]) -> torch.Tensor:
        """Feed one token per row 0..len(tokens)-1 (holes carry a dummy 0). Returns logits (n, V)."""
        if self.graphed is not None:
            return self.graphed.decode(tokens if self.decode_rows == "prefix" else tokens + [0] * (
                self.max_batch_size - len(tokens)), holes)
        n = self.max_batch_size if self.decode_rows == "full" else len(tokens)
        if n > len(tokens):
            holes = holes + list(range(len(tokens), n))
            tokens = tokens + [0] * (n - len(tokens))
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device).view(n, 1)
        if holes:  # a freed slot may still hold a full-length row: its dummy token must not overflow the cache
            self.cache.seqlens[holes] = 0
        with inference_attention(self.device):
            logits = self.model(idx, kv_cache=self.view(0, n))  # (n, 1, V)
        if holes:
            self.cache.seqlens[holes] = 0
        return logits[:, -1]

    @torch.inference_mode()
    def pick(self, logits: torch.Tensor, rows: list[int], params: list[SamplingParams],
             uniforms: list[float | None]) -> list[int]:
        """Choose the next token for each of `rows` (indices into logits' first dim): argmax where uniforms[i] is
        None (greedy), else sampled with params[i]. One host sync per kind of row, not per row."""
        out = [0] * len(rows)
        greedy = [i for i, u in enumerate(uniforms) if u is None]
        if greedy:
            am = logits.argmax(-1).tolist()
            for i in greedy:
                out[i] = am[rows[i]]
        if len(greedy) < len(rows):
            sampled = [i for i, u in enumerate(uniforms) if u is not None]
            sel = [rows[i] for i in sampled]
            sub = logits if sel == list(range(logits.size(0))) else logits[sel]
            toks = sample_rows(sub, [params[i] for i in sampled], [uniforms[i] for i in sampled]).tolist()
            for i, t in zip(sampled, toks):
                out[i] = t
        return out

    def reset(self) -> None:
        self.cache.reset()
