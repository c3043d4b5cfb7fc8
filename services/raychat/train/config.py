"""Every stage's config and the preset ladder. Defaults live here only; flags (one per field, `--field-name`,
help = the field's comment) override a preset, which overrides the defaults.

StageConfig holds what every stage has (paths, schedule, periodic work, execution); PretrainConfig adds the
model shape and the depth dial; FinetuneConfig (SFT and RL) adds the checkpoint it starts from: the model shape
and the sequence length come from that checkpoint, never from flags. LADDER maps a model size to the overrides
of each stage, so `--preset d20` means the same machine and model for pretrain, sft and rl.

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

import argparse
import dataclasses
import inspect
import json
import math
import re
import typing
from dataclasses import asdict, dataclass, field

from raychat.common import RaychatError, print0

B_REF = 2**19  # tokens per optimizer step at the reference depth
D_REF_DEPTH = 12
SYNTHETIC_TASKS = ("SimpleArithmetic", "SpellingBee", "SimpleSpelling", "Identity")
RL_TASKS = ("GSM8K", "SimpleArithmetic", "SpellingBee")


@dataclass
class StageConfig:
    # where
    run_dir: str = ""                     # "" = ~/.cache/raychat/runs/<run or 'default'>
    data_dir: str = ""                    # "" = the data registry (raychat data download; pretraining: climbmix)
    run: str = ""                         # wandb run name; "" = no wandb
    # schedule
    num_iterations: int = -1              # optimizer steps; -1 = derive (pretrain: the horizon; else num_epochs)
    device_batch_size: int = 32           # rows per micro-batch per worker
    embedding_lr: float = 0.3
    unembedding_lr: float = 0.008
    matrix_lr: float = 0.02
    scalar_lr: float = 0.5
    weight_decay: float = 0.2
    warmup_steps: int = 0
    warmdown_ratio: float = 0.4           # fraction of the run with a linear lr decay (1 = the whole run)
    final_lr_frac: float = 0.0
    # periodic work (-1 = never; evaluation and the checkpoint always happen once at the end)
    eval_every: int = 250
    save_every: int = -1                  # checkpoint period in steps; the last step is always saved
    keep_checkpoints: int = 3
    log_every: int = 10                   # steps between reports to Ray Train / JSONL lines
    # execution
    num_workers: int = 1
    use_gpu: bool = False
    device: str = ""                      # "" = auto (cuda if available)
    dtype: str = ""                       # "" = auto (bf16 on SM80+, fp32 elsewhere)
    num_threads: int = 0                  # torch CPU threads per worker; 0 = cores / workers
    compile: bool = False                 # torch.compile the training forward and the optimizer step
    seed: int = 42
    max_seconds: float = 0.0              # stop early after this much training time; 0 = no limit
    metrics_port: int = -1                # Prometheus port on rank 0; -1 = env RAYCHAT_METRICS_PORT or 9101; 0 = off
    metrics_host: str = ""                # address it binds; "" = env RAYCHAT_METRICS_HOST or 127.0.0.1
    preset: str = ""

    def __post_init__(self):
        errs = [f"{n} must be > 0 (got {getattr(self, n)})" for n in self.positive() if getattr(self, n) <= 0]
        if self.num_iterations == 0 or self.num_iterations < -1:
            errs.append(f"num_iterations must be positive or -1 (got {self.num_iterations})")
        if not 0 <= self.warmdown_ratio <= 1:
            errs.append(f"warmdown_ratio must be in [0, 1] (got {self.warmdown_ratio})")
        errs += self.errors()
        if errs:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(errs))

    def positive(self) -> tuple[str, ...]:
        return ("device_batch_size", "num_workers", "log_every")

    def errors(self) -> list[str]:
        return []

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


@dataclass
class PretrainConfig(StageConfig):
    # model (the depth dial)
    depth: int = 12
    aspect_ratio: int = 64
    head_dim: int = 128
    n_kv_head: int = 0                    # 0 = same as heads (no GQA)
    seq_len: int = 2048
    window_pattern: str = "SSSL"
    # batch and horizon (-1 = derive from depth); lrs are reference values at B_ref, scaled unless scale_lr=False
    total_batch_size: int = -1            # tokens per optimizer step, all workers
    target_param_data_ratio: float = 12.0  # tokens per scaling parameter
    # the pretraining recipe's schedule and optimizer defaults (nanochat master @92d63d4); SFT/RL keep their own
    unembedding_lr: float = 0.008
    weight_decay: float = 0.28
    warmup_steps: int = 40
    warmdown_ratio: float = 0.65          # fraction of the run with a linear lr decay (1 = the whole run)
    final_lr_frac: float = 0.05
    scale_lr: bool = True
    eval_tokens: int = 10 * 2**19         # validation tokens for bpb
    core_every: int = -1
    core_max_per_task: int = 500
    sample_every: int = 2000
    fp8: str = ""                         # "" | tensorwise | rowwise (torchao, SM89+)

    def positive(self):
        return (*super().positive(), "depth", "aspect_ratio", "head_dim", "seq_len")

    def errors(self):
        errs = []
        if self.total_batch_size == 0 or self.total_batch_size < -1:
            errs.append(f"total_batch_size must be positive or -1 (got {self.total_batch_size})")
        if self.fp8 not in ("", "tensorwise", "rowwise"):
            errs.append(f"fp8 must be '', 'tensorwise' or 'rowwise' (got {self.fp8!r})")
        if self.target_param_data_ratio <= 0:
            errs.append("target_param_data_ratio must be > 0")
        return errs


@dataclass
class FinetuneConfig(StageConfig):
    source: str = "base"                  # stage whose checkpoint to start from: base | sft | rl
    source_step: int = -1                 # step of the source checkpoint; -1 = latest
    num_epochs: float = 1.0               # passes over the training data (when num_iterations = -1)
    init_lr_frac: float = 0.02            # multiplier on the lrs (nanochat's finetuning recipe)
    embedding_lr: float = 0.2
    weight_decay: float = 0.0
    warmdown_ratio: float = 1.0
    keep_checkpoints: int = 2

    def errors(self):
        errs = []
        if self.source not in ("base", "sft", "rl"):
            errs.append(f"source must be base, sft or rl (got {self.source!r})")
        if self.num_epochs <= 0 or self.init_lr_frac <= 0:
            errs.append(f"num_epochs and init_lr_frac must be > 0 (got {self.num_epochs}, {self.init_lr_frac})")
        return errs


@dataclass
class SFTConfig(FinetuneConfig):
    mixture: str = "default"              # comma list of default (chat, GSM8K, MMLU, synthetic) or task names[:epochs]
    extra_jsonl: list = field(default_factory=list)   # a JSONL file of conversations to add (repeatable)
    extra_weight: float = 1.0             # epochs of each --extra-jsonl file in the mixture
    synthetic_size: int = 2000            # examples of each synthetic task (spelling, arithmetic, identity)
    include_noncommercial: bool = True    # alpaca/code_alpaca (CC BY-NC) in the default mixture
    num_val_examples: int = 256           # held-out conversations of the mixture for the validation loss
    packing: str = "pad"                  # pad (one conversation per row, inference layout) | bestfit
    seq_len: int = -1                     # tokens per row; -1 = the model's sequence_len
    device_batch_size: int = 4
    total_batch_rows: int = 32            # rows per optimizer step, all workers
    eval_every: int = 100                 # steps between validation-loss evals
    chat_eval_tasks: str = "ARC-Easy,MMLU,SpellingBee"   # quick chat eval at the end; "" = none
    chat_eval_max_problems: int = 64      # problems per chat-eval task
    chat_eval_max_tokens: int = 256       # generated tokens per problem (generative tasks)

    def positive(self):
        return (*super().positive(), "total_batch_rows", "synthetic_size", "chat_eval_max_problems",
                "chat_eval_max_tokens")

    def errors(self):
        errs = super().errors()
        if self.seq_len == 0 or self.seq_len < -1:
            errs.append(f"seq_len must be positive or -1 (got {self.seq_len})")
        if self.total_batch_rows % self.device_batch_size:
            errs.append(f"total_batch_rows {self.total_batch_rows} must be a multiple of device_batch_size "
                        f"{self.device_batch_size}")
        if self.packing not in ("pad", "bestfit"):
            errs.append(f"packing must be pad or bestfit (got {self.packing!r})")
        if self.num_val_examples < 0:
            errs.append("num_val_examples must be >= 0")
        try:
            parse_mixture(self.mixture)
        except ValueError as e:
            errs.append(str(e))
        return errs


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """'default,SimpleArithmetic:4' -> [("default", 1.0), ("SimpleArithmetic", 4.0)] (weight = epochs)."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, weight = item.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = -1.0
        if name not in ("default", "GSM8K", *SYNTHETIC_TASKS) or not (w > 0 and math.isfinite(w)):
            raise ValueError(f"mixture item {item!r}: expected NAME or NAME:EPOCHS with NAME one of default, GSM8K, "
                             f"{', '.join(SYNTHETIC_TASKS)} and EPOCHS > 0")
        out.append((name, w))
    if not out:
        raise ValueError("mixture is empty")
    return out


