"""CORE: prompt rendering (hand-written from the real task files, and against nanochat's Jinja templates), scored
spans, a fixture bundle with hand-computed accuracies, an oracle model (CORE 1.0), a uniform model (~0),
batched == one-example-at-a-time reference, cropping, distributed ranks, CSV/table, and the bundle downloader."""

from __future__ import annotations

import csv
import http.server
import io
import json
import random
import threading
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import free_port, jittered_gpt

from raychat.common import RaychatError
from raychat.evals.bundle import EVAL_BUNDLE_URL, download_eval_bundle, find_eval_bundle, load_bundle
from raychat.evals.core import (
    evaluate_core,
    format_core_table,
    item_rows,
    load_task_data,
    render_item,
    render_prompts_lm,
    render_prompts_mc,
    render_prompts_schema,
    sample_fewshot,
    write_core_csv,
)
from raychat.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()          # 1 token per byte: spans can be counted by hand
V = TOK.vocab_size


def _lines(shared_data, rel, n):
    with open(shared_data / "eval_bundle" / "eval_data" / rel, encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ rendering


def test_render_mc_by_hand(shared_data):
    copa = _lines(shared_data, "commonsense_reasoning/copa.jsonl", 1)
    assert render_prompts_mc(copa[0], " ", []) == [
        "The man turned on the faucet, therefore the toilet filled with water.",
        "The man turned on the faucet, therefore water flowed from the spout."]
    arc = _lines(shared_data, "world_knowledge/arc_easy.jsonl", 2)
    prompts = render_prompts_mc(arc[1], "\nAnswer: ", [arc[0]])
    assert prompts[1] == (
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\n"
        "Answer: Sunlight is the source of energy for nearly all ecosystems.\n\n"
        "Question: Which piece of safety equipment is used to keep mold spores from entering the respiratory "
        "system?\nAnswer: breathing mask")
    assert len(prompts) == 4 and prompts[3].endswith("system?\nAnswer: lead apron")


def test_render_schema_by_hand(shared_data):
    wsc = _lines(shared_data, "language_understanding/winograd_wsc.jsonl", 1)
    assert render_prompts_schema(wsc[0], " ", []) == [
        "The city councilmen refused the demonstrators a permit because the city councilmen feared violence.",
        "The city councilmen refused the demonstrators a permit because the demonstrators feared violence."]


def test_render_lm_by_hand(shared_data):
    jeo = _lines(shared_data, "world_knowledge/jeopardy_all.jsonl", 2)
    without, with_ = render_prompts_lm(jeo[1], "\nAnswer: ", [jeo[0]])
    assert without == (
        "WORLD HISTORY: This Navy commander flew from a base at Little America to the South Pole & back Nov. "
        "28-29, 1929\nAnswer: Admiral Richard Byrd\n\n"
        "WORLD HISTORY: Accused of accepting bribes, Francis Bacon was imprisoned in this forbidding complex in "
        "1621\nAnswer:")                                    # trailing space stripped: a clean token prefix
    assert with_ == without + " Tower of London"
    wiki = _lines(shared_data, "world_knowledge/bigbench_qa_wikidata.jsonl", 2)
    assert render_prompts_lm(wiki[1], " ", [wiki[0]]) == [
        "The native language of Daniel Schneidermann is French\n\nThe country of Novosibirsk is",
        "The native language of Daniel Schneidermann is French\n\nThe country of Novosibirsk is Russia"]


# nanochat's templates (core_eval.py), rendered with Jinja2 as the reference implementation
_J_MC = """
{%- for example in fewshot_examples -%}
{{ example.query }}{{ continuation_delimiter }}{{ example.choices[example.gold] }}

{% endfor -%}
{{ item.query }}{{ continuation_delimiter }}{{ choice }}""".strip()
_J_SCHEMA = """
{%- for example in fewshot_examples -%}
{{ example.context_options[example.gold] }}{{ continuation_delimiter }}{{ example.continuation }}

{% endfor -%}
{{ context }}{{ continuation_delimiter }}{{ item.continuation }}""".strip()
_J_LM = """
{%- for example in fewshot_examples -%}
{{ example.context | trim }}{{ continuation_delimiter }}{{ example.continuation }}

{% endfor -%}
{{ item.context | trim }}{{ continuation_delimiter }}{% if include_continuation %}{{ item.continuation }}\
{% endif %}""".strip()


def _jinja_prompts(task_type, item, delim, fewshot):
    from jinja2 import Template

    ctx = {"fewshot_examples": fewshot, "continuation_delimiter": delim, "item": item}
    if task_type == "multiple_choice":
        return [Template(_J_MC).render(choice=c, **ctx) for c in item["choices"]]
    if task_type == "schema":
        return [Template(_J_SCHEMA).render(context=c, **ctx) for c in item["context_options"]]
    t = Template(_J_LM)
    return [t.render(include_continuation=False, **ctx).strip(), t.render(include_continuation=True, **ctx)]


def test_rendering_matches_nanochat_templates_on_every_task(shared_data):
    bundle = load_bundle(shared_data / "eval_bundle")
    for spec in bundle.tasks:
        data = load_task_data(spec, 40)
        for idx in range(0, len(data), 7):
            fs = sample_fewshot(data, idx, spec.num_fewshot)
            assert render_item(spec.task_type, data[idx], spec.continuation_delimiter, fs) == \
                _jinja_prompts(spec.task_type, data[idx], spec.continuation_delimiter, fs), (spec.label, idx)


def test_fewshot_sampling_excludes_the_item():
    data = [{"i": i} for i in range(12)]
    for idx in range(12):
        fs = sample_fewshot(data, idx, 10)
        assert len(fs) == 10 and {"i": idx} not in fs
        ref = random.Random(1234 + idx).sample([i for i in range(12) if i != idx], 10)   # nanochat's draw
        assert [e["i"] for e in fs] == ref
    assert sample_fewshot(data, 0, 0) == []
    big = [{"i": i} for i in range(5000)]          # large n: `sample` takes its set-based path
    for idx in (0, 17, 4999):
        ref = random.Random(1234 + idx).sample([i for i in range(5000) if i != idx], 10)
        assert [e["i"] for e in sample_fewshot(big, idx, 10)] == ref


def test_scored_spans_and_cropping():
    # MC: BOS + "q " is the shared prefix, the choices are scored
    rows = item_rows("multiple_choice", ["q xx", "q ab"], TOK, 0, None)
    assert [(r.start, r.end) for r in rows] == [(3, 5), (3, 5)] and rows[0].tokens[0] == TOK.bos_id
    # schema: the shared suffix " z" is scored
    rows = item_rows("schema", ["kk z", "m z"], TOK, 0, None)
    assert [(r.start, r.end) for r in rows] == [(3, 5), (2, 4)]
    # LM: the continuation after the stripped prompt, including its leading space
    rows = item_rows("language_modeling", ["ab:", "ab: cd"], TOK, 0, None)
    assert len(rows) == 1 and (rows[0].start, rows[0].end) == (4, 7)
    # left crop to 4 tokens: indices shift, the continuation stays
    rows = item_rows("language_modeling", ["ab:", "ab: cd"], TOK, 0, 4)
    assert rows[0].tokens == TOK.encode(": cd") and (rows[0].start, rows[0].end) == (1, 4)
    rows = item_rows("language_modeling", ["a", "a bcdefgh"], TOK, 0, 4)   # continuation longer than context
    assert rows[0].tokens == TOK.encode("efgh") and rows[0].start == 1


# ------------------------------------------------------------------------------------------------ fixture bundle


class BigramModel(torch.nn.Module):
    """logits depend on the current token only: 'x' gets +5 everywhere, and after 'k' the space gets +10.
    Per-token losses (V = 265): target 'x' -> log(1 + 264 e^-5) = 1.022; any other target -> log(e^5 + 264)
    = 6.022; ' ' after 'k' -> 0.018. Greedy: ' ' after 'k', else 'x'."""

    def __init__(self):
        super().__init__()
        table = torch.zeros(V, V)
        table[:, ord("x")] += 5.0
        table[ord("k"), ord(" ")] += 10.0
        self.register_buffer("table", table)

    def forward(self, idx):
        return self.table[idx]                                                  # (B, T, V)


MC_ITEMS = [  # prediction = the choice with the most 'x' (lowest mean loss); first on ties
    {"query": "q", "choices": ["xx", "ab"], "gold": 0},          # pred 0  correct
    {"query": "q", "choices": ["ab", "xa"], "gold": 1},          # pred 1  correct
    {"query": "q", "choices": ["xa", "ab"], "gold": 1},          # pred 0  wrong
    {"query": "q", "choices": ["ab", "cd", "xb"], "gold": 0},    # pred 2  wrong      -> acc 0.5
]
SCHEMA_ITEMS = [  # scored: " z"; ' ' is cheap only after 'k'
    {"context_options": ["k", "m"], "continuation": "z", "gold": 0},   # correct
    {"context_options": ["m", "k"], "continuation": "z", "gold": 1},   # correct
    {"context_options": ["m", "k"], "continuation": "z", "gold": 0},   # wrong   -> acc 2/3
]
LM_ITEMS = [  # greedy: ' ' after 'k', else 'x'
    {"context": "k", "continuation": "xx"},    # " xx": correct
    {"context": "k ", "continuation": "xy"},   # context is stripped; 'y' is never greedy: wrong
    {"context": "q", "continuation": "xx"},    # after 'q' the greedy token is 'x', not ' ': wrong
    {"context": "k", "continuation": "x"},     # correct  -> acc 0.5
]


def make_bundle(root: Path, mc_shots: int = 2) -> Path:
    (root / "eval_data" / "t").mkdir(parents=True)
    for name, items in (("mc", MC_ITEMS), ("schema", SCHEMA_ITEMS), ("lm", LM_ITEMS)):
        (root / "eval_data" / "t" / f"{name}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (root / "core.yaml").write_text(f"""icl_tasks:
- label: tiny_mc
  dataset_uri: t/mc.jsonl
  num_fewshot: [{mc_shots}]
  icl_task_type: multiple_choice
- label: tiny_schema
  dataset_uri: t/schema.jsonl
  num_fewshot: [0]
  icl_task_type: schema
- label: tiny_lm
  dataset_uri: t/lm.jsonl
  num_fewshot: [0]
  icl_task_type: language_modeling
- label: tiny_absent
  dataset_uri: t/absent.jsonl
  num_fewshot: [0]
  icl_task_type: language_modeling
""")
    (root / "eval_meta_data.csv").write_text("Eval Task,Task Category,Random baseline\ntiny_mc,x,25\n"
                                             "tiny_schema,x,50\ntiny_lm,x,0\ntiny_absent,x,0\n")
    return root


EXPECTED = {"tiny_mc": 0.5, "tiny_schema": 2 / 3, "tiny_lm": 0.5}
EXPECTED_CENTERED = {"tiny_mc": 1 / 3, "tiny_schema": 1 / 3, "tiny_lm": 0.5}


def test_fixture_bundle_hand_computed(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    r = evaluate_core(BigramModel(), TOK, bundle, progress=False)
    assert r["results"] == pytest.approx(EXPECTED)
    assert r["centered_results"] == pytest.approx(EXPECTED_CENTERED)
    assert r["core_metric"] == pytest.approx((1 / 3 + 1 / 3 + 0.5) / 3)
    assert r["num_tasks"] == 3 and r["num_examples"] == {"tiny_mc": 4, "tiny_schema": 3, "tiny_lm": 4}
    assert any(m.startswith("tiny_absent") for m in r["missing"])
    assert any(m.startswith("hellaswag (not in core.yaml)") for m in r["missing"])
    # batching, cropping (few-shot prompts cut to 6 tokens) and subsets do not change the answers
    for kw in ({"batch_size": 1}, {"max_seq_len": 6}, {"max_batch_tokens": 8}):
        assert evaluate_core(BigramModel(), TOK, bundle, progress=False, **kw)["results"] == \
            pytest.approx(EXPECTED), kw
    r2 = evaluate_core(BigramModel(), TOK, bundle, progress=False, tasks=["tiny_lm"], max_per_task=2)
    assert list(r2["results"]) == ["tiny_lm"] and r2["num_examples"]["tiny_lm"] == 2
    with pytest.raises(RaychatError, match="unknown or missing CORE task"):
        evaluate_core(BigramModel(), TOK, bundle, progress=False, tasks=["tiny_absent"])


def test_table_and_csv(tmp_path):
    r = evaluate_core(BigramModel(), TOK, make_bundle(tmp_path / "b"), progress=False)
    table = format_core_table(r)
    assert "tiny_schema" in table and "0.6667" in table and "CORE (mean centered, 3 tasks)" in table
    assert "missing: tiny_absent" in table
    path = write_core_csv(r, tmp_path / "out" / "core.csv")
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    assert [row["task"] for row in rows] == ["tiny_mc", "tiny_schema", "tiny_lm", "CORE"]
    assert float(rows[1]["accuracy"]) == pytest.approx(2 / 3, abs=1e-6)
    assert float(rows[-1]["centered"]) == pytest.approx(r["core_metric"], abs=1e-6)
    assert [p.name for p in path.parent.iterdir()] == ["core.csv"]       # no temp file left behind


# ------------------------------------------------------------------------------------------------ real bundle


class OracleModel(torch.nn.Module):
    """Peeks at the next token, but only on rows that are the gold continuation: gold rows have ~0 loss and
    exact greedy matches, every other row is uniform. It must score CORE = 1."""

    def __init__(self, gold_rows: set[tuple[int, ...]]):
        super().__init__()
        self.gold = gold_rows

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, V)
        for b in range(B):
            row = idx[b].tolist()
            while row and row[-1] == TOK.bos_id:                # right padding
                row.pop()
            if tuple(row) in self.gold:
                nxt = idx[b, 1:len(row)]
                logits[b, torch.arange(len(row) - 1), nxt] = 30.0
        return logits


@pytest.mark.slow
def test_oracle_scores_one_uniform_scores_near_zero(shared_data):
    bundle = load_bundle(shared_data / "eval_bundle")
    assert len(bundle.tasks) == 20
    assert {m.split(" ")[0] for m in bundle.missing} == {"squad", "coqa"}
    max_seq_len, n = 256, 6
    gold = set()
    for spec in bundle.tasks:
        data = load_task_data(spec, n)
        for idx, item in enumerate(data):
            prompts = render_item(spec.task_type, item, spec.continuation_delimiter,
                                  sample_fewshot(data, idx, spec.num_fewshot))
            rows = item_rows(spec.task_type, prompts, TOK, idx, max_seq_len)
            gold.add(tuple(rows[0 if spec.task_type == "language_modeling" else item["gold"]].tokens))
    r = evaluate_core(OracleModel(gold), TOK, shared_data / "eval_bundle", max_per_task=n,
                      max_seq_len=max_seq_len, progress=False)
    assert all(a == 1.0 for a in r["results"].values()), r["results"]
    assert r["core_metric"] == pytest.approx(1.0)

    class Uniform(torch.nn.Module):
        def forward(self, idx):
            return torch.zeros(*idx.shape, V)

    r = evaluate_core(Uniform(), TOK, shared_data / "eval_bundle", max_per_task=12, max_seq_len=128,
                      progress=False)
    assert abs(r["core_metric"]) < 0.1
    for spec in bundle.tasks:   # greedy token 0 never matches; MC agrees with the one-item-at-a-time reference
        ref = _reference_accuracy(Uniform(), spec, load_task_data(spec, 12), 128)
        assert r["results"][spec.label] == pytest.approx(ref), spec.label
        if spec.task_type == "language_modeling":
            assert ref == 0.0


def _reference_accuracy(model, spec, data, max_seq_len):
    """nanochat's loop: one item per forward, BOS padding, mean loss / exact match over the span."""
    correct = 0
    for idx, item in enumerate(data):
        prompts = render_item(spec.task_type, item, spec.continuation_delimiter,
                              sample_fewshot(data, idx, spec.num_fewshot))
        rows = item_rows(spec.task_type, prompts, TOK, idx, max_seq_len)
        T = max(len(r.tokens) for r in rows)
        x = torch.full((len(rows), T), TOK.bos_id)
        for i, r in enumerate(rows):
            x[i, :len(r.tokens)] = torch.tensor(r.tokens)
        with torch.no_grad():
            logits = model(x)
        losses = F.cross_entropy(logits.view(-1, V), torch.roll(x, -1, 1).view(-1), reduction="none").view(x.shape)
        preds = logits.argmax(-1)
        if spec.task_type == "language_modeling":
            r = rows[0]
            correct += bool((preds[0, r.start - 1:r.end - 1] == x[0, r.start:r.end]).all())
        else:
            means = [losses[i, r.start - 1:r.end - 1].mean().item() for i, r in enumerate(rows)]
            correct += means.index(min(means)) == item["gold"]
    return correct / len(data)


@pytest.mark.slow
def test_batched_matches_one_item_at_a_time(shared_data):
    from raychat.model import GPTConfig

    cfg = GPTConfig(sequence_len=128, vocab_size=V, n_layer=2, n_head=2, n_kv_head=2, n_embd=64, window_pattern="L")
    model = jittered_gpt(cfg, 0.05).eval()  # predictions that differ by position
    labels = ["copa", "winogrande", "lambada_openai", "arc_easy"]
    r = evaluate_core(model, TOK, shared_data / "eval_bundle", max_per_task=10, tasks=labels, progress=False)
    assert r["results"]["copa"] not in (0.0, 1.0)
    for spec in load_bundle(shared_data / "eval_bundle").tasks:
        if spec.label in labels:
            ref = _reference_accuracy(model, spec, load_task_data(spec, 10), 128)
            assert r["results"][spec.label] == pytest.approx(ref), spec.label


# ------------------------------------------------------------------------------------------------ distributed


def _dist_worker(rank, world, port, bundle, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # rank 0 decides which bundle every rank uses (rank 1 alone would pick a folder that does not exist)
        chosen = find_eval_bundle(bundle if rank == 0 else Path(out_dir) / "nowhere", download=rank == 0)
        assert chosen == Path(bundle)
        r = evaluate_core(BigramModel(), TOK, chosen, progress=False)
        Path(out_dir, f"{rank}.json").write_text(json.dumps(r["results"]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_with_one(tmp_path):
    import torch.multiprocessing as mp

    bundle = make_bundle(tmp_path / "b")
    port = free_port()
    mp.start_processes(_dist_worker, args=(2, port, str(bundle), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == pytest.approx(EXPECTED)


# ------------------------------------------------------------------------------------------------ bundle download


def _zip_bundle(src: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, Path("eval_bundle") / p.relative_to(src))   # the official zip's top folder
    return buf.getvalue()


@pytest.fixture
def http_server():
    """A local HTTP server: routes {path: bytes}; records the paths requested."""
    routes, hits = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            body = routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", routes, hits
    srv.shutdown()
    srv.server_close()


def test_download_bundle_from_local_server(tmp_path, http_server):
    base, routes, hits = http_server
    routes["/eval_bundle.zip"] = _zip_bundle(make_bundle(tmp_path / "src"))
    routes["/not_a_zip"] = b"<html>nope</html>"
    dest = tmp_path / "cache" / "eval_bundle"
    got = download_eval_bundle(dest, url=base + "/eval_bundle.zip")
    assert got == dest and (dest / "core.yaml").is_file()
    assert {t.label for t in load_bundle(dest).tasks} == {"tiny_mc", "tiny_schema", "tiny_lm"}
    assert evaluate_core(BigramModel(), TOK, dest, progress=False)["results"] == pytest.approx(EXPECTED)
    download_eval_bundle(dest, url=base + "/eval_bundle.zip")            # already there: no second request
    assert hits == ["/eval_bundle.zip"]
    assert [p.name for p in dest.parent.iterdir()] == ["eval_bundle"]   # no temp folders left
    with pytest.raises(RaychatError, match="is not a zip file"):
        download_eval_bundle(tmp_path / "b2", url=base + "/not_a_zip")
    with pytest.raises(RaychatError, match="could not get the CORE eval bundle.*HTTP 404"):
        download_eval_bundle(tmp_path / "b3", url=base + "/missing.zip")
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b3").exists()
    # find_eval_bundle: explicit dir, download into it, or a clear error
    assert find_eval_bundle(dest) == dest
    assert find_eval_bundle(tmp_path / "b4", download=True, url=base + "/eval_bundle.zip") == tmp_path / "b4"
    with pytest.raises(RaychatError, match="no CORE eval bundle"):
        find_eval_bundle(tmp_path / "b5")
    assert EVAL_BUNDLE_URL.endswith("/eval_bundle.zip") and EVAL_BUNDLE_URL.startswith("https://")


def test_find_eval_bundle_order(tmp_path, http_server, monkeypatch):
    base, routes, hits = http_server
    monkeypatch.delenv("RAYCHAT_DATA_DIR")                   # the data folder defaults to RAYCHAT_HOME/data
    monkeypatch.setenv("RAYCHAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAYCHAT_SHARED_DATA", str(tmp_path / "shared"))
    with pytest.raises(RaychatError, match="no CORE eval bundle found"):
        find_eval_bundle()
    shared = make_bundle(tmp_path / "shared" / "eval_bundle")
    assert find_eval_bundle() == shared                                   # no cache, no download: shared copy
    assert find_eval_bundle(download=True, url=base + "/gone.zip") == shared   # download failed: fall back
    routes["/eval_bundle.zip"] = _zip_bundle(shared)
    cache = tmp_path / "home" / "data" / "eval_bundle"
    assert find_eval_bundle(download=True, url=base + "/eval_bundle.zip") == cache
    assert find_eval_bundle() == cache                                    # the cached official bundle wins


def test_bad_bundles(tmp_path):
    with pytest.raises(RaychatError, match="not a CORE eval bundle"):
        load_bundle(tmp_path)
    b = make_bundle(tmp_path / "b")
    (b / "eval_meta_data.csv").write_text("Eval Task,Random baseline\ntiny_mc,25\n")
    with pytest.raises(RaychatError, match="no 'Random baseline' for task 'tiny_schema'"):
        load_bundle(b)
