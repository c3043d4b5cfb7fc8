"""The training harness: each stage's torchrun entry takes the documented flags (--preset included) and runs
under 2 gloo processes; the stop and the checkpoint save are agreed across ranks; deterministic errors are found
in the driver before any worker starts."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, scraping

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'libs'}:{ROOT / 'services'}", "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("module", ["pretrain", "sft", "grpo"])
def test_torchrun_entry_accepts_preset(module, tmp_path):
    """Regression: `python -m raychat.train.pretrain --preset gpt2_8xh100` (README, module docstring) was
    rejected by argparse. With a run dir that has no tokenizer the entry must get past parsing and end on one
    clear line naming what is missing, without a traceback."""
    r = subprocess.run([sys.executable, "-m", f"raychat.train.{module}", "--preset", "gpt2_8xh100", "--run-dir",
                        str(tmp_path), "--data-dir", str(tmp_path)], capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert "unrecognized arguments" not in r.stderr, r.stderr
    assert r.returncode == 2 and "tokenizer" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _torchrun(module: str, args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", f"raychat.train.{module}", "--preset", "tiny_cpu", "--metrics-port", "0",
                           "--num-threads", "1", *args], capture_output=True, text=True, env=_env(), timeout=600,
                          cwd=tmp_path)


def _one_run(tmp_path, tiny_run_dir, stages=("base", "sft")) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir / "tokenizer", run / "tokenizer")
    for stage in stages:
        shutil.copytree(tiny_run_dir / "checkpoints" / stage, run / "checkpoints" / stage)
    return run


def _train_steps(run: Path, job: str) -> list[int]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["step"] for e in events if e.get("job") == job and e.get("event") == "train"]


TORCHRUN_STAGES = {
    "pretrain": ("pretrain", "base", ["--depth", "2", "--aspect-ratio", "32", "--head-dim", "32", "--seq-len", "64",
                                      "--device-batch-size", "2", "--total-batch-size", "256", "--num-iterations",
                                      "2", "--eval-every", "-1", "--eval-tokens", "512", "--sample-every", "-1",
                                      "--save-every", "-1", "--compile", "false", "--log-every", "1"]),
    "sft": ("sft", "sft", ["--mixture", "SimpleArithmetic", "--synthetic-size", "40", "--num-val-examples", "4",
                           "--device-batch-size", "2", "--total-batch-rows", "4", "--num-iterations", "2",
                           "--chat-eval-tasks", "", "--log-every", "1"]),
    "rl": ("grpo", "rl", ["--max-operand", "3", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens",
                          "4", "--rollout-batch-size", "4", "--device-batch-size", "4", "--num-iterations", "2",
                          "--eval-examples", "2", "--eval-k", "2"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(TORCHRUN_STAGES))
def test_torchrun_entry_runs_each_stage_on_two_gloo_processes(stage, tmp_path, tiny_run_dir, shared_data):
    """`torchrun --nproc_per_node 2 -m raychat.train.<stage> --preset tiny_cpu` with tiny overrides: both ranks
    train, the checkpoint holds both ranks' optimizer shards and states, and rank 0 alone talks to the console."""
    module, ckpt, args = TORCHRUN_STAGES[stage]
    run = _one_run(tmp_path, tiny_run_dir)
    extra = ["--data-dir", str(shared_data / "pretrain")] if stage == "pretrain" else []
    r = _torchrun(module, ["--run-dir", str(run), *extra, *args], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    step = run / "checkpoints" / ckpt / "step_000002"
    meta = json.loads((step / "meta.json").read_text())
    assert set(meta["rank_state"]) == {"0", "1"} and meta["plan"]["world_size"] == 2
    assert (step / "optim_rank0.pt").is_file() and (step / "optim_rank1.pt").is_file()
    assert _train_steps(run, stage) == [1, 2]
    assert r.stdout.count(f"[{stage}] done:") == 1, r.stdout


# ---- agreement across ranks (gloo, 2 processes) ---------------------------------------------------------
def _spawned(rank: int, world_size: int, init: str, out: str, scenario: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        globals()[f"_scenario_{scenario}"](rank, Path(out))
        result = "ok"
    except Exception as e:  # noqa: BLE001 - the test reads what each rank raised
        result = f"{type(e).__name__}: {e}"
    Path(out, f"rank{rank}.txt").write_text(result)
    dist.destroy_process_group()


def _scenario_disk_full(rank: int, out: Path) -> None:
    """Rank 1's part of the checkpoint cannot be written (a full disk); rank 0's can."""
    import raychat.checkpoint as ck
    from tests.conftest import tiny_gpt

    if rank == 1:
        def full(*a, **k):
            raise OSError(28, "No space left on device")
        ck.write_checkpoint_files = full
    ck.save_checkpoint(out / "ckpts", 3, tiny_gpt(64), None, {}, {}, rank, 2)


def _scenario_nan_on_one_rank(rank: int, out: Path) -> None:
    """Rank 1's loss turns NaN at step 2; every rank must stop there, together."""
    from raychat.train.config import StageConfig
    from raychat.train.harness import Harness
    from tests.conftest import make_tiny_run_dir

    class Ctx:
        local_rank, world_size, reports = 0, 2, []

        def __init__(self):
            self.rank = rank

        def report(self, metrics, checkpoint_dir=None):
            self.reports.append(metrics)

        def resume_dir(self):
            return None

    run = out / "run"
    if rank == 0:
        make_tiny_run_dir(run, stages=())
    import torch.distributed as dist

    dist.barrier()
    h = Harness(StageConfig(run_dir=str(run), metrics_port=0, num_threads=1), Ctx(), "sft")
    model, opt = h.build(h.lrs(), {"sequence_len": 16, "vocab_size": 64, "n_layer": 1, "n_head": 1,
                                   "n_kv_head": 1, "n_embd": 32, "window_pattern": "L"})
    h.source_ckpt = None
    h.run(model, opt, 5, lambda it: {"loss": float("nan") if (rank == 1 and it == 1) else 1.0})


def _spawn(scenario: str, tmp_path: Path) -> dict[int, str]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_spawned, args=(r, 2, init, str(tmp_path), scenario)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        p.kill()
    assert not hung, f"ranks {hung} hung"
    return {r: (tmp_path / f"rank{r}.txt").read_text() for r in range(2)}


@pytest.mark.slow
def test_a_checkpoint_that_fails_on_one_rank_fails_clearly_on_every_rank(tmp_path):
    res = _spawn("disk_full", tmp_path)
    for r in (0, 1):
        assert res[r].startswith("RaychatError: saving checkpoint step 3") and "writing files on rank 1" in res[r], res
        assert "No space left on device" in res[r]
    root = tmp_path / "ckpts"
    assert sorted(p.name for p in root.iterdir()) == [], "no temp dir and no half checkpoint left behind"


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_together(tmp_path):
    res = _spawn("nan_on_one_rank", tmp_path)
    for r in (0, 1):
        assert res[r].startswith("RaychatError: sft: loss is not finite at step 2 on 1 of 2 rank(s)"), res


# ---- deterministic errors are found in the driver ---------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["pretrain"], "no tokenizer in"),
    (["pretrain", "--data-dir", "{tmp}/nope"], "data dir {tmp}/nope does not exist"),
    (["pretrain", "--total-batch-size", "1000"], "not a multiple of device_batch_size"),
    (["sft", "--source", "rl"], "no rl checkpoint found"),
    (["sft", "--mixture", "default", "--data-dir", "{tmp}/nope"], "--data-dir {tmp}/nope does not exist"),
    (["rl", "--task", "GSM8K", "--data-dir", "{tmp}/nope"], "no GSM8K data"),
    (["rl", "--num-workers", "3"], "must be a multiple of the number of workers (3)"),
])
def test_deterministic_errors_end_in_the_driver_before_any_worker(argv, message, tmp_path, tiny_run_dir,
                                                                  shared_data, monkeypatch, capsys):
    """Regression: `raychat pretrain` without a tokenizer started Ray, failed in every worker, was restarted by
    Ray's FailureConfig and ended on "Error in training function". Such errors are now one line from the
    driver, and Ray Train is never started."""
    import raychat.train.ray_job as ray_job
    from raychat.cli import main

    def no_ray(*a, **k):
        raise AssertionError("Ray Train was started for an input error")

    monkeypatch.setattr(ray_job, "run_job", no_ray)
    run = tmp_path / "run"
    if argv != ["pretrain"]:
        _one_run(tmp_path, tiny_run_dir)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    data = [] if "--data-dir" in argv or argv[0] != "pretrain" else ["--data-dir", str(shared_data / "pretrain")]
    assert main([*argv, "--run-dir", str(run), *data]) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err and len(err.strip().splitlines()) == 1, err


