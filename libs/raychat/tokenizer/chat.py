"""Chat template: a conversation -> token ids + a loss mask (1 = a token the model must learn to produce).

    <|bos|> <|user_start|> u1 <|user_end|> <|assistant_start|> a1 <|assistant_end|> <|user_start|> u2 ...

Assistant content is a string or a list of parts:
    {"type": "text", "text": ...}                                   trained (mask 1)
    {"type": "python", "text": "2+3"}   -> <|python_start|>2+3<|python_end|>      trained: the model calls the tool
    {"type": "python_output", "text": "5"} -> <|output_start|>5<|output_end|>     not trained: the engine inserts it
<|assistant_end|> is trained (the model must learn to stop); <|assistant_start|> is not (the prompt supplies it).
A leading system message is merged into the first user message ("system\\n\\nuser"), as nanochat does: the
template has no system slot, and the model sees instructions where it already looks for them.

Malformed conversations raise `ConversationError` (a RaychatError and a ValueError) naming the message and the
problem, so a data file with one bad row, or an API request with a bad role, fails with a readable reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raychat.common import RaychatError

if TYPE_CHECKING:
    from raychat.tokenizer.bpe import Tokenizer

PART_TYPES = ("text", "python", "python_output")


class ConversationError(RaychatError, ValueError):
    """A conversation that does not follow the template's rules."""


def _text_of(content: Any, where: str, allow_parts: bool) -> str | list[dict]:
    """Validate one message's content; returns the string or the (validated) list of parts."""
    if isinstance(content, str):
        if not content:
            raise ConversationError(f"{where}: empty content")
        return content
    if isinstance(content, list):
        if not content:
            raise ConversationError(f"{where}: empty content (no parts)")
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise ConversationError(f"{where}, part {j}: expected {{'type': ..., 'text': str}}, got {part!r:.80}")
            ptype = part.get("type", "text")
            if ptype not in PART_TYPES:
                raise ConversationError(f"{where}, part {j}: unknown part type {ptype!r}; "
                                        f"expected one of {', '.join(PART_TYPES)}")
            if not allow_parts and ptype != "text":
                raise ConversationError(f"{where}, part {j}: part type {ptype!r} is only allowed in assistant "
                                        "messages")
        if not allow_parts:  # user/system: a list of text parts (OpenAI style) is just their concatenation
            text = "".join(p["text"] for p in content)
            if not text:
                raise ConversationError(f"{where}: empty content")
            return text
        return content
    raise ConversationError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")


def validate_messages(conversation: Any) -> list[tuple[str, str | list[dict]]]:
    """Check a conversation and return [(role, content)], system merged into the first user message.

    Accepts {"messages": [...]} or the bare list. Roles must alternate user, assistant, user, ... after an
    optional leading system message (an empty system message is dropped).
    """
    messages = conversation.get("messages") if isinstance(conversation, dict) else conversation
    if not isinstance(messages, list):
        raise ConversationError("conversation must be {'messages': [...]} or a list of messages")
    out: list[tuple[str, str | list[dict]]] = []
    system = None
    for i, msg in enumerate(messages):
        where = f"message {i}"
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ConversationError(f"{where}: expected {{'role': ..., 'content': ...}}, got {msg!r:.80}")
        role = msg["role"]
        if role == "system":
            if i != 0:
                raise ConversationError(f"{where}: a system message is only allowed first")
            if msg["content"] not in ("", []):
                system = _text_of(msg["content"], where, allow_parts=False)
            continue
        expected = "user" if len(out) % 2 == 0 else "assistant"
        if role not in ("user", "assistant"):
            raise ConversationError(f"{where}: unknown role {role!r}; expected system, user or assistant")
        if role != expected:
            raise ConversationError(f"{where}: expected role {expected!r} (roles alternate user/assistant, "
                                    f"starting with user), got {role!r}")
        content = _text_of(msg["content"], where, allow_parts=role == "assistant")
        if system is not None:
            content, system = system + "\n\n" + content, None
        out.append((role, content))
    if not out:
        raise ConversationError("conversation has no user message")
    return out


def _render(tok: Tokenizer, messages: list[tuple[str, str | list[dict]]]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    mask: list[int] = []
    sp = tok.special_id

    def add(tokens: int | list[int], m: int) -> None:
        tokens = [tokens] if isinstance(tokens, int) else tokens
        ids.extend(tokens)
        mask.extend([m] * len(tokens))

    add(tok.bos_id, 0)
    for role, content in messages:
        if role == "user":
            add(sp("<|user_start|>"), 0)
            add(tok.encode(content), 0)
            add(sp("<|user_end|>"), 0)
            continue
        add(sp("<|assistant_start|>"), 0)
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            ptype, value = part.get("type", "text"), tok.encode(part["text"])
            if ptype == "text":
                add(value, 1)
            elif ptype == "python":
                add(sp("<|python_start|>"), 1)
                add(value, 1)
                add(sp("<|python_end|>"), 1)
            else:  # python_output: comes from the tool at inference time, so it is context, not a target
                add(sp("<|output_start|>"), 0)
                add(value, 0)
                add(sp("<|output_end|>"), 0)
        add(sp("<|assistant_end|>"), 1)
    return ids, mask


def render_conversation(tok: Tokenizer, conversation: Any, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
    """-> (ids, mask), both truncated to `max_tokens` (long conversations lose their end, never their start)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    ids, mask = _render(tok, validate_messages(conversation))
    return ids[:max_tokens], mask[:max_tokens]


def render_for_completion(tok: Tokenizer, conversation: Any) -> list[int]:
    """Prompt ids ending with <|assistant_start|>, for generation.

    The conversation should end with a user message. If it ends with an assistant message (an RL/eval item
    that carries its reference answer) that message is dropped first, as nanochat does.
    """
    messages = validate_messages(conversation)
    if messages[-1][0] == "assistant":
        messages = messages[:-1]
    ids, _ = _render(tok, messages)
    ids.append(tok.special_id("<|assistant_start|>"))
    return ids
