"""bench_quality's pieces that need no training: reading a peer's (nanochat base_train) log into val bpb per step
and training tokens/s, `--set` parsing, and the `raychat bench quality` registration."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bq(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_quality", None)
    import bench_quality

    return bench_quality


def test_peer_log_gives_val_bpb_and_tokens_per_second(bq, tmp_path):
    # nanochat's line format; steps 0..12, 100 ms each after step 10 except step 12 at 300 ms
    lines = ["Total batch size 2,048 => gradient accumulation steps: 1", "Step 00000 | Validation bpb: 3.628456"]
    for s in range(13):
        dt = 300.0 if s == 12 else (900.0 if s <= 10 else 100.0)
        lines.append(f"step {s:05d}/00013 (1.00%) | loss: 6.0 | lrm: 1.00 | dt: {dt:.2f}ms | tok/sec: 1 | x")
    lines.append("Step 00013 | Validation bpb: 2.214000")
    script = tmp_path / "peer.sh"
    script.write_text("cat <<'LOG'\n" + "\n".join(lines) + "\nLOG\n")
    res = bq.run_peer(f"bash {script}", tmp_path / "peer.log")
    assert res["val_bpb"] == {0: 3.628456, 13: 2.214}
    # steps 11 and 12 count: 2 x 2048 tokens in 0.4 s (nanochat's own total-time rule: steps after the 10th)
    assert res["tokens_per_s"] == pytest.approx(2 * 2048 / 0.4)
    assert res["median_step_s"] == pytest.approx(0.2)


def test_peer_failure_and_unreadable_log_are_clear(bq, tmp_path):
    with pytest.raises(SystemExit, match="peer command failed \\(exit 3\\)"):
        bq.run_peer("echo boom; exit 3", tmp_path / "a.log")
    with pytest.raises(SystemExit, match="could not read val bpb"):
        bq.run_peer("echo nothing useful", tmp_path / "b.log")


def test_set_overrides_are_typed_and_checked(bq):
    assert bq.parse_overrides(["warmup_steps=0", "matrix_lr=0.03", "compile=false", "window_pattern=SSSL"]) == {
        "warmup_steps": 0, "matrix_lr": 0.03, "compile": False, "window_pattern": "SSSL"}
    with pytest.raises(SystemExit, match="FIELD=VALUE with FIELD one of"):
        bq.parse_overrides(["no_such_field=1"])
    with pytest.raises(SystemExit, match="'x' is not a valid int"):
        bq.parse_overrides(["warmup_steps=x"])


def test_registered_as_raychat_bench_quality():
    from raychat.commands.bench import BENCHES

    assert BENCHES["quality"] == ["benchmarks/bench_quality.py"]
