"""SFT: batches carry loss on assistant tokens only (checked on the logits' gradient and against a naive masked
cross-entropy), both row layouts keep conversations whole, the loop learns and resumes exactly, and one run goes
through the CLI and Ray Train with a user's JSONL file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_gpt
from safetensors.torch import load_file

from raychat.cli import main as cli_main
from raychat.data import rows_to_batch
from raychat.tasks import SimpleArithmetic
from raychat.tokenizer import Tokenizer
from raychat.train.config import SFTConfig, get_preset
from raychat.train.harness import LocalContext
from raychat.train.sft import ConversationLoader, build_mixture, masked_loss_sum, train

TOK = Tokenizer.byte_level()
TOOL_CONV = {"messages": [
    {"role": "user", "content": "What is 12*3? And then?"},
    {"role": "assistant", "content": [{"type": "text", "text": "Let me compute: "},
                                      {"type": "python", "text": "12*3"},
                                      {"type": "python_output", "text": "36"},
                                      {"type": "text", "text": " so #### 36"}]},
    {"role": "user", "content": "Thanks, bye"},
    {"role": "assistant", "content": "Bye!"}]}





def fresh_run(src: Path, dst: Path) -> Path:
    """A private run dir: the session's tokenizer and random-init base checkpoint (tests must not write there)."""
    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    shutil.copytree(src / "checkpoints" / "base", dst / "checkpoints" / "base")
    return dst


def quick_cfg(run_dir: Path, **kw) -> SFTConfig:
    base = dict(run_dir=str(run_dir), mixture="SimpleArithmetic", synthetic_size=400, num_val_examples=32,
                device_batch_size=8, total_batch_rows=8, num_iterations=4, init_lr_frac=1.0, eval_every=-1,
                chat_eval_tasks="", save_every=-1, log_every=1, num_threads=1, metrics_port=0)
    base.update(kw)
    return SFTConfig(**base)


# ---- batches and loss masking ----------------------------------------------------------------------------
def test_rows_to_batch_targets_only_assistant_tokens():
    ids, mask = TOK.render_conversation(TOOL_CONV)
    short_ids, short_mask = TOK.render_conversation({"messages": TOOL_CONV["messages"][:2]})
    x, y = rows_to_batch([(ids, mask), (short_ids, short_mask)], TOK.bos_id)
    assert x.shape == y.shape == (2, len(ids) - 1)
    assert x[0].tolist() == ids[:-1]
    for t in range(len(ids) - 1):
        assert y[0, t].item() == (ids[t + 1] if mask[t + 1] else -1)
    # the shorter row is padded: no target beyond its end
    assert (y[1, len(short_ids) - 1:] == -1).all() and (x[1, len(short_ids) - 1:] == TOK.bos_id).all()
    # what is trained: assistant text, the tool call and <|assistant_end|>; not the user turns, not the tool output
    trained = TOK.decode([t for t in y[0].tolist() if t >= 0])
    assert "Let me compute: " in trained and "12*3" in trained and "Bye!" in trained
    assert "36<|output_end|>" not in trained and "Thanks" not in trained and "What is" not in trained
    assert trained.count("<|assistant_end|>") == 2 and "<|assistant_start|>" not in trained


def test_prompt_tokens_carry_no_loss_or_gradient():
    """The logits at positions whose target is a prompt token (or tool output, or padding) get exactly zero
    gradient, and the loss equals a naive masked mean of the cross-entropy."""
    model = tiny_gpt(TOK.vocab_size, seq_len=256)
    rows = [TOK.render_conversation(TOOL_CONV), TOK.render_conversation({"messages": TOOL_CONV["messages"][:2]})]
    x, y = rows_to_batch(rows, TOK.bos_id)
    captured = {}

    def keep(_module, _inp, out):
        out.retain_grad()
        captured["logits"] = out

    h = model.lm_head.register_forward_hook(keep)
    n = (y >= 0).sum()
    loss = masked_loss_sum(model, x, y) / n
    loss.backward()
    h.remove()
    grad = captured["logits"].grad                        # (B, T, V)
    per_pos = grad.abs().sum(-1)                          # (B, T)
    assert (per_pos[y < 0] == 0).all(), "a prompt/tool-output/pad position received gradient"
    assert (per_pos[y >= 0] > 0).all()
    # reference: cross-entropy at every position, averaged over the assistant-token mask only
    with torch.no_grad():
        logits = model(x)
        ce = F.cross_entropy(logits.view(-1, logits.size(-1)), y.clamp(min=0).view(-1), reduction="none").view(y.shape)
        ref = (ce * (y >= 0)).sum() / n
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
    # changing a prompt (a trailing user turn, longer or shorter) changes nothing in the loss
    head = TOOL_CONV["messages"][:2]
    sums = []
    for text in ("Thanks, bye", "A completely different and much longer question about something else?"):
        ids, mask = TOK.render_conversation({"messages": head + [{"role": "user", "content": text}]})
        xa, ya = rows_to_batch([(ids, mask)], TOK.bos_id)
        with torch.no_grad():
            sums.append(masked_loss_sum(model, xa, ya))
    assert sums[0] == sums[1]


