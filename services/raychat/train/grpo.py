"""GRPO reinforcement learning on tasks with a checker: plain PyTorch, `train(config, ctx)`, launched by Ray Train.

    raychat rl --preset tiny_cpu --run-dir runs/tiny      # SimpleArithmetic, 2 CPU workers, ~3 minutes
    raychat rl --preset d20 --run-dir runs/d20            # GSM8K with the calculator, one 8-GPU node
    torchrun --nproc_per_node 8 -m raychat.train.grpo --preset d20 --run-dir runs/d20   # without Ray

One step, on every worker with its own prompts (the prompt order is one seeded permutation per epoch, so the
workers' slices never overlap):
1. rollouts: for each prompt the engine samples `group_size` completions sharing one prefill, tool use on (a
   <|python_start|>expr<|python_end|> runs the calculator and its output is forced into the sequence);
2. reward = the task's checker (1 correct / 0), plus `format_credit` for a well-formed `#### N` answer;
3. advantage = reward - mean of the prompt's group (optionally / its std): only relative quality within a
   group matters, which removes the need for a value network;
4. update: token-level policy gradient, -sum_t A * log p(token_t) over generated tokens, divided by the number
   of generated tokens of the whole step on all workers (DAPO's token-level normalisation: long completions are
   not down-weighted). Prompt tokens and forced tool output carry no loss (the engine marks them). Groups whose
   completions all got the same reward have zero advantage and are skipped, which on easy/hard tasks is most
   of the compute saved.
On-policy by default (nanochat's simplification): one update per batch of rollouts, so no reference model, no
KL penalty and no ratio clipping are needed. `ppo_clip > 0` stores the rollout log-probs and uses PPO's clipped
ratio, which matters once `update_epochs > 1` reuses the same rollouts. pass@1/pass@k on the task's test split
every `eval_every` steps. Checkpoints (<run>/checkpoints/rl/step_N) carry the RL step and the prompt sampler's
state, and rollout seeds are a function of (seed, step, prompt), so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from raychat.common import RaychatError, detect_device, print0, resolve_run_dir
from raychat.model.attention import select_backend
from raychat.train.context import fault_injection
from raychat.train.metrics import TrainMetrics
from raychat.train.schedule import lr_multiplier
from raychat.train.sft import (
    all_reduce_sum,
    build_trainable,
    data_root,
    gather_rank_states,
    load_tokenizer,
    prune_checkpoints,
    rows_to_batch,
    setup_threads,
    write_json_atomic,
)

RL_TASKS = ("GSM8K", "SimpleArithmetic", "SpellingBee")


@dataclass
class GRPOConfig:
    # where
    run_dir: str = ""                     # "" = ~/.cache/raychat/runs/<run or 'default'>
    data_dir: str = ""                    # shared data root holding tasks/; "" = ../shared/data
    run: str = ""                         # wandb run name; "" = no wandb
    source: str = "sft"                   # stage to start from: sft | base | rl
    source_step: int = -1                 # step of the source checkpoint; -1 = latest
    # task
    task: str = "GSM8K"                   # GSM8K | SimpleArithmetic | SpellingBee
    task_size: int = 10000                # training prompts of a synthetic task
    max_operand: int = 9                  # SimpleArithmetic: operands in [0, max_operand]
    # rollouts
    prompts_per_step: int = 16            # prompts per optimizer step, all workers
    group_size: int = 16                  # completions sampled per prompt
    max_new_tokens: int = 256             # generated tokens per completion (sampled + forced tool output)
    temperature: float = 1.0
    top_k: int = 50                       # 0 = no limit
    rollout_batch_size: int = 64          # engine KV-cache rows per worker (>= group_size)
    device_batch_size: int = 8            # sequences per forward/backward micro-batch
    # objective
    std_normalize: bool = False           # divide advantages by the group's reward std
    format_credit: float = 0.0            # reward added for a well-formed answer ('#### N' then stop); 0 = off
    ppo_clip: float = 0.0                 # > 0: PPO clipped ratio against the stored rollout log-probs
    update_epochs: int = 1                # optimizer steps per batch of rollouts (> 1 is off-policy: use ppo_clip)
    # optimizer: lrs x init_lr_frac, linear decay
    num_epochs: float = 1.0               # passes over the task's prompts (when num_iterations = -1)
    num_iterations: int = -1              # RL steps; -1 = num_epochs over the prompts
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    matrix_lr: float = 0.02
    scalar_lr: float = 0.5
    init_lr_frac: float = 0.05            # multiplier on the lrs above (nanochat's RL)
    weight_decay: float = 0.0
    warmdown_ratio: float = 1.0           # fraction of the run with a linear lr decay (1 = the whole run)
    # evaluation and checkpoints (-1 = never; always done at the start and the end)
    eval_every: int = 60                  # steps between pass@k evals on the test split
    eval_examples: int = 400              # test problems per eval
    eval_k: int = 8                       # samples per problem: pass@1 (mean over samples) and pass@k
    eval_temperature: float = 1.0
    save_every: int = 60                  # checkpoint period in steps; the last step is always saved
    keep_checkpoints: int = 2
    log_every: int = 1                    # steps between reports to Ray Train / JSONL lines
    # execution
    num_workers: int = 1
    use_gpu: bool = False
    device: str = ""                      # "" = auto (cuda if available)
    dtype: str = ""                       # "" = auto (bf16 on SM80+, fp32 elsewhere)
    num_threads: int = 0                  # torch CPU threads per worker; 0 = cores / workers
    seed: int = 42
    max_seconds: float = 0.0              # stop early after this much RL time; 0 = no limit
    metrics_port: int = -1                # Prometheus port on rank 0; -1 = env RAYCHAT_METRICS_PORT or 9101; 0 = off
    preset: str = ""

    def __post_init__(self):
        errs = []
        for name in ("prompts_per_step", "group_size", "max_new_tokens", "rollout_batch_size", "device_batch_size",
                     "update_epochs", "eval_k", "num_workers", "log_every", "task_size", "max_operand"):
            if getattr(self, name) <= 0:
                errs.append(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.task not in RL_TASKS:
            errs.append(f"task must be one of {', '.join(RL_TASKS)} (got {self.task!r})")
        if self.source not in ("base", "sft", "rl"):
            errs.append(f"source must be base, sft or rl (got {self.source!r})")
        if self.rollout_batch_size < max(self.group_size, self.eval_k):
            errs.append(f"rollout_batch_size {self.rollout_batch_size} must be >= group_size {self.group_size} and "
                        f"eval_k {self.eval_k} (the samples of one prompt share the cache at once)")
        if self.temperature <= 0 or self.eval_temperature < 0:
            errs.append("temperature must be > 0 (sampling is what GRPO learns from) and eval_temperature >= 0")
        if self.top_k < 0 or not 0 <= self.ppo_clip < 1 or self.format_credit < 0:
            errs.append("top_k must be >= 0, ppo_clip in [0, 1), format_credit >= 0")
        if self.num_iterations == 0 or self.num_iterations < -1 or self.num_epochs <= 0:
            errs.append(f"num_iterations must be positive or -1 and num_epochs > 0 (got {self.num_iterations}, "
                        f"{self.num_epochs})")
        if self.init_lr_frac <= 0 or not 0 <= self.warmdown_ratio <= 1 or self.eval_examples < 0:
            errs.append("init_lr_frac must be > 0, warmdown_ratio in [0, 1], eval_examples >= 0")
        if errs:
            raise ValueError("invalid GRPOConfig: " + "; ".join(errs))
        if self.update_epochs > 1 and self.ppo_clip == 0:
            print0(f"[rl] warning: update_epochs={self.update_epochs} without ppo_clip reuses rollouts with the "
                   "plain on-policy gradient; set --ppo-clip 0.2")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **kw) -> GRPOConfig:
        return dataclasses.replace(self, **kw)


# ---- presets -------------------------------------------------------------------------------------------
def tiny_cpu() -> GRPOConfig:
    """~3 minutes on 2 CPU cores after `raychat sft --preset tiny_cpu`: single-digit sums, whose answers are a
    few tokens long, so a step is 16 prompts x 8 samples of short rollouts. Measured on a tiny_cpu-shaped model
    (d4, SFT'd with the tiny_cpu preset): mean reward 0.16 -> 0.27 (first -> last quarter of 100 steps) at
    init_lr_frac 0.15, 0.17 -> 0.32 at 0.25, collapse to 0 at 0.5; hence 0.2."""
    return GRPOConfig(preset="tiny_cpu", task="SimpleArithmetic", max_operand=9, prompts_per_step=16, group_size=8,
                      max_new_tokens=16, rollout_batch_size=64, device_batch_size=64, num_iterations=100,
                      init_lr_frac=0.2, eval_every=50, eval_examples=64, eval_k=4, save_every=50, num_workers=2)


def d20() -> GRPOConfig:
    """nanochat's GSM8K RL: 16 prompts x 16 samples per step, one epoch of GSM8K train (~467 steps)."""
    return GRPOConfig(preset="d20", task="GSM8K", prompts_per_step=16, group_size=16, max_new_tokens=256,
                      rollout_batch_size=64, device_batch_size=8, num_workers=8, use_gpu=True)


def d12() -> GRPOConfig:
    return d20().replace(preset="d12")


def gpt2_8xh100() -> GRPOConfig:
    return d20().replace(preset="gpt2_8xh100")


PRESETS = {"tiny_cpu": tiny_cpu, "d12": d12, "d20": d20, "gpt2_8xh100": gpt2_8xh100}


# ---- tasks, prompts, rewards ----------------------------------------------------------------------------
def build_tasks(cfg: GRPOConfig):
    """(train task, test task) with checkers."""
    from raychat.tasks import GSM8K, SimpleArithmetic, SpellingBee

    if cfg.task == "SimpleArithmetic":
        return (SimpleArithmetic(size=cfg.task_size, split="train", max_operand=cfg.max_operand),
                SimpleArithmetic(size=max(cfg.eval_examples, 1), split="test", max_operand=cfg.max_operand))
    if cfg.task == "SpellingBee":
        return SpellingBee(size=cfg.task_size, split="train"), SpellingBee(size=max(cfg.eval_examples, 1), split="test")
    gsm = data_root(cfg.data_dir) / "tasks" / "gsm8k"
    return GSM8K("train", data_dir=gsm), GSM8K("test", data_dir=gsm)


class PromptSampler:
    """Task indices in a seeded random order, one permutation per epoch; `next(n)` hands out the next n (the
    same list on every rank, each rank then takes its slice). State: (epoch, cursor)."""

    def __init__(self, num_prompts: int, seed: int):
        self.n, self.seed, self.epoch, self.cursor = num_prompts, seed, 0, 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            take = min(count - len(out), self.n - self.cursor)
            out += self._order(self.epoch)[self.cursor: self.cursor + take].tolist()
            self.cursor += take
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.cursor = int(sd["epoch"]), int(sd["cursor"])


def rollout_seed(seed: int, step: int, index: int) -> int:
    return (seed * 1_000_003 + step * 100_003 + index) % (2**31)


def completion_reward(task, conversation: dict, text: str, finish_reason: str, format_credit: float) -> float:
    r = float(task.reward(conversation, text))
    if format_credit > 0:
        from raychat.tasks import extract_answer

        r += format_credit * (finish_reason == "stop" and extract_answer(text) is not None)
    return r


def group_advantages(rewards: torch.Tensor, std_normalize: bool) -> torch.Tensor:
    """rewards (P, G) -> advantages (P, G): reward minus its group's mean (optionally over the group's std)."""
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if std_normalize:
        adv = adv / (rewards.std(dim=1, keepdim=True) + 1e-4)
    return adv


@torch.no_grad()
def rollout(engine, tokenizer, task, indices: list[int], cfg: GRPOConfig, step: int) -> list[dict]:
    """Sample a group per prompt. Returns one dict per completion: ids (prompt + generated + stop token), mask
    (1 = sampled token, trained; 0 = prompt or forced tool output), reward, generated length, group id."""
    from raychat.engine import SamplingParams

    convs = [task[i] for i in indices]
    prompts = [tokenizer.render_for_completion(c) for c in convs]
    params = [SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k or None, max_tokens=cfg.max_new_tokens,
                             seed=rollout_seed(cfg.seed, step, i), num_samples=cfg.group_size) for i in indices]
    groups = engine.generate_many(prompts, params)
    out = []
    for g, (conv, prompt, comps) in enumerate(zip(convs, prompts, groups)):
        for c in comps:
            gen = c.tokens + ([c.stop_token] if c.stop_token is not None else [])
            gmask = c.mask + ([1] if c.stop_token is not None else [])
            text = tokenizer.decode(c.tokens)
            out.append({"ids": prompt + gen, "mask": [0] * len(prompt) + gmask, "group": g, "length": len(c.tokens),
                        "reward": completion_reward(task, conv, text, c.finish_reason, cfg.format_credit)})
    return out


