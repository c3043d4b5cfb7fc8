"""GRPO reinforcement learning on tasks with a checker: the rollouts, the update and pass@k; the harness does
the rest.

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
at the start, every `eval_every` steps and at the end. Checkpoints (<run>/checkpoints/rl/step_N) carry the RL
step and the prompt sampler's state, and rollout seeds are a function of (seed, step, prompt), so a resumed run
continues exactly.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from raychat.common import RaychatError
from raychat.data import rows_to_batch
from raychat.train.config import GRPOConfig
from raychat.train.harness import Eval, Harness, all_reduce_sum, load_tokenizer, main, source_checkpoint


def gsm8k_dir(cfg: GRPOConfig) -> Path | None:
    """--data-dir's tasks/gsm8k (the shared layout: train.jsonl, test.jsonl); unset = None, the data registry
    (the downloaded openai/gsm8k; ../shared/data only as its development default)."""
    if not cfg.data_dir:
        return None
    d = Path(cfg.data_dir).expanduser() / "tasks" / "gsm8k"
    if not d.is_dir():
        raise RaychatError(f"no GSM8K data: {d} not found (--data-dir must hold tasks/gsm8k; leave it unset to read "
                           "the downloaded dataset: raychat data download gsm8k)")
    return d


def preflight(cfg: GRPOConfig, resume: bool, world_size: int) -> GRPOConfig:
    """In the driver, before any worker starts: the tokenizer, the source checkpoint, the task data, the split."""
    load_tokenizer(Path(cfg.run_dir))
    if not resume:
        source_checkpoint(Path(cfg.run_dir), cfg, "rl")
    if gsm8k_dir(cfg) is None:
        from raychat.data.registry import require
        from raychat.tasks.mixtures import data_needs

        require(data_needs(rl_tasks=[cfg.task]))
    if cfg.prompts_per_step % world_size:
        raise RaychatError(f"prompts_per_step {cfg.prompts_per_step} must be a multiple of the number of workers "
                           f"({world_size}): each worker takes an equal slice")
    return cfg


# ---- tasks, prompts, rewards ----------------------------------------------------------------------------
def build_tasks(cfg: GRPOConfig):
    """(train task, test task) with checkers."""
    from raychat.tasks import GSM8K, SimpleArithmetic, SpellingBee

    if cfg.task == "SimpleArithmetic":
        return (SimpleArithmetic(size=cfg.task_size, split="train", max_operand=cfg.max_operand),
                SimpleArithmetic(size=max(cfg.eval_examples, 1), split="test", max_operand=cfg.max_operand))
    if cfg.task == "SpellingBee":
        return SpellingBee(size=cfg.task_size, split="train"), SpellingBee(size=max(cfg.eval_examples, 1), split="test")
    return GSM8K("train", data_dir=gsm8k_dir(cfg)), GSM8K("test", data_dir=gsm8k_dir(cfg))


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


# ---- the stage -----------------------------------------------------------------------------------------
def train(cfg: GRPOConfig, ctx) -> dict:
    from raychat.engine import Engine

    h = Harness(cfg, ctx, "rl")
    tok, dev, per_rank = h.tokenizer, h.dev.device, cfg.prompts_per_step // h.world
    model, optimizer = h.build(h.lrs(cfg.init_lr_frac))
    train_task, test_task = build_tasks(cfg)
    n_iter = cfg.num_iterations if cfg.num_iterations > 0 else \
        max(1, int(cfg.num_epochs * len(train_task)) // cfg.prompts_per_step)
    sampler = PromptSampler(len(train_task), cfg.seed)
    if h.resume_dir:
        sampler.load_state_dict(h.rank_state("sampler"))
    # the engine stops a completion when the model's context is full. Eager decoding: CUDA graphs would pin the
    # parameters' storage while the optimizer is changing them (not verified on a GPU under training yet)
    engine = Engine(model, tok, max_batch_size=cfg.rollout_batch_size, cuda_graphs=False)
    h.plan.update(num_iterations=n_iter, prompts_per_rank=per_rank, train_prompts=len(train_task))
    train_model = h.compiled(model)
    evals: list[dict] = []

    def step(it: int) -> dict:
        model.eval()
        t0 = time.perf_counter()
        indices = sampler.next(cfg.prompts_per_step)[h.rank * per_rank: (h.rank + 1) * per_rank]
        samples = rollout(engine, tok, train_task, indices, cfg, it)
        t_roll = time.perf_counter() - t0
        rewards = torch.tensor([r["reward"] for r in samples], dtype=torch.float32).view(per_rank, cfg.group_size)
        adv = group_advantages(rewards, cfg.std_normalize).view(-1)
        train_rows = [i for i in range(len(samples)) if adv[i] != 0]
        g_reward, g_count, g_gen, g_trained, g_rows, g_groups = all_reduce_sum(
            [float(rewards.sum()), rewards.numel(), sum(r["length"] for r in samples),
             sum(sum(r["mask"][1:]) for r in samples), len(train_rows),
             float((rewards.std(dim=1) > 0).sum()) if cfg.group_size > 1 else 0.0], dev)
        model.train()
        t1 = time.perf_counter()
        positions, pg_loss = 0, 0.0
        if g_rows > 0:
            if not train_rows:  # this rank has no signal but others do: a zero-advantage backward keeps grads defined
                train_rows = [0]
            train_rows.sort(key=lambda i: len(samples[i]["ids"]))   # similar lengths per micro-batch: less padding
            batches = []
            for b in range(0, len(train_rows), cfg.device_batch_size):
                rows = train_rows[b: b + cfg.device_batch_size]
                x, y = rows_to_batch([(samples[i]["ids"], samples[i]["mask"]) for i in rows], tok.bos_id)
                batches.append((x.to(dev), y.to(dev), adv[rows].to(dev)))
            old = None
            if cfg.ppo_clip > 0:
                with torch.no_grad():
                    old = [-model(x, y, loss_reduction="none") for x, y, _ in batches]
            scale = h.world / max(g_trained, 1.0)   # token-level mean over the step; the optimizer averages ranks
            for _ in range(cfg.update_epochs):
                for j, (x, y, a) in enumerate(batches):
                    loss = policy_loss_sum(train_model, x, y, a, old[j] if old else None, cfg.ppo_clip)
                    (loss * scale).backward()
                    pg_loss += float(loss.detach()) * scale / h.world / cfg.update_epochs
                    positions += x.numel()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        h.sync()
        t_upd = time.perf_counter() - t1
        g_positions, g_pg = all_reduce_sum([positions, pg_loss], dev)
        return {"loss": g_pg, "mean_reward": g_reward / g_count, "mean_completion_length": g_gen / g_count,
                "groups_with_signal": g_groups / cfg.prompts_per_step,
                "rollout_tokens_per_second": g_gen / max(t_roll, 1e-9),
                "update_tokens_per_second": g_positions / max(t_upd, 1e-9) if g_positions else 0.0,
                "rollout_seconds": t_roll, "update_seconds": t_upd}

    def pass_at_k(it: int) -> dict:
        if cfg.eval_examples <= 0:
            return {}
        ev = evaluate_pass_at_k(engine, tok, test_task, cfg.eval_examples, cfg.eval_k, cfg.eval_temperature,
                                cfg.top_k, cfg.max_new_tokens, cfg.seed, h.rank, h.world, dev)
        evals.append({"step": it, **ev})
        return ev

    def finish(it: int, path: Path) -> dict:
        if evals:
            h.write_eval("rl_pass_at_k", {"task": cfg.task, "k": cfg.eval_k, "evals": evals})
        return {"evals": evals, "mean_reward": h.last.get("mean_reward")}

    return h.run(model, optimizer, n_iter, step, [Eval("eval", cfg.eval_every, pass_at_k, start=True)],
                 state=lambda: {"sampler": sampler.state_dict()}, finish=finish,
                 meta=lambda it: {"rl_step": it, "sampler": sampler.state_dict()},
                 progress={"reward": "mean_reward", "len": "mean_completion_length"})


if __name__ == "__main__":
    raise SystemExit(main("rl"))
