"""Pretraining through Ray Train with 2 CPU workers (gloo): one worker is SIGKILLed mid-run, Ray Train restarts
the worker group from the last checkpoint, the job finishes, and the steps replayed after the restart give the
same losses as before the crash. Prometheus metrics are scraped from rank 0 while the job runs."""

import json
import shutil

import pytest
from conftest import free_port, scraping

from raychat.train.config import PretrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_two_workers_survive_a_killed_worker_and_resume_exactly(ray_session, tiny_run_dir, shared_data, tmp_path,
                                                                  monkeypatch):
    from raychat.train.ray_job import run_job

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir / "tokenizer", run / "tokenizer")
    port = free_port()
    monkeypatch.setenv("RAYCHAT_METRICS_PORT", str(port))
    monkeypatch.setenv("RAYCHAT_FAULT_AT_STEP", "6")
    monkeypatch.setenv("RAYCHAT_FAULT_MARKER", str(tmp_path / "killed"))
    cfg = PretrainConfig(run_dir=str(run), data_dir=str(shared_data / "pretrain"), depth=2, aspect_ratio=32,
                         head_dim=32, seq_len=64, window_pattern="L", device_batch_size=2, total_batch_size=256,
                         num_iterations=10, eval_every=-1, eval_tokens=1024, sample_every=-1, save_every=4,
                         log_every=1, num_workers=2, scale_lr=False)

    with scraping(f"http://127.0.0.1:{port}/metrics", 'raychat_train_step{stage="pretrain"}', interval=0.5) as scraped:
        result = run_job("raychat.train.pretrain", cfg, num_workers=2, use_gpu=False, name="fault-test",
                         storage_path=run / "ray", max_failures=2, num_to_keep=2)
    assert result.error is None
    assert (tmp_path / "killed").read_text().startswith("killed rank 1 at step 6")
    ev = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_ev = [e for e in ev if e["event"] == "train"]
    steps = [e["step"] for e in train_ev]
    # steps 1..6 ran, the crash came after step 6, the restart resumed from the step-4 checkpoint
    assert steps[:6] == [1, 2, 3, 4, 5, 6] and steps[6:] == [5, 6, 7, 8, 9, 10]
    before = {e["step"]: e["raw_loss"] for e in train_ev[:6]}
    after = {e["step"]: e["raw_loss"] for e in train_ev[6:]}
    for s in (5, 6):
        assert after[s] == pytest.approx(before[s], rel=1e-5, abs=1e-6)
    assert [e for e in ev if e["event"] == "done"][-1]["step"] == 10
    assert (run / "checkpoints" / "base" / "step_000010" / "optim_rank1.pt").is_file()
    assert result.checkpoint is not None
    assert scraped, "no Prometheus scrape succeeded while the job ran"
    body = scraped[-1]
    for name in ("raychat_train_loss", "raychat_train_tokens_per_second", "raychat_train_mfu",
                 "raychat_train_step_seconds"):
        assert f'{name}{{stage="pretrain"}}' in body
