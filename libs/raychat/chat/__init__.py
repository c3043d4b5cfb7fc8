"""The chat layer above the engine: conversations -> prompt ids, token events -> text deltas, stop strings,
tool-call display and reply timing. The engine works on token ids only; everything text-shaped lives here,
and one pipeline (`Reply`, driven by `stream_reply`) serves the terminal chat, the evals and the Serve replica.

    prompt = render_chat_prompt(tokenizer, messages)                 # ends with <|assistant_start|>
    for d in stream_reply(tokenizer, engine_events(engine, prompt, params), len(prompt)):   # sync engine
        d.type in ("token", "tool_call", "tool_result", "done")      # the WebSocket message types
    reply = Reply(tokenizer, len(prompt), stop=["\\n\\n"])            # push-style, for an async engine stream
    deltas = reply.feed(event) ...; deltas = reply.finish()

All of it lives in reply.py: prompts and sampling settings, UTF-8-safe assembly of deltas and tool segments,
the inline tool display, stop strings, timing and the pipeline.
"""

from raychat.chat.reply import (
    MIN_TEMPERATURE,
    ChatDelta,
    Reply,
    ReplyAssembler,
    ReplyTimer,
    StopMatcher,
    completion_events,
    display_text,
    effective_temperature,
    engine_events,
    render_chat_prompt,
    render_text_prompt,
    sampling_params,
    stream_reply,
    tool_text,
)

__all__ = ["MIN_TEMPERATURE", "ChatDelta", "Reply", "ReplyAssembler", "ReplyTimer", "StopMatcher",
           "completion_events", "display_text", "effective_temperature", "engine_events", "render_chat_prompt",
           "render_text_prompt", "sampling_params", "stream_reply", "tool_text"]
