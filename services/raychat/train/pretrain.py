"""Pretraining loop: plain PyTorch, `train(config, ctx)`. Ray Train launches it (`raychat pretrain`), but it
also runs in one process (`raychat pretrain --no-ray`) or under torchrun, through the same code path.

    raychat pretrain --preset tiny_cpu                        # 2 CPU workers via Ray Train, a few minutes
    raychat pretrain --preset d12 --num-workers 1 --use-gpu   # one GPU
    raychat pretrain --preset gpt2_8xh100                     # one 8xH100 node (or --address to a cluster)
    torchrun --nproc_per_node 8 -m raychat.train.pretrain --preset gpt2_8xh100   # without Ray

One optimizer step: grad_accum micro-batches forward/backward, then MuonAdamW.step(), which does the gradient
collectives itself (no DDP wrapper; nothing extra at world size 1). Training time counts only the steps
(the leaderboard's definition); evaluation, sampling, checkpointing and logging are excluded.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from raychat.checkpoint import list_checkpoints, load_state, read_meta, save_checkpoint
from raychat.common import RaychatError, detect_device, print0, resolve_run_dir, shared_data_dir
from raychat.model.attention import select_backend
from raychat.train.config import PretrainConfig, derive, model_config_for
from raychat.train.context import fault_injection
from raychat.train.metrics import TrainMetrics
from raychat.train.schedule import lr_multiplier, muon_momentum, weight_decay_at

SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then "
                  "tomorrow will be", "The opposite of hot is", "The planets of the solar system are:"]


def resolve_paths(cfg: PretrainConfig) -> tuple[Path, Path]:
    run_dir = resolve_run_dir(cfg.run_dir or None, cfg.run or "default")
    if cfg.data_dir:
        data_dir = Path(cfg.data_dir).expanduser()
    elif shared_data_dir() is not None:
        data_dir = shared_data_dir() / "pretrain"
    else:
        raise RaychatError("no --data-dir given and ../shared/data/pretrain does not exist; download shards with "
                           "`raychat data download --out DIR` and pass --data-dir DIR")
    if not data_dir.is_dir():
        raise RaychatError(f"data dir {data_dir} does not exist")
    return run_dir, data_dir


def setup_threads(cfg_threads: int, world_size: int, device_type: str) -> None:
    if device_type == "cpu":
        import os

        n = cfg_threads or max(1, (os.cpu_count() or 1) // world_size)
        torch.set_num_threads(n)


def convert_fp8(model, recipe: str) -> int:
    """Swap the block linears for torchao's Float8Linear (recipe "tensorwise" or "rowwise"); returns how many.
    Only the block matrices: the lm_head's logits stay in bf16 (soft-capping is precision sensitive). FP8 GEMMs
    need both weight dims divisible by 16, so small linears (the value-embedding gates: width -> kv heads) stay
    bf16."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise RaychatError("fp8 needs torchao: pip install 'raychat[gpu]'") from None
    before = sum(type(m).__name__ == "Float8Linear" for m in model.blocks.modules())
    convert_to_float8_training(model.blocks, config=Float8LinearConfig.from_recipe_name(recipe),
                               module_filter_fn=lambda m, _: m.in_features % 16 == 0 and m.out_features % 16 == 0)
    return sum(type(m).__name__ == "Float8Linear" for m in model.blocks.modules()) - before


def apply_gpu_options(model, cfg: PretrainConfig, device_type: str):
    """torch.compile and FP8 are applied from outside the model, and refused where they cannot run."""
    if cfg.fp8:
        if device_type != "cuda":
            raise RaychatError("fp8 training needs a CUDA GPU with FP8 tensor cores (SM89+); this worker has "
                               f"{device_type}")
        major, minor = torch.cuda.get_device_capability()
        if (major, minor) < (8, 9):
            raise RaychatError(f"fp8 needs SM89+ (Ada/Hopper); this GPU is SM{major}{minor}")
        convert_fp8(model, cfg.fp8)
    if cfg.compile:
        print0(f"[pretrain] torch.compile on {device_type} (first step compiles; inductor caches it on disk)")
        model = torch.compile(model, dynamic=False)
    return model


@torch.no_grad()
def sample(model, tokenizer, prompts=SAMPLE_PROMPTS, max_tokens: int = 16) -> list[str]:
    from raychat.engine import Engine, SamplingParams

    eng = Engine(model, tokenizer, max_batch_size=len(prompts), cuda_graphs=False)  # a model in training
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outs = []
    for p in prompts:
        ids = tokenizer.encode(p, prepend=tokenizer.bos_id)
        outs.append(p + tokenizer.decode(eng.generate(ids, params)[0]))
    return outs


