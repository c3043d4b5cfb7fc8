"""Chat finetuning (SFT): plain PyTorch, `train(config, ctx)`, launched by Ray Train like pretraining.

    raychat sft --preset tiny_cpu --run-dir runs/tiny           # 2 CPU workers, ~5 minutes
    raychat sft --preset d20 --run-dir runs/d20                  # one 8-GPU node
    raychat sft --preset tiny_cpu --extra-jsonl my_convs.jsonl   # add your own conversations to the mixture
    torchrun --nproc_per_node 8 -m raychat.train.sft --preset d20 --run-dir runs/d20   # without Ray

Starts from the latest base checkpoint of the run (`--source-step N` picks another) and trains on conversations
rendered with the chat template. Only the tokens the assistant must produce carry loss: the renderer's mask marks
assistant text, tool calls and <|assistant_end|>; user turns, <|assistant_start|> and tool *outputs* (the engine
inserts those) get target -1. The loss is the mean over every trained token of the step, across micro-batches
and workers, so a long answer weighs more than a one-letter one (as in pretraining, per token).

Rows: by default one conversation per row starting at position 0, padded to the longest row of the micro-batch,
exactly the layout the model sees when it chats (`packing="pad"`). `packing="bestfit"` instead fills rows of
seq_len+1 tokens with whole conversations (largest that fits first, the rest padded): far fewer wasted
positions on short conversations, at the cost of rows that hold several unrelated chats (attention is causal,
not per-document, as in nanochat's SFT).

Learning rates: nanochat's SFT recipe, the pretraining lrs times init_lr_frac (0.02), decaying linearly to zero;
no weight decay. At the end: validation loss on held-out conversations of the mixture and a quick chat eval
(a few tasks, capped problems); the checkpoint goes to <run>/checkpoints/sft/step_N with config, step and each
rank's loader state, so `--resume` continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from raychat.common import RaychatError, detect_device, print0, resolve_run_dir, shared_data_dir
from raychat.model.attention import select_backend
from raychat.train.context import fault_injection
from raychat.train.metrics import TrainMetrics
from raychat.train.schedule import lr_multiplier

SYNTHETIC_TASKS = ("SimpleArithmetic", "SpellingBee", "SimpleSpelling", "Identity")
PACKINGS = ("pad", "bestfit")


@dataclass
class SFTConfig:
    # where
    run_dir: str = ""                     # "" = ~/.cache/raychat/runs/<run or 'default'>
    data_dir: str = ""                    # shared data root holding chat/ and tasks/; "" = ../shared/data
    run: str = ""                         # wandb run name; "" = no wandb
    source: str = "base"                  # stage whose checkpoint to start from: base | sft | rl
    source_step: int = -1                 # step of the source checkpoint; -1 = latest
    # data
    mixture: str = "default"              # comma list of default (chat, GSM8K, MMLU, synthetic) or task names[:epochs]
    extra_jsonl: list = field(default_factory=list)   # user conversation files (CLI: --extra-jsonl, repeatable)
    extra_weight: float = 1.0             # epochs of each --extra-jsonl file in the mixture
    synthetic_size: int = 2000            # examples of each synthetic task (spelling, arithmetic, identity)
    include_noncommercial: bool = True    # alpaca/code_alpaca (CC BY-NC) in the default mixture
    num_val_examples: int = 256           # held-out conversations of the mixture for the validation loss
    packing: str = "pad"                  # pad (one conversation per row, inference layout) | bestfit
    seq_len: int = -1                     # tokens per row; -1 = the model's sequence_len
    device_batch_size: int = 4            # rows per micro-batch per worker
    total_batch_rows: int = 32            # rows per optimizer step, all workers
    num_epochs: float = 1.0               # passes over the training conversations (when num_iterations = -1)
    num_iterations: int = -1              # optimizer steps; -1 = num_epochs over the mixture
    # optimizer: pretraining lrs x init_lr_frac, linear decay to final_lr_frac
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    matrix_lr: float = 0.02
    scalar_lr: float = 0.5
    init_lr_frac: float = 0.02            # multiplier on the lrs above (nanochat's SFT)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmdown_ratio: float = 1.0           # fraction of the run with a linear lr decay (1 = the whole run)
    final_lr_frac: float = 0.0
    # evaluation and checkpoints (-1 = never; always done once at the end)
    eval_every: int = 100                 # steps between validation-loss evals
    chat_eval_tasks: str = "ARC-Easy,MMLU,SpellingBee"   # quick chat eval at the end; "" = none
    chat_eval_max_problems: int = 64      # problems per chat-eval task
    chat_eval_max_tokens: int = 256       # generated tokens per problem (generative tasks)
    save_every: int = -1                  # checkpoint period in steps; the last step is always saved
    keep_checkpoints: int = 2
    log_every: int = 10                   # steps between reports to Ray Train / JSONL lines
    # execution
    num_workers: int = 1
    use_gpu: bool = False
    device: str = ""                      # "" = auto (cuda if available)
    dtype: str = ""                       # "" = auto (bf16 on SM80+, fp32 elsewhere)
    num_threads: int = 0                  # torch CPU threads per worker; 0 = cores / workers
    compile: bool = False                 # torch.compile the model (GPU; rows then pad to seq_len)
    seed: int = 42
    max_seconds: float = 0.0              # stop early after this much training time; 0 = no limit
    metrics_port: int = -1                # Prometheus port on rank 0; -1 = env RAYCHAT_METRICS_PORT or 9101; 0 = off
    preset: str = ""

    def __post_init__(self):
        errs = []
        for name in ("device_batch_size", "total_batch_rows", "num_workers", "log_every", "synthetic_size"):
            if getattr(self, name) <= 0:
                errs.append(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.seq_len == 0 or self.seq_len < -1:
            errs.append(f"seq_len must be positive or -1 (got {self.seq_len})")
        if self.num_iterations == 0 or self.num_iterations < -1:
            errs.append(f"num_iterations must be positive or -1 (got {self.num_iterations})")
        if self.num_epochs <= 0:
            errs.append(f"num_epochs must be > 0 (got {self.num_epochs})")
        if self.total_batch_rows % self.device_batch_size:
            errs.append(f"total_batch_rows {self.total_batch_rows} must be a multiple of device_batch_size "
                        f"{self.device_batch_size}")
        if self.packing not in PACKINGS:
            errs.append(f"packing must be one of {PACKINGS} (got {self.packing!r})")
        if self.source not in ("base", "sft", "rl"):
            errs.append(f"source must be base, sft or rl (got {self.source!r})")
        if not 0 <= self.warmdown_ratio <= 1:
            errs.append(f"warmdown_ratio must be in [0, 1] (got {self.warmdown_ratio})")
        if self.init_lr_frac <= 0:
            errs.append(f"init_lr_frac must be > 0 (got {self.init_lr_frac})")
        if self.num_val_examples < 0 or self.chat_eval_max_problems <= 0 or self.chat_eval_max_tokens <= 0:
            errs.append("num_val_examples must be >= 0, chat_eval_max_problems and chat_eval_max_tokens > 0")
        try:
            parse_mixture(self.mixture)
        except ValueError as e:
            errs.append(str(e))
        if errs:
            raise ValueError("invalid SFTConfig: " + "; ".join(errs))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **kw) -> SFTConfig:
        return dataclasses.replace(self, **kw)


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


# ---- presets -------------------------------------------------------------------------------------------
def tiny_cpu() -> SFTConfig:
    """~5 minutes on 2 CPU cores (2 Ray workers) after `raychat pretrain --preset tiny_cpu`: 240 steps of 8 rows
    of 256 tokens. Best-fit packing, because on a CPU every padded position is paid for and chat rows are ~150
    tokens on average (2x the trained tokens per second of padded rows). SimpleArithmetic joins the mixture four
    times so that `raychat rl --preset tiny_cpu` starts from a model that answers sums in the `#### N` format.
    The tiny model needs larger steps than nanochat's 0.02 lr fraction to learn the format in 240 steps."""
    return SFTConfig(preset="tiny_cpu", mixture="default,SimpleArithmetic:4", synthetic_size=1000, packing="bestfit",
                     num_val_examples=64, device_batch_size=4, total_batch_rows=8, num_iterations=240,
                     init_lr_frac=0.5, eval_every=80, chat_eval_tasks="ARC-Easy,MMLU,SimpleArithmetic",
                     chat_eval_max_problems=32, chat_eval_max_tokens=32, num_workers=2, log_every=10)


