"""The report card from a synthetic run directory, and benchmark recording into RESULTS.md."""

import json
from pathlib import Path

import pytest
import torch

from raychat.checkpoint import save_checkpoint
from raychat.model import GPT, GPTConfig
from raychat.report import build_report


def _run_dir(tmp_path):
    run = tmp_path / "run"
    cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    with torch.device("meta"):
        m = GPT(cfg)
    m.to_empty(device="cpu")
    m.init_weights()
    save_checkpoint(run / "checkpoints" / "base", 20, m, config={"preset": "tiny_cpu", "depth": 2},
                    meta={"plan": {"num_iterations": 20, "total_batch_size": 256, "total_tokens": 5120,
                                   "scaling_params": 1000}, "total_training_time": 12.5, "val_bpb": 1.9})
    events = [{"job": "pretrain", "event": "start"},
              {"job": "pretrain", "event": "plan", "flops_per_token": 1e6, "total_batch_size": 256}]
    events += [{"job": "pretrain", "event": "train", "step": s, "loss": 5 - s / 10, "tokens_per_second": 1000.0,
                "mfu": 0.3} for s in range(1, 21)]
    events += [{"job": "pretrain", "event": "eval", "step": s, "val_bpb": 3 - s / 20} for s in (0, 10, 20)]
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, events)) + "\n{truncated by a cra")
    core = {"core_metric": 0.05, "num_tasks": 1, "max_per_task": 10, "tasks": [{"label": "copa",
            "task_type": "multiple_choice"}], "num_examples": {"copa": 10}, "results": {"copa": 0.6},
            "centered_results": {"copa": 0.2}, "missing": ["squad"]}
    (run / "evals").mkdir()
    (run / "evals" / "base.json").write_text(json.dumps({"core": core, "val_bpb": 1.9, "samples": ["The cat"]}))
    (run / "evals" / "chat_sft.json").write_text(json.dumps({"chatcore": 0.1, "results": {
        "ARC-Easy": {"accuracy": 0.3, "centered": 0.0667, "num_passed": 3, "num_total": 10}}}))
    (run / "evals" / "sft_quick_chat_eval.json").write_text(json.dumps({"step": 6, "results": {
        "SimpleArithmetic": {"accuracy": 0.5, "centered": 0.5, "num_passed": 4, "num_total": 8},
        "mean_centered": 0.5}}))
    (run / "evals" / "rl_pass_at_k.json").write_text(json.dumps({"task": "SimpleArithmetic", "k": 4, "evals": [
        {"step": 0, "pass@1": 0.1, "pass@k": 0.3, "eval_problems": 64},
        {"step": 100, "pass@1": 0.3, "pass@k": 0.4, "eval_problems": 64}]}))
    (run / "speedrun.json").write_text(json.dumps({"hardware": "cpu", "stages": {
        "pretrain": {"seconds": 120.0, "status": "ran"}, "sft": {"seconds": 60.0, "status": "ran"}}}))
    return run


def test_report_has_every_section_and_plots(tmp_path):
    run = _run_dir(tmp_path)
    out = build_report(run, price_per_hour=2.0)
    md = out.read_text()
    for needle in ("## Environment", "commit", "### base (step 20", "training time: 12.5 s", "## Curves",
                   "plots/pretrain_curves.png", "CORE = **0.0500**",
                   "| copa | multiple_choice | 10 | 0.6000 | 0.2000 |",
                   "Missing tasks: squad", "ChatCORE = **0.1000**", "| ARC-Easy |", "Total wall time 3.0 min",
                   "estimated cost $0.10", "The cat", "## SFT: quick chat eval at step 6",
                   "| SimpleArithmetic | 0.5000 |",
                   "## RL (GRPO) on SimpleArithmetic", "| 100 | 0.3000 | 0.4000 | 64 |"):
        assert needle in md, needle
    png = run / "plots" / "pretrain_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_record_replaces_its_own_section(tmp_path, monkeypatch):
    import raychat.commands.bench as bench

    monkeypatch.setattr(bench, "REPO_ROOT", tmp_path)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "RESULTS.md").write_text("# Benchmark results\n\nhand-written summary\n")
    bench.record("train", "raychat bench train", "table v1", "1.00 1.00 1.00")
    bench.record("engine", "raychat bench engine", "engine table", "1.00 1.00 1.00")
    bench.record("train", "raychat bench train", "table v2", "0.50 0.50 0.50")
    text = (tmp_path / "benchmarks" / "RESULTS.md").read_text()
    assert "hand-written summary" in text and "engine table" in text
    assert "table v2" in text and "table v1" not in text
    assert text.count("<!-- bench:train -->") == 1
    assert "- command: `raychat bench train`" in text and "- machine:" in text and "- commit:" in text
    assert (tmp_path / "benchmarks" / "results" / "train.txt").read_text() == "table v2"


def test_bench_train_runs_a_cpu_config_and_names_every_config_on_a_typo(monkeypatch):
    """The training benchmark's table (one CPU config, one step) and its refusal of an unknown config, which
    lists the GPU configurations too."""
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sys.modules.pop("bench_train", None)
    import bench_train

    res = bench_train.main(["--configs", "ref-d4", "--steps", "1", "--warmup", "0"])
    (row,) = res["results"]
    assert row["config"] == "ref-d4" and row["tokens_per_s"] > 0 and row["peak_mem_gib"] is None
    assert "| ref-d4 | 4 | 256 | 256 | 8 | 8192 |" in res["markdown"] and row["mfu"] > 0
    with pytest.raises(SystemExit, match="unknown config 'd99'; choose from .*d12, d20, d24"):
        bench_train.main(["--configs", "d99"])


def test_bench_sdpa_shapes_refuses_without_a_gpu(monkeypatch):
    """The cuDNN-vs-flash shape benchmark exists for CUDA only and says so (it ran on an H200: RESULTS.md)."""
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sys.modules.pop("bench_sdpa_shapes", None)
    import bench_sdpa_shapes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench_sdpa_shapes.main()


def test_bench_results_go_to_a_writable_folder(tmp_path, monkeypatch):
    """Inside the image the source tree is not writable: results go to $RAYCHAT_HOME/bench, or to --out."""
    import raychat.commands.bench as bench

    monkeypatch.setattr(bench, "REPO_ROOT", tmp_path / "installed")          # no writable benchmarks/ there
    monkeypatch.setenv("RAYCHAT_HOME", str(tmp_path / "home"))
    d = bench.results_dir(None)
    assert d == tmp_path / "home" / "bench" and d.is_dir()
    bench.record("muon", "raychat bench muon", "table", "0.1 0.1 0.1", d)
    assert (d / "results" / "muon.txt").read_text() == "table" and "## muon" in (d / "RESULTS.md").read_text()
    assert bench.results_dir(str(tmp_path / "mine")) == tmp_path / "mine"
    (tmp_path / "file").write_text("x")
    from raychat.common import RaychatError

    with pytest.raises(RaychatError, match="cannot create the benchmark results folder"):
        bench.results_dir(str(tmp_path / "file" / "sub"))


def test_bench_muon_runs_without_pytest():
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("import sys, runpy; sys.modules['pytest'] = None; sys.argv = ['bench_muon.py', '--rounds', '1']; "
            "runpy.run_path('benchmarks/bench_muon.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": f"{root / 'libs'}:{root / 'services'}"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith(("muon_step[", "polar_express["))]
    assert len(rows) == 6 and all(float(line.split()[-1]) > 0 for line in rows)   # GFLOP/s column
