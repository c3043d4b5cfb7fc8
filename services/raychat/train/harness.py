"""What every training stage shares, so that a stage module holds only its data, its step and its evals:

    h = Harness(cfg, ctx, "sft")                  # device, threads, run dir, tokenizer, seed, resume state
    model, opt = h.build(h.lrs(cfg.init_lr_frac))  # from the resumed or the source checkpoint (or model_config)
    h.run(model, opt, num_iterations, step, evals=[Eval("eval", cfg.eval_every, val_loss)], state=..., ...)

`run` is the loop: periodic evals (not counted as training time), checkpoints (every rank's state gathered into
meta.json, optimizer shards per rank, saved only if every rank succeeded, old ones pruned), the lr schedule,
the step clock, the stop every rank agrees on (time limit, non-finite loss), metrics and reports to the
launcher at the `log_every` cadence.

A loop sees its launcher through a context (`ctx.rank`, `ctx.local_rank`, `ctx.world_size`,
`ctx.report(metrics, checkpoint_dir=None)` which every worker calls equally often, `ctx.resume_dir()`):
`LocalContext` (one process, or torchrun's env vars) here, `raychat.train.ray_job.RayContext` under Ray Train.
`launch` is the driver side: inputs checked here, before any worker starts, then Ray Train or this process.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from raychat.common import RaychatError, detect_device, get_dist_info, print0, resolve_run_dir
from raychat.train.metrics import TrainMetrics
from raychat.train.schedule import lr_multiplier

# stage -> (module with train(cfg, ctx) and preflight(cfg), checkpoint directory under <run>/checkpoints)
STAGES = {"pretrain": ("raychat.train.pretrain", "base"), "sft": ("raychat.train.sft", "sft"),
          "rl": ("raychat.train.grpo", "rl")}
LR_KEYS = ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr")


# ---- ranks (raychat.common.get_dist_info is the one rank/world helper) ----------------------------------
def all_reduce_sum(values: list[float], device) -> list[float]:
    """Sum floats over ranks (one collective); identity at world size 1."""
    if get_dist_info().world_size == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather(obj) -> list:
    """Every rank's small picklable object, in rank order, on every rank."""
    if get_dist_info().world_size == 1:
        return [obj]
    out = [None] * get_dist_info().world_size
    dist.all_gather_object(out, obj)
    return out


class LocalContext:
    """The context without Ray: one process, or one of torchrun's (process group from its env vars)."""

    def __init__(self, resume_from: Path | None = None):
        info = get_dist_info()
        self.world_size, self.rank, self.local_rank = info.world_size, info.rank, info.local_rank
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend)
        self._resume = resume_from
        self.reports: list[dict] = []

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        self.reports.append(dict(metrics))

    def resume_dir(self) -> Path | None:
        return self._resume

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def fault_injection(step: int, rank: int) -> None:
    """Fault-tolerance test hook: with RAYCHAT_FAULT_AT_STEP=N and RAYCHAT_FAULT_MARKER=PATH set, the last rank
    SIGKILLs itself once (the marker file remembers) when it reaches step N. Does nothing otherwise."""
    at, marker = os.environ.get("RAYCHAT_FAULT_AT_STEP"), os.environ.get("RAYCHAT_FAULT_MARKER")
    if at and marker and step == int(at) and not Path(marker).exists() and rank == get_dist_info().world_size - 1:
        import signal

        Path(marker).write_text(f"killed rank {rank} at step {step}\n")
        os.kill(os.getpid(), signal.SIGKILL)


# ---- driver side ---------------------------------------------------------------------------------------
def resolve_paths(cfg):
    """Absolute paths: Ray workers do not share the driver's working directory."""
    run_dir = resolve_run_dir(cfg.run_dir or None, cfg.run or "default")
    return cfg.replace(run_dir=str(run_dir), data_dir=str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir
                       else "")


