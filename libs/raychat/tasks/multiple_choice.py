"""MMLU and ARC as multiple-choice chat: the user turn lists the choices each followed by its letter, the
assistant answers with the letter alone (see `render_mc`). The chat eval reads `conversation["letters"]` and
compares the model's logits over those letters only, so a model is graded on knowledge, not on formatting.

Data (through the data registry: `raychat data download mmlu arc`): cais/mmlu `all` (`question, subject, choices,
answer: int`; splits auxiliary_train, dev, validation, test) and allenai/ai2_arc (`question, choices: {text, label},
answerKey`; ARC-Easy/ARC-Challenge, train/validation/test). The shared development copies (../shared/data/tasks) have
the same fields; they lack MMLU auxiliary_train and ARC train/validation.
"""

from __future__ import annotations

from pathlib import Path

from raychat.common import RaychatError
from raychat.data.registry import resolve
from raychat.tasks.common import LETTERS, Task, read_records, render_mc


class MultipleChoiceTask(Task):
    """Rows normalised to (question, choices, letters, gold letter, extra fields)."""

    eval_type = "categorical"

    def __init__(self, rows: list[tuple[str, list[str], list[str], str, dict]], **kwargs):
        super().__init__(**kwargs)
        self.rows = rows

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        question, choices, letters, gold, extra = self.rows[index]
        return {"messages": [{"role": "user", "content": render_mc(question, letters, choices)},
                             {"role": "assistant", "content": gold}],
                "letters": list(letters), **extra}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        """For a letter (categorical eval) or a sampled reply: exactly the gold letter, surrounding space ignored."""
        return completion.strip() == conversation["messages"][-1]["content"]


class MMLU(MultipleChoiceTask):
    SPLITS = ("auxiliary_train", "dev", "validation", "test")

    def __init__(self, split: str = "test", data_dir=None, subjects: list[str] | None = None, **kwargs):
        split = "validation" if split == "val" else split
        if split not in self.SPLITS:
            raise RaychatError(f"MMLU split must be one of {', '.join(self.SPLITS)}, got {split!r}")
        # data_dir: a folder in the shared layout (dev.jsonl, val.jsonl, test.jsonl); default: the data registry
        shared_name = {"validation": "val"}.get(split, split)
        path = Path(data_dir) / f"{shared_name}.jsonl" if data_dir else resolve("mmlu", split)
        rows = []
        for r in read_records(path):
            if subjects is None or r["subject"] in subjects:
                letters = list(LETTERS[: len(r["choices"])])
                rows.append((r["question"], r["choices"], letters, letters[r["answer"]], {"subject": r["subject"]}))
        super().__init__(rows, **kwargs)


class ARC(MultipleChoiceTask):
    def __init__(self, subset: str = "ARC-Easy", split: str = "test", data_dir=None, **kwargs):
        if subset not in ("ARC-Easy", "ARC-Challenge"):
            raise RaychatError(f"ARC subset must be ARC-Easy or ARC-Challenge, got {subset!r}")
        if split not in ("train", "validation", "test"):
            raise RaychatError(f"ARC split must be train, validation or test, got {split!r}")
        # data_dir: a folder in the shared layout (ARC-Easy_test.jsonl, ...); default: the data registry
        path = Path(data_dir) / f"{subset}_{split}.jsonl" if data_dir else resolve("arc", f"{subset}/{split}")
        rows = []
        for r in read_records(path):
            labels = r["choices"]["label"]
            if r["answerKey"] not in labels:
                raise RaychatError(f"{subset}: answerKey {r['answerKey']!r} not among labels {labels}")
            rows.append((r["question"], r["choices"]["text"], labels, r["answerKey"], {}))
        super().__init__(rows, **kwargs)
