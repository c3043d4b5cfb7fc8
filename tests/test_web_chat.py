"""The web chat page (web/) in headless Debian Chromium, driven by Playwright's sync API.

Most tests run against tests/fake_chat_server.py, which replies on cue (/slow, /tool, /overflow, ...) and
records what it saw server-side (a `stop`, a cancelled generation, the chat payload). Tests that only need
*a* server speaking /ws/chat use the `page` fixture, which opens `base_url`: set RAYCHAT_WEB_BASE_URL (e.g.
http://127.0.0.1:8000 for `raychat serve`) to point those at the real app; the stop test then checks the
app's Prometheus counter `raychat:request_success_total{finished_reason="cancelled"}` instead of the fake's
event log. Tests that need scripted replies use `fake_page` and always talk to the fake server.

Chromium is Debian's (/usr/bin/chromium, installed by `deploy/install.sh dev`); never `playwright install`.
Screenshots land in test-artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fake_chat_server import SLOW_REPLY, FakeChatServer, default_script
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fake_server():
    with FakeChatServer() as server:
        yield server


@pytest.fixture(scope="module")
def base_url(fake_server) -> str:
    return os.environ.get("RAYCHAT_WEB_BASE_URL", "").rstrip("/") or fake_server.url


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run `bash deploy/install.sh dev` (Debian chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageWatch:
    """Collects what must never happen on any page: JS errors and requests that leave localhost."""

    def __init__(self, page: Page):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.websockets: list[str] = []
        self.frames: list[dict] = []  # every JSON message the page received over its sockets
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, ws) -> None:
        self.websockets.append(ws.url)
        ws.on("framereceived", lambda payload: self.frames.append(json.loads(payload)))

    def off_host(self) -> list[str]:
        return [u for u in self.requests + self.websockets
                if not u.startswith(("data:", "blob:", "about:")) and urlsplit(u).hostname not in LOCAL_HOSTS]


WATCHES: dict[int, PageWatch] = {}  # id(page) -> its watch


def open_page(browser: Browser, url: str, viewport=DESKTOP, **ctx_kwargs):
    ctx = browser.new_context(viewport=viewport, **ctx_kwargs)
    origin = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    page = ctx.new_page()
    page.set_default_timeout(10_000)
    watch = WATCHES[id(page)] = PageWatch(page)
    page.goto(url + "/")
    wait_online(page)
    return ctx, page, watch


@pytest.fixture
def _opened(browser):
    opened = []

    def _open(url, **kw):
        ctx, page, watch = open_page(browser, url, **kw)
        opened.append((ctx, watch))
        return page

    yield _open
    for ctx, watch in opened:
        ctx.close()
        WATCHES.pop(next((k for k, v in WATCHES.items() if v is watch), None), None)
        assert not watch.errors, f"JavaScript errors: {watch.errors}"
        assert not watch.off_host(), f"requests left localhost: {watch.off_host()}"


@pytest.fixture
def page(_opened, base_url) -> Page:
    """The chat page on `base_url` (the fake server, or the real app via RAYCHAT_WEB_BASE_URL)."""
    return _opened(base_url)


@pytest.fixture
def fake_page(_opened, fake_server) -> Page:
    """The chat page on the fake server, for tests that need scripted replies."""
    return _opened(fake_server.url)


class CancelProbe:
    """How many generations the server has cancelled: the fake's event log, or the real app's metrics."""

    def __init__(self, base_url: str, fake: FakeChatServer | None):
        self.base_url, self.fake = base_url, fake

    def count(self) -> float:
        if self.fake is not None:
            return len(self.fake.events_of("cancelled"))
        text = urllib.request.urlopen(self.base_url + "/metrics", timeout=5).read().decode()
        pat = re.compile(r'^raychat[:_]request_success_total\{[^}]*finished_reason="cancelled"[^}]*\}\s+(\S+)', re.M)
        return sum(float(v) for v in pat.findall(text))

    def wait_above(self, before: float, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.count()
            if now > before:
                return now
            time.sleep(0.05)
        raise AssertionError(f"the server recorded no cancelled generation within {timeout} s")


@pytest.fixture
def cancel_probe(base_url, fake_server) -> CancelProbe:
    return CancelProbe(base_url, fake_server if base_url == fake_server.url else None)


# ---------------------------------------------------------------------------------------------- helpers


def wait_online(page: Page) -> None:
    page.wait_for_selector("body[data-connection=online]", timeout=10_000)


def send(page: Page, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def wait_reply(page: Page, index: int = -1, status: str = "done"):
    """Waits until the assistant message (by position) has finished with `status`; returns its locator."""
    msg = page.locator(".msg-assistant").nth(index)
    expect(msg).to_have_attribute("data-status", status, timeout=15_000)
    expect(page.locator("body")).to_have_attribute("data-generating", "false")
    return msg


def open_settings(page: Page) -> None:
    page.click("#open-settings-top")
    expect(page.locator("#settings")).to_be_visible()


def render_markdown(page: Page, src: str) -> str:
    return page.evaluate(
        "(src) => { const d = document.createElement('div'); d.appendChild(RaychatMarkdown.render(src));"
        " return d.innerHTML; }", src)


# ---------------------------------------------------------------------------------------------- tests


def test_markdown_renderer_formats_and_escapes(fake_page):
    md = lambda s: render_markdown(fake_page, s)  # noqa: E731
    assert md("**b** *i* `c` ~~s~~") == "<p><strong>b</strong> <em>i</em> <code>c</code> <del>s</del></p>"
    assert md("a\nb\n\nc") == "<p>a<br>b</p><p>c</p>"
    assert md("<script>alert(1)</script>") == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
    assert md('<img src=x onerror="alert(1)">') == '<p>&lt;img src=x onerror="alert(1)"&gt;</p>'
    assert md("snake_case_name and 2*3*4") == "<p>snake_case_name and 2*3*4</p>"
    assert md("- a\n  - b\n- c") == "<ul><li>a<ul><li>b</li></ul></li><li>c</li></ul>"
    assert md("3. x\n4. y") == '<ol start="3"><li>x</li><li>y</li></ol>'
    assert md("# Title") == '<h3 class="md-h1">Title</h3>'
    assert md("> quoted") == "<blockquote><p>quoted</p></blockquote>"
    # Links: only absolute http(s), always opening safely; everything else stays visible text.
    assert md("[docs](https://a.example/p?q=1)") == (
        '<p><a href="https://a.example/p?q=1" target="_blank" rel="noopener noreferrer nofollow">docs</a></p>')
    assert md("[x](javascript:alert(1))") == "<p>[x](javascript:alert(1))</p>"
    assert md("[x](data:text/html,hi)") == "<p>[x](data:text/html,hi)</p>"
    assert md("see https://a.example/x.") == (
        '<p>see <a href="https://a.example/x" target="_blank" rel="noopener noreferrer nofollow">'
        "https://a.example/x</a>.</p>")
    assert "<img" not in md("![alt](https://a.example/i.png)")  # images are never fetched
    assert ">image: alt</a>" in md("![alt](https://a.example/i.png)")
    # Code fences: escaped text, a language class, a copy button; an unterminated fence stays open (streaming).
    fence = md("```py\n<b>x</b> & y\n```")
    assert '<code class="language-py">&lt;b&gt;x&lt;/b&gt; &amp; y</code>' in fence
    assert 'class="copy-code"' in fence and '<span class="code-lang">py</span>' in fence
    assert 'class="code-block code-open"' in md("```\nstill streaming")
    assert md("`<i>x</i>`") == "<p><code>&lt;i&gt;x&lt;/i&gt;</code></p>"
    assert fake_page.evaluate("RaychatMarkdown.safeUrl('javascript:alert(1)')") is None
    assert fake_page.evaluate("RaychatMarkdown.safeUrl(' HTTPS://a.example ')") == "https://a.example/"


def test_send_message_streams_tokens(page, fake_server):
    # Record every distinct reply text the page shows while streaming: tokens must arrive one by one.
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const m = [...document.querySelectorAll('.msg-assistant')].pop();
            if (m && m.dataset.status === 'streaming') window.__seen.push(m.querySelector('.msg-body').textContent);
        }).observe(document.getElementById('thread'), {subtree: true, childList: true, characterData: true});
    }""")
    send(page, "Hello there, how are you today?")
    expect(page.locator(".msg-user .bubble")).to_have_text("Hello there, how are you today?")
    reply = wait_reply(page)
    final = reply.locator(".msg-body").inner_text()
    assert final.strip()
    tokens = [f for f in WATCHES[id(page)].frames if f.get("type") == "token"]
    assert len(tokens) >= 3 and "".join(t["text"] for t in tokens).strip()
    seen = [s for s in page.evaluate("window.__seen") if s.strip() and s != "Thinking"]
    assert seen, "the reply was never shown while it streamed"
    assert all(len(a) <= len(b) for a, b in zip(seen, seen[1:])), "streamed text must only grow"
    if page.url.startswith(fake_server.url):  # the fake paces tokens (30 ms), so the page paints several times
        assert len(set(seen)) >= 3, f"reply did not stream: {seen}"
    expect(reply.locator(".msg-meta")).to_contain_text("tok/s")
    expect(reply.locator(".msg-meta")).to_contain_text("first token")
    expect(page.locator("#conv-list .conv-open")).to_have_text(["Hello there, how are you today?"])


