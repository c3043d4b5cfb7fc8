"""The engine with the real GPT (random weights, fp32, CPU): KV-cached incremental decoding through the engine's
runner equals a full forward, and greedy output does not depend on batching, prefix reuse or chunked prefill."""

from __future__ import annotations

import pytest
import torch

from raychat.engine import Engine, SamplingParams
from raychat.engine.runner import ModelRunner, use_decode_layout
from raychat.model import GPT, GPTConfig

SPECIALS = {"<|bos|>": 0, "<|assistant_end|>": 1}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls gain nothing from a second thread, and on a box shared with other jobs OpenMP's spinning
    barrier makes 2 threads many times slower than 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_model(seed=0, **kw) -> GPT:
    cfg = dict(sequence_len=32, vocab_size=97, n_layer=4, n_head=4, n_kv_head=4, n_embd=64, window_pattern="SL",
               short_window_frac=0.25)
    cfg.update(kw)
    torch.manual_seed(seed)
    with torch.device("meta"):
        m = GPT(GPTConfig(**cfg))
    m.to_empty(device="cpu")
    m.init_weights()
    with torch.no_grad():  # wake up the zero-initialised parts so every path (smear, backout, ve gates) matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m.lm_head.weight.normal_(0, 0.3)  # logits well apart: greedy choices are not decided by rounding
    return m.eval()


@pytest.mark.parametrize("cfg", [
    dict(window_pattern="SL", short_window_frac=0.25),  # window 8 < the 40-token sequence
    dict(n_kv_head=2),                                    # grouped-query attention
    dict(n_kv_head=1, window_pattern="SSL", short_window_frac=0.2, smear=False, value_embeds=False),
])
def test_runner_incremental_decode_equals_full_forward(cfg):
    model = make_model(**cfg)
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(2, 97, (40,), generator=g).tolist()
    other = torch.randint(2, 97, (50,), generator=g).tolist()
    with torch.inference_mode():
        ref = model(torch.tensor([seq]))[0]  # (40, V) full forward
    runner = ModelRunner(model, max_batch_size=3, max_seq_len=64)
    P = 13
    runner.prefill(0, other[:20])           # a neighbour at a different length in row 0
    last = runner.prefill(1, seq[:P])       # the sequence under test, prefilled straight into slot 1
    got = [last[0]]
    for t in range(P, len(seq)):
        # rows 0 and 1 decode together; row 2 is a free slot inside the decoded prefix (a "hole")
        logits = runner.decode([other[20 + t - P], seq[t], 0], holes=[2])
        got.append(logits[1])
    got = torch.stack(got)  # predictions after positions P-1 .. 39
    torch.testing.assert_close(got, ref[P - 1:], atol=2e-5, rtol=1e-5)
    assert runner.cache.seqlens.tolist() == [20 + len(seq) - P, len(seq), 0]


def test_greedy_identical_alone_static_batch_and_joining_midway():
    model = make_model(seed=3, sequence_len=128, window_pattern="SSL")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 97, (n,), generator=g).tolist() for n in (5, 17, 9, 30)]
    params = SamplingParams(temperature=0.0, max_tokens=40)
    alone = [Engine(model, SPECIALS, max_batch_size=1).generate(p, params)[0] for p in prompts]
    assert len({t for a in alone for t in a}) > 10  # the model says something varied, not one repeated token
    static = Engine(model, SPECIALS, max_batch_size=4).generate_many(prompts, params)
    assert [c[0].tokens for c in static] == alone
    # continuous batching: requests arrive while others are half-way; with 3 slots one of them queues
    got = run_with_arrivals(Engine(model, SPECIALS, max_batch_size=3), prompts, [params] * len(prompts),
                            gap=lambda i: 3 + 4 * i)
    for i in range(len(prompts)):
        assert got[i] == alone[i], f"request {i} differs when batched"


