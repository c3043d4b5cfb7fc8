"""GSM8K grade-school math (openai/grade-school-math), with its calculator annotations turned into tool calls.

A solution line such as `Natalia sold 48/2 = <<48/2=24>>24 clips in May.` becomes the assistant parts
  text "Natalia sold 48/2 = ", python "48/2", python_output "24", text "24 clips in May."
which the tokenizer renders as `...= <|python_start|>48/2<|python_end|><|output_start|>24<|output_end|>24 clips...`.
At inference the engine runs the calculator when the model closes `<|python_end|>` and forces the output tokens,
so the model learns to delegate arithmetic. Every one of the 23,716 annotations in train.jsonl evaluates to its
recorded result with `raychat.tools.calculator` (checked in tests).

Data: openai/gsm8k `main` (question, answer), through the data registry (`raychat data download gsm8k`).

Grading: the number after `#### ` in the completion must equal the reference's (commas ignored).
"""

from __future__ import annotations

import re
from pathlib import Path

from raychat.common import RaychatError
from raychat.data.registry import resolve
from raychat.tasks.common import Task, extract_answer, last_text, read_records, same_number

_CALC = re.compile(r"(<<[^>]*>>)")


def answer_to_parts(answer: str) -> list[dict]:
    """Split a GSM8K worked solution into text / python / python_output parts (empty text parts dropped)."""
    parts = []
    for piece in _CALC.split(answer):
        if piece.startswith("<<") and piece.endswith(">>"):
            expr, sep, result = piece[2:-2].rpartition("=")
            if not sep:                    # no '=' inside: a call without a recorded result
                expr, result = result, ""
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


class GSM8K(Task):
    eval_type = "generative"

    def __init__(self, split: str = "train", data_dir=None, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise RaychatError(f"GSM8K split must be train or test, got {split!r}")
        # data_dir: a folder in the shared layout (train.jsonl, test.jsonl); default: the data registry
        path = Path(data_dir) / f"{split}.jsonl" if data_dir else resolve("gsm8k", split)
        self.rows = read_records(path)
        self.split = split

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": answer_to_parts(row["answer"])}]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return same_number(extract_answer(completion), extract_answer(last_text(conversation)))
