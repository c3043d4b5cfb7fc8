"""The FastAPI app of raychat.serve.api in-process (no Ray): failure paths that are hard to provoke on a live
cluster (loading, back-pressure, a replica dying mid-stream, tool calls), per-client and connection limits,
and stop strings on the real tiny checkpoint checked against its full greedy output."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from raychat.serve.api import build_api
from raychat.serve.config import ServeConfig
from raychat.serve.generation import StreamCancelled
from raychat.serve.protocol import Limits

KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}
MSGS = [{"role": "user", "content": "hi"}]


class BackPressureError(Exception):
    """Named like Serve's: the ingress maps it by name (it must not import Serve internals)."""


class FakeStream:
    def __init__(self, events, delay: float, fail_after: int | None, first_exc: Exception | None,
                 first_delay: float = 0.0):
        self.events, self.delay, self.fail_after, self.first_exc = list(events), delay, fail_after, first_exc
        self.first_delay = first_delay
        self.i, self.cancelled = 0, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.first_exc is not None:
            raise self.first_exc
        if self.i and self.delay:
            await asyncio.sleep(self.delay)
        if not self.i and self.first_delay:  # routing to a busy replica
            await asyncio.sleep(self.first_delay)
        if self.cancelled:
            raise StreamCancelled("cancelled")
        if self.fail_after is not None and self.i == self.fail_after:
            raise RuntimeError("replica died")
        if self.i >= len(self.events):
            raise StopAsyncIteration
        self.i += 1
        return self.events[self.i - 1]

    def cancel(self):
        self.cancelled = True


class FakeClient:
    """Scripted engine client: `script` is the event list every request gets."""

    def __init__(self, script=None, *, ready=True, delay=0.0, fail_after=None, first_exc=None, first_delay=0.0):
        self.script = script or [
            {"type": "start", "prompt_tokens": 5},
            {"type": "token", "text": "The answer is ", "n": 3},
            {"type": "tool_call", "text": "6*7", "n": 5},
            {"type": "tool_result", "text": "42", "n": 4},
            {"type": "token", "text": ".", "n": 1},
            {"type": "done", "finish_reason": "stop", "completion_tokens": 14, "n": 1,
             "stats": {"replica": "r0", "running": 0, "waiting": 0, "kv_cache_usage": 0.0}}]
        self.is_ready, self.delay, self.fail_after, self.first_exc = ready, delay, fail_after, first_exc
        self.first_delay = first_delay
        self.requests, self.streams = [], []

    def generate(self, request):
        self.requests.append(request)
        s = FakeStream(self.script, self.delay, self.fail_after, self.first_exc, self.first_delay)
        self.streams.append(s)
        return s

    async def stats(self):
        return [{"replica": "r0", "running": 3, "waiting": 2, "kv_cache_usage": 0.125}]

    async def ready(self):
        return {"ready": self.is_ready, "replicas": 1, "ready_replicas": int(self.is_ready), "errors": []}

    async def info(self):
        if not self.is_ready:
            raise RuntimeError("loading")
        return {"context": 64}


def make(client, tmp_path, api_key=KEY, **limits) -> TestClient:
    web = tmp_path / "web"
    web.mkdir(exist_ok=True)
    (web / "index.html").write_text("<!doctype html><title>chat</title>")
    (web / "app.js").write_text("console.log(1)")
    cfg = ServeConfig(run_dir=str(tmp_path), api_key=api_key, web_dir=str(web), limits=Limits(**limits),
                      allowed_hosts=["testserver"])  # TestClient's Host
    return TestClient(build_api(cfg, client))