@dataclass
class GRPOConfig(FinetuneConfig):
    source: str = "sft"
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
    init_lr_frac: float = 0.05            # nanochat's RL
    # pass@k on the test split, also at the start
    eval_every: int = 60
    eval_examples: int = 400              # test problems per eval
    eval_k: int = 8                       # samples per problem: pass@1 (mean over samples) and pass@k
    eval_temperature: float = 1.0
    save_every: int = 60
    log_every: int = 1

    def positive(self):
        return (*super().positive(), "prompts_per_step", "group_size", "max_new_tokens", "rollout_batch_size",
                "update_epochs", "eval_k", "task_size", "max_operand")

    def errors(self):
        errs = super().errors()
        if self.task not in RL_TASKS:
            errs.append(f"task must be one of {', '.join(RL_TASKS)} (got {self.task!r})")
        if self.rollout_batch_size < max(self.group_size, self.eval_k):
            errs.append(f"rollout_batch_size {self.rollout_batch_size} must be >= group_size {self.group_size} and "
                        f"eval_k {self.eval_k} (the samples of one prompt share the cache at once)")
        if self.temperature <= 0 or self.eval_temperature < 0:
            errs.append("temperature must be > 0 (sampling is what GRPO learns from) and eval_temperature >= 0")
        if self.top_k < 0 or not 0 <= self.ppo_clip < 1 or self.format_credit < 0 or self.eval_examples < 0:
            errs.append("top_k must be >= 0, ppo_clip in [0, 1), format_credit >= 0, eval_examples >= 0")
        if not errs and self.update_epochs > 1 and self.ppo_clip == 0:
            print0(f"[rl] warning: update_epochs={self.update_epochs} without ppo_clip reuses rollouts with the "
                   "plain on-policy gradient; set --ppo-clip 0.2")
        return errs


