"""`raychat serve`: user errors are one line and exit 2 before Ray starts; the real command serves a checkpoint
and, on SIGTERM (docker stop, Kubernetes) with a request in flight, finishes that request and exits 0 without
Ray's signal-handler stack dump."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from raychat.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_the_documented_flags(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["serve", "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--run-dir", "--stage", "--checkpoint", "--host", "--port", "--replicas", "--max-replicas",
                 "--api-key", "--max-batch-size", "--max-concurrent-requests", "--enforce-eager"):
        assert flag in out, flag


def test_user_errors_are_one_line_and_exit_2(capsys, tmp_path):
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--checkpoint" in err
    assert main(["serve", "--run-dir", str(tmp_path)]) == 2  # no checkpoint there: refused before Ray starts
    assert "no sft checkpoint found" in capsys.readouterr().err
    assert main(["serve", "--run-dir", str(tmp_path), "--replicas", "0"]) == 2
    assert "replicas" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_command_serves_and_drains_on_sigterm(tiny_run_dir):
    port = free_port()
    env = dict(os.environ, RAYCHAT_API_KEY="cli-key", RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)  # its own local Ray, not the test session's
    proc = subprocess.Popen([sys.executable, "-m", "raychat.cli", "serve", "--run-dir", str(tiny_run_dir),
                             "--port", str(port), "--replica-cpus", "0.5", "--max-batch-size", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        assert any("Ctrl-C to stop" in ln for ln in lines), "".join(lines[-30:])
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/models").status_code == 401  # the key came from RAYCHAT_API_KEY
        r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer cli-key"}, timeout=60,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        body = {"messages": [{"role": "user", "content": "tell me more"}], "max_tokens": 100, "stream": True,
                "temperature": 1.0}
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers={"Authorization": "Bearer cli-key"},
                          json=body, timeout=60) as resp:
            lines = resp.iter_lines()
            assert next(ln for ln in lines if ln).startswith("data: ")  # the request is in flight ...
            proc.send_signal(signal.SIGTERM)
            rest_of_stream = [ln for ln in lines if ln]
        assert rest_of_stream[-1] == "data: [DONE]"  # ... and it was served to the end
        assert '"finish_reason":' in rest_of_stream[-2] and "error" not in rest_of_stream[-2]
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, rest[-2000:]
        assert "SIGTERM: draining" in rest and "shutting down" in rest
        assert "SIGTERM received" not in rest and "Traceback" not in rest, rest[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_enforce_eager_reaches_the_engine(tiny_run_dir, monkeypatch):
    """--enforce-eager -> ServeConfig.enforce_eager -> Engine(cuda_graphs=False); without it the engine decides
    (None: graphs where the model is on CUDA). /v1 info reports whether graphs are in use (never on a CPU)."""
    import argparse

    import raychat.engine
    from raychat.commands import serve as serve_cmd
    from raychat.serve.generation import ChatService

    seen = []
    real = raychat.engine.Engine

    class Recording(real):
        def __init__(self, *a, **kw):
            seen.append(kw.get("cuda_graphs"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(raychat.engine, "Engine", Recording)
    p = argparse.ArgumentParser()
    serve_cmd.add_arguments(p)
    for argv, expected in ((["--enforce-eager"], False), ([], None)):
        cfg = serve_cmd.config_from_args(p.parse_args(["--run-dir", str(tiny_run_dir), "--stage", "sft", *argv]))
        assert cfg.enforce_eager is (expected is False)
        svc = ChatService.load(cfg)
        try:
            assert seen[-1] is expected and svc.info()["cuda_graphs"] is False
        finally:
            svc.shutdown()


def test_compile_decode_reaches_the_cpu_engine_only(tiny_run_dir):
    """--compile-decode -> ServeConfig.compile_decode -> Engine(compile_decode=True) on a CPU replica; a GPU replica
    ignores it (CUDA graphs are its compiled decode). Off by default: compiling costs start-up time."""
    import argparse

    from raychat.commands import serve as serve_cmd

    p = argparse.ArgumentParser()
    serve_cmd.add_arguments(p)
    base = ["--run-dir", str(tiny_run_dir), "--stage", "sft"]
    on = serve_cmd.config_from_args(p.parse_args([*base, "--compile-decode"]))
    off = serve_cmd.config_from_args(p.parse_args(base))
    assert on.compile_decode is True and off.compile_decode is False
    assert on.engine_options("cpu")["compile_decode"] is True
    assert on.engine_options("cuda")["compile_decode"] is False
    assert off.engine_options("cpu")["compile_decode"] is False
