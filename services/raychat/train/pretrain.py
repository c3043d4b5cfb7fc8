"""Pretraining: the data, the step and the evals of the base model; the harness does the rest.

    raychat pretrain --preset tiny_cpu                        # 2 CPU workers via Ray Train, a few minutes
    raychat pretrain --preset d12 --num-workers 1 --use-gpu   # one GPU
    raychat pretrain --preset gpt2_8xh100                     # one 8xH100 node (or --address to a cluster)
    torchrun --nproc_per_node 8 -m raychat.train.pretrain --preset gpt2_8xh100   # without Ray

One optimizer step: grad_accum micro-batches forward/backward, then MuonAdamW.step(), which does the gradient
collectives itself (no DDP wrapper; nothing extra at world size 1). Training time counts only the steps
(the leaderboard's definition), and not the first (allocator and compile warm-up).
"""

from __future__ import annotations

from pathlib import Path

import torch

from raychat.common import RaychatError, print0
from raychat.train.config import PretrainConfig, derive, model_config_for
from raychat.train.harness import Eval, Harness, load_tokenizer, main
from raychat.train.schedule import muon_schedule_

SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then "
                  "tomorrow will be", "The opposite of hot is", "The planets of the solar system are:"]


def data_dir_of(cfg: PretrainConfig) -> Path:
    """--data-dir, else the data registry's ClimbMix shards (downloaded; ../shared/data/pretrain only as the
    development default), else an error naming `raychat data download climbmix`."""
    from raychat.data.registry import shard_dir

    data_dir = Path(cfg.data_dir).expanduser() if cfg.data_dir else shard_dir("climbmix")
    if not data_dir.is_dir():
        raise RaychatError(f"data dir {data_dir} does not exist")
    return data_dir


def preflight(cfg: PretrainConfig, resume: bool, world: int) -> PretrainConfig:
    """In the driver, before any worker starts: the shards and the tokenizer exist, the batch divides."""
    cfg = cfg.replace(data_dir=str(data_dir_of(cfg).resolve()))
    try:
        derive(cfg, load_tokenizer(Path(cfg.run_dir)).vocab_size, world)
    except ValueError as e:
        raise RaychatError(str(e)) from None
    return cfg


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
    return [p + tokenizer.decode(eng.generate(tokenizer.encode(p, prepend=tokenizer.bos_id), params)[0])
            for p in prompts]


def train(cfg: PretrainConfig, ctx) -> dict:
    from raychat.data import PackedLoader
    from raychat.evals.core import evaluate_core, find_eval_bundle
    from raychat.evals.loss import evaluate_bpb

    h = Harness(cfg, ctx, "pretrain")
    tok, dev, data_dir = h.tokenizer, h.dev.device, data_dir_of(cfg)
    plan = derive(cfg, tok.vocab_size, h.world)
    h.plan.update(plan)
    model, optimizer = h.build({k: plan[k] for k in h.lrs()}, model_config_for(cfg, tok.vocab_size).to_dict())
    loader = PackedLoader(tok, data_dir, split="train", batch_size=cfg.device_batch_size, seq_len=cfg.seq_len,
                          rank=h.rank, world_size=h.world, device=dev, seed=cfg.seed)
    if h.resume_dir:
        loader.load_state_dict(h.rank_state("loader"))
    train_model = apply_gpu_options(model, cfg, h.dev.device_type)
    accum, n_iter = plan["grad_accum_steps"], plan["num_iterations"]

    def step(it: int) -> dict:
        muon_schedule_(optimizer, it, n_iter, cfg.warmdown_ratio)
        loss_sum = 0.0
        for _ in range(accum):
            x, y = next(loader)
            loss = train_model(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_sum / accum, "tokens": plan["total_batch_size"]}

    def val_bpb(it: int) -> dict:
        steps = max(1, cfg.eval_tokens // (cfg.device_batch_size * cfg.seq_len * h.world))
        val = PackedLoader(tok, data_dir, split="val", batch_size=cfg.device_batch_size, seq_len=cfg.seq_len,
                           rank=h.rank, world_size=h.world, device=dev, seed=0, prefetch=0, buffer_size=100)
        try:
            return {"val_bpb": evaluate_bpb(model, val, steps, tok.token_bytes.to(dev))}
        finally:
            val.close()

    def core(it: int) -> dict:
        res = evaluate_core(model, tok, find_eval_bundle(download=h.rank == 0), dev,
                            max_per_task=cfg.core_max_per_task, max_seq_len=cfg.seq_len)
        return {"core": res["core"]}

    def samples(it: int) -> dict:
        if h.rank:
            return {}
        out = sample(model, tok)
        for s in out:
            print0(f"[sample] {s!r}")
        return {"samples": out}

    evals = [Eval("eval", cfg.eval_every, val_bpb)]
    evals += [Eval("core", cfg.core_every, core, zero=False)] if cfg.core_every > 0 else []
    evals += [Eval("samples", cfg.sample_every, samples, zero=False)] if cfg.sample_every > 0 else []
    try:
        return h.run(model, optimizer, n_iter, step, evals, state=lambda: {"loader": loader.state_dict()},
                     progress={"loss": "loss", "tok_s": "tokens_per_second"},
                     flops_per_token=model.num_flops_per_token(), count_first_step=False)
    finally:
        loader.close()


if __name__ == "__main__":
    raise SystemExit(main("pretrain"))