def test_pad_rows_one_conversation_each_and_rank_striding():
    task = SimpleArithmetic(size=40)
    seen = []
    for rank in range(2):
        ld = ConversationLoader(task, TOK, range(0, 40), batch_size=4, seq_len=64, rank=rank, world_size=2)
        for _ in range(5):
            x, y = next(ld)
            assert (x[:, 0] == TOK.bos_id).all()          # every row starts like an inference prompt
            for row in x.tolist():                         # one conversation per row (padding is <|bos|> at the end)
                body = row[: next((i for i in range(1, len(row)) if row[i] == TOK.bos_id), len(row))]
                assert body.count(TOK.bos_id) == 1
        seen.append(ld.cursor)
        assert ld.epoch == pytest.approx((rank + 20 * 2) / 40)
    assert seen == [20, 20]


def test_bestfit_rows_hold_whole_conversations_and_resume():
    task = SimpleArithmetic(size=200)
    convs = {tuple(TOK.render_conversation(task[i])[0]) for i in range(200)}
    ld = ConversationLoader(task, TOK, range(0, 200), batch_size=3, seq_len=100, packing="bestfit", buffer_size=8)
    for _ in range(4):
        x, y = next(ld)
        assert x.shape == (3, 100)
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            # the row's tokens: x[0], then each next token from y where it is a target, else from x (or pad)
            T = len(row_x)
            full = [row_x[0]] + [row_y[t] if row_y[t] >= 0 else (row_x[t + 1] if t + 1 < T else TOK.bos_id)
                                 for t in range(T)]
            starts = [i for i, t in enumerate(full) if t == TOK.bos_id]
            assert starts[0] == 0
            pieces = [full[a:b] for a, b in zip(starts, starts[1:] + [len(full)])]
            whole = [p for p in pieces if tuple(p) in convs]
            assert len(whole) >= 2, "best-fit should pack several short conversations per row"
            # anything that is not a whole conversation is padding (<|bos|> only) at the end of the row
            assert all(set(p) == {TOK.bos_id} for p in pieces[len(whole):])
    sd = ld.state_dict()
    assert len(sd["buffer"]) == 8
    expect = [next(ld) for _ in range(3)]
    ld2 = ConversationLoader(task, TOK, range(0, 200), batch_size=3, seq_len=100, packing="bestfit", buffer_size=8)
    ld2.load_state_dict(json.loads(json.dumps(sd)))
    for (ex, ey), (gx, gy) in zip(expect, [next(ld2) for _ in range(3)]):
        assert torch.equal(ex, gx) and torch.equal(ey, gy)


def test_config_validation_and_mixture(tmp_path):
    with pytest.raises(ValueError, match="packing"):
        SFTConfig(packing="zip")
    with pytest.raises(ValueError, match="multiple of device_batch_size"):
        SFTConfig(device_batch_size=3, total_batch_rows=8)
    with pytest.raises(ValueError, match="mixture"):
        SFTConfig(mixture="default,NoSuchTask")
    with pytest.raises(ValueError, match="EPOCHS"):
        SFTConfig(mixture="SimpleArithmetic:0")
    assert get_preset("tiny_cpu", "sft").num_workers == 2
    assert len(build_mixture(SFTConfig(mixture="SimpleArithmetic:2.5,Identity", synthetic_size=10))) == 35
    extra = tmp_path / "mine.jsonl"
    extra.write_text(json.dumps({"messages": [{"role": "user", "content": "who?"},
                                              {"role": "assistant", "content": "me, MARKER"}]}) + "\n")
    mix = build_mixture(SFTConfig(mixture="SimpleArithmetic", synthetic_size=10, extra_jsonl=[str(extra)],
                                  extra_weight=3.0))
    assert len(mix) == 13
    assert sum("MARKER" in json.dumps(c) for c in mix) == 3