def test_num_samples_greedy_copies_match_single():
    model = make_model(seed=5, sequence_len=64)
    p = list(range(2, 20))
    params = SamplingParams(temperature=0.0, max_tokens=20)
    one = Engine(model, SPECIALS).generate(p, params)[0]
    many = Engine(model, SPECIALS, max_batch_size=4).generate(p, SamplingParams(temperature=0.0, max_tokens=20,
                                                                                num_samples=3))
    assert many == [one] * 3


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphed"])
def test_freed_full_length_slot_does_not_overflow_the_cache(graphs):
    """Regression: a request that filled its slot to the context limit finishes, its slot becomes a hole in the
    decode span while a higher slot keeps running, and the hole's dummy token must not overflow (for the graphed
    decode's fixed-shape step it would read past the rotary table)."""
    cfg = GPTConfig(sequence_len=32, vocab_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, window_pattern="L")
    torch.manual_seed(0)
    with torch.device("meta"):
        m = GPT(cfg)
    m.to_empty(device="cpu")
    m.init_weights()
    eng = Engine(m, SPECIALS, max_batch_size=2, max_seq_len=32)
    spans = []
    if graphs:
        decode = emulate_cuda_graphs(eng).runner.graphed.decode
        eng.runner.graphed.decode = lambda tokens, holes: spans.append(len(tokens)) or decode(tokens, holes)
    long = eng.add_request([2] * 20, SamplingParams(temperature=0.0, max_tokens=100))    # fills slot 0 to 32
    short = eng.add_request([3] * 4, SamplingParams(temperature=0.0, max_tokens=40))     # slot 1 keeps going
    done = {}
    for _ in range(200):
        for ev in eng.step():
            if ev.finish_reason is not None:
                done[ev.request_id] = ev.finish_reason
        if not eng.has_work():
            break
    assert done == {long: "length", short: "length"}
    assert not graphs or 2 in spans  # graphed: the decode steps went through it, with the hole in the span


