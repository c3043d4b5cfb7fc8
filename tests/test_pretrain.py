"""Pretraining loop without Ray: it learns, logs what it should, checkpoints, and resumes exactly."""

import gc
import json
import shutil

import pytest

from raychat.train.config import PRESETS, PretrainConfig, derive, get_preset
from raychat.train.harness import LocalContext
from raychat.train.schedule import lr_multiplier, muon_momentum, weight_decay_at


def tiny_cfg(run_dir, shared_data, **kw):
    base = dict(run_dir=str(run_dir), data_dir=str(shared_data / "pretrain"), depth=2, aspect_ratio=32, head_dim=32,
                seq_len=64, window_pattern="L", device_batch_size=4, total_batch_size=256, num_iterations=12,
                eval_every=12, eval_tokens=2048, sample_every=-1, save_every=-1, log_every=1, num_workers=1,
                metrics_port=0, matrix_lr=0.04, unembedding_lr=0.01, scale_lr=False, warmdown_ratio=0.3)
    base.update(kw)
    return PretrainConfig(**base)


def events(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


@pytest.fixture()
def run_with_tokenizer(tmp_path, tiny_run_dir):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tiny_run_dir / "tokenizer", run / "tokenizer")
    return run


def test_tiny_pretrain_learns_logs_and_checkpoints(run_with_tokenizer, shared_data, monkeypatch):
    import raychat.train.pretrain as pretrain
    from raychat.train.schedule import muon_schedule_

    calls = []  # regression: the loop set momentum with muon_momentum(step) alone, so no warm-down to 0.90

    collector = []  # the harness pauses Python's cycle collector after the first step, for the rest of the loop

    def spy(opt, step, n, warmdown_ratio, *a):
        calls.append((step, n, warmdown_ratio))
        collector.append(gc.isenabled())
        return muon_schedule_(opt, step, n, warmdown_ratio, *a)

    monkeypatch.setattr(pretrain, "muon_schedule_", spy)
    run = run_with_tokenizer
    cfg = tiny_cfg(run, shared_data, num_iterations=30, eval_every=15)
    summary = pretrain.train(cfg, LocalContext())
    assert calls == [(it, 30, cfg.warmdown_ratio) for it in range(30)]
    assert collector == [True] + [False] * 29 and gc.isenabled()
    evals = events(run, "eval")
    assert [e["step"] for e in evals] == [0, 15, 30]
    assert evals[-1]["val_bpb"] < 0.8 * evals[0]["val_bpb"]
    train_ev = events(run, "train")
    assert len(train_ev) == 30
    for key in ("loss", "tokens_per_second", "mfu", "step_seconds", "lr", "total_training_time"):
        assert all(isinstance(e[key], float) for e in train_ev), key
    assert 0 < train_ev[-1]["mfu"] < 1
    assert train_ev[-1]["raw_loss"] < train_ev[0]["raw_loss"]
    plan = events(run, "plan")[0]
    assert plan["grad_accum_steps"] == 1 and plan["num_iterations"] == 30
    ckpt = run / "checkpoints" / "base" / "step_000030"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 30 and meta["config"]["depth"] == 2 and "loader" in meta["rank_state"]["0"]
    assert (ckpt / "optim_rank0.pt").is_file()
    assert summary["total_training_time"] > 0


def test_resume_reproduces_the_uninterrupted_run(run_with_tokenizer, shared_data, tmp_path):
    from raychat.checkpoint import latest_checkpoint
    from raychat.train.pretrain import train

    run_a = run_with_tokenizer
    train(tiny_cfg(run_a, shared_data, save_every=6, keep_checkpoints=5, eval_every=-1), LocalContext())
    # a second run dir that only has the step-6 checkpoint, as if the job had died right after it
    run_b = tmp_path / "b"
    shutil.copytree(run_a / "tokenizer", run_b / "tokenizer")
    shutil.copytree(run_a / "checkpoints" / "base" / "step_000006", run_b / "checkpoints" / "base" / "step_000006")
    resume = latest_checkpoint(run_b / "checkpoints" / "base")
    train(tiny_cfg(run_b, shared_data, save_every=6, eval_every=-1), LocalContext(resume_from=resume))
    a = {e["step"]: e["raw_loss"] for e in events(run_a, "train")}
    b = {e["step"]: e["raw_loss"] for e in events(run_b, "train")}
    assert sorted(b) == list(range(7, 13))
    for s in b:
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6), s