# ---- the preset ladder: model size -> stage -> overrides ------------------------------------------------
CONFIGS = {"pretrain": PretrainConfig, "sft": SFTConfig, "rl": GRPOConfig}
_NODE = dict(num_workers=8, use_gpu=True)
_CHAT_EVAL = "ARC-Easy,ARC-Challenge,MMLU,GSM8K,SpellingBee"
LADDER: dict[str, dict[str, dict]] = {
    # A few minutes per stage on 2 CPU cores, 2 Ray workers, on the shared data: the reference's small CPU
    # configuration (d4, width 256, 4 heads of 64, seq 256, 2048 tokens per step).
    # pretrain: torch.compile on, because inductor's fused CPU kernels make a step ~1.3x faster (`raychat bench
    #   train`), which repays the one-off compile (cached on disk across runs) within the first hundred steps.
    # sft: 240 steps of 8 rows of 256 tokens, best-fit packing (on a CPU every padded position is paid for and
    #   chat rows are ~150 tokens: 2x the trained tokens per second of padded rows); SimpleArithmetic four times
    #   so that RL starts from a model that answers sums as `#### N`; 0.5 of the lrs, because the tiny model
    #   needs larger steps than nanochat's 0.02 to learn the format in 240 steps.
    # rl: single-digit sums (answers a few tokens long). Measured on a tiny_cpu model: mean reward 0.16 -> 0.27
    #   (first -> last quarter of 100 steps) at init_lr_frac 0.15, 0.17 -> 0.32 at 0.25, collapse at 0.5.
    "tiny_cpu": {
        "all": dict(num_workers=2),
        "pretrain": dict(depth=4, head_dim=64, seq_len=256, window_pattern="L", device_batch_size=4,
                         total_batch_size=2048, num_iterations=400, eval_every=100, eval_tokens=64 * 1024,
                         sample_every=200, save_every=100, unembedding_lr=0.008, matrix_lr=0.04, weight_decay=0.0,
                         scale_lr=False, compile=True),
        "sft": dict(mixture="default,SimpleArithmetic:4", synthetic_size=1000, packing="bestfit",
                    num_val_examples=64, total_batch_rows=8, num_iterations=240, init_lr_frac=0.5, eval_every=80,
                    chat_eval_tasks="ARC-Easy,MMLU,SimpleArithmetic", chat_eval_max_problems=32,
                    chat_eval_max_tokens=32),
        "rl": dict(task="SimpleArithmetic", group_size=8, max_new_tokens=16, device_batch_size=64,
                   num_iterations=100, init_lr_frac=0.2, eval_every=50, eval_examples=64, eval_k=4, save_every=50),
    },
    # GPT-1-sized (~0.3B total), the reference point of the scaling rules: ~1 h on 8xH100
    "d12": {"all": _NODE, "pretrain": dict(depth=12, core_every=2000),
            "sft": dict(device_batch_size=16, chat_eval_max_problems=256, chat_eval_tasks=_CHAT_EVAL), "rl": {}},
    # nanochat's d20: SFT is one epoch of the mixture at 32 conversations per step; RL is GSM8K at 16 prompts x
    # 16 samples per step, one epoch of GSM8K train (~467 steps)
    "d20": {"all": _NODE, "pretrain": dict(depth=20, core_every=2000),
            "sft": dict(chat_eval_max_problems=256, chat_eval_tasks=_CHAT_EVAL), "rl": {}},
    # The GPT-2-grade run on one 8xH100 node, nanochat's current time-to-GPT-2 record (1.65 h): d24 trained at a
    # tokens:params ratio of 8 (a bigger model for fewer tokens clears GPT-2's CORE 0.256525 sooner than d24 at
    # 12), FP8 (tensorwise) block matmuls, FA3 + torch.compile + bf16.
    "gpt2_8xh100": {"all": _NODE,
                    "pretrain": dict(depth=24, device_batch_size=16, target_param_data_ratio=8.0, fp8="tensorwise",
                                     compile=True, core_every=2000, save_every=2000),
                    "sft": dict(chat_eval_max_problems=500, chat_eval_tasks=_CHAT_EVAL), "rl": {}},
}
PRESETS = tuple(LADDER)


