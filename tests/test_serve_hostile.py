"""Hostile input, case by case, over /v1, the WebSocket and the CLI: each gets a clear error naming what was
wrong - an OpenAI-shaped 4xx, a typed WebSocket error on a socket that stays usable, a one-line CLI error with
exit code 2 - and never a 500 or a traceback. In-process (TestClient re-raises any server exception, so a 500
path fails the test loudly); the protocol-level frame cases are in test_serve_protocol.py, the same bodies
against the live Ray app in test_serve_app.py."""

from __future__ import annotations

import json

import pytest
from test_serve_api import AUTH, FakeClient, make

from raychat.cli import main

U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}
MSGS = [U]


def chat(**kw) -> bytes:
    return json.dumps({"messages": MSGS, **kw}).encode()


# (body, status, needle in the error message)
CHAT_CASES = {
    "empty": (b"", 400, "empty"),
    "whitespace": (b" \n\t ", 400, "empty"),
    "null": (b"null", 400, "JSON object"),
    "array": (b"[1, 2]", 400, "JSON object"),
    "string": (b'"hello"', 400, "JSON object"),
    "number": (b"42", 400, "JSON object"),
    "invalid_utf8": (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "not valid JSON"),
    "bom": (b'\xef\xbb\xbf{"messages": []}', 400, "not valid JSON"),
    "truncated": (b'{"messages": [{"role": "us', 400, "not valid JSON"),
    "nan_temperature": (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "temperature"),
    "inf_temperature": (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', 400,
                        "temperature"),
    "negative_temperature": (chat(temperature=-0.1), 400, "temperature must be in [0, 2]"),
    "huge_temperature": (chat(temperature=1e308), 400, "temperature must be in [0, 2]"),
    "negative_top_k": (chat(top_k=-1), 400, "top_k must be in"),
    "fractional_top_k": (chat(top_k=1.5), 400, "top_k"),
    "huge_top_k": (chat(top_k=10**9), 400, "top_k must be in"),
    "top_p_above_one": (chat(top_p=1.5), 400, "top_p must be in (0, 1]"),
    "negative_top_p": (chat(top_p=-1), 400, "top_p must be in (0, 1]"),
    "negative_max_tokens": (chat(max_tokens=-5), 400, "max_tokens must be >= 1"),
    "string_max_tokens": (chat(max_tokens="many"), 400, "max_tokens"),
    "float_max_tokens": (chat(max_tokens=1e20), 400, "max_tokens"),
    "huge_int_top_k": (b'{"messages": [{"role": "user", "content": "hi"}], "top_k": ' + b"9" * 400 + b"}", 400,
                       "top_k must be in"),
    "zero_max_completion_tokens": (chat(max_completion_tokens=0), 400, "max_tokens must be >= 1"),
    "seed_beyond_64_bits": (chat(seed=-(2**64)), 400, "seed must fit in 64 bits"),
    "fractional_seed": (chat(seed=1.5), 400, "seed"),
    "messages_null": (json.dumps({"messages": None}).encode(), 400, "messages"),
    "messages_object": (json.dumps({"messages": {"role": "user"}}).encode(), 400, "messages"),
    "messages_empty": (json.dumps({"messages": []}).encode(), 400, "at least one user message"),
    "message_null": (json.dumps({"messages": [None]}).encode(), 400, "messages.0"),
    "message_number": (json.dumps({"messages": [1]}).encode(), 400, "messages.0"),
    "no_content": (json.dumps({"messages": [{"role": "user"}]}).encode(), 400, "messages.0.content"),
    "no_role": (json.dumps({"messages": [{"content": "hi"}]}).encode(), 400, "messages.0.role"),
    "tool_role": (json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(), 400, "messages.0.role"),
    "content_null": (json.dumps({"messages": [{"role": "user", "content": None}]}).encode(), 400, "content"),
    "content_number": (json.dumps({"messages": [{"role": "user", "content": 42}]}).encode(), 400, "content"),
    "image_part": (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})
                   .encode(), 400, "messages.0.content"),
    "part_without_text": (json.dumps({"messages": [{"role": "user", "content": [{"type": "text"}]}]}).encode(), 400,
                          "messages.0.content.0.text: Field required"),
    "python_part_from_user": (json.dumps({"messages": [{"role": "user", "content": [{"type": "python",
                                                                                      "text": "1+1"}]}]}).encode(),
                              400, "only text parts"),
    "two_system": (json.dumps({"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"},
                                            U]}).encode(), 400, "only allowed first"),
    "ends_with_assistant": (json.dumps({"messages": [U, A]}).encode(), 400, "last message must be from the user"),
    "message_too_long": (json.dumps({"messages": [{"role": "user", "content": "x" * 16_001}]}).encode(), 400,
                         "16001 characters"),
    "too_many_messages": (json.dumps({"messages": [U, A] * 32 + [U]}).encode(), 400, "too many messages"),
    "five_stops": (chat(stop=["a", "b", "c", "d", "e"]), 400, "at most 4 stop strings"),
    "empty_stop": (chat(stop=""), 400, "non-empty"),
    "numeric_stop": (chat(stop=[1]), 400, "stop"),
    "n_zero": (chat(n=0), 400, "n must be 1"),
    "logprobs": (chat(logprobs=True), 400, "logprobs are not supported"),
    "tools": (chat(tools=[{"type": "function"}]), 400, "tools are not supported"),
    "penalty": (chat(frequency_penalty=1.0), 400, "frequency_penalty is not supported"),
    "stream_not_bool": (chat(stream=2), 400, "stream"),
    "stream_options_bad": (chat(stream=True, stream_options={"include_usage": "maybe"}), 400, "include_usage"),
    "model_not_string": (chat(model=123), 400, "model"),
    "unknown_model": (chat(model="gpt-4"), 404, "does not exist"),
    "deep_nesting": (b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "not valid JSON"),
}

