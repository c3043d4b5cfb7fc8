"""The inference engine: token ids in, token events out, with continuous batching.

    eng = Engine(model, tokenizer, max_batch_size=8)
    rid = eng.add_request(prompt_ids, SamplingParams(temperature=0.8, top_k=50, max_tokens=256))
    while eng.has_work():
        for ev in eng.step():          # TokenEvent(request_id, token_id, forced, finish_reason, sample_index)
            ...
    eng.generate(prompt_ids, params)   # blocking: list of completions (token ids), one per sample

One `step()`: cancelled requests leave (their slots keep what they computed, for prefix reuse); waiting
requests that fit get slots (kv_slots.SlotTable: the longest cached prefix of their prompt is kept in place or
copied from the slot holding it); then the scheduler's prefill plan runs (prompt slices from where the cache
ends, one forward each, straight into the slot; a request whose prompt is complete emits its first token and
num_samples > 1 copy the prefilled row); and one batched decode step runs over every sequence that was
decoding when the step began (feed its last token, emit the next). Without chunked prefill a step with
prefill work skips the decode (prefill first); with it, both run in every step. Finished sequences free their
slots at once, so a new request joins the running batch at the next step. Per-token work is kept to list
appends; the device is synced once per step (the chosen token ids), never per row.

The engine is single-threaded: call it from one thread (AsyncEngine runs it in its own thread for asyncio
servers). It works on token ids only; the chat layer `raychat.chat` renders conversations and decodes text.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from raychat.common import RaychatError
from raychat.engine.kv_slots import SlotTable
from raychat.engine.runner import ModelRunner, describe_capacity, kv_capacity
from raychat.engine.sampling import SamplingParams, make_rng
from raychat.engine.scheduler import Scheduler
from raychat.engine.sequence import Request, Specials, TokenEvent


class ContextLengthError(RaychatError):
    """The prompt does not fit the engine's context (serve maps it to `context_length_exceeded`)."""


@dataclass
class Completion:
    """One finished completion: generated ids without the final stop token, which ids were forced tool output
    (mask 0, nanochat's convention for RL/SFT: forced tokens are not trained on), and why it ended."""

    tokens: list[int]
    mask: list[int]
    finish_reason: str
    stop_token: int | None = None


def _default_tool(expr: str) -> str:
    from raychat.tools.calculator import calculate  # imported on the first tool call only

    return calculate(expr)


