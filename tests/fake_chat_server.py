"""A scripted stand-in for the serving app: serves web/ at `/` and speaks the /ws/chat protocol.

Why it exists: the chat page's browser tests need a server that replies instantly and deterministically,
can be made to fail on cue (context overflow, overload, a dropped socket) and can tell the test what it saw
(a `stop` arrived, a generation was cancelled, the client went away). The real Ray Serve app is tested the
same way by pointing the tests' `base_url` fixture at it.

One asyncio `websockets` server does both jobs: `process_request` answers plain GETs for the static files,
and upgrade requests on /ws/chat get the chat protocol. It runs on its own thread so a sync test (Playwright's
sync API) can drive the browser while the server records `events` (thread-safe).

What the script does depends on the last user message:
    /slow      ~240 tokens at 40 ms each (to stop mid-stream)     /tool      a calculator tool call + result
    /overflow  error context_length_exceeded                       /busy      error overloaded
    /internal  error internal                                      /drop      a few tokens, then the socket closes
    /xss       a reply full of HTML/JS payloads                    /markdown  a Markdown showcase
    anything else: an echo of the message plus a little Markdown
`params.max_tokens` caps the reply (finish_reason "length").

API key (optional): accepted as an offered WebSocket subprotocol `raychat.bearer.<key>` (the server selects
`raychat.v1` when that is offered too, else echoes the bearer one, as browsers require a selection), an
`Authorization: Bearer <key>` header, or `?api_key=`. A missing or wrong key gets an `error`
message with code "unauthorized" and a close with code 1008.

Dev use:  .venv/bin/python tests/fake_chat_server.py --port 8765   then open http://127.0.0.1:8765/
"""

from __future__ import annotations

import argparse
import asyncio
import http
import itertools
import json
import mimetypes
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
BEARER_PREFIX = "raychat.bearer."
SUBPROTOCOL = "raychat.v1"

XSS_REPLY = """Here are some things that must stay text:

<script>window.__xss = 'script'</script>
<img src=x onerror="window.__xss='img'">
<iframe src="javascript:window.__xss='iframe'"></iframe>
[click me](javascript:window.__xss='link') and ![pic](http://evil.example/x.png)
**<b onmouseover="window.__xss='b'">bold</b>** and `<svg onload=window.__xss='svg'>`

```html
<script>window.__xss = 'code'</script>
```
"""

MARKDOWN_REPLY = """## A small demo

Here is **bold**, *italic*, `inline code` and a link to https://example.com/docs.

1. First step
2. Second step
   - a nested point
   - another one

```python
def greet(name):
    return f"hello, {name}"
```

> Quoted text stays readable.
"""

SLOW_REPLY = " ".join(f"word{i}" for i in range(240))

# A script is a list of steps: ("text", str) streams str as tokens; ("tool_call"|"tool_result", str);
# ("error", code, message); ("delay", seconds per token from here on); ("drop",) closes the socket.
Step = tuple
Script = Callable[[list[dict], dict], list[Step]]


