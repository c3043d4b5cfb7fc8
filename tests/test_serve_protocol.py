"""Wire contract, limits, config and metrics of the serve package: pure Python, no Ray, no model."""

from __future__ import annotations

import json
import math

import pytest

from raychat.chat import StopMatcher
from raychat.serve.config import ServeConfig
from raychat.serve.metrics import METRIC_NAMES, ServeMetrics
from raychat.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    Limits,
    WsChat,
    WsStop,
    chat_request_from_openai,
    chat_request_from_ws,
    check_messages,
    completion_requests_from_openai,
    context_length_error,
    parse_ws_message,
)

U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}


def ws(msg: dict) -> str:
    return json.dumps(msg)


# ---- WebSocket messages ----------------------------------------------------------------------------------------


def test_ws_messages_parse_into_their_types():
    m = parse_ws_message(ws({"type": "chat", "messages": [U], "params": {"temperature": 0.5, "max_tokens": 7}}))
    assert isinstance(m, WsChat) and m.params.temperature == 0.5 and m.params.max_tokens == 7
    assert isinstance(parse_ws_message(ws({"type": "stop"})), WsStop)
    req = chat_request_from_ws(m, Limits())
    assert req == {"kind": "chat", "messages": [{"role": "user", "content": "hi"}], "stop": [],
                   "params": {"temperature": 0.5, "top_k": None, "top_p": None, "max_tokens": 7, "seed": None}}


@pytest.mark.parametrize("frame, needle", [
    ("{", "not valid JSON"),
    ("42", "expected a JSON object"),
    (ws({"kind": "chat"}), "expected a JSON object"),
    (ws({"type": "chit"}), "expected a JSON object"),
    (ws({"type": "chat"}), "messages: Field required"),
    (ws({"type": "chat", "messages": "hi"}), "messages"),
    (ws({"type": "chat", "messages": [U], "params": {"top_k": "many"}}), "params.top_k"),
    (ws({"type": "chat", "messages": [U], "params": {"temp": 1}}), "params.temp"),
    (ws({"type": "chat", "messages": [U], "extra": 1}), "extra"),
    (ws({"type": "chat", "messages": [{"role": "tool", "content": "x"}]}), "messages.0.role"),
    (ws({"type": "chat", "messages": [{"role": "user"}]}), "messages.0.content"),
    (ws({"type": "stop", "now": True}), "now"),
])
def test_ws_bad_frames_name_what_is_wrong(frame, needle):
    with pytest.raises(ApiError) as ei:
        parse_ws_message(frame)
    assert ei.value.ws_code == "bad_request" and ei.value.status == 400
    assert needle in ei.value.message, ei.value.message


# ---- messages, roles, sizes ------------------------------------------------------------------------------------


def _check(msgs, **lim):
    return check_messages([ChatCompletionRequest(messages=msgs).messages][0], Limits(**lim))


def test_roles_and_order():
    assert _check([{"role": "system", "content": "be brief"}, U, A, U])[0]["role"] == "system"
    assert _check([{"role": "developer", "content": "be brief"}, U])[0]["role"] == "system"  # OpenAI's new name
    assert _check([{"role": "system", "content": ""}, U])  # an empty system prompt is allowed
    for msgs, needle in [([A], "expected role 'user'"), ([U, U], "alternate"), ([U, A], "last message"),
                         ([U, {"role": "system", "content": "x"}, U], "only allowed first"),
                         ([], "at least one user message"), ([{"role": "user", "content": ""}], "empty content"),
                         ([{"role": "user", "content": [{"type": "python", "text": "1+1"}]}], "only text parts")]:
        with pytest.raises(ApiError) as ei:
            _check(msgs)
        assert needle in ei.value.message, (msgs, ei.value.message)
    parts = _check([U, {"role": "assistant", "content": [{"type": "text", "text": "x"},
                                                         {"type": "python", "text": "1+1"},
                                                         {"type": "python_output", "text": "2"}]}, U])
    assert parts[1]["content"][1] == {"type": "python", "text": "1+1"}


def test_size_limits_are_exact():
    _check([{"role": "user", "content": "x" * 10}], max_message_chars=10, max_total_chars=10)
    with pytest.raises(ApiError, match="11 characters > limit 10"):
        _check([{"role": "user", "content": "x" * 11}], max_message_chars=10, max_total_chars=20)
    with pytest.raises(ApiError, match="21 characters in total > limit 20"):
        _check([{"role": "user", "content": "x" * 10}, {"role": "assistant", "content": "y" * 10},
                {"role": "user", "content": "z"}], max_message_chars=10, max_total_chars=20)
    _check([U, A, U], max_messages=3)
    with pytest.raises(ApiError, match="too many messages: 5 > limit 3"):
        _check([U, A, U, A, U], max_messages=3)


