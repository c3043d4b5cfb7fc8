"""The OpenAI-compatible routes: POST /v1/chat/completions and /v1/completions (JSON or SSE), GET /v1/models.

Bodies are read in chunks and refused at `limits.max_frame_bytes` (413) before more is buffered, then parsed by
pydantic's JSON parser straight into the schema: it refuses what Python's `json` would turn into a 500 (an
integer of more than 4,300 digits, nesting deep enough for a RecursionError, a lone UTF-16 surrogate) with a
400, exactly as the WebSocket path does. Tool segments travel inside `content` GSM8K-style (<<expr=result>>).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from raychat.chat import tool_text
from raychat.serve.protocol import (
    ApiError,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    Usage,
    chat_request_from_openai,
    completion_requests_from_openai,
    new_id,
    pydantic_error,
)
from raychat.serve.stream import TokenStream, record_failure


async def read_body(request: Request, schema: type[BaseModel], limit: int) -> BaseModel:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                       code="request_too_large", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(f"request body exceeds the limit of {limit} bytes", code="request_too_large", status=413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError("request body is empty; expected a JSON object", code="invalid_json")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        if err.get("type") == "json_invalid":
            raise ApiError(f"request body is not valid JSON: {err.get('msg')}", code="invalid_json") from None
        if not err.get("loc") and err.get("type") == "model_type":
            raise ApiError("request body must be a JSON object", code="invalid_json") from None
        raise pydantic_error(e) from None


def client_addr(conn) -> str:
    return conn.client.host if conn.client else "unknown"


class _SSEResponse(StreamingResponse):
    """SSE whose token stream is closed however the response ends: a client that leaves before the body
    starts never runs the body generator, so its `finally` alone would leak the slot."""

    def __init__(self, ts: TokenStream, chunks: AsyncIterator[dict]):
        self.ts = ts
        super().__init__(self._body(chunks), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _body(self, chunks: AsyncIterator[dict]):
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
        except ApiError as e:  # mid-stream failure: headers are gone, so the error travels as an event
            yield f"data: {json.dumps(e.body())}\n\n"
        finally:
            await self.ts.close()
        yield "data: [DONE]\n\n"

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.ts.close()


async def _chat_chunks(ts: TokenStream, model: str, include_usage: bool) -> AsyncIterator[dict]:
    created = int(time.time())

    def chunk(delta: DeltaMessage, finish: str | None = None) -> dict:
        return ChatCompletionChunk(id=ts.id, created=created, model=model,
                                   choices=[ChatChunkChoice(delta=delta, finish_reason=finish)]).model_dump()

    yield chunk(DeltaMessage(role="assistant", content=""))
    async for ev in ts:
        if ev["type"] == "token":
            yield chunk(DeltaMessage(content=ev["text"]))
        elif ev["type"] in ("tool_call", "tool_result"):
            yield chunk(DeltaMessage(content=tool_text(ev["type"], ev["text"])))
        elif ev["type"] == "done":
            yield chunk(DeltaMessage(), ts.finish_reason)
    if include_usage:
        yield ChatCompletionChunk(id=ts.id, created=created, model=model, choices=[], usage=ts.usage()).model_dump()


async def _completion_chunks(ts: TokenStream, model: str, include_usage: bool) -> AsyncIterator[dict]:
    created = int(time.time())
    async for ev in ts:
        if ev["type"] == "token":
            c = CompletionResponse(id=ts.id, created=created, model=model, choices=[CompletionChoice(text=ev["text"])])
            yield c.model_dump(exclude={"usage"})
        elif ev["type"] == "done":
            c = CompletionResponse(id=ts.id, created=created, model=model,
                                   choices=[CompletionChoice(text="", finish_reason=ts.finish_reason)])
            yield c.model_dump(exclude={"usage"})
    if include_usage:
        yield CompletionResponse(id=ts.id, created=created, model=model, choices=[], usage=ts.usage()).model_dump()


def add_openai_routes(app, api) -> None:
    config = api.config
    limits = config.limits

    def check_model(model: str | None) -> None:
        if model and model != config.model_name:
            raise ApiError(f"The model `{model}` does not exist; this server serves `{config.model_name}`",
                           code="model_not_found", status=404, param="model")

    async def counted(handler, request: Request):
        """One generation request: counted in requests_total; before its TokenStream exists, a refusal counts
        as a failure and a handler cancelled by a leaving client (Ray Serve cancels it) as cancelled."""
        api.metrics.observe_request()
        t0 = time.perf_counter()
        request.state.streams = []
        try:
            return await handler(request, t0)
        except ApiError as e:
            record_failure(api.metrics, e)
            raise
        except asyncio.CancelledError:
            if not request.state.streams:
                api.metrics.observe_finished("cancelled", 0, 0, time.perf_counter() - t0)
            raise

    @app.get("/v1/models")
    async def models():
        info = await api.info()
        card = ModelCard(id=config.model_name, created=int(time.time()),
                         max_model_len=info["context"] if info else None)
        return ModelList(data=[card]).model_dump()

    async def chat(request: Request, t0: float):
        req: ChatCompletionRequest = await read_body(request, ChatCompletionRequest, limits.max_frame_bytes)
        check_model(req.model)
        ts = TokenStream(api, chat_request_from_openai(req, limits), client_addr(request), t0)
        request.state.streams.append(ts)
        await ts.open()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _SSEResponse(ts, _chat_chunks(ts, config.model_name, include_usage))
        try:
            parts = []
            async for ev in ts:
                if ev["type"] == "token":
                    parts.append(ev["text"])
                elif ev["type"] in ("tool_call", "tool_result"):
                    parts.append(tool_text(ev["type"], ev["text"]))
        finally:
            await ts.close()
        msg = AssistantMessage(content="".join(parts))
        return ChatCompletionResponse(id=ts.id, model=config.model_name, usage=ts.usage(),
                                      choices=[ChatChoice(message=msg, finish_reason=ts.finish_reason)]).model_dump()

    async def completions(request: Request, t0: float):
        req: CompletionRequest = await read_body(request, CompletionRequest, limits.max_frame_bytes)
        check_model(req.model)
        reqs = completion_requests_from_openai(req, limits)
        if req.stream:
            if len(reqs) != 1:
                raise ApiError("stream=true takes a single prompt", param="prompt")
            ts = TokenStream(api, reqs[0], client_addr(request), t0)
            request.state.streams.append(ts)
            await ts.open()
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _SSEResponse(ts, _completion_chunks(ts, config.model_name, include_usage))
        choices, usage = [], Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        for i, r in enumerate(reqs):
            if i:
                api.metrics.observe_request()  # each prompt is its own generation, with its own outcome
            ts = TokenStream(api, r, client_addr(request), t0)
            request.state.streams.append(ts)
            await ts.open()
            try:
                text = "".join([ev["text"] async for ev in ts if ev["type"] == "token"])
            finally:
                await ts.close()
            choices.append(CompletionChoice(index=i, text=text, finish_reason=ts.finish_reason))
            u = ts.usage()
            usage = Usage(prompt_tokens=usage.prompt_tokens + u.prompt_tokens,
                          completion_tokens=usage.completion_tokens + u.completion_tokens,
                          total_tokens=usage.total_tokens + u.total_tokens)
        return CompletionResponse(id=new_id("cmpl"), model=config.model_name, choices=choices,
                                  usage=usage).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await counted(chat, request)

    @app.post("/v1/completions")
    async def completions_route(request: Request):
        return await counted(completions, request)
