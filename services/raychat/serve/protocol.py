"""Every message raychat's server speaks, in one file: the WebSocket chat protocol, the OpenAI-compatible
HTTP schemas (chat/completions, completions, models), the error shape and the request limits.

Why one file: a client author (the web page, a load tester, someone's script) should be able to read the
whole wire contract here, next to the limits that decide which requests are refused. Handlers live in
openai_routes.py and ws_session.py; nothing here touches Ray, the engine or the network.

WebSocket /ws/chat (JSON text frames; several chats in sequence on one socket, one at a time):
    client -> {"type": "chat", "messages": [{"role", "content"}...], "params": {temperature, top_k, top_p,
               max_tokens, seed}}
              {"type": "stop"}                       cancels the running chat (done with "cancelled")
    server -> {"type": "start", "id"}
              {"type": "token", "text"}              a text delta (never splits a UTF-8 character)
              {"type": "tool_call", "text"}          the calculator expression the model wrote
              {"type": "tool_result", "text"}        what the calculator answered (inserted by the engine)
              {"type": "done", "finish_reason": "stop"|"length"|"cancelled", "usage": {...}, "timings": {...}}
              {"type": "error", "code", "message"}   the socket stays open (except for "unauthorized")

Errors over HTTP are OpenAI-shaped: {"error": {"message", "type", "code", "param"}}; 400 for bad input,
401 for a missing/wrong key, 403 for a foreign Host or Origin (security.py), 404 for unknown routes/models,
413 for oversized bodies, 415 for a non-JSON Content-Type on /v1, 429 (Retry-After) when
overloaded, 503 (Retry-After) while the model loads. A context overflow is a 400 with code
"context_length_exceeded" whose message names the context size and the requested size.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_serializer

# ---------------------------------------------------------------------------------------------------------
# Limits and the error type handlers raise


@dataclass(frozen=True)
class Limits:
    """Server-side request limits (all configurable through ServeConfig / `raychat serve` flags).

    Sampling ranges follow OpenAI/vLLM: temperature in [0, max_temperature], top_k in [0, max_top_k]
    (0 = no limit), top_p in (0, 1], max_tokens in [1, context - prompt]. A request without max_tokens gets
    min(default_max_tokens, context - prompt)."""

    max_messages: int = 64                  # messages per request (system + user + assistant)
    max_message_chars: int = 16_000         # characters in one message
    max_total_chars: int = 64_000           # characters over all messages (or a completion prompt)
    max_temperature: float = 2.0
    max_top_k: int = 200
    default_max_tokens: int = 512
    max_stop: int = 4                       # OpenAI `stop` strings per request
    max_frame_bytes: int = 262_144          # one WebSocket frame or one HTTP request body (bytes)
    max_concurrent_requests: int = 128      # generations in flight per ingress replica; beyond -> 429/overloaded
    max_concurrent_per_client: int | None = None  # generations in flight per client IP (0 = off; None = half
    #                                               of max_concurrent_requests: one client cannot take them all)
    max_connections: int = 512              # open WebSockets per ingress replica
    max_connections_per_client: int | None = None  # open WebSockets per client IP (0 = off; None = half)
    ws_idle_timeout_s: float = 120.0        # a WebSocket with no chat running that sends nothing this long is closed
    retry_after_s: int = 1                  # Retry-After seconds on 429/503

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.name.endswith("_per_client"):
                continue  # derived below, once the global bound is known to be valid
            lo = 0 if f.name in ("max_concurrent_per_client", "max_connections_per_client", "max_top_k") else 1
            lo = 0.01 if f.name == "ws_idle_timeout_s" else lo
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < lo:
                raise ValueError(f"limits.{f.name} must be a number >= {lo}, got {v!r}")
        if self.max_concurrent_per_client is None:
            object.__setattr__(self, "max_concurrent_per_client", max(1, self.max_concurrent_requests // 2))
        if self.max_connections_per_client is None:
            object.__setattr__(self, "max_connections_per_client", max(1, self.max_connections // 2))
        if self.max_message_chars > self.max_total_chars:
            raise ValueError(f"limits.max_message_chars ({self.max_message_chars}) exceeds limits.max_total_chars "
                             f"({self.max_total_chars})")

    def to_dict(self) -> dict:
        return asdict(self)


# WebSocket error codes (the "code" of {"type": "error"}) and HTTP status of the same condition
WS_ERROR_CODES = ("bad_request", "context_length_exceeded", "overloaded", "unauthorized", "internal")


class ApiError(Exception):
    """A refused request. `code` is the machine-readable reason; `status` the HTTP status; `ws_code` the
    WebSocket error code it maps to. Raised by validation and handlers, rendered by api.py (HTTP) and
    ws_session.py (WebSocket)."""

    _TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
              404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
              415: "invalid_request_error", 429: "rate_limit_error",
              503: "service_unavailable", 500: "internal_error"}

    def __init__(self, message: str, code: str = "invalid_value", status: int = 400, param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.status, self.param = message, code, status, param

    @property
    def type(self) -> str:
        return self._TYPES.get(self.status, "invalid_request_error")

    @property
    def ws_code(self) -> str:
        if self.code == "context_length_exceeded":
            return "context_length_exceeded"
        return {401: "unauthorized", 403: "unauthorized", 429: "overloaded", 503: "overloaded",
                500: "internal"}.get(self.status, "bad_request")

    def body(self) -> dict:
        return ErrorResponse(error=ErrorInfo(message=self.message, type=self.type, code=self.code,
                                             param=self.param)).model_dump()

    def ws_message(self) -> dict:
        return WsError(code=self.ws_code, message=self.message).model_dump()


def context_length_error(context: int, prompt_tokens: int, max_tokens: int | None) -> ApiError:
    """OpenAI's wording, naming the limit and the requested size."""
    if max_tokens is None:
        msg = (f"This model's maximum context length is {context} tokens. However, your messages resulted in "
               f"{prompt_tokens} tokens, leaving no room for a completion. Please reduce the length of the messages.")
    else:
        msg = (f"This model's maximum context length is {context} tokens. However, you requested "
               f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
               "completion). Please reduce the length of the messages or completion.")
    return ApiError(msg, code="context_length_exceeded", param="messages")


