"""Incremental detokenization for streaming: feed ids, get text deltas that never split a UTF-8 character.

Why: one token is not one character. A byte-level BPE token can end in the middle of a multi-byte character
(an emoji is 4 bytes and often 2-3 tokens), so decoding each token on its own prints U+FFFD garbage. The
decoder keeps the incomplete tail bytes until the character is complete. The concatenation of all deltas plus
`flush()` equals `tokenizer.decode(all_ids)` exactly (same "replace" error handling for truly invalid bytes).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raychat.tokenizer.bpe import Tokenizer


class StreamDecoder:
    """Per-request streaming decoder. `skip_special=True` drops special tokens (e.g. <|assistant_end|>) from the
    text instead of printing their names; the serve layer usually handles those ids itself."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.num_tokens = 0

    def feed(self, ids: int | Iterable[int]) -> str:
        """Add one id or several; return the newly completed text (possibly "")."""
        ids = [ids] if isinstance(ids, int) else ids
        chunks = []
        for i in ids:
            self.num_tokens += 1
            if self.skip_special and self.tokenizer.is_special(i):
                continue
            chunks.append(self.tokenizer.token_to_bytes(i))
        return self._dec.decode(b"".join(chunks), final=False)

    def flush(self) -> str:
        """End of stream: any incomplete trailing character becomes U+FFFD (as a one-shot decode would)."""
        return self._dec.decode(b"", final=True)

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because they do not yet form a complete character."""
        return len(self._dec.getstate()[0])