def test_decode_layout_keeps_values_and_outputs_and_survives_checkpoints(tmp_path):
    """runner.use_decode_layout re-lays the long weights (lm_head, c_fc) column-major, in place: same values, same
    state_dict, same logits; greedy output through the engine is unchanged; a second call does nothing; a
    state_dict saved from it loads into a fresh model, and one saved by a fresh model loads into it."""
    model = make_model(seed=7, sequence_len=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(2, 97, (2, 30), generator=torch.Generator().manual_seed(0))
    prompt = list(range(2, 14))
    params = SamplingParams(temperature=0.0, max_tokens=24)
    with torch.inference_mode():
        ref_logits = model(idx)
    ref_tokens = Engine(model, SPECIALS).generate(prompt, params)
    assert all(p.is_contiguous() for p in model.parameters())  # the default leaves a trainable model alone

    eng = Engine(model, SPECIALS, decode_layout=True)
    relaid = [n for n, p in model.named_parameters() if not p.is_contiguous()]
    assert sorted(relaid) == [f"blocks.{i}.mlp.c_fc.weight" for i in range(4)] + ["lm_head.weight"]
    assert model.lm_head.weight.stride() == (1, model.lm_head.weight.size(0))
    assert use_decode_layout(model) == 0  # idempotent
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.inference_mode():
        torch.testing.assert_close(model(idx), ref_logits, atol=2e-5, rtol=1e-5)
    assert eng.generate(prompt, params) == ref_tokens

    torch.save(model.state_dict(), tmp_path / "relaid.pt")
    fresh = make_model(seed=8, sequence_len=64)
    fresh.load_state_dict(torch.load(tmp_path / "relaid.pt"))
    with torch.inference_mode():
        torch.testing.assert_close(fresh(idx), ref_logits, atol=2e-5, rtol=1e-5)
    other = make_model(seed=9, sequence_len=64)
    model.load_state_dict(other.state_dict())  # copies into the re-laid storage
    assert not model.lm_head.weight.is_contiguous()
    with torch.inference_mode():
        torch.testing.assert_close(model(idx), other(idx), atol=2e-5, rtol=1e-5)


def test_inference_attention_drops_cudnn_sdpa_on_cuda_only():
    """cuDNN's SDPA builds a graph per new shape (every decode step has a new key length): inference forwards
    run with it switched off on CUDA, and the switch is undone afterwards; CPU is left alone."""
    from raychat.model.attention import inference_attention

    flags = torch.backends.cuda
    assert flags.cudnn_sdp_enabled()
    with inference_attention("cuda"):
        assert not flags.cudnn_sdp_enabled()
        assert flags.flash_sdp_enabled() and flags.mem_efficient_sdp_enabled() and flags.math_sdp_enabled()
    assert flags.cudnn_sdp_enabled()
    with inference_attention(torch.device("cpu")):
        assert flags.cudnn_sdp_enabled()


def test_engine_and_eval_forwards_run_without_cudnn_sdpa(monkeypatch):
    """Every attention call of the engine's prefill and decode, and of the CORE scoring forward, happens inside
    inference_attention (forced to its CUDA behaviour here, on CPU tensors)."""
    import torch.nn.functional as F

    import raychat.engine.runner as runner_mod
    import raychat.evals.core as core_mod
    from raychat.model.attention import inference_attention

    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*a, **k):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real_sdpa(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    for mod in (runner_mod, core_mod):
        monkeypatch.setattr(mod, "inference_attention", lambda device: inference_attention("cuda"))
    model = make_model(seed=3, sequence_len=64)
    out = Engine(model, SPECIALS, max_batch_size=2).generate_many([[5, 6, 7], [8, 9]], SamplingParams(
        temperature=0.0, max_tokens=6))
    assert len(out) == 2 and seen and not any(seen)
    n = len(seen)
    rows = [core_mod.Row(0, 0, [5, 6, 7, 8], 2, 4), core_mod.Row(1, 0, [9, 10, 11], 1, 3)]
    assert len(core_mod.score_rows(model, rows, pad_id=0, device="cpu")) == 2
    assert len(seen) > n and not any(seen)


def test_auto_decode_layout_relays_only_what_the_timing_picks(monkeypatch):
    """decode_layout="auto" asks ColumnMajorPick per weight shape (timed once per shape); only the weights it
    picks are re-laid; outputs are unchanged; a bad value is refused by name."""
    from raychat.engine.runner import ColumnMajorPick

    model = make_model(seed=5, sequence_len=64)
    prompt, params = list(range(2, 12)), SamplingParams(temperature=0.0, max_tokens=16)
    ref = Engine(model, SPECIALS).generate(prompt, params)
    asked = []

    def fake_timing(self, w):
        asked.append(tuple(w.shape))
        return w.size(0) == model.lm_head.weight.size(0)  # "column-major wins" for the lm_head shape only

    monkeypatch.setattr(ColumnMajorPick, "_faster_column_major", fake_timing)
    eng = Engine(model, SPECIALS, decode_layout="auto")
    relaid = [n for n, p in model.named_parameters() if not p.is_contiguous()]
    assert relaid == ["lm_head.weight"]
    assert sorted(set(asked)) == sorted(asked)  # one timing per distinct shape (the 4 c_fc share one)
    assert eng.generate(prompt, params) == ref
    with pytest.raises(ValueError, match="decode_layout must be True, False or 'auto'"):
        Engine(make_model(seed=5, sequence_len=64), SPECIALS, decode_layout="fast")


def test_column_major_pick_times_real_gemvs():
    """The real timing runs on this CPU and returns a decision per shape, memoised; re-laying never changes the
    weight it looked at."""
    from raychat.engine.runner import ColumnMajorPick

    pick = ColumnMajorPick(rounds=2, calls=2)
    w = torch.randn(512, 64)
    before = w.clone()
    first = pick(w)
    assert isinstance(first, bool) and pick(torch.randn(512, 64)) is first and len(pick.decided) == 1
    assert w.is_contiguous() and torch.equal(w, before)


def emulate_cuda_graphs(eng: Engine) -> Engine:
    """Give a CPU engine the GraphedDecode path (buckets, padding, static KV path, restored state), replaying by
    re-running the captured function instead of a CUDA graph."""
    from raychat.engine.runner import GraphedDecode

    def eager_replay(fn, device, pool):  # "replaying" re-runs fn into the same static output buffer
        out = fn()
        return (lambda: out.copy_(fn())), out

    eng.runner.graphed = GraphedDecode(eng.runner, capture=eager_replay)
    return eng


def greedy_alone_equals_captured(model, eng, prompts, lengths, what: str) -> list[int]:
    """Each prompt decoded alone (eager, batch 1) equals it decoded through eng's captured decode (CUDA graphs
    or compiled) with requests arriving at staggered steps; returns the batch sizes the captured decode ran."""
    alone = [Engine(model, SPECIALS, max_batch_size=1).generate(p, SamplingParams(temperature=0.0, max_tokens=n))[0]
             for p, n in zip(prompts, lengths)]
    spans = []
    decode = eng.runner.graphed.decode
    eng.runner.graphed.decode = lambda tokens, holes: spans.append(len(tokens)) or decode(tokens, holes)
    got = run_with_arrivals(eng, prompts, [SamplingParams(temperature=0.0, max_tokens=n) for n in lengths],
                            gap=lambda i: 2 + i)
    for i in range(len(prompts)):
        assert got[i] == alone[i], f"request {i} differs through the {what} decode"
    return spans


def run_with_arrivals(eng: Engine, prompts, params, gap) -> dict[int, list[int]]:
    """Add request i after gap(i) engine steps; step until done. -> {request index: generated tokens, without a
    final stop token}."""
    got, rids = {}, {}
    for i, p in enumerate(prompts):
        rids[eng.add_request(p, params[i])] = i
        for _ in range(gap(i)):
            for ev in eng.step():
                got.setdefault(rids[ev.request_id], []).append(ev.token_id)
    while eng.has_work():
        for ev in eng.step():
            got.setdefault(rids[ev.request_id], []).append(ev.token_id)
    return {i: t[:-1] if t[-1] in SPECIALS.values() else t for i, t in got.items()}


@pytest.mark.parametrize("cfg", [
    dict(window_pattern="SL", short_window_frac=0.25),
    dict(n_kv_head=2, window_pattern="SSL", short_window_frac=0.2),
])
def test_static_kv_path_equals_dynamic_path(cfg):
    """The fixed-shape decode path CUDA graphs capture (attention over every cache position, length mask, device
    gathers) gives the logits and cache state of the ordinary path, rows at different lengths."""
    import copy

    model = make_model(seed=2, sequence_len=64, **cfg)
    g = torch.Generator().manual_seed(4)
    runner = ModelRunner(model, max_batch_size=3, max_seq_len=48)
    for row, n in enumerate((5, 19, 11)):
        runner.prefill(row, torch.randint(2, 97, (n,), generator=g).tolist())
    snapshot = ([k.clone() for k in runner.cache.k], runner.cache.seqlens.clone(), runner.cache.prev_emb.clone())
    idx = torch.randint(2, 97, (3, 1), generator=g)
    with torch.inference_mode():
        ref = model(idx, kv_cache=runner.view(0, 3))
        ref_state = (runner.cache.seqlens.clone(), runner.cache.prev_emb.clone(), [k.clone() for k in runner.cache.k])
        for k, s in zip(runner.cache.k, snapshot[0]):
            k.copy_(s)
        runner.cache.seqlens.copy_(snapshot[1])
        runner.cache.prev_emb.copy_(snapshot[2])
        view = copy.copy(runner.view(0, 3))
        view.static = True
        got = model(idx, kv_cache=view)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
    assert torch.equal(runner.cache.seqlens, ref_state[0])
    torch.testing.assert_close(runner.cache.prev_emb, ref_state[1])
    for k, r in zip(runner.cache.k, ref_state[2]):
        torch.testing.assert_close(k, r)


def test_graphed_decode_gives_the_same_greedy_tokens_with_joins_holes_and_buckets():
    """Through GraphedDecode (emulated on CPU): 5 slots -> buckets 1, 2, 4, 5; requests join mid-way, finish
    and leave holes; every request's greedy tokens equal running it alone without graphs."""
    model = make_model(seed=3, sequence_len=128, window_pattern="SSL")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 97, (n,), generator=g).tolist() for n in (5, 17, 9, 30, 3, 12)]
    lengths = [40, 7, 25, 30, 33, 18]
    eng = emulate_cuda_graphs(Engine(model, SPECIALS, max_batch_size=5))
    assert eng.runner.graphed.buckets == [1, 2, 4, 5]
    assert eng.runner.cache.seqlens.tolist() == [0] * 5  # capture's warm-up left no trace
    spans = greedy_alone_equals_captured(model, eng, prompts, lengths, "graphed")
    assert {1, 3, 5} <= set(spans)  # padded into buckets 1, 4 and 5