def load_tokenizer(run_dir: Path):
    from raychat.tokenizer import Tokenizer

    if not (run_dir / "tokenizer").is_dir():
        raise RaychatError(f"no tokenizer in {run_dir / 'tokenizer'}; train one first: raychat tok-train "
                           f"--run-dir {run_dir}")
    return Tokenizer.load(run_dir / "tokenizer")


def source_checkpoint(run_dir: Path, cfg, stage: str) -> Path:
    from raychat.checkpoint import resolve_checkpoint

    try:
        return resolve_checkpoint(run_dir, cfg.source, None if cfg.source_step < 0 else cfg.source_step)
    except RaychatError as e:
        hint = {"base": "raychat pretrain", "sft": "raychat sft", "rl": "raychat rl"}[cfg.source]
        other = " (or start from another stage with --source base|sft)" if cfg.source != "base" else ""
        raise RaychatError(f"{stage}: {e}; run `{hint} --run-dir {run_dir}` first{other}") from None


def launch(stage: str, cfg, *, resume: bool = False, no_ray: bool = False, address: str | None = None,
           max_failures: int = 2) -> dict | None:
    """Check the inputs here, pick the resume checkpoint, then run the stage on Ray Train or in this process."""
    from raychat.checkpoint import latest_checkpoint

    module, ckpt_dir = STAGES[stage]
    world_size = get_dist_info().world_size if no_ray else cfg.num_workers
    cfg = importlib.import_module(module).preflight(resolve_paths(cfg), resume, world_size)
    run_dir = Path(cfg.run_dir)
    resume_from = latest_checkpoint(run_dir / "checkpoints" / ckpt_dir) if resume else None
    if resume and resume_from is None:
        raise RaychatError(f"--resume: no {ckpt_dir} checkpoint in {run_dir / 'checkpoints' / ckpt_dir}")
    if no_ray:
        ctx = LocalContext(resume_from)
        try:
            return importlib.import_module(module).train(cfg, ctx)
        finally:
            ctx.close()
    from raychat.train.ray_job import run_job

    result = run_job(module, cfg, num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, name=f"{ckpt_dir}-{run_dir.name}",
                     storage_path=run_dir / "ray", resume_from=resume_from, max_failures=max_failures,
                     num_to_keep=max(1, cfg.keep_checkpoints), address=address)
    if result.error is not None:
        raise RaychatError(f"{stage} job failed: {result.error}")
    return result.metrics


def add_stage_args(p, stage: str) -> None:
    """`raychat pretrain|sft|rl`: the config's flags and how to launch."""
    from raychat.train.config import add_config_args

    add_config_args(p, stage)
    g = p.add_argument_group("launch")
    g.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    g.add_argument("--resume", action="store_true", help="resume from the latest checkpoint of this stage in the "
                   "run dir")
    g.add_argument("--no-ray", action="store_true", help="run the loop in this process (or under torchrun) without Ray")
    g.add_argument("--max-failures", type=int, default=2, help="worker-group restarts Ray Train may do after failures")


def run_stage(stage: str, args) -> int:
    from raychat.train.config import config_from_args

    launch(stage, config_from_args(args, stage), resume=args.resume, no_ray=args.no_ray, address=args.address,
           max_failures=args.max_failures)
    return 0


def main(stage: str, argv: list[str] | None = None) -> int:
    """The torchrun entry of every stage (`torchrun --nproc_per_node 8 -m raychat.train.<stage> --preset ...`):
    the same flags as `raychat <stage> --no-ray`; a user error is one line and exit 2 on every rank."""
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m {STAGES[stage][0]}")
    add_stage_args(p, stage)
    args = p.parse_args(argv)
    try:
        return run_stage(stage, argparse.Namespace(**{**vars(args), "no_ray": True}))
    except RaychatError as e:
        print(f"raychat: error: {e}", file=sys.stderr)
        return 2