# ---- metrics reach Prometheus from another address ------------------------------------------------------
def test_training_metrics_are_scraped_from_the_configured_address(tmp_path, tiny_run_dir, shared_data):
    """rank 0 binds --metrics-host (here 127.0.0.2, still loopback): a scraper there sees the training gauges
    while a short pretraining runs; nothing listens on 127.0.0.1."""
    from raychat.train.config import PretrainConfig
    from raychat.train.harness import LocalContext
    from raychat.train.metrics import METRIC_NAMES
    from raychat.train.pretrain import train

    port = free_port("127.0.0.2")
    run = _one_run(tmp_path, tiny_run_dir, stages=())
    cfg = PretrainConfig(run_dir=str(run), data_dir=str(shared_data / "pretrain"), depth=2, aspect_ratio=32,
                         head_dim=32, seq_len=64, window_pattern="L", device_batch_size=4, total_batch_size=256,
                         num_iterations=40, eval_every=-1, eval_tokens=512, sample_every=-1, log_every=1,
                         num_threads=1, metrics_port=port, metrics_host="127.0.0.2")
    refused = []

    def nothing_on_127_0_0_1(_body):
        with socket.socket() as c:
            refused.append(c.connect_ex(("127.0.0.1", port)) != 0)

    with scraping(f"http://127.0.0.2:{port}/metrics", 'raychat_train_loss{stage="pretrain"}',
                  on_hit=nothing_on_127_0_0_1) as scraped:
        train(cfg, LocalContext())
    assert scraped, "no scrape from 127.0.0.2 saw the training gauges"
    assert all(refused)
    for name in ("raychat_train_loss", "raychat_train_tokens_per_second", "raychat_train_mfu",
                 "raychat_train_step_seconds", "raychat_train_step"):
        assert name in METRIC_NAMES and f'{name}{{stage="pretrain"}}' in scraped[-1]


