"""asyncio front of the Engine: the step loop runs in one background thread, each request streams its events
into its own asyncio queue.

    aeng = AsyncEngine(engine)
    async for ev in aeng.generate(prompt_ids, params):   # TokenEvent, the last one has finish_reason set
        ...
    # leaving the loop early (break, an exception, client disconnect cancelling the task) or aclose() on the
    # iterator cancels the request: its KV-cache slot is free at the next step.

Why a thread and not `await asyncio.to_thread(engine.step)` per step: the engine is not thread-safe and a step
must never overlap another; one owner thread that also applies adds/cancels between steps keeps it
single-threaded without locks. The asyncio side only talks to it through a command queue (add, cancel) and
receives events through `loop.call_soon_threadsafe`, once per step per event loop (not per token). Torch
releases the GIL inside its kernels, so the event loop stays responsive while a step computes.

Validation (prompt too long, bad params) runs in the caller, so errors raise at the `generate` call site
(before the first event) with the engine's own messages (ContextLengthError for an over-long prompt).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Sequence

from raychat.engine.engine import Engine
from raychat.engine.sampling import SamplingParams
from raychat.engine.sequence import TokenEvent


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[object, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stats = engine.stats()
        self.num_steps = 0

    # ---- public ---------------------------------------------------------------------------------------------
    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams | None = None,
                       request_id=None) -> AsyncIterator[TokenEvent]:
        """Stream a request's events. All num_samples completions arrive on this one iterator."""
        params = params or SamplingParams()
        prompt = self.engine.check_request(prompt_ids, params)  # raises here, in the caller
        rid = f"async-{next(self._ids)}" if request_id is None else request_id
        if rid in self._streams:
            raise ValueError(f"request id {rid!r} is already streaming")
        q: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = (asyncio.get_running_loop(), q)
        self._cmds.put(("add", rid, prompt, params))
        self.start()
        remaining, done = params.num_samples, False
        try:
            while remaining:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                for ev in item:
                    if ev.finish_reason is not None:
                        remaining -= 1
                        done = remaining == 0
                    yield ev
        finally:
            self._streams.pop(rid, None)
            if not done:
                self._cmds.put(("cancel", rid))

    def cancel(self, request_id) -> None:
        """Cancel from anywhere (a 'stop' message); the stream then ends with a 'cancelled' event."""
        self._cmds.put(("cancel", request_id))

    def stats(self) -> dict:
        """The engine's gauges as of the last step (safe to read from any thread)."""
        return dict(self._stats)

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="raychat-engine", daemon=True)
                self._thread.start()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the loop thread (pending requests are dropped); start() or a new generate() restarts it."""
        if self._thread is not None and self._thread.is_alive():
            self._cmds.put(("stop",))
            self._thread.join(timeout)
        self._thread = None

    # ---- the loop thread ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        eng = self.engine
        while True:
            cmd = self._cmds.get() if not eng.has_work() else None  # idle: sleep until a command arrives
            while True:
                if cmd is not None:
                    if cmd[0] == "stop":
                        eng.abort_all()
                        return
                    self._apply(cmd)
                try:
                    cmd = self._cmds.get_nowait()
                except queue.Empty:
                    break
            if not eng.has_work():
                continue
            try:
                events = eng.step()
            except Exception as e:  # noqa: BLE001 - fail the streams, keep serving new requests
                eng.abort_all()
                self._fail_all(e)
                continue
            self.num_steps += 1
            self._stats = eng.stats()
            self._dispatch(events)

    def _apply(self, cmd) -> None:
        if cmd[0] == "add":
            _, rid, prompt, params = cmd
            if rid not in self._streams:  # the caller already went away
                return
            try:
                self.engine.add_request(prompt, params, request_id=rid)
            except Exception as e:  # noqa: BLE001 - delivered to the caller
                self._deliver_to(rid, e)
        elif cmd[0] == "cancel":
            self.engine.cancel(cmd[1])

    def _dispatch(self, events: list[TokenEvent]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, dict] = {}
        for ev in events:
            stream = self._streams.get(ev.request_id)
            if stream is None:
                continue  # the consumer left; its cancel is already queued
            by_loop.setdefault(stream[0], {}).setdefault(ev.request_id, []).append(ev)
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._put_batch, batch)
            except RuntimeError:  # that event loop is closed
                pass

    def _put_batch(self, batch: dict) -> None:  # runs in the consumer's event loop
        for rid, evs in batch.items():
            stream = self._streams.get(rid)
            if stream is not None:
                stream[1].put_nowait(evs)

    def _deliver_to(self, rid, item) -> None:
        stream = self._streams.get(rid)
        if stream is not None:
            try:
                stream[0].call_soon_threadsafe(stream[1].put_nowait, item)
            except RuntimeError:
                pass

    def _fail_all(self, exc: BaseException) -> None:
        for rid in list(self._streams):
            self._deliver_to(rid, RuntimeError(f"engine step failed: {type(exc).__name__}: {exc}"))
