"""Engine behaviour with a scripted mock model (no checkpoint, fast): sampling numerics against a reference,
stop conditions, tool use, num_samples sharing a prefill, continuous batching, cancellation, queueing."""

from __future__ import annotations

import pytest
import torch
from scripted_model import A_END, OUT_E, OUT_S, PY_E, PY_S, TOK, scripted

from raychat.common import RaychatError
from raychat.engine import ContextLengthError, Engine, SamplingParams
from raychat.engine.sampling import reference_probs, sample_rows


def prompt(text: str = "hi") -> list[int]:
    return TOK.render_for_completion({"messages": [{"role": "user", "content": text}]})


GREEDY = SamplingParams(temperature=0.0, max_tokens=64)


# ---- sampling --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [
    SamplingParams(temperature=1.0, top_k=None),
    SamplingParams(temperature=0.7, top_k=5),
    SamplingParams(temperature=1.3, top_k=None, top_p=0.6),
    SamplingParams(temperature=1.0, top_k=20, top_p=0.9),
])
def test_sample_rows_matches_reference_distribution(p):
    # uniforms on a fine grid turn inverse-CDF sampling into an exact histogram of the distribution
    torch.manual_seed(0)
    V, N = 64, 20000
    logits = torch.randn(V) * 2
    u = [(i + 0.5) / N for i in range(N)]
    toks = sample_rows(logits.expand(N, V), [p] * N, u)
    freq = torch.bincount(toks, minlength=V).double() / N
    ref = reference_probs(logits, p)
    assert torch.allclose(freq, ref, atol=2.0 / N + 1e-4), (freq - ref).abs().max()
    assert set(toks.tolist()) <= set(torch.nonzero(ref).flatten().tolist())


def test_sample_rows_mixed_params_per_row():
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    params = [SamplingParams(top_k=1), SamplingParams(top_k=None, top_p=1e-6), SamplingParams(top_k=50)]
    toks = sample_rows(logits, params, [0.99, 0.99, 0.0]).tolist()
    assert toks[0] == int(logits[0].argmax())  # top_k=1 is greedy whatever the uniform
    assert toks[1] == int(logits[1].argmax())  # a tiny top_p keeps only the most likely token
    assert toks[2] == int(logits[2].topk(50).indices[0])  # u=0 picks the first token of the sorted CDF


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5),
                                dict(max_tokens=0), dict(num_samples=0), dict(seed="x")])
def test_sampling_params_validation(kw):
    with pytest.raises(RaychatError):
        SamplingParams(**kw)


# ---- engine with the scripted model ---------------------------------------------------------------------
def test_greedy_follows_script_and_stops_on_assistant_end():
    eng = Engine(scripted("Hello there!"), TOK)
    (c,) = eng.generate_many([prompt()], GREEDY)[0]
    assert TOK.decode(c.tokens) == "Hello there!"
    assert c.finish_reason == "stop" and c.stop_token == A_END and c.mask == [1] * len(c.tokens)
    assert not eng.has_work() and eng.stats()["free_slots"] == eng.max_batch_size


def test_stop_conditions_user_stop_ids_max_tokens_and_context():
    eng = Engine(scripted("abcdefgh"), TOK)
    (c,) = eng.generate_many([prompt()], SamplingParams(temperature=0, stop_token_ids=[ord("d")]))[0]
    assert TOK.decode(c.tokens) == "abc" and c.finish_reason == "stop" and c.stop_token == ord("d")
    (c,) = eng.generate_many([prompt()], SamplingParams(temperature=0, max_tokens=3))[0]
    assert TOK.decode(c.tokens) == "abc" and c.finish_reason == "length"
    p = prompt()
    small = Engine(scripted("abcdefgh"), TOK, max_seq_len=len(p) + 2)
    (c,) = small.generate_many([p], GREEDY)[0]
    # prompt fills len(p) positions; tokens 1 and 2 are fed, the third has no room: finish "length"
    assert TOK.decode(c.tokens) == "abc" and c.finish_reason == "length"
    with pytest.raises(ContextLengthError, match="exceeds the context"):
        small.add_request(p + [1, 2, 3], GREEDY)
    with pytest.raises(RaychatError, match="empty prompt"):
        small.add_request([], GREEDY)
    with pytest.raises(RaychatError, match="num_samples"):
        small.add_request(p, SamplingParams(num_samples=99))


def test_tool_use_forces_calculator_output():
    script = TOK.encode("Sum: ") + [PY_S] + TOK.encode("12*3+1") + [PY_E] + TOK.encode(" done") + [A_END]
    calls = []

    def tool(expr):
        calls.append(expr)
        return "37"

    eng = Engine(scripted(script), TOK, tool_fn=tool)
    rid = eng.add_request(prompt(), GREEDY)
    events = []
    while eng.has_work():
        events += eng.step()
    assert calls == ["12*3+1"]
    forced = [e.token_id for e in events if e.forced]
    assert forced == [OUT_S, *TOK.encode("37"), OUT_E]
    toks = [e.token_id for e in events]
    assert TOK.decode(toks) == ("Sum: <|python_start|>12*3+1<|python_end|><|output_start|>37<|output_end|> done"
                                "<|assistant_end|>")
    assert all(e.request_id == rid for e in events) and events[-1].finish_reason == "stop"
    assert eng.num_tool_calls == 1


