"""What one engine replica does with a request: chat template -> token ids -> engine -> typed text events.

    svc = ChatService.load(config)                       # model + tokenizer + Engine + AsyncEngine
    async for ev in svc.generate({"kind": "chat", "messages": [...], "params": {...}, "stop": []}):
        ...   # {"type": "start"|"token"|"tool_call"|"tool_result"|"done"|"error", ...}

Pure asyncio + the engine: no Ray, no HTTP. app.EngineDeployment wraps it in a Serve replica;
`LocalEngineClient` drives it in-process (unit tests, the load test's local mode).

Events (small dicts):
    {"type": "start", "prompt_tokens", "max_tokens"}
    {"type": "token", "text", "n", "t"}      n = engine tokens consumed since the previous event, t = time.time()
                                             when the replica read the engine step that completed it
    {"type": "tool_call", "text", "n", "t"}  the expression between <|python_start|> and <|python_end|>
    {"type": "tool_result", "text", "n", "t"}  the forced output between <|output_start|> and <|output_end|>
    {"type": "done", "finish_reason", "prompt_tokens", "completion_tokens", "n", "stats"}
    {"type": "error", "code", "message", "status"}   only ever first (bad conversation, context overflow)
Text, tool segments, stop strings and the token counts come from the chat layer's `Reply` (raychat.chat),
the same pipeline the terminal chat and the evals use; this module adds limits and the event format.
The calculator runs in a child process with a deadline (tool_worker.BoundedTool), never in the replica.

What crosses the process boundary (a Serve streaming handle) is `generate_chunks`: lists of these events, the
first token alone, then at least `stream_interval` tokens per list (vLLM's stream_interval), and `Unbatched`
on the ingress turns them back into single events. Why: every stream item costs the replica, the ingress and
the Serve proxy their own serialisation and wakeups; at 32 clients on a CPU box one item per token spent
more CPU than the engine's steps (benchmarks/RESULTS.md, serve section). The ingress still sends one frame per
event, and its inter-token-latency metric reads the gaps between the events' `t`, not their arrival.
/v1/completions uses the same pipeline on a raw prompt (<|bos|> + text, no chat template).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import AsyncIterator

from raychat.serve.protocol import ApiError, context_length_error

DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}  # OpenAI's temperature, nanochat's top_k
TEXT_EVENTS = ("token", "tool_call", "tool_result")


class ChatService:
    """One engine plus the tokenizer on one device; serves many concurrent requests (continuous batching)."""

    def __init__(self, model, tokenizer, *, max_batch_size: int = 8, max_seq_len: int | None = None,
                 default_max_tokens: int = 512, model_name: str = "raychat", meta: dict | None = None,
                 device: str = "cpu", enforce_eager: bool = False, tool_timeout_s: float = 0.1,
                 engine_options: dict | None = None, stream_interval: int = 1):
        from raychat.engine import AsyncEngine, Engine
        from raychat.serve.tool_worker import BoundedTool

        if tokenizer is None:
            raise ApiError("checkpoint has no tokenizer/ directory beside it", status=500, code="internal")
        self.tokenizer = tokenizer
        self.tool = BoundedTool(timeout_s=tool_timeout_s)
        self.engine = Engine(model, tokenizer, max_batch_size=max_batch_size, max_seq_len=max_seq_len,
                             tool_fn=self.tool, decode_layout="auto", cuda_graphs=False if enforce_eager else None,
                             **(engine_options or {}))
        self.aengine = AsyncEngine(self.engine)
        self.context = self.engine.max_seq_len
        self.default_max_tokens = default_max_tokens
        self.model_name = model_name
        self.meta = meta or {}
        self.device = device
        self.stream_interval = stream_interval
        self.replica = "local"

    @classmethod
    def load(cls, config) -> ChatService:
        """From a ServeConfig: load the checkpoint on this process's device."""
        import torch

        from raychat.checkpoint import load_model
        from raychat.common import detect_device

        info = detect_device(config.device, config.dtype)
        if info.device.type == "cpu":
            # Ray sets OMP_NUM_THREADS from num_cpus; torch reads it only at import, so apply it explicitly
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        model, tok, meta = load_model(config.model_path, stage=config.stage, step=config.step,
                                      device=info.device, dtype=info.dtype)
        return cls(model, tok, max_batch_size=config.max_batch_size, max_seq_len=config.max_seq_len,
                   default_max_tokens=config.limits.default_max_tokens, model_name=config.model_name, meta=meta,
                   device=info.describe(), enforce_eager=config.enforce_eager, tool_timeout_s=config.tool_timeout_s,
                   engine_options=config.engine_options(info.device.type), stream_interval=config.stream_interval)

    def info(self) -> dict:
        cfg = self.engine.model.config
        return {"model_name": self.model_name, "context": self.context, "vocab_size": cfg.vocab_size,
                "n_layer": getattr(cfg, "n_layer", None), "max_batch_size": self.engine.max_batch_size,
                "device": self.device, "checkpoint": self.meta.get("checkpoint_dir"), "step": self.meta.get("step"),
                "cuda_graphs": self.engine.runner.graphed is not None and self.engine.runner.device.type == "cuda",
                "compiled_decode": self.engine.runner.graphed is not None and self.engine.runner.device.type == "cpu"}

    def stats(self) -> dict:
        s = self.aengine.stats()
        return {"running": 0, "waiting": 0, "kv_cache_usage": 0.0, "free_slots": None, **s, "replica": self.replica}

    def shutdown(self) -> None:
        self.aengine.shutdown()
        self.tool.close()

    # ---- one request ---------------------------------------------------------------------------------------
    def _prompt(self, request: dict) -> list[int]:
        from raychat.chat import render_chat_prompt, render_text_prompt
        from raychat.tokenizer import ConversationError

        if request["kind"] == "completion":
            return render_text_prompt(self.tokenizer, request["prompt"])
        try:
            return render_chat_prompt(self.tokenizer, request["messages"])
        except ConversationError as e:
            raise ApiError(str(e), param="messages") from None

    def _params(self, request: dict, prompt_tokens: int):
        from raychat.chat import sampling_params

        p = {k: v for k, v in request.get("params", {}).items() if v is not None}
        room = self.context - prompt_tokens
        if "max_tokens" in p:
            if prompt_tokens + p["max_tokens"] > self.context:
                raise context_length_error(self.context, prompt_tokens, p["max_tokens"])
        elif room < 1:
            raise context_length_error(self.context, prompt_tokens, None)
        else:
            p["max_tokens"] = min(self.default_max_tokens, room)
        return sampling_params(**{**DEFAULTS, **p})

    async def generate(self, request: dict) -> AsyncIterator[dict]:
        from raychat.chat import Reply
        from raychat.engine import ContextLengthError

        try:
            prompt = self._prompt(request)
            params = self._params(request, len(prompt))
        except ApiError as e:
            yield {"type": "error", "code": e.code, "message": e.message, "status": e.status, "param": e.param}
            return
        reply = Reply(self.tokenizer, len(prompt), stop=request.get("stop") or [])
        yield {"type": "start", "prompt_tokens": len(prompt), "max_tokens": params.max_tokens}
        stream = self.aengine.generate(prompt, params)
        try:
            async for ev in stream:
                # the engine thread hands a step's events over at once, so this is the step's time (steps that
                # pile up while this loop is busy share the time they are read at, as arrival times would)
                t = time.time()
                for d in reply.feed(ev):
                    yield {"type": d.type, "text": d.text, "n": d.n, "t": t}
                if reply.done:
                    break  # the end, or a stop string: closing the stream cancels the engine request
        except ContextLengthError as e:  # cannot happen after _params' check; kept so it never becomes a 500
            yield {"type": "error", "code": "context_length_exceeded", "status": 400, "param": "messages",
                   "message": str(e)}
            return
        finally:
            await stream.aclose()
        *rest, done = reply.finish()
        t = time.time()
        for d in rest:
            yield {"type": d.type, "text": d.text, "n": d.n, "t": t}
        yield {"type": "done", "finish_reason": done.finish_reason, "prompt_tokens": len(prompt),
               "completion_tokens": done.usage["completion_tokens"], "n": done.n, "stats": self.stats()}

    async def generate_chunks(self, request: dict) -> AsyncIterator[list[dict]]:
        """generate()'s events in lists for the trip to the ingress: "start", the first text event and the
        last events each go at once (TTFT and the end are not delayed); text events in between wait until they
        hold `stream_interval` engine tokens. Closing this iterator closes generate(), cancelling the request."""
        events = self.generate(request)
        buf: list[dict] = []
        tokens, first = 0, True
        try:
            async for ev in events:
                buf.append(ev)
                if ev["type"] in TEXT_EVENTS:
                    tokens += ev["n"]
                    if not first and tokens < self.stream_interval:
                        continue
                    first = False
                yield buf
                buf, tokens = [], 0
        finally:
            await events.aclose()
        if buf:
            yield buf


