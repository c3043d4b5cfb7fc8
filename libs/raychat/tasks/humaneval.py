"""HumanEval (openai/human-eval): 164 Python functions to complete, graded by running their unit tests.

The user turn is the prompt (signature + docstring); the reference assistant turn is prompt + canonical body.
Grading runs `imports of the prompt + the completion's code` in the sandbox (`raychat.tools.execution`) and the
task's `check(candidate)` outside it, calling the solution through the sandbox; `check` returning within the time
limit = pass. The completion's code is the first ```python fenced block if there is one, else the whole completion
(chat models usually answer in a fence).
"""

from __future__ import annotations

import re
from pathlib import Path

from raychat.data.registry import resolve
from raychat.tasks.common import Task, read_records
from raychat.tools.execution import check_solution

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)\n```", re.DOTALL)


def extract_imports(prompt: str) -> str:
    """The leading import lines of a prompt (completions often restate the function without them)."""
    lines = []
    for line in prompt.splitlines():
        s = line.strip()
        if s.startswith(("import ", "from ")):
            lines.append(s)
        elif s and not s.startswith("#"):
            break
    return "\n".join(lines)


def extract_program(completion: str) -> str:
    m = _FENCE.search(completion)
    return (m.group(1) if m else completion).strip("\n")


def build_solution(conversation: dict, completion: str) -> str:
    """The untrusted part: the prompt's imports and the completion's code."""
    return f"{extract_imports(conversation['messages'][0]['content'])}\n\n{extract_program(completion)}\n"


class HumanEval(Task):
    eval_type = "generative"

    def __init__(self, data_dir=None, timeout: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        # data_dir: a folder holding HumanEval.jsonl.gz (openai/human-eval's file); default: the data registry
        # (openai/openai_humaneval, same fields)
        self.rows = read_records(Path(data_dir) / "HumanEval.jsonl.gz" if data_dir else resolve("humaneval", "test"))
        self.timeout = timeout

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        r = self.rows[index]
        return {"messages": [{"role": "user", "content": r["prompt"]},
                             {"role": "assistant", "content": f"{r['prompt']}\n{r['canonical_solution']}"}],
                "task_id": r["task_id"], "entry_point": r["entry_point"], "test": r["test"]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        # the prompt is trusted setup for the check (helpers such as encode_cyclic that the test calls)
        return check_solution(build_solution(conversation, completion), conversation["test"],
                              conversation["entry_point"], setup=conversation["messages"][0]["content"],
                              timeout=self.timeout).success
