"""`raychat import nanochat`: nanochat's own outputs for the shared fixture, every vintage against a naive
nanochat forward written from nanochat's gpt.py (checked on the fixture first), and the refusals."""

import json
import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED

from raychat.checkpoint import build_model, load_model
from raychat.cli import main
from raychat.common import RaychatError
from raychat.engine import Engine
from raychat.engine.sampling import SamplingParams
from raychat.interop import nanochat as nc

FIXTURE = SHARED / "nanochat_d2"  # written by nanochat itself (../shared/data/SOURCES.md)
TOK = FIXTURE / "tokenizer"


@pytest.fixture(scope="module")
def reference():
    return json.loads((FIXTURE / "reference.json").read_text())


@pytest.fixture(scope="module")
def imported():
    model, step, vintage, meta = nc.load_nanochat(FIXTURE)
    return model, vintage


# ---------------------------------------------------------------------------------------------- naive nanochat
def _rms(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def _rot(x, cos, sin):
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], -1)


def naive_nanochat(sd, mc, v, ids):
    """nanochat's forward for vintage v, one sequence, explicit attention scores: (T,) -> logits (T, V)."""
    sd = {k: t.double() for k, t in sd.items()}
    L, V, n_layer = mc["sequence_len"], mc["vocab_size"], mc["n_layer"]
    H, Hkv, C = mc["n_head"], mc["n_kv_head"], mc["n_embd"]
    D, T = C // H, len(ids)
    idx = torch.tensor(ids)
    pattern = mc.get("window_pattern", "L")
    left = [L if pattern[i % len(pattern)] == "L" or i == n_layer - 1 else v.short_window(L) for i in range(n_layer)]
    inv = 1.0 / (v.rope_base ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    f = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    cos, sin = f.cos()[:, None], f.sin()[:, None]
    x = _rms(sd["transformer.wte.weight"][idx])
    if v.smear:
        g = sd["smear_lambda"] * torch.sigmoid(x[1:, :24] @ sd["smear_gate.weight"].T)
        x = torch.cat([x[:1], x[1:] + g * x[:-1]])
    x0, xb = x, None
    pos = torch.arange(T)
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        if v.lambdas:
            x = sd["resid_lambdas"][i] * x + sd["x0_lambdas"][i] * x0
        a = _rms(x)
        q = (a @ sd[h + "attn.c_q.weight"].T).view(T, H, D)
        k = (a @ sd[h + "attn.c_k.weight"].T).view(T, Hkv, D)
        val = (a @ sd[h + "attn.c_v.weight"].T).view(T, Hkv, D)
        if h + "attn.ve_gate.weight" in sd:
            w = sd[h + "attn.ve_gate.weight"]
            gate = v.ve_gate_scale * torch.sigmoid(a[:, : w.size(1)] @ w.T)
            val = val + gate[..., None] * sd[f"value_embeds.{i}.weight"][idx].view(T, Hkv, D)
        q, k = _rms(_rot(q, cos, sin)) * v.qk_scale, _rms(_rot(k, cos, sin)) * v.qk_scale
        k, val = k.repeat_interleave(H // Hkv, 1), val.repeat_interleave(H // Hkv, 1)
        s = torch.einsum("thd,shd->hts", q, k) / math.sqrt(D)
        ok = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] <= left[i])
        y = torch.einsum("hts,shd->thd", s.masked_fill(~ok, -math.inf).softmax(-1), val).reshape(T, C)
        x = x + y @ sd[h + "attn.c_proj.weight"].T
        m = _rms(x) @ sd[h + "mlp.c_fc.weight"].T
        x = x + F.relu(m).square() @ sd[h + "mlp.c_proj.weight"].T
        if v.smear and i == n_layer // 2:
            xb = x
    if xb is not None:
        x = x - sd["backout_lambda"] * xb
    logits = (_rms(x) @ sd["lm_head.weight"].T)[:, :V]
    return 15 * torch.tanh(logits / 15)


