"""The only Ray-aware module of the training jobs: run a loop `train(config, ctx)` under Ray Train.

    TorchTrainer(train_loop_per_worker, scaling_config=ScalingConfig(num_workers, use_gpu, resources_per_worker),
                 run_config=RunConfig(name, storage_path, failure_config=FailureConfig(max_failures),
                                      checkpoint_config=CheckpointConfig(num_to_keep)))

Embedded by default (a local Ray is started for the job); `--address` / RAY_ADDRESS targets a cluster, and
`ray job submit -- raychat pretrain ...` works because the driver then connects to the job's cluster.
Checkpoints: every rank writes its shard into <run>/checkpoints/<stage>/step_N (shared storage on multi-node),
rank 0 reports that directory to Ray Train, which persists a copy under storage_path. After a worker dies
Ray restarts the worker group (up to max_failures) and the loop resumes from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from raychat.common import RaychatError


class RayContext:
    """The TrainContext a loop sees inside a Ray Train worker."""

    def __init__(self, resume_from: Path | None):
        c = ray.train.get_context()
        self.rank = c.get_world_rank()
        self.local_rank = c.get_local_rank()
        self.world_size = c.get_world_size()
        self._explicit_resume = resume_from

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
        if checkpoint_dir is not None and self.rank == 0:
            ray.train.report(clean, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)),
                             checkpoint_dir_name=Path(checkpoint_dir).name)
        else:
            ray.train.report(clean)  # a barrier: every worker reports the same number of times

    def resume_dir(self) -> Path | None:
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:  # a restart after a failure: Ray's latest persisted checkpoint wins
            return Path(ckpt.path) if Path(ckpt.path).is_dir() else Path(ckpt.to_directory())
        return self._explicit_resume


def _worker_entry(payload: dict) -> None:
    import importlib

    mod = importlib.import_module(payload["module"])
    cfg = payload["config"]
    ctx = RayContext(Path(payload["resume_from"]) if payload.get("resume_from") else None)
    mod.train(cfg, ctx)


def quiet_ray_train() -> None:
    """Every process of an embedded job starts with this: Ray Train's own loggers write to RAYCHAT_RAY_LOG, not
    to the console. Without a dashboard the State API is absent, and Ray Train's placement-group cleaner warns
    about that every second (710 lines in a tiny speedrun); processes where Ray Train configures its loggers
    itself keep its console handler, which the job's LoggingConfig limits to errors. Its worker context logs
    every report (per rank) under a logger named by its file path."""
    import logging
    from importlib.util import find_spec

    handler = logging.FileHandler(os.environ["RAYCHAT_RAY_LOG"])
    for name in ("ray.train", find_spec("ray.train.v2._internal.execution.context").origin):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False


def init_ray(address: str | None, num_cpus: int | None = None, log_file: Path | None = None) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"configure_logging": False}
    if address is None:
        # embedded: a local Ray for this job only, small object store (we pass no big objects)
        kwargs.update(num_cpus=num_cpus, include_dashboard=False, object_store_memory=256 * 1024**2)
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            # no preemption watcher: one machine is never drained, and its actor logs an error line at start
            kwargs["runtime_env"] = {"worker_process_setup_hook": "raychat.train.ray_job.quiet_ray_train",
                                     "env_vars": {"RAYCHAT_RAY_LOG": str(log_file),
                                                  "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}}
    ray.init(address=address, **kwargs)


def run_job(module: str, config, *, num_workers: int, use_gpu: bool, name: str, storage_path: str | Path,
            resume_from: Path | None = None, max_failures: int = 2, num_to_keep: int = 3, address: str | None = None,
            cpus_per_worker: float = 1.0, env: dict | None = None):
    """Run `<module>.train(config, ctx)` on `num_workers` Ray Train workers; returns the ray Result."""
    log_file = Path(storage_path).resolve() / "ray_train.log"
    if use_gpu:
        init_ray(address, log_file=log_file)
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < num_workers:
            raise RaychatError(f"--use-gpu with {num_workers} workers needs {num_workers} GPUs; the Ray cluster has "
                               f"{int(gpus)}")
    else:
        init_ray(address, num_cpus=max(2, int(num_workers * cpus_per_worker)), log_file=log_file)
    # Threads per CPU worker: one torch thread per reserved CPU so workers don't oversubscribe the cores. No print
    # patch: Ray Train would send every print to a logger as well as to stdout, and the console got each line twice.
    env_vars = {"OMP_NUM_THREADS": str(max(1, int(cpus_per_worker))), "RAY_TRAIN_V2_ENABLED": "1",
                "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **(env or {})}
    # the driver's settings the workers must share: wandb, the metrics endpoint, where the data registry looks
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "RAYCHAT_METRICS_PORT", "RAYCHAT_METRICS_HOST",
                "RAYCHAT_FAULT_AT_STEP", "RAYCHAT_FAULT_MARKER", "RAYCHAT_SHARED_DATA", "RAYCHAT_HOME",
                "RAYCHAT_DATA_DIR"):
        if key in os.environ:
            env_vars.setdefault(key, os.environ[key])
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"module": module, "config": config,
                           "resume_from": str(resume_from) if resume_from else None},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
                             # Ray Train's own INFO/WARNING lines (e.g. a State API query that timed out, repeated
                             # every second on a busy box) go to its log files only, not to the console
                             logging_config=LoggingConfig(log_level="ERROR"),
                             worker_runtime_env={"env_vars": env_vars}),
    )
    try:
        return trainer.fit()
    except ray.train.WorkerGroupError as e:
        # bad input found only inside a worker (e.g. a corrupt checkpoint): its own one-line message, not Ray's
        # report. Ray Train keeps each rank's exception, wrapped with its traceback.
        for rank, err in sorted(e.worker_failures.items()):
            err = getattr(err, "_base_exc", err)
            if isinstance(err, RaychatError):
                raise RaychatError(f"Ray Train job {name} failed on rank {rank}: {err}") from None
        raise
