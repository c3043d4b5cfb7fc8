"""The pretraining loader: BOS-aligned best-fit packing, distributed by row group, exactly resumable; and
`rows_to_batch`, the finetuning stages' padded batches of rendered conversations.

Packing (nanochat's "BOS-aligned best-fit"): every document is tokenized as [<|bos|>, ...text]. A row has
T+1 tokens (x = row[:-1], y = row[1:]), and is filled from a buffer of `buffer_size` documents by repeatedly
taking the LARGEST document that fits in the space left; when none fits, the SHORTEST document is cropped to
fill the row exactly and its remainder is dropped. So every row starts with <|bos|>, every token can attend
back to its document's start, there is no padding, and the price is the cropped tokens (`stats()` reports the
fraction; it grows as T shrinks relative to document length). Targets stay correct at crops: y is row[1:] of
the same row, and a crop only ever ends a row.

Distribution: the row groups of the split's shards are listed in a fixed global order (permuted per epoch
with `seed` for the train split); rank r of w reads positions r, r+w, r+2w, ... so ranks read disjoint data
and together see every document once per epoch. If a split has fewer row groups than ranks (a small
validation shard on 8 GPUs), every rank reads every row group but keeps only rows r, r+w, ... instead.

Exact resume: the stream position is (epoch, unit position, row). The buffer always holds whole documents
(a cropped one leaves it), so the state is the position of the next document to read plus the references
of the buffered documents, in insertion order (~1000 small int triples, JSON-safe); `load_state_dict`
re-reads their row groups, re-tokenizes just those documents and continues. Tokenization is deterministic, so
the batches after a restore are bit-identical to an uninterrupted run, with or without background prefetch.
`batch_size` and `seq_len` may change on resume.

Throughput: reading + tokenization run in one background thread (tiktoken's batch encoder releases the GIL
and uses `tokenizer_threads` threads), packing in another, each handing results over through a bounded
queue (`prefetch` batches ready ahead), so the training step does not wait. On CUDA each batch is built in
pinned memory as one (2, B, T) int64 block and copied with one non-blocking transfer.
"""

from __future__ import annotations

import bisect
import os
import queue
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from raychat.common import RaychatError
from raychat.data.shards import ShardReader, row_groups, split_paths

STATE_VERSION = 1
_END = object()


class _Error:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _Prefetch:
    """Run an iterator in a daemon thread, handing items over through a bounded queue (order preserved).
    Exceptions in the thread are re-raised in the consumer. `close()` stops the thread and closes the
    iterator (running generators' `finally` blocks, which close inner prefetchers)."""

    def __init__(self, it: Iterator, size: int, name: str):
        self.it = it
        self.q: queue.Queue = queue.Queue(maxsize=max(1, size))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self.it:
                if not self._put(item):
                    break
            else:
                self._put(_END)
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            self._put(_Error(e))
        finally:
            close = getattr(self.it, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> _Prefetch:
        return self

    def __next__(self):
        item = self.q.get()
        if item is _END:
            self.q.put(_END)  # stay exhausted
            raise StopIteration
        if isinstance(item, _Error):
            self.q.put(item)  # stay failed: later calls raise again instead of blocking
            raise item.exc
        return item

    def close(self) -> None:
        self.stop.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)