# ---- worker side ---------------------------------------------------------------------------------------
class CollectorPaused:
    """Python's cycle collector off for a training loop (nanochat's base_train does the same): after the first
    step the process holds many long-lived objects (model, optimizer state, compiled graphs, loaders) and each
    collection would rescan them every few thousand allocations, while a step creates almost no cyclic garbage.
    `pause()` (idempotent) collects once, freezes what survives and disables the collector; `collect()` runs
    a collection (after evals, which allocate more); leaving the block turns it back on and collects."""

    def __init__(self):
        self.paused = False

    def __enter__(self):
        return self

    def pause(self) -> None:
        if not self.paused and gc.isenabled():
            gc.collect()
            gc.freeze()
            gc.disable()
            self.paused = True

    def collect(self) -> None:
        if self.paused:
            gc.collect()

    def __exit__(self, *exc) -> None:
        if self.paused:
            gc.unfreeze()
            gc.enable()
            gc.collect()  # what the loop left in cycles goes now, in order, not at interpreter exit
            self.paused = False


@dataclass
class Eval:
    """A periodic evaluation: `fn(step) -> metrics` every `every` steps (> 0), at the end, at step 0 unless
    `zero=False`, and at the first step of this run (resumed or not) with `start=True`."""
    name: str
    every: int
    fn: Callable[[int], dict]
    zero: bool = True
    start: bool = False

    def due(self, step: int, start_step: int, final: bool) -> bool:
        periodic = self.every > 0 and step % self.every == 0 and (step > 0 or self.zero)
        return final or periodic or (self.start and step == start_step)