def test_cuda_graphs_refused_off_cuda():
    from raychat.common import RaychatError

    with pytest.raises(RaychatError, match="cuda_graphs=True needs the model on a CUDA device"):
        ModelRunner(make_model(), max_batch_size=2, max_seq_len=32, cuda_graphs=True)


# ---- prefix reuse and chunked prefill -------------------------------------------------------------------------
NO_STOPS: dict = {}  # no stop token: every reply is max_tokens long, so the reuse counts are known exactly


def _conversation(g, turns=3, user=9):
    return [torch.randint(2, 97, (user,), generator=g).tolist() for _ in range(turns)]


def _turns(eng: Engine, users, max_tokens=6):
    """A multi-turn chat: each prompt is the previous prompt + reply + the next user message. -> replies."""
    prompt, replies = [0], []
    for u in users:
        prompt = prompt + u
        (reply,) = eng.generate(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens))
        replies.append(reply)
        prompt = prompt + reply
    return replies


@pytest.mark.parametrize("mode", ["eager", "chunked", "graphed"])
def test_multi_turn_prefix_reuse_gives_the_same_greedy_tokens(mode):
    """Turns 2.. of a conversation prefill only what is new (the hit counters say how much was reused) and
    generate exactly the tokens an engine without prefix caching generates."""
    model = make_model(seed=11, sequence_len=128, window_pattern="SSL", short_window_frac=0.1)
    users = _conversation(torch.Generator().manual_seed(1))
    ref = _turns(Engine(model, NO_STOPS, max_batch_size=2, prefix_caching=False), users)
    eng = Engine(model, NO_STOPS, max_batch_size=2, prefill_chunk=4 if mode == "chunked" else None,
                 prefix_caching=True)
    if mode == "graphed":
        emulate_cuda_graphs(eng)
    assert _turns(eng, users) == ref
    st = eng.stats()
    # turn 2 reuses bos + user 1 + reply 1 minus its last token (emitted, never fed); turn 3 likewise
    assert st["prefix_cache_hits"] == (1 + 9 + 5) + (1 + 9 + 6 + 9 + 5)
    assert st["prefix_cache_queries"] == (1 + 9) + (1 + 9 + 6 + 9) + (1 + 9 + 6 + 9 + 6 + 9)


