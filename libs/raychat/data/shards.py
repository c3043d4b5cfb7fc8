"""A dataset is a directory of parquet shards with a string column `text`; sorted by name, the last shard is
the validation split and all others are training data (nanochat's convention, so its shard sets work as is).

Shards are read one row group at a time: a row group is the unit of distributed slicing in the loader (rank r
of w reads row groups r, r+w, ...), so it must be small enough to give every rank work (1,024 rows by default
in `raychat data prepare`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from raychat.common import RaychatError

TEXT_COLUMN = "text"


def default_data_dir() -> Path | None:
    """The pretraining shards the data registry knows (downloaded ClimbMix, else the shared Wikipedia shards)."""
    from raychat.data.registry import MissingDataError, shard_dir

    try:
        return shard_dir("climbmix")
    except MissingDataError:
        return None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The given directory, else the registry's pretraining shards, else a RaychatError that explains how to get
    data."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from raychat.data.registry import shard_dir

    return shard_dir("climbmix")


def list_shards(data_dir: str | os.PathLike) -> tuple[list[Path], Path]:
    """-> (train shard paths, validation shard path). Needs at least two `*.parquet` files.

    Partial downloads (`*.parquet.part`) and temp files are ignored: only complete, renamed shards count.
    """
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise RaychatError(f"data directory {d} does not exist")
    paths = sorted(p for p in d.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".") and p.is_file())
    if len(paths) < 2:
        raise RaychatError(f"data directory {d} has {len(paths)} parquet shard(s); need at least 2 "
                           "(the last one is the validation split)")
    return paths[:-1], paths[-1]


def split_paths(data_dir: str | os.PathLike, split: str) -> list[Path]:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    train, val = list_shards(data_dir)
    return train if split == "train" else [val]


@dataclass(frozen=True)
class RowGroup:
    """One row group of one shard: the unit of reading and of distributed slicing."""
    file_index: int
    row_group: int
    num_rows: int


def row_groups(paths: list[Path]) -> list[RowGroup]:
    """All row groups of the shards, in file order. Checks the `text` column exists (clear error if not)."""
    out = []
    for i, p in enumerate(paths):
        try:
            md = pq.ParquetFile(p).metadata
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise RaychatError(f"unreadable parquet shard {p}: {e}") from None
        names = md.schema.names
        if TEXT_COLUMN not in names:
            raise RaychatError(f"shard {p} has no '{TEXT_COLUMN}' column (columns: {', '.join(names)})")
        out.extend(RowGroup(i, g, md.row_group(g).num_rows) for g in range(md.num_row_groups))
    return out


class ShardReader:
    """Reads the text of row groups; keeps ParquetFile handles open (re-opening costs a footer parse each time)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self._files: dict[int, pq.ParquetFile] = {}

    def read(self, file_index: int, row_group: int) -> list[str]:
        pf = self._files.get(file_index)
        if pf is None:
            pf = self._files[file_index] = pq.ParquetFile(self.paths[file_index])
        col = pf.read_row_group(row_group, columns=[TEXT_COLUMN]).column(TEXT_COLUMN)
        return [t if t is not None else "" for t in col.to_pylist()]


def iter_texts(paths: list[Path], max_chars: int | None = None, doc_cap: int | None = None):
    """Documents of the shards in order, each cut to `doc_cap` chars, stopping after `max_chars` chars in total
    (tokenizer training: a bounded, representative sample without reading the whole corpus)."""
    total = 0
    reader = ShardReader(paths)
    for rg in row_groups(paths):
        for text in reader.read(rg.file_index, rg.row_group):
            if doc_cap is not None:
                text = text[:doc_cap]
            if max_chars is not None and total + len(text) > max_chars:
                text = text[:max_chars - total]
            if text:
                total += len(text)
                yield text
            if max_chars is not None and total >= max_chars:
                return


def estimate_text_bytes(paths: list[Path]) -> int:
    """Uncompressed size of the `text` column from parquet metadata (no data read): a cheap estimate of the
    corpus size for progress bars."""
    total = 0
    for p in paths:
        md = pq.ParquetFile(p).metadata
        j = md.schema.names.index(TEXT_COLUMN) if TEXT_COLUMN in md.schema.names else 0
        total += sum(md.row_group(g).column(j).total_uncompressed_size for g in range(md.num_row_groups))
    return total