COMPLETION_CASES = {
    "no_prompt": (json.dumps({"max_tokens": 3}).encode(), 400, "prompt"),
    "empty_prompt": (json.dumps({"prompt": ""}).encode(), 400, "prompt 0 is empty"),
    "empty_prompt_list": (json.dumps({"prompt": []}).encode(), 400, "prompt must be a string or a list"),
    "token_id_prompt": (json.dumps({"prompt": [1, 2, 3]}).encode(), 400, "prompt"),
    "too_many_prompts": (json.dumps({"prompt": ["a"] * 65}).encode(), 400, "prompt must be a string or a list"),
    "echo": (json.dumps({"prompt": "a", "echo": True}).encode(), 400, "echo is not supported"),
    "stream_two_prompts": (json.dumps({"prompt": ["a", "b"], "stream": True}).encode(), 400, "single prompt"),
    "prompt_too_long": (json.dumps({"prompt": "x" * 16_001}).encode(), 400, "16001 characters"),
    "logprobs_count": (json.dumps({"prompt": "a", "logprobs": 5}).encode(), 400, "logprobs are not supported"),
}


def check_error(r, status: int, needle: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and "Traceback" not in err["message"]
    assert needle in err["message"], err["message"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make(FakeClient(), tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_chat_completions_hostile_body(client, case):
    body, status, needle = CHAT_CASES[case]
    check_error(client.post("/v1/chat/completions", headers=AUTH | {"content-type": "application/json"},
                            content=body), status, needle)


@pytest.mark.parametrize("case", sorted(COMPLETION_CASES))
def test_completions_hostile_body(client, case):
    body, status, needle = COMPLETION_CASES[case]
    check_error(client.post("/v1/completions", headers=AUTH | {"content-type": "application/json"}, content=body),
                status, needle)


@pytest.mark.parametrize("method,path,headers,body,status,needle", [
    ("POST", "/v1/chat/completions", {"content-type": "text/plain"}, chat(), 415, "Content-Type must be"),
    ("POST", "/v1/chat/completions", {"content-type": "multipart/form-data; boundary=x"}, chat(), 415,
     "Content-Type must be"),
    ("POST", "/v1/chat/completions", {"content-length": "999999999"}, chat(), 413, "exceeds the limit"),
    ("POST", "/v1/chat/completions", {}, b"x" * 262_145, 413, "exceeds the limit"),
    ("POST", "/v1/embeddings", {}, chat(), 404, "no route POST"),
    ("PUT", "/v1/chat/completions", {}, chat(), 404, "no route PUT"),
    ("GET", "/../../etc/passwd", {}, b"", 404, "no route GET"),
    ("GET", "/v1/models", {"authorization": "Bearer wrong"}, b"", 401, "missing or invalid API key"),
    ("GET", "/v1/models", {"authorization": "Basic abc"}, b"", 401, "missing or invalid API key"),
])
def test_http_hostile_requests(client, method, path, headers, body, status, needle):
    h = AUTH | headers if "authorization" not in headers else headers
    check_error(client.request(method, path, headers=h, content=body), status, needle)


# ---- WebSocket -------------------------------------------------------------------------------------------------

WS_CASES = {
    "not_json": ("hello", "bad_request", "not valid JSON"),
    "json_array": ("[1]", "bad_request", '"type": "chat" or "stop"'),
    "json_null": ("null", "bad_request", '"type": "chat" or "stop"'),
    "empty_object": ("{}", "bad_request", '"type": "chat" or "stop"'),
    "unknown_type": ('{"type": "hello"}', "bad_request", '"type": "chat" or "stop"'),
    "no_messages": ('{"type": "chat"}', "bad_request", "messages"),
    "messages_string": ('{"type": "chat", "messages": "hi"}', "bad_request", "messages"),
    "typo_param": (json.dumps({"type": "chat", "messages": MSGS, "params": {"temp": 1}}), "bad_request", "params.temp"),
    "hot_temperature": (json.dumps({"type": "chat", "messages": MSGS, "params": {"temperature": 5}}), "bad_request",
                        "temperature must be in"),
    "zero_max_tokens": (json.dumps({"type": "chat", "messages": MSGS, "params": {"max_tokens": 0}}), "bad_request",
                        "max_tokens must be >= 1"),
    "huge_seed": ('{"type": "chat", "messages": [{"role": "user", "content": "hi"}], "params": {"seed": '
                  + "9" * 5000 + "}}", "bad_request", "not valid JSON"),
    "lone_surrogate": ('{"type": "chat", "messages": [{"role": "user", "content": "\\ud800"}]}', "bad_request",
                       "not valid JSON"),
    "deep_nesting": ('{"type": "chat", "messages": ' + "[" * 50_000 + "]" * 50_000 + "}", "bad_request",
                     "not valid JSON"),
    "stop_with_extra": ('{"type": "stop", "now": true}', "bad_request", "now"),
    "role_order": (json.dumps({"type": "chat", "messages": [U, U]}), "bad_request", "alternate"),
    "empty_content": (json.dumps({"type": "chat", "messages": [{"role": "user", "content": ""}]}), "bad_request",
                      "empty content"),
    "oversized_frame": (json.dumps({"type": "chat", "messages": [{"role": "user", "content": "x" * 300_000}]}),
                        "bad_request", "exceeds the limit of 262144 bytes"),
}


@pytest.mark.parametrize("case", sorted(WS_CASES))
def test_ws_hostile_frame_then_the_socket_still_works(client, case):
    frame, code, needle = WS_CASES[case]
    with client.websocket_connect("/ws/chat", headers=AUTH) as ws:
        ws.send_text(frame)
        err = ws.receive_json()
        assert err["type"] == "error" and err["code"] == code and needle in err["message"], err
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        assert ws.receive_json()["type"] == "start"


def test_ws_binary_frame_and_a_second_chat_while_one_runs(tmp_path):
    c = make(FakeClient(delay=0.05), tmp_path)
    with c.websocket_connect("/ws/chat", headers=AUTH) as ws:
        ws.send_bytes(b"\x00\x01")
        err = ws.receive_json()
        assert err["code"] == "bad_request" and "binary frames are not supported" in err["message"]
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        assert ws.receive_json()["type"] == "start"
        ws.send_text(json.dumps({"type": "chat", "messages": MSGS}))
        while (ev := ws.receive_json())["type"] != "error":
            pass
        assert ev["code"] == "overloaded" and "already running" in ev["message"]


# ---- CLI -------------------------------------------------------------------------------------------------------

CLI_CASES = {
    "serve_port": (["serve", "--run-dir", "{run}", "--port", "70000"], "port must be in [0, 65535]"),
    "serve_replicas": (["serve", "--run-dir", "{run}", "--replicas", "0"], "replicas must be an integer >= 1"),
    "serve_batch": (["serve", "--run-dir", "{run}", "--max-batch-size", "0"], "max_batch_size"),
    "serve_api_key_space": (["serve", "--run-dir", "{run}", "--api-key", "a b"], "api_key must be printable"),
    "serve_inflight_zero": (["serve", "--run-dir", "{run}", "--max-concurrent-requests", "0"],
                            "limits.max_concurrent_requests"),
    "serve_idle_zero": (["serve", "--run-dir", "{run}", "--ws-idle-timeout", "0"], "limits.ws_idle_timeout_s"),
    "serve_drain_negative": (["serve", "--run-dir", "{run}", "--drain-timeout", "-1"], "--drain-timeout"),
    "serve_hosts_blank": (["serve", "--run-dir", "{run}", "--allowed-hosts", "a b"], "allowed_hosts"),
    "serve_seq_len": (["serve", "--run-dir", "{run}", "--max-seq-len", "1"], "max_seq_len must be >= 2"),
    "serve_per_client_negative": (["serve", "--run-dir", "{run}", "--max-concurrent-per-client", "-1"],
                                  "limits.max_concurrent_per_client"),
    "serve_no_model": (["serve"], "--checkpoint"),
    "chat_top_p": (["chat", "--run-dir", "{run}", "-p", "hi", "--top-p", "0"], "top_p must be in (0, 1]"),
    "chat_top_k": (["chat", "--run-dir", "{run}", "-p", "hi", "--top-k", "-3"], "top_k must be an integer >= 0"),
    "chat_max_tokens": (["chat", "--run-dir", "{run}", "-p", "hi", "--max-tokens", "0"], "max_tokens"),
    "chat_temperature_nan": (["chat", "--run-dir", "{run}", "-p", "hi", "--temperature", "nan"], "temperature"),
    "chat_threads": (["chat", "--run-dir", "{run}", "-p", "hi", "--threads", "0"], "--threads must be >= 1"),
    "chat_no_checkpoint": (["chat", "--run-dir", "{empty}", "-p", "hi"], "no sft checkpoint"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_hostile_arguments_are_one_line_errors(case, tmp_path, capsys):
    argv, needle = CLI_CASES[case]
    (tmp_path / "empty").mkdir()
    argv = [a.format(run=tmp_path, empty=tmp_path / "empty") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0 and needle in err, err


@pytest.mark.parametrize("argv", [["serve", "--port", "eighty"], ["chat", "--temperature", "warm"],
                                  ["serve", "--bogus-flag"]])
def test_cli_unparseable_arguments_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err