@pytest.mark.parametrize("field, value, ok", [
    ("temperature", 0.0, True), ("temperature", 2.0, True), ("temperature", 2.01, False),
    ("temperature", -0.1, False), ("temperature", math.nan, False), ("top_k", 0, True), ("top_k", 200, True),
    ("top_k", 201, False), ("top_k", -1, False), ("top_p", 1.0, True), ("top_p", 1e-6, True), ("top_p", 0.0, False),
    ("top_p", 1.01, False), ("max_tokens", 1, True), ("max_tokens", 0, False), ("seed", 2**70, False),
])
def test_sampling_ranges(field, value, ok):
    req = ChatCompletionRequest(messages=[U], **{field: value})
    if ok:
        assert chat_request_from_openai(req, Limits())["params"][field] == value
    else:
        with pytest.raises(ApiError) as ei:
            chat_request_from_openai(req, Limits())
        assert ei.value.param == field and ei.value.status == 400


def test_unsupported_openai_fields_are_refused_and_stop_is_checked():
    for kw, needle in [({"n": 3}, "n must be 1"), ({"logprobs": True}, "logprobs"),
                       ({"presence_penalty": 0.5}, "presence_penalty"), ({"tools": [{"type": "function"}]}, "tools"),
                       ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"), ({"stop": [""]}, "non-empty")]:
        with pytest.raises(ApiError, match=needle):
            chat_request_from_openai(ChatCompletionRequest(messages=[U], **kw), Limits())
    req = chat_request_from_openai(ChatCompletionRequest(messages=[U], stop="\n", max_completion_tokens=9,
                                                         max_tokens=3), Limits())
    assert req["stop"] == ["\n"] and req["params"]["max_tokens"] == 9  # the newer name wins
    assert [r["prompt"] for r in completion_requests_from_openai(CompletionRequest(prompt=["a", "b"]), Limits())] \
        == ["a", "b"]
    with pytest.raises(ApiError, match="prompt 1 is empty"):
        completion_requests_from_openai(CompletionRequest(prompt=["a", ""]), Limits())


def test_context_length_message_names_both_numbers():
    e = context_length_error(2048, 2000, 100)
    assert e.status == 400 and e.code == "context_length_exceeded" and e.ws_code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in e.message and "2100 tokens (2000 in the messages, 100 in " \
        "the completion)" in e.message
    body = e.body()["error"]
    assert body["type"] == "invalid_request_error" and body["code"] == "context_length_exceeded"
    assert "2048" in context_length_error(2048, 2048, None).message


def test_error_mapping():
    assert ApiError("x", status=429, code="overloaded").ws_message() == {"type": "error", "code": "overloaded",
                                                                         "message": "x"}
    assert ApiError("x", status=401).ws_code == "unauthorized"
    assert ApiError("x", status=503).ws_code == "overloaded"
    assert ApiError("x", status=500).body()["error"]["type"] == "internal_error"


# ---- stop strings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pieces, stops, expected, stopped", [
    (["Hello wor", "ld. Bye"], ["."], "Hello world", True),
    (["ab", "c<", "|e", "nd|>x"], ["<|end|>"], "abc", True),
    (["ab", "c<", "|e", "nd"], ["<|end|>"], "abc<|end", False),  # never matched: everything comes out at flush
    (["one", " two"], [], "one two", False),
    (["xxSTO", "P"], ["STOP", "xS"], "x", True),                 # the earliest match wins
])
def test_stop_matcher_against_str_find(pieces, stops, expected, stopped):
    m, out, hit = StopMatcher(stops), "", False
    for p in pieces:
        text, hit = m.feed(p)
        out += text
        if hit:
            break
    out += m.flush() if not hit else ""
    assert (out, hit) == (expected, stopped)
    full = "".join(pieces)  # reference: cut at the first occurrence of any stop string
    cuts = [full.find(s) for s in stops if s in full]
    assert out == (full[:min(cuts)] if cuts else full)


# ---- config ----------------------------------------------------------------------------------------------------


