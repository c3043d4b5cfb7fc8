"""`raychat data prepare`: turn a user's corpus (text, jsonl or parquet files) into loader-ready shards.

Output: shuffled parquet shards with one string column `text`, zstd-compressed, in row groups of
`row_group_size` rows; `shard_00000.parquet` ... training, the last shard validation (the loader's
convention), plus `dataset.json` recording inputs and counts. There is always at least one training and one
validation shard.

Safety: every input is read and checked before anything is written (an unreadable file, a jsonl row without
the field, a file with no documents are refused with the file and line named), and shards are written into a
temporary directory that is renamed into place at the end, so a failure never leaves a half-written dataset.

Text files are split into documents by `text_unit`: "paragraph" (blank-line separated, the default),
"line", or "file". Why not always "file": the packing loader crops a document that does not fit and drops the
remainder, so a whole book as one document would mostly be thrown away.

The corpus is shuffled in memory, so it must fit in RAM (about 2x its text size); for corpora of many GB,
prepare it in parts into separate directories or use the downloaded pre-shuffled shard sets.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raychat.common import RaychatError
from raychat.progress import Progress

TEXT_SUFFIXES = {".txt", ".text", ".md"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
TEXT_UNITS = ("paragraph", "line", "file")
_PARAGRAPH_SPLIT = re.compile(r"\n[ \t\r\f\v]*\n")


def _kind(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] in PARQUET_SUFFIXES:
            return None
    last = suffixes[-1] if suffixes else ""
    if last in TEXT_SUFFIXES:
        return "text"
    if last in JSONL_SUFFIXES:
        return "jsonl"
    if last in PARQUET_SUFFIXES:
        return "parquet"
    return None


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given; directories recursively (sorted), keeping supported files only."""
    files: list[Path] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and _kind(q) is not None)
            if not found:
                raise RaychatError(f"input directory {p} contains no .txt/.md/.jsonl/.parquet files (.gz allowed)")
            files.extend(found)
        elif p.is_file():
            if _kind(p) is None:
                raise RaychatError(f"input {p}: unsupported file type; expected .txt/.text/.md, .jsonl/.ndjson "
                                   "(optionally .gz) or .parquet")
            files.append(p)
        else:
            raise RaychatError(f"input {p} does not exist")
    if not files:
        raise RaychatError("no input files given")
    return files


def _open_text(path: Path):
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    return opener(path, "rt", encoding="utf-8", newline="")


def read_documents(path: Path, field: str = "text", text_unit: str = "paragraph") -> list[str]:
    """All non-empty documents of one input file; RaychatError naming the file (and line) on bad input."""
    kind = _kind(path)
    docs: list[str] = []
    try:
        if kind == "text":
            with _open_text(path) as f:
                text = f.read()
            if text_unit == "file":
                pieces = [text]
            elif text_unit == "line":
                pieces = text.splitlines()
            else:
                pieces = _PARAGRAPH_SPLIT.split(text.replace("\r\n", "\n"))
            docs = [s for s in (p.strip() for p in pieces) if s]
        elif kind == "jsonl":
            with _open_text(path) as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise RaychatError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                    if not isinstance(row, dict) or field not in row:
                        raise RaychatError(f"{path}:{lineno}: no field {field!r} (use --field to choose the text "
                                           "field)")
                    value = row[field]
                    if not isinstance(value, str):
                        raise RaychatError(f"{path}:{lineno}: field {field!r} is {type(value).__name__}, "
                                           "expected a string")
                    if value.strip():
                        docs.append(value)
        elif kind == "parquet":
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            if field not in names:
                raise RaychatError(f"{path}: no column {field!r} (columns: {', '.join(names)}); use --field")
            col_type = pf.schema_arrow.field(field).type
            if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
                raise RaychatError(f"{path}: column {field!r} has type {col_type}, expected string")
            for batch in pf.iter_batches(columns=[field]):
                docs.extend(t for t in batch.column(0).to_pylist() if t and t.strip())
        else:
            raise RaychatError(f"input {path}: unsupported file type")
    except UnicodeDecodeError as e:
        raise RaychatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError, pa.ArrowException) as e:
        raise RaychatError(f"{path}: unreadable ({e})") from None
    if not docs:
        raise RaychatError(f"{path}: no documents (empty file, or every row empty)")
    return docs


def split_into_shards(docs: list[str], shard_chars: int) -> list[list[str]]:
    """Consecutive groups of documents of at most `shard_chars` characters (at least one document each)."""
    shards: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for d in docs:
        if cur and size + len(d) > shard_chars:
            shards.append(cur)
            cur, size = [], 0
        cur.append(d)
        size += len(d)
    if cur:
        shards.append(cur)
    return shards


def prepare_dataset(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, field: str = "text",
                    shard_chars: int = 100_000_000, val_fraction: float = 0.01, seed: int = 42,
                    row_group_size: int = 1024, text_unit: str = "paragraph", compression_level: int = 3,
                    progress: bool = True) -> dict:
    """Read, shuffle and shard a corpus into `out_dir`. Returns the summary also written to dataset.json."""
    if not 0.0 < val_fraction < 1.0:
        raise RaychatError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if shard_chars < 1 or row_group_size < 1:
        raise RaychatError("--shard-chars and --row-group-size must be positive")
    if text_unit not in TEXT_UNITS:
        raise RaychatError(f"--text-unit must be one of {', '.join(TEXT_UNITS)}, got {text_unit!r}")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.glob("*.parquet"))):
        raise RaychatError(f"output {out} already contains parquet shards (or is a file); choose a new directory")

    files = expand_inputs(inputs)
    docs: list[str] = []
    bar = Progress(len(files), desc="read", unit="files", disable=not progress)
    for path in files:
        docs.extend(read_documents(path, field=field, text_unit=text_unit))
        bar.update(1, docs=len(docs))
    bar.close()
    if len(docs) < 2:
        raise RaychatError(f"need at least 2 documents (one for training, one for validation), found {len(docs)}")

    random.Random(seed).shuffle(docs)
    n_val = min(max(1, round(val_fraction * len(docs))), len(docs) - 1)
    val_docs, train_docs = docs[:n_val], docs[n_val:]
    shards = split_into_shards(train_docs, shard_chars) + [val_docs]  # the last shard is validation

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.prepare-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; it becomes the output directory
    try:
        bar = Progress(len(shards), desc="write", unit="shards", disable=not progress)
        names = []
        for i, shard in enumerate(shards):
            name = f"shard_{i:05d}.parquet"
            table = pa.table({"text": pa.array(shard, type=pa.string())})
            pq.write_table(table, tmp / name, row_group_size=row_group_size, compression="zstd",
                           compression_level=compression_level)
            names.append(name)
            bar.update(1)
        bar.close()
        summary = {
            "inputs": [str(p) for p in files], "field": field, "text_unit": text_unit, "seed": seed,
            "num_docs": len(docs), "num_chars": sum(map(len, docs)), "num_train_docs": len(train_docs),
            "num_val_docs": len(val_docs), "train_shards": names[:-1], "val_shard": names[-1],
            "row_group_size": row_group_size, "shard_chars": shard_chars,
        }
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
        if not out.exists():
            os.rename(tmp, out)
        else:  # an existing (shard-free) directory: move the finished files in
            for p in sorted(tmp.iterdir()):
                os.replace(p, out / p.name)
            tmp.rmdir()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary
