"""The CORE metric (DCLM, arXiv:2406.11794), computed exactly as nanochat's `core_eval.py` does, batched.

For each task of the bundle (see bundle.py): rows are shuffled with `random.Random(1337)` and cut to
`max_per_task`; item `idx` gets `num_fewshot` examples drawn with `random.Random(1234 + idx)` from the other items;
prompts are rendered as

    multiple_choice:   [ex.query + delim + ex.choices[ex.gold] + "\\n\\n"]*  + query + delim + choice_i
    schema:            [ex.context_options[ex.gold] + delim + ex.continuation + "\\n\\n"]*  + option_i + delim + cont
    language_modeling: [ex.context.strip() + delim + ex.continuation + "\\n\\n"]*  + context.strip() + delim + cont

and tokenised with a leading <|bos|>. The scored span is the part that differs between a task's prompts:
the common prefix ends where the choices start (MC), the common suffix is the continuation (schema), and for LM the
prompt without the continuation (stripped of trailing space, so its tokens are a clean prefix) marks the start.
Sequences longer than the model's context are cropped from the left.
- MC / schema: the option with the lowest mean cross-entropy over its span wins (ties: the first).
- LM: correct iff greedy argmax reproduces every continuation token.
Centered accuracy (acc - b/100) / (1 - b/100) with b the random baseline in percent; CORE = mean over tasks.

Batching: rows of many items are sorted by length and packed into forwards of at most `batch_size` rows and
`max_batch_tokens` padded tokens (right padding with <|bos|>; the model is causal, so padding never changes a
scored position). Distributed: rank r scores items r, r+W, ...; per-item correctness is all-reduced.

The model is any callable `model(idx (B,T) long) -> logits (B,T,V)`; the tokenizer needs `encode(text,
prepend=id)` and `bos_id`.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from raychat.common import RaychatError, get_dist_info, print0
from raychat.evals.bundle import CoreTaskSpec, find_eval_bundle, load_bundle  # noqa: F401 (re-export)
from raychat.model.attention import inference_attention

# ------------------------------------------------------------------------------------------------------------------
# Prompt rendering


def render_prompts_mc(item: dict, delim: str, fewshot: list[dict]) -> list[str]:
    prefix = "".join(f"{ex['query']}{delim}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
    return [f"{prefix}{item['query']}{delim}{choice}" for choice in item["choices"]]


def render_prompts_schema(item: dict, delim: str, fewshot: list[dict]) -> list[str]:
    prefix = "".join(f"{ex['context_options'][ex['gold']]}{delim}{ex['continuation']}\n\n" for ex in fewshot)
    return [f"{prefix}{option}{delim}{item['continuation']}" for option in item["context_options"]]


def render_prompts_lm(item: dict, delim: str, fewshot: list[dict]) -> list[str]:
    """[prompt without continuation, prompt with it]. Contexts are stripped (some rows carry trailing spaces) and
    the first prompt is stripped too: a trailing space would merge into the continuation's first token."""
    prefix = "".join(f"{ex['context'].strip()}{delim}{ex['continuation']}\n\n" for ex in fewshot)
    body = f"{prefix}{item['context'].strip()}{delim}"
    return [body.strip(), f"{body}{item['continuation']}"]


def sample_fewshot(data: list[dict], idx: int, num_fewshot: int) -> list[dict]:
    """nanochat's draw, `Random(1234 + idx).sample([i for i in range(n) if i != idx], k)`, without building that
    list (O(n) per item is O(n^2) per task: 10^8 steps for hellaswag). `sample` picks positions from the length
    alone, so sampling range(n - 1) and skipping over idx selects exactly the same items."""
    if num_fewshot <= 0:
        return []
    n = len(data) - 1
    picks = random.Random(1234 + idx).sample(range(n), min(num_fewshot, n))
    return [data[j if j < idx else j + 1] for j in picks]


def render_item(task_type: str, item: dict, delim: str, fewshot: list[dict]) -> list[str]:
    if task_type == "multiple_choice":
        return render_prompts_mc(item, delim, fewshot)
    if task_type == "schema":
        return render_prompts_schema(item, delim, fewshot)
    if task_type == "language_modeling":
        return render_prompts_lm(item, delim, fewshot)
    raise RaychatError(f"unknown CORE task type {task_type!r}")