def test_serve_config_validation(monkeypatch, tmp_path):
    cfg = ServeConfig(run_dir=str(tmp_path))
    assert cfg.model_name == "raychat-sft" and cfg.max_ongoing_requests == 2 * cfg.max_batch_size
    assert json.loads(cfg.to_json())["limits"]["max_messages"] == Limits().max_messages
    for kw, needle in [({}, "needs a model"), ({"run_dir": "x", "stage": "dpo"}, "stage"),
                       ({"run_dir": "x", "replicas": 0}, "replicas"), ({"run_dir": "x", "port": 70000}, "port"),
                       ({"run_dir": "x", "num_cpus": 0}, "num_cpus"),
                       ({"run_dir": "x", "autoscaling": {"max_replica": 2}}, "unknown autoscaling keys"),
                       ({"run_dir": "x", "autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas"),
                       ({"run_dir": "x", "api_key": "has space"}, "api_key"),
                       ({"run_dir": "x", "limits": {"max_messages": 0}}, "limits.max_messages"),
                       ({"run_dir": "x", "kv_cache_memory": 0}, "kv_cache_memory"),
                       ({"run_dir": "x", "gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
                       ({"run_dir": "x", "prefill_chunk": -1}, "prefill_chunk"),
                       ({"run_dir": "x", "stream_interval": 0}, "stream_interval")]:
        with pytest.raises(ValueError, match=needle):
            ServeConfig(**kw)
    auto = ServeConfig(run_dir="x", replicas=2, autoscaling={"max_replicas": 4})
    assert auto.autoscaling == {"min_replicas": 2, "max_replicas": 4, "target_ongoing_requests": auto.max_batch_size}
    assert "sekret" not in ServeConfig(run_dir="x", api_key="sekret").to_json()
    # engine options per device: the KV budget (bytes on CPU, a share of the GPU) and the prefill chunk
    assert cfg.engine_options("cpu") == {"kv_cache_memory": 2 * 2**30, "prefix_caching": True, "prefill_chunk": 16,
                                        "compile_decode": False}
    assert cfg.engine_options("cuda") == {"gpu_memory_utilization": 0.9, "prefix_caching": True, "prefill_chunk": 512,
                                         "compile_decode": False}
    off = ServeConfig(run_dir="x", kv_cache_memory=2**20, prefill_chunk=0, prefix_caching=False)
    assert off.engine_options("cuda") == {"kv_cache_memory": 2**20, "prefix_caching": False, "prefill_chunk": None,
                                          "compile_decode": False}
    # serve run key=value args arrive as strings; the key may come from the environment
    monkeypatch.setenv("RAYCHAT_API_KEY", "from-env")
    c = ServeConfig.from_dict({"run_dir": "x", "port": "8001", "max_batch_size": "4", "num_cpus": "0.5",
                               "limits": '{"max_messages": 3}'})
    assert (c.port, c.max_batch_size, c.num_cpus, c.limits.max_messages, c.api_key) == (8001, 4, 0.5, 3, "from-env")
    with pytest.raises(ValueError, match="unknown serve config keys"):
        ServeConfig.from_dict({"run_dir": "x", "prot": 1})


# ---- metrics ---------------------------------------------------------------------------------------------------

CONVENTIONS = ("raychat:time_to_first_token_seconds", "raychat:inter_token_latency_seconds",
               "raychat:e2e_request_latency_seconds", "raychat:request_queue_time_seconds",
               "raychat:prompt_tokens_total", "raychat:generation_tokens_total", "raychat:request_success_total",
               "raychat:tool_calls_total", "raychat:num_requests_running", "raychat:num_requests_waiting",
               "raychat:kv_cache_usage_perc")


def test_metric_names_follow_conventions_and_all_render():
    assert set(CONVENTIONS) <= set(METRIC_NAMES)
    m = ServeMetrics("tiny")
    m.observe_queue(0.01)
    m.observe_first_token(0.05)
    m.observe_itl(0.02, n=2)
    m.observe_tool_call()
    m.observe_finished("length", prompt_tokens=7, completion_tokens=5, e2e_s=0.3)
    m.observe_failure("overloaded")
    m.set_engine_stats([{"replica": "r1", "running": 2, "waiting": 1, "kv_cache_usage": 0.25,
                         "prefix_cache_queries": 40, "prefix_cache_hits": 30, "kv_cache_slots": 64},
                        {"replica": "r2", "running": 1, "waiting": 0, "kv_cache_usage": 0.5}])
    text = m.render().decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert 'raychat:prompt_tokens_total{model_name="tiny"} 7.0' in text
    assert 'raychat:generation_tokens_total{model_name="tiny"} 5.0' in text
    assert 'raychat:request_success_total{finished_reason="length",model_name="tiny"} 1.0' in text
    assert 'raychat:inter_token_latency_seconds_count{model_name="tiny"} 2.0' in text
    assert 'raychat:inter_token_latency_seconds_sum{model_name="tiny"} 0.02' in text
    assert 'raychat:num_requests_running{model_name="tiny",replica="r1"} 2.0' in text
    assert 'raychat:kv_cache_usage_perc{model_name="tiny",replica="r2"} 0.5' in text
    assert 'raychat:prefix_cache_hits_total{model_name="tiny",replica="r1"} 30.0' in text
    assert 'raychat:prefix_cache_queries_total{model_name="tiny",replica="r1"} 40.0' in text
    assert 'raychat:kv_cache_slots{model_name="tiny",replica="r1"} 64.0' in text
    assert 'raychat:request_failure_total{code="overloaded",model_name="tiny"} 1.0' in text
    # two apps in one process do not collide (each has its own registry)
    assert ServeMetrics("other").render()
