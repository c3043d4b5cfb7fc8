"""What a training loop needs from whoever launched it, so the same loop runs under Ray Train, under torchrun,
or in one plain process:

    ctx.rank / ctx.local_rank / ctx.world_size
    ctx.report(metrics, checkpoint_dir=None)   # every worker calls it the same number of times
    ctx.resume_dir()                            # a checkpoint dir to resume from, or None

`LocalContext` is the no-Ray implementation (process group from torchrun's env vars when WORLD_SIZE > 1);
`raychat.train.ray_job.RayContext` is the Ray Train one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist


class LocalContext:
    def __init__(self, resume_from: Path | None = None, backend: str | None = None):
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if self.world_size > 1 and not dist.is_initialized():
            import torch

            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
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
    at = os.environ.get("RAYCHAT_FAULT_AT_STEP")
    marker = os.environ.get("RAYCHAT_FAULT_MARKER")
    if not at or not marker or step != int(at) or Path(marker).exists():
        return
    world = int(dist.get_world_size()) if dist.is_initialized() else 1
    if rank == world - 1:
        import signal

        Path(marker).write_text(f"killed rank {rank} at step {step}\n")
        os.kill(os.getpid(), signal.SIGKILL)
