"""MMLU and ARC as multiple-choice chat: the user turn lists the choices each followed by its letter, the
assistant answers with the letter alone (see `render_mc`). The chat eval reads `conversation["letters"]` and
compares the model's logits over those letters only, so a model is graded on knowledge, not on formatting.

Files (../shared/data/tasks, see SOURCES.md): mmlu/{dev,val,test}.jsonl in the cais/mmlu layout
(`question, subject, choices, answer: int`) and arc/ARC-{Easy,Challenge}_test.jsonl in the allenai/ai2_arc layout
(`question, choices: {text, label}, answerKey`). Only ARC test splits exist here, so ARC is eval-only.
"""

from __future__ import annotations

import json
from pathlib import Path

from raychat.common import RaychatError, require_shared_data
from raychat.tasks.common import LETTERS, Task, render_mc


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise RaychatError(f"task file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


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
    def __init__(self, split: str = "test", data_dir=None, subjects: list[str] | None = None, **kwargs):
        if split not in ("dev", "val", "test"):
            raise RaychatError(f"MMLU split must be dev, val or test, got {split!r}")
        base = Path(data_dir) if data_dir else require_shared_data("tasks/mmlu")
        rows = []
        for r in _read_jsonl(base / f"{split}.jsonl"):
            if subjects is None or r["subject"] in subjects:
                letters = list(LETTERS[: len(r["choices"])])
                rows.append((r["question"], r["choices"], letters, letters[r["answer"]], {"subject": r["subject"]}))
        super().__init__(rows, **kwargs)


class ARC(MultipleChoiceTask):
    def __init__(self, subset: str = "ARC-Easy", split: str = "test", data_dir=None, **kwargs):
        if subset not in ("ARC-Easy", "ARC-Challenge"):
            raise RaychatError(f"ARC subset must be ARC-Easy or ARC-Challenge, got {subset!r}")
        base = Path(data_dir) if data_dir else require_shared_data("tasks/arc")
        rows = []
        for r in _read_jsonl(base / f"{subset}_{split}.jsonl"):
            labels = r["choices"]["label"]
            if r["answerKey"] not in labels:
                raise RaychatError(f"{subset}: answerKey {r['answerKey']!r} not among labels {labels}")
            rows.append((r["question"], r["choices"]["text"], labels, r["answerKey"], {}))
        super().__init__(rows, **kwargs)