def test_cli_rejects_bad_inputs(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"role": "bot"}]}\n')
    assert cli_main(["sft", "--run-dir", str(tmp_path), "--extra-jsonl", str(bad), "--no-ray"]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert cli_main(["sft", "--run-dir", str(tmp_path), "--packing", "zip", "--no-ray"]) == 2
    assert "packing" in capsys.readouterr().err
    assert cli_main(["sft", "--run-dir", str(tmp_path / "empty"), "--mixture", "SimpleArithmetic", "--no-ray"]) == 2
    assert "tokenizer" in capsys.readouterr().err


# ---- the loop ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sft_learns_assistant_tokens(tiny_run_dir, tmp_path):
    run = fresh_run(tiny_run_dir, tmp_path / "run")
    cfg = quick_cfg(run, synthetic_size=800, device_batch_size=16, total_batch_rows=16, num_iterations=30,
                    eval_every=15, chat_eval_tasks="SimpleArithmetic", chat_eval_max_problems=8,
                    chat_eval_max_tokens=8, save_every=15)
    ctx = LocalContext()
    out = train(cfg, ctx)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [e["val_loss"] for e in events if e.get("event") == "eval"]
    assert len(vals) == 3 and vals[-1] < 0.5 * vals[0], vals
    losses = [r["raw_loss"] for r in ctx.reports if "raw_loss" in r]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3
    assert out["chat_eval"]["SimpleArithmetic"]["num_total"] == 8
    ckpt = run / "checkpoints" / "sft" / "step_000030"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 30 and meta["config"]["mixture"] == "SimpleArithmetic"
    assert meta["source_checkpoint"].endswith("base/step_000001") and "0" in meta["rank_state"]
    assert (run / "checkpoints" / "sft" / "step_000015").is_dir()
    assert json.loads((run / "evals" / "sft_quick_chat_eval.json").read_text())["step"] == 30


@pytest.mark.slow
def test_sft_resume_is_exact(tiny_run_dir, tmp_path):
    """4 steps in one go == 2 steps, stop, resume from the checkpoint, 2 more (best-fit buffer included)."""
    a = fresh_run(tiny_run_dir, tmp_path / "a")
    cfg = quick_cfg(a, packing="bestfit", seq_len=64, device_batch_size=4, total_batch_rows=8, save_every=2,
                    keep_checkpoints=5)
    train(cfg, LocalContext())
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "sft" / "step_000004")
    train(cfg.replace(run_dir=str(b)), LocalContext(resume_from=b / "checkpoints" / "sft" / "step_000002"))
    wa = load_file(str(a / "checkpoints" / "sft" / "step_000004" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "sft" / "step_000004" / "model.safetensors"))
    w2 = load_file(str(a / "checkpoints" / "sft" / "step_000002" / "model.safetensors"))
    assert any(not torch.equal(wa[k], w2[k]) for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.slow
def test_sft_cli_on_ray_train_with_extra_jsonl(ray_session, tiny_run_dir, tmp_path):
    run = fresh_run(tiny_run_dir, tmp_path / "run")
    extra = tmp_path / "mine.jsonl"
    extra.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                      {"role": "assistant", "content": f"hello {i}"}]}) + "\n"
                             for i in range(20)))
    rc = cli_main(["sft", "--run-dir", str(run), "--mixture", "SimpleArithmetic", "--synthetic-size", "100",
                   "--extra-jsonl", str(extra), "--num-workers", "2", "--device-batch-size", "2",
                   "--total-batch-rows", "8", "--num-iterations", "3", "--num-val-examples", "8",
                   "--chat-eval-tasks", "", "--metrics-port", "0", "--log-every", "1"])
    assert rc == 0
    meta = json.loads((run / "checkpoints" / "sft" / "step_000003" / "meta.json").read_text())
    assert set(meta["rank_state"]) == {"0", "1"}
    # rank r took examples r, r+2, ...: 2 accumulation steps x 2 rows x 3 steps each
    assert [meta["rank_state"][r]["loader"]["cursor"] for r in ("0", "1")] == [12, 12]
    assert meta["config"]["extra_jsonl"] == [str(extra.resolve())]
    assert (run / "checkpoints" / "sft" / "step_000003" / "optim_rank1.pt").is_file()
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "train"] == [1, 2, 3]
    assert any(e.get("event") == "done" for e in events)


@pytest.mark.slow
def test_sft_time_limit_ends_with_a_checkpoint(tiny_run_dir, tmp_path):
    run = fresh_run(tiny_run_dir, tmp_path / "run")
    out = train(quick_cfg(run, num_iterations=50, max_seconds=1e-6), LocalContext())
    assert out["step"] == 1 and out["val_loss"] is not None
    assert json.loads((run / "checkpoints" / "sft" / "step_000001" / "meta.json").read_text())["step"] == 1