def test_naive_reference_reproduces_nanochat_on_the_fixture(reference):
    """The naive forward is right for the fixture's vintage: it gives nanochat's own logits."""
    _, state, meta = nc.read_checkpoint(FIXTURE)
    v = nc.detect_vintage(state, meta["model_config"]["n_layer"])
    case = reference["cases"][-1]  # the 373-token passage: crosses the 128-token short window
    logits = naive_nanochat(state, meta["model_config"], v, case["input_ids"])
    assert torch.allclose(logits[-1].float(), torch.tensor(case["last_logits"]), atol=2e-5, rtol=0)
    assert logits.argmax(-1).tolist() == case["argmax_per_position"]


# ---------------------------------------------------------------------------------------------- the fixture
def test_fixture_is_detected_as_the_current_vintage(imported, reference):
    model, vintage = imported
    assert vintage.name == "smear-backout"
    c = model.config
    assert (c.n_layer, c.n_embd, c.vocab_size, c.sequence_len) == (2, 128, 8192, 512)
    assert model.windows == [129, None]  # nanochat's (128, 0): 128 keys before the query plus itself
    assert (c.qk_scale, c.backout_layer, c.rope_base) == (1.2, 1, 100000.0)


def test_tokenizer_encodes_like_nanochat(reference):
    tok = nc.read_tokenizer(TOK)
    assert tok.vocab_size == 8192 and tok.bos_id == 8183
    for case in reference["cases"]:
        assert [tok.bos_id] + tok.encode(case["prompt"]) == case["input_ids"]


def test_forward_matches_nanochat_logits(imported, reference):
    model, _ = imported
    for case in reference["cases"]:
        with torch.no_grad():
            logits = model(torch.tensor([case["input_ids"]]))[0]
        # the reference is rounded to 5 decimals; fp32 differences are ~1e-5
        assert torch.allclose(logits[-1], torch.tensor(case["last_logits"]), atol=2e-5, rtol=0), case["prompt"]
        assert logits.argmax(-1).tolist() == case["argmax_per_position"]
        sums = torch.tensor(case["logits_sum_per_position"])
        assert torch.allclose(logits.sum(-1), sums, rtol=1e-6, atol=2e-2)


def test_each_mapping_step_matters(reference):
    """The tolerance is tight enough to see every architectural difference the importer maps."""
    _, state, meta = nc.read_checkpoint(FIXTURE)
    v = nc.detect_vintage(state, 2)
    case = reference["cases"][-1]
    want = torch.tensor(case["last_logits"])
    for change in ({"qk_scale": 1.0}, {"backout_layer": 0}, {"short_window": 0, "window_pattern": "L"},
                   {"rope_base": 10000.0}):
        cfg = {**nc.model_config(v, meta["model_config"]), **change}
        model = build_model(cfg)
        model.load_state_dict(nc.convert_state(v, state, cfg))
        with torch.no_grad():
            got = model(torch.tensor([case["input_ids"]]))[0, -1]
        assert (got - want).abs().max() > 1e-3, change


def test_engine_reproduces_nanochat_greedy_continuations(imported, reference):
    model, _ = imported
    tok = nc.read_tokenizer(TOK)
    engine = Engine(model, tok, max_batch_size=8)
    greedy = SamplingParams(temperature=0.0, max_tokens=16)
    batched = engine.generate_many([c["input_ids"] for c in reference["cases"]], greedy)  # continuous batching
    for case, comps in zip(reference["cases"], batched):
        assert comps[0].tokens == case["greedy_16"], case["prompt"]
        assert tok.decode(comps[0].tokens) == case["greedy_16_text"]
    assert engine.generate(reference["cases"][0]["input_ids"], greedy)[0] == reference["cases"][0]["greedy_16"]


