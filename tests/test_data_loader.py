"""PackedLoader: packing matches a naive reference (nanochat's list-scan best fit), rows start with <|bos|>,
targets are shifted inputs, exact resume (batch hashes across save/restore, with and without background
prefetch, across epochs), disjoint distributed slicing, and clear errors."""

import hashlib
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raychat.common import RaychatError
from raychat.data import PackedLoader, list_shards
from raychat.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()


def make_dataset(path, num_shards=3, docs_per_shard=120, row_group_size=16, seed=0, max_len=300):
    """Shards of random ASCII documents of very different lengths (1..max_len chars)."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    all_docs = []
    for s in range(num_shards):
        docs = []
        for d in range(docs_per_shard):
            n = rng.choice([rng.randint(1, 20), rng.randint(20, 120), rng.randint(1, max_len)])
            docs.append(f"<{s}:{d}>" + "".join(rng.choice("abcdefgh ") for _ in range(n)))
        pq.write_table(pa.table({"text": docs}), path / f"shard_{s:05d}.parquet", row_group_size=row_group_size)
        all_docs.append(docs)
    return all_docs


def reference_batches(docs, B, T, buffer_size, num_batches):
    """nanochat's algorithm, written naively: scan the buffer for the largest doc that fits (first on ties),
    else crop the shortest (first on ties)."""
    stream = iter([TOK.bos_id, *TOK.encode(d)] for d in docs)
    buf, out = [], []
    for _ in range(num_batches):
        rows = []
        for _ in range(B):
            row = []
            while len(row) < T + 1:
                while len(buf) < buffer_size:
                    nxt = next(stream, None)
                    if nxt is None:
                        break
                    buf.append(nxt)
                remaining = T + 1 - len(row)
                best = -1
                for i, d in enumerate(buf):
                    if len(d) <= remaining and (best < 0 or len(d) > len(buf[best])):
                        best = i
                if best < 0:
                    best = min(range(len(buf)), key=lambda i: len(buf[i]))
                row.extend(buf.pop(best)[:remaining])
            rows.append(row)
        t = torch.tensor(rows)
        out.append((t[:, :-1], t[:, 1:]))
    return out


def digest(x, y):
    return hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    return d, make_dataset(d)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_packing_matches_reference(dataset, prefetch):
    d, docs = dataset
    train_docs = [t for shard in docs[:-1] for t in shard]
    B, T, buf = 3, 64, 20
    ref = reference_batches(train_docs, B, T, buf, num_batches=25)
    with PackedLoader(TOK, d, "train", batch_size=B, seq_len=T, buffer_size=buf, shuffle=False,
                      prefetch=prefetch) as loader:
        for i, (rx, ry) in enumerate(ref):
            x, y = next(loader)
            assert x.dtype == torch.long and x.shape == (B, T) and y.shape == (B, T)
            assert torch.equal(x, rx) and torch.equal(y, ry), f"batch {i} differs from the reference"
        s = loader.stats()
    assert s["tokens_used"] == 25 * B * (T + 1)
    assert 0.0 < s["cropped_fraction"] < 1.0
    assert s["cropped_fraction"] == pytest.approx(s["tokens_cropped"] / (s["tokens_used"] + s["tokens_cropped"]))


def test_rows_start_with_bos_and_targets_shift(dataset):
    d, _ = dataset
    with PackedLoader(TOK, d, "val", batch_size=4, seq_len=48, buffer_size=8, prefetch=1) as loader:
        for _ in range(10):
            x, y = next(loader)
            assert (x[:, 0] == TOK.bos_id).all()
            assert torch.equal(x[:, 1:], y[:, :-1])
            # every token after a <|bos|> in a row continues one document: the text between BOS tokens is a
            # prefix of a real document (crops only ever end a row)
            for row, last in zip(x.tolist(), y[:, -1].tolist()):
                full = row + [last]
                starts = [i for i, t in enumerate(full) if t == TOK.bos_id]
                for a, b in zip(starts, starts[1:] + [len(full)]):
                    assert TOK.decode(full[a + 1:b]).startswith("<")


@pytest.mark.parametrize("prefetch", [0, 3])
def test_exact_resume(dataset, prefetch):
    d, _ = dataset
    kw = dict(batch_size=2, seq_len=96, buffer_size=30, seed=7, prefetch=prefetch)
    with PackedLoader(TOK, d, "train", **kw) as loader:
        # enough batches to wrap into the second epoch (each epoch ~ 240 docs ~ 35k tokens)
        want = [digest(*next(loader)) for _ in range(220)]
        assert loader.stats()["epoch"] >= 1
    for cut in (0, 1, 57, 150):
        with PackedLoader(TOK, d, "train", **kw) as loader:
            got = [digest(*next(loader)) for _ in range(cut)]
            state = json.loads(json.dumps(loader.state_dict()))  # JSON-safe
            stats = loader.stats()
        with PackedLoader(TOK, d, "train", **{**kw, "prefetch": 2 - min(prefetch, 2)}) as resumed:
            resumed.load_state_dict(state)
            assert resumed.stats() == stats
            got += [digest(*next(resumed)) for _ in range(220 - cut)]
        assert got == want, f"resume after {cut} batches diverged"


def test_load_state_dict_restarts_a_running_loader(dataset):
    d, _ = dataset
    with PackedLoader(TOK, d, "train", batch_size=2, seq_len=64, buffer_size=10, prefetch=2) as loader:
        for _ in range(5):
            next(loader)
        state = loader.state_dict()
        after = [digest(*next(loader)) for _ in range(8)]
        loader.load_state_dict(state)  # rewind while background threads are running
        assert [digest(*next(loader)) for _ in range(8)] == after


def test_shuffle_changes_order_per_epoch_and_val_is_stable(dataset):
    d, _ = dataset
    a = PackedLoader(TOK, d, "train", batch_size=2, seq_len=64, seed=0, prefetch=0)
    b = PackedLoader(TOK, d, "train", batch_size=2, seq_len=64, seed=1, prefetch=0)
    assert a._units(0) != b._units(0) and a._units(0) != a._units(1)
    assert sorted(a._units(0)) == sorted(a._units(1))
    v1 = PackedLoader(TOK, d, "val", batch_size=2, seq_len=64, prefetch=0)
    v2 = PackedLoader(TOK, d, "val", batch_size=2, seq_len=64, prefetch=2)
    assert [digest(*next(v1)) for _ in range(5)] == [digest(*next(v2)) for _ in range(5)]
    v2.close()


def _docs_seen(loader, epoch):
    """Documents this rank reads in one epoch (the document stream, before packing)."""
    docs = []
    for chunk in loader._doc_chunks(epoch, 0, 0):
        if chunk[0][0][0] != epoch:
            break
        docs += [TOK.decode(ids[1:]) for _, ids in chunk]
    return docs


@pytest.mark.parametrize("world_size, row_group_size", [(3, 16), (4, 100)])
def test_distributed_slices_are_disjoint_and_complete(tmp_path, world_size, row_group_size):
    """Ranks read disjoint documents and together every document once per epoch; with fewer row groups than
    ranks (val shard: 120 rows / 100 = 2 groups < 4 ranks) they stride over rows instead."""
    docs = make_dataset(tmp_path, row_group_size=row_group_size)
    for split, expect in (("train", docs[0] + docs[1]), ("val", docs[2])):
        seen = []
        for rank in range(world_size):
            loader = PackedLoader(TOK, tmp_path, split, batch_size=1, seq_len=32, rank=rank,
                                  world_size=world_size, prefetch=0)
            mine = _docs_seen(loader, epoch=1)
            assert mine, f"rank {rank} got no {split} data"
            seen += mine
        assert sorted(seen) == sorted(expect)


def test_finite_epochs_stop(dataset):
    d, docs = dataset
    loader = PackedLoader(TOK, d, "val", batch_size=2, seq_len=64, num_epochs=1, prefetch=2)
    batches = list(loader)
    total = sum(len(t.encode()) + 1 for t in docs[-1])
    assert len(batches) == loader.stats()["batches"] > 0
    assert len(batches) * 2 * 65 <= total  # the incomplete last batch is dropped, no document read twice
    assert loader.stats()["tokens_used"] + loader.stats()["tokens_cropped"] <= total


def test_errors(tmp_path, dataset):
    with pytest.raises(RaychatError, match="does not exist"):
        list_shards(tmp_path / "nope")
    make_dataset(tmp_path / "one", num_shards=1)
    with pytest.raises(RaychatError, match="need at least 2"):
        PackedLoader(TOK, tmp_path / "one", "train")
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"body": ["x"]}), bad / f"shard_{i}.parquet")
    with pytest.raises(RaychatError, match="no 'text' column"):
        PackedLoader(TOK, bad, "train")
    d, _ = dataset
    a = PackedLoader(TOK, d, "train", batch_size=1, seq_len=16, prefetch=0, world_size=2, rank=0)
    b = PackedLoader(TOK, d, "train", batch_size=1, seq_len=16, prefetch=0, world_size=1)
    next(a)
    with pytest.raises(RaychatError, match="world_size: saved 2 vs now 1"):
        b.load_state_dict(a.state_dict())


def test_background_errors_reach_the_caller(tmp_path):
    make_dataset(tmp_path, num_shards=2)
    loader = PackedLoader(TOK, tmp_path, "train", batch_size=1, seq_len=16, prefetch=2)
    (tmp_path / "shard_00000.parquet").write_bytes(b"not parquet any more")
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's error type; what matters is it is not swallowed
        next(loader)
    loader.close()
