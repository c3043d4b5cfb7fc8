"""`raychat selftest` on a CPU box runs the CPU subset, passes it, and says why each GPU item was skipped."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_selftest_cpu_subset(capsys):
    from raychat.cli import main

    rc = main(["selftest", "--quick", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] is True
    items = {r["item"]: r for r in out["items"]}
    for name in ("attention backends", "training step", "collectives", "kv-cached decode"):
        assert items[name]["status"] == "pass", items[name]
    assert items["fp8 step"]["status"] == "skip" and "CUDA" in items["fp8 step"]["detail"]
    assert items["torch.compile"]["status"] == "skip" and items["torch.compile"]["detail"]
    assert items["ray train run"]["detail"] == "--quick"
    assert items["cuda graphs decode"]["status"] == "skip" and "CUDA" in items["cuda graphs decode"]["detail"]
    assert "loss" in items["training step"]["detail"]