def test_import_command_writes_a_run_dir_every_command_loads(tmp_path, reference, capsys):
    run = tmp_path / "run"
    assert main(["import", "nanochat", "--checkpoint", str(FIXTURE), "--tokenizer", str(TOK),
                 "--run-dir", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 120 and out["vintage"] == "smear-backout"
    model, tok, meta = load_model(run, stage="base")
    assert meta["final"] and meta["imported_from"]["format"] == "nanochat"
    case = reference["cases"][1]
    with torch.no_grad():
        logits = model(torch.tensor([case["input_ids"]]))[0, -1]
    assert torch.allclose(logits, torch.tensor(case["last_logits"]), atol=2e-5, rtol=0)
    assert main(["chat", "--run-dir", str(run), "--stage", "base", "-p", case["prompt"], "--temperature", "0",
                 "--max-tokens", "16"]) == 0
    assert case["greedy_16_text"].strip() in capsys.readouterr().out
    # a second import into the same place is refused and changes nothing
    before = (run / "checkpoints" / "base" / "step_000120" / "model.safetensors").stat().st_mtime_ns
    assert main(["import", "nanochat", "--checkpoint", str(FIXTURE), "--tokenizer", str(TOK),
                 "--run-dir", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run / "checkpoints" / "base" / "step_000120" / "model.safetensors").stat().st_mtime_ns == before
    # the same tokenizer is accepted for another stage; a different one is refused
    assert main(["import", "nanochat", "--checkpoint", str(FIXTURE), "--tokenizer", str(TOK),
                 "--run-dir", str(run), "--stage", "sft"]) == 0
    assert (run / "checkpoints" / "sft" / "step_000120" / "meta.json").is_file()


# ---------------------------------------------------------------------------------------------- every vintage
def _fake_nanochat(v, mc, seed=0, pad_to=64, bf16_embeddings=False):
    """A random state_dict in vintage v's nanochat layout (scaled so that every feature moves the logits)."""
    g = torch.Generator().manual_seed(seed)
    V, C, n_layer = mc["vocab_size"], mc["n_embd"], mc["n_layer"]
    Vp = -(-V // pad_to) * pad_to
    kv = mc["n_kv_head"] * (C // mc["n_head"])

    def r(*shape, s=1.0):
        return torch.randn(*shape, generator=g) * s

    sd = {"transformer.wte.weight": r(Vp, C), "lm_head.weight": r(Vp, C, s=0.3)}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        sd.update({h + "attn.c_q.weight": r(C, C, s=C ** -0.5), h + "attn.c_k.weight": r(kv, C, s=C ** -0.5),
                   h + "attn.c_v.weight": r(kv, C, s=C ** -0.5), h + "attn.c_proj.weight": r(C, C, s=C ** -0.5),
                   h + "mlp.c_fc.weight": r(4 * C, C, s=C ** -0.5), h + "mlp.c_proj.weight": r(C, 4 * C, s=0.02)})
        if v.ve_gate_channels and nc.has_ve(i, n_layer):
            sd[h + "attn.ve_gate.weight"] = r(mc["n_kv_head"], v.ve_gate_channels)
            sd[f"value_embeds.{i}.weight"] = r(Vp, kv)
    if v.lambdas:
        sd["resid_lambdas"], sd["x0_lambdas"] = 1 + r(n_layer, s=0.2), r(n_layer, s=0.3)
    if v.smear:
        sd.update({"smear_gate.weight": r(1, 24), "smear_lambda": r(1).abs() + 0.3, "backout_lambda": r(1) * 0.5})
    if bf16_embeddings:  # nanochat keeps wte and the value embeddings in the compute dtype on GPUs
        sd = {k: t.bfloat16() if ("wte" in k or "value_embeds" in k) else t for k, t in sd.items()}
    return sd


def _write(d: Path, sd, mc, step=5):
    d.mkdir(parents=True, exist_ok=True)
    torch.save(sd, d / f"model_{step:06d}.pt")
    (d / f"meta_{step:06d}.json").write_text(json.dumps({"step": step, "model_config": mc, "user_config": {}}))
    return d


@pytest.mark.parametrize("vintage", [v.name for v in nc.VINTAGES])
def test_every_vintage_matches_the_naive_nanochat_forward(tmp_path, vintage):
    v = next(x for x in nc.VINTAGES if x.name == vintage)
    mc = {"sequence_len": 256, "vocab_size": 500, "n_layer": 4, "n_head": 2, "n_kv_head": 1, "n_embd": 64}
    if vintage != "original":
        mc["window_pattern"] = "SSL"
    sd = _fake_nanochat(v, mc, bf16_embeddings=vintage == "value-embeds")
    saved = {f"_orig_mod.{k}": t for k, t in sd.items()} if vintage == "gate12" else sd  # torch.compile'd model
    model, _, got, _ = nc.load_nanochat(_write(tmp_path / "ck", saved, mc))
    assert got.name == vintage
    ids = torch.randint(0, 500, (200,), generator=torch.Generator().manual_seed(1)).tolist()  # > the S window
    want = naive_nanochat(sd, mc, v, ids)
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
    assert logits.shape == (200, 500)  # nanochat's padding rows (500 -> 512) are cropped
    assert torch.allclose(logits.double(), want, atol=2e-4, rtol=0), (logits.double() - want).abs().max()


# ---------------------------------------------------------------------------------------------- refusals
def test_unknown_layout_lists_unknown_and_missing_keys(tmp_path):
    v = nc.VINTAGES[0]
    mc = {"sequence_len": 64, "vocab_size": 128, "n_layer": 2, "n_head": 1, "n_kv_head": 1, "n_embd": 64,
          "window_pattern": "L"}
    sd = _fake_nanochat(v, mc)
    sd["v0_lambdas"] = torch.zeros(2)  # a short-lived layout of 2026-01-16
    del sd["transformer.h.1.mlp.c_fc.weight"]
    with pytest.raises(RaychatError, match=r"unknown keys \['v0_lambdas'\]; missing keys "
                                           r"\['transformer.h.1.mlp.c_fc.weight'\]"):
        nc.load_nanochat(_write(tmp_path / "ck", sd, mc))
    sd = _fake_nanochat(v, mc)
    sd["transformer.h.1.attn.ve_gate.weight"] = torch.zeros(1, 20)
    with pytest.raises(RaychatError, match="value-embedding gate of shape"):
        nc.load_nanochat(_write(tmp_path / "ck2", sd, mc))
    with pytest.raises(RaychatError, match=r"unknown fields \['engram_dim'\]"):
        nc.load_nanochat(_write(tmp_path / "ck3", _fake_nanochat(v, mc), {**mc, "engram_dim": 8}))


def test_truncated_or_foreign_files_are_refused(tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(FIXTURE, ck, ignore=shutil.ignore_patterns("reference.json"))
    (ck / "model_000120.pt").chmod(0o644)
    raw = (ck / "model_000120.pt").read_bytes()
    (ck / "model_000120.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RaychatError, match="truncated or corrupt"):
        nc.load_nanochat(ck)
    torch.save({"w": torch.zeros(1), "cfg": _Evil()}, ck / "model_000120.pt")  # not only tensors
    with pytest.raises(RaychatError, match="objects other than tensors"):
        nc.load_nanochat(ck)
    (ck / "meta_000120.json").chmod(0o644)
    (ck / "meta_000120.json").write_text('{"step": 120, "model_con')
    with pytest.raises(RaychatError, match="not readable JSON"):
        nc.read_checkpoint(ck)
    with pytest.raises(RaychatError, match="no checkpoint at step 7"):
        nc.read_checkpoint(FIXTURE, step=7)


class _Evil:
    """Unpickling this runs a command: the tokenizer reader must refuse it without running anything."""

    def __init__(self, marker=None):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker or "/nonexistent/x"),))


def test_tokenizer_pickle_with_anything_but_an_encoding_is_refused(tmp_path):
    marker = tmp_path / "ran"
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer.pkl").write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(RaychatError, match=r"refusing pathlib"):
        nc.read_tokenizer(d)
    assert not marker.exists()
    raw = (TOK / "tokenizer.pkl").read_bytes()
    (d / "tokenizer.pkl").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(RaychatError, match="refused"):
        nc.read_tokenizer(d)
    (d / "tokenizer.pkl").write_bytes(raw)
    torch.save(torch.zeros(8192, dtype=torch.long), d / "token_bytes.pt")
    with pytest.raises(RaychatError, match="does not match the ranks"):
        nc.read_tokenizer(d)


def test_tokenizer_of_another_size_is_refused(tmp_path):
    v = nc.VINTAGES[0]
    mc = {"sequence_len": 64, "vocab_size": 500, "n_layer": 2, "n_head": 1, "n_kv_head": 1, "n_embd": 64,
          "window_pattern": "L"}
    ck = _write(tmp_path / "ck", _fake_nanochat(v, mc), mc)
    with pytest.raises(RaychatError, match="8192 ids, the model 500"):
        nc.import_checkpoint(ck, TOK, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written
