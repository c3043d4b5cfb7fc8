"""AsyncEngine (background step loop + asyncio queues) and the chat layer (text deltas, tool segments)."""

from __future__ import annotations

import asyncio

import pytest
from scripted_model import ScriptedModel

from raychat.engine import AsyncEngine, ContextLengthError, Engine, SamplingParams
from raychat.engine.chat import ReplyAssembler, astream_chat, stream_chat
from raychat.engine.sequence import TokenEvent
from raychat.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()
SP = TOK.special_id
A_START, A_END = SP("<|assistant_start|>"), SP("<|assistant_end|>")
PY_S, PY_E, OUT_S, OUT_E = SP("<|python_start|>"), SP("<|python_end|>"), SP("<|output_start|>"), SP("<|output_end|>")
GREEDY = SamplingParams(temperature=0.0, max_tokens=200)


def scripted(script) -> ScriptedModel:
    return ScriptedModel(TOK.vocab_size, script, A_START, skip_span=(OUT_S, OUT_E))


def prompt(text="hi"):
    return TOK.render_for_completion({"messages": [{"role": "user", "content": text}]})


def test_async_concurrent_streams_match_blocking_generate():
    model = scripted(TOK.encode("concurrent streaming works") + [A_END])
    expected = Engine(model, TOK).generate(prompt(), GREEDY)[0]
    aeng = AsyncEngine(Engine(model, TOK, max_batch_size=3))

    async def one(i):
        return [ev async for ev in aeng.generate(prompt(str(i)), GREEDY)]

    async def main():
        return await asyncio.gather(*(one(i) for i in range(6)))  # 6 requests, 3 slots: half of them queue

    try:
        results = asyncio.run(main())
    finally:
        aeng.shutdown()
    for evs in results:
        assert [e.token_id for e in evs[:-1]] == expected and evs[-1].finish_reason == "stop"
        assert all(isinstance(e, TokenEvent) for e in evs)
    assert aeng.stats()["running"] == 0 and aeng.num_steps > 0


def test_async_close_and_task_cancel_free_the_slot():
    model = scripted(TOK.encode("x" * 150) + [A_END])
    eng = Engine(model, TOK, max_batch_size=1)
    aeng = AsyncEngine(eng)

    async def main():
        gen = aeng.generate(prompt(), GREEDY)
        got = [await gen.__anext__() for _ in range(3)]
        await gen.aclose()  # the consumer goes away: cancels in the engine
        # the only slot must become free again: a second request runs to completion
        evs = [ev async for ev in aeng.generate(prompt(), SamplingParams(temperature=0, max_tokens=5))]
        assert len(got) == 3 and evs[-1].finish_reason == "length" and len(evs) == 5

        async def consume():
            async for _ in aeng.generate(prompt(), GREEDY):
                await asyncio.sleep(0.01)  # a slow client: 150 tokens take > 1.5 s

        task = asyncio.create_task(consume())  # a disconnect: the task is cancelled mid-stream
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        evs = [ev async for ev in aeng.generate(prompt(), SamplingParams(temperature=0, max_tokens=4))]
        assert len(evs) == 4

    try:
        asyncio.run(main())
    finally:
        aeng.shutdown()
    assert not eng.has_work()


def test_async_errors_raise_at_call_site():
    aeng = AsyncEngine(Engine(scripted([A_END]), TOK, max_seq_len=16))

    async def main():
        with pytest.raises(ContextLengthError):
            async for _ in aeng.generate(list(range(40)), GREEDY):
                pass

    asyncio.run(main())
    aeng.shutdown()


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


def test_stream_chat_end_to_end_with_calculator_and_usage():
    script = TOK.encode("Let me compute. ") + [PY_S] + TOK.encode("(2+3)*4") + [PY_E] + TOK.encode(" Done.") + [A_END]
    eng = Engine(scripted(script), TOK)
    msgs = [{"role": "user", "content": "what is (2+3)*4?"}]
    deltas = list(stream_chat(eng, TOK, msgs, GREEDY))
    assert [d.type for d in deltas if d.type != "token"] == ["tool_call", "tool_result", "done"]
    assert next(d.text for d in deltas if d.type == "tool_result") == "20"
    assert "".join(d.text for d in deltas if d.type == "token") == "Let me compute.  Done."
    done = deltas[-1]
    assert done.finish_reason == "stop"
    n_prompt = len(TOK.render_for_completion({"messages": msgs}))
    n_completion = len(script) + 4  # + <|output_start|> "2" "0" <|output_end|>
    assert done.usage == {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                          "total_tokens": n_prompt + n_completion}
    assert set(done.timings) == {"ttft_ms", "tokens_per_second", "total_ms"}

    # closing the sync stream early cancels and frees the slot
    it = stream_chat(eng, TOK, msgs, GREEDY)
    next(it)
    it.close()
    assert not eng.has_work()


def test_astream_chat():
    eng = Engine(scripted(TOK.encode("async hello") + [A_END]), TOK)
    aeng = AsyncEngine(eng)

    async def main():
        return [d async for d in astream_chat(aeng, TOK, [{"role": "user", "content": "hey"}], GREEDY)]

    try:
        deltas = asyncio.run(main())
    finally:
        aeng.shutdown()
    assert "".join(d.text for d in deltas if d.type == "token") == "async hello"
    assert deltas[-1].type == "done" and deltas[-1].usage["completion_tokens"] == len("async hello") + 1


def test_async_step_failure_fails_streams_and_engine_recovers():
    model = scripted(TOK.encode("fine") + [A_END])
    aeng = AsyncEngine(Engine(model, TOK))
    real_forward = model.forward

    def broken(idx, *a, **kw):
        raise RuntimeError("device lost")

    async def main():
        model.forward = broken
        with pytest.raises(RuntimeError, match="engine step failed: RuntimeError: device lost"):
            async for _ in aeng.generate(prompt(), GREEDY):
                pass
        model.forward = real_forward
        evs = [ev async for ev in aeng.generate(prompt(), GREEDY)]
        assert TOK.decode([e.token_id for e in evs]) == "fine<|assistant_end|>"

    try:
        asyncio.run(main())
    finally:
        aeng.shutdown()
