"""Conversations from files: a JSONL file with one `{"messages": [...]}` per line (the user's own file passed with
one flag, e.g. `raychat sft --extra-jsonl my_convs.jsonl`), and SmolTalk, nanochat's SFT conversations.

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


class SmolTalk(Task):
    """HuggingFaceTB/smol-smoltalk (nanochat's general SFT conversations: 460K train, 24K test rows with a
    `messages` column), through the data registry. Rows the chat template cannot render (e.g. an empty turn) are
    dropped and counted in `num_dropped`, so one odd row of 460K does not stop an SFT run.

    Without a download, the development default is ../shared/data/chat: small single-turn JSONL files standing
    in for SmolTalk (train split only; `include_noncommercial=False` leaves out the CC BY-NC ones)."""

    NONCOMMERCIAL = ("alpaca_5000.jsonl", "code_alpaca_2k.jsonl")

    def __init__(self, split: str = "train", include_noncommercial: bool = True, **kwargs):
        from raychat.data.registry import split_files
        from raychat.tasks.common import read_records

        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise RaychatError(f"SmolTalk split must be train or test, got {split!r}")
        paths = split_files("smoltalk", split)
        path = paths[0]
        if path.is_dir():   # the development stand-ins: validated strictly, like any user file
            files = sorted(p for p in path.glob("*.jsonl") if include_noncommercial or p.name not in self.NONCOMMERCIAL)
            if not files:
                raise RaychatError(f"no conversation files (*.jsonl) in {path}")
            self.conversations = [c for f in files for c in ChatJsonl(f).conversations]
            self.num_dropped = 0
            return
        self.conversations, self.num_dropped = [], 0
        for row in (r for p in paths for r in read_records(p)):
            msgs = row.get("messages") or []
            conv = {"messages": [{"role": m.get("role"), "content": m.get("content")} for m in msgs]}
            try:
                validate_conversation(conv)
            except RaychatError:
                self.num_dropped += 1
                continue
            self.conversations.append(conv)
        if not self.conversations:
            raise RaychatError(f"{path}: no usable conversations")

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return self.conversations[index]
