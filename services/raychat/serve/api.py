"""The HTTP/WebSocket face of raychat: a FastAPI app built around an engine client.

    app = build_api(config, client)      # client: app.HandleEngineClient (Ray Serve) or LocalEngineClient

Routes: GET / and the files of web/ (the chat page), WS /ws/chat, POST /v1/chat/completions (SSE or JSON),
POST /v1/completions, GET /v1/models, GET /health (liveness, never authenticated), GET /ready (503 until an
engine replica has its model loaded), GET /metrics (Prometheus text).

Authentication (when an API key is configured) covers every route but /health:
- HTTP: `Authorization: Bearer <key>`.
- WebSocket: `Authorization: Bearer <key>` (non-browser clients), or the subprotocol
  `raychat.bearer.<key>` (browsers cannot set headers on a WebSocket; offer it together with `raychat.v1`,
  which the server selects), or `?api_key=<key>`, or the page cookie (below, same-origin only).
- The page: open `/?api_key=<key>` once; the server answers with an HttpOnly SameSite=Strict cookie and
  redirects to `/` (so the key leaves the address bar). Static files and the page's WebSocket then
  authenticate with the cookie; the /v1 API never accepts it (no cross-site request can ride on it).

Every refusal is OpenAI-shaped ({"error": {...}}; over the WebSocket a typed {"type": "error"}) and bad
input never produces a 500 or a dropped socket without a reason. Overload (global in-flight bound, the
per-client bound, a second chat on one socket, Serve back-pressure) is 429 + Retry-After / "overloaded".
"""

from __future__ import annotations

import asyncio
import hmac
import json
import mimetypes
import time
from collections import Counter
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from raychat.serve.config import ServeConfig
from raychat.serve.metrics import ServeMetrics
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
    Timings,
    Usage,
    WsChat,
    WsDone,
    WsStart,
    chat_request_from_openai,
    chat_request_from_ws,
    completion_requests_from_openai,
    new_id,
    parse_ws_message,
    pydantic_error,
)

COOKIE = "raychat_api_key"
WS_SUBPROTOCOL = "raychat.v1"
BEARER_PREFIX = "raychat.bearer."
OPEN_PATHS = ("/health",)
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_tool_text(kind: str, text: str) -> str:
    """Tool segments inside OpenAI `content`, GSM8K-style: <<expression=result>>."""
    return f"<<{text}=" if kind == "tool_call" else f"{text}>>"


class Gate:
    """In-flight bounds: global per ingress replica and per client address. acquire() raises 429."""

    def __init__(self, limits):
        self.limits = limits
        self.inflight = 0
        self.per_client: Counter = Counter()

    def acquire(self, client: str) -> None:
        lim = self.limits
        if self.inflight >= lim.max_concurrent_requests:
            raise ApiError(f"server is at capacity ({lim.max_concurrent_requests} requests in flight); retry "
                           f"after {lim.retry_after_s} s", code="overloaded", status=429)
        if lim.max_concurrent_per_client and self.per_client[client] >= lim.max_concurrent_per_client:
            raise ApiError(f"too many concurrent requests from this client (limit "
                           f"{lim.max_concurrent_per_client}); retry after {lim.retry_after_s} s",
                           code="overloaded", status=429)
        self.inflight += 1
        self.per_client[client] += 1

    def release(self, client: str) -> None:
        self.inflight -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