def test_tool_use_with_real_calculator_and_mask():
    script = [PY_S] + TOK.encode("'strawberry'.count('r')") + [PY_E] + TOK.encode("=3") + [A_END]
    eng = Engine(scripted(script), TOK)  # default tool: raychat.tools.calculator.calculate
    (c,) = eng.generate_many([prompt()], GREEDY)[0]
    text = TOK.decode(c.tokens)
    assert text.endswith("<|output_start|>3<|output_end|>=3")
    forced_text = TOK.decode([t for t, m in zip(c.tokens, c.mask) if m == 0])
    assert forced_text == "<|output_start|>3<|output_end|>"
    # a hostile expression comes back as an error string in the tool output, never a crash
    script = [PY_S] + TOK.encode("__import__('os')") + [PY_E] + [A_END]
    (c,) = Engine(scripted(script), TOK).generate_many([prompt()], GREEDY)[0]
    assert "<|output_start|>Error:" in TOK.decode(c.tokens)


def test_tool_use_disabled_without_tokenizer():
    script = [PY_S] + TOK.encode("1+1") + [PY_E] + [A_END]
    specials = {"<|bos|>": TOK.bos_id, "<|assistant_end|>": A_END}
    (c,) = Engine(scripted(script), specials).generate_many([prompt()], GREEDY)[0]
    assert c.tokens == script[:-1] and all(m == 1 for m in c.mask)


def test_num_samples_share_one_prefill_and_seeds_reproduce():
    model = scripted("the quick brown fox jumps", noise=3.0, peak=2.0)
    eng = Engine(model, TOK, max_batch_size=4)
    params = SamplingParams(temperature=1.0, top_k=None, seed=123, num_samples=4, max_tokens=12)
    before = model.num_forwards
    a = eng.generate(prompt(), params)
    n_steps = max(len(x) for x in a)
    assert model.num_forwards - before <= n_steps  # 1 prefill + (n_steps - 1) decodes, not 4 prefills
    assert len({tuple(x) for x in a}) > 1  # samples differ from each other
    assert eng.generate(prompt(), params) == a  # same seed, same samples
    assert eng.generate(prompt(), SamplingParams(**{**params.__dict__, "seed": 124})) != a
    # a request's samples do not depend on what else runs in the batch
    other = eng.add_request(prompt("other"), SamplingParams(temperature=1.0, seed=7, max_tokens=30))
    res = eng.generate_many([prompt()], params)[0]
    assert [c.tokens for c in res] == a
    assert eng.has_work()  # the other request's events were kept for the next step() ...
    evs = []
    while eng.has_work():
        evs += eng.step()
    assert {e.request_id for e in evs} == {other} and evs[-1].finish_reason is not None


def test_greedy_identical_alone_and_joining_a_running_batch():
    model = scripted("abcdefghijklmnop")
    alone = Engine(model, TOK).generate(prompt("x"), GREEDY)[0]
    eng = Engine(model, TOK, max_batch_size=4)
    eng.add_request(prompt("first"), GREEDY)
    for _ in range(5):
        eng.step()
    rid = eng.add_request(prompt("x"), GREEDY)  # joins mid-way, into slot 1
    got = []
    while eng.has_work():
        got += [e.token_id for e in eng.step() if e.request_id == rid and e.finish_reason != "stop"]
    assert got == alone


def test_cancel_frees_slot_and_full_cache_queues():
    model = scripted("z" * 40)
    eng = Engine(model, TOK, max_batch_size=2)
    params = SamplingParams(temperature=0.0, max_tokens=30)
    r0, r1, r2 = (eng.add_request(prompt(str(i)), params) for i in range(3))
    eng.step()  # prefill r0, r1; r2 waits: no slot
    assert eng.stats()["running"] == 2 and eng.stats()["waiting"] == 1
    for _ in range(3):
        eng.step()
    assert eng.stats()["waiting"] == 1  # still queued, not failed
    assert eng.cancel(r0)
    evs = eng.step()
    assert any(e.request_id == r0 and e.finish_reason == "cancelled" and e.token_id == -1 for e in evs)
    assert any(e.request_id == r2 for e in evs)  # r2 took r0's slot in the same step
    assert eng.stats()["running"] == 2 and eng.stats()["waiting"] == 0
    assert not eng.cancel(r0)  # already gone
    assert eng.cancel(r1) and eng.cancel(r2)
    eng.step()
    assert not eng.has_work() and eng.stats()["free_slots"] == 2
    # a waiting request can be cancelled too
    eng2 = Engine(model, TOK, max_batch_size=1)
    a, b = eng2.add_request(prompt(), params), eng2.add_request(prompt(), params)
    eng2.step()
    eng2.cancel(b)
    evs = eng2.step()
    assert [e.finish_reason for e in evs if e.request_id == b] == ["cancelled"]
    assert eng2.stats()["waiting"] == 0 and a is not None


def test_decode_rows_full_equals_prefix():
    model = scripted("mnopqrstuvwxyz", noise=3.0, peak=2.0)
    params = SamplingParams(temperature=0.9, seed=5, max_tokens=10)
    prompts = [prompt(str(i)) for i in range(5)]
    a = Engine(model, TOK, max_batch_size=8).generate_many(prompts, params)
    b = Engine(model, TOK, max_batch_size=8, decode_rows="full").generate_many(prompts, params)
    assert [[c.tokens for c in x] for x in a] == [[c.tokens for c in x] for x in b]
