"""The Ray Serve app end to end on CPU: one Serve app for the module (tiny random-init checkpoint, API key on),
driven with the `websockets` client, the official `openai` client (stream and not) and raw httpx.

Reference checks: a greedy answer over every protocol equals the engine's own greedy output for the same
prompt (decoded in-process), and the usage counts equal the tokenizer's prompt length.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import websockets
from conftest import free_port

from raychat.serve.metrics import METRIC_NAMES

pytestmark = [pytest.mark.ray, pytest.mark.slow]

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_INFLIGHT = 40
MAX_FRAME = 16_384


@pytest.fixture(scope="module")
def served(ray_session, tiny_run_dir):
    from ray import serve

    from raychat.serve.app import start
    from raychat.serve.config import ServeConfig
    from raychat.serve.protocol import Limits

    serve.shutdown()  # another module's app (other port) must not be reused
    cfg = ServeConfig(run_dir=str(tiny_run_dir), stage="sft", port=free_port(), api_key=KEY, num_cpus=0.5,
                      ingress_cpus=0.25, max_batch_size=4,
                      limits=Limits(max_concurrent_requests=MAX_INFLIGHT, max_messages=8, max_message_chars=2000,
                                    max_total_chars=3000, max_frame_bytes=MAX_FRAME,
                                    max_concurrent_per_client=0))  # every test client is 127.0.0.1
    url = start(cfg, wait_ready_s=180)
    yield url, cfg
    serve.shutdown()


@pytest.fixture(scope="module")
def url(served):
    return served[0]


@pytest.fixture(scope="module")
def reference(tiny_run_dir):
    """Greedy completions straight from the engine, in this process (no Ray, no HTTP)."""
    from raychat.checkpoint import load_model
    from raychat.engine import Engine, SamplingParams

    model, tok, _ = load_model(tiny_run_dir, stage="sft", device="cpu")
    eng = Engine(model, tok, max_batch_size=2)

    def greedy(messages: list[dict], max_tokens: int) -> tuple[int, list[int], str]:
        prompt = tok.render_for_completion({"messages": messages})
        out = eng.generate(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens))[0]
        text = tok.decode([t for t in out if not tok.is_special(t)])
        return len(prompt), out, text

    return greedy


def ws_url(url: str) -> str:
    return url.replace("http", "ws", 1) + "/ws/chat"


async def ws_chat(ws, messages, **params) -> list[dict]:
    await ws.send(json.dumps({"type": "chat", "messages": messages, "params": params}))
    out = []
    while True:
        ev = json.loads(await asyncio.wait_for(ws.recv(), 60))
        out.append(ev)
        if ev["type"] in ("done", "error"):
            return out


def engine_gauges(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
    vals: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("raychat:num_requests_running", "raychat:num_requests_waiting"):
            if line.startswith(name + "{"):
                vals[name] = vals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return vals


def wait_engine_idle(url: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        g = engine_gauges(url)
        if g.get("raychat:num_requests_running", 1) == 0 and g.get("raychat:num_requests_waiting", 1) == 0:
            return g
        assert time.monotonic() < deadline, f"engine still busy after cancel: {g}"
        time.sleep(0.2)


MSGS = [{"role": "user", "content": "What is the capital of France?"}]
LONG = [{"role": "user", "content": "Tell me a long story."}]


# ---- health, readiness, auth, models --------------------------------------------------------------------------


def test_health_is_open_and_everything_else_needs_the_key(url):
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    for path in ("/ready", "/metrics", "/v1/models"):
        r = httpx.get(url + path)
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MSGS},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(f"{url}/ready", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["ready_replicas"] == 1


def test_models_lists_the_served_model_with_its_context(url, served):
    data = httpx.get(f"{url}/v1/models", headers=AUTH).json()
    assert data["object"] == "list"
    (card,) = data["data"]
    assert card["id"] == served[1].model_name == "raychat-sft"
    assert card["max_model_len"] == 128  # the tiny checkpoint's sequence_len


def test_page_cookie_flow_and_static_files(url):
    with httpx.Client(base_url=url) as c:
        r = c.get("/")
        assert r.status_code == 401 and "API key" in r.text  # a form, not a blank error, for a browser
        r = c.get("/", params={"api_key": KEY})
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
        page = c.get("/")  # the cookie now authenticates the page and its assets
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        from raychat.common import REPO_ROOT

        index = REPO_ROOT / "web" / "index.html"
        if index.is_file():
            assert page.text == index.read_text()
        r = c.get("/no-such-file.js")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        r = c.get("/../pyproject.toml")
        assert r.status_code == 404
        # the cookie never authenticates the API
        assert c.get("/v1/models").status_code == 401


# ---- OpenAI API ------------------------------------------------------------------------------------------------


def test_openai_client_non_stream_matches_the_engine(url, reference):
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    resp = client.chat.completions.create(model="raychat-sft", messages=MSGS, max_tokens=24, temperature=0)
    n_prompt, out, text = reference(MSGS, 24)
    assert resp.object == "chat.completion" and resp.model == "raychat-sft"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == text
    assert resp.usage.prompt_tokens == n_prompt
    assert resp.usage.completion_tokens == len(out) + (resp.choices[0].finish_reason == "stop")
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.choices[0].finish_reason in ("stop", "length")


def test_openai_client_stream_matches_non_stream(url, reference):
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    stream = client.chat.completions.create(model="raychat-sft", messages=MSGS, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == reference(MSGS, 24)[2]
    assert len(finish) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == reference(MSGS, 24)[0]
    assert len({c.id for c in chunks}) == 1


def test_sse_wire_format(url):
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers=AUTH, timeout=30,
                      json={"messages": MSGS, "max_tokens": 5, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        assert json.loads(ln[6:])["object"] == "chat.completion.chunk"


def test_completions_endpoint(url, tiny_run_dir):
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    resp = client.completions.create(model="raychat-sft", prompt="The cat sat on", max_tokens=8, temperature=0)
    assert resp.object == "text_completion" and len(resp.choices) == 1
    from raychat.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_run_dir / "tokenizer")
    assert resp.usage.prompt_tokens == len(tok.encode("The cat sat on")) + 1  # + <|bos|>
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="raychat-sft", prompt="The cat sat on", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == resp.choices[0].text
    two = client.completions.create(model="raychat-sft", prompt=["a", "b"], max_tokens=3, temperature=0)
    assert [c.index for c in two.choices] == [0, 1]


def test_context_overflow_is_a_400_naming_both_numbers(url):
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="raychat-sft", messages=MSGS, max_tokens=500)
    err = ei.value.body
    assert ei.value.status_code == 400 and err["code"] == "context_length_exceeded"
    assert "maximum context length is 128 tokens" in err["message"] and "500 in the completion" in err["message"]
    # a prompt that alone fills the context
    big = [{"role": "user", "content": "word " * 390}]
    r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json={"messages": big})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "128" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"", "empty"),
    (json.dumps({"messages": "hi"}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), "messages.0.role"),
    (json.dumps({"messages": [{"role": "user", "content": ""}]}).encode(), "empty content"),
    (json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}).encode(), "expected role 'user'"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}).encode(),
     "alternate"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}).encode(),
     "only allowed first"),
    (json.dumps({"messages": MSGS * 9}).encode(), "too many messages"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 2001}]}).encode(), "2001 characters"),
    (json.dumps({"messages": MSGS, "temperature": 2.5}).encode(), "temperature must be in [0, 2]"),
    (json.dumps({"messages": MSGS, "temperature": "hot"}).encode(), "temperature"),
    (json.dumps({"messages": MSGS, "top_k": 201}).encode(), "top_k must be in [0, 200]"),
    (json.dumps({"messages": MSGS, "top_p": 0}).encode(), "top_p must be in (0, 1]"),
    (json.dumps({"messages": MSGS, "max_tokens": 0}).encode(), "max_tokens must be >= 1"),
    (json.dumps({"messages": MSGS, "n": 2}).encode(), "n must be 1"),
    (json.dumps({"messages": MSGS, "model": "gpt-4"}).encode(), "does not exist"),
])
def test_bad_requests_are_openai_shaped_never_500(url, body, needle):
    r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, content=body)
    assert r.status_code in (400, 404), (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"}
    assert needle in err["message"], err["message"]


def test_oversized_body_and_unknown_routes(url):
    r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, content=b"x" * (MAX_FRAME + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(f"{url}/v1/nothing", headers=AUTH, json={})
    assert r.status_code == 404 and "error" in r.json()


# ---- WebSocket -------------------------------------------------------------------------------------------------


def test_ws_chat_matches_the_engine_and_reports_usage_and_timings(url, reference):
    async def go():
        async with websockets.connect(ws_url(url), subprotocols=["raychat.v1", f"raychat.bearer.{KEY}"]) as ws:
            assert ws.subprotocol == "raychat.v1"
            first = await ws_chat(ws, MSGS, max_tokens=24, temperature=0)
            second = await ws_chat(ws, MSGS, max_tokens=24, temperature=0)  # several chats on one socket
            return first, second

    first, second = asyncio.run(go())
    n_prompt, out, text = reference(MSGS, 24)
    assert first[0]["type"] == "start" and first[0]["id"]
    assert "".join(e["text"] for e in first if e["type"] == "token") == text
    done = first[-1]
    assert done["type"] == "done" and done["finish_reason"] in ("stop", "length")
    assert done["usage"]["prompt_tokens"] == n_prompt
    assert done["usage"]["completion_tokens"] == len(out) + (done["finish_reason"] == "stop")
    t = done["timings"]
    assert 0 < t["ttft_ms"] <= t["total_ms"] and t["tokens_per_second"] > 0
    assert [e["text"] for e in second if e["type"] == "token"] == [e["text"] for e in first if e["type"] == "token"]


def test_ws_auth_variants(url):
    async def attempt(**kw):
        async with websockets.connect(ws_url(url) + kw.pop("query", ""), **kw) as ws:
            return await ws_chat(ws, MSGS, max_tokens=2)

    assert asyncio.run(attempt(additional_headers=AUTH))[-1]["type"] == "done"
    assert asyncio.run(attempt(query=f"?api_key={KEY}"))[-1]["type"] == "done"
    # a browser offering only the bearer protocol gets it echoed back (or the handshake fails)
    assert asyncio.run(attempt(subprotocols=[f"raychat.bearer.{KEY}"]))[-1]["type"] == "done"

    async def wrong():
        async with websockets.connect(ws_url(url), subprotocols=["raychat.bearer.nope"]) as ws:
            ev = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await ws.recv()
            return ev, ei.value.rcvd.code

    ev, code = asyncio.run(wrong())
    assert ev == {"type": "error", "code": "unauthorized", "message": "missing or invalid API key"}
    assert code == 1008


def test_ws_bad_frames_get_typed_errors_and_the_socket_stays_usable(url):
    frames = [
        (b"\x00\x01binary", "binary frames"),
        ("{nope", "not valid JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"type": "dance"}), "expected a JSON object"),
        (json.dumps({"type": "chat"}), "messages"),
        (json.dumps({"type": "chat", "messages": MSGS, "params": {"temperature": 9}}), "temperature"),
        (json.dumps({"type": "chat", "messages": MSGS, "params": {"tempreature": 1}}), "tempreature"),
        (json.dumps({"type": "chat", "messages": MSGS, "params": {"max_tokens": "many"}}), "max_tokens"),
        (json.dumps({"type": "chat", "messages": [{"role": "bot", "content": "x"}]}), "role"),
        (json.dumps({"type": "chat", "messages": [{"role": "user", "content": "x" * 2001}]}), "2001 characters"),
        ("x" * (MAX_FRAME + 1), f"exceeds the limit of {MAX_FRAME} bytes"),
    ]

    async def go():
        async with websockets.connect(ws_url(url), additional_headers=AUTH) as ws:
            replies = []
            for frame, _ in frames:
                await ws.send(frame)
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            overflow = await ws_chat(ws, MSGS, max_tokens=1000)
            ok = await ws_chat(ws, MSGS, max_tokens=3)
            return replies, overflow, ok

    replies, overflow, ok = asyncio.run(go())
    for (_, needle), rep in zip(frames, replies):
        assert rep["type"] == "error" and rep["code"] == "bad_request", rep
        assert needle in rep["message"], (needle, rep["message"])
    assert overflow == [{"type": "error", "code": "context_length_exceeded", "message": overflow[0]["message"]}]
    assert "128" in overflow[0]["message"] and "1000" in overflow[0]["message"]
    assert ok[-1]["type"] == "done"


def metric_sum(url: str, prefix: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))


def test_ws_stop_and_second_chat_and_disconnect_cancel_in_the_engine(url):
    cancelled = 'raychat:request_success_total{finished_reason="cancelled"'
    before = metric_sum(url, cancelled)

    async def stop_case():
        async with websockets.connect(ws_url(url), additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"type": "chat", "messages": LONG, "params": {"max_tokens": 110,
                                                                                  "temperature": 0}}))
            await ws.send(json.dumps({"type": "chat", "messages": LONG}))  # one chat at a time per socket
            await ws.send(json.dumps({"type": "stop"}))  # applies even before the first token
            evs = []
            while not evs or evs[-1]["type"] != "done":
                evs.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            after = await ws_chat(ws, MSGS, max_tokens=2)
            return evs, after

    evs, after = asyncio.run(stop_case())
    assert {e["type"] for e in evs} <= {"start", "token", "error", "done"}, evs
    (busy,) = [e for e in evs if e["type"] == "error"]
    assert busy["code"] == "overloaded" and "already running" in busy["message"]
    done = evs[-1]
    assert done["finish_reason"] == "cancelled" and done["usage"]["completion_tokens"] < 110
    assert after[-1]["type"] == "done"
    wait_engine_idle(url)

    async def disconnect_case():
        async with websockets.connect(ws_url(url), additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"type": "chat", "messages": LONG, "params": {"max_tokens": 110,
                                                                                  "temperature": 0}}))
            while json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] != "start":
                pass
        # socket closed mid-generation

    asyncio.run(disconnect_case())
    wait_engine_idle(url)
    # the ingress counted both as cancelled (the engine side is the idle check above)
    deadline = time.monotonic() + 30
    while metric_sum(url, cancelled) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric_sum(url, cancelled) >= before + 2


def test_sse_client_disconnect_cancels_in_the_engine(url):
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers=AUTH, timeout=30,
                      json={"messages": LONG, "max_tokens": 110, "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 3:
                break
    # the request was cut after a few chunks of 110 tokens: the engine must drop it (it would otherwise keep
    # generating for seconds), so running and waiting both return to zero
    g = wait_engine_idle(url)
    assert g["raychat:num_requests_running"] == 0 and g["raychat:num_requests_waiting"] == 0


def test_clients_leaving_before_the_first_token_leak_no_capacity(url):
    """Issue #17's reproduction: clients that close the connection right after sending a streaming request
    cancel the ingress handler inside TokenStream.open; every slot must come back (before the fix, each such
    client kept one until restart, and later requests got 429)."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"messages": LONG, "max_tokens": 110, "stream": True}).encode()
    raw = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {KEY}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    for _ in range(MAX_INFLIGHT):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(raw)  # and gone
    wait_engine_idle(url)

    async def fresh():
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*(c.post(f"{url}/v1/chat/completions", headers=AUTH,
                                                 json={"messages": MSGS, "max_tokens": 2})
                                          for _ in range(MAX_INFLIGHT)))

    codes = [r.status_code for r in asyncio.run(fresh())]
    assert codes == [200] * MAX_INFLIGHT, codes