class TokenStream:
    """One generation as seen from the ingress: opens the engine stream, normalises its events, keeps the
    timings, records the metrics, and cancels the engine request if the consumer leaves early.

        ts = TokenStream(api, request_dict, client_addr); start = await ts.open()   # ApiError on refusal
        async for ev in ts: ...          # token / tool_call / tool_result, then one "done"
        ts.cancel()                      # stop: the stream then ends with done(finish_reason="cancelled")
        await ts.close()                 # always (finally): cancels if unfinished, releases the slot
    """

    def __init__(self, api: RaychatAPI, request: dict, client: str, t0: float | None = None):
        self.api, self.request, self.client = api, request, client
        self.t0 = t0 if t0 is not None else time.perf_counter()
        self.id = new_id("chatcmpl" if request["kind"] == "chat" else "cmpl")
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.finish_reason: str | None = None
        self._gen = None
        self._slot = False
        self._cancelled = False
        self._failed = False
        self._ended = False
        self._closed = False

    async def open(self) -> dict:
        self.api.gate.acquire(self.client)
        self._slot = True
        try:
            self._gen = self.api.client.generate(self.request)
            first = await self._gen.__anext__()
        except ApiError as e:
            self.api.metrics.observe_failure(e.code)
            await self.close()
            raise
        except Exception as e:  # noqa: BLE001 - back-pressure, a dead replica: the client may retry
            if self._cancelled:  # stopped while being routed: the stream just ends with done(cancelled)
                self._ended = True
                return {"type": "start", "prompt_tokens": 0}
            await self.close()
            raise self._unavailable(e) from None
        if first.get("type") == "error":
            err = ApiError(first["message"], code=first.get("code", "invalid_value"), status=first.get("status", 400),
                           param=first.get("param"))
            self.api.metrics.observe_failure(err.code)
            await self.close()
            raise err
        self.prompt_tokens = first.get("prompt_tokens", 0)
        self.api.metrics.observe_queue(time.perf_counter() - self.t0)
        if self._cancelled:  # a stop arrived while the request was being routed
            self._gen.cancel()
        return first

    def _unavailable(self, e: Exception) -> ApiError:
        name = type(e).__name__
        lim = self.api.config.limits
        if name == "BackPressureError":
            err = ApiError(f"engine queue is full; retry after {lim.retry_after_s} s", code="overloaded", status=429)
        else:
            err = ApiError(f"engine unavailable ({name}); retry after {lim.retry_after_s} s", code="unavailable",
                           status=503)
        self.api.metrics.observe_failure(err.code)
        return err

    def cancel(self) -> None:
        """Stop (also before open() has finished: the engine request is then cancelled as soon as it exists)."""
        if self.finish_reason is None and not self._cancelled:
            self._cancelled = True
            if self._gen is not None:
                self._gen.cancel()

    async def __aiter__(self) -> AsyncIterator[dict]:
        m = self.api.metrics
        while True:
            if self._ended:  # stopped before the engine stream produced anything
                ev = {"type": "done", "finish_reason": "cancelled", "completion_tokens": 0}
            else:
                try:
                    ev = await self._gen.__anext__()
                except StopAsyncIteration:
                    ev = {"type": "done", "finish_reason": "stop", "completion_tokens": self.completion_tokens}
                except Exception as e:  # noqa: BLE001 - cancelled by our stop, or the replica died mid-stream
                    if not self._cancelled:
                        self._failed = True
                        raise self._unavailable(e) from None
                    ev = {"type": "done", "finish_reason": "cancelled", "completion_tokens": self.completion_tokens}
            kind = ev.get("type")
            now = time.perf_counter()
            if kind == "error":
                self._failed = True
                m.observe_failure(ev.get("code", "internal"))
                raise ApiError(ev.get("message", "engine error"), code=ev.get("code", "internal"),
                               status=ev.get("status", 500))
            n = ev.get("n", 0)
            if kind in ("token", "tool_call", "tool_result"):
                self.completion_tokens += n
                if self.t_first is None:
                    self.t_first = now
                    m.observe_first_token(now - self.t0)
                elif n:  # the gap is shared by the n tokens this event carries (some complete no text alone)
                    m.observe_itl(now - self.t_last, n)
                self.t_last = now
                if kind == "tool_call":
                    m.observe_tool_call()
                yield ev
            elif kind == "done":
                self.completion_tokens = max(self.completion_tokens + n, ev.get("completion_tokens", 0))
                self.finish_reason = ev.get("finish_reason", "stop")
                self.t_last = now if self.t_first is not None else None
                m.observe_finished(self.finish_reason, self.prompt_tokens, self.completion_tokens, now - self.t0)
                if ev.get("stats"):
                    self.api.remember_stats(ev["stats"])
                yield ev
                return

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)

    def timings(self) -> Timings:
        end = self.t_last or time.perf_counter()
        ttft = (self.t_first - self.t0) if self.t_first is not None else 0.0
        decode_s = (self.t_last - self.t_first) if (self.t_first is not None and self.t_last) else 0.0
        tps = (self.completion_tokens - 1) / decode_s if decode_s > 0 and self.completion_tokens > 1 else 0.0
        return Timings(ttft_ms=round(ttft * 1e3, 3), tokens_per_second=round(tps, 3),
                       total_ms=round((end - self.t0) * 1e3, 3))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._gen is not None and self.finish_reason is None:
            self._cancelled = True
            self._gen.cancel()
            if self.prompt_tokens and not self._failed:  # it started and the client left: a cancelled request
                self.api.metrics.observe_finished("cancelled", self.prompt_tokens, self.completion_tokens,
                                                  time.perf_counter() - self.t0)
        if self._slot:
            self._slot = False
            self.api.gate.release(self.client)


