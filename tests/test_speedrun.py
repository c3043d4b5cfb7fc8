"""The whole pipeline end to end on toy shapes (`--preset smoke`, no Ray): tokenizer -> tokenizer eval ->
pretrain -> base eval -> SFT -> chat eval -> report; a rerun skips every finished stage. The stages are called
directly (typed configs to the train launcher, each command's own parser for the rest), never through the CLI's
argv again."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_smoke_speedrun_runs_every_stage_then_resumes(tmp_path, capsys, monkeypatch):
    import raychat.cli
    from raychat.cli import main

    def reentered(argv=None):
        raise AssertionError(f"the speedrun re-entered the CLI with {argv}")

    monkeypatch.setattr(raychat.cli, "main", reentered)
    run = tmp_path / "run"
    assert main(["speedrun", "--preset", "smoke", "--run-dir", str(run), "--no-ray"]) == 0
    out = capsys.readouterr().out
    assert f"raychat chat --run-dir {run} --stage sft" in out and f"raychat serve --run-dir {run}" in out
    state = json.loads((run / "speedrun.json").read_text())
    stages = ["data", "tokenizer", "tokenizer_eval", "pretrain", "base_eval", "sft", "chat_eval", "report"]
    assert list(state["stages"]) == stages
    assert all(state["stages"][s]["status"] == "ran" for s in stages)
    for path in ("tokenizer/tokenizer.json", "evals/tokenizer.json", "checkpoints/base/step_000012/meta.json",
                 "evals/base.json", "evals/core.csv", "checkpoints/sft", "evals/chat_sft.json",
                 "plots/pretrain_curves.png", "report.md"):
        assert (run / path).exists(), path
    report = (run / "report.md").read_text()
    for section in ("## Tokenizer", "### base (step 12", "### sft", "## Base model: CORE", "## Chat evals (sft)",
                    "## Timings", "Total wall time"):
        assert section in report, section
    assert json.loads((run / "evals" / "chat_sft.json").read_text())["results"].keys() == {"ARC-Easy",
                                                                                          "SpellingBee"}
    # a second run resumes: everything but the data check and the report is skipped
    assert main(["speedrun", "--preset", "smoke", "--run-dir", str(run), "--no-ray"]) == 0
    out = capsys.readouterr().out
    assert out.count("output exists, skipped") == 6