def test_global_bound_gives_429_with_retry_after(url):
    async def go():
        # max_queue=None: the test never reads these sockets, and a paused reader would stall the close handshake
        socks = [await websockets.connect(ws_url(url), additional_headers=AUTH, max_queue=None)
                 for _ in range(MAX_INFLIGHT)]
        try:
            for ws in socks:
                await ws.send(json.dumps({"type": "chat", "messages": LONG, "params": {"max_tokens": 110}}))
            await asyncio.sleep(0.3)
            async with httpx.AsyncClient(timeout=30) as c, \
                    websockets.connect(ws_url(url), additional_headers=AUTH, max_queue=None) as extra:
                await extra.send(json.dumps({"type": "chat", "messages": MSGS, "params": {"max_tokens": 2}}))
                posts = [asyncio.create_task(c.post(f"{url}/v1/chat/completions", headers=AUTH,
                                                    json={"messages": MSGS, "max_tokens": 2})) for _ in range(12)]
                done, pending = await asyncio.wait(posts, timeout=3.0)  # refusals are immediate
                for t in pending:  # admitted ones may queue behind the 40 chats: leave (cancels them)
                    t.cancel()
                rs = [t.result() for t in done]
                # admitted (a chat ended meanwhile: with 4 tokens per stream item they end sooner), its start
                # waits until the replica takes it, behind the queued chats
                ws_reply = json.loads(await asyncio.wait_for(extra.recv(), 30))
            return rs, ws_reply
        finally:
            await asyncio.gather(*(ws.close() for ws in socks))

    rs, ws_reply = asyncio.run(go())
    limited = [r for r in rs if r.status_code == 429]
    assert limited, [r.status_code for r in rs]
    assert all(r.status_code in (200, 429) for r in rs)
    assert limited[0].headers["retry-after"] == "1"
    assert limited[0].json()["error"]["type"] == "rate_limit_error"
    assert limited[0].json()["error"]["code"] == "overloaded"
    assert ws_reply["type"] in ("start", "error")  # a slot may have freed up meanwhile
    if ws_reply["type"] == "error":
        assert ws_reply["code"] == "overloaded"
    wait_engine_idle(url)