def test_shared_prefix_copied_from_a_running_slot_lru_eviction_and_cancel():
    """A request whose prompt starts like a running one copies that slot's prefix; under memory pressure
    (2 slots, 3 conversations) the least recently used history goes; a request cancelled mid-prefill leaves
    what it computed for the next one. Every output equals the engine without prefix caching."""
    model = make_model(seed=12, sequence_len=128)
    g = torch.Generator().manual_seed(2)
    system = torch.randint(2, 97, (20,), generator=g).tolist()
    prompts = [[0] + system + torch.randint(2, 97, (4,), generator=g).tolist() for _ in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=8)
    ref = Engine(model, SPECIALS, max_batch_size=2, prefix_caching=False).generate_many(prompts, params)
    eng = Engine(model, SPECIALS, max_batch_size=2, prefix_caching=True)
    got = run_with_arrivals(eng, prompts, [params] * 3, gap=lambda i: 2)
    assert [got[i] for i in range(3)] == [c[0].tokens for c in ref]
    assert eng.stats()["prefix_cache_hits"] >= 2 * 21  # requests 2 and 3 reused bos + the system prompt
    # cancellation mid-prefill (chunks of 5 beside a decoding request): the 10 tokens computed are reused by
    # the same prompt afterwards
    eng = Engine(model, SPECIALS, max_batch_size=2, prefill_chunk=5, prefix_caching=True)
    eng.add_request(torch.randint(2, 97, (6,), generator=g).tolist(), SamplingParams(temperature=0.0, max_tokens=90))
    eng.step()
    long = [0] + system + system
    rid = eng.add_request(long, params)
    eng.step()
    eng.step()
    eng.cancel(rid)
    assert [e.finish_reason for e in eng.step() if e.request_id == rid] == ["cancelled"]
    assert eng.generate(long, params) == Engine(model, SPECIALS, prefix_caching=False).generate(long, params)
    assert eng.stats()["prefix_cache_hits"] == 10
    # after a weight update the cached prefixes are stale: reset_prefix_cache forgets them
    eng.reset_prefix_cache()
    eng.generate(long, params)
    assert eng.stats()["prefix_cache_hits"] == 10