class RaychatAPI:
    """State shared by the routes of one ingress replica."""

    def __init__(self, config: ServeConfig, client, metrics: ServeMetrics | None = None):
        self.config = config
        self.client = client
        self.metrics = metrics or ServeMetrics(config.model_name)
        self.gate = Gate(config.limits)
        self.web_dir = config.resolved_web_dir()
        self.connections = 0
        self._info: dict | None = None
        self._stats: dict[str, tuple[float, dict]] = {}

    # ---- helpers -----------------------------------------------------------------------------------------
    def key_ok(self, candidate: str | None) -> bool:
        key = self.config.api_key
        return key is None or (candidate is not None and hmac.compare_digest(candidate.encode(), key.encode()))

    @staticmethod
    def bearer(headers) -> str | None:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    async def info(self) -> dict | None:
        if self._info is None:
            try:
                self._info = await asyncio.wait_for(self.client.info(), timeout=5.0)
            except Exception:  # noqa: BLE001 - not loaded yet: callers degrade (no max_model_len)
                return None
        return self._info

    def remember_stats(self, stats: dict) -> None:
        self._stats[str(stats.get("replica", "0"))] = (time.monotonic(), stats)

    async def engine_stats(self) -> list[dict]:
        """Fresh stats from every replica (broadcast); falls back to what the last requests reported."""
        try:
            fresh = await asyncio.wait_for(self.client.stats(), timeout=3.0)
            for s in fresh:
                self.remember_stats(s)
            live = {str(s.get("replica", "0")) for s in fresh}
            self._stats = {k: v for k, v in self._stats.items() if k in live}
        except Exception:  # noqa: BLE001 - a scrape must not fail because a replica is busy or restarting
            now = time.monotonic()
            self._stats = {k: v for k, v in self._stats.items() if now - v[0] < 60.0}
        return [v[1] for v in self._stats.values()]

    def check_model(self, model: str | None) -> None:
        if model and model != self.config.model_name:
            raise ApiError(f"The model `{model}` does not exist; this server serves `{self.config.model_name}`",
                           code="model_not_found", status=404, param="model")

    async def read_body(self, request: Request, schema: type[BaseModel]) -> BaseModel:
        limit = self.config.limits.max_frame_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                           code="request_too_large", status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(f"request body exceeds the limit of {limit} bytes", code="request_too_large",
                               status=413)
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise ApiError("request body is empty; expected a JSON object", code="invalid_json")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            raise pydantic_error(e) from None

    def error_response(self, e: ApiError) -> JSONResponse:
        headers = {}
        if e.status in (429, 503):
            headers["Retry-After"] = str(self.config.limits.retry_after_s)
        if e.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _client_addr(conn) -> str:
    return conn.client.host if conn.client else "unknown"