class Engine:
    def __init__(self, model, tokenizer=None, max_batch_size: int = 8, max_seq_len: int | None = None,
                 tool_fn: Callable[[str], str] | None = _default_tool, decode_rows: str = "prefix",
                 max_prefill_tokens: int = 4096, decode_layout: bool | str = False,
                 cuda_graphs: bool | None = None, kv_cache_memory: int | None = None,
                 gpu_memory_utilization: float | None = None, prefix_caching: bool = False,
                 prefill_chunk: int | None = None, compile_decode: bool = False):
        """tokenizer: a raychat Tokenizer (enables tool use: expressions are decoded and results encoded with
        it) or a dict {special token name: id} (no tool use). max_seq_len: KV-cache positions per row,
        default the model's sequence_len. tool_fn: expression -> result text (default: the calculator);
        None disables tool use. decode_layout: re-lay the model's weights in place for faster CPU decoding
        (runner.use_decode_layout): True = every long weight, "auto" = those this CPU's GEMV runs faster
        re-laid (timed once at start) — for a model used only for inference, never for one still trained.
        cuda_graphs: decode steps as CUDA graphs (runner.GraphedDecode); None = on when the model is on a CUDA
        device, False = eager, True = required. compile_decode (CPU): decode steps compiled by torch.compile, one
        graph per batch bucket, compiled at start (runner.compiled_capture; seconds per bucket): for a model used
        only for inference; falls back to eager decoding with a warning when compilation fails.

        KV capacity (kv_slots): without a budget the cache has max_batch_size slots of max_seq_len positions.
        kv_cache_memory (bytes) or gpu_memory_utilization (fraction of the GPU's memory this process may use,
        weights and everything already allocated included, as vLLM's flag) size it instead: as many slots as
        the budget holds, at most max_batch_size (then the cap on sequences running together).
        prefix_caching: a prompt starting with tokens a slot already holds prefills only the rest (off by default:
        cached keys/values belong to the weights that computed them; `raychat serve` turns it on, and a caller
        that updates the weights in place calls reset_prefix_cache()).
        prefill_chunk: prefill at most this many prompt tokens per step, interleaved with decode steps
        (None: whole prompts, a step prefills or decodes; see scheduler.py)."""
        if max_batch_size < 1:
            raise RaychatError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = None if tokenizer is None or isinstance(tokenizer, dict) else tokenizer
        self.specials = Specials.from_tokenizer(tokenizer) if tokenizer is not None else Specials(None, None)
        self.max_seq_len = int(max_seq_len or model.config.sequence_len)
        self.kv_info = kv_capacity(model, self.max_seq_len, max_batch_size, kv_cache_memory, gpu_memory_utilization)
        self.max_batch_size = self.kv_info["num_slots"]
        if self.kv_info["source"] != "max_batch_size":
            print(describe_capacity(self.kv_info), file=sys.stderr, flush=True)
        self.runner = ModelRunner(model, self.max_batch_size, self.max_seq_len, decode_rows=decode_rows,
                                  decode_layout=decode_layout, cuda_graphs=cuda_graphs,
                                  compile_decode=compile_decode)
        self._sched_args = dict(prefill_chunk=prefill_chunk, max_prefill_tokens=max_prefill_tokens)
        self.prefix_caching = prefix_caching
        self._new_scheduler()
        self.tool_fn = tool_fn
        self._run_tool = self._tool_tokens if (tool_fn and self.tokenizer and self.specials.tools) else None
        self._base_stops = frozenset(t for t in (self.specials.assistant_end, self.specials.bos) if t is not None)
        self._ids = itertools.count()
        self._stash: list[TokenEvent] = []  # events of other requests produced while generate() drove the loop
        self.vocab_size = model.config.vocab_size
        self.num_tool_calls = 0

    def _new_scheduler(self) -> None:
        old = getattr(self, "slots", None)
        self.slots = SlotTable(self.max_batch_size, self.max_seq_len, prefix_caching=self.prefix_caching)
        if old is not None:  # the prefix-cache counters are counters: they survive an abort_all
            self.slots.hits, self.slots.queries = old.hits, old.queries
        self.scheduler = Scheduler(self.slots, on_release=self.runner.set_length, **self._sched_args)

    # ---- requests -----------------------------------------------------------------------------------------
    def check_request(self, prompt_ids: Seq[int], params: SamplingParams) -> list[int]:
        """Validate without side effects (AsyncEngine calls it in the caller's thread). Returns the prompt."""
        if not isinstance(params, SamplingParams):
            raise RaychatError(f"params must be SamplingParams, got {type(params).__name__}")
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise RaychatError("empty prompt: at least one token (usually <|bos|>) is needed")
        if len(prompt) > self.max_seq_len:
            raise ContextLengthError(f"prompt of {len(prompt)} tokens exceeds the context of {self.max_seq_len} "
                                     "tokens")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise RaychatError(f"prompt has token ids outside the vocabulary [0, {self.vocab_size}): {bad[:5]}")
        if params.num_samples > self.max_batch_size:
            raise RaychatError(f"num_samples={params.num_samples} exceeds max_batch_size={self.max_batch_size}")
        return prompt

    def add_request(self, prompt_ids: Seq[int], params: SamplingParams | None = None, request_id=None):
        """Queue a request; returns its id (an int unless one is given). It starts at a later step()."""
        params = params or SamplingParams()
        prompt = self.check_request(prompt_ids, params)
        rid = next(self._ids) if request_id is None else request_id
        rngs = [make_rng(params.seed, i) for i in range(params.num_samples)]
        stops = self._base_stops | frozenset(params.stop_token_ids)
        req = Request(rid, prompt, params, rngs, stops, self.max_seq_len, arrival_time=time.perf_counter())
        try:
            self.scheduler.add(req)
        except ValueError as e:
            raise RaychatError(str(e)) from None
        return rid

    def cancel(self, request_id) -> bool:
        """Cancel a waiting or running request; its slots are freed and a "cancelled" event is emitted at the next
        step. Returns False if the request is unknown or already finished."""
        return self.scheduler.cancel(request_id)

    def abort_all(self) -> None:
        """Drop every request without events (after a failed step, or at shutdown): all slots free and empty."""
        self._new_scheduler()
        self._stash = []
        self.runner.reset()

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (after the model's weights changed). Running sequences keep their slots."""
        for r in range(self.max_batch_size):
            if r not in self.slots.busy:
                self.slots.tokens[r].clear()
                self.runner.set_length(r, 0)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._stash)

    def stats(self) -> dict:
        """Gauges and counters for metrics: running/waiting (requests), kv_cache_usage (fraction of positions
        held by running sequences), the KV capacity and budget, prefix-cache queries/hits (prompt tokens)."""
        used = sum(s.num_cached for s in self.scheduler.running.values())
        info = self.kv_info
        return {"running": self.scheduler.num_running_requests(), "waiting": len(self.scheduler.waiting),
                "kv_cache_usage": used / (self.max_batch_size * self.max_seq_len),
                "running_sequences": len(self.scheduler.running), "free_slots": self.slots.num_free,
                "kv_cache_slots": info["num_slots"], "kv_cache_capacity_tokens": info["num_slots"] * self.max_seq_len,
                "kv_cache_budget_bytes": info["budget_bytes"], "kv_cache_cached_tokens": self.slots.cached_tokens(),
                "prefix_cache_queries": self.slots.queries, "prefix_cache_hits": self.slots.hits}

    # ---- the step -----------------------------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        events, self._stash = self._stash, []
        sched = self.scheduler
        for req in sched.reap_cancelled():
            events.extend(TokenEvent(req.request_id, -1, False, "cancelled", s.index) for s in req.sequences
                          if s.finish_reason is None)
        for _req, allocs in sched.admit():
            a = allocs[0]
            if a.src is not None:  # the prefix lives in a busy slot: copy it instead of computing it again
                self.runner.copy_row(a.src, a.row, a.reuse)
            else:
                self.runner.set_length(a.row, a.reuse)
            for b in allocs[1:]:  # num_samples > 1: filled by a row copy once the prompt is in
                self.runner.set_length(b.row, 0)
        decoding = sched.decoding()  # before this step's prefills: a sequence emits its first token, then waits
        plan = sched.prefill_plan(decoding=len(decoding))
        decode = self._decode_inputs(decoding) if decoding and (not plan or sched.prefill_chunk is not None) \
            else None
        prefills = [(req.sequences[0].row, req.prompt[a:b], a, req.prompt[a - 1] if a else None)
                    for req, a, b in plan]
        prefill_logits, decode_logits = self.runner.step(prefills, decode)
        for (req, _, end), logits in zip(plan, prefill_logits):
            self._prefilled(req, end, logits, events)
        if decode is not None:
            self._decoded(decoding, decode_logits, events)
        return events

    def _prefilled(self, req: Request, end: int, logits, events: list[TokenEvent]) -> None:
        """A prompt slice ..end is in the cache; at the prompt's end emit the first tokens."""
        seqs = req.sequences
        first = seqs[0]
        self.slots.extend(first.row, req.prompt[first.num_cached:end])
        first.num_cached = end
        if end < len(req.prompt):
            return
        self.scheduler.prefilled(req)
        for s in seqs[1:]:
            self.runner.copy_row(first.row, s.row, end)
            self.slots.extend(s.row, req.prompt)
            s.num_cached = end
        p = req.params
        uniforms = [None if p.greedy else s.rng.random() for s in seqs]
        tokens = self.runner.pick(logits, [0] * len(seqs), [p] * len(seqs), uniforms)
        for s, tok in zip(seqs, tokens):
            self._emit(s, tok, False, events)

    @staticmethod
    def _decode_inputs(decoding: dict) -> tuple[list[int], list[int]]:
        """Rows 0..n-1 cover every decoding sequence; the others in that span are holes (fed a dummy)."""
        n = max(decoding) + 1
        tokens, holes = [0] * n, []
        for r in range(n):
            s = decoding.get(r)
            if s is None:
                holes.append(r)
            else:
                tokens[r] = s.last_token
        return tokens, holes

    def _decoded(self, decoding: dict, logits, events: list[TokenEvent]) -> None:
        rows, params, uniforms, seqs, forced = [], [], [], [], []
        for r, s in decoding.items():
            s.num_cached += 1
            self.slots.extend(r, (s.last_token,))
            if s.forced:
                forced.append(s)
            else:
                seqs.append(s)
                rows.append(r)
                params.append(s.params)
                uniforms.append(None if s.params.greedy else s.rng.random())
        tokens = self.runner.pick(logits, rows, params, uniforms) if seqs else []
        for s, tok in zip(seqs, tokens):
            self._emit(s, tok, False, events)
        for s in forced:
            self._emit(s, s.next_forced(), True, events)

    def _emit(self, s, token: int, forced: bool, events: list[TokenEvent]) -> None:
        reason = s.accept(token, forced, self.specials, self._run_tool)
        events.append(TokenEvent(s.request.request_id, token, forced, reason, s.index))
        if reason is not None:
            self.scheduler.release(s)

    def _tool_tokens(self, expr_tokens: list[int]) -> list[int]:
        """Decode the expression, run the tool, wrap the result: <|output_start|> result <|output_end|>."""
        self.num_tool_calls += 1
        expr = self.tokenizer.decode(expr_tokens)
        try:
            result = str(self.tool_fn(expr))
        except Exception as e:  # noqa: BLE001 - a tool failure is tool output, never an engine crash
            result = f"Error: {type(e).__name__}"
        sp = self.specials
        return [sp.output_start, *self.tokenizer.encode(result), sp.output_end]

    # ---- blocking conveniences ------------------------------------------------------------------------------
    def generate_many(self, prompts: Seq[Seq[int]], params: SamplingParams | Seq[SamplingParams]
                      ) -> list[list[Completion]]:
        """Run many prompts through continuous batching until all finish. Returns, per prompt, its
        num_samples Completions. Events of requests added by others meanwhile are kept for the next step()."""
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts):
            raise RaychatError(f"{len(prompts)} prompts but {len(plist)} SamplingParams")
        rids = [self.add_request(p, sp) for p, sp in zip(prompts, plist)]
        results = {rid: [Completion([], [], "") for _ in range(sp.num_samples)] for rid, sp in zip(rids, plist)}
        open_ = sum(sp.num_samples for sp in plist)
        stash = []
        while open_:
            for ev in self.step():
                comps = results.get(ev.request_id)
                if comps is None:
                    stash.append(ev)
                    continue
                c = comps[ev.sample_index]
                if ev.finish_reason == "stop":
                    c.stop_token = ev.token_id
                elif ev.token_id >= 0:
                    c.tokens.append(ev.token_id)
                    c.mask.append(0 if ev.forced else 1)
                if ev.finish_reason is not None:
                    c.finish_reason = ev.finish_reason
                    open_ -= 1
        self._stash.extend(stash)
        return [results[rid] for rid in rids]

    def generate(self, prompt_ids: Seq[int], params: SamplingParams | None = None) -> list[list[int]]:
        """Blocking: the num_samples completions (token ids, stop token excluded) of one prompt."""
        return [c.tokens for c in self.generate_many([prompt_ids], params or SamplingParams())[0]]
