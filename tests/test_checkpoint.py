"""Checkpoints: round trip, atomicity, listing, and clear errors for broken or mismatched files."""

import json

import pytest
import torch

from raychat.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_model,
    load_state,
    resolve_checkpoint,
    save_checkpoint,
)
from raychat.common import RaychatError
from raychat.model import GPT, GPTConfig


def _model(seed=0, **kw):
    cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32, **kw)
    torch.manual_seed(seed)
    with torch.device("meta"):
        m = GPT(cfg)
    m.to_empty(device="cpu")
    m.init_weights()
    return m


def test_round_trip_with_optimizer_and_meta(tmp_path):
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))).backward()
    opt.step()
    d = save_checkpoint(tmp_path / "base", 7, m, opt, config={"lr": 1e-3}, meta={"loader": {"pos": 3}})
    assert d.name == "step_000007"
    m2 = _model(seed=1)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    meta = load_state(d, m2, opt2)
    assert meta["step"] == 7 and meta["loader"] == {"pos": 3} and meta["config"] == {"lr": 1e-3}
    assert "commit" in meta["code"]
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)


def test_listing_latest_and_resave_same_step(tmp_path):
    m = _model()
    for s in (5, 1, 12):
        save_checkpoint(tmp_path, s, m)
    (tmp_path / ".tmp-step_000099").mkdir()  # a crashed write is never listed
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 5, 12]
    assert latest_checkpoint(tmp_path).name == "step_000012"
    save_checkpoint(tmp_path, 12, m, meta={"again": True})
    assert json.loads((tmp_path / "step_000012" / "meta.json").read_text())["again"] is True
    assert resolve_checkpoint(tmp_path, step=5).name == "step_000005"
    with pytest.raises(RaychatError, match="no checkpoint at step 6"):
        resolve_checkpoint(tmp_path, step=6)


def test_truncated_weights_give_a_clear_error(tmp_path):
    d = save_checkpoint(tmp_path, 1, _model())
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(RaychatError, match="truncated or corrupt"):
        load_state(d, _model())


def test_mismatched_model_and_missing_optimizer_shard(tmp_path):
    d = save_checkpoint(tmp_path, 1, _model())
    with pytest.raises(RaychatError, match="does not match the model"):
        load_state(d, _model(value_embeds=False))
    m = _model()
    with pytest.raises(RaychatError, match="no optimizer state for rank 0"):
        load_state(d, m, torch.optim.AdamW(m.parameters()))


def test_missing_checkpoint_and_corrupt_meta(tmp_path):
    with pytest.raises(RaychatError, match="no sft checkpoint found"):
        resolve_checkpoint(tmp_path, stage="sft")
    d = save_checkpoint(tmp_path / "checkpoints" / "base", 3, _model())
    (d / "meta.json").write_text("{not json")
    with pytest.raises(RaychatError, match="corrupt"):
        load_model(tmp_path, stage="base")


def test_load_model_from_run_dir(tmp_path):
    m = _model()
    save_checkpoint(tmp_path / "checkpoints" / "base", 2, m)
    m2, tok, meta = load_model(tmp_path, stage="base")
    assert tok is None and meta["step"] == 2 and not m2.training
    idx = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(m2(idx), m(idx))
