"""Chaos on loopback: a few hundred WebSocket, SSE and plain-HTTP requests against the real app (the tiny
checkpoint, an in-process engine, uvicorn on 127.0.0.1) where clients vanish at random points - before the
first token, mid-stream, right after `stop` - mixed with slow readers and idle sockets. Afterwards nothing
may be left behind: no request in flight at the ingress, every engine slot free, the /metrics counters add
up (successes + failures = requests received, cancellations being successes with finished_reason
"cancelled"), and a fresh request is served normally. Seeded, bounded (about 30 s on 2 busy cores)."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time

import httpx
import pytest
import uvicorn
from conftest import free_port
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from raychat.serve.api import build_api
from raychat.serve.config import ServeConfig
from raychat.serve.generation import ChatService, LocalEngineClient
from raychat.serve.protocol import Limits

N_REQUESTS = 300
CONCURRENCY = 24
MAX_BATCH = 4
MSGS = [{"role": "user", "content": "Tell me about the sea."}]
BEHAVIOURS = ("complete", "vanish_before_first", "vanish_mid", "stop", "vanish_after_stop", "slow_reader")


class RoutedStream:
    """A local stream behind a random routing delay before its first event, as a Serve handle has (picking a
    replica, its queue): the window in which a leaving client cancels the handler inside TokenStream.open."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay, self.first = inner, delay, True

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.first:
            self.first = False
            await asyncio.sleep(self.delay)
        return await self.inner.__anext__()

    def cancel(self):
        self.inner.cancel()


class RoutedClient(LocalEngineClient):
    def __init__(self, service):
        super().__init__(service)
        self.rng = random.Random(7)

    def generate(self, request):
        return RoutedStream(super().generate(request), self.rng.uniform(0.0, 0.05))