def policy_loss_sum(model, x, y, adv, old_logp=None, clip: float = 0.0) -> torch.Tensor:
    """-sum over generated tokens of the (clipped) surrogate. x, y (B, T); adv (B,); old_logp (B, T) or None.
    log p comes from the model's per-token cross-entropy, which is 0 where y = -1 (prompt, tool output, pad)."""
    logp = -model(x, y, loss_reduction="none")                    # (B, T)
    valid = (y >= 0).to(logp.dtype)
    a = adv[:, None].to(logp.dtype)
    if old_logp is None or clip <= 0:
        obj = logp * a
    else:
        ratio = torch.exp(logp - old_logp)
        obj = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    return -(obj * valid).sum()


@torch.no_grad()
def evaluate_pass_at_k(engine, tokenizer, task, num_problems: int, k: int, temperature: float, top_k: int,
                       max_tokens: int, seed: int, rank: int, world: int, device, chunk: int = 16) -> dict:
    """pass@1 (fraction of correct samples) and pass@k (a problem passes if any of its k samples does) on the
    first `num_problems` test problems, rank-strided, summed over ranks."""
    from raychat.engine import SamplingParams

    ids = list(range(rank, min(num_problems, len(task)), world))
    pass1 = passk = 0.0
    for b in range(0, len(ids), chunk):
        convs = [task[i] for i in ids[b: b + chunk]]
        prompts = [tokenizer.render_for_completion(c) for c in convs]
        params = [SamplingParams(temperature=temperature, top_k=top_k or None, max_tokens=max_tokens,
                                 seed=seed + i, num_samples=k) for i in ids[b: b + chunk]]
        for conv, comps in zip(convs, engine.generate_many(prompts, params)):
            correct = sum(bool(task.evaluate(conv, tokenizer.decode(c.tokens))) for c in comps)
            pass1 += correct / k
            passk += correct > 0
    pass1, passk, n = all_reduce_sum([pass1, passk, len(ids)], device)
    return {"pass@1": pass1 / max(n, 1), f"pass@{k}": passk / max(n, 1), "pass@k": passk / max(n, 1),
            "eval_problems": int(n)}