# ------------------------------------------------------------------------------------------------------------------
# Tokens and scored spans


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix. Binary search over slice equality (runs in C): few-shot prompts
    share thousands of tokens, and a Python loop over them dominated the eval's CPU time."""
    lo, hi = 0, min(len(s) for s in seqs)
    first = seqs[0]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if all(s[:mid] == first[:mid] for s in seqs[1:]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(seqs: list[list[int]]) -> int:
    return _common_prefix([s[::-1] for s in seqs])


@dataclass
class Row:
    item: int            # index of the item within the task's data
    option: int          # choice / context option (0 for LM)
    tokens: list[int]
    start: int           # scored span tokens[start:end], predicted from positions start-1 .. end-2
    end: int


def item_rows(task_type: str, prompts: list[str], tokenizer, item: int, max_seq_len: int | None) -> list[Row]:
    tokens = [tokenizer.encode(p, prepend=tokenizer.bos_id) for p in prompts]
    if task_type == "multiple_choice":
        start = _common_prefix(tokens)
        spans = [(start, len(t)) for t in tokens]
    elif task_type == "schema":
        suffix = _common_suffix(tokens)
        spans = [(len(t) - suffix, len(t)) for t in tokens]
    else:
        # the prompt without the continuation is a token prefix of the one with it (nanochat asserts this; the
        # common prefix is the same number when it holds and degrades gracefully when a tokenizer merges across)
        without, with_ = tokens
        tokens, spans = [with_], [(_common_prefix([without, with_]), len(with_))]
    rows = []
    for opt, (t, (s, e)) in enumerate(zip(tokens, spans)):
        if max_seq_len is not None and len(t) > max_seq_len:
            crop = len(t) - max_seq_len
            t, s, e = t[crop:], s - crop, e - crop
        # position 0 has no prediction; a continuation longer than the context keeps its visible tail
        rows.append(Row(item, opt, t, max(s, 1), e))
    return rows


@torch.no_grad()
def score_rows(model, rows: list[Row], pad_id: int, device) -> list[tuple[float, bool]]:
    """One forward over `rows` -> per row (mean loss over its span, greedy exact match of its span). Only the
    span positions go through log-softmax/argmax: with 10-shot prompts they are a few percent of the positions,
    and a full (B, T, V) cross-entropy cost a fifth of the eval's time on CPU."""
    T = max(len(r.tokens) for r in rows)
    idx = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, : len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long)
    idx = idx.to(device)
    with inference_attention(idx.device):  # every batch has its own length: no per-shape cuDNN graphs
        logits = model(idx)                                           # (B, T, V)
    lens = [max(0, r.end - r.start) for r in rows]
    b = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(lens)).to(device)          # (N,)
    t = torch.cat([torch.arange(r.start - 1, r.start - 1 + n) for r, n in zip(rows, lens)]).to(device)
    span_logits = logits[b, t].float()                                # (N, V): position t predicts token t+1
    targets = idx[b, t + 1]                                           # (N,)
    losses = F.cross_entropy(span_logits, targets, reduction="none").cpu()
    match = (span_logits.argmax(dim=-1) == targets).cpu()
    out, o = [], 0
    for n in lens:
        if n == 0:                                                    # empty span: never the best option
            out.append((math.inf, False))
        else:
            out.append((losses[o: o + n].mean().item(), bool(match[o: o + n].all())))
        o += n
    return out