# ---- metrics and load ------------------------------------------------------------------------------------------


def test_metrics_scrape_has_every_name_and_counts_requests(url):
    before = httpx.get(f"{url}/metrics", headers=AUTH).text

    def sample(text: str, name: str) -> float:
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + "{"))

    r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json={"messages": MSGS, "max_tokens": 6})
    usage = r.json()["usage"]
    after = httpx.get(f"{url}/metrics", headers=AUTH)
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert sample(text, "raychat:time_to_first_token_seconds_count") == \
        sample(before, "raychat:time_to_first_token_seconds_count") + 1
    assert sample(text, "raychat:prompt_tokens_total") - sample(before, "raychat:prompt_tokens_total") == \
        usage["prompt_tokens"]
    assert sample(text, "raychat:generation_tokens_total") - sample(before, "raychat:generation_tokens_total") == \
        usage["completion_tokens"]
    assert sample(text, "raychat:request_success_total") == sample(before, "raychat:request_success_total") + 1
    assert 'raychat:num_requests_running{model_name="raychat-sft",replica="' in text
    assert "raychat:kv_cache_usage_perc{" in text


def test_load_test_32_concurrent_websocket_clients_zero_errors(url):
    from raychat.serve.loadtest import format_results, run_loadtest

    res = asyncio.run(run_loadtest(url, concurrency=32, num_chats=64, max_tokens=12, api_key=KEY))
    print(format_results(res))
    assert res["completed"] == 64 and res["failed"] == 0, res["errors"]
    assert res["total_output_tokens"] > 0 and res["output_throughput"] > 0
    for key in ("ttft", "tpot", "itl", "e2el"):
        assert 0 < res[f"median_{key}_ms"] <= res[f"p99_{key}_ms"]
    assert res["mean_ttft_ms"] <= res["mean_e2el_ms"]
