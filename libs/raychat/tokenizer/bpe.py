"""GPT-4-style byte-level BPE: trained with `rustbpe`, run with `tiktoken`.

Why two libraries: rustbpe trains fast (parallel pair counting in Rust) but tiktoken encodes faster and is
battle-tested, so training produces plain "mergeable ranks" (token bytes -> rank, where rank = merge order =
token id) and inference builds a `tiktoken.Encoding` from them (the nanochat recipe).

Layout of ids: 0..255 are the raw bytes, 256..N-1 the learned merges, then the special tokens in the order of
`SPECIAL_TOKENS`. Ordinary text never produces a special id: `encode` uses tiktoken's `encode_ordinary`, so a
document that literally contains "<|bos|>" is encoded as ordinary bytes (no prompt injection of specials).

On disk (`Tokenizer.save(dir)`), all written atomically (temp file + os.replace):
    tokenizer.json     format, split pattern, special tokens, sha256 of the ranks file
    ranks.tiktoken     one "base64(token bytes) rank" per line (tiktoken's own format; no pickle)
    token_bytes.pt     LongTensor (V,): UTF-8 bytes per token id, 0 for specials (bits-per-byte evaluation)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tiktoken
import torch

from raychat.common import RaychatError

SPECIAL_TOKENS = [
    "<|bos|>",  # starts every document (pretraining) and every conversation (chat)
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # the assistant calls the calculator tool
    "<|python_end|>",
    "<|output_start|>",  # the tool's output, inserted by the engine (never trained on)
    "<|output_end|>",
]

# GPT-4's split pattern with \p{N}{1,2} instead of \p{N}{1,3} (nanochat): fewer vocab slots spent on numbers,
# which matters at small vocab sizes.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
                 r"""\s*[\r\n]|\s+(?!\S)|\s+""")

FORMAT = "raychat-tokenizer-v1"
DEFAULT_VOCAB_SIZE = 32768


class Tokenizer:
    """Encode/decode with a tiktoken `Encoding` built from BPE ranks; specials follow the ranks."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN,
                 special_tokens: list[str] | None = None, name: str = "raychat"):
        special_tokens = list(SPECIAL_TOKENS if special_tokens is None else special_tokens)
        n = len(mergeable_ranks)
        if sorted(mergeable_ranks.values()) != list(range(n)):
            raise RaychatError("tokenizer ranks must be exactly 0..N-1 (corrupt or foreign ranks file?)")
        if any(bytes([b]) not in mergeable_ranks for b in range(256)):
            raise RaychatError("tokenizer ranks must contain all 256 single bytes (byte-level BPE)")
        self.pattern = pattern
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = {s: n + i for i, s in enumerate(special_tokens)}
        self.enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=mergeable_ranks,
                                     special_tokens=self.special_tokens)
        self.bos_id = self.special_tokens["<|bos|>"]
        self._token_bytes: torch.Tensor | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def byte_level(cls) -> Tokenizer:
        """256 byte tokens + specials, no merges, no training: a fixed tokenizer for tests of the layers above."""
        return cls({bytes([i]): i for i in range(256)}, name="raychat-bytes")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        d = Path(directory)
        meta_path = d / "tokenizer.json"
        if not meta_path.is_file():
            raise RaychatError(f"no tokenizer at {d} (missing tokenizer.json): train one with "
                               f"`raychat tok-train --out {d}` or `raychat tok-train --run-dir RUN`")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RaychatError(f"unreadable tokenizer metadata {meta_path}: {e}") from None
        if meta.get("format") != FORMAT:
            raise RaychatError(f"{meta_path}: unknown tokenizer format {meta.get('format')!r}, expected {FORMAT!r}")
        ranks_path = d / meta["ranks_file"]
        try:
            raw = ranks_path.read_bytes()
        except OSError as e:
            raise RaychatError(f"unreadable tokenizer ranks {ranks_path}: {e}") from None
        if hashlib.sha256(raw).hexdigest() != meta["ranks_sha256"]:
            raise RaychatError(f"{ranks_path} does not match the checksum in {meta_path} (corrupt copy?)")
        ranks = {}
        for line in raw.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return cls(ranks, pattern=meta["pattern"], special_tokens=meta["special_tokens"])

    def save(self, directory: str | os.PathLike) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        lines = [base64.b64encode(tok) + b" " + str(rank).encode()
                 for tok, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])]
        raw = b"\n".join(lines) + b"\n"
        meta = {"format": FORMAT, "pattern": self.pattern, "special_tokens": list(self.special_tokens),
                "vocab_size": self.vocab_size, "ranks_file": "ranks.tiktoken",
                "ranks_sha256": hashlib.sha256(raw).hexdigest()}
        # ranks before metadata: a reader that sees the new tokenizer.json also sees the matching ranks
        _atomic_write(d / "ranks.tiktoken", lambda f: f.write(raw))
        _atomic_write(d / "token_bytes.pt", lambda f: torch.save(self.token_bytes, f))
        _atomic_write(d / "tokenizer.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
        return d

    # ---------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def special_id(self, name: str) -> int:
        try:
            return self.special_tokens[name]
        except KeyError:
            raise KeyError(f"unknown special token {name!r}; known: {', '.join(self.special_tokens)}") from None

    def is_special(self, token_id: int) -> bool:
        return token_id >= len(self.mergeable_ranks)

    @property
    def token_bytes(self) -> torch.Tensor:
        """LongTensor (V,): number of UTF-8 bytes each id stands for (0 for specials), from the raw ranks
        (not from a decoded string: a lone continuation byte decodes to U+FFFD = 3 bytes, which would be wrong)."""
        if self._token_bytes is None:
            tb = torch.zeros(self.vocab_size, dtype=torch.long)
            for tok, rank in self.mergeable_ranks.items():
                tb[rank] = len(tok)
            self._token_bytes = tb
        return self._token_bytes

    def token_to_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one id (a special's bytes are its name, e.g. b"<|bos|>")."""
        return self.enc.decode_single_token_bytes(token_id)

    # ---------------------------------------------------------------- encode / decode
    def _as_id(self, tok: int | str | None) -> int | None:
        return None if tok is None else tok if isinstance(tok, int) else self.special_id(tok)

    def encode(self, text: str | list[str], prepend: int | str | None = None,
               append: int | str | None = None) -> list[int] | list[list[int]]:
        """Ordinary text -> ids (specials in the text are plain bytes). prepend/append: an id or a special's name.
        A list of strings is encoded with `encode_batch` (returns a list of lists)."""
        if isinstance(text, list):
            return self.encode_batch(text, prepend=prepend, append=append)
        if not isinstance(text, str):
            raise TypeError(f"encode expects str or list[str], got {type(text).__name__}")
        ids = self.enc.encode_ordinary(text)
        p, a = self._as_id(prepend), self._as_id(append)
        if p is not None:
            ids.insert(0, p)
        if a is not None:
            ids.append(a)
        return ids

    def encode_batch(self, texts: list[str], prepend: int | str | None = None, append: int | str | None = None,
                     num_threads: int = 8) -> list[list[int]]:
        """Many texts at once; tiktoken releases the GIL, so threads give real parallelism. Each thread encodes
        a contiguous slice (tiktoken's own batch call makes one future per text, which costs more CPU than
        encoding a short text)."""
        texts = list(texts)
        if num_threads <= 1 or len(texts) < 2 * num_threads:
            out = [self.enc.encode_ordinary(t) for t in texts]
        else:
            step = -(-len(texts) // (4 * num_threads))  # ~4 slices per thread: balances uneven lengths
            slices = [texts[i:i + step] for i in range(0, len(texts), step)]
            encode = self.enc.encode_ordinary
            with ThreadPoolExecutor(num_threads) as pool:
                out = [ids for part in pool.map(lambda sl: [encode(t) for t in sl], slices) for ids in part]
        p, a = self._as_id(prepend), self._as_id(append)
        if p is not None:
            out = [[p, *ids] for ids in out]
        if a is not None:
            for ids in out:
                ids.append(a)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text; invalid UTF-8 (e.g. a cut multi-byte char) becomes U+FFFD. Specials decode to their name."""
        return self.enc.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.enc.decode_bytes(list(ids))

    # ---------------------------------------------------------------- chat (see chat.py)
    def render_conversation(self, conversation, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
        from raychat.tokenizer.chat import render_conversation

        return render_conversation(self, conversation, max_tokens=max_tokens)

    def render_for_completion(self, conversation) -> list[int]:
        from raychat.tokenizer.chat import render_for_completion

        return render_for_completion(self, conversation)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.mergeable_ranks) - 256})"


def train_tokenizer(text_iterator: Iterable[str] | Iterator[str], vocab_size: int = DEFAULT_VOCAB_SIZE,
                    pattern: str = SPLIT_PATTERN, special_tokens: list[str] | None = None) -> Tokenizer:
    """Train byte-level BPE on an iterator of documents; `vocab_size` counts bytes + merges + specials.

    Deterministic: the same texts in the same order give the same ranks. Raises RaychatError when the text is
    too small to learn the requested number of merges (rustbpe stops early; a silently smaller vocabulary would
    not match the model's embedding size the user asked for).
    """
    import rustbpe

    special_tokens = list(SPECIAL_TOKENS if special_tokens is None else special_tokens)
    n_ranks = vocab_size - len(special_tokens)
    if n_ranks < 256:
        raise RaychatError(f"vocab_size {vocab_size} too small: need at least 256 byte tokens + "
                           f"{len(special_tokens)} specials = {256 + len(special_tokens)}")
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(text_iterator), n_ranks, pattern=pattern)
    ranks = {bytes(tok): rank for tok, rank in bpe.get_mergeable_ranks()}
    if len(ranks) < n_ranks:
        raise RaychatError(f"training text too small for vocab_size {vocab_size}: only {len(ranks) - 256} merges "
                           f"could be learned (wanted {n_ranks - 256}); give more text or a smaller vocab size")
    return Tokenizer(ranks, pattern=bpe.get_pattern(), special_tokens=special_tokens)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the tokenizer is meant to be shared
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
