"""`raychat export hf`: transformers (dev extra) loads the export with trust_remote_code and gives raychat's
logits, greedy tokens, encodings and chat renderings; the nanochat fixture survives import -> export."""

import json

import pytest
import torch
import transformers
from conftest import SHARED

from raychat.checkpoint import load_model, save_checkpoint
from raychat.cli import main
from raychat.common import RaychatError
from raychat.engine import Engine
from raychat.engine.sampling import SamplingParams
from raychat.interop.nanochat import import_checkpoint
from raychat.model import GPT, GPTConfig
from raychat.tokenizer import Tokenizer

FIXTURE = SHARED / "nanochat_d2"


def _tiny_run(tmp_path, **overrides):
    """A raychat run dir with every architectural feature on and random (non-init) values everywhere."""
    tok = Tokenizer.byte_level()
    cfg = GPTConfig(**{"sequence_len": 64, "vocab_size": tok.vocab_size, "n_layer": 4, "n_head": 4, "n_kv_head": 2,
                       "n_embd": 64, "window_pattern": "SSL", "short_window_frac": 0.25, **overrides})
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():  # the init zeroes projections, gates and lambdas: move them all
            p.add_(torch.randn_like(p) * 0.3)
    run = tmp_path / "run"
    tok.save(run / "tokenizer")
    save_checkpoint(run / "checkpoints" / "sft", 7, model.eval())
    return run, model, tok


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    run, model, tok = _tiny_run(tmp, qk_scale=1.2, backout_layer=2)
    assert main(["export", "hf", "--run-dir", str(run), "--out", str(tmp / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp / "hf"), trust_remote_code=True).eval()
    return model, tok, hf


@pytest.fixture(scope="module")
def fixture_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nano")
    import_checkpoint(FIXTURE, FIXTURE / "tokenizer", tmp / "run")
    assert main(["export", "hf", "--run-dir", str(tmp / "run"), "--stage", "base", "--out", str(tmp / "hf")]) == 0
    model, tok, _ = load_model(tmp / "run", stage="base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp / "hf"), trust_remote_code=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp / "hf"), trust_remote_code=True)
    return model, tok, hf, hf_tok, tmp / "hf"


def test_tiny_model_logits_and_loss_match(tiny):
    model, _, hf = tiny
    ids = torch.randint(0, 256, (2, 60), generator=torch.Generator().manual_seed(3))  # longer than the 16-key window
    with torch.no_grad():
        want = model(ids)
        out = hf(ids, labels=ids)
        loss = model(ids[:, :-1], targets=ids[:, 1:])
    assert torch.allclose(out.logits, want, atol=2e-5, rtol=0), (out.logits - want).abs().max()
    assert torch.allclose(out.loss, loss, atol=1e-5)


def test_tiny_model_left_padded_batch_matches_each_sequence(tiny):
    model, tok, hf = tiny
    a, b = tok.encode("hello there, general", prepend="<|bos|>"), tok.encode("hi", prepend="<|bos|>")
    pad = tok.bos_id
    ids = torch.tensor([a, [pad] * (len(a) - len(b)) + b])
    mask = torch.tensor([[1] * len(a), [0] * (len(a) - len(b)) + [1] * len(b)])
    with torch.no_grad():
        got = hf(ids, attention_mask=mask).logits
        want_b = model(torch.tensor([b]))[0]
    assert torch.allclose(got[1, -len(b):], want_b, atol=2e-5, rtol=0)


def test_tiny_model_generate_gives_the_engines_greedy_tokens(tiny):
    model, tok, hf = tiny
    engine = Engine(model, tok, max_batch_size=2)
    for text in ("The quick brown", "1 + 1 ="):
        prompt = tok.encode(text, prepend="<|bos|>")
        want = engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=24))[0]
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=24)[0, len(prompt):].tolist()
        assert out[: len(want)] == want
        if len(want) < 24:  # the engine stopped at <|assistant_end|> or <|bos|>: generate stops on the same token
            assert out[len(want)] in (tok.special_id("<|assistant_end|>"), tok.bos_id)


