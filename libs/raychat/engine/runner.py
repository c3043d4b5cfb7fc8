"""All device work of the engine: sizing the KV cache from a memory budget, the preallocated cache, prefill (in
chunks, from any start position), batched one-token decode, row copies, the CPU decode weight layout and the
tensor side of sampling. The scheduler and the state machines never touch a tensor; this file never makes a
scheduling decision.

KV cache layout (raychat.model.kv_cache.KVCache): per layer (num_slots, max_seq_len, H_kv, D) in the compute
dtype, plus per-row lengths. A row is a slot (kv_slots.SlotTable); its length always equals the number of
tokens the slot table says it holds, busy or free. The model reads and
writes the cache through `cache.k[i]`, `cache.v[i]`, `cache.seqlens`, `cache.prev_emb` and advances `seqlens`
in place, so a *view* of rows lo..hi-1 (a shallow copy of the cache object whose tensors are slices of the
big ones) is itself a valid cache. That gives us, without copying any K/V:
- prefill straight into a slot: a forward of the prompt (1, T) on the one-row view of that slot;
- decode on the prefix rows[0:hi] that holds every decoding sequence (never-used slots go out lowest first),
  instead of the full preallocated batch. Rows inside the prefix that are not decoding ("holes": free slots
  holding a cached prefix, sequences still prefilling) are fed a dummy token written just past their length,
  where it overwrites nothing they hold, and their length and smear state are put back afterwards; cheaper
  than gathering the live rows (a gather would copy the whole cache). `decode_rows="full"` always runs every
  slot (for the benchmark's comparison).
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
import torch.nn.functional as F

from raychat.common import RaychatError
from raychat.engine.kv_slots import kv_bytes_per_slot, slots_for_budget
from raychat.engine.sampling import SamplingParams, sample_rows
from raychat.model.attention import inference_attention
from raychat.model.gpt import Linear
from raychat.model.kv_cache import PackedKV


def kv_capacity(model, max_seq_len: int, max_num_seqs: int, kv_cache_memory: int | None = None,
                gpu_memory_utilization: float | None = None) -> dict:
    """How many cache slots to allocate. Without a budget: max_num_seqs (a fixed slot count). kv_cache_memory:
    that many bytes. gpu_memory_utilization: vLLM's meaning, the fraction of the GPU's total memory this process
    may use, so the budget is that share minus what is already allocated on the device (the weights, other
    processes); no activation profiling, so leave headroom (0.9 is vLLM's default).
    Returns {num_slots, slot_bytes, budget_bytes, source}."""
    c = model.config
    elem = torch.empty((), dtype=model.compute_dtype).element_size()
    slot = kv_bytes_per_slot(c.n_layer, c.n_kv_head, c.head_dim, max_seq_len, elem, c.n_embd)
    if kv_cache_memory is not None and gpu_memory_utilization is not None:
        raise RaychatError("give kv_cache_memory or gpu_memory_utilization, not both")
    if kv_cache_memory is not None:
        if kv_cache_memory <= 0:
            raise RaychatError(f"kv_cache_memory must be > 0 bytes, got {kv_cache_memory}")
        budget, source = int(kv_cache_memory), "kv_cache_memory"
    elif gpu_memory_utilization is not None:
        if not 0 < gpu_memory_utilization <= 1:
            raise RaychatError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        device = model.get_device()
        if device.type != "cuda":
            raise RaychatError(f"gpu_memory_utilization needs the model on a CUDA device; it is on {device}: "
                               "give kv_cache_memory (bytes) instead")
        free, total = torch.cuda.mem_get_info(device)
        budget, source = int(gpu_memory_utilization * total - (total - free)), "gpu_memory_utilization"
        if budget <= 0:
            raise RaychatError(f"gpu_memory_utilization={gpu_memory_utilization} leaves no room for a KV cache: "
                               f"{(total - free) / 2**30:.1f} of {total / 2**30:.1f} GiB are already in use")
    else:
        return {"num_slots": max_num_seqs, "slot_bytes": slot, "budget_bytes": max_num_seqs * slot,
                "source": "max_batch_size"}
    try:
        n = slots_for_budget(budget, slot, max_num_seqs)
    except ValueError as e:
        raise RaychatError(str(e)) from None
    return {"num_slots": n, "slot_bytes": slot, "budget_bytes": budget, "source": source}


def describe_capacity(info: dict) -> str:
    """The start-up line: budget -> slots (what limited them)."""
    mib = 2**20
    return (f"raychat engine: KV-cache budget {info['budget_bytes'] / mib:,.1f} MiB ({info['source']}) -> "
            f"{info['num_slots']} slots of {info['slot_bytes'] / mib:,.2f} MiB "
            f"({info['num_slots'] * info['slot_bytes'] / mib:,.1f} MiB allocated)")


@torch.no_grad()
def use_decode_layout(model, pick=None) -> int:
    """Re-lay the model's Linear weights for CPU decoding, in place; values, shapes and state_dict keys unchanged.

    A decode step multiplies one row vector by every weight (a GEMV), which streams the weight from memory; on
    CPU it streams about twice as fast when the weight's longer dimension is contiguous (long rows suit the
    prefetcher): the lm_head (vocab x width) and c_fc (4*width x width) are stored column-major (strides
    (1, out)), the others stay as they are. `raychat bench engine` shows the effect. For inference only: a
    sharded optimizer's in-place gather needs row-major weights, so don't train a model after this (the engine
    calls it only when asked to, `Engine(decode_layout=True|"auto")`). No-op on GPUs. `pick(weight) -> bool`,
    when given, decides per weight (ColumnMajorPick times both layouts: which one a CPU's GEMV prefers differs
    between machines). Returns how many weights were re-laid."""
    if model.get_device().type != "cpu":
        return 0
    n = 0
    for mod in model.modules():
        w = mod.weight if isinstance(mod, Linear) else None
        if w is not None and w.size(0) > w.size(1) and w.is_contiguous() and (pick is None or pick(w)):
            w.data = w.data.t().contiguous().t()
            n += 1
    return n


class ColumnMajorPick:
    """For use_decode_layout(pick=...): does a one-row GEMV (a batch-1 decode step's matmul) run faster on
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


def compiled_capture(fn, device, pool):
    """GraphedDecode's capture on CPU: fn compiled by torch.compile (inductor, fixed shapes, C++ wrapper), so a
    decode step is one call into generated C++ instead of ~400 small ops dispatched from Python. At batch 1 on a
    small model that dispatch is over half a step (d4, 1 thread: ~2.0 ms eager, of which the weights' 27 GEMVs
    are ~0.85 ms; ~1.3 ms compiled): see benchmarks/bench_decode_peer.py. The C++ wrapper matters: inductor's
    default Python wrapper kept ~0.3 ms of per-kernel Python per step. Each bucket compiles once (a few seconds
    with inductor's on-disk cache warm, tens of seconds cold); `replay` reruns it into the same output buffer.

    A replay skips dynamo's guard evaluation (`set_stance(skip_guard_eval_unsafe=True)`: only the guards that tell
    the buckets' graphs apart run). A replay's inputs are the same tensors every time (the captured token ids, the
    cache's fixed buffers), so the full guards can only pass; evaluating them was ~0.25 ms of a ~2.2 ms batch-1
    step at d4."""
    step = torch.compile(fn, dynamic=False, options={"cpp_wrapper": True})
    out = step()
    step()  # a second call under the full guards: any recompile happens here, not under the skipped guards

    def replay():
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return out.copy_(step())

    return replay, out


class GraphedDecode:
    """The one-token decode step as CUDA graphs, one per batch bucket (1, 2, 4, ... max_batch_size), or on CPU
    compiled by torch.compile (`compiled_capture`, `ModelRunner(compile_decode=True)`), with the same buckets.

    On a GPU a small model's decode step is a few hundred kernel launches from Python, and the launches, not the
    GPU, set the pace (`benchmarks/RESULTS.md`, GPU section: ~7 ms a step at d12). A graph replays them in one
    call. Graphs need fixed shapes and no host reads, so the captured forward runs the model's static KV path
    (`cache.static`: attention over every cache position with a per-row length mask, positions gathered on the
    device). Rows past the live ones are padded like holes (dummy token, length restored after the step). The
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
        saved = self.runner.park(holes)
        replay()
        self.runner.unpark(holes, saved)
        return out[:n]


class ModelRunner:
    def __init__(self, model, max_batch_size: int, max_seq_len: int, decode_rows: str = "prefix",
                 decode_layout: bool | str = False, cuda_graphs: bool | None = None, compile_decode: bool = False):
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
        self.relaid = use_decode_layout(model, ColumnMajorPick() if decode_layout == "auto" else None) \
            if decode_layout else 0
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
        if compile_decode:
            if self.device.type != "cpu":
                raise RaychatError(f"compile_decode is for CPU decoding (CUDA has cuda_graphs); the model is on "
                                   f"{self.device}")
            try:
                self.graphed = GraphedDecode(self, capture=compiled_capture)
            except Exception as e:  # noqa: BLE001 - no C++ compiler, an op inductor cannot lower: decode eagerly
                warnings.warn(f"compiled decoding is off ({type(e).__name__}: {e}); decoding eagerly", stacklevel=2)
        elif cuda_graphs is not False and self.device.type == "cuda":
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
    def prefill(self, row: int, tokens: list[int], start: int = 0, prev_token: int | None = None) -> torch.Tensor:
        """Run `tokens` through the model into slot `row` at positions start.. (the row's first `start` positions
        already hold the prompt's beginning: a reused prefix, or earlier chunks). prev_token: the token at
        start - 1, whose embedding the smear feature mixes into the first new one. Returns the last position's
        logits (1, V)."""
        self._start_row(row, start, prev_token)
        v = self.view(row, row + 1)
        idx = torch.tensor([tokens], dtype=torch.long, device=self.device)
        with inference_attention(self.device):
            logits = self.model(idx, kv_cache=v, last_only=True)  # (1, 1, V)
        return logits[:, -1]

    @torch.inference_mode()
    def step(self, prefills: list[tuple[int, list[int], int, int | None]], decode: tuple[list[int], list[int]] | None
             ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One engine step's device work: prefills [(row, tokens, start, prev_token)] (see prefill) and a decode
        (tokens, holes) (see decode). Returns each prefill's last logits (1, V) and the decode's (n, V).

        With both kinds of work and an eager decode, everything runs as one packed forward (kv_cache.PackedKV):
        the decode rows and the prompt chunks share one pass over the weights, which on a CPU costs little more
        than the decode alone for a chunk of a few dozen tokens (a decode step streams every weight for a
        handful of rows) — chunked prefill then barely slows the running streams. With CUDA graphs the decode
        replays its graph and the chunks run beside it."""
        if decode is None or not prefills or self.graphed is not None or not getattr(self.model, "packs_kv", False):
            logits = [self.prefill(*p) for p in prefills]
            return logits, (self.decode(*decode) if decode is not None else None)
        tokens, holes = decode
        n = self.max_batch_size if self.decode_rows == "full" else len(tokens)
        if n > len(tokens):
            holes = holes + list(range(len(tokens), n))
            tokens = tokens + [0] * (n - len(tokens))
        for row, _, start, prev_token in prefills:
            self._start_row(row, start, prev_token)
        mine = {row for row, *_ in prefills}  # a prefilling row in the decode span: its chunk is written after
        saved = self.park([h for h in holes if h not in mine])
        parts = [(self.view(0, n), 1)] + [(self.view(row, row + 1), len(toks)) for row, toks, *_ in prefills]
        flat = tokens + [t for _, toks, *_ in prefills for t in toks]
        idx = torch.tensor([flat], dtype=torch.long, device=self.device)
        with inference_attention(self.device):
            logits = self.model(idx, kv_cache=PackedKV(parts))[:, -1]  # (n + len(prefills), V)
        self.unpark([h for h in holes if h not in mine], saved)
        for row, toks, start, _ in prefills:  # the decode part also advanced it by its dummy token
            self.cache.seqlens[row] = start + len(toks)
        return [logits[n + j: n + j + 1] for j in range(len(prefills))], logits[:n]

    def _start_row(self, row: int, start: int, prev_token: int | None) -> None:
        """Set a row up to extend from position `start`: its length, and the smear state of prev_token."""
        v = self.view(row, row + 1)
        v.seqlens.fill_(start)
        if getattr(v, "prev_emb", None) is not None:
            embed = getattr(self.model, "token_embedding", None)
            if start == 0 or embed is None:
                v.prev_emb.zero_()
            else:  # the smear state is a function of the previous token alone: recompute it, never trust the row
                v.prev_emb.copy_(embed(torch.tensor([[prev_token]], device=self.device))[:, 0])

    @torch.inference_mode()
    def copy_row(self, src: int, dst: int, n: int) -> None:
        """Copy the first n positions of slot src into slot dst (a shared prefix; num_samples > 1 share one
        prefill). The smear state is not copied: the next prefill recomputes it from the previous token."""
        c = self.cache
        for k, v in zip(c.k, c.v):
            k[dst, :n].copy_(k[src, :n])
            v[dst, :n].copy_(v[src, :n])
        c.seqlens[dst] = n
        if getattr(c, "prev_emb", None) is not None and n == int(c.seqlens[src]):
            c.prev_emb[dst].copy_(c.prev_emb[src])

    def set_length(self, row: int, n: int) -> None:
        """The slot holds its first n positions (a freed slot's kept history, a reused prefix)."""
        self.cache.seqlens[row] = n

    def park(self, holes: list[int]):
        """Before a decode step that feeds holes a dummy token: their lengths and smear state, to restore."""
        if not holes:
            return None
        c = self.cache
        prev = getattr(c, "prev_emb", None)
        return c.seqlens[holes].clone(), (prev[holes].clone() if prev is not None else None)

    def unpark(self, holes: list[int], saved) -> None:
        if saved is None:
            return
        c = self.cache
        c.seqlens[holes] = saved[0]
        if saved[1] is not None:
            c.prev_emb[holes] = saved[1]

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
        saved = self.park(holes)  # a free slot keeps at most max_seq_len - 1 tokens: the dummy always fits
        with inference_attention(self.device):
            logits = self.model(idx, kv_cache=self.view(0, n))  # (n, 1, V)
        self.unpark(holes, saved)
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
