"""WS /ws/chat: one socket, several chats in sequence (one at a time), `stop` cancels the running one.

Every message the server sends is one of protocol.py's typed `Ws*` models. Bounds, besides the request gate:
open sockets per ingress (`max_connections`) and per client address (`max_connections_per_client`), and an
idle timeout (`ws_idle_timeout_s`): a socket with no chat running that sends nothing for that long is closed
(1001), so idle sockets cannot hold every connection slot. A frame over `max_frame_bytes` is refused by the
app; the ASGI server in front buffers up to its own frame limit first (README, serving security).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import WebSocket, WebSocketDisconnect

from raychat.serve.openai_routes import client_addr
from raychat.serve.protocol import (
    ApiError,
    WsChat,
    WsDone,
    WsStart,
    WsToken,
    WsToolCall,
    WsToolResult,
    chat_request_from_ws,
    parse_ws_message,
)
from raychat.serve.security import ws_admission
from raychat.serve.stream import ClientCounts, TokenStream, record_failure

_DELTA = {"token": WsToken, "tool_call": WsToolCall, "tool_result": WsToolResult}


class Connections(ClientCounts):
    """Open sockets, globally and per client address."""

    def refusal(self, client: str) -> ApiError | None:
        lim = self.limits
        if self.total >= lim.max_connections:
            return ApiError(f"too many open connections ({lim.max_connections}); retry later", code="overloaded",
                            status=429)
        if lim.max_connections_per_client and self.per_client[client] >= lim.max_connections_per_client:
            return ApiError(f"too many open connections from this client (limit {lim.max_connections_per_client}); "
                            "close one first", code="overloaded", status=429)
        return None


async def _send(ws: WebSocket, msg) -> None:
    await ws.send_json(msg if isinstance(msg, dict) else msg.model_dump())


async def ws_session(api, ws: WebSocket) -> None:
    lim = api.config.limits
    refused, subprotocol = ws_admission(api, ws)
    client = client_addr(ws)
    await ws.accept(subprotocol=subprotocol)
    close = (1008, "unauthorized" if refused is not None and refused.status == 401 else "refused")
    if refused is None:
        refused, close = api.connections.refusal(client), (1013, "overloaded")
    if refused is not None:
        record_failure(api.metrics, refused)
        await _send(ws, refused.ws_message())
        await ws.close(code=close[0], reason=close[1])
        return
    api.connections.add(client)
    task: asyncio.Task | None = None
    current: list[TokenStream | None] = [None]
    last_active = [time.monotonic()]  # the last frame received, or the end of the last chat
    try:
        while True:
            running = task is not None and not task.done()
            wait = lim.ws_idle_timeout_s - (0.0 if running else time.monotonic() - last_active[0])
            try:
                msg = await asyncio.wait_for(ws.receive(), max(wait, 0.001))
            except TimeoutError:
                if task is not None and not task.done():
                    continue  # a chat is streaming: the socket is busy, not idle
                if time.monotonic() - last_active[0] < lim.ws_idle_timeout_s:
                    continue  # the chat ended while we waited: idle time counts from its end
                await ws.close(code=1001, reason=f"idle for {lim.ws_idle_timeout_s:g} s")
                break
            if msg["type"] == "websocket.disconnect":
                break
            last_active[0] = time.monotonic()
            t0 = time.perf_counter()
            try:
                req = _chat_request(api, msg, task, current)
            except ApiError as e:
                api.metrics.observe_request()
                record_failure(api.metrics, e)
                await _send(ws, e.ws_message())
                continue
            if req is None:
                continue
            api.metrics.observe_request()
            current[0] = TokenStream(api, req, client, t0)  # set now: a stop in the next frame must find it
            task = asyncio.create_task(_run_chat(ws, current))
            task.add_done_callback(lambda _: last_active.__setitem__(0, time.monotonic()))
    except WebSocketDisconnect:
        pass
    finally:
        api.connections.remove(client)
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the socket is gone either way
                pass
        if current[0] is not None:  # a chat task cancelled before it ever ran never reached its finally
            await current[0].close()


def _chat_request(api, msg: dict, task: asyncio.Task | None, current: list) -> dict | None:
    """A frame -> the chat request to run, None for `stop`, or ApiError naming what is wrong."""
    lim = api.config.limits
    text = msg.get("text")
    if text is None:
        raise ApiError("binary frames are not supported: send JSON text frames")
    nbytes = len(text.encode("utf-8", "surrogatepass"))
    if nbytes > lim.max_frame_bytes:
        raise ApiError(f"frame of {nbytes} bytes exceeds the limit of {lim.max_frame_bytes} bytes",
                       code="request_too_large", status=413)
    parsed = parse_ws_message(text)
    if not isinstance(parsed, WsChat):  # stop: cancel the running chat, if any
        if current[0] is not None:
            current[0].cancel()
        return None
    if task is not None and not task.done():
        raise ApiError("a chat is already running on this connection: wait for done or send stop first",
                       code="overloaded", status=429)
    return chat_request_from_ws(parsed, lim)


async def _run_chat(ws: WebSocket, current: list) -> None:
    ts: TokenStream = current[0]
    try:
        try:
            await ts.open()
        except ApiError as e:
            await _send(ws, e.ws_message())
            return
        await _send(ws, WsStart(id=ts.id))
        try:
            async for ev in ts:
                if ev["type"] == "done":
                    await _send(ws, WsDone(finish_reason=ts.finish_reason, usage=ts.usage(), timings=ts.timings()))
                else:
                    await _send(ws, _DELTA[ev["type"]](text=ev["text"]))
        except ApiError as e:
            await _send(ws, e.ws_message())
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left mid-stream; close() below cancels the engine request
    finally:
        if current[0] is ts:
            current[0] = None
        await ts.close()
