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
from raychat.tokenizer.chat import ConversationError, validate_messages


def validate_conversation(conv, where: str = "conversation") -> None:
    """Raise RaychatError unless `conv` renders with the chat template (the tokenizer's rules are the only ones:
    roles alternate user/assistant after an optional system message, non-empty contents, typed assistant parts)."""
    if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
        raise RaychatError(f"{where}: expected an object with a 'messages' list")
    try:
        validate_messages(conv)
    except ConversationError as e:
        raise RaychatError(f"{where}: {e}") from None


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
