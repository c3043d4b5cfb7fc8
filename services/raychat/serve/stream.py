"""The request gate and the per-request token stream of the ingress: who may start a generation now, and one
generation as the routes see it.

    api.gate.acquire(client)  /  release(client)         # in-flight bounds: global and per client address
    ts = TokenStream(api, request_dict, client_addr); start = await ts.open()   # ApiError on refusal
    async for ev in ts: ...          # token / tool_call / tool_result, then one "done"
    ts.cancel()                      # stop: the stream then ends with done(finish_reason="cancelled")
    await ts.close()                 # always (finally): cancels if unfinished, releases the slot

Accounting: every generation request ends in exactly one outcome in /metrics: a success (finish reason stop,
length or cancelled) or one failure (error code). `TokenStream` records its own outcome; the routes record the
refusals that happen before a stream exists (`record_failure`, once per ApiError). So
`request_success_total + request_failure_total == requests_total` whenever nothing is in flight.

Why `open()` catches BaseException: a client that disconnects (or a timeout) while the request is being routed
cancels the handler with CancelledError, which is no Exception; without it the slot stayed taken and the
engine request ran on (issue #17).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator

from raychat.chat import ReplyTimer
from raychat.serve.protocol import ApiError, Timings, Usage, new_id


def record_failure(metrics, e: ApiError) -> None:
    """Count a refusal once, however many layers see the same exception on its way out."""
    if not getattr(e, "recorded", False):
        e.recorded = True
        metrics.observe_failure(e.code)


class ClientCounts:
    """How many are open, in all and per client address (generations in flight, open sockets): the count both
    of the ingress's bounds check before admitting one more."""

    def __init__(self, limits):
        self.limits = limits
        self.total = 0
        self.per_client: Counter = Counter()

    def add(self, client: str) -> None:
        self.total += 1
        self.per_client[client] += 1

    def remove(self, client: str) -> None:
        self.total -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


class Gate(ClientCounts):
    """In-flight bounds: global per ingress replica and per client address. acquire() raises 429."""

    def acquire(self, client: str) -> None:
        lim = self.limits
        if self.total >= lim.max_concurrent_requests:
            raise ApiError(f"server is at capacity ({lim.max_concurrent_requests} requests in flight); retry "
                           f"after {lim.retry_after_s} s", code="overloaded", status=429)
        if lim.max_concurrent_per_client and self.per_client[client] >= lim.max_concurrent_per_client:
            raise ApiError(f"too many concurrent requests from this client (limit "
                           f"{lim.max_concurrent_per_client}); retry after {lim.retry_after_s} s",
                           code="overloaded", status=429)
        self.add(client)

    release = ClientCounts.remove


