"""AsyncEngine: background step loop + asyncio queues (the chat layer above it: test_chat_layer.py)."""

from __future__ import annotations

import asyncio

import pytest
from scripted_model import A_END, TOK, scripted

from raychat.engine import AsyncEngine, ContextLengthError, Engine, SamplingParams
from raychat.engine.sequence import TokenEvent

GREEDY = SamplingParams(temperature=0.0, max_tokens=200)


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