def test_tool_calls_are_streamed_as_typed_messages_and_inline_in_openai_content(tmp_path):
    fake = FakeClient()
    c = make(fake, tmp_path)
    r = c.post("/v1/chat/completions", headers=AUTH, json={"messages": MSGS})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "The answer is <<6*7=42>>."
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 14, "total_tokens": 19}
    with c.websocket_connect("/ws/chat", headers=AUTH) as ws:
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        evs = [ws.receive_json() for _ in range(6)]
    assert [e["type"] for e in evs] == ["start", "token", "tool_call", "tool_result", "token", "done"]
    assert evs[2]["text"] == "6*7" and evs[3]["text"] == "42"
    assert evs[-1]["usage"]["completion_tokens"] == 14 and evs[-1]["finish_reason"] == "stop"
    metrics = c.get("/metrics", headers=AUTH).text
    assert 'raychat:tool_calls_total{model_name="raychat-sft"} 2.0' in metrics
    assert 'raychat:num_requests_waiting{model_name="raychat-sft",replica="r0"} 2.0' in metrics
    assert fake.requests[0] == {"kind": "chat", "messages": MSGS, "stop": [], "params": {
        "temperature": None, "top_k": None, "top_p": None, "max_tokens": None, "seed": None}}


def test_not_ready_is_503_with_retry_after(tmp_path):
    loading = [{"type": "error", "code": "not_ready", "message": "model is loading; retry shortly", "status": 503}]
    c = make(FakeClient(loading, ready=False), tmp_path)
    r = c.get("/ready", headers=AUTH)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "not_ready"
    r = c.post("/v1/chat/completions", headers=AUTH, json={"messages": MSGS})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "service_unavailable"
    assert c.get("/v1/models", headers=AUTH).json()["data"][0]["max_model_len"] is None
    assert c.get("/health").status_code == 200
    with c.websocket_connect("/ws/chat", headers=AUTH) as ws:
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        assert ws.receive_json() == {"type": "error", "code": "overloaded",
                                     "message": "model is loading; retry shortly"}


def test_back_pressure_is_429_and_a_dead_replica_503_never_500(tmp_path):
    c = make(FakeClient(first_exc=BackPressureError("queue full")), tmp_path)
    r = c.post("/v1/chat/completions", headers=AUTH, json={"messages": MSGS})
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
    c = make(FakeClient(first_exc=ConnectionError("actor died")), tmp_path)
    r = c.post("/v1/chat/completions", headers=AUTH, json={"messages": MSGS})
    assert r.status_code == 503 and "engine unavailable" in r.json()["error"]["message"]
    # dying mid-stream: JSON gets a 503, SSE an error event before [DONE], the WebSocket an error message
    c = make(FakeClient(fail_after=2), tmp_path)
    assert c.post("/v1/chat/completions", headers=AUTH, json={"messages": MSGS}).status_code == 503
    lines = [ln for ln in c.post("/v1/chat/completions", headers=AUTH,
                                 json={"messages": MSGS, "stream": True}).text.splitlines() if ln]
    assert json.loads(lines[-2][6:])["error"]["code"] == "unavailable" and lines[-1] == "data: [DONE]"
    with c.websocket_connect("/ws/chat", headers=AUTH) as ws:
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        evs = [ws.receive_json() for _ in range(3)]
        assert evs[-1] == {"type": "error", "code": "overloaded", "message": evs[-1]["message"]}
        ws.send_text(json.dumps({"type": "stop"}))  # the socket is still usable


def test_per_client_limit_and_connection_limit(tmp_path):
    slow = FakeClient(delay=0.05)
    c = make(slow, tmp_path, max_concurrent_per_client=1, max_connections=1)
    with c.websocket_connect("/ws/chat", headers=AUTH) as ws:
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        assert ws.receive_json()["type"] == "start"  # holds this client's only slot for ~0.25 s
        r = c.post("/v1/chat/completions", headers=AUTH, json={"messages": MSGS})
        assert r.status_code == 429 and "too many concurrent requests from this client" in r.json()["error"]["message"]
        with c.websocket_connect("/ws/chat", headers=AUTH) as ws2:  # over max_connections
            assert ws2.receive_json()["code"] == "overloaded"
            with pytest.raises(WebSocketDisconnect) as ei:
                ws2.receive_json()
            assert ei.value.code == 1013
        while ws.receive_json()["type"] != "done":
            pass
    assert c.post("/v1/chat/completions", headers=AUTH, json={"messages": MSGS}).status_code == 200


