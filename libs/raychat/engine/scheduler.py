"""The continuous-batching scheduler: which requests wait, which hold which KV-cache slot, and how much prompt is
prefilled in each step. Pure Python; the slots and the prefix index are kv_slots.SlotTable.

Policy (first come, first served):
- a request needs `num_samples` free slots at once (its completions share one prefill); the head of the queue
  is admitted when they are free, and nothing behind it jumps the queue (no starvation of big requests).
  Admission only assigns slots (with the prefix match); the prompt is prefilled by the steps that follow;
- prefill work per step is capped by a token budget, handed out in admission order:
  - `prefill_chunk=N` (chunked prefill): while sequences decode, at most N prompt tokens per step (N x D/8
    with D > 8 decoding sequences: a decode step of many rows takes longer, so a chunk in proportion keeps
    its share of the step, and prefill does not starve under load), a long prompt split over several steps,
    and every step also decodes the running sequences, so they keep their pace while a long prompt comes in
    (vLLM's chunked prefill; the runner packs chunk and decode into one forward where it can). With nothing
    decoding, prompts go whole (no one waits on them);
  - `prefill_chunk=None`: whole prompts, up to `max_prefill_tokens` per step (the first one regardless, so
    progress is certain), and a step either prefills or decodes (prefill first, so a new request's first token
    is not held back by a decode step of the whole batch);
- a cancelled request leaves at the next step (its slots are freed then, not from another thread).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from raychat.engine.kv_slots import Allocation, SlotTable
from raychat.engine.sequence import Request, Sequence, Status


class Scheduler:
    def __init__(self, slots: SlotTable, prefill_chunk: int | None = None, max_prefill_tokens: int = 4096,
                 on_release: Callable[[int, int], None] | None = None):
        """on_release(row, kept): called when a slot is freed, with the number of its tokens kept cached."""
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1 (or None: no chunking), got {prefill_chunk}")
        self.slots = slots
        self.prefill_chunk = prefill_chunk
        self.max_prefill_tokens = max_prefill_tokens
        self.on_release = on_release
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []      # admitted, prompt not fully in the cache yet (admission order)
        self.running: dict[int, Sequence] = {}   # row -> sequence, for every sequence holding a slot
        self.requests: dict[object, Request] = {}  # every request not yet reported finished
        self._cancelled: list[Request] = []

    @property
    def num_slots(self) -> int:
        return self.slots.num_slots

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

    def decoding(self) -> dict[int, Sequence]:
        """Row -> sequence for the sequences past their prefill (each has an emitted token to feed)."""
        return {r: s for r, s in self.running.items() if s.last_token is not None}

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
        """Requests cancelled since the last step: removed from the queue or their slots freed (what they had
        prefilled or generated stays cached for a later prompt with the same prefix)."""
        out = [r for r in self._cancelled if r.request_id in self.requests]
        self._cancelled = []
        for req in out:
            if req.status is Status.WAITING:
                self.waiting.remove(req)
            else:
                if req in self.prefilling:
                    self.prefilling.remove(req)
                for seq in req.sequences:
                    if seq.row is not None:
                        self.release(seq)
            req.status = Status.FINISHED
            self.requests.pop(req.request_id, None)  # release() may have dropped it already
        return out

    def admit(self) -> list[tuple[Request, list[Allocation]]]:
        """Give slots to the waiting requests that fit now (FCFS). Returns each with its allocations: the first
        sequence's prefix match (`reuse` tokens, from `src` if another slot holds them) and the others' slots."""
        admitted = []
        while self.waiting:
            req = self.waiting[0]
            allocs = self.slots.allocate(req.prompt, req.num_rows)
            if allocs is None:
                break
            self.waiting.popleft()
            for seq, a in zip(req.sequences, allocs):
                seq.row = a.row
                self.running[a.row] = seq
            req.sequences[0].num_cached = allocs[0].reuse
            req.status = Status.RUNNING
            self.prefilling.append(req)
            admitted.append((req, allocs))
        return admitted

    def prefill_plan(self, decoding: int = 1) -> list[tuple[Request, int, int]]:
        """This step's prefill work: (request, start, end) prompt slices, in admission order, within the budget.
        decoding: how many sequences decode in this step; with none, nothing is held up and prompts go whole."""
        plan: list[tuple[Request, int, int]] = []
        chunked = self.prefill_chunk is not None and decoding > 0
        budget = max(self.prefill_chunk, self.prefill_chunk * decoding // 8) if chunked else self.max_prefill_tokens
        for req in self.prefilling:
            start = req.sequences[0].num_cached
            left = len(req.prompt) - start
            if not chunked:
                if plan and left > budget:
                    break
                take = left
            else:
                take = min(left, budget)
            plan.append((req, start, start + take))
            budget -= take
            if budget <= 0:
                break
        return plan

    def prefilled(self, req: Request) -> None:
        """The request's prompt is fully in the cache (its first tokens are being emitted)."""
        self.prefilling.remove(req)

    def release(self, seq: Sequence) -> None:
        """A sequence finished (or was cancelled): its slot is free for the next admission."""
        if seq.row is None:
            return
        row = seq.row
        del self.running[row]
        seq.row = None
        kept = self.slots.release(row)
        if self.on_release is not None:
            self.on_release(row, kept)
        req = seq.request
        if req.status is Status.RUNNING and all(s.row is None for s in req.sequences):
            req.status = Status.FINISHED
            self.requests.pop(req.request_id, None)
            if req in self.prefilling:
                self.prefilling.remove(req)