def build_api(config: ServeConfig, client, metrics: ServeMetrics | None = None) -> FastAPI:
    api = RaychatAPI(config, client, metrics)
    app = FastAPI(title="raychat", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.raychat = api

    # ---- errors: always OpenAI-shaped -------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return api.error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
        return api.error_response(ApiError(str(e.detail), code=code, status=e.status_code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {}
        loc = ".".join(str(p) for p in err.get("loc", ()))
        return api.error_response(ApiError(f"{loc}: {err.get('msg', 'invalid request')}", param=loc or None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception):  # a bug, not bad input: still a readable body
        api.metrics.observe_failure("internal")
        return api.error_response(ApiError(f"internal error: {type(e).__name__}", code="internal", status=500))

    # ---- authentication (HTTP; the WebSocket checks in its handler so it can answer with a reason) -------
    @app.middleware("http")
    async def _auth(request: Request, call_next):
        path = request.url.path
        if config.api_key is None or path in OPEN_PATHS:
            return await call_next(request)
        if api.key_ok(api.bearer(request.headers)):
            return await call_next(request)
        is_page = request.method in ("GET", "HEAD") and not path.startswith(("/v1/", "/metrics", "/ready"))
        if is_page:
            qkey = request.query_params.get("api_key")
            if qkey is not None and api.key_ok(qkey):
                resp = RedirectResponse(url=path, status_code=303)
                resp.set_cookie(COOKIE, qkey, httponly=True, samesite="strict", max_age=30 * 86400)
                return resp
            if api.key_ok(request.cookies.get(COOKIE)):
                return await call_next(request)
            if path == "/":
                return HTMLResponse(LOGIN_PAGE, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        api.metrics.observe_failure("unauthorized")
        return api.error_response(ApiError("missing or invalid API key: send `Authorization: Bearer <key>`",
                                           code="invalid_api_key", status=401))

    # ---- health, readiness, metrics, models ---------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        try:
            r = await asyncio.wait_for(client.ready(), timeout=5.0)
        except Exception as e:  # noqa: BLE001
            r = {"ready": False, "errors": [f"{type(e).__name__}: {e}"]}
        if r.get("ready"):
            return {"status": "ready", **{k: v for k, v in r.items() if k != "ready"}}
        body = ApiError("model is loading" if not r.get("errors") else f"model not ready: {r['errors'][0]}",
                        code="not_ready", status=503).body()
        body["status"] = "loading"
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(config.limits.retry_after_s)})

    @app.get("/metrics")
    async def metrics():
        api.metrics.set_engine_stats(await api.engine_stats())
        return Response(api.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        info = await api.info()
        card = ModelCard(id=config.model_name, created=int(time.time()),
                         max_model_len=info["context"] if info else None)
        return ModelList(data=[card]).model_dump()

    # ---- OpenAI chat completions --------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        t0 = time.perf_counter()
        req: ChatCompletionRequest = await api.read_body(request, ChatCompletionRequest)
        api.check_model(req.model)
        ts = TokenStream(api, chat_request_from_openai(req, config.limits), _client_addr(request), t0)
        await ts.open()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(api, ts, _chat_chunks(ts, config.model_name, include_usage))
        try:
            parts = []
            async for ev in ts:
                if ev["type"] == "token":
                    parts.append(ev["text"])
                elif ev["type"] in ("tool_call", "tool_result"):
                    parts.append(render_tool_text(ev["type"], ev["text"]))
        finally:
            await ts.close()
        msg = AssistantMessage(content="".join(parts))
        return ChatCompletionResponse(id=ts.id, model=config.model_name, usage=ts.usage(),
                                      choices=[ChatChoice(message=msg, finish_reason=ts.finish_reason)]).model_dump()

    # ---- OpenAI completions -------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(request: Request):
        t0 = time.perf_counter()
        req: CompletionRequest = await api.read_body(request, CompletionRequest)
        api.check_model(req.model)
        reqs = completion_requests_from_openai(req, config.limits)
        if req.stream:
            if len(reqs) != 1:
                raise ApiError("stream=true takes a single prompt", param="prompt")
            ts = TokenStream(api, reqs[0], _client_addr(request), t0)
            await ts.open()
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(api, ts, _completion_chunks(ts, config.model_name, include_usage))
        choices, usage = [], Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        for i, r in enumerate(reqs):
            ts = TokenStream(api, r, _client_addr(request), t0)
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

    # ---- WebSocket chat -----------------------------------------------------------------------------------
    @app.websocket("/ws/chat")
    async def ws_chat(ws: WebSocket):
        await _ws_session(api, ws)

    # ---- the chat page and its static files (whatever web/ holds) ----------------------------------------
    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    async def static(path: str, request: Request):
        if request.method not in ("GET", "HEAD"):
            raise ApiError(f"no route {request.method} /{path}", code="not_found", status=404)
        root = api.web_dir.resolve()
        target = (root / (path or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            if not path:
                return HTMLResponse(NO_PAGE.format(web=root), status_code=200)
            raise ApiError(f"no route GET /{path}", code="not_found", status=404)
        media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return FileResponse(target, media_type=media, headers={"Cache-Control": "no-cache"})

    return app


def _sse(api: RaychatAPI, ts: TokenStream, chunks: AsyncIterator[dict]) -> StreamingResponse:
    async def body():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
        except ApiError as e:  # mid-stream failure: headers are gone, so the error travels as an event
            yield f"data: {json.dumps(e.body())}\n\n"
        finally:
            await ts.close()
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


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
            yield chunk(DeltaMessage(content=render_tool_text(ev["type"], ev["text"])))
        elif ev["type"] == "done":
            yield chunk(DeltaMessage(), ts.finish_reason)
    if include_usage:
        yield ChatCompletionChunk(id=ts.id, created=created, model=model, choices=[],
                                  usage=ts.usage()).model_dump()


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


# ---- WebSocket session ----------------------------------------------------------------------------------------


def _ws_auth(api: RaychatAPI, ws: WebSocket) -> tuple[bool, str | None]:
    """-> (authorised, subprotocol to select). The subprotocol must be echoed when the client offered one,
    or browsers fail the handshake."""
    offered = list(ws.scope.get("subprotocols") or [])
    chosen = WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else next(
        (p for p in offered if p.startswith(BEARER_PREFIX)), offered[0] if offered else None)
    if api.config.api_key is None:
        return True, chosen
    candidates = [api.bearer(ws.headers), ws.query_params.get("api_key")]
    candidates += [p[len(BEARER_PREFIX):] for p in offered if p.startswith(BEARER_PREFIX)]
    if any(api.key_ok(c) for c in candidates if c):
        return True, chosen
    cookie = ws.cookies.get(COOKIE)
    origin, host = ws.headers.get("origin"), ws.headers.get("host")
    same_origin = origin is not None and host is not None and origin.split("://", 1)[-1] == host
    return (cookie is not None and same_origin and api.key_ok(cookie)), chosen


async def _ws_session(api: RaychatAPI, ws: WebSocket) -> None:
    lim = api.config.limits
    ok, subprotocol = _ws_auth(api, ws)
    await ws.accept(subprotocol=subprotocol)
    if not ok:
        api.metrics.observe_failure("unauthorized")
        await ws.send_json(ApiError("missing or invalid API key", code="invalid_api_key", status=401).ws_message())
        await ws.close(code=1008, reason="unauthorized")
        return
    if api.connections >= lim.max_connections:
        api.metrics.observe_failure("overloaded")
        await ws.send_json(ApiError(f"too many open connections ({lim.max_connections}); retry later",
                                    status=429).ws_message())
        await ws.close(code=1013, reason="overloaded")
        return
    api.connections += 1
    client = _client_addr(ws)
    task: asyncio.Task | None = None
    current: list[TokenStream | None] = [None]
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            t0 = time.perf_counter()
            if msg.get("text") is None:
                await ws.send_json(ApiError("binary frames are not supported: send JSON text frames").ws_message())
                continue
            text = msg["text"]
            nbytes = len(text.encode("utf-8", "surrogatepass"))
            if nbytes > lim.max_frame_bytes:
                await ws.send_json(ApiError(f"frame of {nbytes} bytes exceeds the limit of {lim.max_frame_bytes} "
                                            "bytes").ws_message())
                continue
            try:
                parsed = parse_ws_message(text)
                if not isinstance(parsed, WsChat):  # stop: cancel the running chat, if any
                    if current[0] is not None:
                        current[0].cancel()
                    continue
                if task is not None and not task.done():
                    raise ApiError("a chat is already running on this connection: wait for done or send stop "
                                   "first", code="overloaded", status=429)
                req = chat_request_from_ws(parsed, lim)
            except ApiError as e:
                await ws.send_json(e.ws_message())
                continue
            current[0] = TokenStream(api, req, client, t0)  # set now: a stop in the next frame must find it
            task = asyncio.create_task(_ws_run_chat(ws, current))
    except WebSocketDisconnect:
        pass
    finally:
        api.connections -= 1
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the socket is gone either way
                pass


async def _ws_run_chat(ws: WebSocket, current: list) -> None:
    ts: TokenStream = current[0]
    try:
        try:
            await ts.open()
        except ApiError as e:
            await ws.send_json(e.ws_message())
            return
        await ws.send_json(WsStart(id=ts.id).model_dump())
        try:
            async for ev in ts:
                if ev["type"] == "done":
                    await ws.send_json(WsDone(finish_reason=ts.finish_reason, usage=ts.usage(),
                                              timings=ts.timings()).model_dump())
                else:
                    await ws.send_json({"type": ev["type"], "text": ev["text"]})
        except ApiError as e:
            await ws.send_json(e.ws_message())
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left mid-stream; close() below cancels the engine request
    finally:
        if current[0] is ts:
            current[0] = None
        await ts.close()


LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>raychat: API key</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 28rem; margin: 4rem auto; padding: 0 1rem">
<h1>raychat</h1><p>This server needs an API key.</p>
<form method="get" action="/"><label>API key <input name="api_key" type="password" autofocus required></label>
<button type="submit">Open chat</button></form></body></html>"""

NO_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>raychat</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 4rem auto">
<h1>raychat</h1><p>The chat page was not found ({web}/index.html). The API is up:
<code>/v1/chat/completions</code>, <code>/ws/chat</code>, <code>/v1/models</code>, <code>/metrics</code>.</p>
</body></html>"""

__all__ = ["build_api", "RaychatAPI", "TokenStream", "Gate", "render_tool_text"]