class TokenStream:
    """One generation as seen from the ingress: opens the engine stream, normalises its events, keeps the
    timings, records the metrics, and cancels the engine request if the consumer leaves early."""

    def __init__(self, api, request: dict, client: str, t0: float | None = None):
        self.api, self.request, self.client = api, request, client
        self.timer = ReplyTimer(t0)  # the chat layer's definition of TTFT / tokens per second / total
        self.t0 = self.timer.t0
        self.id = new_id("chatcmpl" if request["kind"] == "chat" else "cmpl")
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._t_step: float | None = None  # the replica's time of the previous text event ("t")
        self._gen = None
        self._slot = False
        self._cancelled = False
        self._recorded = False  # the outcome is in the metrics (success, cancelled or a failure)
        self._ended = False
        self._closed = False

    def _fail(self, e: ApiError) -> ApiError:
        self._recorded = True
        record_failure(self.api.metrics, e)
        return e

    async def open(self) -> dict:
        try:
            self.api.gate.acquire(self.client)
        except ApiError as e:
            raise self._fail(e) from None
        self._slot = True
        try:
            self._gen = self.api.client.generate(self.request)
            first = await self._gen.__anext__()
        except ApiError as e:
            self._fail(e)
            await self.close()
            raise
        except Exception as e:  # noqa: BLE001 - back-pressure, a dead replica: the client may retry
            if self._cancelled:  # stopped while being routed: the stream just ends with done(cancelled)
                self._ended = True
                return {"type": "start", "prompt_tokens": 0}
            await self.close()
            raise self._fail(self._unavailable(e)) from None
        except BaseException:  # CancelledError: the client left (or a timeout fired) before the first event
            await self.close()  # cancels the engine stream, counts the request as cancelled, frees the slot
            raise
        if first.get("type") == "error":
            err = ApiError(first["message"], code=first.get("code", "invalid_value"), status=first.get("status", 400),
                           param=first.get("param"))
            self._fail(err)
            await self.close()
            raise err
        self.prompt_tokens = first.get("prompt_tokens", 0)
        self.api.metrics.observe_queue(time.perf_counter() - self.t0)
        if self._cancelled:  # a stop arrived while the request was being routed
            self._gen.cancel()
        return first

    def _unavailable(self, e: Exception) -> ApiError:
        lim = self.api.config.limits
        if type(e).__name__ == "BackPressureError":
            return ApiError(f"engine queue is full; retry after {lim.retry_after_s} s", code="overloaded", status=429)
        return ApiError(f"engine unavailable ({type(e).__name__}); retry after {lim.retry_after_s} s",
                        code="unavailable", status=503)

    def cancel(self) -> None:
        """Stop (also before open() has finished: the engine request is then cancelled as soon as it exists)."""
        if self.finish_reason is None and not self._cancelled:
            self._cancelled = True
            if self._gen is not None:
                self._gen.cancel()

    async def __aiter__(self) -> AsyncIterator[dict]:
        m = self.api.metrics
        while True:
            if self._ended:  # stopped before the engine stream produced anything
                ev = {"type": "done", "finish_reason": "cancelled", "completion_tokens": 0}
            else:
                try:
                    ev = await self._gen.__anext__()
                except StopAsyncIteration:
                    ev = {"type": "done", "finish_reason": "stop", "completion_tokens": self.completion_tokens}
                except Exception as e:  # noqa: BLE001 - cancelled by our stop, or the replica died mid-stream
                    if not self._cancelled:
                        raise self._fail(self._unavailable(e)) from None
                    ev = {"type": "done", "finish_reason": "cancelled", "completion_tokens": self.completion_tokens}
            kind = ev.get("type")
            now = time.perf_counter()
            if kind == "error":
                raise self._fail(ApiError(ev.get("message", "engine error"), code=ev.get("code", "internal"),
                                          status=ev.get("status", 500)))
            n = ev.get("n", 0)
            if kind in ("token", "tool_call", "tool_result"):
                self.completion_tokens += n
                prev, t_prev = self.timer.t_last, self._t_step
                self.timer.tick(now)
                t_step = self._t_step = ev.get("t")
                if prev is None:
                    m.observe_first_token(now - self.t0)  # the replica sends the first token alone, at once
                elif n:  # the gap is shared by the n tokens this event carries (some complete no text alone)
                    # events travel several to an item (stream_interval): their gap is that of their engine
                    # steps, timed by the replica; arrival gaps only for a replica that sends no times
                    gap = t_step - t_prev if t_step is not None and t_prev is not None else now - prev
                    m.observe_itl(max(gap, 0.0), n)
                if kind == "tool_call":
                    m.observe_tool_call()
                yield ev
            elif kind == "done":
                self.completion_tokens = max(self.completion_tokens + n, ev.get("completion_tokens", 0))
                self.finish_reason = ev.get("finish_reason", "stop")
                if self.timer.t_first is not None:
                    self.timer.tick(now)
                self._recorded = True
                m.observe_finished(self.finish_reason, self.prompt_tokens, self.completion_tokens, now - self.t0)
                if ev.get("stats"):
                    self.api.remember_stats(ev["stats"])
                yield ev
                return

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)

    def timings(self) -> Timings:
        return Timings(**self.timer.timings(self.completion_tokens))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._gen is not None and self.finish_reason is None:
            self._cancelled = True
            self._gen.cancel()
        if not self._recorded:  # it was admitted and the client left before the end: a cancelled request
            self._recorded = True
            self.api.metrics.observe_finished("cancelled", self.prompt_tokens, self.completion_tokens,
                                              time.perf_counter() - self.t0)
        if self._slot:
            self._slot = False
            self.api.gate.release(self.client)