def test_stop_cancels_generation_on_server(page, cancel_probe, fake_server):
    before = cancel_probe.count()
    open_settings(page)  # a long reply (the real app's tiny model decodes a 512-token default in ~2 s)
    page.fill("#set-max-tokens", "4000")
    page.click("#settings-save")
    expect(page.locator("#settings")).to_be_hidden()
    mark = fake_server.mark()
    send(page, "/slow Tell me a very long story.")
    body = page.locator(".msg-assistant .msg-body").last
    expect(body).not_to_have_text(re.compile(r"^(Thinking)?$"))  # at least one token arrived
    expect(page.locator("#send-btn")).to_have_text("Stop")
    page.click("#send-btn")
    reply = wait_reply(page, status="stopped")
    cancel_probe.wait_above(before)
    expect(reply.locator(".msg-meta")).to_contain_text("Stopped")
    expect(page.locator("#send-btn")).to_have_text("Send")
    if cancel_probe.fake is not None:
        assert fake_server.wait_for("stop", since=mark)["running"] is True
        cancelled = fake_server.wait_for("cancelled", since=mark)
        assert 0 < cancelled["tokens"] < len(SLOW_REPLY.split())
        assert not fake_server.events_of("done", since=mark)
        # Nothing keeps streaming after the stop.
        shown = reply.locator(".msg-body").inner_text()
        time.sleep(0.3)
        assert reply.locator(".msg-body").inner_text() == shown


