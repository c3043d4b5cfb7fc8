"""The continuous-batching scheduler: which requests wait, which run in which KV-cache slot. Pure Python.

Policy (first come, first served):
- a request needs `num_samples` free slots at once (its completions share one prefill); the head of the queue
  is admitted when they are free, and nothing behind it jumps the queue (no starvation of big requests);
- admissions per step are capped by a prompt-token budget so that a burst of long prompts does not stall the
  running batch for many prefills in a row (the first admission ignores the budget, so progress is certain);
- slots are handed out lowest-first, so running rows stay packed at the front of the cache and a decode step
  can run on a prefix view rows[0:hi] instead of the whole preallocated batch;
- a cancelled request leaves at the next step (its slots are freed then, not from another thread).
"""

from __future__ import annotations

import heapq
from collections import deque

from raychat.engine.sequence import Request, Sequence, Status


class Scheduler:
    def __init__(self, num_slots: int, max_prefill_tokens: int = 4096):
        self.num_slots = num_slots
        self.max_prefill_tokens = max_prefill_tokens
        self.free_rows: list[int] = list(range(num_slots))  # a heap: lowest slot first
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Sequence] = {}  # row -> sequence
        self.requests: dict[object, Request] = {}  # every request not yet reported finished
        self._cancelled: list[Request] = []

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        if req.num_rows > self.num_slots:
            raise ValueError(f"num_samples={req.num_rows} exceeds the engine's {self.num_slots} slots")
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.requests)

    def num_running_requests(self) -> int:
        return len({id(s.request) for s in self.running.values()})

    # ---- the step's decisions ---------------------------------------------------------------------------
    def cancel(self, request_id) -> bool:
        """Mark a request cancelled; it leaves at the next step. False if it is unknown or already finished."""
        req = self.requests.get(request_id)
        if req is None or req.cancelled:
            return False
        req.cancelled = True
        self._cancelled.append(req)
        return True

    def reap_cancelled(self) -> list[Request]:
        """Requests cancelled since the last step: removed from the queue or their slots freed."""
        out = [r for r in self._cancelled if r.request_id in self.requests]
        self._cancelled = []
        for req in out:
            if req.status is Status.WAITING:
                self.waiting.remove(req)
            else:
                for seq in req.sequences:
                    if seq.row is not None:
                        self.release(seq)
            req.status = Status.FINISHED
            self.requests.pop(req.request_id, None)  # release() may have dropped it already
        return out

    def admit(self) -> list[Request]:
        """Pop the waiting requests that fit now; assign their slots (lowest first)."""
        admitted, budget = [], self.max_prefill_tokens
        while self.waiting:
            req = self.waiting[0]
            if req.num_rows > len(self.free_rows):
                break
            if admitted and len(req.prompt) > budget:
                break
            self.waiting.popleft()
            budget -= len(req.prompt)
            for seq in req.sequences:
                seq.row = heapq.heappop(self.free_rows)
                self.running[seq.row] = seq
            req.status = Status.RUNNING
            admitted.append(req)
        return admitted

    def release(self, seq: Sequence) -> None:
        """A sequence finished (or was cancelled): its slot is free for the next admission."""
        if seq.row is None:
            return
        del self.running[seq.row]
        heapq.heappush(self.free_rows, seq.row)
        seq.row = None
        req = seq.request
        if req.status is Status.RUNNING and all(s.row is None for s in req.sequences):
            req.status = Status.FINISHED
            self.requests.pop(req.request_id, None)

    def decode_span(self) -> int:
        """Rows 0..hi-1 cover every running sequence (the prefix a decode step computes)."""
        return max(self.running) + 1 if self.running else 0