def cancel_on_disconnect(app):
    """ASGI wrapper doing what Ray Serve does when an HTTP client goes away: cancel the request's handler
    (uvicorn alone lets it run on). Without it no CancelledError ever reaches the app in-process."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        inbox: asyncio.Queue = asyncio.Queue()
        handler = asyncio.ensure_future(app(scope, inbox.get, send))

        async def pump():
            while True:
                msg = await receive()
                await inbox.put(msg)
                if msg["type"] == "http.disconnect":
                    handler.cancel()
                    return

        pumping = asyncio.ensure_future(pump())
        try:
            await handler
        except asyncio.CancelledError:
            if not handler.cancelled():
                raise
        finally:
            pumping.cancel()

    return wrapped


@pytest.fixture(scope="module")
def server(tiny_run_dir):
    limits = Limits(max_concurrent_requests=64, max_concurrent_per_client=0, max_connections_per_client=0,
                    ws_idle_timeout_s=3.0, default_max_tokens=16)
    cfg = ServeConfig(run_dir=str(tiny_run_dir), stage="sft", max_batch_size=MAX_BATCH, limits=limits,
                      port=free_port())
    svc = ChatService.load(cfg)
    app = build_api(cfg, RoutedClient(svc))
    srv = uvicorn.Server(uvicorn.Config(cancel_on_disconnect(app), host="127.0.0.1", port=cfg.port,
                                        log_level="error", lifespan="off"))
    thread = threading.Thread(target=srv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"127.0.0.1:{cfg.port}", app.state.raychat, svc
    srv.should_exit = True
    thread.join(10)
    svc.shutdown()


async def ws_client(base: str, behaviour: str, rng: random.Random) -> None:
    params = {"max_tokens": rng.randint(4, 24), "temperature": 0.8, "seed": rng.randint(0, 1000)}
    async with connect(f"ws://{base}/ws/chat", open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "chat", "messages": MSGS, "params": params}))
        if behaviour == "vanish_before_first":
            return
        seen = 0
        while True:
            ev = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if ev["type"] in ("done", "error"):
                return
            if ev["type"] == "token":
                seen += 1
                if behaviour == "vanish_mid" and seen >= 2:
                    return
                if behaviour in ("stop", "vanish_after_stop") and seen == 1:
                    await ws.send(json.dumps({"type": "stop"}))
                    if behaviour == "vanish_after_stop":
                        return
                if behaviour == "slow_reader":
                    await asyncio.sleep(0.02)


async def sse_client(http: httpx.AsyncClient, behaviour: str, rng: random.Random) -> None:
    body = {"messages": MSGS, "stream": True, "max_tokens": rng.randint(4, 24), "temperature": 0.8}
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if behaviour == "vanish_before_first":
            return
        seen = 0
        async for line in r.aiter_lines():
            if line.startswith("data: ") and '"content"' in line:
                seen += 1
                if behaviour in ("vanish_mid", "vanish_after_stop", "stop") and seen >= 2:
                    return  # SSE has no stop message: leaving is how an HTTP client stops
                if behaviour == "slow_reader":
                    await asyncio.sleep(0.02)


async def http_client(http: httpx.AsyncClient, behaviour: str, rng: random.Random) -> None:
    body = {"messages": MSGS, "max_tokens": rng.randint(4, 24), "temperature": 0.8}
    if behaviour == "complete" or behaviour == "slow_reader":
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code in (200, 429), r.text
        return
    # leave before the answer: the handler is cancelled while it waits for the engine (routing or decoding)
    with pytest.raises(httpx.TimeoutException):
        await http.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(5.0, read=rng.uniform(0.001, 0.06)))


async def idle_socket(base: str) -> None:
    async with connect(f"ws://{base}/ws/chat", open_timeout=30) as ws:
        with pytest.raises(ConnectionClosed) as ei:
            await asyncio.wait_for(ws.recv(), 30)
        assert ei.value.rcvd is not None and ei.value.rcvd.code == 1001  # closed by the server for idling


async def chaos(base: str) -> dict:
    rng = random.Random(1234)
    sem = asyncio.Semaphore(CONCURRENCY)
    plan = [(rng.choice(("ws", "sse", "http")), rng.choice(BEHAVIOURS), random.Random(i)) for i in range(N_REQUESTS)]
    counts: dict = {}
    async with httpx.AsyncClient(base_url=f"http://{base}", timeout=60) as http:

        async def one(kind, behaviour, r):
            async with sem:
                counts[(kind, behaviour)] = counts.get((kind, behaviour), 0) + 1
                if kind == "ws":
                    await ws_client(base, behaviour, r)
                elif kind == "sse":
                    await sse_client(http, behaviour, r)
                else:
                    await http_client(http, behaviour, r)

        idle = [asyncio.create_task(idle_socket(base)) for _ in range(8)]
        await asyncio.gather(*(one(*p) for p in plan))
        await asyncio.gather(*idle)
    return counts


def scrape(base: str) -> str:
    return httpx.get(f"http://{base}/metrics", timeout=10).text


def total(text: str, name: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + "{"))


@pytest.mark.slow
def test_clients_vanishing_at_random_leave_nothing_behind(server):
    base, api, svc = server
    t0 = time.monotonic()
    counts = asyncio.run(chaos(base))
    assert sum(counts.values()) == N_REQUESTS and len(counts) >= 15  # every kind met most behaviours
    deadline = time.monotonic() + 30
    while api.gate.total or api.connections.total or svc.stats()["running"] or svc.stats()["waiting"]:
        assert time.monotonic() < deadline, (api.gate.total, api.connections.total, svc.stats())
        time.sleep(0.05)
    assert not api.gate.per_client and not api.connections.per_client
    assert svc.engine.stats()["free_slots"] == MAX_BATCH  # every KV-cache slot is free
    text = scrape(base)
    requests = total(text, "raychat:requests_total")
    success, failure = total(text, "raychat:request_success_total"), total(text, "raychat:request_failure_total")
    cancelled = sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                    if ln.startswith("raychat:request_success_total{") and 'finished_reason="cancelled"' in ln)
    assert N_REQUESTS * 0.9 <= requests <= N_REQUESTS  # a client gone before its frame arrived was never a request
    assert success + failure == requests, text
    assert cancelled >= counts.get(("ws", "stop"), 0)  # every stopped chat (at least) ended as a cancellation
    # a fresh request is served normally, over both protocols
    r = httpx.post(f"http://{base}/v1/chat/completions", json={"messages": MSGS, "max_tokens": 5, "temperature": 0},
                   timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    assert r.json()["choices"][0]["finish_reason"] == "length"

    async def fresh_ws():
        async with connect(f"ws://{base}/ws/chat") as ws:
            await ws.send(json.dumps({"type": "chat", "messages": MSGS, "params": {"max_tokens": 3}}))
            evs = [json.loads(await asyncio.wait_for(ws.recv(), 60)) for _ in range(2)]
            while evs[-1]["type"] not in ("done", "error"):
                evs.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return evs

    evs = asyncio.run(fresh_ws())
    assert evs[0]["type"] == "start" and evs[-1]["type"] == "done" and evs[-1]["usage"]["completion_tokens"] == 3
    assert time.monotonic() - t0 < 120


def test_tiny_temperature_is_served_as_greedy(server):
    """temperature=1e-300 passes validation; the reply must be the greedy one, not NaN sampling."""
    base, _, _ = server
    body = {"prompt": "Once upon a time", "max_tokens": 12}
    greedy = httpx.post(f"http://{base}/v1/completions", json=body | {"temperature": 0}, timeout=60).json()
    tiny = httpx.post(f"http://{base}/v1/completions", json=body | {"temperature": 1e-300, "top_k": 0},
                      timeout=60).json()
    assert tiny["choices"][0]["text"] == greedy["choices"][0]["text"] and tiny["usage"] == greedy["usage"]



def test_the_replica_calculator_runs_in_a_child_process_with_a_deadline(server):
    """What the engine forces after <|python_end|> comes from the replica's BoundedTool (tool_worker.py)."""
    _, _, svc = server
    tok, eng = svc.tokenizer, svc.engine
    assert eng.tool_fn is svc.tool and svc.tool.timeout_s == 0.1 and svc.tool.proc.poll() is None
    forced = eng._tool_tokens(tok.encode("6*7"))
    assert tok.decode(forced[1:-1]) == "42"
    assert forced[0] == tok.special_id("<|output_start|>") and forced[-1] == tok.special_id("<|output_end|>")