def _batches(rows: list[Row], batch_size: int, max_batch_tokens: int):
    """Longest first, so each forward pads little; every batch has at least one row."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
    batch: list[int] = []
    for i in order:
        width = len(rows[batch[0]].tokens) if batch else len(rows[i].tokens)
        if batch and (len(batch) + 1 > batch_size or (len(batch) + 1) * width > max_batch_tokens):
            yield [rows[j] for j in batch]
            batch = []
        batch.append(i)
    if batch:
        yield [rows[j] for j in batch]


# ------------------------------------------------------------------------------------------------------------------
# Tasks


@functools.lru_cache(maxsize=64)
def _shuffled_rows(path: str, mtime_ns: int, size: int) -> tuple[dict, ...]:
    # parsing the whole bundle takes seconds (hellaswag alone is 8 MB); a training run evaluates CORE many times
    with open(path, encoding="utf-8") as f:
        data = [json.loads(line) for line in f if line.strip()]
    random.Random(1337).shuffle(data)      # files are often ordered; a prefix after shuffling is a fair subsample
    return tuple(data)


def load_task_data(spec: CoreTaskSpec, max_per_task: int = -1) -> list[dict]:
    """The task's rows, shuffled with Random(1337), first `max_per_task` (all if <= 0). Rows are shared with a
    cache: treat them as read-only."""
    st = os.stat(spec.path)
    data = _shuffled_rows(str(spec.path), st.st_mtime_ns, st.st_size)
    return list(data[:max_per_task] if max_per_task > 0 else data)


def model_max_seq_len(model, max_seq_len=None) -> int | None:
    """Context to crop to: the argument, else `model.max_seq_len`, else `model.config.sequence_len`, else None."""
    if max_seq_len is not None:
        return int(max_seq_len)
    if getattr(model, "max_seq_len", None) is not None:
        return int(model.max_seq_len)
    cfg = getattr(model, "config", None)
    return int(cfg.sequence_len) if getattr(cfg, "sequence_len", None) else None


def model_device(model, device=None) -> torch.device:
    """`device` if given, else where the model's parameters live (CPU for parameter-free callables)."""
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def evaluate_task(model, tokenizer, data: list[dict], spec: CoreTaskSpec, device=None, batch_size: int = 16,
                  max_batch_tokens: int = 16384, max_seq_len: int | None = None, progress=None) -> float:
    """Accuracy of one task over `data` (all ranks must call this: the result is all-reduced)."""
    device = model_device(model, device)
    max_seq_len = model_max_seq_len(model, max_seq_len)
    info = get_dist_info(initialized_only=True)
    rank, world = info.rank, info.world_size
    mine = list(range(rank, len(data), world))
    scores: dict[int, dict[int, tuple[float, bool]]] = {idx: {} for idx in mine}
    # items in chunks: all rows of a 10k-item task at once would be gigabytes of Python token lists
    chunk = max(64, 8 * batch_size)
    for c in range(0, len(mine), chunk):
        rows = []
        for idx in mine[c: c + chunk]:
            prompts = render_item(spec.task_type, data[idx], spec.continuation_delimiter,
                                  sample_fewshot(data, idx, spec.num_fewshot))
            rows += item_rows(spec.task_type, prompts, tokenizer, idx, max_seq_len)
        for batch in _batches(rows, batch_size, max_batch_tokens):
            for r, s in zip(batch, score_rows(model, batch, tokenizer.bos_id, device)):
                scores[r.item][r.option] = s
            if progress is not None:
                done = sum(1 for r in batch if r.option == 0)    # count items as their first row finishes
                if done:
                    progress.update(done)
    correct = torch.zeros(len(data), dtype=torch.float64)
    for idx in mine:
        s = scores[idx]
        if spec.task_type == "language_modeling":
            correct[idx] = float(s[0][1])
        else:
            mean_losses = [s[o][0] for o in range(len(s))]
            correct[idx] = float(mean_losses.index(min(mean_losses)) == data[idx].get("gold"))
    if world > 1:
        # NCCL needs device tensors; gloo takes CPU ones
        t = correct.to(device) if device.type == "cuda" else correct
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        correct = t.cpu()
    return correct.mean().item() if len(data) else float("nan")


def centered(accuracy: float, random_baseline_percent: float) -> float:
    b = 0.01 * random_baseline_percent
    return (accuracy - b) / (1.0 - b)