def test_escape_key_stops_and_regenerate_works(fake_page, fake_server):
    mark = fake_server.mark()
    send(fake_page, "/slow again")
    expect(fake_page.locator(".msg-assistant .msg-body").last).to_contain_text("word1")
    fake_page.press("#composer-input", "Escape")
    wait_reply(fake_page, status="stopped")
    fake_server.wait_for("cancelled", since=mark)
    # Regenerate replaces the stopped reply and resends the same history (the stopped text is not history).
    fake_server.script = lambda messages, params: [("text", "a fresh answer")]
    try:
        fake_page.get_by_role("button", name="Regenerate reply").click()
        reply = wait_reply(fake_page)
    finally:
        fake_server.script = default_script
    expect(reply.locator(".msg-body")).to_have_text("a fresh answer")
    assert fake_page.locator(".msg-assistant").count() == 1
    chats = fake_server.events_of("chat", since=mark)
    assert [c["messages"] for c in chats] == [[{"role": "user", "content": "/slow again"}]] * 2


def test_reload_restores_conversation_and_delete(page):
    send(page, "remember this conversation")
    wait_reply(page)
    reply_text = page.locator(".msg-assistant .msg-body").inner_text()
    page.reload()
    wait_online(page)
    expect(page.locator(".msg-user .bubble")).to_have_text("remember this conversation")
    expect(page.locator(".msg-assistant")).to_have_attribute("data-status", "done")
    assert page.locator(".msg-assistant .msg-body").inner_text() == reply_text
    expect(page.locator("#conv-title")).to_have_text("remember this conversation")
    # New chat shows an empty thread; the saved one is one click away.
    page.click("#new-chat")
    expect(page.locator("#empty-state")).to_be_visible()
    assert page.locator(".msg").count() == 0
    page.get_by_role("button", name="remember this conversation", exact=True).click()
    expect(page.locator(".msg-user .bubble")).to_have_text("remember this conversation")
    # Delete takes two clicks (the first arms it), and stays deleted after a reload.
    delete = page.get_by_role("button", name="Delete chat: remember this conversation")
    delete.click()
    page.get_by_role("button", name="Confirm delete chat: remember this conversation").click()
    expect(page.locator("#conv-list li")).to_have_count(0)
    expect(page.locator("#empty-state")).to_be_visible()
    page.reload()
    wait_online(page)
    expect(page.locator("#conv-list li")).to_have_count(0)


