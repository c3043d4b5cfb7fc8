"""Named tasks and the default mixtures the training jobs and chat evals use (one place to change them).

- `eval_task(name)`: the chat-eval tasks by the names reports use (ARC-Easy, ARC-Challenge, MMLU, GSM8K,
  HumanEval, SpellingBee, SimpleArithmetic), test splits.
- `sft_mixture(...)`: the SFT data: SmolTalk conversations, MMLU auxiliary_train as chat, GSM8K train with tool
  calls, synthetic spelling/counting/identity, plus any user JSONL files (`extra_jsonl`, the CLI's one flag).
  Every part comes through the data registry (`raychat data download smoltalk mmlu gsm8k`); without downloads the
  development stand-ins are the shared chat files for SmolTalk and MMLU dev+validation for auxiliary_train.
- `rl_task(name)`: a task with a checker for GRPO (GSM8K train by default; SimpleArithmetic for CPU smoke runs).
- `data_needs(...)`: which registry datasets and splits those read, for the stages' preflight checks.

Licence note: the shared stand-ins alpaca_5000 and code_alpaca_2k are CC BY-NC 4.0 (see shared/data/SOURCES.md);
`include_noncommercial=False` leaves them out.
"""

from __future__ import annotations

from pathlib import Path

from raychat.common import RaychatError
from raychat.data.registry import local_path
from raychat.tasks.chat_jsonl import ChatJsonl, SmolTalk
from raychat.tasks.common import Task, TaskMixture
from raychat.tasks.gsm8k import GSM8K
from raychat.tasks.humaneval import HumanEval
from raychat.tasks.multiple_choice import ARC, MMLU
from raychat.tasks.synthetic import Identity, SimpleArithmetic, SimpleSpelling, SpellingBee

EVAL_TASK_NAMES = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "SimpleArithmetic")


def _sub(data_dir, name: str) -> Path | None:
    """`data_dir/name` for a folder in the shared layout (tasks/gsm8k, ...); None = the data registry."""
    return Path(data_dir) / name if data_dir else None


# (dataset, split) each chat-eval task reads from the data registry (split None: the dataset's one file)
EVAL_TASK_DATA = {"ARC-Easy": ("arc", "ARC-Easy/test"), "ARC-Challenge": ("arc", "ARC-Challenge/test"),
                  "MMLU": ("mmlu", "test"), "GSM8K": ("gsm8k", "test"), "HumanEval": ("humaneval", "test"),
                  "SpellingBee": ("words", None)}


def _mmlu_sft_splits() -> list[str]:
    """MMLU in the SFT mixture: auxiliary_train once downloaded, else the development stand-ins dev + validation
    (asking for those when neither is here names `raychat data download mmlu`, which brings auxiliary_train)."""
    return ["auxiliary_train"] if local_path("mmlu", "auxiliary_train") is not None else ["dev", "validation"]


def data_needs(sft_parts=(), eval_tasks=(), rl_tasks=()) -> list[tuple[str, str | None]]:
    """The (dataset, split) pairs read from the data registry by these SFT mixture parts (`default`, task
    names), chat-eval tasks and RL tasks: what a stage's preflight hands to `registry.require`."""
    need: list[tuple[str, str | None]] = []
    for part in sft_parts:
        if part == "default":
            need += [("smoltalk", "train"), *(("mmlu", s) for s in _mmlu_sft_splits()), ("gsm8k", "train"),
                     ("words", None)]
        elif part == "GSM8K":
            need.append(("gsm8k", "train"))
        elif part in ("SpellingBee", "SimpleSpelling"):
            need.append(("words", None))
    need += [EVAL_TASK_DATA[t] for t in eval_tasks if t in EVAL_TASK_DATA]
    for task in rl_tasks:
        need += [("gsm8k", "train"), ("gsm8k", "test")] if task == "GSM8K" else \
            [("words", None)] if task == "SpellingBee" else []
    return need


def eval_task(name: str, data_dir=None) -> Task:
    """A chat-eval task by name. `data_dir`: a folder in the shared layout holding gsm8k/, mmlu/, arc/,
    humaneval/; None = the data registry."""
    if name in ("ARC-Easy", "ARC-Challenge"):
        return ARC(name, "test", data_dir=_sub(data_dir, "arc"))
    if name == "MMLU":
        return MMLU("test", data_dir=_sub(data_dir, "mmlu"))
    if name == "GSM8K":
        return GSM8K("test", data_dir=_sub(data_dir, "gsm8k"))
    if name == "HumanEval":
        return HumanEval(data_dir=_sub(data_dir, "humaneval"))
    if name == "SpellingBee":
        return SpellingBee(size=256, split="test")
    if name == "SimpleArithmetic":
        return SimpleArithmetic(size=256, split="test")
    raise RaychatError(f"unknown eval task {name!r}; choose from {', '.join(EVAL_TASK_NAMES)}")


def sft_mixture(data_dir=None, extra_jsonl=(), extra_weight: float = 1.0, seed: int = 42,
                include_noncommercial: bool = True, synthetic_size: int = 2000) -> TaskMixture:
    """The default SFT mixture. `data_dir`: a root in the shared layout (chat/ and tasks/) to read instead of the
    data registry; user files in `extra_jsonl` join with `extra_weight` epochs each."""
    if data_dir:
        root = Path(data_dir)
        chat_files = ["gpteacher_codegen.jsonl"] + (list(SmolTalk.NONCOMMERCIAL) if include_noncommercial else [])
        tasks: list[Task] = [ChatJsonl(root / "chat" / f) for f in chat_files]
        mmlu = [MMLU("dev", data_dir=root / "tasks" / "mmlu"), MMLU("val", data_dir=root / "tasks" / "mmlu")]
        gsm = GSM8K("train", data_dir=root / "tasks" / "gsm8k")
    else:
        tasks = [SmolTalk("train", include_noncommercial=include_noncommercial)]
        mmlu = [MMLU(split) for split in _mmlu_sft_splits()]
        gsm = GSM8K("train")
    weights = [1.0] * len(tasks)
    tasks += [gsm, *mmlu, SpellingBee(size=synthetic_size), SimpleSpelling(size=synthetic_size),
              Identity(size=max(1, synthetic_size // 4))]
    weights += [1.0] * (1 + len(mmlu)) + [1.0, 1.0, 2.0]   # identity twice: it is short and the name must stick
    for path in extra_jsonl:
        tasks.append(ChatJsonl(path))
        weights.append(extra_weight)
    return TaskMixture(tasks, weights=weights, seed=seed)


def rl_task(name: str = "GSM8K", data_dir=None, **kwargs) -> Task:
    """A train-split task with a checker, for GRPO."""
    if name == "GSM8K":
        return GSM8K("train", data_dir=_sub(data_dir, "gsm8k"), **kwargs)
    if name == "SimpleArithmetic":
        return SimpleArithmetic(split="train", **kwargs)
    if name == "SpellingBee":
        return SpellingBee(split="train", **kwargs)
    raise RaychatError(f"unknown RL task {name!r}; choose from GSM8K, SimpleArithmetic, SpellingBee")
