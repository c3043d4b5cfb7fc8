"""Conversations from a JSONL file: one `{"messages": [...]}` per line (the shared SFT files, or the user's own
file passed with one flag, e.g. `raychat sft --extra-jsonl my_convs.jsonl`).

The whole file is validated when the task is built, so a bad line fails fast with `file:line: reason` instead of
crashing a training job hours later.
"""

from __future__ import annotations

import json
from pathlib import Path

from raychat.common import RaychatError
from raychat.tasks.common import Task

_ROLES = {"system", "user", "assistant"}
_PART_TYPES = {"text", "python", "python_output"}


def validate_conversation(conv, where: str = "conversation") -> None:
    """Raise RaychatError unless `conv` follows the contract: messages alternate user/assistant (an optional
    system message first), every content is a string or (assistant only) a list of typed parts."""
    if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list) or not conv["messages"]:
        raise RaychatError(f"{where}: expected an object with a non-empty 'messages' list")
    msgs = conv["messages"]
    start = 1 if msgs[0].get("role") == "system" else 0
    if start == 1 and len(msgs) == 1:
        raise RaychatError(f"{where}: a system message must be followed by a user message")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise RaychatError(f"{where}: message {i} needs a role in {sorted(_ROLES)}")
        if i >= start:
            expected = "user" if (i - start) % 2 == 0 else "assistant"
            if m["role"] != expected:
                raise RaychatError(f"{where}: message {i} should be {expected!r} (roles alternate), got {m['role']!r}")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if m["role"] == "assistant" and isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") in _PART_TYPES and isinstance(p.get("text"), str)
                for p in content):
            continue
        raise RaychatError(f"{where}: message {i} content must be a string"
                           + (" or a list of {type, text} parts" if m["role"] == "assistant" else ""))


class ChatJsonl(Task):
    """A JSONL file of conversations, loaded into memory (the shared files are 1-3 MB)."""

    def __init__(self, path, **kwargs):
        super().__init__(**kwargs)
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise RaychatError(f"conversation file not found: {self.path}")
        self.conversations = []
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    conv = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RaychatError(f"{self.path}:{lineno}: invalid JSON ({e.msg})") from None
                validate_conversation(conv, f"{self.path}:{lineno}")
                self.conversations.append(conv)
        if not self.conversations:
            raise RaychatError(f"{self.path}: no conversations in file")

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return self.conversations[index]