XSS_USER = ("<img src=x onerror=\"window.__xss='user-img'\"><script>window.__xss='user-script'</script>"
            "<svg onload=\"window.__xss='user-svg'\"></svg>")
INJECTED = ("#thread img, #thread script, #thread iframe, #thread svg, #thread object, #thread embed, "
            "#thread [onerror], #thread [onload], #thread [onmouseover], #thread a[href^='javascript'], #thread b")


def test_xss_in_user_message_renders_as_text(page):
    send(page, XSS_USER)
    wait_reply(page)
    expect(page.locator(".msg-user .bubble")).to_have_text(XSS_USER)
    assert page.evaluate("window.__xss") is None
    assert page.locator(INJECTED).count() == 0
    page.reload()  # rendered again from localStorage
    wait_online(page)
    expect(page.locator(".msg-user .bubble")).to_have_text(XSS_USER)
    assert page.evaluate("window.__xss") is None
    assert page.locator(INJECTED).count() == 0
    page.click("#conv-list .conv-open")  # the title is the payload too
    assert page.locator("#conv-list img, #conv-list script, #conv-list svg").count() == 0


def test_xss_in_model_reply_renders_as_text(fake_page):
    send(fake_page, XSS_USER)  # the fake echoes the message back as Markdown
    reply = wait_reply(fake_page)
    expect(reply.locator(".msg-body")).to_contain_text("You said: <img src=x onerror=")
    send(fake_page, "/xss")
    reply = wait_reply(fake_page)
    body = reply.locator(".msg-body")
    expect(body).to_contain_text("<script>window.__xss = 'script'</script>")
    expect(body).to_contain_text("<img src=x onerror=\"window.__xss='img'\">")
    expect(body).to_contain_text("[click me](javascript:window.__xss='link')")
    fake_page.locator(".msg-body strong").first.hover()  # the escaped onmouseover must stay inert
    fake_page.wait_for_timeout(100)
    assert fake_page.evaluate("window.__xss") is None
    assert fake_page.locator(INJECTED).count() == 0
    assert fake_page.locator("#thread a").evaluate_all("as => as.map(a => a.protocol)") == ["http:"]


def test_page_makes_no_request_off_localhost(browser, fake_server):
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    watch = PageWatch(page)
    blocked = []

    def guard(route):
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    ctx.route("**/*", guard)
    try:
        page.goto(fake_server.url + "/")
        wait_online(page)
        for text in ("/markdown", "/xss", "/tool"):  # replies with external links and an external image
            send(page, text)
            wait_reply(page)
        open_settings(page)
        page.click("#settings-cancel")
        page.reload()
        wait_online(page)
        assert {urlsplit(u).path for u in watch.requests} >= {"/", "/app.js", "/markdown.js", "/style.css"}
        assert watch.websockets and all(urlsplit(u).hostname in LOCAL_HOSTS for u in watch.websockets)
        assert blocked == [] and watch.off_host() == []
        assert not watch.errors
    finally:
        ctx.close()


