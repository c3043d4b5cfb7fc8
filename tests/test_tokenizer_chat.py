"""Chat template: exact ids and loss masks for a multi-turn conversation with a tool call, system merge,
truncation, completion prompts, and readable errors for malformed conversations."""

import pytest

from raychat.common import RaychatError
from raychat.tokenizer import ConversationError, Tokenizer

TOK = Tokenizer.byte_level()
S = TOK.special_id


def E(text):  # noqa: N802 - short helper: encode
    return TOK.encode(text)


CONV = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12*7?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me compute. "},
        {"type": "python", "text": "12*7"},
        {"type": "python_output", "text": "84"},
        {"type": "text", "text": "It is 84."},
    ]},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]}


def expected():
    """The template written out by hand: (ids, mask) pieces."""
    pieces = [
        ([TOK.bos_id], 0),
        ([S("<|user_start|>")], 0), (E("Be brief.\n\nWhat is 12*7?"), 0), ([S("<|user_end|>")], 0),
        ([S("<|assistant_start|>")], 0),
        (E("Let me compute. "), 1),
        ([S("<|python_start|>")], 1), (E("12*7"), 1), ([S("<|python_end|>")], 1),
        ([S("<|output_start|>")], 0), (E("84"), 0), ([S("<|output_end|>")], 0),
        (E("It is 84."), 1),
        ([S("<|assistant_end|>")], 1),
        ([S("<|user_start|>")], 0), (E("Thanks!"), 0), ([S("<|user_end|>")], 0),
        ([S("<|assistant_start|>")], 0), (E("You're welcome."), 1), ([S("<|assistant_end|>")], 1),
    ]
    ids = [i for p, _ in pieces for i in p]
    mask = [m for p, m in pieces for _ in p]
    return ids, mask


def test_multi_turn_with_tool_call_exact_ids_and_mask():
    ids, mask = TOK.render_conversation(CONV)
    exp_ids, exp_mask = expected()
    assert ids == exp_ids
    assert mask == exp_mask
    # the trained tokens are exactly: assistant text, the tool call with its delimiters, <|assistant_end|>
    trained = TOK.decode([i for i, m in zip(ids, mask) if m])
    assert trained == ("Let me compute. <|python_start|>12*7<|python_end|>It is 84.<|assistant_end|>"
                       "You're welcome.<|assistant_end|>")
    assert CONV["messages"][0]["role"] == "system"  # input not mutated


def test_truncation_keeps_the_start():
    ids, mask = TOK.render_conversation(CONV, max_tokens=10)
    full_ids, full_mask = TOK.render_conversation(CONV)
    assert ids == full_ids[:10] and mask == full_mask[:10] and len(ids) == 10


def test_render_for_completion():
    prompt = {"messages": [{"role": "user", "content": "Hi"}]}
    ids = TOK.render_for_completion(prompt)
    assert ids == [TOK.bos_id, S("<|user_start|>"), *E("Hi"), S("<|user_end|>"), S("<|assistant_start|>")]
    # a trailing assistant message (an eval item with its reference answer) is dropped
    with_answer = {"messages": [*prompt["messages"], {"role": "assistant", "content": "Hello"}]}
    assert TOK.render_for_completion(with_answer) == ids
    # multi-turn: the prompt is the rendered conversation so far + <|assistant_start|>
    ids2 = TOK.render_for_completion(CONV["messages"][:4])
    full, _ = TOK.render_conversation(CONV)
    assert ids2 == full[:len(ids2)] and ids2[-1] == S("<|assistant_start|>")


def test_openai_style_user_parts_and_empty_system():
    a, _ = TOK.render_conversation([{"role": "system", "content": ""},
                                    {"role": "user", "content": [{"type": "text", "text": "He"},
                                                                 {"type": "text", "text": "llo"}]},
                                    {"role": "assistant", "content": "x"}])
    b, _ = TOK.render_conversation([{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "x"}])
    assert a == b


@pytest.mark.parametrize("messages, match", [
    ([{"role": "assistant", "content": "hi"}], "message 0: expected role 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1: expected role 'assistant'"),
    ([{"role": "user", "content": ""}], "message 0: empty content"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": []}], "message 1: empty content"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
     "unknown part type 'image'"),
    ([{"role": "user", "content": [{"type": "python", "text": "1+1"}]}], "only allowed in assistant"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "only allowed first"),
    ([{"role": "tool", "content": "a"}], "unknown role 'tool'"),
    ([{"role": "user"}], "expected {'role'"),
    ([{"role": "user", "content": 5}], "must be a string or a list"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text"}]}], "part 0"),
    ([], "no user message"),
    ([{"role": "system", "content": "only a system prompt"}], "no user message"),
])
def test_malformed_conversations_are_refused(messages, match):
    with pytest.raises(ConversationError, match=match) as info:
        TOK.render_conversation({"messages": messages})
    assert isinstance(info.value, RaychatError) and isinstance(info.value, ValueError)
    with pytest.raises(ConversationError):
        TOK.render_for_completion({"messages": messages})


def test_not_a_conversation():
    with pytest.raises(ConversationError, match="conversation must be"):
        TOK.render_conversation({"msgs": []})
