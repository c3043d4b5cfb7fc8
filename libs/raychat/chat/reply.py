"""One reply, from the engine's token events to what a user sees: text deltas, tool segments, stop strings,
usage and timings.

`ReplyAssembler` turns one completion's events into deltas. Text deltas never split a UTF-8 character (a
byte-level BPE token can end mid-character; the tokenizer's StreamDecoder holds such bytes back). Tool calls
come out whole: <|python_start|> expr <|python_end|> becomes one `tool_call` delta with the expression,
<|output_start|> result <|output_end|> one `tool_result`. Other special tokens never reach the text. The
assembler also rebuilds the assistant message (`content()`: a string, or parts with python/python_output) so
that the next turn re-renders exactly the tokens the model produced.

`Reply` is the whole pipeline for one request (assembler + OpenAI stop strings + timer + the count of engine
tokens behind each delta); `stream_reply` drives it over any iterable of events and is what the terminal chat
and the evals use; the Serve replica feeds the same `Reply` from its async engine stream. A delta's `n` is the
number of engine tokens consumed since the previous delta (tokens that complete no text - half a character, a
special token, a tool segment in progress - are carried into the next one).

Prompts and settings: `render_chat_prompt` / `render_text_prompt` build what the engine reads,
`sampling_params` states SamplingParams the way users do. Temperature floor: logits / 1e-300 overflow float32
to inf and softmax turns them into NaN (with top_k=0 the inverse-CDF sampler then picks the last vocabulary id
every step); below `MIN_TEMPERATURE` the distribution is the argmax to float32 precision anyway, so such a
temperature means greedy - vLLM's rule (_SAMPLING_EPS).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from raychat.engine import SamplingParams
from raychat.engine.sequence import TokenEvent
from raychat.tokenizer import StreamDecoder

MIN_TEMPERATURE = 1e-5


def render_chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Messages [{"role", "content"}] (system merged into the first user turn) -> ids ending with
    <|assistant_start|>. Malformed conversations raise the tokenizer's ConversationError (a RaychatError)."""
    return tokenizer.render_for_completion({"messages": messages})


def render_text_prompt(tokenizer, text: str) -> list[int]:
    """Plain continuation (a base model, /v1/completions): a fresh document <|bos|> text."""
    return tokenizer.encode(text, prepend=tokenizer.bos_id)


def effective_temperature(t: float) -> float:
    return 0.0 if 0.0 <= t < MIN_TEMPERATURE else t


def sampling_params(temperature: float = 1.0, top_k: int | None = 50, top_p: float = 1.0, max_tokens: int = 256,
                    seed: int | None = None) -> SamplingParams:
    """SamplingParams as a user states them: top_k 0 = no limit, a temperature under MIN_TEMPERATURE = greedy."""
    return SamplingParams(temperature=effective_temperature(float(temperature)), top_k=int(top_k) if top_k else None,
                          top_p=float(top_p), max_tokens=int(max_tokens), seed=seed)


def tool_text(kind: str, text: str) -> str:
    """A tool segment inside plain text, GSM8K-style: <<expression=result>> (the call opens, the result closes)."""
    return f"<<{text}=" if kind == "tool_call" else f"{text}>>"


@dataclass
class ChatDelta:
    """One piece of a streamed reply. type: "token" (text), "tool_call" (the expression), "tool_result", or
    "done" (finish_reason, usage {prompt_tokens, completion_tokens, total_tokens}, timings {ttft_ms,
    tokens_per_second, total_ms}). n: engine tokens behind this delta."""

    type: str
    text: str = ""
    n: int = 0
    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def display_text(d: ChatDelta) -> str:
    """A delta as plain text: tool segments inline as <<expression=result>>, `done` as nothing."""
    if d.type in ("tool_call", "tool_result"):
        return tool_text(d.type, d.text)
    return d.text if d.type == "token" else ""


