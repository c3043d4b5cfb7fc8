"""PretrainConfig and its presets. Defaults live here only; the CLI overrides fields.

Everything derives from `depth` unless set explicitly (nanochat's recipe, a few commented lines):
- model shape: width = depth x aspect_ratio rounded up to head_dim, heads = width / head_dim
- token horizon D = target_param_data_ratio x scaling params (block matrices + lm_head); 12 by default
- total batch B = B_ref * (D / D_ref)^0.383, rounded to a power of two, B_ref = 2^19 tokens at d12
  (the optimal batch grows slowly with the horizon)
- learning rates x sqrt(B / B_ref) (the square-root rule for Adam-type optimizers)
- weight decay x sqrt(B / B_ref) x D_ref / D (D the horizon, not the tokens of a run cut short by
  num_iterations): keeps the AdamW timescale B / (lr x wd x D) of arXiv:2405.13698 constant across depths
- gradient accumulation = B / (device_batch_size x seq_len x world_size), which must divide exactly
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field

B_REF = 2**19  # tokens per optimizer step at the reference depth
D_REF_DEPTH = 12


@dataclass
class PretrainConfig:
    # where
    run_dir: str = ""                     # "" = ~/.cache/raychat/runs/<run or 'default'>
    data_dir: str = ""                    # "" = ../shared/data/pretrain when present
    run: str = ""                         # wandb run name; "" = no wandb
    # model (the depth dial)
    depth: int = 12
    aspect_ratio: int = 64
    head_dim: int = 128
    n_kv_head: int = 0                    # 0 = same as heads (no GQA)
    seq_len: int = 2048
    window_pattern: str = "SSSL"
    # batch and horizon (-1 = derive from depth)
    device_batch_size: int = 32
    total_batch_size: int = -1            # tokens per optimizer step, all workers
    num_iterations: int = -1              # optimizer steps
    target_param_data_ratio: float = 12.0  # tokens per scaling parameter
    # optimizer (reference values at B_ref; scaled by the batch rule unless scale_lr=False)
    embedding_lr: float = 0.3
    unembedding_lr: float = 0.008
    matrix_lr: float = 0.02
    scalar_lr: float = 0.5
    weight_decay: float = 0.28
    scale_lr: bool = True
    warmup_steps: int = 40
    warmdown_ratio: float = 0.65
    final_lr_frac: float = 0.05
    # periodic work (-1 = never; always done once at the end except CORE when core_every < 0)
    eval_every: int = 250
    eval_tokens: int = 10 * 2**19         # validation tokens for bpb
    core_every: int = -1
    core_max_per_task: int = 500
    sample_every: int = 2000
    save_every: int = -1                  # checkpoint period in steps; the last step is always saved
    keep_checkpoints: int = 3
    log_every: int = 10                   # steps between reports to Ray Train / JSONL lines
    # execution
    num_workers: int = 1
    use_gpu: bool = False
    device: str = ""                      # "" = auto (cuda if available)
    dtype: str = ""                       # "" = auto (bf16 on SM80+, fp32 elsewhere)
    num_threads: int = 0                  # torch CPU threads per worker; 0 = cores / workers
    compile: bool = False                 # torch.compile the model (GPU)
    fp8: str = ""                         # "" | tensorwise | rowwise (torchao, SM89+)
    seed: int = 42
    max_seconds: float = 0.0              # stop early after this much training time; 0 = no limit
    metrics_port: int = -1                # Prometheus port on rank 0; -1 = env RAYCHAT_METRICS_PORT or 9101; 0 = off
    preset: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        errs = []
        for name in ("depth", "aspect_ratio", "head_dim", "seq_len", "device_batch_size", "num_workers", "log_every"):
            if getattr(self, name) <= 0:
                errs.append(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.total_batch_size == 0 or self.total_batch_size < -1:
            errs.append(f"total_batch_size must be positive or -1 (got {self.total_batch_size})")
        if self.num_iterations == 0 or self.num_iterations < -1:
            errs.append(f"num_iterations must be positive or -1 (got {self.num_iterations})")
        if not 0 <= self.warmdown_ratio <= 1:
            errs.append(f"warmdown_ratio must be in [0, 1] (got {self.warmdown_ratio})")
        if self.fp8 not in ("", "tensorwise", "rowwise"):
            errs.append(f"fp8 must be '', 'tensorwise' or 'rowwise' (got {self.fp8!r})")
        if self.target_param_data_ratio <= 0:
            errs.append("target_param_data_ratio must be > 0")
        if errs:
            raise ValueError("invalid PretrainConfig: " + "; ".join(errs))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **kw) -> PretrainConfig:
        return dataclasses.replace(self, **kw)


# ---- presets -------------------------------------------------------------------------------------------
def tiny_cpu() -> PretrainConfig:
    """A few minutes on 2 CPU cores through Ray Train with 2 workers, on the shared Wikipedia shards: the
    reference's small CPU configuration (d4, width 256, 4 heads of 64, seq 256, 2048 tokens per step).
    torch.compile on: inductor's fused CPU kernels make a step ~1.3x faster (`raychat bench train`), which
    repays the one-off compile (cached on disk across runs) within the first hundred steps."""
    return PretrainConfig(preset="tiny_cpu", depth=4, aspect_ratio=64, head_dim=64, seq_len=256,
                          window_pattern="L", device_batch_size=4, total_batch_size=2048, num_iterations=400,
                          eval_every=100, eval_tokens=64 * 1024, sample_every=200, save_every=100,
                          core_every=-1, num_workers=2, log_every=10, warmdown_ratio=0.4,
                          embedding_lr=0.3, unembedding_lr=0.008, matrix_lr=0.04, weight_decay=0.0,
                          scale_lr=False, compile=True)


def d12() -> PretrainConfig:
    """GPT-1-sized (~0.3B total), the reference point of the scaling rules: ~1 h on 8xH100."""
    return PretrainConfig(preset="d12", depth=12, device_batch_size=32, num_workers=8, use_gpu=True,
                          core_every=2000)


def d20() -> PretrainConfig:
    return PretrainConfig(preset="d20", depth=20, device_batch_size=32, num_workers=8, use_gpu=True,
                          core_every=2000)


def gpt2_8xh100() -> PretrainConfig:
    """The GPT-2-grade run on one 8xH100 node, nanochat's current time-to-GPT-2 record (1.65 h): d24 trained
    at a tokens:params ratio of 8 (a bigger model for fewer tokens clears GPT-2's CORE 0.256525 sooner than
    d24 at 12), FP8 (tensorwise) block matmuls, FA3 + torch.compile + bf16."""
    return PretrainConfig(preset="gpt2_8xh100", depth=24, device_batch_size=16, num_workers=8, use_gpu=True,
                          target_param_data_ratio=8.0, fp8="tensorwise", compile=True, core_every=2000,
                          save_every=2000, eval_every=250, sample_every=2000)


PRESETS = {"tiny_cpu": tiny_cpu, "d12": d12, "d20": d20, "gpt2_8xh100": gpt2_8xh100}


def get_preset(name: str) -> PretrainConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None


# ---- derivation ----------------------------------------------------------------------------------------
def model_config_for(cfg: PretrainConfig, vocab_size: int):
    from raychat.model import config_for_depth

    return config_for_depth(cfg.depth, cfg.aspect_ratio, cfg.head_dim, vocab_size, cfg.seq_len,
                            cfg.window_pattern, cfg.n_kv_head or None)


def _scaling_params(depth: int, cfg: PretrainConfig, vocab_size: int) -> int:
    from raychat.model import model_card

    return model_card(model_config_for(cfg.replace(depth=depth), vocab_size))["scaling_params"]


def derive(cfg: PretrainConfig, vocab_size: int, world_size: int) -> dict:
    """The resolved training plan: horizon, batch, iterations, grad accumulation, scaled lrs and wd."""
    n_scaling = _scaling_params(cfg.depth, cfg, vocab_size)
    horizon = cfg.target_param_data_ratio * n_scaling
    d_ref = cfg.target_param_data_ratio * _scaling_params(D_REF_DEPTH, cfg, vocab_size)
    if cfg.total_batch_size > 0:
        batch = cfg.total_batch_size
    else:
        batch = 2 ** round(math.log2(B_REF * (horizon / d_ref) ** 0.383))
    per_step = cfg.device_batch_size * cfg.seq_len * world_size
    if batch % per_step:
        raise ValueError(f"total_batch_size {batch} is not a multiple of device_batch_size x seq_len x workers = "
                         f"{cfg.device_batch_size} x {cfg.seq_len} x {world_size} = {per_step}")
    iters = cfg.num_iterations if cfg.num_iterations > 0 else max(1, int(horizon) // batch)
    lr_scale = math.sqrt(batch / B_REF) if cfg.scale_lr else 1.0
    # by the horizon, not iters x batch: a run cut short (num_iterations) keeps its depth's decay; scaling by
    # the tokens actually trained multiplied it by horizon / tokens (x90 at the 300-step d4 race: 19.5)
    wd_scale = lr_scale * (d_ref / horizon) if cfg.scale_lr else 1.0
    return {
        "scaling_params": n_scaling,
        "target_tokens": int(horizon),
        "total_batch_size": batch,
        "num_iterations": iters,
        "total_tokens": iters * batch,
        "grad_accum_steps": batch // per_step,
        "lr_scale": lr_scale,
        "embedding_lr": cfg.embedding_lr * lr_scale,
        "unembedding_lr": cfg.unembedding_lr * lr_scale,
        "matrix_lr": cfg.matrix_lr * lr_scale,
        "scalar_lr": cfg.scalar_lr * lr_scale,
        "weight_decay": cfg.weight_decay * wd_scale,
    }
