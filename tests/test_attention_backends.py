"""Attention backend loading on a (faked) GPU: a backend that fails to load says why, once, and the automatic
choice falls back with that reason; a requested backend that cannot load raises with it. Runs on a CPU: the
GPU capability and the imports are faked."""

from __future__ import annotations

import builtins
import sys

import pytest
import torch

from raychat.model import attention


@pytest.fixture
def fake_hopper(monkeypatch):
    """A process that believes it has an SM90 GPU and whose flash imports all fail, each with its own error."""
    real_import = builtins.__import__
    calls = []

    def failing_import(name, *args, **kwargs):
        if name in ("flash_attn_interface", "flash_attn", "kernels"):
            calls.append(name)
            if name == "kernels":
                raise OSError("hub unreachable (offline)")
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for mod in ("flash_attn_interface", "flash_attn", "flash_attn.cute", "kernels"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.delenv("RAYCHAT_ATTN", raising=False)
    attention.select_backend.cache_clear()
    yield calls
    attention.select_backend.cache_clear()


def test_failed_loads_are_reported_once_and_explain_the_fallback(fake_hopper, capsys):
    backend, why = attention.select_backend("cuda")
    assert backend == "sdpa"
    errors = attention.load_errors()
    assert set(errors) == {"fa3", "fa4", "fa2"}
    assert "flash_attn_interface: ImportError" in errors["fa3"]
    assert "kernels hub: OSError: hub unreachable" in errors["fa3"]
    assert "flash_attn.cute" in errors["fa4"] and "flash_attn: ImportError" in errors["fa2"]
    assert "hub unreachable" in why and why.startswith("SM90: torch SDPA")
    err = capsys.readouterr().err
    for b in ("fa3", "fa4", "fa2"):
        assert err.count(f"[attention] {b} not available:") == 1
    # asked again (another request key, e.g. a forward's lookup): no second import attempt, nothing re-printed
    n_calls = len(fake_hopper)
    attention.select_backend("cuda", "sdpa")
    assert attention._load_fa3() is None and len(fake_hopper) == n_calls
    assert capsys.readouterr().err == ""


def test_requested_backend_that_cannot_load_raises_with_the_reason(fake_hopper):
    with pytest.raises(RuntimeError, match=r"fa4 did not load \(flash_attn\.cute: ImportError"):
        attention.select_backend("cuda", "fa4")
    with pytest.raises(RuntimeError, match="hub unreachable"):
        attention.select_backend("cuda", "fa3")


def test_fa4_needs_sm90(monkeypatch, fake_hopper):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.raises(RuntimeError, match="fa4 needs SM90"):
        attention.select_backend("cuda", "fa4")


def test_gpu_decode_check_refuses_without_a_gpu(monkeypatch):
    """The bf16 CUDA-graph decode check (benchmarks/gpu_decode_check.py) says why it cannot run on a CPU."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sys.modules.pop("gpu_decode_check", None)
    import gpu_decode_check

    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu_decode_check.main([])
