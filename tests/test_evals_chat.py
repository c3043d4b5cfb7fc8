"""Chat evals and bits per byte: categorical scoring over allowed letters, generative grading through fake
engines and through the real Engine with a scripted model (tool use on), ChatCORE by hand, bpb by hand and
against a direct computation, and both all-reduced across two ranks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import free_port, jittered_gpt

from raychat.common import RaychatError
from raychat.evals import chatcore, evaluate_bpb, run_chat_eval
from raychat.evals.chat import run_categorical_eval
from raychat.tasks import GSM8K, MMLU, HumanEval, SpellingBee
from raychat.tasks.common import last_text
from raychat.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()
V = TOK.vocab_size


# ------------------------------------------------------------------------------------------------ bits per byte


class FixedLossModel:
    """model(x, y, loss_reduction="none") -> the per-token losses it was given, one batch after another."""

    def __init__(self, losses):
        self.losses = list(losses)

    def __call__(self, x, y, loss_reduction="mean"):
        assert loss_reduction == "none"
        return self.losses.pop(0)


def test_bpb_by_hand():
    token_bytes = torch.tensor([1, 2, 3, 0, 1, 2, 3, 4])          # id 3 is a special (0 bytes)
    y1 = torch.tensor([[1, 3, 7, -1]])                              # bytes 2, 0 (special), 4, ignored
    l1 = torch.tensor([[0.5, 9.0, 1.5, 0.0]])
    y2 = torch.tensor([[0, 6]])                                     # bytes 1, 3
    l2 = torch.tensor([[2.0, 1.0]])
    x = torch.zeros_like
    batches = iter([(x(y1), y1), (x(y2), y2), (x(y2), y2)])
    bpb = evaluate_bpb(FixedLossModel([l1, l2]), batches, steps=2, token_bytes=token_bytes)
    # nats: 0.5 + 1.5 + 2.0 + 1.0 = 5.0 (the special's 9.0 left out); bytes: 2 + 4 + 1 + 3 = 10
    assert bpb == pytest.approx(5.0 / (math.log(2) * 10))
    only_special = torch.tensor([[3, -1]])
    assert evaluate_bpb(FixedLossModel([torch.ones(1, 2)]), iter([(only_special, only_special)]), 1,
                        token_bytes) == float("inf")


def _tiny_gpt(seq_len=64):
    from raychat.model import GPTConfig

    cfg = GPTConfig(sequence_len=seq_len, vocab_size=V, n_layer=2, n_head=2, n_kv_head=2, n_embd=64, window_pattern="L")
    return jittered_gpt(cfg, 0.05).eval()


def test_bpb_matches_direct_computation():
    model = _tiny_gpt()
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(3):
        x = torch.randint(0, 256, (2, 32), generator=g)
        x[:, 0] = TOK.bos_id                                        # specials in the targets must drop out
        y = torch.roll(x, -1, 1)
        batches.append((x, y))
    bpb = evaluate_bpb(model, iter(batches), steps=3, token_bytes=TOK.token_bytes)
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            loss = F.cross_entropy(model(x).view(-1, V).float(), y.view(-1), reduction="none")
            keep = y.view(-1) < 256                                 # byte tokenizer: 1 byte per non-special
            nats += loss[keep].sum().item()
            nbytes += int(keep.sum())
    assert bpb == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-5)


# ------------------------------------------------------------------------------------------------ categorical


class LetterModel(torch.nn.Module):
    """Zero logits except: +1 on `letter` everywhere, +5 on 'E' (never an allowed answer: must be ignored), and
    +2 on the gold letter for prompts it was told about."""

    def __init__(self, letter="A", gold=None):
        super().__init__()
        self.letter, self.gold = letter, gold or {}

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, V)
        logits[..., ord(self.letter)] += 1.0
        logits[..., ord("E")] += 5.0
        for b in range(idx.shape[0]):
            row = idx[b].tolist()
            while row[-1] == TOK.bos_id:
                row.pop()
            if tuple(row) in self.gold:
                logits[b, len(row) - 1, ord(self.gold[tuple(row)])] += 2.0
        return logits


def test_categorical_eval(shared_data):
    task = MMLU("test")
    n = 37
    convs = [task[i] for i in range(n)]
    frac_a = sum(c["messages"][-1]["content"] == "A" for c in convs) / n
    res = run_categorical_eval(task, TOK, LetterModel("A"), batch_size=8, max_problems=n, progress=False)
    assert res == {"accuracy": pytest.approx(frac_a), "num_passed": round(frac_a * n), "num_total": n,
                   "num_cropped": 0}
    gold = {tuple(TOK.render_for_completion({"messages": c["messages"][:-1]})): c["messages"][-1]["content"]
            for c in convs}
    res = run_categorical_eval(task, TOK, LetterModel("A", gold), batch_size=5, max_problems=n, progress=False)
    assert res["accuracy"] == 1.0
    short = LetterModel("A")
    short.max_seq_len = 64                                   # most prompts are longer: keep their last 64 tokens
    res = run_categorical_eval(task, TOK, short, max_problems=n, progress=False)
    n_long = sum(len(_prompt(c)) > 64 for c in convs)
    assert res["num_cropped"] == n_long > 0 and res["accuracy"] == pytest.approx(frac_a)
    full = run_chat_eval("ARC-Easy", LetterModel("B"), TOK, engine=None, max_problems=20, progress=False)
    assert full["eval_type"] == "categorical" and full["baseline"] == 0.25
    assert full["centered"] == pytest.approx((full["accuracy"] - 0.25) / 0.75)


# ------------------------------------------------------------------------------------------------ generative


class FakeEngine:
    """generate(prompt_ids, params) -> completions scripted per prompt (optionally echoing the prompt and adding
    junk after <|assistant_end|>, as other engines may)."""

    def __init__(self, answers: dict, echo=False):
        self.answers, self.echo, self.calls = answers, echo, []

    def generate(self, prompt_ids, params):
        self.calls.append(params)
        text = self.answers[tuple(prompt_ids)]
        ids = TOK.encode(text) + [TOK.special_id("<|assistant_end|>")] + TOK.encode("#### 999")
        return [(list(prompt_ids) if self.echo else []) + ids for _ in range(params.num_samples)]


def _prompt(conv):
    return tuple(TOK.render_for_completion({"messages": conv["messages"][:-1]}))


@pytest.mark.parametrize("echo", [False, True])
def test_generative_eval_with_fake_engine(shared_data, echo):
    task = GSM8K("test")
    answers = {}
    for i in range(10):
        c = task[i]
        ref = last_text(c).split("#### ")[-1]
        answers[_prompt(c)] = f"Some work.\n#### {ref}" if i % 2 == 0 else f"#### {ref}1"
    eng = FakeEngine(answers, echo=echo)
    res = run_chat_eval("GSM8K", None, TOK, eng, max_problems=10, num_samples=2, temperature=0.0, progress=False)
    assert (res["num_passed"], res["num_total"], res["accuracy"]) == (5, 10, 0.5)
    assert res["centered"] == 0.5 and res["eval_type"] == "generative"
    assert all(p.num_samples == 2 and p.temperature == 0.0 for p in eng.calls)
    # an engine with a short context: prompts that do not fit count as failed, they do not crash the eval
    eng.max_seq_len = 300
    long = {i for i in range(10) if len(_prompt(task[i])) >= 300}
    res = run_chat_eval("GSM8K", None, TOK, eng, max_problems=10, progress=False)
    assert 0 < len(long) < 10 and res["num_too_long"] == len(long)
    assert res["num_passed"] == sum(1 for i in range(0, 10, 2) if i not in long)


def test_humaneval_and_spelling_with_fake_engine(shared_data):
    h = HumanEval()
    answers = {}
    for i in range(5):
        c = h[i]
        body = h.rows[i]["prompt"] + h.rows[i]["canonical_solution"]
        answers[_prompt(c)] = f"```python\n{body}\n```" if i < 3 else "```python\ndef nope():\n    pass\n```"
    res = run_chat_eval("HumanEval", None, TOK, FakeEngine(answers), max_problems=5, progress=False)
    assert (res["num_passed"], res["num_total"]) == (3, 5)
    sb = SpellingBee(size=8, split="test")
    answers = {_prompt(c): last_text(c) for c in sb}
    res = run_chat_eval("SpellingBee", None, TOK, FakeEngine(answers), task=sb, progress=False)
    assert res["accuracy"] == 1.0


class RecordingGSM8K(GSM8K):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.completions = []

    def evaluate(self, conversation, completion):
        self.completions.append(completion)
        return super().evaluate(conversation, completion)


def test_gsm8k_through_the_real_engine_with_tool_use(shared_data):
    """A scripted model calls the calculator, the engine forces the result, and the eval grades the reply as the
    chat layer shows it (tool use inline, GSM8K's own <<expr=result>>): problem 1 (answer 3) passes, 0 does not."""
    from scripted_model import ScriptedModel

    from raychat.engine import Engine

    sp = TOK.special_id
    script = ([sp("<|python_start|>")] + TOK.encode("2+1") + [sp("<|python_end|>")] + TOK.encode(" bolts\n#### 3")
              + [sp("<|assistant_end|>")])
    model = ScriptedModel(V, script, trigger=sp("<|assistant_start|>"), sequence_len=1024,
                          skip_span=(sp("<|output_start|>"), sp("<|output_end|>")))
    engine = Engine(model, TOK, max_batch_size=4)
    task = RecordingGSM8K("test", stop=2)
    res = run_chat_eval("GSM8K", model, TOK, engine, task=task, max_tokens=64, progress=False)
    assert (res["num_passed"], res["num_total"]) == (1, 2)
    assert task.completions == ["<<2+1=3>> bolts\n#### 3"] * 2


def test_chatcore_by_hand():
    assert chatcore({"ARC-Easy": 0.5, "GSM8K": 0.1}) == pytest.approx(((0.5 - 0.25) / 0.75 + 0.1) / 2)
    assert chatcore({"MMLU": {"accuracy": 0.25}, "HumanEval": {"accuracy": 0.0}}) == 0.0
    assert chatcore({"ARC-Challenge": 1.0, "SpellingBee": 1.0}) == 1.0
    with pytest.raises(RaychatError, match="no ChatCORE baseline"):
        chatcore({"Mystery": 0.3})
    with pytest.raises(RaychatError):
        chatcore({})
    with pytest.raises(RaychatError, match="unknown eval task"):
        run_chat_eval("Mystery", None, TOK, None)


# ------------------------------------------------------------------------------------------------ distributed


def _dist_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        token_bytes = torch.tensor([1, 2, 3, 0, 1, 2, 3, 4])
        y = torch.tensor([[1, 3, 7, -1]]) if rank == 0 else torch.tensor([[0, 6]])
        loss = torch.tensor([[0.5, 9.0, 1.5, 0.0]]) if rank == 0 else torch.tensor([[2.0, 1.0]])
        bpb = evaluate_bpb(FixedLossModel([loss]), iter([(y, y)]), 1, token_bytes)
        res = run_categorical_eval(MMLU("dev"), TOK, LetterModel("A"), max_problems=21, progress=False)
        Path(out_dir, f"{rank}.json").write_text(json.dumps({"bpb": bpb, **res}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_reduce(tmp_path, shared_data):
    import torch.multiprocessing as mp

    port = free_port()
    mp.start_processes(_dist_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    single = run_categorical_eval(MMLU("dev"), TOK, LetterModel("A"), max_problems=21, progress=False)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got["bpb"] == pytest.approx(5.0 / (math.log(2) * 10))   # the hand example, split over ranks
        assert (got["num_passed"], got["num_total"]) == (single["num_passed"], single["num_total"])