class Unbatched:
    """The ingress's view of a replica stream of event lists (generate_chunks): one event per __anext__, with
    the stream's cancel() passed through. Errors of the underlying stream (back-pressure, a dead replica,
    cancellation) surface at the __anext__ that needs its next list."""

    def __init__(self, chunks):
        self._chunks = chunks
        self._pending: deque = deque()

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        while not self._pending:
            self._pending.extend(await self._chunks.__anext__())
        return self._pending.popleft()

    def cancel(self) -> None:
        self._chunks.cancel()


class StreamCancelled(Exception):
    """What iterating a cancelled local stream raises (Serve raises RequestCancelledError)."""


class _LocalStream:
    """An in-process stand-in for a Serve DeploymentResponseGenerator: async-iterable, with cancel()."""

    def __init__(self, agen: AsyncIterator):
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.ensure_future(self._pump(agen))

    async def _pump(self, agen) -> None:
        try:
            async for ev in agen:
                await self._queue.put(ev)
            await self._queue.put(StopAsyncIteration())
        except asyncio.CancelledError:
            await agen.aclose()
            self._queue.put_nowait(StreamCancelled("request cancelled"))
            raise
        except Exception as e:  # noqa: BLE001 - surfaced to the consumer
            await self._queue.put(e)

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self._task.cancel()


class LocalEngineClient:
    """The engine-client interface api.py talks to, backed by an in-process ChatService (no Ray)."""

    def __init__(self, service: ChatService):
        self.service = service

    def generate(self, request: dict) -> Unbatched:
        return Unbatched(_LocalStream(self.service.generate_chunks(request)))  # the path a Serve replica takes

    async def stats(self) -> list[dict]:
        return [self.service.stats()]

    async def ready(self) -> dict:
        return {"ready": True, "replicas": 1, "ready_replicas": 1, "errors": []}

    async def info(self) -> dict | None:
        return self.service.info()
