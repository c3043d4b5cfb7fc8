"""The chat layer (raychat.chat): UTF-8-safe deltas, tool segments, stop strings, timings, the temperature floor,
and the one pipeline (`Reply` / `stream_reply`) over the sync engine, the async engine and finished completions."""

from __future__ import annotations

import asyncio

import torch
from scripted_model import A_END, OUT_E, OUT_S, PY_E, PY_S, TOK, scripted

from raychat.chat import (
    MIN_TEMPERATURE,
    Reply,
    ReplyAssembler,
    completion_events,
    display_text,
    engine_events,
    render_chat_prompt,
    sampling_params,
    stream_reply,
)
from raychat.engine import AsyncEngine, Engine, SamplingParams
from raychat.engine.sampling import sample_rows
from raychat.engine.sequence import TokenEvent

GREEDY = SamplingParams(temperature=0.0, max_tokens=200)
MSGS = [{"role": "user", "content": "what is (2+3)*4?"}]


def test_reply_assembler_utf8_and_tool_segments():
    text = "héllo 🙂 "
    ids = TOK.encode(text) + [PY_S] + TOK.encode("6*7") + [PY_E, OUT_S] + TOK.encode("42") + [OUT_E]
    ids += TOK.encode(" → 42") + [A_END]
    asm = ReplyAssembler(TOK)
    deltas = []
    for t in ids:
        deltas += asm.feed(TokenEvent(0, t, False, "stop" if t == A_END else None))
    deltas += asm.finish()
    for d in deltas:
        assert "\ufffd" not in d.text  # no delta splits a multi-byte character
    kinds = [d.type for d in deltas]
    assert kinds.count("tool_call") == 1 and kinds.count("tool_result") == 1
    assert next(d.text for d in deltas if d.type == "tool_call") == "6*7"
    assert next(d.text for d in deltas if d.type == "tool_result") == "42"
    assert "".join(d.text for d in deltas if d.type == "token") == "héllo 🙂  → 42"
    assert asm.content() == [{"type": "text", "text": "héllo 🙂 "}, {"type": "python", "text": "6*7"},
                             {"type": "python_output", "text": "42"}, {"type": "text", "text": " → 42"}]
    # the rebuilt message re-renders to exactly the generated tokens
    conv = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": asm.content()}]}
    rendered, _ = TOK.render_conversation(conv)
    assert rendered[-len(ids):] == ids


def test_stream_reply_end_to_end_with_calculator_and_usage():
    script = TOK.encode("Let me compute. ") + [PY_S] + TOK.encode("(2+3)*4") + [PY_E] + TOK.encode(" Done.") + [A_END]
    eng = Engine(scripted(script), TOK)
    prompt = render_chat_prompt(TOK, MSGS)
    deltas = list(stream_reply(TOK, engine_events(eng, prompt, GREEDY), len(prompt)))
    assert [d.type for d in deltas if d.type != "token"] == ["tool_call", "tool_result", "done"]
    assert next(d.text for d in deltas if d.type == "tool_result") == "20"
    assert "".join(d.text for d in deltas if d.type == "token") == "Let me compute.  Done."
    assert "".join(display_text(d) for d in deltas) == "Let me compute. <<(2+3)*4=20>> Done."
    done = deltas[-1]
    assert done.finish_reason == "stop"
    n_completion = len(script) + 4  # + <|output_start|> "2" "0" <|output_end|>
    assert done.usage == {"prompt_tokens": len(prompt), "completion_tokens": n_completion,
                          "total_tokens": len(prompt) + n_completion}
    assert sum(d.n for d in deltas) == n_completion  # every engine token is behind exactly one delta
    assert set(done.timings) == {"ttft_ms", "tokens_per_second", "total_ms"}

    # closing the stream early cancels the engine request and frees the slot
    it = stream_reply(TOK, engine_events(eng, prompt, GREEDY), len(prompt))
    next(it)
    it.close()
    assert not eng.has_work()


def test_stop_string_cuts_the_text_and_cancels_the_engine_request():
    script = TOK.encode("alpha beta STOP gamma delta") + [A_END]
    eng = Engine(scripted(script), TOK)
    prompt = render_chat_prompt(TOK, MSGS)
    deltas = list(stream_reply(TOK, engine_events(eng, prompt, GREEDY), len(prompt), stop=["STOP"]))
    text = "".join(d.text for d in deltas if d.type == "token")
    assert text == "alpha beta " and deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage["completion_tokens"] < len(script)  # it stopped early ...
    assert not eng.has_work()  # ... and the engine request is gone


def test_the_same_reply_over_the_async_engine():
    eng = Engine(scripted(TOK.encode("async hello") + [A_END]), TOK)
    aeng = AsyncEngine(eng)
    prompt = render_chat_prompt(TOK, [{"role": "user", "content": "hey"}])

    async def main():
        reply, out = Reply(TOK, len(prompt)), []
        async for ev in aeng.generate(prompt, GREEDY):
            out += reply.feed(ev)
        return out + reply.finish()

    try:
        deltas = asyncio.run(main())
    finally:
        aeng.shutdown()
    assert "".join(d.text for d in deltas if d.type == "token") == "async hello"
    assert deltas[-1].type == "done" and deltas[-1].usage["completion_tokens"] == len("async hello") + 1


def test_completion_events_end_at_assistant_end_as_the_engine_would():
    ids = TOK.encode("x ") + [PY_S] + TOK.encode("1+1") + [PY_E, OUT_S] + TOK.encode("2") + [OUT_E, A_END]
    ids += TOK.encode("#### 999")  # junk after the end (other engines)
    deltas = list(stream_reply(TOK, completion_events(TOK, ids), 3))
    assert "".join(display_text(d) for d in deltas) == "x <<1+1=2>>"
    assert deltas[-1].finish_reason == "stop"
    assert list(stream_reply(TOK, completion_events(TOK, TOK.encode("ab")), 1))[-1].finish_reason == "length"


def test_tiny_temperature_is_greedy_not_nan():
    """1e-300 passes every range check; dividing float32 logits by it overflows and softmax gives NaN, so the
    inverse-CDF sampler picked the last id whatever the logits (issue #17). Below the floor
    the chat layer makes it greedy; at the floor sampling is finite and follows the argmax."""
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0]])
    assert sampling_params(temperature=1e-300, top_k=0).greedy
    assert sampling_params(temperature=MIN_TEMPERATURE / 2).greedy
    at_floor = sampling_params(temperature=MIN_TEMPERATURE, top_k=0)
    assert not at_floor.greedy
    assert [int(sample_rows(logits, [at_floor], [u])[0]) for u in (0.0, 0.5, 0.999)] == [1, 1, 1]
    # through the engine: a tiny temperature gives exactly the greedy tokens
    eng = Engine(scripted(TOK.encode("greedy") + [A_END]), TOK)
    prompt = render_chat_prompt(TOK, MSGS)
    tiny = sampling_params(temperature=1e-300, top_k=0, max_tokens=20)
    assert eng.generate(prompt, tiny) == eng.generate(prompt, GREEDY)