_UNION_TAG = re.compile(r"str|int|float|bool|list\[.*\]|dict\[.*\]")


def pydantic_error(e: ValidationError, skip: int = 0) -> ApiError:
    """First validation error as one readable line: `messages.0.role: Input should be 'system', ...`.
    `skip` drops leading location parts (the tag of a discriminated union)."""
    errs = e.errors(include_url=False)
    # a union (str | list of parts) reports one error per member: the deepest one says what is wrong
    err = max(errs, key=lambda x: len(x.get("loc", ())))
    loc = ".".join(str(p) for p in list(err.get("loc", ()))[skip:] if not _UNION_TAG.fullmatch(str(p)))
    got = err.get("input")
    got_s = "" if err.get("type") == "missing" or isinstance(got, dict | list) else f" (got {got!r:.60})"
    return ApiError(f"{loc or 'request'}: {err.get('msg', 'invalid value')}{got_s}", code="invalid_value",
                    param=loc or None)


# ---------------------------------------------------------------------------------------------------------
# Shared pieces


class ErrorInfo(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ContentPart(BaseModel):
    """OpenAI text part; assistant history may also carry raychat's tool parts (python / python_output)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "python", "python_output"] = "text"
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients may send `name`
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SamplingFields(BaseModel):
    """The sampling knobs both protocols share. None = server default."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------------------------------------------------
# WebSocket messages


class ChatParams(SamplingFields):
    model_config = ConfigDict(extra="forbid")  # a typo'd knob is an error, not silently ignored


class WsChat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["chat"]
    messages: list[ChatMessage]
    params: ChatParams = Field(default_factory=ChatParams)


class WsStop(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["stop"]


WS_CLIENT_MESSAGE = TypeAdapter(Annotated[WsChat | WsStop, Field(discriminator="type")])


class WsStart(BaseModel):
    type: Literal["start"] = "start"
    id: str


class WsToken(BaseModel):
    type: Literal["token"] = "token"
    text: str


class WsToolCall(BaseModel):
    type: Literal["tool_call"] = "tool_call"
    text: str


class WsToolResult(BaseModel):
    type: Literal["tool_result"] = "tool_result"
    text: str


class Timings(BaseModel):
    ttft_ms: float           # chat received -> first token sent
    tokens_per_second: float  # decode speed after the first token (completion_tokens - 1) / (last - first)
    total_ms: float


class WsDone(BaseModel):
    type: Literal["done"] = "done"
    finish_reason: Literal["stop", "length", "cancelled"]
    usage: Usage
    timings: Timings


class WsError(BaseModel):
    type: Literal["error"] = "error"
    code: Literal["bad_request", "context_length_exceeded", "overloaded", "unauthorized", "internal"]
    message: str


def parse_ws_message(text: str) -> WsChat | WsStop:
    """One client frame -> a message, or ApiError(bad_request) naming what is wrong."""
    try:
        return WS_CLIENT_MESSAGE.validate_json(text)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        if err.get("type") == "json_invalid":
            raise ApiError(f"frame is not valid JSON: {err.get('msg')}", code="invalid_json") from None
        if not err.get("loc") or err.get("type") in ("union_tag_not_found", "union_tag_invalid"):
            raise ApiError('expected a JSON object with "type": "chat" or "stop"', code="invalid_value") from None
        raise pydantic_error(e, skip=1) from None  # locations start with the tag ("chat")


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP schemas


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions. Unknown OpenAI fields are ignored; the few that would change the answer
    in ways we cannot honour (n > 1, logprobs, tools, penalties) are refused by `check_unsupported`."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    tools: list[Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    user: str | None = None


class CompletionRequest(SamplingFields):
    """POST /v1/completions: raw text continuation (the prompt gets <|bos|> prepended)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | list[str]
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    logprobs: int | None = None
    echo: bool = False
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    user: str | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    """A streamed delta: unset fields are left out (the final chunk's delta is `{}`), as OpenAI sends it."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "raychat"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------------------------------------------
# Validation against the limits (the engine replica checks the context length, which needs the tokenizer)


def check_sampling(p: SamplingFields, limits: Limits, max_tokens: int | None = None) -> dict:
    """Range-check the sampling knobs; -> the dict the engine deployment receives (None = its default)."""
    out = {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "max_tokens": max_tokens, "seed": p.seed}
    t = p.temperature
    if t is not None and not (math.isfinite(t) and 0.0 <= t <= limits.max_temperature):
        raise ApiError(f"temperature must be in [0, {limits.max_temperature:g}], got {t}", param="temperature")
    if p.top_k is not None and not (0 <= p.top_k <= limits.max_top_k):
        raise ApiError(f"top_k must be in [0, {limits.max_top_k}] (0 = no limit), got {p.top_k}", param="top_k")
    if p.top_p is not None and not (math.isfinite(p.top_p) and 0.0 < p.top_p <= 1.0):
        raise ApiError(f"top_p must be in (0, 1], got {p.top_p}", param="top_p")
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(f"max_tokens must be >= 1, got {max_tokens}", param="max_tokens")
    if p.seed is not None and not (-(2**63) <= p.seed < 2**63):
        raise ApiError(f"seed must fit in 64 bits, got {p.seed}", param="seed")
    return out


def _content_chars(content: str | list[ContentPart]) -> int:
    return len(content) if isinstance(content, str) else sum(len(p.text) for p in content)


def check_messages(messages: list[ChatMessage], limits: Limits) -> list[dict]:
    """Count/size/role-order checks; -> plain dicts for the chat template (system first, then user and
    assistant alternating, ending with user; "developer" is OpenAI's new name for system)."""
    if not messages:
        raise ApiError("messages must contain at least one user message", param="messages")
    if len(messages) > limits.max_messages:
        raise ApiError(f"too many messages: {len(messages)} > limit {limits.max_messages}", param="messages")
    total = 0
    out = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        n = _content_chars(m.content)
        if n > limits.max_message_chars:
            raise ApiError(f"messages.{i}: content has {n} characters > limit {limits.max_message_chars}",
                           param=f"messages.{i}.content")
        total += n
        if role == "system":
            if i != 0:
                raise ApiError(f"messages.{i}: a system message is only allowed first", param=f"messages.{i}.role")
        elif n == 0:
            raise ApiError(f"messages.{i}: empty content", param=f"messages.{i}.content")
        if isinstance(m.content, list) and role != "assistant" and any(p.type != "text" for p in m.content):
            raise ApiError(f"messages.{i}: only text parts are allowed in {role} messages",
                           param=f"messages.{i}.content")
        if role != "system":
            expected = "user" if sum(1 for d in out if d["role"] != "system") % 2 == 0 else "assistant"
            if role != expected:
                raise ApiError(f"messages.{i}: expected role {expected!r} (after an optional system message, roles "
                               f"alternate user/assistant starting with user), got {role!r}",
                               param=f"messages.{i}.role")
        content = m.content if isinstance(m.content, str) else [p.model_dump() for p in m.content]
        out.append({"role": role, "content": content})
    if total > limits.max_total_chars:
        raise ApiError(f"messages have {total} characters in total > limit {limits.max_total_chars}",
                       param="messages")
    if out[-1]["role"] != "user":
        raise ApiError(f"the last message must be from the user, got {out[-1]['role']!r}", param="messages")
    return out


def check_stop(stop: str | list[str] | None, limits: Limits) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > limits.max_stop:
        raise ApiError(f"at most {limits.max_stop} stop strings, got {len(stops)}", param="stop")
    if any(not s for s in stops):
        raise ApiError("stop strings must be non-empty", param="stop")
    return stops


def check_unsupported(req: ChatCompletionRequest | CompletionRequest) -> None:
    if req.n != 1:
        raise ApiError(f"n must be 1 (one completion per request), got {req.n}", param="n")
    if req.logprobs:
        raise ApiError("logprobs are not supported", param="logprobs")
    for name in ("frequency_penalty", "presence_penalty"):
        v = getattr(req, name)
        if v not in (None, 0, 0.0):
            raise ApiError(f"{name} is not supported (must be 0 or absent), got {v}", param=name)
    if isinstance(req, ChatCompletionRequest) and req.tools:
        raise ApiError("tools are not supported: the model calls its built-in calculator on its own", param="tools")
    if isinstance(req, CompletionRequest) and req.echo:
        raise ApiError("echo is not supported", param="echo")


def chat_request_from_ws(msg: WsChat, limits: Limits) -> dict:
    """A validated WebSocket chat -> the request dict the engine deployment runs."""
    return {"kind": "chat", "messages": check_messages(msg.messages, limits),
            "params": check_sampling(msg.params, limits, msg.params.max_tokens), "stop": []}


def chat_request_from_openai(req: ChatCompletionRequest, limits: Limits) -> dict:
    check_unsupported(req)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return {"kind": "chat", "messages": check_messages(req.messages, limits),
            "params": check_sampling(req, limits, max_tokens), "stop": check_stop(req.stop, limits)}


def completion_requests_from_openai(req: CompletionRequest, limits: Limits) -> list[dict]:
    """One engine request per prompt (a list of prompts gives one choice per prompt, as OpenAI does)."""
    check_unsupported(req)
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts or len(prompts) > limits.max_messages:
        raise ApiError(f"prompt must be a string or a list of 1..{limits.max_messages} strings", param="prompt")
    for i, p in enumerate(prompts):
        if not p:
            raise ApiError(f"prompt {i} is empty", param="prompt")
        if len(p) > limits.max_message_chars:
            raise ApiError(f"prompt {i} has {len(p)} characters > limit {limits.max_message_chars}", param="prompt")
    if sum(len(p) for p in prompts) > limits.max_total_chars:
        raise ApiError(f"prompts have more than {limits.max_total_chars} characters in total", param="prompt")
    params = check_sampling(req, limits, req.max_tokens)
    stop = check_stop(req.stop, limits)
    return [{"kind": "completion", "prompt": p, "params": params, "stop": stop} for p in prompts]