def test_schedules():
    assert lr_multiplier(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_multiplier(50, 100, warmdown_ratio=0.4) == 1.0
    assert lr_multiplier(80, 100, warmdown_ratio=0.4) == pytest.approx(0.5)
    assert lr_multiplier(100, 100, warmdown_ratio=0.4, final_lr_frac=0.1) == pytest.approx(0.1)
    assert muon_momentum(0) == pytest.approx(0.85) and muon_momentum(400) == pytest.approx(0.97)
    assert weight_decay_at(50, 100, 0.2) == pytest.approx(0.1)


def test_derivation_follows_the_depth_dial():
    d12 = derive(get_preset("d12"), 32768, 8)
    assert d12["total_batch_size"] == 2**19 and d12["lr_scale"] == 1.0
    assert d12["total_tokens"] == pytest.approx(12 * d12["scaling_params"], rel=1e-3)
    d20 = derive(get_preset("d20"), 32768, 8)
    assert d20["total_batch_size"] == 2**20  # 2^19 * (D20/D12)^0.383 rounds to 2^20
    assert d20["matrix_lr"] == pytest.approx(0.02 * 2**0.5)
    assert d20["weight_decay"] < 0.2  # longer horizon -> smaller decay
    assert d20["grad_accum_steps"] == 2**20 // (32 * 2048 * 8)
    with pytest.raises(ValueError, match="not a multiple"):
        derive(get_preset("d12").replace(total_batch_size=1000), 32768, 8)


def test_presets_and_validation():
    assert set(PRESETS) == {"tiny_cpu", "d12", "d20", "gpt2_8xh100"}
    tiny = get_preset("tiny_cpu")
    assert (tiny.depth, tiny.seq_len, tiny.total_batch_size, tiny.num_workers) == (4, 256, 2048, 2)
    with pytest.raises(ValueError, match="depth must be > 0"):
        PretrainConfig(depth=0)
    with pytest.raises(ValueError, match="fp8"):
        PretrainConfig(fp8="e4m3")
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("gpt5")


def test_fp8_and_missing_tokenizer_are_refused_clearly(tmp_path, shared_data):
    from raychat.common import RaychatError
    from raychat.train.pretrain import train

    with pytest.raises(RaychatError, match="no tokenizer"):
        train(tiny_cfg(tmp_path, shared_data), LocalContext())
    from raychat.train.pretrain import apply_gpu_options

    with pytest.raises(RaychatError, match="fp8 training needs a CUDA GPU"):
        apply_gpu_options(None, tiny_cfg(tmp_path, shared_data, fp8="tensorwise"), "cpu")


def test_max_seconds_stops_early_with_a_final_checkpoint(run_with_tokenizer, shared_data):
    from raychat.checkpoint import latest_checkpoint, read_meta
    from raychat.train.pretrain import train

    run = run_with_tokenizer
    summary = train(tiny_cfg(run, shared_data, num_iterations=50, max_seconds=1e-6, eval_every=-1), LocalContext())
    assert 1 <= summary["step"] < 50
    meta = read_meta(latest_checkpoint(run / "checkpoints" / "base"))
    assert meta["step"] == summary["step"] and meta["final"] is True


def test_convert_fp8_keeps_linears_fp8_gemms_cannot_take(monkeypatch):
    """`--fp8` swaps only the block linears whose dims are multiples of 16 (an FP8 GEMM's requirement; the value-
    embedding gates, width -> kv heads, are not), never the lm_head. torchao is a GPU extra: a stand-in module
    applies the filter the way torchao's converter does."""
    import sys
    import types

    import torch

    from raychat.train.pretrain import convert_fp8
    from tests.conftest import tiny_gpt

    class Float8Linear(torch.nn.Linear):
        pass

    def convert_to_float8_training(module, *, config, module_filter_fn):
        assert config == "tensorwise"
        for parent_name, parent in list(module.named_modules()):
            for name, child in list(parent.named_children()):
                fqn = f"{parent_name}.{name}".lstrip(".")
                if isinstance(child, torch.nn.Linear) and module_filter_fn(child, fqn):
                    child.__class__ = Float8Linear
        return module

    fake = types.ModuleType("torchao.float8")
    fake.convert_to_float8_training = convert_to_float8_training
    fake.Float8LinearConfig = types.SimpleNamespace(from_recipe_name=lambda name: name)
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.float8", fake)
    model = tiny_gpt(vocab_size=512, depth=2, width=64)
    gates = [b.attn.ve_gate for b in model.blocks if b.attn.ve_gate is not None]
    assert gates and all(g.out_features % 16 for g in gates)  # the case the filter exists for
    n = convert_fp8(model, "tensorwise")
    converted = {name for name, m in model.named_modules() if isinstance(m, Float8Linear)}
    assert n == len(converted) == 2 * 6  # per block: c_q, c_k, c_v, c_proj, c_fc, mlp c_proj
    assert not any("ve_gate" in name for name in converted) and "lm_head" not in converted