def message_text(content) -> str:
    """Text of a message whose content is a string or a list of {type, text} parts."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def default_script(messages: list[dict], params: dict) -> list[Step]:
    last_user = next((message_text(m["content"]) for m in reversed(messages) if m.get("role") == "user"), "")
    if "/overflow" in last_user:
        return [("error", "context_length_exceeded",
                 "prompt is 2100 tokens and max_tokens is 256, but the context window is 2048 tokens")]
    if "/busy" in last_user:
        return [("error", "overloaded", "server at capacity (8 running, 64 waiting); retry after 2 s")]
    if "/internal" in last_user:
        return [("error", "internal", "engine crashed")]
    if "/slow" in last_user:
        return [("delay", 0.04), ("text", SLOW_REPLY)]
    if "/drop" in last_user:
        return [("text", "This reply will be cut"), ("drop",)]
    if "/tool" in last_user:
        return [("text", "Let me compute that. "), ("tool_call", "1234*5678"), ("tool_result", "7006652"),
                ("text", "The answer is **7006652**.")]
    if "/xss" in last_user:
        return [("text", XSS_REPLY)]
    if "/markdown" in last_user:
        return [("text", MARKDOWN_REPLY)]
    # 30 ms a token: slow enough that a browser paints the reply several times while it streams.
    echo = f"You said: {last_user}\n\nHere is some `code` and a list:\n\n- alpha\n- **beta**\n"
    return [("delay", 0.03), ("text", echo)]


def split_tokens(text: str) -> list[str]:
    """Word-ish pieces (a word plus its trailing whitespace), like a BPE stream but readable in tests."""
    return re.findall(r"\S+\s*|\s+", text)


class FakeChatServer:
    """Start with `.start()` (or as a context manager); `.url` is the page, `.events` what happened."""

    def __init__(self, web_dir: Path = WEB_DIR, host: str = "127.0.0.1", port: int = 0,
                 token_delay: float = 0.01, api_key: str | None = None, script: Script = default_script):
        self.web_dir = Path(web_dir)
        self.host, self.port = host, port
        self.token_delay = token_delay
        self.api_key = api_key
        self.script = script
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._conn_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeChatServer:
        self._thread = threading.Thread(target=self._run, name="fake-chat-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake chat server did not start within 10 s")
        if self._start_error is not None:
            raise RuntimeError(f"fake chat server failed to start: {self._start_error}") from self._start_error
        return self

    def stop(self) -> None:
        if self._loop is None or self._start_error is not None:
            return
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(self._open())
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported by start(), which would otherwise only see a timeout
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

    async def _open(self):
        # websockets' serve() must be created inside the running loop.
        return await serve(self._handle, self.host, self.port, process_request=self._process_request,
                           select_subprotocol=self._select_subprotocol, max_size=2**22)

    # ------------------------------------------------------------------ events

    def record(self, kind: str, **fields) -> None:
        with self._lock:
            self.events.append({"type": kind, "time": time.monotonic(), **fields})

    def events_of(self, kind: str, since: int = 0) -> list[dict]:
        with self._lock:
            return [e for e in self.events[since:] if e["type"] == kind]

    def mark(self) -> int:
        """Index to pass as `since` so a test only looks at what happened after this point."""
        with self._lock:
            return len(self.events)

    def wait_for(self, kind: str, since: int = 0, timeout: float = 10.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events_of(kind, since):
                if all(e.get(k) == v for k, v in match.items()):
                    return e
            time.sleep(0.02)
        raise AssertionError(f"no {kind!r} event matching {match} within {timeout} s; saw {self.events[since:]}")

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/ws/chat":
            return None  # the WebSocket handshake proceeds
        name = "index.html" if path == "/" else path.lstrip("/")
        file = self.web_dir / name
        # Only plain files directly inside web/: no "..", no sub-directories, no symlinks out.
        if "/" in name or not file.is_file() or file.resolve().parent != self.web_dir.resolve():
            return self._response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self.record("http", path=path)
        return self._response(http.HTTPStatus.OK, file.read_bytes(), ctype)

    @staticmethod
    def _response(status: http.HTTPStatus, body: bytes, ctype: str) -> Response:
        headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                           ("Connection", "close")])
        return Response(status.value, status.phrase, headers, body)

    @staticmethod
    def _offered(ws: ServerConnection) -> list[str]:
        return [p.strip() for h in ws.request.headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",")]

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, subprotocols) -> str | None:
        # Browsers fail the handshake unless the server selects one of the offered subprotocols. Like
        # `raychat serve`: "raychat.v1" when offered (the key is then not echoed back), else the bearer one.
        if SUBPROTOCOL in subprotocols:
            return SUBPROTOCOL
        return next((p for p in subprotocols if p.startswith(BEARER_PREFIX)), None)

    def _authorized(self, ws: ServerConnection) -> bool:
        if not self.api_key:
            return True
        if BEARER_PREFIX + self.api_key in self._offered(ws):
            return True
        if ws.request.headers.get("Authorization", "") == f"Bearer {self.api_key}":
            return True
        return parse_qs(urlsplit(ws.request.path).query).get("api_key", [""])[0] == self.api_key

    # ------------------------------------------------------------------ WebSocket

    async def _send(self, ws: ServerConnection, **msg) -> None:
        await ws.send(json.dumps(msg))

    async def _handle(self, ws: ServerConnection) -> None:
        conn = next(self._conn_ids)
        self.record("connect", conn=conn, subprotocol=ws.subprotocol, offered=self._offered(ws))
        if not self._authorized(ws):
            self.record("unauthorized", conn=conn)
            await self._send(ws, type="error", code="unauthorized", message="missing or wrong API key")
            await ws.close(1008, "unauthorized")
            return
        task: asyncio.Task | None = None
        try:
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                    kind = msg["type"]
                except (ValueError, TypeError, KeyError):
                    await self._send(ws, type="error", code="bad_request", message="expected a JSON object with 'type'")
                    continue
                if kind == "stop":
                    running = task is not None and not task.done()
                    self.record("stop", conn=conn, running=running)
                    if running:
                        task.cancel()
                elif kind == "chat":
                    messages, params = msg.get("messages"), msg.get("params") or {}
                    if not isinstance(messages, list) or not messages:
                        await self._send(ws, type="error", code="bad_request",
                                         message="'messages' must be a non-empty list")
                        continue
                    if task is not None and not task.done():
                        await self._send(ws, type="error", code="bad_request", message="a reply is already streaming")
                        continue
                    self.record("chat", conn=conn, messages=messages, params=params)
                    task = asyncio.create_task(self._generate(ws, conn, messages, params))
                else:
                    await self._send(ws, type="error", code="bad_request", message=f"unknown message type {kind!r}")
        except ConnectionClosed:
            pass
        finally:
            running = task is not None and not task.done()
            if running:
                task.cancel()
            self.record("disconnect", conn=conn, cancelled_generation=running)

    async def _generate(self, ws: ServerConnection, conn: int, messages: list[dict], params: dict) -> None:
        max_tokens = int(params.get("max_tokens") or 1_000_000)
        delay = self.token_delay
        sent = 0
        t0 = time.monotonic()
        ttft = None
        finish = "stop"
        try:
            await self._send(ws, type="start", id=f"fake-{conn}-{int(t0 * 1000)}")
            for step in self.script(messages, params):
                if step[0] == "delay":
                    delay = step[1]
                elif step[0] == "error":
                    self.record("error_sent", conn=conn, code=step[1])
                    await self._send(ws, type="error", code=step[1], message=step[2])
                    return
                elif step[0] == "drop":
                    self.record("drop", conn=conn)
                    await ws.close(1012, "service restart")
                    return
                elif step[0] in ("tool_call", "tool_result"):
                    await asyncio.sleep(delay)
                    await self._send(ws, type=step[0], text=step[1])
                else:
                    for piece in split_tokens(step[1]):
                        if sent >= max_tokens:
                            finish = "length"
                            break
                        await asyncio.sleep(delay)
                        await self._send(ws, type="token", text=piece)
                        sent += 1
                        ttft = ttft if ttft is not None else (time.monotonic() - t0) * 1000
            await self._send(ws, **self._done(finish, messages, sent, t0, ttft))
            self.record("done", conn=conn, finish_reason=finish, tokens=sent)
        except asyncio.CancelledError:
            self.record("cancelled", conn=conn, tokens=sent)
            try:
                await self._send(ws, **self._done("cancelled", messages, sent, t0, ttft))
            except ConnectionClosed:
                pass
        except ConnectionClosed:
            self.record("cancelled", conn=conn, tokens=sent)

    @staticmethod
    def _done(finish: str, messages: list[dict], sent: int, t0: float, ttft: float | None) -> dict:
        total_ms = (time.monotonic() - t0) * 1000
        prompt = sum(len(split_tokens(message_text(m.get("content", "")))) for m in messages)
        return {"type": "done", "finish_reason": finish,
                "usage": {"prompt_tokens": prompt, "completion_tokens": sent, "total_tokens": prompt + sent},
                "timings": {"ttft_ms": round(ttft or 0.0, 2), "total_ms": round(total_ms, 2),
                            "tokens_per_second": round(sent / max(total_ms / 1000, 1e-6), 2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0 = any free port)")
    parser.add_argument("--token-delay", type=float, default=0.03, help="seconds between streamed tokens")
    parser.add_argument("--api-key", default=None, help="require this key (subprotocol raychat.bearer.<key>)")
    args = parser.parse_args()
    server = FakeChatServer(host=args.host, port=args.port, token_delay=args.token_delay, api_key=args.api_key)
    server.start()
    print(f"fake chat server on {server.url}/ (Ctrl+C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