def test_tool_calls_are_their_own_blocks(fake_page, fake_server):
    send(fake_page, "/tool what is 1234*5678?")
    reply = wait_reply(fake_page)
    blocks = reply.locator(".msg-body > *")
    assert blocks.evaluate_all("els => els.map(e => e.className)") == [
        "md", "tool-block tool-call", "tool-block tool-result", "md"]
    expect(reply.locator(".tool-call .tool-text")).to_have_text("1234*5678")
    expect(reply.locator(".tool-result .tool-text")).to_have_text("7006652")
    expect(reply.locator(".tool-call .tool-label")).to_contain_text("Tool call")
    # The next turn sends the tool use back as conversation parts (python / python_output).
    mark = fake_server.mark()
    send(fake_page, "thanks")
    wait_reply(fake_page)
    history = fake_server.wait_for("chat", since=mark)["messages"]
    assert history[1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Let me compute that. "}, {"type": "python", "text": "1234*5678"},
        {"type": "python_output", "text": "7006652"}, {"type": "text", "text": "The answer is **7006652**."}]}


def test_context_overflow_and_busy_errors_are_readable(fake_page, fake_server):
    send(fake_page, "/overflow " + "very long text " * 20)
    reply = wait_reply(fake_page, status="error")
    err = reply.locator(".msg-error")
    expect(err).to_be_visible()
    expect(err).to_contain_text("too long for the model's context window")
    expect(err).to_contain_text("the context window is 2048 tokens")  # the server's own numbers
    expect(err.get_by_role("button", name="New chat")).to_be_visible()
    # Busy server: readable, and Retry sends the same request again.
    fake_page.click("#new-chat")
    mark = fake_server.mark()
    send(fake_page, "/busy")
    reply = wait_reply(fake_page, status="error")
    expect(reply.locator(".msg-error")).to_contain_text("The server is busy")
    reply.get_by_role("button", name="Retry this reply").click()
    wait_reply(fake_page, status="error")
    assert len(fake_server.events_of("chat", since=mark)) == 2
    # Errored replies are not history: the next message goes out with the earlier user turns merged.
    mark = fake_server.mark()
    fake_server.script = lambda messages, params: [("text", "ok")]
    try:
        send(fake_page, "and now?")
        wait_reply(fake_page)
    finally:
        fake_server.script = default_script
    assert fake_server.wait_for("chat", since=mark)["messages"] == [{"role": "user", "content": "/busy\n\nand now?"}]


def test_disconnect_shows_error_and_reconnects(fake_page):
    send(fake_page, "/drop")
    reply = wait_reply(fake_page, status="error")
    expect(reply.locator(".msg-body")).to_contain_text("This reply will be cut")
    expect(reply.locator(".msg-error")).to_contain_text("connection to the server was lost")
    # Backoff starts at 0.5 s, so the page is back well within the 10 s wait.
    wait_online(fake_page)
    expect(fake_page.locator("#conn-text")).to_have_text("Connected")
    send(fake_page, "still there?")
    reply = wait_reply(fake_page)
    expect(reply.locator(".msg-body")).to_contain_text("You said: still there?")


def test_server_down_then_up_reconnects_with_backoff(browser):
    server = FakeChatServer().start()
    port = server.port
    ctx, page, watch = open_page(browser, server.url)
    try:
        server.stop()
        expect(page.locator("body")).to_have_attribute("data-connection", "offline")
        expect(page.locator("#conn-text")).to_contain_text("retrying")
        page.wait_for_timeout(800)  # a couple of failed attempts while the server is down
        with FakeChatServer(port=port) as again:
            wait_online(page)
            send(page, "back")
            wait_reply(page)
            assert again.events_of("chat")
        assert not watch.errors
    finally:
        ctx.close()


