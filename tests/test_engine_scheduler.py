"""The engine's bookkeeping alone, pure Python: KV capacity from a budget, the slot table's prefix index (LCP
matching, in-place reuse vs copy, LRU eviction, cancellation keeping what was computed) and the scheduler's
admission and prefill budget (whole prompts vs chunks)."""

from __future__ import annotations

import random

import pytest

from raychat.engine.kv_slots import SlotTable, common_prefix_len, kv_bytes_per_slot, slots_for_budget
from raychat.engine.sampling import SamplingParams
from raychat.engine.scheduler import Scheduler
from raychat.engine.sequence import Request


def _req(rid, n=1, plen=3, prompt=None):
    prompt = prompt if prompt is not None else [1] * plen
    return Request(rid, prompt, SamplingParams(num_samples=n), [random.Random(0)] * n, frozenset(), 64)


def _sched(num_slots, prefix_caching=False, **kw):
    released = []
    s = Scheduler(SlotTable(num_slots, 64, prefix_caching=prefix_caching),
                  on_release=lambda r, n: released.append((r, n)), **kw)
    return s, released


# ---- capacity ----------------------------------------------------------------------------------------------
def test_slot_bytes_and_budget():
    # d4-like: 4 layers, 4 KV heads of 64, 1,024 positions, fp32 + a 256-wide smear row, counted by hand
    b = kv_bytes_per_slot(4, 4, 64, 1024, 4, n_embd=256)
    assert b == 2 * 4 * 1024 * 4 * 64 * 4 + 256 * 4
    assert slots_for_budget(10 * b + b // 2, b, 64) == 10
    assert slots_for_budget(1000 * b, b, 64) == 64  # capped at max_num_seqs
    with pytest.raises(ValueError, match="holds no sequence"):
        slots_for_budget(b - 1, b, 64)


def test_common_prefix_len_against_a_plain_loop():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randrange(0, 300)
        a = [rng.randrange(3) for _ in range(n)]
        b = a[: rng.randrange(0, n + 1)] + [rng.randrange(3) for _ in range(rng.randrange(0, 100))]
        ref = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert common_prefix_len(a, b) == ref


# ---- slot table ----------------------------------------------------------------------------------------------
def test_free_slot_with_the_longest_match_is_reused_in_place_and_counted():
    t = SlotTable(3, 64)
    (a,) = t.allocate([1, 2, 3, 4, 5])
    assert (a.row, a.reuse, a.src) == (0, 0, None)  # never-used slots first, lowest index
    t.extend(0, [1, 2, 3, 4, 5, 9])
    assert t.release(0) == 6
    (b,) = t.allocate([1, 2, 3, 4, 5, 9, 7, 7])  # the next turn of the same conversation
    assert (b.row, b.reuse, b.src) == (0, 6, None)
    assert t.tokens[0] == [1, 2, 3, 4, 5, 9]
    assert (t.queries, t.hits) == (13, 6)


def test_at_most_prompt_minus_one_tokens_are_reused():
    t = SlotTable(2, 64)
    t.allocate([1, 2, 3])
    t.extend(0, [1, 2, 3])
    t.release(0)
    (a,) = t.allocate([1, 2, 3])  # the same prompt again: the last token is fed for its logits
    assert (a.row, a.reuse) == (0, 2) and t.tokens[0] == [1, 2]


def test_prefix_held_by_a_busy_slot_is_copied_into_a_free_one():
    t = SlotTable(3, 64)
    t.allocate([5, 6, 7, 8])
    t.extend(0, [5, 6, 7, 8])  # still running
    (a,) = t.allocate([5, 6, 7, 1, 1])  # a shared system prompt
    assert (a.row, a.reuse, a.src) == (1, 3, 0)
    assert t.tokens[1] == [5, 6, 7]


def test_lru_eviction_and_no_reuse_when_disabled():
    t = SlotTable(2, 64)
    for row, p in ((0, [1, 1]), (1, [2, 2])):
        t.allocate(p)
        t.extend(row, p)
    t.release(1)  # released first: least recently used
    t.release(0)
    (a,) = t.allocate([3, 3])
    assert a.row == 1 and a.reuse == 0 and t.tokens[1] == []
    (b,) = t.allocate([1, 1, 4])  # slot 0 still holds [1, 1]
    assert (b.row, b.reuse) == (0, 2)
    off = SlotTable(2, 64, prefix_caching=False)
    off.allocate([1, 2, 3])
    off.extend(0, [1, 2, 3])
    assert off.release(0) == 0
    assert off.allocate([1, 2, 3, 4])[0].reuse == 0 and off.hits == 0


def test_release_keeps_at_most_max_seq_len_minus_one():
    t = SlotTable(1, 8)
    t.allocate([1])
    t.extend(0, list(range(8)))
    assert t.release(0) == 7


def test_allocate_needs_all_samples_free():
    t = SlotTable(3, 64)
    t.allocate([1], n=2)
    assert t.allocate([1], n=2) is None and t.queries == 1  # nothing counted for a request that must wait
    assert [a.row for a in t.allocate([1], n=1)] == [2]


# ---- scheduler -----------------------------------------------------------------------------------------------
def test_scheduler_fcfs_slots_lowest_first_and_no_queue_jumping():
    s, released = _sched(4)
    for r in (_req("a", 2), _req("b", 3), _req("c", 1)):
        s.add(r)
    admitted = s.admit()
    assert [r.request_id for r, _ in admitted] == ["a"]  # b needs 3 slots, only 2 free; c must not jump ahead
    assert sorted(s.running) == [0, 1]
    s.release(s.running[0])
    s.release(s.running[1])
    assert released == [(0, 0), (1, 0)]
    assert [r.request_id for r, _ in s.admit()] == ["b", "c"]
    assert sorted(s.running) == [0, 1, 2, 3]


def test_whole_prompt_prefill_budget():
    s, _ = _sched(4, max_prefill_tokens=5)
    for r in (_req("a", plen=4), _req("b", plen=4), _req("c")):
        s.add(r)
    s.admit()
    assert [(r.request_id, a, b) for r, a, b in s.prefill_plan()] == [("a", 0, 4)]  # b would exceed the budget
    assert s.cancel("b") and not s.cancel("zzz")
    assert [r.request_id for r in s.reap_cancelled()] == ["b"]
    s.prefilled(s.requests["a"])
    assert [(r.request_id, a, b) for r, a, b in s.prefill_plan()] == [("c", 0, 3)]


def test_chunked_prefill_splits_long_prompts_in_admission_order():
    s, _ = _sched(4, prefill_chunk=4)
    s.add(_req("long", plen=10))
    s.add(_req("short", plen=2))
    s.admit()
    plans = []
    while s.prefilling:
        plan = s.prefill_plan()
        plans.append([(r.request_id, a, b) for r, a, b in plan])
        for r, _, b in plan:
            r.sequences[0].num_cached = b
            if b == len(r.prompt):
                s.prefilled(r)
    assert plans == [[("long", 0, 4)], [("long", 4, 8)], [("long", 8, 10), ("short", 0, 2)]]
    s.add(_req("alone", plen=10))
    s.admit()
    assert [(r.request_id, a, b) for r, a, b in s.prefill_plan(decoding=0)] == [("alone", 0, 10)]
    assert [(r.request_id, a, b) for r, a, b in s.prefill_plan(decoding=16)] == [("alone", 0, 8)]  # 4 x 16/8
    with pytest.raises(ValueError, match="prefill_chunk"):
        _sched(2, prefill_chunk=0)


def test_admission_starts_the_prefill_after_the_reused_prefix_and_cancel_keeps_it():
    s, released = _sched(2, prefix_caching=True, prefill_chunk=3)
    s.add(_req("t1", prompt=[1, 2, 3, 4, 5, 6]))
    s.admit()
    req = s.requests["t1"]
    (_, a, b), = s.prefill_plan()
    s.slots.extend(0, req.prompt[a:b])
    req.sequences[0].num_cached = b
    assert s.cancel("t1") and s.reap_cancelled()  # cancelled mid-prefill: the 3 computed tokens stay cached
    assert released == [(0, 3)] and not s.prefilling
    s.add(_req("t2", prompt=[1, 2, 3, 9]))
    ((r, (alloc,)),) = s.admit()
    assert (alloc.row, alloc.reuse) == (0, 3) and r.sequences[0].num_cached == 3
    assert [(x.request_id, a, b) for x, a, b in s.prefill_plan()] == [("t2", 3, 4)]