def d12() -> SFTConfig:
    return SFTConfig(preset="d12", device_batch_size=16, total_batch_rows=32, num_workers=8, use_gpu=True,
                     chat_eval_max_problems=256, chat_eval_tasks="ARC-Easy,ARC-Challenge,MMLU,GSM8K,SpellingBee")


def d20() -> SFTConfig:
    """nanochat's d20 SFT: one epoch of the mixture, 32 conversations per step, on one 8-GPU node."""
    return SFTConfig(preset="d20", device_batch_size=4, total_batch_rows=32, num_workers=8, use_gpu=True,
                     chat_eval_max_problems=256, chat_eval_tasks="ARC-Easy,ARC-Challenge,MMLU,GSM8K,SpellingBee")


def gpt2_8xh100() -> SFTConfig:
    return SFTConfig(preset="gpt2_8xh100", device_batch_size=4, total_batch_rows=32, num_workers=8, use_gpu=True,
                     chat_eval_max_problems=500, chat_eval_tasks="ARC-Easy,ARC-Challenge,MMLU,GSM8K,SpellingBee")


PRESETS = {"tiny_cpu": tiny_cpu, "d12": d12, "d20": d20, "gpt2_8xh100": gpt2_8xh100}


# ---- shared with GRPO: source checkpoint, optimizer, checkpoints ------------------------------------------
def setup_threads(cfg_threads: int, world_size: int, device_type: str) -> None:
    if device_type == "cpu":
        torch.set_num_threads(cfg_threads or max(1, (os.cpu_count() or 1) // world_size))


def load_tokenizer(run_dir: Path):
    from raychat.tokenizer import Tokenizer

    tok_dir = run_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise RaychatError(f"no tokenizer in {tok_dir}; train one first: raychat tok-train --run-dir {run_dir}")
    return Tokenizer.load(tok_dir)


def build_trainable(run_dir: Path, source: str, source_step: int, resume_dir: Path | None, dev, rank: int,
                    opt_kwargs: dict, stage: str):
    """The model to train (from `resume_dir` when resuming, else from the source stage's checkpoint), its
    MuonAdamW and the checkpoint its weights came from. Every rank loads the same file, so parameters start
    identical (the optimizer's requirement)."""
    from raychat.checkpoint import build_model, load_state, read_meta, resolve_checkpoint
    from raychat.optim import build_optimizer

    if resume_dir is not None:
        ckpt = Path(resume_dir)
    else:
        try:
            ckpt = resolve_checkpoint(run_dir, source, None if source_step < 0 else source_step)
        except RaychatError as e:
            hint = {"base": "raychat pretrain", "sft": "raychat sft", "rl": "raychat rl"}[source]
            other = " (or start from another stage with --source base|sft)" if source != "base" else ""
            raise RaychatError(f"{stage}: {e}; run `{hint} --run-dir {run_dir}` first{other}") from None
    meta = read_meta(ckpt)
    if "model_config" not in meta:
        raise RaychatError(f"checkpoint {ckpt}: meta.json has no model_config")
    model = build_model(meta["model_config"], device=dev.device, dtype=dev.dtype)
    optimizer = build_optimizer(model, **opt_kwargs)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    load_state(ckpt, model, optimizer if resume_dir is not None else None, rank=rank)
    return model, optimizer, ckpt, meta


def gather_rank_states(local: dict, world: int) -> dict:
    """Every rank's small state dict, gathered so that rank 0 writes them all into meta.json."""
    states = [None] * world
    if world > 1:
        dist.all_gather_object(states, local)
    else:
        states = [local]
    return {str(r): s for r, s in enumerate(states)}


def prune_checkpoints(root: Path, keep: int, rank: int) -> None:
    if rank == 0 and keep > 0:
        import shutil

        from raychat.checkpoint import list_checkpoints

        for _, old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def all_reduce_sum(values: list[float], device) -> list[float]:
    """Sum floats over ranks (one collective); identity at world size 1."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


# ---- data ----------------------------------------------------------------------------------------------
def data_root(cfg_data_dir: str, needed: bool = True) -> Path | None:
    root = Path(cfg_data_dir).expanduser() if cfg_data_dir else shared_data_dir()
    if root is None or not root.is_dir():
        if needed:
            raise RaychatError(f"no task data: {cfg_data_dir or '../shared/data'} not found (pass --data-dir DIR "
                               "holding chat/ and tasks/, or set RAYCHAT_SHARED_DATA)")
        return None
    return root


def build_mixture(cfg: SFTConfig):
    """The SFT conversations: the named parts of `cfg.mixture` plus the user's JSONL files, one shuffled Task."""
    from raychat import tasks as T

    tasks, weights = [], []
    for name, weight in parse_mixture(cfg.mixture):
        if name == "default":
            tasks.append(T.sft_mixture(data_root(cfg.data_dir), seed=cfg.seed, synthetic_size=cfg.synthetic_size,
                                     include_noncommercial=cfg.include_noncommercial))
        elif name == "GSM8K":
            tasks.append(T.GSM8K("train", data_dir=data_root(cfg.data_dir) / "tasks" / "gsm8k"))
        else:
            tasks.append(getattr(T, name)(size=cfg.synthetic_size))   # one of SYNTHETIC_TASKS
        weights.append(weight)
    for path in cfg.extra_jsonl:
        tasks.append(T.ChatJsonl(path))
        weights.append(cfg.extra_weight)
    if len(tasks) == 1 and weights[0] == 1.0:
        return tasks[0]
    return T.TaskMixture(tasks, weights=weights, seed=cfg.seed)


def rows_to_batch(rows: list[tuple[list[int], list[int]]], pad_id: int, width: int | None = None):
    """Rows of (ids, mask) -> x, y (B, T) int64 with y[t] = ids[t+1] where mask[t+1] = 1 and -1 elsewhere
    (prompt tokens, tool outputs, padding). T = longest row - 1, or `width`."""
    T = width if width is not None else max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        n = min(len(ids) - 1, T)
        ids_t = torch.tensor(ids[: n + 1], dtype=torch.long)
        m = torch.tensor(mask[1: n + 1], dtype=torch.bool)
        x[i, :n] = ids_t[:-1]
        y[i, :n] = torch.where(m, ids_t[1:], torch.full_like(ids_t[1:], -1))
    return x, y


class ConversationLoader:
    """Micro-batches of rendered conversations for one rank: rank r takes examples r, r+W, r+2W, ... of
    `indices` (wrapping into further epochs). Resumable: the state is the count of examples this rank has
    consumed plus, for best-fit packing, the positions of the conversations waiting in its buffer."""

    def __init__(self, task, tokenizer, indices: range, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, packing: str = "pad", device="cpu", fixed_width: bool = False,
                 buffer_size: int = 64):
        if len(indices) == 0:
            raise RaychatError("no training conversations (the mixture is empty after the validation split)")
        self.task, self.tok, self.indices = task, tokenizer, indices
        self.batch_size, self.seq_len, self.rank, self.world = batch_size, seq_len, rank, world_size
        self.packing, self.device, self.fixed_width, self.buffer_size = packing, torch.device(device), fixed_width, \
            buffer_size
        self.cursor = 0                               # examples consumed by this rank
        self.buffer: list[tuple[int, list[int], list[int]]] = []   # (position, ids, mask), best-fit only
        self.stats_rows = self.stats_truncated = 0

    @property
    def epoch(self) -> float:
        return (self.rank + self.cursor * self.world) / len(self.indices)

    def _render(self, pos: int) -> tuple[list[int], list[int]]:
        conv = self.task[self.indices[pos % len(self.indices)]]
        ids, mask = self.tok.render_conversation(conv, max_tokens=self.seq_len + 1)
        self.stats_rows += 1
        self.stats_truncated += len(ids) == self.seq_len + 1
        return ids, mask

    def _next_pos(self) -> int:
        pos = self.rank + self.cursor * self.world
        self.cursor += 1
        return pos

    def _bestfit_row(self) -> tuple[list[int], list[int]]:
        room, ids, mask = self.seq_len + 1, [], []
        while True:
            while len(self.buffer) < self.buffer_size:
                pos = self._next_pos()
                self.buffer.append((pos, *self._render(pos)))
            fits = [i for i, (_, d, _) in enumerate(self.buffer) if len(d) <= room]
            if not fits:
                return ids, mask
            best = max(fits, key=lambda i: len(self.buffer[i][1]))
            _, d, m = self.buffer.pop(best)
            ids += d
            mask += m
            room -= len(d)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.packing == "pad":
            rows = [self._render(self._next_pos()) for _ in range(self.batch_size)]
        else:
            rows = [self._bestfit_row() for _ in range(self.batch_size)]
        fixed = self.fixed_width or self.packing == "bestfit"
        x, y = rows_to_batch(rows, self.tok.bos_id, self.seq_len if fixed else None)
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "buffer": [p for p, _, _ in self.buffer]}

    def load_state_dict(self, sd: dict) -> None:
        self.cursor = int(sd["cursor"])
        self.buffer = [(p, *self._render(p)) for p in sd.get("buffer", [])]

    def stats(self) -> dict:
        return {"truncated_fraction": self.stats_truncated / max(self.stats_rows, 1)}


def estimate_rows(task, tokenizer, indices: range, seq_len: int, packing: str, sample: int = 256) -> float:
    """Rows one epoch of `indices` fills: one per conversation when padding; for best-fit packing, the rendered
    tokens of a sample of conversations / row length, with 5% slack for the gaps best-fit leaves."""
    if packing == "pad":
        return float(len(indices))
    step = max(1, len(indices) // sample)
    lens = [len(tokenizer.render_conversation(task[indices[i]], max_tokens=seq_len + 1)[0])
            for i in range(0, len(indices), step)]
    return len(indices) * (sum(lens) / len(lens)) / (seq_len + 1) * 1.05


# ---- loss and evaluation -------------------------------------------------------------------------------
def masked_loss_sum(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of per-token losses over targets >= 0 (the model gives 0 where y = -1). Dividing by the number of
    trained tokens of the whole step gives the step's mean; prompt positions contribute nothing, not even
    gradient: cross_entropy's ignore_index leaves their logits' gradient exactly 0."""
    return model(x, y, loss_reduction="none").sum()


@torch.no_grad()
def evaluate_val_loss(model, task, tokenizer, indices: range, batch_size: int, seq_len: int, rank: int, world: int,
                      device) -> float:
    """Mean loss per trained token over the validation conversations (rank-strided, summed over ranks)."""
    mine = [indices[i] for i in range(rank, len(indices), world)]
    total, count = 0.0, 0.0
    for b in range(0, len(mine), batch_size):
        rows = [tokenizer.render_conversation(task[i], max_tokens=seq_len + 1) for i in mine[b: b + batch_size]]
        x, y = rows_to_batch(rows, tokenizer.bos_id)
        x, y = x.to(device), y.to(device)
        total += float(masked_loss_sum(model, x, y))
        count += float((y >= 0).sum())
    total, count = all_reduce_sum([total, count], device)
    return total / count if count else float("nan")


def quick_chat_eval(model, tokenizer, task_names: str, max_problems: int, max_tokens: int, data_dir: str,
                    device, rank: int) -> dict:
    """A few chat-eval tasks with capped problems (greedy); every rank takes part (problems are rank-strided).
    Tasks whose data is missing are skipped with a note rather than failing the finished training run."""
    from raychat.engine import Engine
    from raychat.evals.chat import run_chat_eval

    names = [n.strip() for n in task_names.split(",") if n.strip()]
    if not names:
        return {}
    root = data_root(data_dir, needed=False)
    engine = Engine(model, tokenizer, max_batch_size=16, cuda_graphs=False)  # a model in training
    out = {}
    for name in names:
        try:
            r = run_chat_eval(name, model, tokenizer, engine, max_problems=max_problems, max_tokens=max_tokens,
                              data_dir=root / "tasks" if root else None, device=device, progress=rank == 0)
        except RaychatError as e:
            print0(f"[chat-eval] {name} skipped: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - the run is saved; report the failure instead of losing the rest
            import traceback

            print0(f"[chat-eval] {name} failed:\n{traceback.format_exc()}")
            out[name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        out[name] = {k: r[k] for k in ("accuracy", "centered", "num_passed", "num_total", "seconds")}
        print0(f"[chat-eval] {name}: {r['accuracy']:.4f} ({r['num_passed']}/{r['num_total']})")
    if out:
        from raychat.evals.chat import BASELINES

        known = {k: v for k, v in out.items() if k in BASELINES and "centered" in v}
        out["mean_centered"] = sum(v["centered"] for v in known.values()) / max(len(known), 1)
    return out


# ---- the loop ------------------------------------------------------------------------------------------
def train(cfg: SFTConfig, ctx) -> dict:
    from raychat.checkpoint import read_meta, save_checkpoint

    rank, world = ctx.rank, ctx.world_size
    dev = detect_device(cfg.device or ("cuda" if cfg.use_gpu else None), cfg.dtype or None, ctx.local_rank)
    setup_threads(cfg.num_threads, world, dev.device_type)
    run_dir = resolve_run_dir(cfg.run_dir or None, cfg.run or "default")
    tokenizer = load_tokenizer(run_dir)
    attn, why = select_backend(dev.device_type)  # decided before any compile
    print0(f"[sft] {dev.describe()}; attention {attn} ({why}); world size {world}")
    print0(f"[sft] config:\n{cfg.to_json()}")

    torch.manual_seed(cfg.seed)
    s = cfg.init_lr_frac
    resume_dir = ctx.resume_dir()
    model, optimizer, src_ckpt, src_meta = build_trainable(
        run_dir, cfg.source, cfg.source_step, resume_dir, dev, rank,
        dict(embedding_lr=cfg.embedding_lr * s, unembedding_lr=cfg.unembedding_lr * s, matrix_lr=cfg.matrix_lr * s,
             scalar_lr=cfg.scalar_lr * s, weight_decay=cfg.weight_decay), "sft")
    seq_len = cfg.seq_len if cfg.seq_len > 0 else model.config.sequence_len
    if seq_len > model.config.sequence_len:
        raise RaychatError(f"seq_len {seq_len} exceeds the model's sequence_len {model.config.sequence_len}")

    task = build_mixture(cfg)
    n_val = min(cfg.num_val_examples, len(task) // 10)
    train_idx, val_idx = range(0, len(task) - n_val), range(len(task) - n_val, len(task))
    per_step = cfg.device_batch_size * world
    if cfg.total_batch_rows % per_step:
        raise RaychatError(f"total_batch_rows {cfg.total_batch_rows} is not a multiple of device_batch_size x "
                           f"workers = {cfg.device_batch_size} x {world}")
    accum = cfg.total_batch_rows // per_step
    if cfg.num_iterations > 0:
        num_iterations = cfg.num_iterations
    else:
        rows = estimate_rows(task, tokenizer, train_idx, seq_len, cfg.packing)
        num_iterations = max(1, math.ceil(cfg.num_epochs * rows / cfg.total_batch_rows))
    loader = ConversationLoader(task, tokenizer, train_idx, cfg.device_batch_size, seq_len, rank, world, cfg.packing,
                                dev.device, fixed_width=cfg.compile)
    ckpt_root = run_dir / "checkpoints" / "sft"
    start_step, total_time, source_ckpt = 0, 0.0, str(src_ckpt)
    if resume_dir is not None:
        meta = read_meta(resume_dir)
        rank_state = meta.get("rank_state", {}).get(str(rank))
        if rank_state is None:
            raise RaychatError(f"checkpoint {resume_dir} has no loader state for rank {rank}")
        loader.load_state_dict(rank_state["loader"])
        start_step, total_time = meta["step"], meta.get("total_training_time", 0.0)
        source_ckpt = meta.get("source_checkpoint", source_ckpt)
        print0(f"[sft] resumed from {resume_dir} at step {start_step}")
    plan = {"num_iterations": num_iterations, "grad_accum_steps": accum, "seq_len": seq_len,
            "num_train_conversations": len(train_idx), "num_val_conversations": len(val_idx),
            "source_checkpoint": source_ckpt, "world_size": world}
    print0(f"[sft] plan: {plan}")
    sink = TrainMetrics(run_dir, "sft", rank, num_iterations, start_step, cfg.run or None,
                        {"config": cfg.to_dict(), "plan": plan}, None if cfg.metrics_port < 0 else cfg.metrics_port)
    sink.log({"event": "plan", **plan, "device": str(dev.device), "dtype": str(dev.dtype),
              "resumed_from": str(resume_dir) if resume_dir else None})
    train_model = torch.compile(model, dynamic=False) if cfg.compile else model

    def checkpoint(step: int, extra: dict) -> Path:
        meta = {"total_training_time": total_time, "plan": plan, "source_checkpoint": source_ckpt,
                "rank_state": gather_rank_states({"loader": loader.state_dict()}, world), **extra}
        path = save_checkpoint(ckpt_root, step, model, optimizer, cfg.to_dict(), meta, rank, world)
        prune_checkpoints(ckpt_root, cfg.keep_checkpoints, rank)
        return path

    val_loss, chat, last, ema, out_of_time = None, {}, {}, 0.0, False
    step = start_step
    model.train()
    while True:
        last_step = step == num_iterations or out_of_time
        if val_idx and ((cfg.eval_every > 0 and step % cfg.eval_every == 0) or last_step):
            model.eval()
            val_loss = evaluate_val_loss(model, task, tokenizer, val_idx, cfg.device_batch_size, seq_len, rank,
                                         world, dev.device)
            model.train()
            sink.log({"event": "eval", "step": step, "val_loss": val_loss})
            print0(f"[sft] step {step}: val loss {val_loss:.4f}")
        if last_step or (cfg.save_every > 0 and step > start_step and step % cfg.save_every == 0):
            path = checkpoint(step, {"val_loss": val_loss, "loss": last.get("loss"), "final": last_step})
            if last_step and cfg.chat_eval_tasks:
                # after the checkpoint is written: an eval that fails can never lose the trained weights
                model.eval()
                chat = quick_chat_eval(model, tokenizer, cfg.chat_eval_tasks, cfg.chat_eval_max_problems,
                                       cfg.chat_eval_max_tokens, cfg.data_dir, dev.device, rank)
                sink.log({"event": "chat_eval", "step": step, "results": chat})
                if rank == 0:
                    write_json_atomic(run_dir / "evals" / "sft_quick_chat_eval.json",
                                      {"step": step, "max_problems": cfg.chat_eval_max_problems, "results": chat})
                    write_json_atomic(path / "meta.json", {**read_meta(path), "chat_eval": chat})
            ctx.report({"step": step, "val_loss": val_loss, **last}, checkpoint_dir=path)
        if last_step:
            break

        # ---- one optimizer step ----
        lrm = lr_multiplier(step, num_iterations, cfg.warmup_steps, cfg.warmdown_ratio, cfg.final_lr_frac)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lrm
        if dev.device_type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        batches = [next(loader) for _ in range(accum)]
        local_tokens = sum(int((y >= 0).sum()) for _, y in batches)
        # normalise by the trained tokens of the whole step on all ranks; x world because the optimizer
        # averages gradients over ranks
        global_tokens = all_reduce_sum([local_tokens], dev.device)[0]
        scale = world / max(global_tokens, 1.0)
        loss_sum = torch.zeros((), device=dev.device)
        for x, y in batches:
            ls = masked_loss_sum(train_model, x, y)
            (ls * scale).backward()
            loss_sum += ls.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        step += 1
        fault_injection(step, rank)
        total_time += dt
        # the time limit is decided together: ranks that stopped at different steps would deadlock
        loss_all, late = all_reduce_sum([float(loss_sum), cfg.max_seconds > 0 and total_time >= cfg.max_seconds],
                                        dev.device)
        loss_val, out_of_time = loss_all / max(global_tokens, 1.0), late > 0
        if not math.isfinite(loss_val):
            raise RuntimeError(f"loss is {loss_val} at step {step}: training diverged")
        ema = 0.9 * ema + 0.1 * loss_val
        smooth = ema / (1 - 0.9 ** (step - start_step))
        positions = sum(x.numel() for x, _ in batches) * world
        last = {"loss": smooth, "raw_loss": loss_val, "trained_tokens": int(global_tokens),
                "tokens_per_second": positions / dt, "trained_fraction": global_tokens / max(positions, 1),
                "step_seconds": dt, "lr": lrm, "epoch": loader.epoch, "total_training_time": total_time}
        sink.step(1, loss=round(smooth, 4), tok_s=int(positions / dt))
        if step % cfg.log_every == 0 or step == num_iterations:
            sink.log({"event": "train", "step": step, **last, **loader.stats()})
            if step != num_iterations and not out_of_time and not (cfg.save_every > 0 and step % cfg.save_every == 0):
                ctx.report({"step": step, **last})
    summary = {"event": "done", "step": step, "val_loss": val_loss, "final_loss": last.get("loss"),
               "total_training_time": total_time, "chat_eval": chat, "checkpoint": str(ckpt_root)}
    sink.log(summary)
    sink.close()
    print0(f"[sft] done: {json.dumps(summary, default=str)}")
    return summary


def main(argv=None) -> int:
    """torchrun entry point: the same loop without Ray."""
    import argparse

    from raychat.train.cli_args import add_config_args, config_from_args
    from raychat.train.context import LocalContext

    p = argparse.ArgumentParser(prog="python -m raychat.train.sft")
    add_config_args(p, SFTConfig, PRESETS)
    p.add_argument("--extra-jsonl", action="append", default=[], help="a JSONL file of conversations to add")
    args = p.parse_args(argv)
    cfg = config_from_args(args, SFTConfig, PRESETS)
    cfg = cfg.replace(extra_jsonl=[str(Path(x).resolve()) for x in args.extra_jsonl] or cfg.extra_jsonl)
    ctx = LocalContext()
    try:
        train(cfg, ctx)
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
