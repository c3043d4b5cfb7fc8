"""model/gemm.py: fp32 CPU products through oneDNN or torch's BLAS, chosen once per process.

Every product is checked against float64 on both libraries (the choice is forced with RAYCHAT_CPU_GEMM), the
choice itself with fake timings, and the compiled paths against eager."""

import pytest
import torch
import torch.nn.functional as F

from raychat.model import gemm
from raychat.optim.muon import polar_express


@pytest.fixture(params=["onednn", "aten"])
def lib(request, monkeypatch):
    monkeypatch.setenv("RAYCHAT_CPU_GEMM", request.param)
    monkeypatch.setattr(gemm, "_CHOSEN", {})
    return request.param


@pytest.fixture
def calls(monkeypatch):
    """Counts the products that reach oneDNN."""
    seen = []
    real = gemm._onednn_mm_nt

    def spy(a, b):
        seen.append((tuple(a.shape), tuple(b.shape)))
        return real(a, b)

    monkeypatch.setattr(gemm, "_onednn_mm_nt", spy)
    return seen


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _close(got, want64):
    """fp32 round-off of sums over up to ~2,000 products: under 1e-5 of the result's scale (bf16 or tf32 math would
    be off by 1e-3 and more)."""
    assert got.dtype == torch.float32
    err = (got.double() - want64).abs().max().item()
    assert err <= 1e-5 * want64.abs().max().item(), err


@pytest.mark.parametrize("m,p,n", [(512, 256, 1024), (64, 1024, 256), (300, 64, 700)])
def test_products_equal_float64(lib, calls, m, p, n):
    a, b = _rand(m, p, seed=1), _rand(n, p, seed=2)
    _close(gemm.mm_nt(a, b), a.double() @ b.double().T)
    c = _rand(p, n, seed=3)
    _close(gemm.mm_nn(a, c), a.double() @ c.double())
    d = _rand(m, n, seed=4)  # a.T @ d: (p, n), both orientations of the short side
    _close(gemm.mm_tn(a, d), a.double().T @ d.double())
    _close(gemm.mm_tn(d, a), d.double().T @ a.double())
    assert len(calls) == (4 if lib == "onednn" else 0), calls


def test_small_products_and_other_dtypes_stay_with_torch(monkeypatch, calls):
    monkeypatch.setenv("RAYCHAT_CPU_GEMM", "onednn")
    monkeypatch.setattr(gemm, "_CHOSEN", {})
    x, w = _rand(8, 256), _rand(256, 256)  # 8 x 256 x 256 = 2^19 multiply-adds < MIN_WORK: a decode step's GEMV
    assert 8 * 256 * 256 < gemm.MIN_WORK
    assert torch.equal(gemm.linear(x, w), F.linear(x, w))
    big, wb = _rand(512, 256), _rand(1024, 256)
    assert torch.equal(gemm.mm_nt(big.double(), wb.double()), big.double() @ wb.double().T)  # float64: torch
    assert calls == []
    gemm.mm_nt(big, wb)
    assert calls == [((512, 256), (1024, 256))]


def test_linear_forward_and_gradients_equal_float64(lib):
    x = _rand(4, 128, 256, seed=5).requires_grad_()
    w = (_rand(1024, 256, seed=6) * 0.05).requires_grad_()
    gy = _rand(4, 128, 1024, seed=7)
    y = gemm.linear(x, w)
    assert y.shape == (4, 128, 1024)
    y.backward(gy)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64 = F.linear(x64, w64)
    y64.backward(gy.double())
    _close(y.detach(), y64.detach())
    _close(x.grad, x64.grad)
    _close(w.grad, w64.grad)