# ---- a quiet console -------------------------------------------------------------------------------------
def test_ray_train_internal_logs_go_to_the_run_log(tmp_path):
    """The hook every process of an embedded job starts with: Ray Train's loggers (the placement-group
    cleaner's State API warning, the per-report lines of its worker context) write to the run's log file."""
    log = tmp_path / "ray_train.log"
    code = ("import logging\nfrom importlib.util import find_spec\nfrom raychat.train.ray_job import quiet_ray_train\n"
            "quiet_ray_train()\n"
            "logging.getLogger('ray.train.v2._internal.execution.controller.placement_group_cleaner')"
            ".warning('Failed to query Ray Train Controller actor state.')\n"
            "logging.getLogger(find_spec('ray.train.v2._internal.execution.context').origin)"
            ".warning('Reporting training result 1')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**_env(), "RAYCHAT_RAY_LOG": str(log)})
    assert r.returncode == 0, r.stderr
    assert "Failed to query" not in r.stderr and "Reporting training result" not in r.stderr
    assert log.read_text().splitlines() == ["Failed to query Ray Train Controller actor state.",
                                            "Reporting training result 1"]


@pytest.mark.slow
@pytest.mark.ray
def test_raychat_pretrain_on_ray_prints_each_line_once(tmp_path, tiny_run_dir, shared_data):
    """Regression: every rank-0 line reached the console twice (Ray Train's print patch sends prints to a logger
    as well as to stdout), and Ray Train's internal warnings filled it."""
    run = _one_run(tmp_path, tiny_run_dir, stages=())
    r = subprocess.run([sys.executable, "-m", "raychat.cli", "pretrain", "--preset", "tiny_cpu", "--run-dir", str(run),
                        "--data-dir", str(shared_data / "pretrain"), *TORCHRUN_STAGES["pretrain"][2],
                        "--metrics-port", "0"], capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    console = r.stdout + r.stderr
    assert console.count("[pretrain] done:") == 1 and console.count("attention sdpa") == 1, console
    assert "Failed to query Ray Train Controller" not in console and "Reporting training result" not in console
    assert (run / "ray" / "ray_train.log").is_file()


def test_no_stage_imports_another_and_nothing_below_imports_a_command():
    import ast

    services = ROOT / "services" / "raychat"
    stages = {"raychat.train.pretrain", "raychat.train.sft", "raychat.train.grpo"}
    bad = []
    for f in [*(services / "train").glob("*.py"), *(services / "serve").glob("*.py")]:
        me = f"raychat.{f.parent.name}.{f.stem}"
        for node in ast.walk(ast.parse(f.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if (me in stages and name in stages - {me}) or name.startswith(("raychat.commands", "raychat.cli")):
                    bad.append(f"{f.relative_to(ROOT)} imports {name}")
    assert not bad, bad


@pytest.mark.slow
@pytest.mark.ray
def test_an_input_error_inside_a_ray_worker_ends_on_its_own_message(ray_session, tmp_path, tiny_run_dir,
                                                                     shared_data):
    """A corrupt checkpoint is found only by the worker that loads it: the driver's error is that worker's
    one-line message, not Ray's "Error in training function" report."""
    from raychat.common import RaychatError
    from raychat.train.config import get_preset
    from raychat.train.harness import launch

    run = _one_run(tmp_path, tiny_run_dir)
    (run / "checkpoints" / "base" / "step_000001" / "model.safetensors").unlink()
    cfg = get_preset("tiny_cpu", "pretrain").replace(run_dir=str(run), data_dir=str(shared_data / "pretrain"),
                                                     depth=2, aspect_ratio=32, head_dim=32, seq_len=64,
                                                     device_batch_size=2, total_batch_size=256, num_iterations=2,
                                                     compile=False, metrics_port=0)
    with pytest.raises(RaychatError) as e:
        launch("pretrain", cfg, resume=True, max_failures=0)
    msg = str(e.value)
    # every rank loads the checkpoint, so whichever fails first is reported (rank 1 in one CI run of 2026-12-08)
    assert re.match(rf"Ray Train job base-run failed on rank [01]: checkpoint {re.escape(str(run))}/checkpoints/"
                    r"base/step_000001 has no model\.safetensors", msg), msg
    assert "Traceback" not in msg and len(msg.splitlines()) == 1


def test_collector_paused_during_the_loop_and_restored_after():
    """The harness turns Python's cycle collector off after the first step (as nanochat's loop does) and back on,
    with a collection, when the loop ends or raises: a cycle made inside is freed on the way out (regression:
    without that collection, cycles left at interpreter exit aborted torchrun ranks, "terminate called without an
    active exception")."""
    import gc
    import weakref

    from raychat.train.harness import CollectorPaused

    class Node:
        pass

    assert gc.isenabled()
    with pytest.raises(RuntimeError), CollectorPaused() as c:
        assert gc.isenabled()          # nothing changes before the first step
        c.pause()
        c.pause()                      # idempotent
        assert not gc.isenabled()
        a = Node()
        a.self = a                     # a cycle: only the collector frees it
        ref = weakref.ref(a)
        del a
        assert ref() is not None       # collector off: still alive
        raise RuntimeError("a step failed")
    assert gc.isenabled() and ref() is None
    assert gc.get_freeze_count() == 0