def test_settings_persist_and_are_sent(page, fake_server):
    open_settings(page)
    page.fill("#set-temperature", "5")
    page.click("#settings-save")
    expect(page.locator("#settings-error")).to_contain_text("Temperature must be a number from 0 to 2")
    expect(page.locator("#settings")).to_be_visible()
    page.fill("#set-temperature", "0.3")
    page.fill("#set-top-k", "7")
    page.fill("#set-max-tokens", "4")
    page.fill("#set-seed", "42")
    page.fill("#set-system", "Be brief.")
    page.click("#settings-save")
    expect(page.locator("#settings")).to_be_hidden()
    mark = fake_server.mark()
    send(page, "one two three four five six")
    reply = wait_reply(page)
    if page.url.startswith(fake_server.url):
        chat = fake_server.wait_for("chat", since=mark)
        assert chat["params"] == {"temperature": 0.3, "top_k": 7, "top_p": 1, "max_tokens": 4, "seed": 42}
        assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
        expect(reply.locator(".msg-meta")).to_contain_text("Cut off at the max tokens limit")
        expect(reply.locator(".msg-meta")).to_contain_text("4 tokens")
    page.reload()
    wait_online(page)
    open_settings(page)
    expect(page.locator("#set-temperature")).to_have_value("0.3")
    expect(page.locator("#set-top-k")).to_have_value("7")
    expect(page.locator("#set-max-tokens")).to_have_value("4")
    expect(page.locator("#set-system")).to_have_value("Be brief.")
    page.keyboard.press("Escape")
    expect(page.locator("#settings")).to_be_hidden()


def test_edit_and_resend(fake_page, fake_server):
    send(fake_page, "first question")
    wait_reply(fake_page)
    send(fake_page, "second question")
    wait_reply(fake_page)
    mark = fake_server.mark()
    fake_page.get_by_role("button", name="Edit message").first.click()
    edit = fake_page.get_by_role("textbox", name="Edit message")
    expect(edit).to_be_focused()
    edit.fill("first question, edited")
    edit.press("Enter")
    reply = wait_reply(fake_page)
    expect(reply.locator(".msg-body")).to_contain_text("You said: first question, edited")
    expect(fake_page.locator(".msg")).to_have_count(2)  # everything after the edited message is replaced
    expect(fake_page.locator("#conv-title")).to_have_text("first question, edited")
    assert fake_server.wait_for("chat", since=mark)["messages"] == [
        {"role": "user", "content": "first question, edited"}]
    # Cancel leaves the message alone.
    fake_page.get_by_role("button", name="Edit message").click()
    fake_page.get_by_role("button", name="Cancel").click()
    expect(fake_page.locator(".msg-user .bubble")).to_have_text("first question, edited")


def test_copy_buttons(fake_page):
    send(fake_page, "/markdown")
    reply = wait_reply(fake_page)
    copy = reply.locator(".copy-code")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert fake_page.evaluate("navigator.clipboard.readText()") == 'def greet(name):\n    return f"hello, {name}"'
    reply.get_by_role("button", name="Copy reply").click()
    assert fake_page.evaluate("navigator.clipboard.readText()").startswith("## A small demo")


