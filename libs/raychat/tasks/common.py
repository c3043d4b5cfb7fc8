"""A Task is an indexable set of conversations, optionally with a way to grade an answer.

Conversations use the contract format: `{"messages": [{"role": "user"|"assistant"|"system", "content": str |
[parts]}], ...}` where assistant parts are `{"type": "text"|"python"|"python_output", "text": str}`. Tasks may add
keys next to "messages" (multiple choice adds "letters", HumanEval adds "entry_point"/"test"); the tokenizer's
renderer reads only "messages".

Two kinds of evaluation (the `eval_type` property):
- "categorical": multiple choice; the conversation carries `letters` and the gold letter is the assistant reply.
  The chat eval scores the model's logits restricted to those letters (no sampling).
- "generative": `evaluate(conversation, completion_text) -> bool` grades sampled text; `reward` is its float (GRPO).
Tasks used only for training have `eval_type = None`.

Composition: `TaskMixture` (deterministic shuffle of all examples by seed, per-task weights = epochs, fractional
weights take a seeded subset) and `TaskSequence` (curricula: one task after another). Both are Tasks themselves.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from raychat.common import RaychatError


def read_records(path) -> list[dict]:
    """The rows of a task data file as dicts: `.parquet` (the Hub's layout: nested columns become lists and
    dicts), `.jsonl` or `.jsonl.gz` (the shared development copies). A bad file is a RaychatError naming it."""
    path = Path(path)
    if not path.is_file():
        raise RaychatError(f"task file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for corrupt files
            raise RaychatError(f"unreadable parquet file {path}: {e}") from None
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RaychatError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return rows


class Task:
    """Base class. Subclasses implement `num_examples()` and `get_example(i)`; `start/stop/step` give a cheap view
    (e.g. the first 100 problems for a quick eval) without copying data."""

    eval_type: str | None = None

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or step < 1 or (stop is not None and stop < start):
            raise RaychatError(f"bad task view start={start} stop={stop} step={step}")
        self.start, self.stop, self.step = start, stop, step

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        n = self.num_examples()
        stop = n if self.stop is None else min(self.stop, n)
        return max(0, -(-(stop - self.start) // self.step))   # ceil division

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{type(self).__name__} index {index} out of range ({n} examples)")
        return self.get_example(self.start + index * self.step)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def evaluate(self, conversation: dict, completion: str) -> bool:
        raise NotImplementedError(f"{type(self).__name__} has no generative checker")

    def reward(self, conversation: dict, completion: str) -> float:
        return float(self.evaluate(conversation, completion))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)})"


class TaskMixture(Task):
    """All examples of several tasks in one deterministic shuffled order.

    `weights[i]` is how many epochs of task i the mixture holds: 2 = every example twice, 0.5 = a seeded half of
    them, 1 (default) = each once. Passing the same task twice is the same as weight 2. The index is two numpy
    arrays, so a mixture of millions of examples costs ~12 bytes per example."""

    def __init__(self, tasks: list[Task], weights: list[float] | None = None, seed: int = 42, **kwargs):
        super().__init__(**kwargs)
        if not tasks:
            raise RaychatError("a task mixture needs at least one task")
        weights = [1.0] * len(tasks) if weights is None else list(weights)
        if len(weights) != len(tasks) or any(w < 0 or not math.isfinite(w) for w in weights):
            raise RaychatError(f"mixture weights must be one finite non-negative number per task, got {weights}")
        self.tasks, self.weights, self.seed = tasks, weights, seed
        rng = np.random.default_rng(seed)
        task_ids, local_ids = [], []
        for t, (task, w) in enumerate(zip(tasks, weights)):
            n = len(task)
            whole, frac = int(w), w - int(w)
            idx = [np.tile(np.arange(n, dtype=np.int64), whole)]
            if frac > 0:
                idx.append(np.sort(rng.permutation(n)[: int(round(frac * n))]))
            idx = np.concatenate(idx)
            task_ids.append(np.full(len(idx), t, dtype=np.int32))
            local_ids.append(idx)
        self._task = np.concatenate(task_ids)
        self._local = np.concatenate(local_ids)
        order = rng.permutation(len(self._task))
        self._task, self._local = self._task[order], self._local[order]

    def num_examples(self) -> int:
        return len(self._task)

    def get_example(self, index: int) -> dict:
        return self.tasks[int(self._task[index])][int(self._local[index])]

    def source_of(self, index: int) -> tuple[int, int]:
        """(task position, index inside that task) of mixture example `index` (after the view is applied)."""
        i = self.start + index * self.step
        return int(self._task[i]), int(self._local[i])


class TaskSequence(Task):
    """Tasks one after another, in order (a curriculum)."""

    def __init__(self, tasks: list[Task], **kwargs):
        super().__init__(**kwargs)
        self.tasks = tasks
        self._offsets = np.cumsum([0] + [len(t) for t in tasks])

    def num_examples(self) -> int:
        return int(self._offsets[-1])

    def get_example(self, index: int) -> dict:
        t = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self.tasks[t][index - int(self._offsets[t])]


# ----------------------------------------------------------------------------------------------------------------
# Shared formats

LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H", "I", "J")


def render_mc(question: str, letters, choices) -> str:
    """The multiple-choice chat prompt (nanochat's rendering). The letter comes *after* each choice and with no
    space before it ("=A"), so the token the model must emit ("A") is the very token it saw in the prompt; small
    models bind much better that way."""
    query = f"Multiple Choice question: {question}\n"
    query += "".join(f"- {choice}={letter}\n" for letter, choice in zip(letters, choices))
    query += "\nRespond only with the letter of the correct answer."
    return query


# "#### 72": the final-answer marker of GSM8K solutions, reused by every task with a numeric answer
_ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract_answer(text: str) -> str | None:
    """The number after the first `#### ` marker, commas removed, or None."""
    m = _ANSWER_RE.search(text)
    return m.group(1).strip().replace(",", "") if m else None


def same_number(pred: str | None, ref: str | None) -> bool:
    """Exact decimal equality of two extracted answers. Unlike nanochat's plain string compare, "72.0" and "72."
    (a sentence-ending period swallowed by the regex) equal "72"; no rounding tolerance, so 72.01 != 72."""
    if pred is None or ref is None:
        return False
    try:
        return Decimal(pred.rstrip(".")) == Decimal(ref.rstrip("."))
    except InvalidOperation:
        return pred == ref


def last_text(conversation: dict) -> str:
    """Text of the last assistant message's final part (where tasks put `#### N`)."""
    msg = conversation["messages"][-1]
    content = msg["content"]
    return content if isinstance(content, str) else content[-1]["text"]


def seeded_rng(seed: int, index: int) -> random.Random:
    """Per-example generator for synthetic tasks: example i is the same on every rank, epoch and run."""
    return random.Random(seed * 1_000_003 + index)