class Harness:
    """One stage's run in one worker: see the module docstring."""

    def __init__(self, cfg, ctx, job: str):
        from raychat.checkpoint import read_meta
        from raychat.model.attention import select_backend
        from raychat.model.gemm import cpu_gemm_choice

        self.cfg, self.ctx, self.job = cfg, ctx, job
        self.rank, self.world = ctx.rank, ctx.world_size
        self.dev = detect_device(cfg.device or ("cuda" if cfg.use_gpu else None), cfg.dtype or None, ctx.local_rank)
        if self.dev.device_type == "cpu":
            torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // self.world))
        self.run_dir = Path(resolve_paths(cfg).run_dir)
        self.tokenizer = load_tokenizer(self.run_dir)
        attn, why = select_backend(self.dev.device_type)  # decided before any compile
        gemm = ""
        if self.dev.device_type == "cpu":
            lib, gemm_why = cpu_gemm_choice(RaychatError)  # decided at this thread count, before any compile
            gemm = f"; fp32 GEMM {lib} ({gemm_why})"
        print0(f"[{job}] {self.dev.describe()}; attention {attn} ({why}){gemm}; world size {self.world}")
        torch.manual_seed(cfg.seed)
        self.ckpt_root = self.run_dir / "checkpoints" / STAGES[job][1]
        self.resume_dir = ctx.resume_dir()
        self.resumed = read_meta(self.resume_dir) if self.resume_dir else {}
        self.start_step = self.resumed.get("step", 0)
        self.total_time = self.resumed.get("total_training_time", 0.0)
        self.source_ckpt = self.resumed.get("source_checkpoint")
        self.plan: dict = {"world_size": self.world}
        self.last: dict = {}  # the latest step's metrics

    def rank_state(self, key: str):
        """This rank's `key` from the checkpoint being resumed."""
        state = self.resumed.get("rank_state", {}).get(str(self.rank), {})
        if key not in state:
            raise RaychatError(f"checkpoint {self.resume_dir} has no {key} state for rank {self.rank}")
        return state[key]

    def lrs(self, scale: float = 1.0) -> dict:
        return {**{k: getattr(self.cfg, k) * scale for k in LR_KEYS}, "weight_decay": self.cfg.weight_decay}

    def build(self, lrs: dict, model_config: dict | None = None):
        """(model, MuonAdamW): from the checkpoint being resumed (optimizer included), else fresh from
        `model_config`, else the weights of the source stage's checkpoint. Every rank loads the same weights, so
        parameters start identical (the optimizer's requirement)."""
        from raychat.checkpoint import build_model, load_state, read_meta
        from raychat.optim import build_optimizer

        ckpt = self.resume_dir
        if ckpt is None and model_config is None:
            ckpt = source_checkpoint(self.run_dir, self.cfg, self.job)
            self.source_ckpt = str(ckpt)
        if ckpt is not None:
            model_config = read_meta(ckpt).get("model_config")
            if model_config is None:
                raise RaychatError(f"checkpoint {ckpt}: meta.json has no model_config")
        model = build_model(model_config, device=self.dev.device, dtype=self.dev.dtype)
        # compile the optimizer step with the model (RAYCHAT_OPTIM_COMPILE=0: eager step, compiled model)
        opt_compile = self.cfg.compile and os.environ.get("RAYCHAT_OPTIM_COMPILE", "1") != "0"
        optimizer = build_optimizer(model, **lrs, compile=opt_compile)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g.setdefault("initial_weight_decay", g.get("weight_decay", 0.0))
        if ckpt is not None:
            load_state(ckpt, model, optimizer if self.resume_dir else None, rank=self.rank)
        if self.resume_dir:
            print0(f"[{self.job}] resumed from {self.resume_dir} at step {self.start_step}")
        self.plan["source_checkpoint"] = self.source_ckpt
        return model, optimizer

    def write_eval(self, name: str, obj) -> None:
        """<run>/evals/<name>.json, atomically, from rank 0."""
        if self.rank == 0:
            path = self.run_dir / "evals" / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".tmp").write_text(json.dumps(obj, indent=2, default=str))
            os.replace(path.with_suffix(".tmp"), path)

    def compiled(self, model):
        return torch.compile(model, dynamic=False) if self.cfg.compile else model

    def sync(self) -> None:
        if self.dev.device_type == "cuda":
            torch.cuda.synchronize()

    def checkpoint(self, step: int, model, optimizer, state: dict, meta: dict) -> Path:
        from raychat.checkpoint import list_checkpoints, save_checkpoint

        meta = {"total_training_time": self.total_time, "plan": self.plan, "source_checkpoint": self.source_ckpt,
                "rank_state": {str(r): s for r, s in enumerate(gather(state))}, **meta}
        path = save_checkpoint(self.ckpt_root, step, model, optimizer, self.cfg.to_dict(), meta, self.rank,
                               self.world)
        if self.rank == 0 and self.cfg.keep_checkpoints > 0:
            for _, old in list_checkpoints(self.ckpt_root)[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def run(self, model, optimizer, num_iterations: int, step_fn: Callable[[int], dict], evals: list[Eval] = (),
            state: Callable[[], dict] = dict, meta: Callable[[int], dict] = lambda step: {},
            finish: Callable | None = None, progress: dict | None = None, flops_per_token: float = 0.0,
            count_first_step: bool = True) -> dict:
        """The loop. step_fn(step) does one optimizer step and returns its metrics: `loss` (smoothed here, the
        raw value kept as raw_loss), `tokens` (positions processed by all ranks, for throughput) and any others.
        state() is this rank's resumable state, meta(step) extra checkpoint metadata, finish(step, path) runs after
        the final checkpoint and returns extra summary fields."""
        from raychat.perf import mfu, peak_flops

        cfg, rank = self.cfg, self.rank
        peak, peak_src = peak_flops(self.dev.device_type, self.dev.dtype) if flops_per_token else (0.0, None)
        if flops_per_token:
            self.plan.update(flops_per_token=flops_per_token, peak_flops=peak, peak_flops_source=peak_src)
        print0(f"[{self.job}] plan: {self.plan}")
        self.sink = sink = TrainMetrics(self.run_dir, self.job, rank, num_iterations, self.start_step, cfg.run or None,
                            {"config": cfg.to_dict(), "plan": self.plan, "model": model.config.to_dict()},
                            None if cfg.metrics_port < 0 else cfg.metrics_port, cfg.metrics_host or None)
        sink.log({"event": "plan", **self.plan, "device": str(self.dev.device), "dtype": str(self.dev.dtype),
                  "resumed_from": str(self.resume_dir) if self.resume_dir else None})
        step, last, latest, extra, ema, stop = self.start_step, {}, {}, {}, 0.0, False
        model.train()
        with CollectorPaused() as collector:
            while True:
                final = step == num_iterations or stop
                for ev in evals:
                    if ev.due(step, self.start_step, final):
                        model.eval()
                        res = ev.fn(step)
                        model.train()
                        collector.collect()
                        if res:
                            sink.log({"event": ev.name, "step": step, **res})
                            figures = {k: v for k, v in res.items() if isinstance(v, float)}
                            latest.update(figures)
                            if figures:
                                print0(f"[{self.job}] step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                                                figures.items()))
                if final or (cfg.save_every > 0 and step > self.start_step and step % cfg.save_every == 0):
                    path = self.checkpoint(step, model, optimizer, state(),
                                           {**latest, **meta(step), "loss": last.get("loss"), "final": final})
                    if final and finish is not None:
                        model.eval()
                        extra = finish(step, path) or {}  # after the checkpoint: a failing eval never loses the weights
                    self.ctx.report({"step": step, **latest, **last}, checkpoint_dir=path)
                if final:
                    break

                lrm = lr_multiplier(step, num_iterations, cfg.warmup_steps, cfg.warmdown_ratio, cfg.final_lr_frac)
                for g in optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * lrm
                self.sync()
                t0 = time.perf_counter()
                out = step_fn(step)
                self.sync()
                dt = time.perf_counter() - t0
                step += 1
                collector.pause()  # after the first step: what it set up is long-lived
                if count_first_step or step > self.start_step + 1 or self.start_step > 0 or num_iterations < 10:
                    self.total_time += dt  # else the very first step (allocator/compile warm-up) is not counted
                # decided together: ranks that stopped at different steps, or one rank raising alone, would deadlock
                loss = float(out.pop("loss"))
                bad, late = all_reduce_sum([not math.isfinite(loss), cfg.max_seconds > 0 and
                                            self.total_time >= cfg.max_seconds], self.dev.device)
                if bad:
                    raise RaychatError(f"{self.job}: loss is not finite at step {step} on {int(bad)} of {self.world} "
                                       f"rank(s) (this rank: {loss}): training diverged")
                stop = late > 0
                ema = 0.9 * ema + 0.1 * loss
                self.last = last = {**out, "loss": ema / (1 - 0.9 ** (step - self.start_step)), "raw_loss": loss,
                        "step_seconds": dt, "lr": lrm, "total_training_time": self.total_time}
                if "tokens" in last:
                    last["tokens_per_second"] = last.pop("tokens") / dt
                    if flops_per_token:
                        last["mfu"] = mfu(flops_per_token, last["tokens_per_second"], peak, self.world)
                sink.step(1, **{k: round(last[v], 3) for k, v in (progress or {"loss": "loss"}).items()})
                if step % cfg.log_every == 0 or step == num_iterations:
                    sink.log({"event": "train", "step": step, **last})
                    if step != num_iterations and not stop and not (cfg.save_every > 0 and step % cfg.save_every == 0):
                        self.ctx.report({"step": step, **last})
                fault_injection(step, rank)
        summary = {"event": "done", "step": step, **latest, "final_loss": last.get("loss"),
                   "total_training_time": self.total_time, "checkpoint": str(self.ckpt_root), **extra}
        sink.log(summary)
        sink.close()
        print0(f"[{self.job}] done: step {step}, " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()
                                                                 if isinstance(v, float)))
        return summary
