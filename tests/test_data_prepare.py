"""`raychat data prepare`: text/jsonl/parquet in, shuffled shards out (every document exactly once, last shard
validation), bad input refused with a clear message and no partial output; the CLI wrapper; `tok-train` and
`tok-eval` end to end on a prepared corpus."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raychat.cli import main
from raychat.common import RaychatError
from raychat.data import PackedLoader, list_shards, prepare_dataset
from raychat.tokenizer import Tokenizer


def read_all(paths):
    return [t for p in paths for t in pq.read_table(p).column("text").to_pylist()]


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    paras = [f"Paragraph {i} of the text file, with some words: " + "lorem ipsum " * (i % 7) for i in range(40)]
    (src / "a.txt").write_text("\n\n".join(paras) + "\n")
    rows = [{"text": f"json document {i} " + "x" * i, "id": i} for i in range(60)]
    (src / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    with gzip.open(src / "sub" / "c.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps({"text": f"gzipped {i}"}) for i in range(30)))
    pq.write_table(pa.table({"text": [f"parquet row {i}" for i in range(50)] + ["", None]}), src / "sub" / "d.parquet")
    (src / "sub" / "ignored.csv").write_text("not read")
    expected = [p.strip() for p in paras] + [r["text"] for r in rows] + [f"gzipped {i}" for i in range(30)] + \
        [f"parquet row {i}" for i in range(50)]
    return src, expected


def test_prepare_every_document_once(tmp_path, corpus):
    src, expected = corpus
    out = tmp_path / "ds"
    s = prepare_dataset([src], out, shard_chars=1500, val_fraction=0.1, row_group_size=8, progress=False)
    train, val = list_shards(out)
    assert len(train) >= 2 and val.name == s["val_shard"] and val == sorted(out.glob("*.parquet"))[-1]
    assert sorted(read_all(train + [val])) == sorted(expected)
    assert len(read_all([val])) == round(0.1 * len(expected)) == s["num_val_docs"]
    for p in train:
        md = pq.ParquetFile(p).metadata
        assert md.row_group(0).column(0).compression == "ZSTD"
        assert all(md.row_group(g).num_rows <= 8 for g in range(md.num_row_groups))
        texts = read_all([p])
        assert sum(map(len, texts)) <= 1500 or len(texts) == 1
    # shuffled, and deterministic for a seed
    assert read_all(train) != [t for t in expected if t in set(read_all(train))]
    prepare_dataset([src], tmp_path / "ds2", shard_chars=1500, val_fraction=0.1, row_group_size=8, progress=False)
    assert read_all(sorted((tmp_path / "ds2").glob("*.parquet"))) == read_all(train + [val])
    assert json.loads((out / "dataset.json").read_text())["num_docs"] == len(expected)
    # and the loader reads it
    with PackedLoader(Tokenizer.byte_level(), out, "train", batch_size=2, seq_len=32, prefetch=0) as loader:
        x, y = next(loader)
        assert x.shape == (2, 32)


def test_text_units(tmp_path):
    f = tmp_path / "t.md"
    f.write_text("line one\nline two\n\npara two\r\n  \r\nthird\n")
    for unit, n in (("paragraph", 3), ("line", 4), ("file", 1)):
        prepare_dataset([f, f], tmp_path / unit, text_unit=unit, val_fraction=0.5, progress=False)
        assert len(read_all(sorted((tmp_path / unit).glob("*.parquet")))) == 2 * n


@pytest.mark.parametrize("name, content, match", [
    ("empty.txt", b"", "no documents"),
    ("blank.txt", b"\n\n  \n", "no documents"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": broken\n', r"bad.jsonl:2: invalid JSON"),
    ("nofield.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', r"nofield.jsonl:2: no field 'text'"),
    ("num.jsonl", b'{"text": 5}\n', "is int, expected a string"),
    ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"),
    ("broken.jsonl.gz", b"not gzip at all", "unreadable"),
    ("data.csv", b"a,b", "unsupported file type"),
])
def test_bad_input_is_refused_without_output(tmp_path, name, content, match):
    good = tmp_path / "good.txt"
    good.write_text("one document\n\nanother document\n")
    bad = tmp_path / name
    bad.write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(RaychatError, match=match):
        prepare_dataset([good, bad], out, progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dir left behind


def test_other_refusals(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("one\n\ntwo\n")
    with pytest.raises(RaychatError, match="does not exist"):
        prepare_dataset([tmp_path / "missing.txt"], tmp_path / "o1", progress=False)
    (tmp_path / "one.txt").write_text("single document")
    with pytest.raises(RaychatError, match="at least 2 documents"):
        prepare_dataset([tmp_path / "one.txt"], tmp_path / "o2", progress=False)
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(RaychatError, match="no column 'text'"):
        prepare_dataset([tmp_path / "p.parquet"], tmp_path / "o3", progress=False)
    with pytest.raises(RaychatError, match="val-fraction"):
        prepare_dataset([good], tmp_path / "o4", val_fraction=1.0, progress=False)
    # an existing dataset is never overwritten
    prepare_dataset([good], tmp_path / "o5", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "o5").iterdir()}
    with pytest.raises(RaychatError, match="already contains parquet"):
        prepare_dataset([good], tmp_path / "o5", progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "o5").iterdir()} == before


def test_cli_prepare_train_eval(tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    src.write_text("\n".join(json.dumps({"body": " ".join(words[(i + j) % 11] for j in range(30 + i % 50))})
                             for i in range(400)))
    out = tmp_path / "ds"
    assert main(["data", "prepare", str(src), "--out", str(out), "--field", "body", "--val-fraction", "0.05"]) == 0
    assert len(list_shards(out)[0]) == 1
    run = tmp_path / "run"
    assert main(["tok-train", "--data-dir", str(out), "--vocab-size", "300", "--run-dir", str(run)]) == 0
    tok = Tokenizer.load(run / "tokenizer")
    assert tok.vocab_size == 300
    capsys.readouterr()
    assert main(["tok-eval", "--run-dir", str(run), "--data-dir", str(out), "--max-chars", "20000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["sample"]: r for r in result["rows"]}
    assert rows["train"]["bytes_per_token"] > 2.0  # 35 merges on 11 words compress well
    assert (run / "evals" / "tokenizer.json").is_file()
    # user errors: one line, exit 2
    assert main(["data", "prepare", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["tok-eval", "--tokenizer", str(tmp_path / "none"), "--data-dir", str(out)]) == 2
