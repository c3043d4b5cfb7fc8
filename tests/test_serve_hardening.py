"""Regression tests for the serving findings of issue #17, each against the FastAPI app in-process (no Ray):
the capacity leak on CancelledError, WebSocket idle timeout and per-client bounds, /v1 500s that must be 400s,
the open redirect, the Host / Origin / CSRF checks and security headers without a key, and the calculator's
deadline. (Temperature underflow: test_chat_layer.py and below on the real tiny model; SIGTERM:
test_serve_cli.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import pytest
from starlette.requests import ClientDisconnect
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_serve_api import AUTH, KEY, MSGS, FakeClient, make

from raychat.serve.api import RaychatAPI, build_api
from raychat.serve.config import ServeConfig
from raychat.serve.openai_routes import _SSEResponse
from raychat.serve.protocol import Limits
from raychat.serve.stream import TokenStream
from raychat.serve.tool_worker import TIMEOUT_ERROR, BoundedTool

CHAT = {"kind": "chat", "messages": MSGS, "params": {}, "stop": []}


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


# ---- capacity: a client that leaves before the first token -----------------------------------------------------


def test_cancel_while_routing_releases_the_slot_and_cancels_the_engine_stream(tmp_path):
    fake = FakeClient(first_delay=5.0)  # the replica is slow to answer: the client gives up first
    api = RaychatAPI(ServeConfig(run_dir=str(tmp_path), limits=Limits(max_concurrent_requests=4)), fake)

    async def main():
        for _ in range(16):
            task = asyncio.create_task(TokenStream(api, CHAT, "10.0.0.1").open())
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert api.gate.total == 0 and not api.gate.per_client
        assert all(s.cancelled for s in fake.streams) and len(fake.streams) == 16
        fake.first_delay = 0.0  # four fresh requests all get a slot
        streams = [TokenStream(api, CHAT, f"10.0.0.{i}") for i in range(4)]
        for ts in streams:
            await ts.open()
        for ts in streams:
            await ts.close()

    asyncio.run(main())
    text = api.metrics.render().decode()
    assert metric(text, "raychat:request_success_total") == 16 + 4  # 16 cancelled + 4 closed after start


def test_sse_closed_before_its_body_starts_still_frees_the_slot(tmp_path):
    api = RaychatAPI(ServeConfig(run_dir=str(tmp_path)), FakeClient())

    async def main():
        ts = TokenStream(api, CHAT, "c")
        await ts.open()
        assert api.gate.total == 1

        async def send(_msg):
            raise OSError("client gone")  # the very first send (the headers) fails: the body never runs

        async def receive():
            return {"type": "http.disconnect"}

        with pytest.raises(ClientDisconnect):
            await _SSEResponse(ts, ts.__aiter__())({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
        assert api.gate.total == 0

    asyncio.run(main())


# ---- WebSocket bounds ------------------------------------------------------------------------------------------


def test_idle_websocket_is_closed_but_a_running_chat_is_not(tmp_path):
    slow = FakeClient([{"type": "start", "prompt_tokens": 2}] + [{"type": "token", "text": "x", "n": 1}] * 8
                      + [{"type": "done", "finish_reason": "stop", "completion_tokens": 8}], delay=0.08)
    c = make(slow, tmp_path, ws_idle_timeout_s=0.3)
    with c.websocket_connect("/ws/chat", headers=AUTH) as ws:
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))  # ~0.7 s of streaming > the idle timeout
        while ws.receive_json()["type"] != "done":
            pass
        t0 = time.monotonic()
        with pytest.raises(WebSocketDisconnect) as ei:
            ws.receive_json()
        assert ei.value.code == 1001 and 0.2 < time.monotonic() - t0 < 5


def test_per_client_defaults_are_on_and_connections_per_client_are_bounded(tmp_path):
    lim = Limits()
    assert 0 < lim.max_concurrent_per_client < lim.max_concurrent_requests
    assert 0 < lim.max_connections_per_client < lim.max_connections
    wide = Limits(max_concurrent_requests=300, max_connections=40)  # half of the global bounds unless given
    assert (wide.max_concurrent_per_client, wide.max_connections_per_client) == (150, 20)
    assert Limits(max_concurrent_per_client=0).max_concurrent_per_client == 0  # off
    c = make(FakeClient(), tmp_path, max_connections_per_client=2)
    with c.websocket_connect("/ws/chat", headers=AUTH), c.websocket_connect("/ws/chat", headers=AUTH):
        with c.websocket_connect("/ws/chat", headers=AUTH) as ws3:
            err = ws3.receive_json()
            assert err["code"] == "overloaded" and "from this client" in err["message"]
            with pytest.raises(WebSocketDisconnect) as ei:
                ws3.receive_json()
            assert ei.value.code == 1013
    with c.websocket_connect("/ws/chat", headers=AUTH) as ws:  # the slots came back
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        assert ws.receive_json()["type"] == "start"


# ---- /v1 inputs that used to be 500s ---------------------------------------------------------------------------

BAD_JSON = {
    "huge_seed": '{"messages": [{"role": "user", "content": "hi"}], "seed": ' + "9" * 5000 + "}",
    "deep_nesting": '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "lone_surrogate_model": '{"messages": [{"role": "user", "content": "hi"}], "model": "\\ud800"}',
    "lone_surrogate_content": '{"messages": [{"role": "user", "content": "\\udfff"}]}',
}


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_v1_inputs_that_broke_pythons_json_are_400(tmp_path, route, case):
    c = make(FakeClient(), tmp_path)  # TestClient re-raises any server exception: a 500 would fail here
    r = c.post(route, headers=AUTH | {"content-type": "application/json"}, content=BAD_JSON[case])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json" and "not valid JSON" in r.json()["error"]["message"]


# ---- redirects, Host, Origin, CSRF, headers --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["//evil.example/x", "/\\evil.example/x", "///evil.example", "/ok/page"])
def test_key_redirect_never_leaves_the_site(tmp_path, path):
    c = make(FakeClient(), tmp_path)
    r = c.get(f"{path}?api_key={KEY}", follow_redirects=False)
    assert r.status_code == 303
    loc = r.headers["location"]
    assert loc.startswith("/") and not loc.startswith(("//", "/\\")) and urlsplit(loc.replace("\\", "/")).netloc == ""


HOST = {"host": "127.0.0.1:8000"}  # TestClient's WebSocket sends Host: testserver whatever its base_url


def open_client(tmp_path, **cfg) -> TestClient:
    web = tmp_path / "web"
    web.mkdir(exist_ok=True)
    (web / "index.html").write_text("<!doctype html><title>chat</title>")
    config = ServeConfig(run_dir=str(tmp_path), web_dir=str(web), api_key=None, **cfg)
    return TestClient(build_api(config, FakeClient()), base_url="http://127.0.0.1:8000")


def test_without_a_key_cross_origin_websockets_are_refused(tmp_path):
    c = open_client(tmp_path)
    with c.websocket_connect("/ws/chat", headers=HOST | {"origin": "http://evil.example"}) as ws:
        err = ws.receive_json()
        assert err["type"] == "error" and err["code"] == "unauthorized" and "cross-origin" in err["message"]
        with pytest.raises(WebSocketDisconnect) as ei:
            ws.receive_json()
        assert ei.value.code == 1008
    for headers in (HOST | {"origin": "http://127.0.0.1:8000"}, HOST):  # the page itself, and non-browser clients
        with c.websocket_connect("/ws/chat", headers=headers) as ws:
            ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
            assert ws.receive_json()["type"] == "start"
    allowed = open_client(tmp_path, allowed_origins=["https://app.example"])
    with allowed.websocket_connect("/ws/chat", headers=HOST | {"origin": "https://app.example"}) as ws:
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        assert ws.receive_json()["type"] == "start"


def test_without_a_key_csrf_posts_are_refused(tmp_path):
    c = open_client(tmp_path)
    body = json.dumps({"messages": MSGS})
    r = c.post("/v1/chat/completions", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = c.post("/v1/completions", content=json.dumps({"prompt": "x"}),
               headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = c.post("/v1/chat/completions", content=body,
               headers={"content-type": "application/json", "origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_origin"
    r = c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    assert c.post("/v1/chat/completions", content=body).status_code == 200  # no Content-Type: JSON, as FastAPI


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "[::2]:80", "x:y:z"])
def test_without_a_key_a_foreign_host_header_is_refused(tmp_path, host):
    """DNS rebinding: evil.example resolves to 127.0.0.1, the browser sends `Host: evil.example`."""
    c = open_client(tmp_path)
    for r in (c.get("/", headers={"host": host}), c.get("/v1/models", headers={"host": host}),
              c.post("/v1/chat/completions", json={"messages": MSGS}, headers={"host": host})):
        assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_host"
    with c.websocket_connect("/ws/chat", headers={"host": host}) as ws:
        assert ws.receive_json()["code"] == "unauthorized"
    assert c.get("/health", headers={"host": host}).status_code == 200  # probes use the pod IP


def test_host_names_allowed_by_default_and_by_config(tmp_path):
    c = open_client(tmp_path)
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
        assert c.get("/v1/models", headers={"host": host}).status_code == 200, host
    c = open_client(tmp_path, allowed_hosts=["chat.example", "*.corp.example"])
    assert c.get("/v1/models", headers={"host": "chat.example"}).status_code == 200
    assert c.get("/v1/models", headers={"host": "a.corp.example:443"}).status_code == 200
    assert c.get("/v1/models", headers={"host": "localhost"}).status_code == 403
    wide = open_client(tmp_path, host="0.0.0.0")  # exposed on purpose: any name (a key should be set then)
    assert wide.get("/v1/models", headers={"host": "10.1.2.3:8000"}).status_code == 200


def test_serve_deploy_apps_answer_any_host_unless_told(tmp_path):
    """`serve deploy` binds through Serve's http_options (0.0.0.0 in deploy/), so ServeConfig.host says nothing
    about the address: Prometheus scraping head:8000 must not get a 403."""
    from raychat.serve.app import app_config
    from raychat.serve.security import allowed_hosts

    assert allowed_hosts(app_config({"run_dir": str(tmp_path)})) == ("*",)
    assert allowed_hosts(app_config({"run_dir": str(tmp_path), "allowed_hosts": "chat.example"})) == ("chat.example",)


def test_security_headers_are_sent_with_frame_ancestors(tmp_path):
    c = open_client(tmp_path)
    for r in (c.get("/"), c.get("/v1/models"), c.get("/nope")):
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"


# ---- the calculator's deadline -----------------------------------------------------------------------------------


def test_bounded_tool_answers_and_a_runaway_call_is_cut_at_the_deadline():
    tool = BoundedTool(timeout_s=0.5)
    try:
        assert tool("6*7") == "42"
        assert tool("1/0").startswith("Error")
        # a call that would run for minutes: Fraction parses the exponent and builds 10**99999999
        slow = BoundedTool(timeout_s=0.3, target="fractions:Fraction")
        try:
            assert slow("6") == "6"
            t0 = time.monotonic()
            assert slow("1e99999999") == TIMEOUT_ERROR
            assert time.monotonic() - t0 < 2.0 and slow.num_killed == 1
            assert slow("7") == "7"  # a fresh child answers the next call
        finally:
            slow.close()
    finally:
        tool.close()
