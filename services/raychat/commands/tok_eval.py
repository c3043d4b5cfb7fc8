"""`raychat tok-eval`: how well the tokenizer compresses different kinds of text.

    raychat tok-eval --run-dir runs/tiny
    raychat tok-eval --tokenizer DIR --data-dir DIR --json

Rows: training and validation text of the dataset, Python source (the standard library's own files), chat
data and math word problems (from ../shared/data when present) and a short multilingual sample. Columns are
chars/token and bytes/token (higher = better compression; bytes/token also converts loss to bits per byte).
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

from raychat.common import RaychatError, resolve_run_dir

# a few sentences written for this table: scripts that byte-level BPE trained on English handles poorly
MULTILINGUAL = """\
Le tokenizer découpe le texte en morceaux fréquents ; les mots rares deviennent plusieurs morceaux.
Der Tokenizer zerlegt Text in häufige Teilstücke, seltene Wörter werden in mehrere Stücke geteilt.
El tokenizador divide el texto en fragmentos frecuentes; las palabras raras se dividen en varias piezas.
Токенизатор разбивает текст на частые фрагменты, а редкие слова делятся на несколько частей.
分词器把文本切成常见的片段，罕见的词会被切成好几段。
トークナイザーはテキストをよく出てくる断片に分け、珍しい単語は複数の断片になります。
토크나이저는 텍스트를 자주 나오는 조각으로 나누고, 드문 단어는 여러 조각으로 나눕니다.
المُرمِّز يقسم النص إلى أجزاء متكررة، والكلمات النادرة تنقسم إلى عدة أجزاء.
"""


def add_arguments(p) -> None:
    p.add_argument("--tokenizer", default=None, help="tokenizer directory; unset = <run-dir>/tokenizer")
    p.add_argument("--run-dir", default=None, help="run directory; also writes <run-dir>/evals/tokenizer.json")
    p.add_argument("--data-dir", default=None,
                   help="dataset directory of parquet shards; unset = the downloaded climbmix shards (data registry), "
                   "else ../shared/data/pretrain")
    p.add_argument("--max-chars", type=int, default=2_000_000, help="characters of text per sample (chars)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def _code_sample(max_chars: int) -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, n = [], 0
    for name in ("json/encoder.py", "argparse.py", "dataclasses.py", "functools.py", "textwrap.py"):
        p = stdlib / name
        if p.is_file() and n < max_chars:
            parts.append(p.read_text(encoding="utf-8"))
            n += len(parts[-1])
    return "\n".join(parts)[:max_chars]


def _jsonl_sample(paths: list[Path], fields, max_chars: int) -> str:
    """Text of the first rows of task files (.jsonl or the Hub's .parquet), up to `max_chars`."""
    from raychat.tasks.common import read_records

    parts, n = [], 0
    for p in paths:
        for row in read_records(p):
            text = fields(row)
            parts.append(text)
            n += len(text)
            if n >= max_chars:
                return "\n\n".join(parts)[:max_chars]
    return "\n\n".join(parts)


def _optional(fn, *args):
    from raychat.data.registry import MissingDataError

    try:
        return fn(*args)
    except MissingDataError:
        return None


def samples(data_dir: Path, max_chars: int) -> dict[str, str]:
    from raychat.data.shards import iter_texts, list_shards

    train, val = list_shards(data_dir)
    out = {"train": "\n".join(iter_texts(train, max_chars=max_chars)),
           "val": "\n".join(iter_texts([val], max_chars=max_chars)),
           "code": _code_sample(max_chars)}
    # chat and math samples from whatever the data registry has (downloaded or the development copy); optional
    from raychat.data import registry

    # SmolTalk's test split (one small file), else what stands in for its train split (the shared chat files)
    chat = _optional(registry.split_files, "smoltalk", "test") or _optional(registry.split_files, "smoltalk", "train")
    if chat is not None:
        files = sorted(chat[0].glob("*.jsonl")) if chat[0].is_dir() else chat
        out["chat"] = _jsonl_sample(files, lambda r: "\n".join(m["content"] for m in r["messages"]
                                                               if isinstance(m["content"], str)), max_chars)
    gsm = _optional(registry.resolve, "gsm8k", "test")
    if gsm is not None:
        out["math"] = _jsonl_sample([gsm], lambda r: r["question"] + "\n" + r["answer"], max_chars)
    out["multilingual"] = MULTILINGUAL
    return {k: v for k, v in out.items() if v}


def evaluate(tok, texts: dict[str, str]) -> list[dict]:
    rows = []
    for name, text in texts.items():
        n_tok = len(tok.encode(text))
        n_bytes = len(text.encode("utf-8"))
        rows.append({"sample": name, "chars": len(text), "bytes": n_bytes, "tokens": n_tok,
                     "chars_per_token": round(len(text) / n_tok, 3), "bytes_per_token": round(n_bytes / n_tok, 3)})
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'sample':<14}{'chars':>12}{'bytes':>12}{'tokens':>12}{'chars/token':>13}{'bytes/token':>13}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['sample']:<14}{r['chars']:>12,}{r['bytes']:>12,}{r['tokens']:>12,}"
                     f"{r['chars_per_token']:>13.3f}{r['bytes_per_token']:>13.3f}")
    return "\n".join(lines)


def run(args) -> int:
    from raychat.data.shards import resolve_data_dir
    from raychat.tokenizer import Tokenizer

    if args.tokenizer is None and args.run_dir is None:
        raise RaychatError("give --tokenizer DIR or --run-dir DIR")
    tok_dir = Path(args.tokenizer).expanduser() if args.tokenizer else Path(args.run_dir).expanduser() / "tokenizer"
    tok = Tokenizer.load(tok_dir)
    rows = evaluate(tok, samples(resolve_data_dir(args.data_dir), args.max_chars))
    result = {"tokenizer": str(tok_dir), "vocab_size": tok.vocab_size, "rows": rows}
    if args.run_dir:
        evals = resolve_run_dir(args.run_dir) / "evals"
        evals.mkdir(parents=True, exist_ok=True)
        (evals / "tokenizer.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"tokenizer {tok_dir} (vocab {tok.vocab_size})")
        print(format_table(rows))
    return 0
