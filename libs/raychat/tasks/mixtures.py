"""Named tasks and the default mixtures the training jobs and chat evals use (one place to change them).

- `eval_task(name)`: the chat-eval tasks by the names reports use (ARC-Easy, ARC-Challenge, MMLU, GSM8K,
  HumanEval, SpellingBee, SimpleArithmetic), test splits.
- `sft_mixture(...)`: the SFT data: the shared chat files, GSM8K train with tool calls, MMLU dev+val as chat,
  synthetic spelling/counting/identity, plus any user JSONL files (`extra_jsonl`, the CLI's one flag).
- `rl_task(name)`: a task with a checker for GRPO (GSM8K train by default; SimpleArithmetic for CPU smoke runs).

Licence note: alpaca_5000 and code_alpaca_2k are CC BY-NC 4.0 (see shared/data/SOURCES.md);
`include_noncommercial=False` leaves them out.
"""

from __future__ import annotations

from pathlib import Path

from raychat.common import RaychatError, require_shared_data, shared_data_dir
from raychat.tasks.chat_jsonl import ChatJsonl
from raychat.tasks.common import Task, TaskMixture
from raychat.tasks.gsm8k import GSM8K
from raychat.tasks.humaneval import HumanEval
from raychat.tasks.multiple_choice import ARC, MMLU
from raychat.tasks.synthetic import Identity, SimpleArithmetic, SimpleSpelling, SpellingBee

EVAL_TASK_NAMES = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "SimpleArithmetic")


def _tasks_dir(data_dir) -> Path:
    return Path(data_dir) if data_dir else require_shared_data("tasks")


def eval_task(name: str, data_dir=None) -> Task:
    """A chat-eval task by name. `data_dir` is the folder holding gsm8k/, mmlu/, arc/, humaneval/."""
    if name in ("ARC-Easy", "ARC-Challenge"):
        return ARC(name, "test", data_dir=_tasks_dir(data_dir) / "arc")
    if name == "MMLU":
        return MMLU("test", data_dir=_tasks_dir(data_dir) / "mmlu")
    if name == "GSM8K":
        return GSM8K("test", data_dir=_tasks_dir(data_dir) / "gsm8k")
    if name == "HumanEval":
        return HumanEval(data_dir=_tasks_dir(data_dir) / "humaneval")
    if name == "SpellingBee":
        return SpellingBee(size=256, split="test")
    if name == "SimpleArithmetic":
        return SimpleArithmetic(size=256, split="test")
    raise RaychatError(f"unknown eval task {name!r}; choose from {', '.join(EVAL_TASK_NAMES)}")


def sft_mixture(data_dir=None, extra_jsonl=(), extra_weight: float = 1.0, seed: int = 42,
                include_noncommercial: bool = True, synthetic_size: int = 2000) -> TaskMixture:
    """The default SFT mixture. `data_dir` is the shared data root (holding chat/ and tasks/); user files in
    `extra_jsonl` join with `extra_weight` epochs each."""
    root = Path(data_dir) if data_dir else shared_data_dir()
    if root is None:
        raise RaychatError("no SFT data: ../shared/data not found (set RAYCHAT_SHARED_DATA or pass a data dir)")
    chat_files = ["gpteacher_codegen.jsonl"]
    if include_noncommercial:
        chat_files += ["alpaca_5000.jsonl", "code_alpaca_2k.jsonl"]
    tasks: list[Task] = [ChatJsonl(root / "chat" / f) for f in chat_files]
    weights = [1.0] * len(tasks)
    tasks += [GSM8K("train", data_dir=root / "tasks" / "gsm8k"),
              MMLU("dev", data_dir=root / "tasks" / "mmlu"), MMLU("val", data_dir=root / "tasks" / "mmlu"),
              SpellingBee(size=synthetic_size), SimpleSpelling(size=synthetic_size),
              Identity(size=max(1, synthetic_size // 4))]
    weights += [1.0, 1.0, 1.0, 1.0, 1.0, 2.0]   # identity twice: it is short and the name must stick
    for path in extra_jsonl:
        tasks.append(ChatJsonl(path))
        weights.append(extra_weight)
    return TaskMixture(tasks, weights=weights, seed=seed)


def rl_task(name: str = "GSM8K", data_dir=None, **kwargs) -> Task:
    """A train-split task with a checker, for GRPO."""
    if name == "GSM8K":
        return GSM8K("train", data_dir=_tasks_dir(data_dir) / "gsm8k", **kwargs)
    if name == "SimpleArithmetic":
        return SimpleArithmetic(split="train", **kwargs)
    if name == "SpellingBee":
        return SpellingBee(split="train", **kwargs)
    raise RaychatError(f"unknown RL task {name!r}; choose from GSM8K, SimpleArithmetic, SpellingBee")