def test_chunked_prefill_interleaves_with_decode_and_changes_no_token():
    """While a long prompt comes in 8 tokens a step, the running request emits a token in every step; both
    produce what they produce alone."""
    model = make_model(seed=13, sequence_len=128)
    g = torch.Generator().manual_seed(3)
    short, long = torch.randint(2, 97, (5,), generator=g).tolist(), torch.randint(2, 97, (60,), generator=g).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=20)
    alone = [Engine(model, NO_STOPS, prefix_caching=False).generate(p, params)[0] for p in (short, long)]
    eng = Engine(model, NO_STOPS, max_batch_size=2, prefill_chunk=8)
    a = eng.add_request(short, params)
    got = {a: [e.token_id for e in eng.step()]}  # a's prefill + first token
    b = eng.add_request(long, params)
    per_step, got[b] = [], []
    while eng.has_work():
        evs = eng.step()
        per_step.append(sum(e.request_id == a for e in evs))
        for e in evs:
            got[e.request_id].append(e.token_id)
    assert per_step[:8] == [1] * 8  # 60 tokens = 8 chunks, each step with a decode of a beside it
    assert [got[a], got[b]] == alone


def test_packed_step_with_the_prefilling_row_inside_the_decode_span():
    """The chunk and the decode share one packed forward; when the prefilling row is a hole of the decode span
    (a finished request's slot taken by a new one below a running one) it still gets exactly its own keys,
    length and smear state: greedy tokens equal each request alone, and equal the unpacked engine's."""
    model = make_model(seed=14, sequence_len=128)
    g = torch.Generator().manual_seed(4)
    a, b, d = (torch.randint(2, 97, (n,), generator=g).tolist() for n in (4, 6, 50))
    pa, pb, pd = (SamplingParams(temperature=0.0, max_tokens=n) for n in (3, 40, 10))
    alone = [Engine(model, NO_STOPS, prefix_caching=False).generate(p, sp)[0] for p, sp in ((a, pa), (b, pb), (d, pd))]

    def run():
        eng = Engine(model, NO_STOPS, max_batch_size=2, prefill_chunk=8, prefix_caching=True)
        return run_with_arrivals(eng, [a, b, d], [pa, pb, pd], gap=lambda i: 5 if i == 1 else 0)

    assert [run()[i] for i in range(3)] == alone
    model.packs_kv = False  # the same steps as separate forwards
    try:
        assert [run()[i] for i in range(3)] == alone
    finally:
        del model.packs_kv


