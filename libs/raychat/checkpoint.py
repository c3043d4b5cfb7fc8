"""Checkpoints: model weights (safetensors), optimizer state (one file per rank), config and metadata in a
step-numbered directory, written atomically so that a crash mid-write never leaves a half checkpoint.

Durability: every rank fsyncs its files, rank 0 fsyncs the temp dir before renaming it into place and the parent
dir after, so once `save_checkpoint` returns the checkpoint survives a power cut (a rename alone may reach the disk
before the data it points to). A failed save (a full disk, an I/O error) raises RaychatError on every rank, after
the ranks agree on the outcome (one all-reduce per phase instead of a barrier, so no rank waits at a barrier the
failed one never reaches); the partial `.tmp-step_*` dir is removed and older checkpoints are untouched. Callers
prune old checkpoints only after `save_checkpoint` returned.

    <root>/step_000123/model.safetensors    fp32 master weights
                      /optim_rank0.pt ...   this rank's optimizer shard (MuonAdamW shards state by rank)
                      /meta.json            step, model_config, job config, loader state, code version, ...

Layout of a run directory: <run>/checkpoints/{base,sft,rl}/step_*/ and <run>/tokenizer/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from raychat.common import RaychatError, code_version, get_dist_info

STEP_RE = re.compile(r"^step_(\d+)$")
STAGES = ("base", "sft", "rl")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _gather_errors(error: str | None) -> list[str | None]:
    """Every rank's error (None = ok), on every rank: a barrier that also carries what went wrong where."""
    import torch.distributed as dist

    world = get_dist_info(initialized_only=True).world_size
    if world == 1:
        return [error]
    out: list = [None] * world
    dist.all_gather_object(out, error)
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint_files(out_dir: Path, step: int, model, optimizer=None, config: dict | None = None,
                           meta: dict | None = None, rank: int = 0) -> None:
    """Write this rank's part of a checkpoint into an existing directory and fsync it (no atomicity:
    save_checkpoint writes into a temp dir and renames it)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    written = []
    if rank == 0:
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out_dir / "model.safetensors"))
        info = {"step": step, "model_config": model.config.to_dict(), "config": config or {},
                "code": code_version(), **(meta or {})}
        (out_dir / "meta.json").write_text(json.dumps(info, indent=2, default=str))
        written += [out_dir / "model.safetensors", out_dir / "meta.json"]
    if optimizer is not None:
        torch.save(optimizer.state_dict(), out_dir / f"optim_rank{rank}.pt")
        written.append(out_dir / f"optim_rank{rank}.pt")
    for path in written:
        _fsync(path)


def save_checkpoint(root: str | os.PathLike, step: int, model, optimizer=None, config: dict | None = None,
                    meta: dict | None = None, rank: int = 0, world_size: int = 1) -> Path:
    """Atomic, durable save into <root>/step_NNNNNN: every rank writes into a shared temp dir, then rank 0 renames
    it. Raises RaychatError on every rank if any rank failed (nothing of the new step is left behind)."""
    root = Path(root)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}"

    def phase(what: str, work) -> None:
        error = None
        try:
            work()
        except Exception as e:  # noqa: BLE001 - any failure must reach the agreement, or the other ranks hang
            error = e
        failed = {r: e for r, e in enumerate(_gather_errors(None if error is None else f"{type(error).__name__}: "
                                                             f"{error}")) if e is not None}
        if failed:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            where = "; ".join(f"on rank {r}: {e}" for r, e in failed.items())
            raise RaychatError(f"saving checkpoint step {step} to {root} failed while {what} {where}; the partial "
                               f"checkpoint was removed, earlier checkpoints are untouched") from error

    def prepare():
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def publish():
        if rank != 0:
            return
        _fsync(tmp)                       # the files' directory entries, before the rename makes them visible
        if final.exists():                # re-saving the same step: swap, never leave neither
            old = root / f".old-{step_dir_name(step)}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            try:
                os.replace(tmp, final)
                _fsync(root)
            except OSError:
                if final.exists():
                    os.replace(final, tmp)
                os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            try:
                _fsync(root)              # the rename itself
            except OSError:
                os.replace(final, tmp)    # not known to be durable: not a checkpoint
                raise

    phase("creating its temp dir", prepare)
    phase("writing files", lambda: write_checkpoint_files(tmp, step, model, optimizer, config, meta, rank))
    phase("moving it into place", publish)
    return final


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(root)
    if not root.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
    return sorted(out)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def read_meta(ckpt_dir: str | os.PathLike) -> dict:
    p = Path(ckpt_dir) / "meta.json"
    if not p.is_file():
        raise RaychatError(f"not a raychat checkpoint: {ckpt_dir} has no meta.json")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise RaychatError(f"checkpoint metadata {p} is corrupt: {e}") from None


def load_state(ckpt_dir: str | os.PathLike, model, optimizer=None, rank: int = 0, strict: bool = True) -> dict:
    """Load weights (and this rank's optimizer shard) into existing objects; returns meta. Clear errors for a
    missing, truncated or mismatched checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    wpath = ckpt_dir / "model.safetensors"
    if not wpath.is_file():
        raise RaychatError(f"checkpoint {ckpt_dir} has no model.safetensors")
    try:
        state = load_file(str(wpath), device=str(model.get_device()))
    except (SafetensorError, OSError) as e:
        raise RaychatError(f"checkpoint weights {wpath} are unreadable (truncated or corrupt?): {e}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise RaychatError(f"checkpoint {ckpt_dir} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise RaychatError(f"checkpoint {ckpt_dir}: {k} has shape {tuple(v.shape)}, model expects "
                               f"{tuple(own[k].shape)}")
    model.load_state_dict(state, strict=strict)
    if optimizer is not None:
        opath = ckpt_dir / f"optim_rank{rank}.pt"
        if not opath.is_file():
            raise RaychatError(f"checkpoint {ckpt_dir} has no optimizer state for rank {rank} ({opath.name}); "
                               "was it written with a different number of workers?")
        try:
            optimizer.load_state_dict(torch.load(opath, map_location=model.get_device(), weights_only=True))
        except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
            raise RaychatError(f"optimizer state {opath} is unreadable: {e}") from None
    return meta


def build_model(model_config: dict, device=None, dtype=None):
    """GPT from a config dict, built on the meta device, then materialised on `device`."""
    from raychat.model import GPT, GPTConfig

    cfg = GPTConfig(**model_config)
    with torch.device("meta"):
        model = GPT(cfg, compute_dtype=dtype or torch.float32)
    model.to_empty(device=device or "cpu")
    model.init_weights()  # fills buffers (rotary) and params; params are then overwritten by the checkpoint
    return model


def resolve_checkpoint(path: str | os.PathLike, stage: str = "base", step: int | None = None) -> Path:
    """Accept a run dir, a stage dir (<run>/checkpoints/<stage>) or a step dir; return the step dir."""
    p = Path(path).expanduser()
    if (p / "meta.json").is_file():
        return p
    candidates = [p / "checkpoints" / stage, p]
    for root in candidates:
        ckpts = list_checkpoints(root)
        if ckpts:
            if step is None:
                return ckpts[-1][1]
            for s, d in ckpts:
                if s == step:
                    return d
            raise RaychatError(f"no checkpoint at step {step} in {root} (have {[s for s, _ in ckpts]})")
    if stage not in STAGES:
        raise RaychatError(f"unknown stage {stage!r}; expected one of {STAGES}")
    raise RaychatError(f"no {stage} checkpoint found under {p} (looked in {', '.join(map(str, candidates))})")


def find_tokenizer_dir(ckpt_dir: Path) -> Path | None:
    for parent in [ckpt_dir, *ckpt_dir.parents]:
        if (parent / "tokenizer").is_dir():
            return parent / "tokenizer"
    return None


def load_model(path: str | os.PathLike, stage: str = "base", step: int | None = None, device=None, dtype=None):
    """-> (model in eval mode, tokenizer or None, meta). `path` may be a run dir, stage dir or step dir."""
    from raychat.common import detect_device

    info = detect_device(str(device) if device is not None else None,
                         str(dtype).removeprefix("torch.") if dtype is not None else None)
    if info.device.type == "cpu":
        from raychat.model.gemm import cpu_gemm_choice

        cpu_gemm_choice(RaychatError)  # a bad RAYCHAT_CPU_GEMM ends chat/serve/eval here, not inside a forward
    ckpt = resolve_checkpoint(path, stage, step)
    meta = read_meta(ckpt)
    if "model_config" not in meta:
        raise RaychatError(f"checkpoint {ckpt}: meta.json has no model_config")
    model = build_model(meta["model_config"], device=info.device, dtype=info.dtype)
    load_state(ckpt, model)
    model.eval()
    tokenizer = None
    tdir = find_tokenizer_dir(ckpt)
    if tdir is not None:
        from raychat.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(tdir)
    meta["checkpoint_dir"] = str(ckpt)
    return model, tokenizer, meta
