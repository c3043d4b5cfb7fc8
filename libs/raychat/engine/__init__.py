"""Inference engine: KV-cached prefill/decode, per-request sampling, tool use, continuous batching.

    from raychat.engine import Engine, SamplingParams, AsyncEngine
    eng = Engine(model, tokenizer, max_batch_size=8)
    eng.generate(prompt_ids, SamplingParams(temperature=0.0, max_tokens=64))      # blocking
    async for ev in AsyncEngine(eng).generate(prompt_ids, params): ...            # streaming, asyncio

Files: sampling.py (SamplingParams, batched sampling), sequence.py (requests, per-sequence state machine with
stop conditions and tool use), kv_slots.py (KV capacity from a memory budget, per-slot token histories, the
prefix index), scheduler.py (admission and the prefill budget: chunked prefill), runner.py (all device work),
engine.py (the step loop), async_engine.py (background thread + asyncio queues). Conversations <-> ids/text
live above the engine, in raychat.chat.
"""

from raychat.engine.async_engine import AsyncEngine
from raychat.engine.engine import Completion, ContextLengthError, Engine
from raychat.engine.sampling import SamplingParams
from raychat.engine.sequence import Specials, TokenEvent

__all__ = ["AsyncEngine", "Completion", "ContextLengthError", "Engine", "SamplingParams", "Specials", "TokenEvent"]
