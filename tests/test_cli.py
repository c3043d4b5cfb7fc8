"""The console script: help for every command, one-line errors with exit 2 for bad input, info and model-card."""

import json
import subprocess
import sys

import pytest

from raychat.cli import COMMANDS, main


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert f"raychat {name}" in out, name


def test_user_errors_are_one_line_without_traceback():
    r = subprocess.run([sys.executable, "-m", "raychat.cli", "model-card", "--depth", "0"], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("raychat: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "raychat.cli", "pretrain", "--no-ray", "--depth", "-3"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "depth must be > 0" in r.stderr and "Traceback" not in r.stderr


def test_report_on_missing_run_dir_is_refused(tmp_path, capsys):
    assert main(["report", "--run-dir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_model_card_json_matches_library(capsys):
    from raychat.model import config_for_depth, model_card

    assert main(["model-card", "--depth", "6", "--vocab-size", "8192", "--seq-len", "512", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(json.dumps(model_card(config_for_depth(6, vocab_size=8192, seq_len=512))))
    assert out["config"]["n_embd"] == 384


def test_info_reports_device_dtype_and_backend(capsys):
    assert main(["info", "--json", "--no-gemm"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["dtype"] == "float32" and out["attention_backend"] == "sdpa"
    assert "fp32" in out["device_reason"] and out["torch"].startswith("2.13")


def test_bad_override_of_a_config_field_is_one_line(capsys):
    assert main(["pretrain", "--no-ray", "--fp8", "e5m2"]) == 2
    assert "fp8 must be" in capsys.readouterr().err