def test_capacity_from_a_memory_budget_and_clear_errors(capsys):
    """kv_cache_memory sizes the cache (slot bytes counted by hand: K and V per layer and position, plus the smear
    row), capped by max_batch_size, announced at start and reported in stats; bad budgets are refused by name."""
    from raychat.common import RaychatError

    model = make_model(sequence_len=64)  # 4 layers, 4 KV heads of 16, fp32
    slot = 2 * 4 * 64 * 4 * 16 * 4 + 64 * 4
    eng = Engine(model, SPECIALS, max_batch_size=16, kv_cache_memory=5 * slot + 100)
    assert eng.max_batch_size == 5 and eng.runner.cache.k[0].shape[0] == 5
    assert "KV-cache budget" in capsys.readouterr().err
    st = eng.stats()
    got = (st["kv_cache_slots"], st["kv_cache_capacity_tokens"], st["kv_cache_budget_bytes"])
    assert got == (5, 320, 5 * slot + 100)
    assert Engine(model, SPECIALS, max_batch_size=3, kv_cache_memory=100 * slot).max_batch_size == 3
    for kw, needle in [({"kv_cache_memory": slot - 1}, "holds no sequence"), ({"kv_cache_memory": 0}, "> 0 bytes"),
                       ({"gpu_memory_utilization": 0.5}, "needs the model on a CUDA device"),
                       ({"kv_cache_memory": slot, "gpu_memory_utilization": 0.5}, "not both")]:
        with pytest.raises(RaychatError, match=needle):
            Engine(model, SPECIALS, **kw)


def test_compiled_decode_matches_eager_tokens_and_logits():
    """Engine(compile_decode=True) on CPU: the decode step compiled by torch.compile in buckets 1, 2, 3 (3 slots).
    Its logits equal the eager runner's on the same cache state (rows at different lengths, a hole), and
    every request's greedy tokens, with joins, holes and bucket padding, equal running it alone eagerly."""
    model = make_model(seed=3, sequence_len=64, window_pattern="SSL")
    g = torch.Generator().manual_seed(0)
    eager, comp = ModelRunner(model, 3, 48), ModelRunner(model, 3, 48, compile_decode=True)
    assert comp.graphed is not None and comp.graphed.buckets == [1, 2, 3]
    assert comp.cache.seqlens.tolist() == [0] * 3  # the compile's warm-up left no trace
    for row, n in ((0, 5), (1, 19)):
        toks = torch.randint(2, 97, (n,), generator=g).tolist()
        eager.prefill(row, toks)
        comp.prefill(row, toks)
    for _ in range(4):  # rows 0 and 1 decode (bucket 2), then row 2 is a hole in bucket 3
        step = torch.randint(2, 97, (2,), generator=g).tolist()
        torch.testing.assert_close(comp.decode(step, []), eager.decode(step, []), atol=2e-5, rtol=1e-5)
    step = torch.randint(2, 97, (3,), generator=g).tolist()
    torch.testing.assert_close(comp.decode(step, [2]), eager.decode(step, [2]), atol=2e-5, rtol=1e-5)
    assert comp.cache.seqlens.tolist() == eager.cache.seqlens.tolist() == [10, 24, 0]
    torch.testing.assert_close(comp.cache.prev_emb, eager.cache.prev_emb)

    prompts = [torch.randint(2, 97, (n,), generator=g).tolist() for n in (5, 17, 9, 3)]
    lengths = [30, 7, 20, 25]
    eng = Engine(model, SPECIALS, max_batch_size=3, max_seq_len=48, compile_decode=True)
    spans = greedy_alone_equals_captured(model, eng, prompts, lengths, "compiled")
    assert {1, 2, 3} <= set(spans)


def test_compiled_decode_falls_back_to_eager_when_compiling_fails(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    model = make_model(seed=1)
    with pytest.warns(UserWarning, match="compiled decoding is off \\(RuntimeError: no C\\+\\+ compiler\\)"):
        eng = Engine(model, SPECIALS, max_batch_size=2, compile_decode=True)
    assert eng.runner.graphed is None
    p = SamplingParams(temperature=0.0, max_tokens=10)
    assert eng.generate([2, 3, 4], p) == Engine(model, SPECIALS).generate([2, 3, 4], p)