class ReplyAssembler:
    """Events of one completion -> ChatDeltas, plus the assistant message content for the conversation."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        sp = tokenizer.special_id
        self.python_start, self.python_end = sp("<|python_start|>"), sp("<|python_end|>")
        self.output_start, self.output_end = sp("<|output_start|>"), sp("<|output_end|>")
        self._dec = StreamDecoder(tokenizer, skip_special=True)
        self.mode = "text"  # "text" | "python" | "output"
        self._buf: list[int] = []
        self.parts: list[dict] = []
        self.num_tokens = 0
        self.finish_reason: str | None = None

    def _text(self, s: str, out: list[ChatDelta]) -> None:
        if not s:
            return
        out.append(ChatDelta("token", s))
        if self.parts and self.parts[-1]["type"] == "text":
            self.parts[-1]["text"] += s
        else:
            self.parts.append({"type": "text", "text": s})

    def _close_segment(self, out: list[ChatDelta]) -> None:
        if self.mode == "text":
            self._text(self._dec.flush(), out)
            return
        text = self.tokenizer.decode(self._buf)
        kind = "tool_call" if self.mode == "python" else "tool_result"
        out.append(ChatDelta(kind, text))
        self.parts.append({"type": "python" if self.mode == "python" else "python_output", "text": text})
        self._buf, self.mode = [], "text"

    def feed(self, ev: TokenEvent) -> list[ChatDelta]:
        out: list[ChatDelta] = []
        if ev.finish_reason is not None:
            self.finish_reason = ev.finish_reason
        t = ev.token_id
        if t < 0:
            return out
        self.num_tokens += 1
        if t in (self.python_start, self.output_start):
            self._close_segment(out)
            self.mode = "python" if t == self.python_start else "output"
        elif (t == self.python_end and self.mode == "python") or (t == self.output_end and self.mode == "output"):
            self._close_segment(out)
        elif self.mode != "text":
            self._buf.append(t)
        else:
            self._text(self._dec.feed(t), out)
        return out

    def finish(self) -> list[ChatDelta]:
        """End of stream: flush held-back bytes and any unterminated tool segment."""
        out: list[ChatDelta] = []
        self._close_segment(out)
        return out

    def content(self) -> str | list[dict]:
        """The assistant message for the conversation history (a plain string when there was no tool use)."""
        if all(p["type"] == "text" for p in self.parts):
            return "".join(p["text"] for p in self.parts)
        return [dict(p) for p in self.parts]

    def text(self) -> str:
        return "".join(p["text"] for p in self.parts if p["type"] == "text")


class StopMatcher:
    """OpenAI `stop` strings on the text stream: text that could be the start of a stop string is held back
    until it is known not to be; on a match the text is cut before it."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """-> (text safe to emit now, stopped)."""
        if not self.stops:
            return text, False
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        keep = min(self.hold, len(self.pending))
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class ReplyTimer:
    """Time to first token, decode speed after it, total: the one definition every layer reports.
    tokens_per_second = (completion_tokens - 1) / (last - first): the first token's time is the TTFT."""

    def __init__(self, t0: float | None = None):
        self.t0 = time.perf_counter() if t0 is None else t0
        self.t_first: float | None = None
        self.t_last: float | None = None

    def tick(self, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        if self.t_first is None:
            self.t_first = now
        self.t_last = now
        return now

    def timings(self, completion_tokens: int) -> dict:
        end = self.t_last if self.t_last is not None else time.perf_counter()
        ttft = (self.t_first - self.t0) if self.t_first is not None else 0.0
        decode_s = (self.t_last - self.t_first) if self.t_first is not None else 0.0
        tps = (completion_tokens - 1) / decode_s if decode_s > 0 and completion_tokens > 1 else 0.0
        return {"ttft_ms": round(ttft * 1e3, 3), "tokens_per_second": round(tps, 3),
                "total_ms": round((end - self.t0) * 1e3, 3)}


class Reply:
    """One request's reply: feed the engine's events of its first sample, get deltas; `done` turns True at the
    engine's end or at a stop string (the caller then cancels the engine request); `finish()` adds the held
    text and the final "done" delta."""

    def __init__(self, tokenizer, prompt_tokens: int, stop: Sequence[str] = (), t0: float | None = None):
        self.asm = ReplyAssembler(tokenizer)
        self.stop = StopMatcher(stop)
        self.timer = ReplyTimer(t0)
        self.prompt_tokens = prompt_tokens
        self.finish_reason: str | None = None
        self._n = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _take_n(self) -> int:
        n, self._n = self._n, 0
        return n

    def feed(self, ev: TokenEvent) -> list[ChatDelta]:
        if self.done or ev.sample_index != 0:
            return []
        self._n += ev.token_id >= 0
        self.timer.tick()
        deltas = self.asm.feed(ev)
        if ev.finish_reason is not None:
            deltas += self.asm.finish()
        out: list[ChatDelta] = []
        for d in deltas:
            if d.type == "token":
                d.text, stopped = self.stop.feed(d.text)
            else:
                stopped = False
                held = self.stop.flush()  # text held back for a possible stop string comes first
                if held:
                    out.append(ChatDelta("token", held, self._take_n()))
            if d.text:
                d.n = self._take_n()
                out.append(d)
            if stopped:
                self.finish_reason = "stop"
                return out
        if ev.finish_reason is not None:
            self.finish_reason = ev.finish_reason
        return out

    def finish(self) -> list[ChatDelta]:
        out = []
        tail = self.stop.flush()
        if tail:
            out.append(ChatDelta("token", tail, self._take_n()))
        n = self.asm.num_tokens
        out.append(ChatDelta("done", n=self._take_n(), finish_reason=self.finish_reason or "cancelled",
                             usage={"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                                    "total_tokens": self.prompt_tokens + n},
                             timings=self.timer.timings(n)))
        return out

    def content(self) -> str | list[dict]:
        return self.asm.content()


def stream_reply(tokenizer, events: Iterable[TokenEvent], prompt_tokens: int, stop: Sequence[str] = (),
                 reply: Reply | None = None) -> Iterator[ChatDelta]:
    """Deltas of one reply from a (sync) stream of the engine's events; the last one is "done". Leaving early
    (or a stop string) closes `events`, which for `engine_events` cancels the engine request."""
    reply = reply or Reply(tokenizer, prompt_tokens, stop)
    it = iter(events)
    try:
        for ev in it:
            yield from reply.feed(ev)
            if reply.done:
                break
        yield from reply.finish()
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def engine_events(engine, prompt: list[int], params) -> Iterator[TokenEvent]:
    """Drive a (synchronous, otherwise idle) Engine for one prompt and yield its events. Closing the iterator
    before the end cancels the request and frees its slot at once."""
    rid = engine.add_request(prompt, params)
    finished = False
    try:
        while not finished:
            for ev in engine.step():
                if ev.request_id != rid or ev.sample_index != 0:
                    continue
                finished = ev.finish_reason is not None
                yield ev
    finally:
        if not finished:
            engine.cancel(rid)
            engine.step()  # reap: free the slot now, not at the next request


def completion_events(tokenizer, ids: Sequence[int]) -> Iterator[TokenEvent]:
    """A finished completion's ids as engine events (for the evals, whose engine returns whole completions):
    the reply ends at the first <|assistant_end|> or <|bos|>, as the engine would have stopped there."""
    stops = {tokenizer.special_id("<|assistant_end|>"), tokenizer.bos_id}
    for t in ids:
        if t in stops:
            yield TokenEvent(0, t, False, "stop", 0)
            return
        yield TokenEvent(0, t, False, None, 0)
    yield TokenEvent(0, -1, False, "length", 0)
