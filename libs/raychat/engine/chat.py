"""The chat layer above the engine: conversations -> prompt ids, token events -> text deltas and tool segments.

The engine speaks token ids only. Everything text-shaped lives here, shared by the terminal chat, the
WebSocket/OpenAI server and anything else that streams a reply:

    prompt = render_chat_prompt(tokenizer, messages)          # ends with <|assistant_start|>
    for d in stream_chat(engine, tokenizer, messages, params):  # or `async for d in astream_chat(aengine, ...)`
        d.type in ("token", "tool_call", "tool_result", "done")   # the WebSocket message types

`ReplyAssembler` turns one completion's events into deltas. Text deltas never split a UTF-8 character (a
byte-level BPE token can end mid-character; raychat.tokenizer.StreamDecoder holds such bytes back). Tool
calls come out whole: <|python_start|> expr <|python_end|> becomes one `tool_call` delta with the expression,
<|output_start|> result <|output_end|> one `tool_result`. Other special tokens never reach the text. The
assembler also rebuilds the assistant message (`content()`: a string, or parts with python/python_output) so
that the next turn re-renders exactly the tokens the model produced.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from raychat.engine.sampling import SamplingParams
from raychat.engine.sequence import TokenEvent


@dataclass
class ChatDelta:
    """One piece of a streamed reply. type: "token" (text), "tool_call" (the expression), "tool_result", or
    "done" (finish_reason, usage {prompt_tokens, completion_tokens, total_tokens}, timings {ttft_ms,
    tokens_per_second, total_ms})."""

    type: str
    text: str = ""
    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def render_chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Messages [{"role", "content"}] (system merged into the first user turn) -> ids ending with
    <|assistant_start|>. Malformed conversations raise the tokenizer's ConversationError (a RaychatError)."""
    return tokenizer.render_for_completion({"messages": messages})


class _Decoder:
    """Incremental UTF-8-safe detokenizer: the tokenizer's StreamDecoder, or the same idea without it."""

    def __init__(self, tokenizer):
        try:
            from raychat.tokenizer import StreamDecoder

            self._sd = StreamDecoder(tokenizer, skip_special=True)
        except ImportError:  # pragma: no cover - the tokenizer package ships StreamDecoder
            import codecs

            self._sd = None
            self._tok = tokenizer
            self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        if self._sd is not None:
            return self._sd.feed(token)
        return self._dec.decode(self._tok.decode_bytes([token]), final=False)

    def flush(self) -> str:
        return self._sd.flush() if self._sd is not None else self._dec.decode(b"", final=True)


class ReplyAssembler:
    """Events of one completion -> ChatDeltas, plus the assistant message content for the conversation."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        sp = tokenizer.special_id
        self.python_start, self.python_end = sp("<|python_start|>"), sp("<|python_end|>")
        self.output_start, self.output_end = sp("<|output_start|>"), sp("<|output_end|>")
        self._is_special = getattr(tokenizer, "is_special", lambda t: False)
        self._dec = _Decoder(tokenizer)
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
        elif not self._is_special(t):
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


class _Timer:
    def __init__(self, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.t0 = time.perf_counter()
        self.t_first: float | None = None
        self.t_last = self.t0

    def tick(self) -> None:
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
        self.t_last = now

    def done(self, asm: ReplyAssembler) -> ChatDelta:
        n = asm.num_tokens
        t_first = self.t_first if self.t_first is not None else self.t_last
        decode_s = self.t_last - t_first
        tps = (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0
        return ChatDelta("done", finish_reason=asm.finish_reason or "stop",
                         usage={"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                                "total_tokens": self.prompt_tokens + n},
                         timings={"ttft_ms": round((t_first - self.t0) * 1e3, 2), "tokens_per_second": round(tps, 2),
                                  "total_ms": round((self.t_last - self.t0) * 1e3, 2)})


def stream_tokens(engine, tokenizer, prompt: list[int], params: SamplingParams,
                  assembler: ReplyAssembler | None = None) -> Iterator[ChatDelta]:
    """Drive a (synchronous, otherwise idle) Engine for one prompt and stream its deltas; the last is "done".
    Closing the iterator early cancels the request."""
    asm = assembler or ReplyAssembler(tokenizer)
    timer = _Timer(len(prompt))
    rid = engine.add_request(prompt, params)
    finished = False
    try:
        while not finished:
            for ev in engine.step():
                if ev.request_id != rid or ev.sample_index != 0:
                    continue
                timer.tick()
                yield from asm.feed(ev)
                finished = ev.finish_reason is not None
        yield from asm.finish()
        yield timer.done(asm)
    finally:
        if not finished:
            engine.cancel(rid)
            engine.step()  # reap: free the slot now, not at the next request


def stream_chat(engine, tokenizer, messages: list[dict], params: SamplingParams,
                assembler: ReplyAssembler | None = None) -> Iterator[ChatDelta]:
    """`stream_tokens` for a conversation (see render_chat_prompt)."""
    return stream_tokens(engine, tokenizer, render_chat_prompt(tokenizer, messages), params, assembler)


async def astream_chat(aengine, tokenizer, messages: list[dict], params: SamplingParams,
                       assembler: ReplyAssembler | None = None, request_id=None) -> AsyncIterator[ChatDelta]:
    """Stream a reply through an AsyncEngine; the last delta is "done". Closing the iterator (a stop message,
    a disconnect) cancels the generation in the engine."""
    prompt = render_chat_prompt(tokenizer, messages)
    asm = assembler or ReplyAssembler(tokenizer)
    timer = _Timer(len(prompt))
    gen = aengine.generate(prompt, params, request_id=request_id)
    try:
        async for ev in gen:
            if ev.sample_index != 0:
                continue
            timer.tick()
            for d in asm.feed(ev):
                yield d
        for d in asm.finish():
            yield d
        yield timer.done(asm)
    finally:
        await gen.aclose()