class PackedLoader:
    """x, y = next(loader): (B, T) int64 on `device`; every row starts with <|bos|>; y is x shifted by one.

    split: "train" (all shards but the last) or "val" (the last). shuffle (default: train only) permutes the
    row-group order per epoch with `seed`. num_epochs=None loops forever; otherwise iteration stops after that
    many passes (the last incomplete batch is dropped; ranks may then yield different batch counts, so a
    distributed evaluation should run a fixed number of steps instead). prefetch=0 runs everything in the
    calling thread (same batches, no threads). tokenizer_threads=None uses min(4, CPU count).

    A fresh loader tokenizes `buffer_size` documents before its first batch (~1-3 s for 1000 Wikipedia
    documents on a small CPU); a short validation pass may want a smaller buffer. Call close() (or use it as
    a context manager) when done: the background threads keep it alive otherwise.
    """

    def __init__(self, tokenizer, data_dir: str | os.PathLike, split: str = "train", batch_size: int = 8,
                 seq_len: int = 256, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 seed: int = 0, buffer_size: int = 1000, tokenizer_threads: int | None = None, prefetch: int = 2,
                 shuffle: bool | None = None, num_epochs: int | None = None):
        if batch_size < 1 or seq_len < 1 or buffer_size < 1:
            raise ValueError("batch_size, seq_len and buffer_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.tokenizer = tokenizer
        self.bos = tokenizer.bos_id
        self.split = split
        self.paths: list[Path] = split_paths(data_dir, split)
        self.groups = row_groups(self.paths)
        if sum(g.num_rows for g in self.groups) == 0:
            raise RaychatError(f"the {split} split of {data_dir} has no rows")
        self.B, self.T = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.seed = seed
        self.buffer_size = buffer_size
        self.tokenizer_threads = tokenizer_threads or min(4, os.cpu_count() or 1)
        self.prefetch = prefetch
        self.shuffle = (split == "train") if shuffle is None else shuffle
        self.num_epochs = num_epochs
        self._unit_cache: dict[int, list[tuple[int, int, int]]] = {}
        self._state = self._initial_state()
        self._pipe: Iterator | None = None

    # ------------------------------------------------------------------ stream of documents
    def _units(self, epoch: int) -> list[tuple[int, int, int]]:
        """This rank's reading units for `epoch`: (index into self.groups, row offset, row stride)."""
        units = self._unit_cache.get(epoch)
        if units is None:
            order = list(range(len(self.groups)))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            if len(order) >= self.world_size:
                units = [(g, 0, 1) for g in order[self.rank::self.world_size]]
            else:  # fewer row groups than ranks: every rank reads every group, striding over rows
                units = [(g, self.rank, self.world_size) for g in order]
            if len(self._unit_cache) > 8:
                self._unit_cache.clear()
            self._unit_cache[epoch] = units
        return units

    def _unit_texts(self, reader: ShardReader, epoch: int, pos: int) -> list[str]:
        g, offset, stride = self._units(epoch)[pos]
        rg = self.groups[g]
        return reader.read(rg.file_index, rg.row_group)[offset::stride]

    def _tokenize(self, texts: list[str]) -> list[np.ndarray]:
        """[<|bos|>, *ids] per text as int32 arrays (one conversion; cropping then slices without copying)."""
        out = []
        for ids in self.tokenizer.encode_batch(texts, num_threads=self.tokenizer_threads):
            a = np.empty(len(ids) + 1, dtype=np.int32)
            a[0] = self.bos
            a[1:] = ids
            out.append(a)
        return out

    def _doc_chunks(self, epoch: int, pos: int, row: int) -> Iterator[list[tuple[tuple[int, int, int], np.ndarray]]]:
        """Tokenized documents from (epoch, pos, row) on, one chunk per unit: [((epoch, pos, row), ids)].
        Empty texts are skipped (they would be a lone <|bos|>)."""
        reader = ShardReader(self.paths)  # own file handles: this runs in the tokenizer thread
        while self.num_epochs is None or epoch < self.num_epochs:
            whole_epoch, num_docs = pos == 0 and row == 0, 0
            units = self._units(epoch)
            while pos < len(units):
                texts = self._unit_texts(reader, epoch, pos)
                rows = [r for r in range(row, len(texts)) if texts[r]]
                if rows:
                    num_docs += len(rows)
                    yield [((epoch, pos, r), ids) for r, ids in zip(rows, self._tokenize([texts[r] for r in rows]))]
                pos, row = pos + 1, 0
            if whole_epoch and num_docs == 0:  # would loop forever
                raise RaychatError(f"rank {self.rank} of {self.world_size} found no non-empty documents in the "
                                   f"{self.split} split")
            epoch, pos, row = epoch + 1, 0, 0

    # ------------------------------------------------------------------ packing
    def _batches(self, state: dict) -> Iterator[tuple[torch.Tensor, dict]]:
        """Packed batches (2, B, T) int64 with the state *after* each batch (what state_dict() returns)."""
        B, T, cap = self.B, self.T, self.T + 1
        inf = float("inf")
        pin = self.device.type == "cuda"
        stats = dict(state["stats"])
        # buffer: `keys` sorted by (length, -seq) for bisect; `docs[seq]` the ids and `refs[seq]` the
        # (epoch, unit, row) reference of each buffered document, both dicts in insertion order
        keys: list[tuple[int, int]] = []
        docs: dict[int, np.ndarray] = {}
        refs: dict[int, tuple[int, int, int]] = {}
        for seq, (ref, ids) in enumerate(self._restore_buffer(state["buffer"])):
            docs[seq], refs[seq] = ids, ref
            bisect.insort(keys, (len(ids), -seq))
        next_seq = len(docs)
        position = (state["epoch"], state["unit_pos"], state["row"])
        chunks = self._doc_chunks(*position)
        if self.prefetch > 0:
            chunks = _Prefetch(chunks, size=2, name="raychat-tokenize")
        chunk: list = []
        ci = 0
        try:
            while True:
                rows = np.empty((B, cap), dtype=np.int64)
                for b in range(B):
                    pos = 0
                    while pos < cap:
                        while len(docs) < self.buffer_size:  # refill, one document at a time (deterministic)
                            if ci == len(chunk):
                                chunk, ci = next(chunks, None), 0
                                if chunk is None:
                                    chunk = []
                                    break
                            ref, ids = chunk[ci]
                            ci += 1
                            docs[next_seq], refs[next_seq] = ids, ref
                            bisect.insort(keys, (len(ids), -next_seq))
                            next_seq += 1
                            position = (ref[0], ref[1], ref[2] + 1)
                        if not docs:
                            return  # finite run (num_epochs) exhausted: drop the incomplete batch
                        remaining = cap - pos
                        # keys sort by (length, -seq): the last entry of a run of equal lengths is the oldest
                        i = bisect.bisect_right(keys, (remaining, inf)) - 1  # largest that fits (oldest on ties)
                        if i < 0:  # nothing fits: crop the shortest (oldest on ties), wasting the least
                            i = bisect.bisect_right(keys, (keys[0][0], inf)) - 1
                        length, neg_seq = keys.pop(i)
                        ids = docs.pop(-neg_seq)
                        del refs[-neg_seq]
                        n = min(length, remaining)
                        rows[b, pos:pos + n] = ids[:n]
                        pos += n
                        stats["tokens_used"] += n
                        stats["docs"] += 1
                        if n < length:
                            stats["tokens_cropped"] += length - n
                            stats["docs_cropped"] += 1
                out = torch.empty((2, B, T), dtype=torch.long, pin_memory=pin)
                out[0].copy_(torch.from_numpy(rows[:, :-1]))
                out[1].copy_(torch.from_numpy(rows[:, 1:]))
                stats["batches"] += 1
                yield out, self._make_state(position, list(refs.values()), stats)
        finally:
            if isinstance(chunks, _Prefetch):
                chunks.close()

    def _restore_buffer(self, refs: list) -> list[tuple[tuple[int, int, int], np.ndarray]]:
        """Re-read and re-tokenize buffered documents from their references (epoch, unit pos, row)."""
        by_unit: dict[tuple[int, int], list[int]] = {}
        for e, p, r in refs:
            by_unit.setdefault((e, p), []).append(r)
        docs = {}
        reader = ShardReader(self.paths)
        for (e, p), rs in by_unit.items():
            texts = self._unit_texts(reader, e, p)
            for r, ids in zip(rs, self._tokenize([texts[r] for r in rs])):
                docs[(e, p, r)] = ids
        return [((e, p, r), docs[(e, p, r)]) for e, p, r in refs]

    # ------------------------------------------------------------------ state
    def _fingerprint(self) -> dict:
        return {"split": self.split, "seed": self.seed, "shuffle": self.shuffle, "rank": self.rank,
                "world_size": self.world_size, "files": [p.name for p in self.paths],
                "row_groups": len(self.groups)}

    def _initial_state(self) -> dict:
        stats = {"tokens_used": 0, "tokens_cropped": 0, "docs": 0, "docs_cropped": 0, "batches": 0}
        return self._make_state((0, 0, 0), [], stats)

    def _make_state(self, position: tuple[int, int, int], refs: list, stats: dict) -> dict:
        # refs stay tuples here (this runs once per batch); state_dict() turns them into lists
        return {"version": STATE_VERSION, **self._fingerprint(), "epoch": position[0], "unit_pos": position[1],
                "row": position[2], "buffer": refs, "stats": dict(stats)}

    def state_dict(self) -> dict:
        """Plain ints and lists (JSON-safe): resuming from it reproduces the following batches exactly."""
        return {**self._state, "buffer": [list(r) for r in self._state["buffer"]], "stats": dict(self._state["stats"])}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise RaychatError(f"loader state version {state.get('version')} not supported (want {STATE_VERSION})")
        mine = self._fingerprint()
        diff = [k for k in mine if state.get(k) != mine[k]]
        if diff:
            raise RaychatError("loader state does not match this loader (" + ", ".join(
                f"{k}: saved {state.get(k)!r} vs now {mine[k]!r}" for k in diff) + "); resume with the same "
                "data, split, seed and world size")
        self.close()
        self._state = {**state, "buffer": [tuple(r) for r in state["buffer"]], "stats": dict(state["stats"])}

    def stats(self) -> dict:
        s = dict(self._state["stats"])
        total = s["tokens_used"] + s["tokens_cropped"]
        s["cropped_fraction"] = s["tokens_cropped"] / total if total else 0.0
        s["epoch"] = self._state["epoch"]
        return s

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> PackedLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pipe is None:
            gen = self._batches(self._state)
            self._pipe = _Prefetch(gen, size=self.prefetch, name="raychat-pack") if self.prefetch > 0 else gen
        out, state = next(self._pipe)
        if self.device.type != "cpu":
            out = out.to(self.device, non_blocking=True)  # pinned source: asynchronous H2D copy
        self._state = state
        return out[0], out[1]

    def close(self) -> None:
        """Stop the background threads (load_state_dict does this too); a later next() restarts from
        state_dict(). Call it when done: the threads keep the loader alive otherwise."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()

    def __enter__(self) -> PackedLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rows_to_batch(rows: list[tuple[list[int], list[int]]], pad_id: int, width: int | None = None):
    """The finetuning stages' batches. Rows of (ids, mask) -> x, y (B, T) int64 with y[t] = ids[t+1] where
    mask[t+1] = 1 and -1 elsewhere (prompt tokens, tool outputs, padding). T = longest row - 1, or `width`."""
    T = width if width is not None else max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        n = min(len(ids) - 1, T)
        ids_t = torch.tensor(ids[: n + 1], dtype=torch.long)
        m = torch.tensor(mask[1: n + 1], dtype=torch.bool)
        x[i, :n] = ids_t[:-1]
        y[i, :n] = torch.where(m, ids_t[1:], torch.full_like(ids_t[1:], -1))
    return x, y