# ---- the loop ------------------------------------------------------------------------------------------
def train(cfg: GRPOConfig, ctx) -> dict:
    from raychat.checkpoint import read_meta, save_checkpoint
    from raychat.engine import Engine

    rank, world = ctx.rank, ctx.world_size
    dev = detect_device(cfg.device or ("cuda" if cfg.use_gpu else None), cfg.dtype or None, ctx.local_rank)
    setup_threads(cfg.num_threads, world, dev.device_type)
    run_dir = resolve_run_dir(cfg.run_dir or None, cfg.run or "default")
    tokenizer = load_tokenizer(run_dir)
    attn, why = select_backend(dev.device_type)  # decided before any compile
    print0(f"[rl] {dev.describe()}; attention {attn} ({why}); world size {world}")
    print0(f"[rl] config:\n{cfg.to_json()}")
    if cfg.prompts_per_step % world:
        raise RaychatError(f"prompts_per_step {cfg.prompts_per_step} must be a multiple of the number of workers "
                           f"({world}): each worker takes an equal slice")
    per_rank = cfg.prompts_per_step // world

    torch.manual_seed(cfg.seed)
    s = cfg.init_lr_frac
    resume_dir = ctx.resume_dir()
    model, optimizer, src_ckpt, _ = build_trainable(
        run_dir, cfg.source, cfg.source_step, resume_dir, dev, rank,
        dict(embedding_lr=cfg.embedding_lr * s, unembedding_lr=cfg.unembedding_lr * s, matrix_lr=cfg.matrix_lr * s,
             scalar_lr=cfg.scalar_lr * s, weight_decay=cfg.weight_decay), "rl")
    train_task, test_task = build_tasks(cfg)
    num_iterations = cfg.num_iterations if cfg.num_iterations > 0 else \
        max(1, int(cfg.num_epochs * len(train_task)) // cfg.prompts_per_step)
    sampler = PromptSampler(len(train_task), cfg.seed)
    start_step, total_time, source_ckpt = 0, 0.0, str(src_ckpt)
    if resume_dir is not None:
        meta = read_meta(resume_dir)
        if "sampler" not in meta:
            raise RaychatError(f"checkpoint {resume_dir} has no RL sampler state (not an RL checkpoint?)")
        sampler.load_state_dict(meta["sampler"])
        start_step, total_time = meta["rl_step"], meta.get("total_training_time", 0.0)
        source_ckpt = meta.get("source_checkpoint", source_ckpt)
        print0(f"[rl] resumed from {resume_dir} at RL step {start_step}")
    # max_seq_len: the engine stops a completion when the model's context is full
    # eager decoding: CUDA graphs would pin the parameters' storage while the optimizer is changing them (not
    # verified on a GPU under training yet)
    engine = Engine(model, tokenizer, max_batch_size=cfg.rollout_batch_size, cuda_graphs=False)
    plan = {"num_iterations": num_iterations, "prompts_per_rank": per_rank, "train_prompts": len(train_task),
            "source_checkpoint": source_ckpt, "world_size": world}
    print0(f"[rl] plan: {plan}")
    sink = TrainMetrics(run_dir, "rl", rank, num_iterations, start_step, cfg.run or None,
                        {"config": cfg.to_dict(), "plan": plan}, None if cfg.metrics_port < 0 else cfg.metrics_port)
    sink.log({"event": "plan", **plan, "device": str(dev.device), "dtype": str(dev.dtype),
              "resumed_from": str(resume_dir) if resume_dir else None})
    ckpt_root = run_dir / "checkpoints" / "rl"
    evals: list[dict] = []

    def checkpoint(step: int, extra: dict) -> Path:
        meta = {"rl_step": step, "sampler": sampler.state_dict(), "total_training_time": total_time, "plan": plan,
                "source_checkpoint": source_ckpt, "rank_state": gather_rank_states({"sampler": sampler.state_dict()},
                                                                                   world), **extra}
        path = save_checkpoint(ckpt_root, step, model, optimizer, cfg.to_dict(), meta, rank, world)
        prune_checkpoints(ckpt_root, cfg.keep_checkpoints, rank)
        return path

    last: dict = {}
    step = start_step
    out_of_time = False
    while True:
        last_step = step == num_iterations or out_of_time
        if cfg.eval_examples > 0 and (step == start_step or last_step or (cfg.eval_every > 0 and
                                                                          step % cfg.eval_every == 0)):
            model.eval()
            ev = evaluate_pass_at_k(engine, tokenizer, test_task, cfg.eval_examples, cfg.eval_k, cfg.eval_temperature,
                                    cfg.top_k, cfg.max_new_tokens, cfg.seed, rank, world, dev.device)
            evals.append({"step": step, **ev})
            sink.log({"event": "eval", "step": step, **ev})
            print0(f"[rl] step {step}: pass@1 {ev['pass@1']:.4f}  pass@{cfg.eval_k} {ev['pass@k']:.4f}")
        if last_step or (cfg.save_every > 0 and step > start_step and step % cfg.save_every == 0):
            path = checkpoint(step, {"pass_at_k": evals[-1] if evals else None, "mean_reward": last.get("mean_reward"),
                                     "final": last_step})
            ctx.report({"step": step, **last, **(evals[-1] if evals else {})}, checkpoint_dir=path)
        if last_step:
            break

        # ---- rollouts ----
        lrm = lr_multiplier(step, num_iterations, 0, cfg.warmdown_ratio, 0.0)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lrm
        model.eval()
        t0 = time.perf_counter()
        indices = sampler.next(cfg.prompts_per_step)[rank * per_rank: (rank + 1) * per_rank]
        samples = rollout(engine, tokenizer, train_task, indices, cfg, step)
        t_roll = time.perf_counter() - t0
        rewards = torch.tensor([r["reward"] for r in samples], dtype=torch.float32).view(per_rank, cfg.group_size)
        adv = group_advantages(rewards, cfg.std_normalize).view(-1)
        gen_tokens = sum(r["length"] for r in samples)
        trained_tokens = sum(sum(r["mask"][1:]) for r in samples)
        train_rows = [i for i in range(len(samples)) if adv[i] != 0]
        (g_reward, g_count, g_gen, g_trained, g_rows, g_groups) = all_reduce_sum(
            [float(rewards.sum()), rewards.numel(), gen_tokens, trained_tokens, len(train_rows),
             float((rewards.std(dim=1) > 0).sum()) if cfg.group_size > 1 else 0.0], dev.device)

        # ---- update ----
        model.train()
        t1 = time.perf_counter()
        update_positions, pg_loss = 0, 0.0
        if g_rows > 0:
            if not train_rows:  # this rank has no signal but others do: a zero-advantage backward keeps grads defined
                train_rows = [0]
            train_rows.sort(key=lambda i: len(samples[i]["ids"]))   # similar lengths per micro-batch: less padding
            micro = [train_rows[b: b + cfg.device_batch_size] for b in range(0, len(train_rows), cfg.device_batch_size)]
            batches = []
            for rows in micro:
                x, y = rows_to_batch([(samples[i]["ids"], samples[i]["mask"]) for i in rows], tokenizer.bos_id)
                batches.append((x.to(dev.device), y.to(dev.device), adv[rows].to(dev.device)))
            old = None
            if cfg.ppo_clip > 0:
                with torch.no_grad():
                    old = [-model(x, y, loss_reduction="none") for x, y, _ in batches]
            scale = world / max(g_trained, 1.0)   # token-level mean over the step; the optimizer averages ranks
            for _ in range(cfg.update_epochs):
                for j, (x, y, a) in enumerate(batches):
                    loss = policy_loss_sum(model, x, y, a, old[j] if old else None, cfg.ppo_clip)
                    (loss * scale).backward()
                    pg_loss += float(loss.detach()) * scale / world / cfg.update_epochs
                    update_positions += x.numel()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        if dev.device_type == "cuda":
            torch.cuda.synchronize()
        t_upd = time.perf_counter() - t1
        step += 1
        fault_injection(step, rank)
        total_time += t_roll + t_upd
        # the time limit is decided together: ranks that stopped at different steps would deadlock
        g_positions, g_pg, late = all_reduce_sum(
            [update_positions, pg_loss, cfg.max_seconds > 0 and total_time >= cfg.max_seconds], dev.device)
        out_of_time = late > 0
        last = {"mean_reward": g_reward / g_count, "mean_completion_length": g_gen / g_count,
                "groups_with_signal": g_groups / cfg.prompts_per_step, "loss": g_pg,
                "rollout_tokens_per_second": g_gen / max(t_roll, 1e-9),
                "update_tokens_per_second": g_positions / max(t_upd, 1e-9) if g_positions else 0.0,
                "rollout_seconds": t_roll, "update_seconds": t_upd, "step_seconds": t_roll + t_upd, "lr": lrm,
                "total_training_time": total_time}
        if not math.isfinite(g_pg):
            raise RuntimeError(f"policy loss is {g_pg} at RL step {step}: training diverged")
        sink.step(1, reward=round(last["mean_reward"], 3), len=round(last["mean_completion_length"], 1))
        if step % cfg.log_every == 0 or step == num_iterations:
            sink.log({"event": "train", "step": step, **last})
            if step != num_iterations and not out_of_time and not (cfg.save_every > 0 and step % cfg.save_every == 0):
                ctx.report({"step": step, **last})
    if rank == 0 and evals:
        write_json_atomic(run_dir / "evals" / "rl_pass_at_k.json", {"task": cfg.task, "k": cfg.eval_k, "evals": evals})
    summary = {"event": "done", "step": step, "mean_reward": last.get("mean_reward"), "evals": evals,
               "total_training_time": total_time, "checkpoint": str(ckpt_root)}
    sink.log(summary)
    sink.close()
    print0(f"[rl] done: {json.dumps(summary, default=str)}")
    return summary


def main(argv=None) -> int:
    """torchrun entry point: the same loop without Ray."""
    import argparse

    from raychat.train.cli_args import add_config_args, config_from_args
    from raychat.train.context import LocalContext

    p = argparse.ArgumentParser(prog="python -m raychat.train.grpo")
    add_config_args(p, GRPOConfig, PRESETS)
    cfg = config_from_args(p.parse_args(argv), GRPOConfig, PRESETS)
    ctx = LocalContext()
    try:
        train(cfg, ctx)
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