def test_tiny_model_kv_cache_matches_the_full_forward(tiny):
    model, _, hf = tiny
    ids = torch.randint(0, 256, (2, 50), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(ids)
        first = hf(ids[:, :30], use_cache=True)
        step = hf(ids[:, 30:41], past_key_values=first.past_key_values, prev_ids=ids[:, 29:30], use_cache=True)
        last = hf(ids[:, 41:], past_key_values=step.past_key_values, prev_ids=ids[:, 40:41], use_cache=True)
    got = torch.cat([first.logits, step.logits, last.logits], 1)
    assert torch.allclose(got, want, atol=2e-5, rtol=0), (got - want).abs().max()


def test_tiny_model_batched_left_padded_generate_matches_the_engine(tiny):
    model, tok, hf = tiny
    prompts = [tok.encode(t, prepend="<|bos|>") for t in ("Once upon a time, in a land", "Hi!")]
    engine = Engine(model, tok, max_batch_size=2)
    want = [c[0].tokens for c in engine.generate_many(prompts, SamplingParams(temperature=0.0, max_tokens=20))]
    n = max(map(len, prompts))
    ids = torch.tensor([[tok.bos_id] * (n - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts])
    for use_cache in (True, False):
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=20, use_cache=use_cache)[:, n:].tolist()
        for row, w in zip(out, want):
            assert row[: len(w)] == w, use_cache


def test_nanochat_fixture_import_export_matches_nanochat(fixture_export):
    _, _, hf, _, _ = fixture_export
    ref = json.loads((FIXTURE / "reference.json").read_text())
    for case in ref["cases"]:
        ids = torch.tensor([case["input_ids"]])
        with torch.no_grad():
            logits = hf(ids).logits[0]
        assert torch.allclose(logits[-1], torch.tensor(case["last_logits"]), atol=2e-5, rtol=0), case["prompt"]
        assert logits.argmax(-1).tolist() == case["argmax_per_position"]
    case = ref["cases"][-1]  # 373 tokens: crosses the short window during generation too
    out = hf.generate(torch.tensor([case["input_ids"]]), max_new_tokens=16)[0, len(case["input_ids"]):]
    assert out.tolist() == case["greedy_16"]


TEXTS = [
    "The capital of France is Paris.",
    "  leading spaces, trailing\t\ttabs  \n\n\nnewlines\r\n",
    "numbers 1234567 and 3.14159, dates 2026-12-04",
    "def f(x):\n    return x ** 2  # comment\n",
    "Ünïcödé, 日本語のテキスト, emoji 🤖🚀, Ελληνικά",
    "don't I'LL we've they're",
    "",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"},
     {"role": "assistant", "content": "Rayleigh scattering."}, {"role": "user", "content": "More?"}],
    [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "12*7?"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "Let me compute "},
                                       {"type": "python", "text": "12*7"}, {"type": "python_output", "text": "84"},
                                       {"type": "text", "text": ". It is 84."}]}],
]


def test_tokenizer_encodes_and_decodes_like_raychat(fixture_export):
    _, tok, _, hf_tok, _ = fixture_export
    wiki = json.loads((FIXTURE / "reference.json").read_text())["cases"][-1]["prompt"]
    for text in [*TEXTS, wiki]:
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert ids == tok.encode(text), text
        assert hf_tok.decode(ids) == tok.decode(ids)
    assert hf_tok.bos_token_id == tok.bos_id and hf_tok.eos_token_id == tok.special_id("<|assistant_end|>")
    # transformers' default (add_special_tokens) starts a document with <|bos|>, as nanochat's reference inputs do
    for case in json.loads((FIXTURE / "reference.json").read_text())["cases"]:
        assert hf_tok(case["prompt"])["input_ids"] == case["input_ids"]


def test_chat_template_renders_like_raychat(fixture_export):
    _, tok, _, hf_tok, _ = fixture_export
    for conv in CONVERSATIONS:
        got = hf_tok.apply_chat_template(conv, add_generation_prompt=True)["input_ids"]
        assert got == tok.render_for_completion(conv)
        full = hf_tok.apply_chat_template(conv)["input_ids"]  # a training rendering: every message, no prompt
        assert full == tok.render_conversation(conv)[0]
    with pytest.raises(Exception, match="unknown role"):
        hf_tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_export_refuses_a_used_output_dir_and_a_missing_checkpoint(tmp_path, fixture_export, capsys):
    *_, out = fixture_export
    assert main(["export", "hf", "--checkpoint", str(out.parent / "run"), "--stage", "base", "--out", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["export", "hf", "--run-dir", str(out.parent / "run"), "--out", str(tmp_path / "x")]) == 2
    assert "no sft checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(RaychatError, match="give --run-dir"):
        from raychat.commands.export import run

        run(type("A", (), {"checkpoint": None, "run_dir": None})())


def test_exported_windows_follow_raychats_rounding(tmp_path):
    """Regression: the modeling file recomputed the S window with its own (floor) rule; at T=1000 a quarter is 250
    keys, which raychat rounds up to the 128-tile 256, so the two models attended over different windows."""
    run, model, _ = _tiny_run(tmp_path, sequence_len=1000, n_layer=3, window_pattern="SL")
    assert model.windows == [256, None, None]  # ceil(1000 / 4) = 250 -> 2 tiles of 128, by hand
    assert main(["export", "hf", "--run-dir", str(run), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True)
    assert hf.config.window_sizes() == [256, None, None]
