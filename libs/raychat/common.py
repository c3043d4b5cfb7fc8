"""Things every layer needs, decided once: device and compute dtype (with the reason), distributed
rank info, the run directory, rank-0 printing and the user-error type the CLI turns into one line.

Device/dtype rule (ARCHITECTURE.md): CUDA with bf16 on SM80+ (fp16-free: bf16 needs no loss scaling),
fp32 on CUDA < SM80 and on CPU (bf16 matmul on an AVX2 CPU is hundreds of times slower than fp32).
Overrides: RAYCHAT_DEVICE=cpu|cuda|mps, RAYCHAT_DTYPE=float32|bfloat16|float16, or the same as arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


class RaychatError(Exception):
    """A user error (bad flag, bad file, bad checkpoint): the CLI prints its message on one line, exits 2."""


@dataclass(frozen=True)
class DeviceInfo:
    device: torch.device
    dtype: torch.dtype
    reason: str

    @property
    def device_type(self) -> str:
        return self.device.type

    def describe(self) -> str:
        return f"device={self.device} dtype={str(self.dtype).removeprefix('torch.')} ({self.reason})"


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise RaychatError(f"unknown dtype {name!r}; expected one of float32, bfloat16, float16") from None


def detect_device(device: str | None = None, dtype: str | None = None, local_rank: int | None = None) -> DeviceInfo:
    """Pick device and compute dtype once, with a human-readable reason (printed by `raychat info` and jobs)."""
    device = device or os.environ.get("RAYCHAT_DEVICE") or None
    dtype = dtype or os.environ.get("RAYCHAT_DTYPE") or None
    reasons = []
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
            reasons.append("CUDA is available")
        else:
            device = "cpu"
            reasons.append("no CUDA device")
    else:
        reasons.append("device requested")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RaychatError(f"device {device!r} requested but torch sees no CUDA device "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    if device == "cuda":
        if local_rank is None:
            local_rank = get_dist_info().local_rank
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    else:
        dev = torch.device(device)
    if dtype is not None:
        dt = parse_dtype(dtype)
        reasons.append(f"dtype {dtype} requested")
    elif dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        if major >= 8:
            dt = torch.bfloat16
            reasons.append(f"SM{major}{minor} supports bf16")
        else:
            dt = torch.float32
            reasons.append(f"SM{major}{minor} < SM80: no fast bf16")
    else:
        dt = torch.float32
        reasons.append(f"{dev.type} computes in fp32")
    return DeviceInfo(dev, dt, ", ".join(reasons))


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def get_dist_info(initialized_only: bool = False) -> DistInfo:
    """Rank info from an initialised process group, else from torchrun-style env vars, else single process.

    `initialized_only=True` skips the env vars: for callers about to run a collective, which RANK/WORLD_SIZE
    alone (set before init_process_group, or left over from a launcher) cannot serve."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size())
    if initialized_only:
        return DistInfo(0, 0, 1)
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("WORLD_SIZE", 1)))


def print0(*args, **kwargs) -> None:
    """print on rank 0 only (flushes: Ray workers buffer stdout otherwise)."""
    if get_dist_info().is_main:
        print(*args, **kwargs, flush=True)


def shared_data_dir() -> Path | None:
    """The repository's sibling ../shared/data (or RAYCHAT_SHARED_DATA), if present: the data registry's
    development default (raychat/data/registry.py), never required."""
    env = os.environ.get("RAYCHAT_SHARED_DATA")
    p = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return p if p.is_dir() else None


def default_runs_root() -> Path:
    return Path(os.environ.get("RAYCHAT_HOME", Path.home() / ".cache" / "raychat")) / "runs"


def resolve_run_dir(run_dir: str | os.PathLike | None, name: str = "default") -> Path:
    p = Path(run_dir).expanduser().resolve() if run_dir else default_runs_root() / name
    p.mkdir(parents=True, exist_ok=True)
    return p


def code_version() -> dict:
    """Provenance for checkpoints and reports: git commit (+ dirty flag) of the source tree, package version."""
    import subprocess

    out = {"version": "0.1.0", "commit": None, "dirty": None}
    try:
        r = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=5)
        out["commit"] = r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=5)
        out["dirty"] = bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out
