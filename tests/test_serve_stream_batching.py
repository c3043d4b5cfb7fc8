"""The replica -> ingress stream carries lists of events (ChatService.generate_chunks, `stream_interval`
tokens per item after the first): the grouping itself, that clients see the same frames, SSE chunks, usage
and timings fields as with one item per token, and that the ingress's inter-token-latency metric reads the
engine steps' times, not the items' arrival."""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from raychat.serve.api import build_api
from raychat.serve.config import ServeConfig
from raychat.serve.generation import ChatService, LocalEngineClient, Unbatched
from raychat.serve.protocol import Limits

KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _events(n_tokens: int):
    evs = [{"type": "start", "prompt_tokens": 3, "max_tokens": n_tokens}]
    evs += [{"type": "token", "text": f"w{i}", "n": 1, "t": float(i)} for i in range(n_tokens)]
    evs.append({"type": "done", "finish_reason": "length", "prompt_tokens": 3, "completion_tokens": n_tokens,
                "n": 0, "stats": {}})
    return evs


class _Source:
    """A stand-in for ChatService.generate: scripted events, records whether it was closed."""

    def __init__(self, events):
        self.events, self.closed = events, False

    async def generate(self, request):
        try:
            for ev in self.events:
                yield ev
        finally:
            self.closed = True


def _chunks(events, interval: int, take: int | None = None):
    src = _Source(events)
    svc = SimpleNamespace(generate=src.generate, stream_interval=interval)

    async def run():
        out, gen = [], ChatService.generate_chunks(svc, {})
        async for c in gen:
            out.append(c)
            if take is not None and len(out) == take:
                await gen.aclose()
                break
        return out

    return asyncio.run(run()), src


def test_first_token_alone_then_interval_tokens_per_item_and_the_end_flushed():
    evs = _events(10)
    chunks, _ = _chunks(evs, interval=4)
    kinds = [[e["type"] for e in c] for c in chunks]
    # start; first token at once; 4 + 4 tokens; the last token travels with done (no wait at the end)
    assert kinds == [["start"], ["token"], ["token"] * 4, ["token"] * 4, ["token", "done"]]
    assert [e for c in chunks for e in c] == evs  # nothing lost, nothing reordered
    one, _ = _chunks(evs, interval=1)
    assert [len(c) for c in one] == [1] * len(evs)


def test_a_tool_event_counts_its_tokens_and_closing_cancels_the_source():
    evs = [{"type": "start", "prompt_tokens": 3}, {"type": "token", "text": "a", "n": 1, "t": 0.0},
           {"type": "tool_call", "text": "6*7", "n": 5, "t": 1.0}, {"type": "token", "text": "b", "n": 1, "t": 2.0},
           {"type": "token", "text": "c", "n": 1, "t": 3.0}]
    chunks, _ = _chunks(evs + [{"type": "done", "n": 0}], interval=4)
    assert [[e["type"] for e in c] for c in chunks] == [["start"], ["token"], ["tool_call"],
                                                         ["token", "token", "done"]]
    chunks, src = _chunks(evs, interval=4, take=2)
    assert len(chunks) == 2 and src.closed  # the client left: generate() is closed (the engine request ends)


def test_unbatched_yields_single_events_and_passes_cancel_through():
    class Chunks:
        def __init__(self):
            self.items, self.cancelled = [[1], [2, 3], [4]], False

        async def __anext__(self):
            if not self.items:
                raise StopAsyncIteration
            return self.items.pop(0)

        def cancel(self):
            self.cancelled = True

    async def run():
        u = Unbatched(inner := Chunks())
        got = [x async for x in u]
        u.cancel()
        return got, inner.cancelled

    assert asyncio.run(run()) == ([1, 2, 3, 4], True)


class _TimedClient:
    """Every event of the reply arrives in one item, at once; their "t" says the steps were 50 ms apart."""

    def __init__(self, events):
        self.events = events

    def generate(self, request):
        events = self.events

        class One:
            def __init__(self):
                self.sent = False

            async def __anext__(self):
                if self.sent:
                    raise StopAsyncIteration
                self.sent = True
                return list(events)

            def cancel(self):
                pass

        return Unbatched(One())

    async def stats(self):
        return []

    async def ready(self):
        return {"ready": True, "replicas": 1, "ready_replicas": 1, "errors": []}

    async def info(self):
        return {"context": 64}


def _make(client, tmp_path) -> TestClient:
    cfg = ServeConfig(run_dir=str(tmp_path), api_key=KEY, limits=Limits(), allowed_hosts=["testserver"])
    return TestClient(build_api(cfg, client))


def test_itl_metric_uses_the_engine_steps_times_not_the_arrival(tmp_path):
    evs = _events(5)
    for i, e in enumerate(evs[1:-1]):
        e["t"] = 100.0 + 0.05 * i
    c = _make(_TimedClient(evs), tmp_path)
    r = c.post("/v1/chat/completions", headers=AUTH, json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "w0w1w2w3w4"
    metrics = c.get("/metrics", headers=AUTH).text
    count = float(re.search(r'raychat:inter_token_latency_seconds_count\{[^}]*\} (\S+)', metrics).group(1))
    total = float(re.search(r'raychat:inter_token_latency_seconds_sum\{[^}]*\} (\S+)', metrics).group(1))
    assert count == 4 and total == pytest.approx(0.2, abs=1e-9)  # 4 gaps of 50 ms; the arrival gaps are ~0


# ---- the real tiny checkpoint: what clients get is the same for every stream_interval ---------------------------
@pytest.fixture(scope="module")
def service(tiny_run_dir):
    svc = ChatService.load(ServeConfig(run_dir=str(tiny_run_dir), stage="sft", max_batch_size=2))
    yield svc
    svc.shutdown()


def _client_view(service, tmp_path, interval: int) -> dict:
    service.stream_interval = interval
    c = _make(LocalEngineClient(service), tmp_path)
    msgs = [{"role": "user", "content": "Tell me a story"}]
    with c.websocket_connect("/ws/chat", headers=AUTH) as ws:
        ws.send_text(json.dumps({"type": "chat", "messages": msgs, "params": {"max_tokens": 24, "temperature": 0}}))
        frames = [ws.receive_json()]
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(ws.receive_json())
    for f in frames:
        f.pop("id", None)
        if "timings" in f:
            f["timings"] = sorted(f["timings"])  # the fields, not their values (times differ run to run)
    body = {"messages": msgs, "max_tokens": 24, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    sse = []
    for line in c.post("/v1/chat/completions", headers=AUTH, json=body).text.splitlines():
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])
            chunk.pop("id"), chunk.pop("created")
            sse.append(chunk)
    comp = c.post("/v1/completions", headers=AUTH, json={"prompt": "Once upon", "max_tokens": 16,
                                                          "temperature": 0, "stream": True}).text
    comp_chunks = [json.loads(x[6:])["choices"] for x in comp.splitlines() if x.startswith("data: {")]
    return {"ws": frames, "sse": sse, "completions": comp_chunks}


def test_clients_get_the_same_frames_chunks_and_usage_with_batched_items(service, tmp_path):
    per_token = _client_view(service, tmp_path, 1)
    for interval in (3, 8):
        assert _client_view(service, tmp_path, interval) == per_token
    ws = per_token["ws"]
    assert ws[0]["type"] == "start" and ws[-1]["type"] == "done" and len(ws) > 4  # one frame per text delta
    assert ws[-1]["usage"]["completion_tokens"] > 0 and ws[-1]["timings"]
    assert per_token["sse"][-1]["usage"] == ws[-1]["usage"]
