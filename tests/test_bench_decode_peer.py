"""bench_decode_peer's pieces that need no nanochat environment: the flags, the peer driver's protocol (run here
against a stand-in nanochat package), reading its output, best-of selection, the token cross-check, and the
`raychat bench decode-peer` registration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bd(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_decode_peer", None)
    import bench_decode_peer

    return bench_decode_peer


def test_flags_parse_and_are_checked(bd):
    a = bd.parse_args(["--threads", "1,2", "--batches", "1,8", "--base-dir", "/b", "--modes", "compiled"])
    assert (a.threads, a.batches, a.modes, a.tokens) == ([1, 2], [1, 8], ["compiled"], 224)
    assert a.checkpoint == str(Path("/b/base_checkpoints/d4"))
    for bad in (["--batches", "1,x"], ["--threads", "0"], ["--modes", "fast"], ["--tokens", "0"]):
        with pytest.raises(SystemExit):
            bd.parse_args(bad)


def test_peer_output_is_read_from_the_last_marked_line(bd):
    run = {"batch": 1, "seconds": 0.5, "steps": 100, "tokens": [1, 2]}
    text = "Building model with config: {...}\nPEER_RESULT {\"runs\": []}\nPEER_RESULT " + json.dumps(
        {"runs": [run], "torch": "2.13"}) + "\n"
    assert bd.parse_peer_output(text)["runs"] == [run]
    with pytest.raises(SystemExit, match="printed no PEER_RESULT line"):
        bd.parse_peer_output("Traceback ...\n")
    with pytest.raises(SystemExit, match="no usable runs"):
        bd.parse_peer_output('PEER_RESULT {"runs": [{"batch": 1}]}')


def test_best_runs_tokens_per_second_and_first_difference(bd):
    runs = [{"batch": 8, "seconds": 2.0, "steps": 100}, {"batch": 8, "seconds": 1.0, "steps": 100},
            {"batch": 1, "seconds": 0.3, "steps": 50}]
    best = bd.best_runs(runs)
    assert best[8]["seconds"] == 1.0 and bd.tokens_per_s(best[8]) == pytest.approx(800.0)
    assert bd.tokens_per_s(best[1]) == pytest.approx(50 / 0.3)
    assert bd.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert bd.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert bd.first_difference([1, 2], [1, 2, 3]) == 2


def test_peer_driver_times_only_the_decode_steps(bd, tmp_path):
    """The driver against a stand-in nanochat whose generate yields B-wide columns 10, 11, 12, ...: the first
    column (the prefill's token) is taken before the clock starts, then exactly --tokens more."""
    pkg = tmp_path / "nanochat"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "checkpoint_manager.py").write_text(
        "import torch\nclass M:\n    cos = torch.zeros(1)\n"
        "def build_model(d, step, device, phase):\n    assert step == 300\n    return M(), None, {}\n")
    (pkg / "engine.py").write_text(
        "class Engine:\n    def __init__(self, model, tok):\n        pass\n"
        "    def generate(self, prompt, num_samples, max_tokens, temperature):\n"
        "        assert temperature == 0.0 and max_tokens == 6\n"
        "        for i in range(max_tokens):\n            yield [10 + i] * num_samples, [1] * num_samples\n")
    spec = {"checkpoint": "x", "step": 300, "tokens": 5, "batches": [1, 3], "threads": 1, "repeats": 2,
            "prompt": [0, 4], "logits_out": None}
    proc = subprocess.run([sys.executable, "-c", bd.PEER_DRIVER, json.dumps(spec)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    res = bd.parse_peer_output(proc.stdout)
    assert [r["batch"] for r in res["runs"]] == [1, 3, 1, 3]
    assert all(r["steps"] == 5 and r["tokens"] == [10, 11, 12, 13, 14, 15] for r in res["runs"])
    assert res["threads"] == 1


def test_registered_as_raychat_bench_decode_peer():
    from raychat.commands.bench import BENCHES

    assert BENCHES["decode-peer"] == ["benchmarks/bench_decode_peer.py"]


def test_bench_all_leaves_out_the_peer_benchmark(monkeypatch):
    """`raychat bench all` must run on a box without nanochat: decode-peer runs only by name."""
    import argparse

    import raychat.commands.bench as bench

    ran = []

    class FailedRun:  # every script "fails" at once, so run() goes on to the next one and nothing is recorded
        stdout = ()

        def wait(self):
            return 1

    monkeypatch.setattr(bench.subprocess, "Popen", lambda argv, **kw: ran.append(argv[1]) or FailedRun())
    monkeypatch.setattr(bench, "BENCHES", {"train": ["benchmarks/bench_train.py"], "quality":
                                           ["benchmarks/bench_quality.py"],
                                           "decode-peer": ["benchmarks/bench_decode_peer.py"]})
    for which, want in (("all", ["benchmarks/bench_train.py", "benchmarks/bench_quality.py"]),
                        ("decode-peer", ["benchmarks/bench_decode_peer.py"])):
        ran.clear()
        try:
            bench.run(argparse.Namespace(which=which, no_record=True, passthrough=[]))
        except Exception as e:  # the failed runs are reported at the end
            assert "fail" in str(e).lower(), e
        assert ran == want
