"""MuonAdamW(compile=True): the compiled Muon and AdamW updates against the eager ones, step for step, with
every hyperparameter the training loop schedules changing each step -- the same parameters to round-off,
one compiled graph per tensor shape however the values change, and the same result sharded over 2 gloo ranks.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port
from test_optim_dist import STEPS, _worker
from test_optim_fakes import FakeGPT, train_steps

from raychat.optim import MuonAdamW, adamw_step_, build_optimizer
from raychat.optim.adamw import adamw_coefficients, adamw_tensor_step_


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_compiled_steps_match_eager(dtype, tol):
    """Six steps of the fake GPT (AdamW on embeddings, lm_head, odd-shaped and 0-D scalars; Muon on square,
    tall and wide stacks with cautious decay) under the loop's lr / momentum / wd schedules: float64 agrees to
    1e-12 (only the order of summation differs), float32 to fp32 round-off (Polar Express amplifies it)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, fast = FakeGPT(dtype=dtype), FakeGPT(dtype=dtype)
    opt_e = build_optimizer(eager, weight_decay=0.2)
    opt_c = build_optimizer(fast, weight_decay=0.2, compile=True)
    train_steps(eager, opt_e, 0, 2)
    train_steps(fast, opt_c, 0, 2)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # one graph per distinct (kind, shape): AdamW on wte/lm_head (96, 64), value embeds (33, 32), scalars (3,)
    # and (); Muon on the (K, 64, 64), (K, 256, 64), (K, 64, 256) stacks (and the (K, 32, 64) kv ones)
    shapes = {("adamw", tuple(p.shape)) for g in opt_c.param_groups if g["kind"] == "adamw" for p in g["params"]}
    shapes |= {("muon", tuple(g["params"][0].shape)) for g in opt_c.param_groups if g["kind"] == "muon"}
    assert graphs == len(shapes), (graphs, sorted(shapes))
    train_steps(eager, opt_e, 2, 6)
    train_steps(fast, opt_c, 2, 6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # new values, no recompile
    init = dict(FakeGPT(dtype=dtype).named_parameters())
    for (name, pe), pc in zip(eager.named_parameters(), fast.parameters()):
        assert _rel(pc.detach(), pe.detach()) < tol, (name, _rel(pc.detach(), pe.detach()))
        assert not torch.equal(pe, init[name]), f"{name} never moved"
    for p in eager.parameters():  # the state too: momentum buffers, NorMuon variance, Adam moments
        for k, v in opt_e.state[p].items():
            if torch.is_tensor(v):
                assert _rel(opt_c.state[dict(zip(map(id, eager.parameters()), fast.parameters()))[id(p)]][k], v) < tol


def test_compiled_adamw_tensor_step_matches_foreach_step():
    """The one-tensor AdamW (0-D tensor hyperparameters) against the foreach step, over steps 1..5 with a
    changing lr and weight decay, in float64 -- the bias corrections included."""
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(40, 24, generator=gen, dtype=torch.float64)
    a, ma, va = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    b, mb, vb = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    fn = torch.compile(adamw_tensor_step_, dynamic=False, fullgraph=True)
    t = lambda x: torch.tensor(float(x), dtype=torch.float64)  # noqa: E731
    for step in range(1, 6):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        lr, wd = 0.01 / step, 0.1 * step
        adamw_step_([a], [g], [ma], [va], [step], lr=lr, beta1=0.8, beta2=0.95, eps=1e-10, weight_decay=wd)
        hps = adamw_coefficients(step, lr=lr, beta1=0.8, beta2=0.95, eps=1e-10, weight_decay=wd)
        fn(b, g, mb, vb, **{k: t(x) for k, x in hps.items()})
    torch.testing.assert_close(b, a, rtol=1e-13, atol=0)
    torch.testing.assert_close(vb, va, rtol=1e-13, atol=0)
    assert not torch.allclose(a, p)


def test_compiled_muon_without_weight_decay_matches_eager():
    """At weight_decay 0 the eager step skips the decay; the compiled one runs it with a zero factor."""
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(48, 32, generator=gen, dtype=torch.float64) for _ in range(3)]
    runs = []
    for compile in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = MuonAdamW([{"kind": "muon", "params": params, "lr": 0.02, "weight_decay": 0.0}], compile=compile)
        g2 = torch.Generator().manual_seed(4)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g2, dtype=torch.float64)
            opt.step()
        runs.append(torch.stack([p.detach() for p in params]))
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(runs[0], torch.stack(init))


@pytest.mark.slow
def test_compiled_two_process_gloo_matches_single_process_eager(tmp_path):
    """World size 2 with compile=True (each rank compiles its shard shapes): ranks bitwise identical, and the
    parameters the single-process eager run reaches to fp32 round-off."""
    port = free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path), ("float32",), True), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["float32"] for r in range(2)]
    ref = FakeGPT(dtype=torch.float32)
    train_steps(ref, build_optimizer(ref, weight_decay=0.2), 0, STEPS)
    for name, p in ref.named_parameters():
        assert torch.equal(ranks[0]["final"][name], ranks[1]["final"][name]), f"{name}: ranks disagree"
        assert _rel(ranks[0]["final"][name], p.detach()) < 5e-4, name
        assert torch.equal(ranks[0]["resumed"][name], ranks[0]["final"][name]), f"{name}: resume differs"
