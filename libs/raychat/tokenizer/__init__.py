"""Tokenizer: byte-level BPE (rustbpe training, tiktoken encoding), special tokens, chat template with loss
masks, and a streaming detokenizer. See bpe.py, chat.py, stream.py."""

from raychat.tokenizer.bpe import DEFAULT_VOCAB_SIZE, SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, train_tokenizer
from raychat.tokenizer.chat import ConversationError, render_conversation, render_for_completion, validate_messages
from raychat.tokenizer.stream import StreamDecoder

__all__ = ["DEFAULT_VOCAB_SIZE", "SPECIAL_TOKENS", "SPLIT_PATTERN", "ConversationError", "StreamDecoder", "Tokenizer",
           "render_conversation", "render_for_completion", "train_tokenizer", "validate_messages"]
