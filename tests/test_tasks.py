"""Tasks: views, mixtures, sequences, the shared-data sources (rendered conversations written out by hand from
the real files), checkers, and the synthetic tasks (self-consistent with the calculator)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from raychat.common import RaychatError
from raychat.tasks import (
    ARC,
    GSM8K,
    MMLU,
    ChatJsonl,
    HumanEval,
    Identity,
    SimpleArithmetic,
    SimpleSpelling,
    SpellingBee,
    Task,
    TaskMixture,
    TaskSequence,
    eval_task,
    extract_answer,
    rl_task,
    sft_mixture,
)
from raychat.tasks.common import same_number
from raychat.tasks.gsm8k import answer_to_parts
from raychat.tokenizer import Tokenizer
from raychat.tools.calculator import calculate


class Numbers(Task):
    """Example i is {"i": i}: makes index bookkeeping visible."""

    def __init__(self, n, tag="", **kw):
        super().__init__(**kw)
        self.n, self.tag = n, tag

    def num_examples(self):
        return self.n

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": f"{self.tag}{index}"},
                             {"role": "assistant", "content": "ok"}], "i": index, "tag": self.tag}


def test_task_views():
    t = Numbers(10, start=2, stop=9, step=3)
    assert len(t) == 3 and [e["i"] for e in t] == [2, 5, 8]
    assert t[-1]["i"] == 8
    with pytest.raises(IndexError):
        t[3]
    assert len(Numbers(5, stop=100)) == 5
    assert len(Numbers(5, start=7)) == 0
    with pytest.raises(RaychatError):
        Numbers(5, step=0)


def test_mixture_is_a_deterministic_shuffle_with_weights():
    a, b = Numbers(10, "a"), Numbers(4, "b")
    m = TaskMixture([a, b], seed=7)
    assert len(m) == 14
    seen = Counter((e["tag"], e["i"]) for e in m)
    assert set(seen) == {("a", i) for i in range(10)} | {("b", i) for i in range(4)} and max(seen.values()) == 1
    assert [m[i]["tag"] + str(m[i]["i"]) for i in range(14)] == \
           [TaskMixture([a, b], seed=7)[i]["tag"] + str(TaskMixture([a, b], seed=7)[i]["i"]) for i in range(14)]
    order = [e["tag"] + str(e["i"]) for e in m]
    assert order != [e["tag"] + str(e["i"]) for e in TaskMixture([a, b], seed=8)]
    assert order[:10] != [f"a{i}" for i in range(10)]                   # actually mixed
    w = TaskMixture([a, b], weights=[0.5, 2.5], seed=1)
    counts = Counter(e["tag"] for e in w)
    assert counts == {"a": 5, "b": 10}                                   # 0.5*10 and 2.5*4
    per_b = Counter(e["i"] for e in w if e["tag"] == "b")
    assert sorted(per_b.values()) == [2, 2, 3, 3]                        # two full epochs + a seeded half
    assert w.source_of(0) == (0 if w[0]["tag"] == "a" else 1, w[0]["i"])
    with pytest.raises(RaychatError):
        TaskMixture([a], weights=[-1])
    assert len(TaskMixture([a, b], start=3, stop=6)) == 3


def test_sequence_keeps_order():
    s = TaskSequence([Numbers(2, "a"), Numbers(0, "z"), Numbers(3, "b")])
    assert [e["tag"] + str(e["i"]) for e in s] == ["a0", "a1", "b0", "b1", "b2"]


def test_chat_jsonl(tmp_path, shared_data):
    t = ChatJsonl(shared_data / "chat" / "alpaca_5000.jsonl")
    assert len(t) == 4998
    assert t[0]["messages"][0]["content"].startswith("Are the two sentences below grammatically correct?")
    assert t[0]["messages"][1] == {"role": "assistant", "content": "No"}
    p = tmp_path / "mine.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]})
                 + "\n\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    assert len(ChatJsonl(p)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a"}]}\n'
                   '{"messages": [{"role": "bot", "content": "b"}]}\n')
    with pytest.raises(RaychatError, match=r"bad\.jsonl:2: .*role"):
        ChatJsonl(bad)
    bad.write_text('{"messages": []\n')
    with pytest.raises(RaychatError, match=r"bad\.jsonl:1: invalid JSON"):
        ChatJsonl(bad)
    with pytest.raises(RaychatError, match="not found"):
        ChatJsonl(tmp_path / "nope.jsonl")


def test_gsm8k_tool_parts(shared_data):
    t = GSM8K("test")
    assert len(t) == 1319 and len(GSM8K("train")) == 7473
    # test.jsonl line 2, written out by hand
    assert t[1]["messages"] == [
        {"role": "user", "content": "A robe takes 2 bolts of blue fiber and half that much white fiber.  "
                                    "How many bolts in total does it take?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "It takes 2/2="}, {"type": "python", "text": "2/2"},
            {"type": "python_output", "text": "1"},
            {"type": "text", "text": "1 bolt of white fiber\nSo the total amount of fabric is 2+1="},
            {"type": "python", "text": "2+1"}, {"type": "python_output", "text": "3"},
            {"type": "text", "text": "3 bolts of fabric\n#### 3"}]}]
    conv = t[1]
    assert t.evaluate(conv, "so 3 in total.\n#### 3")
    assert t.evaluate(conv, "#### 3.0") and t.evaluate(conv, "#### 3.")
    assert not t.evaluate(conv, "#### 4") and not t.evaluate(conv, "3")
    assert t.reward(conv, "#### 3") == 1.0
    assert answer_to_parts("a <<5>> b") == [{"type": "text", "text": "a "}, {"type": "python", "text": "5"},
                                           {"type": "python_output", "text": ""}, {"type": "text", "text": " b"}]
    # rendered with the chat template: tool call tokens are trained, tool output tokens are not
    tok = Tokenizer.byte_level()
    ids, mask = tok.render_conversation(conv)
    ps, os_ = tok.special_id("<|python_start|>"), tok.special_id("<|output_start|>")
    assert mask[ids.index(ps)] == 1 and mask[ids.index(os_)] == 0
    assert tok.decode(ids[ids.index(os_) + 1: ids.index(os_) + 2]) == "1"


def test_extract_answer():
    assert extract_answer("... #### 1,080") == "1080"
    assert extract_answer("#### -3.5 dollars") == "-3.5"
    assert extract_answer("no marker 42") is None
    assert same_number("72", "72.0") and same_number("72.", "72") and not same_number("72.01", "72")
    assert not same_number(None, "1")


def test_mmlu_and_arc_render_as_multiple_choice(shared_data):
    m = MMLU("test")
    assert len(m) == 14042 and len(MMLU("dev")) == 285
    assert m[0] == {"messages": [
        {"role": "user", "content": "Multiple Choice question: Find the degree for the given field extension "
                                    "Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n- 0=A\n- 4=B\n- 2=C\n- 6=D\n\n"
                                    "Respond only with the letter of the correct answer."},
        {"role": "assistant", "content": "B"}], "letters": ["A", "B", "C", "D"], "subject": "abstract_algebra"}
    assert m.eval_type == "categorical" and m.evaluate(m[0], "B") and not m.evaluate(m[0], "C")
    assert len(MMLU("val", subjects=["astronomy"])) == 16
    a = ARC("ARC-Challenge")
    assert len(a) == 1172 and len(ARC("ARC-Easy")) == 2376
    assert a[0]["messages"][0]["content"] == (
        "Multiple Choice question: An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?\n- Planetary density will decrease.=A\n"
        "- Planetary years will become longer.=B\n- Planetary days will become shorter.=C\n"
        "- Planetary gravity will become stronger.=D\n\nRespond only with the letter of the correct answer.")
    assert a[0]["messages"][1]["content"] == "C"
    with pytest.raises(RaychatError):
        ARC("ARC-Medium")


def test_humaneval_task(shared_data):
    h = HumanEval()
    assert len(h) == 164
    c = h[0]
    assert c["entry_point"] == "has_close_elements" and c["messages"][0]["content"].startswith("from typing import")
    assert h.evaluate(c, c["messages"][1]["content"])                       # reference solution (prompt + body)
    assert h.evaluate(c, "Here you go:\n```python\ndef has_close_elements(numbers, threshold):\n"
                         "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
                         "               for j, b in enumerate(numbers) if i != j)\n```\nDone.")
    assert not h.evaluate(c, "def has_close_elements(numbers, threshold):\n    return False")


def test_spelling_bee_is_consistent_with_the_calculator():
    t = SpellingBee(size=200, split="train")
    assert t[5] == SpellingBee(size=200, split="train")[5]                 # pure function of the index
    assert t[5] != SpellingBee(size=200, split="test")[5]
    for i in range(200):
        conv = t[i]
        parts = conv["messages"][1]["content"]
        py = next(p["text"] for p in parts if p["type"] == "python")
        out = next(p["text"] for p in parts if p["type"] == "python_output")
        assert calculate(py) == out                                         # the tool agrees with the data
        word, letter = py.split("'")[1], py.split("'")[3]
        assert out == str(word.count(letter))
        assert t.evaluate(conv, f"...\n#### {out}") and not t.evaluate(conv, f"#### {int(out) + 1}")
    s = SimpleSpelling(size=3)
    assert s[0]["messages"][1]["content"] == "{w}:{l}".format(w=s[0]["messages"][0]["content"][16:],
                                                                 l=",".join(s[0]["messages"][0]["content"][16:]))
    assert s.evaluate(s[0], s[0]["messages"][1]["content"] + "\n")


def test_simple_arithmetic_and_identity():
    t = SimpleArithmetic(size=100, max_operand=9, ops=("+", "*"))
    for conv in t:
        ans = extract_answer(conv["messages"][1]["content"][-1]["text"])
        nums = [int(x) for x in re.findall(r"\d+", conv["messages"][0]["content"])]
        assert int(ans) in (nums[0] + nums[1], nums[0] * nums[1]) and all(0 <= x <= 9 for x in nums)
        assert t.evaluate(conv, f"#### {ans}")
    tool = SimpleArithmetic(size=20, use_tool=True)
    for conv in tool:
        py, out, text = conv["messages"][1]["content"]
        assert calculate(py["text"]) == out["text"] and text["text"].endswith(f"#### {out['text']}")
    ident = Identity(size=50)
    assert all("raychat" in conv["messages"][1]["content"] for conv in ident)
    assert any(len(conv["messages"]) == 4 for conv in ident)
    with pytest.raises(NotImplementedError):
        ident.evaluate(ident[0], "x")


def test_sft_mixture_renders(shared_data, tmp_path):
    extra = tmp_path / "mine.jsonl"
    extra.write_text(json.dumps({"messages": [{"role": "user", "content": "who r u"},
                                              {"role": "assistant", "content": "raychat"}]}) + "\n")
    base = sft_mixture(synthetic_size=100)
    m = sft_mixture(extra_jsonl=[extra], extra_weight=3, synthetic_size=100)
    assert len(m) == len(base) + 3
    assert sum(1 for i in range(len(m)) if m[i]["messages"][0]["content"] == "who r u") == 3
    tok = Tokenizer.byte_level()
    for i in range(0, len(m), max(1, len(m) // 300)):   # every source type renders with the chat template
        ids, mask = tok.render_conversation(m[i], max_tokens=4096)
        assert ids[0] == tok.bos_id and sum(mask) > 0
    nc = sft_mixture(include_noncommercial=False, synthetic_size=100)
    assert len(nc) == len(base) - 4998 - 2015


def test_eval_and_rl_task_names(shared_data):
    assert eval_task("ARC-Easy").eval_type == "categorical"
    assert eval_task("GSM8K").eval_type == "generative" and len(eval_task("GSM8K")) == 1319
    assert len(eval_task("SpellingBee")) == 256
    assert rl_task("SimpleArithmetic", size=10)[0]["messages"][0]["role"] == "user"
    with pytest.raises(RaychatError, match="unknown eval task"):
        eval_task("Nope")
