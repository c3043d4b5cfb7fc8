"""The chat page against the real Ray Serve app (tiny random-init checkpoint on CPU), in headless Chromium:
the general page tests of test_web_chat.py, re-run with `base_url` pointing at `raychat.serve.app.start(...)`.
The stop test then checks the app's Prometheus counter of cancelled generations, i.e. that the engine on the
server really stopped, and a screenshot of the real app is saved in test-artifacts/."""

from __future__ import annotations

import socket

import pytest
import test_web_chat as web
from test_web_chat import _opened, browser, cancel_probe, fake_server, page  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def chatty_run_dir(tmp_path_factory):
    from conftest import make_tiny_run_dir

    # a long context, so the stop test's 4000-token reply runs for many seconds and is stopped mid-stream
    return make_tiny_run_dir(tmp_path_factory.mktemp("chatty"), stages=("sft",), never_stop=True, seq_len=4096)


@pytest.fixture(scope="module")
def base_url(ray_session, chatty_run_dir):
    from ray import serve

    from raychat.serve.app import start
    from raychat.serve.config import ServeConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.shutdown()  # another module's app must not be reused
    url = start(ServeConfig(run_dir=str(chatty_run_dir), stage="sft", port=port, num_cpus=0.5, ingress_cpus=0.25,
                            max_batch_size=4), wait_ready_s=180)
    yield url.rstrip("/")
    serve.shutdown()


test_send_message_streams_tokens = web.test_send_message_streams_tokens
test_stop_cancels_generation_on_server = web.test_stop_cancels_generation_on_server
test_reload_restores_conversation_and_delete = web.test_reload_restores_conversation_and_delete
test_xss_in_user_message_renders_as_text = web.test_xss_in_user_message_renders_as_text
test_settings_persist_and_are_sent = web.test_settings_persist_and_are_sent
test_enter_sends_shift_enter_adds_newline = web.test_enter_sends_shift_enter_adds_newline


def test_real_app_screenshot(_opened, base_url):  # noqa: F811
    p = _opened(base_url)
    web.send(p, "Hello from the real app")
    web.wait_reply(p)
    web.ARTIFACTS.mkdir(exist_ok=True)
    path = web.ARTIFACTS / "web-real-app.png"
    p.screenshot(path=str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"