def evaluate_core(model, tokenizer, bundle_dir, device=None, max_per_task: int = -1, batch_size: int = 16,
                  max_seq_len: int | None = None, max_batch_tokens: int = 16384, tasks: list[str] | None = None,
                  progress: bool = True) -> dict:
    """Run every task of the bundle (or the labels in `tasks`). Returns
    {"core_metric" (alias "core"), "results": {label: acc}, "centered_results": {label: centered},
     "num_examples": {label: n},
     "seconds": {label: s}, "tasks": [{label, task_type, num_fewshot, random_baseline, ...}], "missing": [...],
     "bundle": str, "max_per_task": int, "examples_per_second": float}."""
    from raychat.progress import Progress

    bundle = load_bundle(bundle_dir)
    specs = bundle.tasks
    if tasks is not None:
        unknown = set(tasks) - {s.label for s in specs}
        if unknown:
            raise RaychatError(f"unknown or missing CORE task(s) {sorted(unknown)}; this bundle has "
                               f"{', '.join(s.label for s in specs)}")
        specs = [s for s in specs if s.label in tasks]
    if not specs:
        raise RaychatError(f"no runnable CORE tasks in {bundle.root}")
    if bundle.missing:
        print0(f"CORE: {len(bundle.missing)} task(s) missing from {bundle.root}: {'; '.join(bundle.missing)}")
    datasets = [load_task_data(s, max_per_task) for s in specs]
    info = get_dist_info(initialized_only=True)
    rank, world = info.rank, info.world_size
    mine = sum(len(range(rank, len(d), world)) for d in datasets)
    bar = Progress(mine, desc="CORE", unit="ex", disable=not progress or rank != 0)
    out = {"results": {}, "centered_results": {}, "num_examples": {}, "seconds": {}, "tasks": [],
           "missing": list(bundle.missing), "bundle": str(bundle.root), "max_per_task": max_per_task}
    t_all = time.perf_counter()
    for spec, data in zip(specs, datasets):
        t0 = time.perf_counter()
        bar.set_postfix(task=spec.label)
        acc = evaluate_task(model, tokenizer, data, spec, device=device, batch_size=batch_size,
                            max_batch_tokens=max_batch_tokens, max_seq_len=max_seq_len, progress=bar)
        secs = time.perf_counter() - t0
        out["results"][spec.label] = acc
        out["centered_results"][spec.label] = centered(acc, spec.random_baseline)
        out["num_examples"][spec.label] = len(data)
        out["seconds"][spec.label] = secs
        out["tasks"].append({"label": spec.label, "task_type": spec.task_type, "num_fewshot": spec.num_fewshot,
                             "random_baseline": spec.random_baseline})
    bar.close()
    elapsed = time.perf_counter() - t_all
    out["core_metric"] = sum(out["centered_results"].values()) / len(out["centered_results"])
    out["core"] = out["core_metric"]        # short alias (metrics logs use "core")
    out["num_tasks"] = len(specs)
    out["examples_per_second"] = sum(out["num_examples"].values()) / elapsed if elapsed > 0 else float("nan")
    return out


# ------------------------------------------------------------------------------------------------------------------
# Output


def format_core_table(result: dict) -> str:
    """A plain-text table: task, type, shots, n, accuracy, centered; CORE last, then what was missing."""
    lines = [f"{'task':<34} {'type':<17} {'shots':>5} {'n':>6} {'accuracy':>9} {'centered':>9}"]
    for t in result["tasks"]:
        lab = t["label"]
        lines.append(f"{lab:<34} {t['task_type']:<17} {t['num_fewshot']:>5} {result['num_examples'][lab]:>6} "
                     f"{result['results'][lab]:>9.4f} {result['centered_results'][lab]:>9.4f}")
    n = result.get("num_tasks", len(result["tasks"]))
    lines.append(f"{'CORE (mean centered, ' + str(n) + ' tasks)':<75} {result['core_metric']:>9.4f}")
    for m in result.get("missing", []):
        lines.append(f"missing: {m}")
    return "\n".join(lines)


def write_core_csv(result: dict, path) -> Path:
    """CSV (task, task_type, num_fewshot, num_examples, accuracy, centered, random_baseline, seconds) + a CORE row,
    written atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "task_type", "num_fewshot", "num_examples", "accuracy", "centered", "random_baseline",
                "seconds"])
    for t in result["tasks"]:
        lab = t["label"]
        w.writerow([lab, t["task_type"], t["num_fewshot"], result["num_examples"][lab],
                    f"{result['results'][lab]:.6f}", f"{result['centered_results'][lab]:.6f}",
                    t["random_baseline"], f"{result['seconds'][lab]:.2f}"])
    w.writerow(["CORE", "", "", sum(result["num_examples"].values()), "", f"{result['core_metric']:.6f}", "", ""])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return path