def test_enter_sends_shift_enter_adds_newline(page):
    page.click("#composer-input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(page.locator("#composer-input")).to_have_value("line one\nline two")
    assert page.locator(".msg").count() == 0
    page.keyboard.press("Enter")
    expect(page.locator(".msg-user .bubble")).to_have_text("line one\nline two")
    expect(page.locator("#composer-input")).to_have_value("")
    wait_reply(page)


def test_keyboard_focus_is_visible(page):
    outlines = []
    for _ in range(6):
        page.keyboard.press("Tab")
        outlines.append(page.evaluate("""() => {
            const el = document.activeElement, s = getComputedStyle(el);
            const focusWithin = el.closest('.composer') ? getComputedStyle(el.closest('.composer')).boxShadow : '';
            return {tag: el.tagName, id: el.id, outline: s.outlineStyle, width: parseFloat(s.outlineWidth),
                    ring: focusWithin};
        }"""))
    buttons = [o for o in outlines if o["tag"] == "BUTTON"]
    assert buttons, outlines
    assert all(o["outline"] != "none" and o["width"] >= 2 for o in buttons), outlines
    # The message box draws its focus ring on the surrounding composer.
    page.focus("#composer-input")
    assert page.evaluate("getComputedStyle(document.querySelector('.composer')).boxShadow") != "none"


def _fill_demo(page: Page) -> None:
    send(page, "Show me some Markdown /markdown")
    wait_reply(page)
    send(page, "What is 1234*5678? /tool")
    wait_reply(page)


def test_screenshots_desktop_and_phone(_opened, fake_server):
    ARTIFACTS.mkdir(exist_ok=True)
    desk = _opened(fake_server.url, viewport=DESKTOP)
    _fill_demo(desk)
    desk.screenshot(path=str(ARTIFACTS / "web-desktop.png"))
    expect(desk.locator("#sidebar")).to_be_in_viewport()
    expect(desk.locator("#menu-btn")).to_be_hidden()

    phone = _opened(fake_server.url, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    _fill_demo(phone)
    phone.screenshot(path=str(ARTIFACTS / "web-phone.png"))
    # Nothing overflows sideways; the list is a drawer behind the menu button; the composer stays on screen.
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    expect(phone.locator("#sidebar")).not_to_be_in_viewport()
    expect(phone.locator("#composer-input")).to_be_in_viewport()
    box = phone.locator(".code-block").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    phone.click("#menu-btn")
    expect(phone.locator("#sidebar")).to_be_in_viewport()
    expect(phone.locator("#menu-btn")).to_have_attribute("aria-expanded", "true")
    phone.wait_for_timeout(300)  # let the slide-in finish before the picture
    phone.screenshot(path=str(ARTIFACTS / "web-phone-sidebar.png"))
    phone.locator("#conv-list .conv-open").first.click()
    expect(phone.locator("#sidebar")).not_to_be_in_viewport()
    open_settings(phone)
    phone.screenshot(path=str(ARTIFACTS / "web-phone-settings.png"))
    for name in ("web-desktop.png", "web-phone.png", "web-phone-sidebar.png", "web-phone-settings.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000


def test_api_key_travels_as_subprotocol(browser):
    with FakeChatServer(api_key="s3cret-KEY_1") as server:
        ctx = browser.new_context(viewport=DESKTOP)
        page = ctx.new_page()
        watch = PageWatch(page)
        try:
            page.goto(server.url + "/")
            expect(page.locator("body")).to_have_attribute("data-connection", "unauthorized")
            expect(page.locator("#banner")).to_contain_text("API key")
            page.click("#banner-action")  # "Open settings"
            page.fill("#set-api-key", "not a token")
            page.click("#settings-save")
            expect(page.locator("#settings-error")).to_contain_text("API key may only use")
            page.fill("#set-api-key", "s3cret-KEY_1")
            page.click("#settings-save")
            wait_online(page)
            expect(page.locator("#banner")).to_be_hidden()
            send(page, "hello with a key")
            wait_reply(page)
            connect = server.events_of("connect")[-1]
            assert connect["offered"] == ["raychat.v1", "raychat.bearer.s3cret-KEY_1"]
            assert connect["subprotocol"] == "raychat.v1"
            assert json.loads(page.evaluate("localStorage.getItem('raychat.settings.v1')"))["api_key"] == "s3cret-KEY_1"
            assert not watch.errors
        finally:
            ctx.close()


def test_two_tabs_share_the_conversation_list(browser, fake_server):
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        a, b = ctx.new_page(), ctx.new_page()
        for p in (a, b):
            p.goto(fake_server.url + "/")
            wait_online(p)
        send(a, "from tab A")
        wait_reply(a)
        expect(b.locator("#conv-list .conv-open")).to_have_text(["from tab A"])
        expect(b.locator("#empty-state")).to_be_visible()  # tab B keeps its own open (new) chat
        send(b, "from tab B")
        wait_reply(b)
        expect(a.locator("#conv-list .conv-open")).to_have_text(["from tab B", "from tab A"])
        expect(a.locator(".msg-user .bubble")).to_have_text("from tab A")
        # A chat deleted in one tab disappears from the other, which then shows a new chat.
        b.get_by_role("button", name="Delete chat: from tab A").click()
        b.get_by_role("button", name="Confirm delete chat: from tab A").click()
        expect(a.locator("#conv-list .conv-open")).to_have_text(["from tab B"])
        expect(a.locator("#empty-state")).to_be_visible()
        a.reload()
        wait_online(a)
        expect(a.locator("#conv-list .conv-open")).to_have_text(["from tab B"])
    finally:
        ctx.close()
