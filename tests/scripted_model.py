"""A scripted stand-in for the GPT, for tests of the engine, the chat layer and the layers above (serve, evals)
without a checkpoint: it follows the model's KV-cache contract exactly, and its output is known in advance.

`ScriptedModel(vocab_size, script, trigger)` predicts, at every position, the next token of `script` counted
from the last `trigger` token in the sequence (e.g. <|assistant_start|>): after the prompt it "says" the script.
Tokens inside <|output_start|> ... <|output_end|> (the tool output the engine forces) are not counted, so a
script containing a tool call does not depend on the length of the tool's answer. After the script it keeps
predicting `end_token`. The logits are `peak` on the scripted token over a fixed pseudo-random background of
scale `noise`, so sampling at a temperature > 0 does deviate from the script (tests of seeds use that).

How it remembers the sequence: it writes each token id into its KV cache (layer 0, key channel 0) at the
token's position, exactly where a real model writes the token's key. Everything the engine does to the cache
(prefill into a slot, row copies for num_samples, views of a row range, resets) therefore carries the history
along, and a bug there shows up as a wrong continuation, as it would with the real model.

`scripted(text or ids)` is the usual one: byte-level tokenizer `TOK`, triggered by <|assistant_start|>, tool
outputs skipped; `A_START`, `A_END`, `PY_S`, `PY_E`, `OUT_S`, `OUT_E` are the special token ids tests script with.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn

from raychat.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()
SP = TOK.special_id
A_START, A_END = SP("<|assistant_start|>"), SP("<|assistant_end|>")
PY_S, PY_E, OUT_S, OUT_E = SP("<|python_start|>"), SP("<|python_end|>"), SP("<|output_start|>"), SP("<|output_end|>")


class ScriptedModel(nn.Module):
    def __init__(self, vocab_size: int, script: list[int], trigger: int, end_token: int | None = None,
                 sequence_len: int = 512, peak: float = 10.0, noise: float = 1.0,
                 skip_span: tuple[int, int] | None = None, seed: int = 0):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, sequence_len=sequence_len, n_layer=1, n_head=1,
                                      n_kv_head=1, head_dim=1, n_embd=1)
        self.compute_dtype = torch.float32
        self.script = [int(t) for t in script]
        self.trigger = trigger
        self.end_token = end_token if end_token is not None else (self.script[-1] if self.script else 0)
        self.peak = peak
        self.skip_span = skip_span
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("background", noise * torch.randn(vocab_size, generator=g), persistent=False)
        self.num_forwards = 0

    def get_device(self) -> torch.device:
        return self.background.device

    def next_token(self, history: list[int]) -> int:
        """The scripted continuation of `history` (the rule described in the module docstring)."""
        try:
            start = len(history) - 1 - history[::-1].index(self.trigger)
        except ValueError:
            return self.end_token
        j, inside = 0, False
        for t in history[start + 1:]:
            if self.skip_span is not None and t == self.skip_span[0]:
                inside = True
            if not inside:
                j += 1
            if self.skip_span is not None and t == self.skip_span[1]:
                inside = False
        return self.script[j] if j < len(self.script) else self.end_token

    def _logits_for(self, histories: list[list[int]]) -> torch.Tensor:
        targets = torch.tensor([self.next_token(h) for h in histories], device=self.get_device())
        out = self.background.expand(len(histories), -1).clone()
        out[torch.arange(len(histories)), targets] += self.peak
        return out

    @torch.no_grad()
    def forward(self, idx: torch.Tensor, targets=None, kv_cache=None, last_only: bool = False):
        self.num_forwards += 1
        B, T = idx.shape
        rows = idx.tolist()
        if kv_cache is None:
            logits = [self._logits_for([r[: t + 1] for t in range(T)]) for r in rows]
            return torch.stack(logits)  # (B, T, V)
        keys = kv_cache.k[0]  # (B, T_max, 1, 1): token ids stored as floats
        start = kv_cache.seqlens.tolist()
        if max(start) + T > kv_cache.max_seq_len:
            raise ValueError(f"KV cache overflow: {max(start) + T} positions needed, cache holds "
                             f"{kv_cache.max_seq_len}")
        out = []
        for b in range(B):
            keys[b, start[b]: start[b] + T, 0, 0] = idx[b].to(keys.dtype)
            hist = [int(x) for x in keys[b, : start[b] + T, 0, 0].tolist()]
            out.append(self._logits_for([hist[: start[b] + t + 1] for t in range(T)]))
        kv_cache.seqlens += T
        logits = torch.stack(out)  # (B, T, V)
        return logits[:, -1:] if last_only else logits


def scripted(text_or_ids, **kw) -> ScriptedModel:
    """A ScriptedModel that answers `text` (then <|assistant_end|>) or exactly the ids given."""
    script = TOK.encode(text_or_ids) + [A_END] if isinstance(text_or_ids, str) else text_or_ids
    return ScriptedModel(TOK.vocab_size, script, A_START, skip_span=(OUT_S, OUT_E), **kw)
