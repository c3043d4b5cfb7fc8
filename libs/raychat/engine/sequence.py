"""Requests, sequences and the per-sequence token state machine (stop conditions, tool use). Pure Python.

A *request* is one prompt with its SamplingParams; it owns `num_samples` *sequences* (completions), each of
which lives in one KV-cache row (slot) while it runs. Every running sequence keeps one invariant that the
engine's step relies on: exactly one token has been emitted but not yet fed to the model (`last_token`), and
the cache row holds `num_cached` tokens (prompt + all earlier output). A decode step feeds `last_token` and
emits the next one.

Tool use (calculator): when the model emits <|python_start|> the sequence collects tokens until
<|python_end|>, hands them to `run_tool` (which decodes the expression, calls the calculator and returns the
result token ids wrapped in <|output_start|> ... <|output_end|>), and queues those ids as *forced* tokens: the
next steps emit them instead of sampling (the model still reads them, one per decode step, so its cache sees
exactly what a training sequence would have).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from raychat.engine.sampling import SamplingParams

SPECIAL_NAMES = ("<|bos|>", "<|assistant_end|>", "<|python_start|>", "<|python_end|>", "<|output_start|>",
                 "<|output_end|>")


@dataclass(frozen=True)
class Specials:
    """Token ids the engine reacts to. A None id disables what depends on it (no tool use without the four
    python/output ids)."""

    bos: int | None
    assistant_end: int | None
    python_start: int | None = None
    python_end: int | None = None
    output_start: int | None = None
    output_end: int | None = None

    @classmethod
    def from_tokenizer(cls, tok) -> Specials:
        """From a Tokenizer (`special_id(name)`, `bos_id`) or a dict {special name: id}."""
        if isinstance(tok, Mapping):
            ids = [tok.get(name) for name in SPECIAL_NAMES]
        else:
            ids = []
            for name in SPECIAL_NAMES:
                try:
                    ids.append(tok.special_id(name))
                except (KeyError, ValueError):
                    ids.append(None)
            if ids[0] is None:
                ids[0] = getattr(tok, "bos_id", None)
        return cls(*[None if i is None else int(i) for i in ids])

    @property
    def tools(self) -> bool:
        return None not in (self.python_start, self.python_end, self.output_start, self.output_end)


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One token of one completion, in stream order. `forced` marks tool output the engine inserted (not
    sampled). `finish_reason` is set on the last event of a completion: "stop" (a stop token, which is this
    event's token), "length" (max_tokens or the context is full) or "cancelled" (token_id is -1: no token).
    `sample_index` tells the completions of a num_samples > 1 request apart."""

    request_id: int | str
    token_id: int
    forced: bool = False
    finish_reason: str | None = None
    sample_index: int = 0


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Request:
    __slots__ = ("request_id", "prompt", "params", "sequences", "status", "cancelled", "arrival_time")

    def __init__(self, request_id, prompt: list[int], params: SamplingParams, rngs: list[random.Random],
                 stop_ids: frozenset[int], max_seq_len: int, arrival_time: float = 0.0):
        self.request_id = request_id
        self.prompt = prompt
        self.params = params
        self.sequences = [Sequence(self, i, rng, stop_ids, max_seq_len) for i, rng in enumerate(rngs)]
        self.status = Status.WAITING
        self.cancelled = False
        self.arrival_time = arrival_time

    @property
    def num_rows(self) -> int:
        return len(self.sequences)


class Sequence:
    """One completion. `accept(token, forced)` advances its state machine and says whether it just finished."""

    __slots__ = ("request", "index", "rng", "row", "num_cached", "num_generated", "last_token", "finish_reason",
                 "stop_ids", "max_seq_len", "in_python", "expr_tokens", "forced", "params")

    def __init__(self, request: Request, index: int, rng: random.Random, stop_ids: frozenset[int],
                 max_seq_len: int):
        self.request = request
        self.params = request.params
        self.index = index
        self.rng = rng
        self.row: int | None = None       # KV-cache slot while running
        self.num_cached = 0               # tokens in this row of the KV cache
        self.num_generated = 0            # tokens emitted (sampled + forced)
        self.last_token: int | None = None  # emitted, not yet fed to the model
        self.finish_reason: str | None = None
        self.stop_ids = stop_ids
        self.max_seq_len = max_seq_len
        self.in_python = False
        self.expr_tokens: list[int] = []
        self.forced: deque[int] = deque()  # tool output waiting to be emitted

    @property
    def has_forced(self) -> bool:
        return bool(self.forced)

    def next_forced(self) -> int:
        return self.forced.popleft()

    def accept(self, token: int, forced: bool, specials: Specials,
               run_tool: Callable[[list[int]], list[int]] | None) -> str | None:
        """Record an emitted token; returns the finish reason if the completion ends with it."""
        self.last_token = token
        self.num_generated += 1
        if not forced and token in self.stop_ids:
            self.finish_reason = "stop"
            return "stop"
        if run_tool is not None:
            if token == specials.python_start:
                self.in_python, self.expr_tokens = True, []
            elif token == specials.python_end and self.in_python:
                self.in_python = False
                self.forced.extend(run_tool(self.expr_tokens))
                self.expr_tokens = []
            elif self.in_python:
                self.expr_tokens.append(token)
        if self.num_generated >= self.params.max_tokens or self.num_cached >= self.max_seq_len:
            # num_cached == max_seq_len: the token just emitted has no cache position to be fed into
            self.finish_reason = "length"
            return "length"
        return None
