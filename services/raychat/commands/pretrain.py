"""`raychat pretrain`: the base model, on Ray Train (or in this process with --no-ray).

    raychat pretrain --preset tiny_cpu --run-dir runs/tiny            # 2 CPU workers, a few minutes
    raychat pretrain --preset d12 --num-workers 8 --use-gpu           # one 8-GPU node
    ray job submit -- raychat pretrain --preset gpt2_8xh100           # on a running cluster
"""

from __future__ import annotations

from raychat.train.cli_args import add_config_args
from raychat.train.config import PRESETS, PretrainConfig


def add_arguments(p):
    add_config_args(p, PretrainConfig, PRESETS)
    add_launch_args(p)


def add_launch_args(p):
    g = p.add_argument_group("launch")
    g.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    g.add_argument("--resume", action="store_true",
                   help="resume from the latest checkpoint of this stage in the run dir")
    g.add_argument("--no-ray", action="store_true", help="run the loop in this process (or under torchrun) without Ray")
    g.add_argument("--max-failures", type=int, default=2, help="worker-group restarts Ray Train may do after failures")


def launch(module: str, cfg, stage: str, args) -> dict | None:
    """Shared by pretrain/sft/rl: resolve the run dir, pick the resume checkpoint, run with or without Ray."""
    from pathlib import Path

    from raychat.checkpoint import latest_checkpoint
    from raychat.common import RaychatError, resolve_run_dir

    run_dir = resolve_run_dir(cfg.run_dir or None, cfg.run or "default")
    cfg = cfg.replace(run_dir=str(run_dir))
    resume_from = None
    if args.resume:
        resume_from = latest_checkpoint(run_dir / "checkpoints" / stage)
        if resume_from is None:
            raise RaychatError(f"--resume: no {stage} checkpoint in {run_dir / 'checkpoints' / stage}")
    if args.no_ray:
        import importlib

        from raychat.train.context import LocalContext

        ctx = LocalContext(resume_from)
        try:
            return importlib.import_module(module).train(cfg, ctx)
        finally:
            ctx.close()
    from raychat.train.ray_job import run_job

    result = run_job(module, cfg, num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, name=f"{stage}-{run_dir.name}",
                     storage_path=Path(run_dir) / "ray", resume_from=resume_from, max_failures=args.max_failures,
                     num_to_keep=max(1, getattr(cfg, "keep_checkpoints", 3)), address=args.address)
    if result.error is not None:
        raise RaychatError(f"{stage} job failed: {result.error}")
    return result.metrics


def run(args):
    from raychat.train.cli_args import config_from_args

    cfg = config_from_args(args, PretrainConfig, PRESETS)
    launch("raychat.train.pretrain", cfg, "base", args)
    return 0