def test_stop_message_cancels_the_stream(tmp_path):
    slow = FakeClient([{"type": "start", "prompt_tokens": 2}] + [{"type": "token", "text": "x", "n": 1}] * 200,
                      delay=0.01)
    c = make(slow, tmp_path)
    with c.websocket_connect("/ws/chat", headers=AUTH) as ws:
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        assert ws.receive_json()["type"] == "start"
        assert ws.receive_json()["type"] == "token"
        ws.send_text(json.dumps({"type": "stop"}))
        while (ev := ws.receive_json())["type"] != "done":
            pass
    assert ev["finish_reason"] == "cancelled" and ev["usage"]["completion_tokens"] < 200
    assert slow.streams[0].cancelled


def test_stop_right_after_chat_cancels_before_the_first_token(tmp_path):
    routed_slowly = FakeClient(first_delay=0.3)
    c = make(routed_slowly, tmp_path)
    with c.websocket_connect("/ws/chat", headers=AUTH) as ws:
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        ws.send_text(json.dumps({"type": "stop"}))
        evs = [ws.receive_json(), ws.receive_json()]
        assert [e["type"] for e in evs] == ["start", "done"]
        assert evs[1]["finish_reason"] == "cancelled" and evs[1]["usage"]["completion_tokens"] == 0
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))  # the next chat runs normally
        while (ev := ws.receive_json())["type"] != "done":
            pass
        assert ev["finish_reason"] == "stop"
    assert routed_slowly.streams[0].cancelled and not routed_slowly.streams[1].cancelled


def test_page_auth_cookie_and_websocket_origin_check(tmp_path):
    c = make(FakeClient(), tmp_path)
    assert c.get("/").status_code == 401
    assert c.get("/app.js").status_code == 401
    r = c.get("/?api_key=wrong", follow_redirects=False)
    assert r.status_code == 401
    r = c.get(f"/?api_key={KEY}", follow_redirects=False)
    assert r.status_code == 303 and "raychat_api_key" in r.headers["set-cookie"]
    assert c.get("/").text.startswith("<!doctype html>")
    assert c.get("/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert c.get("/v1/models").status_code == 401  # cookies never open the API
    # the page's WebSocket may ride on the cookie, but only from the same origin (no cross-site hijacking)
    with c.websocket_connect("/ws/chat", headers={"origin": "http://testserver"}) as ws:
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        assert ws.receive_json()["type"] == "start"
    with c.websocket_connect("/ws/chat", headers={"origin": "http://evil.example"}) as ws:
        assert ws.receive_json()["code"] == "unauthorized"
    open_c = make(FakeClient(), tmp_path, api_key=None)
    assert open_c.get("/").status_code == 200 and open_c.get("/v1/models").status_code == 200


@pytest.fixture(scope="module")
def local_service(tiny_run_dir):
    from raychat.serve.generation import ChatService

    svc = ChatService.load(ServeConfig(run_dir=str(tiny_run_dir), stage="sft", max_batch_size=2))
    yield svc
    svc.shutdown()


def test_stop_strings_cut_the_greedy_text_at_the_first_match(local_service, tmp_path):
    from raychat.serve.generation import LocalEngineClient

    c = make(LocalEngineClient(local_service), tmp_path)
    base = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}
    full = c.post("/v1/completions", headers=AUTH, json=base).json()["choices"][0]
    assert full["finish_reason"] in ("length", "stop") and len(full["text"]) > 8
    stop = full["text"][5:7]
    cut = c.post("/v1/completions", headers=AUTH, json=base | {"stop": [stop]}).json()["choices"][0]
    assert cut["text"] == full["text"][:full["text"].find(stop)]
    assert cut["finish_reason"] == "stop"
    # the engine request really ended (the stop string cancelled it; the engine thread applies it between steps)
    deadline = time.monotonic() + 30
    while local_service.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local_service.stats()["running"] == 0
