"""What goes into the engine and how tool use is shown: prompt rendering, sampling settings, tool display.

Temperature floor: logits / 1e-300 overflow float32 to inf and softmax turns them into NaN (with top_k=0 the
inverse-CDF sampler then picks the last vocabulary id every step). Below `MIN_TEMPERATURE` the distribution
is the argmax to float32 precision anyway, so such a temperature means greedy - vLLM's rule (_SAMPLING_EPS).
"""

from __future__ import annotations

from raychat.engine import SamplingParams

MIN_TEMPERATURE = 1e-5


def render_chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Messages [{"role", "content"}] (system merged into the first user turn) -> ids ending with
    <|assistant_start|>. Malformed conversations raise the tokenizer's ConversationError (a RaychatError)."""
    return tokenizer.render_for_completion({"messages": messages})


def render_text_prompt(tokenizer, text: str) -> list[int]:
    """Plain continuation (a base model, /v1/completions): a fresh document <|bos|> text."""
    return tokenizer.encode(text, prepend=tokenizer.bos_id)


def effective_temperature(t: float) -> float:
    return 0.0 if 0.0 <= t < MIN_TEMPERATURE else t


def sampling_params(temperature: float = 1.0, top_k: int | None = 50, top_p: float = 1.0, max_tokens: int = 256,
                    seed: int | None = None) -> SamplingParams:
    """SamplingParams as a user states them: top_k 0 = no limit, a temperature under MIN_TEMPERATURE = greedy."""
    return SamplingParams(temperature=effective_temperature(float(temperature)), top_k=int(top_k) if top_k else None,
                          top_p=float(top_p), max_tokens=int(max_tokens), seed=seed)


def tool_text(kind: str, text: str) -> str:
    """A tool segment inside plain text, GSM8K-style: <<expression=result>> (the call opens, the result closes)."""
    return f"<<{text}=" if kind == "tool_call" else f"{text}>>"
