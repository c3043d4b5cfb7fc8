"""Chat finetuning (SFT): the data, the step and the evals; the harness does the rest.

    raychat sft --preset tiny_cpu --run-dir runs/tiny           # 2 CPU workers, ~5 minutes
    raychat sft --preset d20 --run-dir runs/d20                  # one 8-GPU node
    raychat sft --preset tiny_cpu --extra-jsonl my_convs.jsonl   # add your own conversations to the mixture
    torchrun --nproc_per_node 8 -m raychat.train.sft --preset d20 --run-dir runs/d20   # without Ray

Starts from the latest base checkpoint of the run (`--source-step N` picks another), whose model shape and
sequence length it keeps, and trains on conversations rendered with the chat template. Only the tokens the
assistant must produce carry loss: the renderer's mask marks assistant text, tool calls and <|assistant_end|>;
user turns, <|assistant_start|> and tool *outputs* (the engine inserts those) get target -1. The loss is the
mean over every trained token of the step, across micro-batches and workers, so a long answer weighs more than
a one-letter one (as in pretraining, per token).

Rows: by default one conversation per row starting at position 0, padded to the longest row of the micro-batch,
exactly the layout the model sees when it chats (`packing="pad"`). `packing="bestfit"` instead fills rows of
seq_len+1 tokens with whole conversations (largest that fits first, the rest padded): far fewer wasted
positions on short conversations, at the cost of rows that hold several unrelated chats (attention is causal,
not per-document, as in nanochat's SFT).

Learning rates: nanochat's SFT recipe, the pretraining lrs times init_lr_frac (0.02), decaying linearly to zero;
no weight decay. At the end: validation loss on held-out conversations of the mixture and a quick chat eval
(a few tasks, capped problems), written after the checkpoint so that a failing eval never loses the weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from raychat.common import RaychatError, print0
from raychat.data import rows_to_batch
from raychat.train.config import SFTConfig, parse_mixture
from raychat.train.harness import (
    Eval,
    Harness,
    all_reduce_sum,
    load_tokenizer,
    main,
    source_checkpoint,
)


def task_root(cfg_data_dir: str) -> Path | None:
    """--data-dir: a folder in the shared layout (chat/, tasks/) read instead of the data registry; unset = None,
    the registry (downloaded datasets; ../shared/data only as its development default)."""
    if not cfg_data_dir:
        return None
    root = Path(cfg_data_dir).expanduser()
    if not root.is_dir():
        raise RaychatError(f"--data-dir {root} does not exist (a folder holding chat/ and tasks/; leave it unset to "
                           "read the downloaded datasets: raychat data download smoltalk mmlu gsm8k)")
    return root


def preflight(cfg: SFTConfig, resume: bool, world_size: int) -> SFTConfig:
    """In the driver, before any worker starts: the user's files (a bad line fails in a second with file:line),
    the tokenizer, the source checkpoint, the task data (the mixture's and the final chat eval's) and the batch."""
    from raychat.data.registry import require
    from raychat.tasks import ChatJsonl
    from raychat.tasks.mixtures import data_needs

    cfg = cfg.replace(extra_jsonl=[str(Path(x).expanduser().resolve()) for x in cfg.extra_jsonl])
    for path in cfg.extra_jsonl:
        ChatJsonl(path)
    load_tokenizer(Path(cfg.run_dir))
    if not resume:
        source_checkpoint(Path(cfg.run_dir), cfg, "sft")
    if task_root(cfg.data_dir) is None:
        require(data_needs(sft_parts=[name for name, _ in parse_mixture(cfg.mixture)],
                           eval_tasks=[t.strip() for t in cfg.chat_eval_tasks.split(",") if t.strip()]))
    if cfg.total_batch_rows % (cfg.device_batch_size * world_size):
        raise RaychatError(f"total_batch_rows {cfg.total_batch_rows} is not a multiple of device_batch_size x "
                           f"workers = {cfg.device_batch_size} x {world_size}")
    return cfg


# ---- data ----------------------------------------------------------------------------------------------
def build_mixture(cfg: SFTConfig):
    """The SFT conversations: the named parts of `cfg.mixture` plus the user's JSONL files, one shuffled Task."""
    from raychat import tasks as T

    tasks, weights, root = [], [], task_root(cfg.data_dir)
    for name, weight in parse_mixture(cfg.mixture):
        if name == "default":
            tasks.append(T.sft_mixture(root, seed=cfg.seed, synthetic_size=cfg.synthetic_size,
                                       include_noncommercial=cfg.include_noncommercial))
        elif name == "GSM8K":
            tasks.append(T.GSM8K("train", data_dir=root / "tasks" / "gsm8k" if root else None))
        else:
            tasks.append(getattr(T, name)(size=cfg.synthetic_size))   # one of SYNTHETIC_TASKS
        weights.append(weight)
    for path in cfg.extra_jsonl:
        tasks.append(T.ChatJsonl(path))
        weights.append(cfg.extra_weight)
    if len(tasks) == 1 and weights[0] == 1.0:
        return tasks[0]
    return T.TaskMixture(tasks, weights=weights, seed=cfg.seed)


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
    The preflight checked their data; a task that still fails is skipped with a note rather than failing the
    finished training run (the checkpoint is already saved)."""
    from raychat.engine import Engine
    from raychat.evals.chat import run_chat_eval

    names = [n.strip() for n in task_names.split(",") if n.strip()]
    if not names:
        return {}
    root = task_root(data_dir)
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


# ---- the stage -----------------------------------------------------------------------------------------
def train(cfg: SFTConfig, ctx) -> dict:
    h = Harness(cfg, ctx, "sft")
    tok, dev = h.tokenizer, h.dev.device
    model, optimizer = h.build(h.lrs(cfg.init_lr_frac))
    seq_len = cfg.seq_len if cfg.seq_len > 0 else model.config.sequence_len
    if seq_len > model.config.sequence_len:
        raise RaychatError(f"seq_len {seq_len} exceeds the model's sequence_len {model.config.sequence_len}")
    task = build_mixture(cfg)
    n_val = min(cfg.num_val_examples, len(task) // 10)
    train_idx, val_idx = range(0, len(task) - n_val), range(len(task) - n_val, len(task))
    accum = cfg.total_batch_rows // (cfg.device_batch_size * h.world)
    if cfg.num_iterations > 0:
        n_iter = cfg.num_iterations
    else:
        rows = estimate_rows(task, tok, train_idx, seq_len, cfg.packing)
        n_iter = max(1, math.ceil(cfg.num_epochs * rows / cfg.total_batch_rows))
    loader = ConversationLoader(task, tok, train_idx, cfg.device_batch_size, seq_len, h.rank, h.world, cfg.packing,
                                dev, fixed_width=cfg.compile)
    if h.resume_dir:
        loader.load_state_dict(h.rank_state("loader"))
    h.plan.update(num_iterations=n_iter, grad_accum_steps=accum, seq_len=seq_len,
                  num_train_conversations=len(train_idx), num_val_conversations=len(val_idx))
    train_model = h.compiled(model)

    def step(it: int) -> dict:
        batches = [next(loader) for _ in range(accum)]
        # normalised by the trained tokens of the whole step on all ranks; x world because the optimizer
        # averages gradients over ranks
        trained = all_reduce_sum([sum(int((y >= 0).sum()) for _, y in batches)], dev)[0]
        loss_sum = torch.zeros((), device=dev)
        for x, y in batches:
            ls = masked_loss_sum(train_model, x, y)
            (ls * (h.world / max(trained, 1.0))).backward()
            loss_sum += ls.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        positions = sum(x.numel() for x, _ in batches) * h.world
        return {"loss": all_reduce_sum([float(loss_sum)], dev)[0] / max(trained, 1.0), "tokens": positions,
                "trained_tokens": int(trained), "trained_fraction": trained / max(positions, 1), "epoch": loader.epoch,
                **loader.stats()}

    def val_loss(it: int) -> dict:
        if not val_idx:
            return {}
        return {"val_loss": evaluate_val_loss(model, task, tok, val_idx, cfg.device_batch_size, seq_len, h.rank,
                                              h.world, dev)}

    def chat_eval(it: int, path: Path) -> dict:
        from raychat.checkpoint import read_meta

        if not cfg.chat_eval_tasks:
            return {"chat_eval": {}}
        chat = quick_chat_eval(model, tok, cfg.chat_eval_tasks, cfg.chat_eval_max_problems, cfg.chat_eval_max_tokens,
                               cfg.data_dir, dev, h.rank)
        h.sink.log({"event": "chat_eval", "step": it, "results": chat})
        h.write_eval("sft_quick_chat_eval", {"step": it, "max_problems": cfg.chat_eval_max_problems, "results": chat})
        if h.rank == 0:
            (path / "meta.json").write_text(json.dumps({**read_meta(path), "chat_eval": chat}, indent=2, default=str))
        return {"chat_eval": chat}

    return h.run(model, optimizer, n_iter, step, [Eval("eval", cfg.eval_every, val_loss)],
                 state=lambda: {"loader": loader.state_dict()}, finish=chat_eval,
                 progress={"loss": "loss", "tok_s": "tokens_per_second"})


if __name__ == "__main__":
    raise SystemExit(main("sft"))