def test_compiled_linear_equals_eager(lib):
    torch._dynamo.reset()
    x, w = _rand(256, 256, seed=8), (_rand(1024, 256, seed=9) * 0.05)

    def loss(x, w):
        return gemm.linear(torch.relu(x), w).square().mean()

    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss(xs, ws).backward()
    xc, wc = x.clone().requires_grad_(), w.clone().requires_grad_()
    torch.compile(loss, fullgraph=True, dynamic=False)(xc, wc).backward()  # fullgraph: the custom op traces
    assert torch.allclose(xc.grad, xs.grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(wc.grad, ws.grad, rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()


def test_polar_express_per_matrix_equals_batched(monkeypatch):
    """The oneDNN path runs Polar Express one matrix at a time; it must give the batched torch path's result."""
    G = _rand(3, 256, 512, seed=10)
    outs = {}
    for choice in ("aten", "onednn"):
        monkeypatch.setenv("RAYCHAT_CPU_GEMM", choice)
        monkeypatch.setattr(gemm, "_CHOSEN", {})
        outs[choice] = polar_express(G)
    assert gemm.uses_onednn(G, G, 256 * 256 * 512)
    ref = polar_express(G.double())  # float64, torch's batched products
    for out in outs.values():
        assert (out.double() - ref).abs().max().item() < 1e-4


def test_a_model_training_step_goes_through_onednn_and_matches_the_blas(monkeypatch, calls):
    """The wiring: GPT's Linear layers (forward and backward), the chunked CPU head and Polar Express inside
    MuonAdamW all reach oneDNN when it is chosen, and the step's loss and updated weights match the BLAS path."""
    from raychat.model import GPT, GPTConfig
    from raychat.optim import build_optimizer

    cfg = GPTConfig(sequence_len=64, vocab_size=1024, n_layer=2, n_head=2, n_kv_head=2, n_embd=128)
    idx = torch.randint(0, 1024, (4, 64), generator=torch.Generator().manual_seed(11))
    results = {}
    for choice in ("aten", "onednn"):
        monkeypatch.setenv("RAYCHAT_CPU_GEMM", choice)
        monkeypatch.setattr(gemm, "_CHOSEN", {})
        torch.manual_seed(0)
        with torch.device("meta"):
            model = GPT(cfg)
        model.to_empty(device="cpu")
        model.init_weights()
        with torch.no_grad():  # the output projections start at 0; give every product a non-trivial operand
            for b in model.blocks:
                b.attn.c_proj.weight.normal_(0, 0.02)
                b.mlp.c_proj.weight.normal_(0, 0.02)
        opt = build_optimizer(model)
        calls.clear()
        loss = model(idx[:, :-1].contiguous(), idx[:, 1:].contiguous())
        forward_calls = len(calls)
        loss.backward()
        backward_calls = len(calls) - forward_calls
        grads = [model.lm_head.weight.grad.clone(), model.blocks[1].mlp.c_fc.weight.grad.clone()]
        opt.step()
        optim_calls = len(calls) - forward_calls - backward_calls
        results[choice] = (loss.item(), model.blocks[0].mlp.c_fc.weight.detach().clone(),
                           (forward_calls, backward_calls, optim_calls), grads)
    assert results["aten"][2] == (0, 0, 0)
    fwd, bwd, opt_calls = results["onednn"][2]
    # 252 rows (4 x 63 tokens); oneDNN from MIN_WORK = 2^22 multiply-adds on:
    # forward 7: per layer mlp fc and proj (252x128x512); q/k/v/proj (252x128x128 = 4.13M) stay below; the head's
    #   one 252-row block: logits, dX and dW^T (252x128x1024), computed in forward;
    # backward 8: dX and dW of the 2 x 2 MLP linears;
    # optimizer 40: Polar Express on the 4 MLP matrices (128x512 after transposing), 5 iterations, X X^T and B X
    #   (128x128x512) each; A A (128^3 = 2.1M) stays below, as do the 128x128 attention matrices
    assert (fwd, bwd, opt_calls) == (7, 8, 40), results["onednn"][2]
    assert abs(results["onednn"][0] - results["aten"][0]) < 1e-5
    assert torch.allclose(results["onednn"][1], results["aten"][1], rtol=1e-4, atol=1e-6)
    for got, want in zip(results["onednn"][3], results["aten"][3]):  # the head's (D, V) vs (V, D) accumulation
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), (got - want).abs().max()


def test_load_model_refuses_a_bad_choice_in_one_line(monkeypatch, tiny_run_dir):
    from raychat.checkpoint import load_model
    from raychat.common import RaychatError

    monkeypatch.setenv("RAYCHAT_CPU_GEMM", "mkl")
    monkeypatch.setattr(gemm, "_CHOSEN", {})
    with pytest.raises(RaychatError, match="RAYCHAT_CPU_GEMM='mkl': expected one of auto, onednn, aten"):
        load_model(tiny_run_dir, stage="base", device="cpu")


def test_auto_takes_onednn_only_when_clearly_faster(monkeypatch):
    monkeypatch.setenv("RAYCHAT_CPU_GEMM", "auto")
    for aten_s, dnnl_s, want in [(6.4e-3, 2.9e-3, "onednn"), (3.0e-3, 2.8e-3, "aten"), (2.0e-3, 3.0e-3, "aten")]:
        monkeypatch.setattr(gemm, "_CHOSEN", {})
        timings = iter([aten_s, dnnl_s, aten_s, dnnl_s])
        monkeypatch.setattr(gemm, "_best_of", lambda fn, rounds=7, t=timings: next(t))
        choice, why = gemm.cpu_gemm_choice()
        assert choice == want
        assert f"{dnnl_s * 1e3:.2f} ms with oneDNN" in why and f"{aten_s * 1e3:.2f} ms" in why
    assert gemm.cpu_gemm_backend() == "aten"  # decided once: the next call reads the memo


def test_auto_without_onednn_uses_torch(monkeypatch):
    monkeypatch.setenv("RAYCHAT_CPU_GEMM", "auto")
    monkeypatch.setattr(gemm, "_CHOSEN", {})
    monkeypatch.setattr(gemm, "_available", lambda: False)
    assert gemm.cpu_gemm_choice() == ("aten", "this torch build has no oneDNN")


@pytest.mark.parametrize("value,err,msg", [("blas", ValueError, "RAYCHAT_CPU_GEMM='blas': expected one of auto, "
                                                                  "onednn, aten"),
                                           ("onednn", RuntimeError, "this torch build has no oneDNN")])
def test_bad_or_unusable_choice_says_why(monkeypatch, value, err, msg):
    monkeypatch.setenv("RAYCHAT_CPU_GEMM", value)
    monkeypatch.setattr(gemm, "_CHOSEN", {})
    monkeypatch.setattr(gemm, "_available", lambda: False)
    with pytest.raises(err, match=msg.replace("(", r"\(").replace(")", r"\)")):
        gemm.cpu_gemm_choice()


def test_info_reports_the_choice_and_refuses_a_bad_one(monkeypatch, capsys):
    from raychat.cli import main

    monkeypatch.setenv("RAYCHAT_CPU_GEMM", "aten")
    monkeypatch.setattr(gemm, "_CHOSEN", {})
    assert main(["info", "--json", "--no-gemm"]) == 0
    out = capsys.readouterr().out
    assert '"cpu_gemm": "aten"' in out and '"cpu_gemm_reason": "RAYCHAT_CPU_GEMM=aten"' in out
    monkeypatch.setenv("RAYCHAT_CPU_GEMM", "mkl")
    assert main(["info", "--no-gemm"]) == 2
    err = capsys.readouterr().err
    assert "RAYCHAT_CPU_GEMM='mkl': expected one of auto, onednn, aten" in err and "Traceback" not in err


def test_bench_gemm_table(monkeypatch, capsys):
    """benchmarks/bench_gemm.py: every shape timed both ways, oneDNN's result within fp32 round-off of float64, and
    the 'raychat uses' column follows MIN_WORK (the race's products oneDNN, the decode GEMVs torch's BLAS)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.setenv("RAYCHAT_CPU_GEMM", "onednn")
    monkeypatch.setattr(gemm, "_CHOSEN", {})
    import bench_gemm

    threads = torch.get_num_threads()
    try:
        rows = bench_gemm.main(["--repeats", "1", "--seconds", "0.001", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert len(rows) == len(bench_gemm.SHAPES)
    for r in rows:
        assert r["blas_ms"] > 0 and r["onednn_ms"] > 0 and r["rel_err"] < 1e-5, r
        assert r["used"] == ("oneDNN" if r["m"] * r["p"] * r["n"] >= gemm.MIN_WORK else "BLAS"), r
    assert {r["used"] for r in rows if r["product"].startswith("decode")} == {"BLAS"}
    out = capsys.readouterr().out
    assert "raychat's choice: onednn (RAYCHAT_CPU_GEMM=onednn)" in out and out.count("\n| ") == len(rows) + 1