def get_preset(name: str, stage: str = "pretrain"):
    """The config of `stage` (pretrain | sft | rl) at the model size `name`."""
    if name not in LADDER:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(LADDER)}")
    return CONFIGS[stage](preset=name, **LADDER[name]["all"], **LADDER[name][stage])


# ---- flags ---------------------------------------------------------------------------------------------
def _field_comments(cls) -> dict[str, str]:
    out = {}
    for klass in reversed(cls.__mro__[:-1]):  # a subclass's comment wins
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        out.update((m.group(1), m.group(2).strip())
                   for m in re.finditer(r"^\s+(\w+):[^=\n]+=[^#\n]*#\s*(.+)$", src, flags=re.M))
    return out


def _bool(s: str) -> bool:
    v = s.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_config_args(p: argparse.ArgumentParser, stage: str) -> None:
    """--preset and one flag per field, with no argparse default: only flags the user gave override the preset."""
    cls = CONFIGS[stage]
    comments, hints, defaults = _field_comments(cls), typing.get_type_hints(cls), cls()
    p.add_argument("--preset", default=None, choices=PRESETS, help="model size to take every default from")
    for f in dataclasses.fields(cls):
        if f.name == "preset":
            continue
        flag, typ = "--" + f.name.replace("_", "-"), hints[f.name]
        help_ = f"{comments.get(f.name, '')} (default {getattr(defaults, f.name)!r})".strip()
        if typ is bool:
            p.add_argument(flag, dest=f.name, nargs="?", const=True, type=_bool, default=argparse.SUPPRESS,
                           help=help_)
            p.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        elif typ is list:
            p.add_argument(flag, dest=f.name, action="append", metavar="PATH", default=argparse.SUPPRESS,
                           help=comments.get(f.name))
        else:
            p.add_argument(flag, dest=f.name, type=typ, default=argparse.SUPPRESS, help=help_)


def config_from_args(args: argparse.Namespace, stage: str):
    """preset (or the defaults) + the flags the user gave; config errors become one-line errors."""
    names = {f.name for f in dataclasses.fields(CONFIGS[stage])}
    given = {k: v for k, v in vars(args).items() if k in names}
    try:
        base = get_preset(args.preset, stage) if getattr(args, "preset", None) else CONFIGS[stage]()
        return base.replace(**given)
    except (ValueError, TypeError) as e:
        raise RaychatError(str(e)) from None


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
