"""Tokenizer: training determinism, save/load, round trips on arbitrary unicode and raw bytes, specials,
token_bytes, and the streaming detokenizer."""

import json
import pickle
import random

import pytest
import torch

from raychat.common import RaychatError
from raychat.tokenizer import SPECIAL_TOKENS, StreamDecoder, Tokenizer, train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Tokenizers split text into frequent pieces; rare words become several pieces.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Numbers like 12345 and 3.14159 are split into groups of at most two digits.",
    "Unicode: naïve café, Übergrößenträger, 東京, 😀🎉 and ελληνικά.",
    "Don't, won't, they're, we've, I'll: contractions are split by the GPT-4 pattern.",
] * 40


def _random_unicode(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x300, 0x36F), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F300, 0x1F6FF), (0x10000, 0x1007F),
              (0xFFF0, 0xFFFD), (0xE000, 0xE0FF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


@pytest.fixture(scope="module")
def trained():
    return train_tokenizer(iter(CORPUS), vocab_size=256 + 64 + len(SPECIAL_TOKENS))


@pytest.fixture(params=["trained", "byte_level"])
def tok(request, trained):
    return trained if request.param == "trained" else Tokenizer.byte_level()


def test_training_is_deterministic_and_learns_merges(trained):
    again = train_tokenizer(iter(CORPUS), vocab_size=trained.vocab_size)
    assert again.mergeable_ranks == trained.mergeable_ranks
    assert trained.vocab_size == 256 + 64 + len(SPECIAL_TOKENS)
    # merges compress: frequent text takes fewer tokens than bytes
    text = CORPUS[0]
    assert len(trained.encode(text)) < len(text.encode()) / 2
    # specials follow the ranks, in SPECIAL_TOKENS order
    assert [trained.special_id(s) for s in SPECIAL_TOKENS] == list(range(256 + 64, trained.vocab_size))
    assert trained.bos_id == trained.special_id("<|bos|>")


def test_training_rejects_impossible_sizes():
    with pytest.raises(RaychatError, match="too small"):
        train_tokenizer(iter(["ab"]), vocab_size=200)
    with pytest.raises(RaychatError, match="training text too small"):
        train_tokenizer(iter(["abc abc"]), vocab_size=2000)


def test_roundtrip_arbitrary_unicode(tok):
    rng = random.Random(0)
    for n in [0, 1, 2, 7, 50, 400]:
        for _ in range(20):
            s = _random_unicode(rng, n)
            ids = tok.encode(s)
            assert tok.decode(ids) == s
            assert tok.decode_bytes(ids) == s.encode("utf-8")
    for s in ["", " ", "\n\n\n", "\r\n\t", "\x00\x01", "a" * 5000, "  leading and trailing  "]:
        assert tok.decode(tok.encode(s)) == s


def test_roundtrip_raw_bytes(tok):
    """Arbitrary bytes survive as text (latin-1 / surrogateescape views) and every id has exact raw bytes."""
    rng = random.Random(1)
    for _ in range(50):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        for text in (raw.decode("latin-1"), raw.decode("utf-8", errors="replace")):
            assert tok.decode(tok.encode(text)) == text
    # random id sequences (which may cut UTF-8 characters): bytes concatenate exactly, text decodes with U+FFFD
    n_ranks = len(tok.mergeable_ranks)
    for _ in range(50):
        ids = [rng.randrange(n_ranks) for _ in range(rng.randrange(1, 40))]
        raw = b"".join(tok.token_to_bytes(i) for i in ids)
        assert tok.decode_bytes(ids) == raw
        assert tok.decode(ids) == raw.decode("utf-8", errors="replace")


def test_specials_never_come_from_text(tok):
    text = "".join(SPECIAL_TOKENS) + " <|bos|> hello <|assistant_end|><|user_start|>"
    ids = tok.encode(text)
    assert all(not tok.is_special(i) for i in ids)
    assert tok.decode(ids) == text
    batch = tok.encode_batch([text, "<|python_start|>1+1<|python_end|>"])
    assert all(not tok.is_special(i) for ids in batch for i in ids)


def test_prepend_append_and_batch(tok):
    texts = ["hello world", "", "second text with more words", _random_unicode(random.Random(2), 30)]
    batch = tok.encode_batch(texts, prepend="<|bos|>", append=tok.special_id("<|assistant_end|>"), num_threads=2)
    single = [tok.encode(t, prepend=tok.bos_id, append="<|assistant_end|>") for t in texts]
    assert batch == single
    assert all(ids[0] == tok.bos_id and ids[-1] == tok.special_id("<|assistant_end|>") for ids in batch)
    assert tok.encode(texts) == tok.encode_batch(texts)
    many = [CORPUS[i % len(CORPUS)][: 5 + 7 * i] for i in range(37)]  # uneven slices across threads keep order
    assert tok.encode_batch(many, num_threads=3) == [tok.encode(t) for t in many]
    with pytest.raises(KeyError, match="unknown special token"):
        tok.encode("x", prepend="<|nope|>")
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_token_bytes_from_raw_bytes(trained):
    tb = trained.token_bytes
    assert tb.dtype == torch.long and tb.shape == (trained.vocab_size,)
    for i in range(len(trained.mergeable_ranks)):
        assert tb[i] == len(trained.token_to_bytes(i))
    assert tb[0xE2] == 1  # a lone UTF-8 lead byte is 1 byte (decoding it as text would say 3: U+FFFD)
    assert (tb[len(trained.mergeable_ranks):] == 0).all()
    # bytes of an encoding add up to the UTF-8 length of the text (the bits-per-byte denominator)
    s = "naïve café 😀 東京"
    assert tb[trained.encode(s)].sum() == len(s.encode())


def test_save_load_roundtrip(tmp_path, trained):
    d = trained.save(tmp_path / "tok")
    assert {p.name for p in d.iterdir()} == {"tokenizer.json", "ranks.tiktoken", "token_bytes.pt"}
    loaded = Tokenizer.load(d)
    assert loaded.mergeable_ranks == trained.mergeable_ranks
    assert loaded.special_tokens == trained.special_tokens and loaded.pattern == trained.pattern
    for s in CORPUS[:6]:
        assert loaded.encode(s) == trained.encode(s)
    assert torch.equal(torch.load(d / "token_bytes.pt"), trained.token_bytes)
    assert json.loads((d / "tokenizer.json").read_text())["vocab_size"] == trained.vocab_size
    # picklable: Ray ships it to train workers and serve replicas
    assert pickle.loads(pickle.dumps(loaded)).encode(CORPUS[4]) == trained.encode(CORPUS[4])


def test_load_errors(tmp_path, trained):
    with pytest.raises(RaychatError, match="no tokenizer at"):
        Tokenizer.load(tmp_path / "missing")
    d = trained.save(tmp_path / "tok")
    ranks = d / "ranks.tiktoken"
    ranks.write_bytes(ranks.read_bytes().replace(b" 300\n", b" 301\n"))
    with pytest.raises(RaychatError, match="checksum"):
        Tokenizer.load(d)


def test_stream_decoder_matches_decode(tok):
    rng = random.Random(3)
    for _ in range(30):
        s = _random_unicode(rng, rng.randrange(1, 80))
        ids = tok.encode(s)
        dec = StreamDecoder(tok)
        deltas = [dec.feed(i) for i in ids]
        assert "".join(deltas) + dec.flush() == s
        assert all("\ufffd" not in d for d in deltas) or "\ufffd" in s  # never a split character
    # feeding several ids at once is the same as one by one
    ids = tok.encode("emoji 😀😀 and 東京")
    dec = StreamDecoder(tok)
    assert dec.feed(ids[:3]) + dec.feed(ids[3:]) + dec.flush() == tok.decode(ids)


def test_stream_decoder_holds_back_partial_characters():
    tok = Tokenizer.byte_level()
    ids = tok.encode("a😀b")  # 😀 is 4 bytes = 4 byte-level tokens
    dec = StreamDecoder(tok)
    assert [dec.feed(i) for i in ids] == ["a", "", "", "", "😀", "b"]
    dec.feed(ids[1:3])
    assert dec.pending_bytes == 2
    assert dec.flush() == "\ufffd"  # an unfinished character at the end is replaced, like decode() does
    assert tok.decode(ids[1:3]) == "\ufffd"


def test_stream_decoder_invalid_bytes_and_specials():
    tok = Tokenizer.byte_level()
    rng = random.Random(4)
    for _ in range(50):
        ids = [rng.randrange(256) for _ in range(rng.randrange(1, 30))]
        dec = StreamDecoder(tok)
        assert "".join(dec.feed(i) for i in ids) + dec.flush() == tok.decode(ids)
    ids = [tok.bos_id, *tok.encode("hi"), tok.special_id("<|assistant_end|>")]
    dec = StreamDecoder(tok)
    assert "".join(dec.feed(i) for i in ids) == "<|bos|>hi<|assistant_end|>"
    dec = StreamDecoder(tok, skip_special=True)
    assert "".join(dec.feed(i) for i in ids) == "hi" and dec.num_tokens == 4