def evaluate_val_bpb(model, tokenizer, data_dir, cfg: PretrainConfig, rank: int, world: int, device) -> float:
    from raychat.data import PackedLoader
    from raychat.evals.loss import evaluate_bpb

    per_step = cfg.device_batch_size * cfg.seq_len * world
    steps = max(1, cfg.eval_tokens // per_step)
    loader = PackedLoader(tokenizer, data_dir, split="val", batch_size=cfg.device_batch_size, seq_len=cfg.seq_len,
                          rank=rank, world_size=world, device=device, seed=0, prefetch=0,
                          buffer_size=100)
    try:
        return evaluate_bpb(model, loader, steps, tokenizer.token_bytes.to(device))
    finally:
        loader.close()


def train(cfg: PretrainConfig, ctx) -> dict:
    from raychat.data import PackedLoader
    from raychat.model import GPT
    from raychat.optim import build_optimizer
    from raychat.perf import mfu, peak_flops
    from raychat.tokenizer import Tokenizer

    rank, world = ctx.rank, ctx.world_size
    dev = detect_device(cfg.device or ("cuda" if cfg.use_gpu else None), cfg.dtype or None, ctx.local_rank)
    setup_threads(cfg.num_threads, world, dev.device_type)
    run_dir, data_dir = resolve_paths(cfg)
    tok_dir = run_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise RaychatError(f"no tokenizer in {tok_dir}; train one first: raychat tok-train --run-dir {run_dir}")
    tokenizer = Tokenizer.load(tok_dir)
    plan = derive(cfg, tokenizer.vocab_size, world)
    attn, why = select_backend(dev.device_type)  # decided before any compile
    print0(f"[pretrain] {dev.describe()}; attention {attn} ({why}); world size {world}")
    print0(f"[pretrain] config:\n{cfg.to_json()}")
    print0(f"[pretrain] plan: {plan}")

    torch.manual_seed(cfg.seed)
    mcfg = model_config_for(cfg, tokenizer.vocab_size)
    with torch.device("meta"):
        model = GPT(mcfg, compute_dtype=dev.dtype)
    model.to_empty(device=dev.device)
    model.init_weights()
    flops_per_token = model.num_flops_per_token()
    optimizer = build_optimizer(model, embedding_lr=plan["embedding_lr"], unembedding_lr=plan["unembedding_lr"],
                                matrix_lr=plan["matrix_lr"], scalar_lr=plan["scalar_lr"],
                                weight_decay=plan["weight_decay"])
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
        g.setdefault("initial_weight_decay", g.get("weight_decay", 0.0))
    loader = PackedLoader(tokenizer, data_dir, split="train", batch_size=cfg.device_batch_size, seq_len=cfg.seq_len,
                          rank=rank, world_size=world, device=dev.device, seed=cfg.seed)

    ckpt_root = run_dir / "checkpoints" / "base"
    start_step, total_time, resumed = 0, 0.0, None
    resume_dir = ctx.resume_dir()
    if resume_dir is not None:
        meta = load_state(resume_dir, model, optimizer, rank=rank)
        rank_state = read_meta(resume_dir).get("rank_state", {}).get(str(rank))
        if rank_state is None:
            raise RaychatError(f"checkpoint {resume_dir} has no loader state for rank {rank}")
        loader.load_state_dict(rank_state["loader"])
        start_step, total_time, resumed = meta["step"], meta.get("total_training_time", 0.0), str(resume_dir)
        print0(f"[pretrain] resumed from {resume_dir} at step {start_step}")

    num_iterations, accum = plan["num_iterations"], plan["grad_accum_steps"]
    peak, peak_src = peak_flops(dev.device_type, dev.dtype)
    sink = TrainMetrics(run_dir, "pretrain", rank, num_iterations, start_step, cfg.run or None,
                        {"config": cfg.to_dict(), "plan": plan, "model": mcfg.to_dict()},
                        None if cfg.metrics_port < 0 else cfg.metrics_port)
    sink.log({"event": "plan", **plan, "flops_per_token": flops_per_token, "peak_flops": peak,
              "peak_flops_source": peak_src, "resumed_from": resumed, "world_size": world,
              "device": str(dev.device), "dtype": str(dev.dtype)})
    train_model = apply_gpu_options(model, cfg, dev.device_type)

    def checkpoint(step: int, extra: dict) -> Path:
        # every rank's loader state goes into meta.json (gathered to rank 0), optimizer shards per rank
        states = [None] * world
        local = {"loader": loader.state_dict()}
        if world > 1:
            dist.all_gather_object(states, local)
        else:
            states = [local]
        meta = {"total_training_time": total_time, "plan": plan,
                "rank_state": {str(r): s for r, s in enumerate(states)}, **extra}
        path = save_checkpoint(ckpt_root, step, model, optimizer, cfg.to_dict(), meta, rank, world)
        if rank == 0 and cfg.keep_checkpoints > 0:
            import shutil

            for _, old in list_checkpoints(ckpt_root)[:-cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    val_bpb, ema, last = None, 0.0, {}
    step = start_step
    model.train()
    while True:
        time_up = cfg.max_seconds > 0 and total_time >= cfg.max_seconds
        if world > 1 and cfg.max_seconds > 0:  # every rank must stop at the same step
            flag = torch.tensor([float(time_up)], device=dev.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            time_up = bool(flag.item())
        last_step = step == num_iterations or time_up  # a time-capped run still evaluates and checkpoints
        # ---- periodic evaluation (not counted as training time) ----
        if cfg.eval_every > 0 and (last_step or step % cfg.eval_every == 0) or (last_step and cfg.eval_every < 0):
            model.eval()
            val_bpb = evaluate_val_bpb(model, tokenizer, data_dir, cfg, rank, world, dev.device)
            model.train()
            sink.log({"event": "eval", "step": step, "val_bpb": val_bpb})
            print0(f"[pretrain] step {step}: val bpb {val_bpb:.4f}")
        if cfg.core_every > 0 and (last_step or (step > 0 and step % cfg.core_every == 0)):
            from raychat.evals.core import evaluate_core, find_eval_bundle

            model.eval()
            res = evaluate_core(model, tokenizer, find_eval_bundle(download=rank == 0), dev.device,
                                max_per_task=cfg.core_max_per_task, max_seq_len=cfg.seq_len)
            model.train()
            sink.log({"event": "core", "step": step, "core": res["core"]})
        if rank == 0 and cfg.sample_every > 0 and (last_step or (step > 0 and step % cfg.sample_every == 0)):
            model.eval()
            samples = sample(model, tokenizer)
            model.train()
            sink.log({"event": "samples", "step": step, "samples": samples})
            for s in samples:
                print0(f"[sample] {s!r}")
        if last_step or (cfg.save_every > 0 and step > start_step and step % cfg.save_every == 0):
            path = checkpoint(step, {"val_bpb": val_bpb, "loss": last.get("loss"), "final": last_step})
            ctx.report({"step": step, "val_bpb": val_bpb, **last}, checkpoint_dir=path)
        if last_step:
            break

        # ---- one optimizer step ----
        lrm = lr_multiplier(step, num_iterations, cfg.warmup_steps, cfg.warmdown_ratio, cfg.final_lr_frac)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lrm
            if g["kind"] == "muon":
                g["momentum"] = muon_momentum(step)
                g["weight_decay"] = weight_decay_at(step, num_iterations, g["initial_weight_decay"])
        if dev.device_type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss_sum = 0.0
        for _ in range(accum):
            x, y = next(loader)
            loss = train_model(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        step += 1
        fault_injection(step, rank)
        if step > start_step + 1 or start_step > 0 or num_iterations < 10:
            total_time += dt  # the very first step (allocator/compile warm-up) is not counted
        loss_val = float(loss_sum) / accum
        if not math.isfinite(loss_val):
            raise RuntimeError(f"loss is {loss_val} at step {step}: training diverged")
        ema = 0.9 * ema + 0.1 * loss_val
        smooth = ema / (1 - 0.9 ** (step - start_step))
        tps = plan["total_batch_size"] / dt
        last = {"loss": smooth, "raw_loss": loss_val, "tokens_per_second": tps,
                "mfu": mfu(flops_per_token, tps, peak, world), "step_seconds": dt, "lr": lrm,
                "total_training_time": total_time}
        sink.step(1, loss=round(smooth, 4), tok_s=int(tps))
        if step % cfg.log_every == 0 or step == num_iterations:
            sink.log({"event": "train", "step": step, **last})
            if step != num_iterations and not (cfg.save_every > 0 and step % cfg.save_every == 0):
                ctx.report({"step": step, **last})
    summary = {"event": "done", "step": step, "val_bpb": val_bpb, "total_training_time": total_time,
               "final_loss": last.get("loss"), "checkpoint": str(ckpt_root)}
    sink.log(summary)
    sink.close()
    loader.close()
    print0(f"[pretrain] done: {summary}")
    return summary


def main(argv=None) -> int:
    """torchrun entry point: the same loop without Ray."""
    import argparse

    from raychat.train.cli_args import add_config_args, config_from_args
    from raychat.train.context import LocalContext

    p = argparse.ArgumentParser(prog="python -m raychat.train.pretrain")
    add_config_args(p, PretrainConfig)
    args = p.parse_args(argv)
    cfg = config_from_args(args, PretrainConfig)
    ctx = LocalContext()
    try:
        train(cfg, ctx)
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
