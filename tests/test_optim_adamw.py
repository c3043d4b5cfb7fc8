"""The AdamW half of MuonAdamW against torch.optim.AdamW, step for step (both torch implementations)."""

from __future__ import annotations

import pytest
import torch

from raychat.optim import MuonAdamW

SHAPES = [(7, 5), (13,), (), (4, 3, 2), (64, 16)]


def _run(make_opt, dtype, steps=6):
    """Same init, same gradient sequence, an lr schedule and a missing grad at step 2."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]
    opt = make_opt(params)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (step == 2 and i == 1) else torch.randn(p.shape, generator=gen, dtype=dtype)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * (1.0 - 0.1 * step)      # a schedule, as loops do
        opt.step()
    return params, opt


def _ours(params):
    return MuonAdamW([{"kind": "adamw", "params": params, "lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-10,
                       "weight_decay": 0.1}])


def _torch(foreach):
    def make(params):
        opt = torch.optim.AdamW(params, lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1, foreach=foreach)
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
        return opt
    return make


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
def test_adamw_matches_torch_step_for_step(foreach, dtype, tol):
    ours, ours_opt = _run(_ours, dtype)
    ref, ref_opt = _run(_torch(foreach), dtype)
    for i, (a, b) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=f"param {i} shape {SHAPES[i]}")
        sa, sb = ours_opt.state[a], ref_opt.state[b]
        assert sa["step"] == int(sb["step"].item()) == (5 if i == 1 else 6)   # the None grad was skipped
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=tol, atol=tol)
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=tol, atol=tol)
    # the params moved (a vacuous comparison of untouched params would also "match")
    gen = torch.Generator().manual_seed(0)
    assert not torch.allclose(ours[0], torch.randn(SHAPES[0], generator=gen, dtype=dtype))


def test_adamw_groups_keep_their_own_hyperparameters():
    gen = torch.Generator().manual_seed(1)
    a = torch.nn.Parameter(torch.randn(8, 4, generator=gen, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))
    a2, b2 = (torch.nn.Parameter(t.detach().clone()) for t in (a, b))
    ours = MuonAdamW([{"kind": "adamw", "params": [a], "lr": 0.3, "betas": (0.8, 0.95), "weight_decay": 0.0},
                      {"kind": "adamw", "params": [b], "lr": 0.002, "betas": (0.96, 0.95), "weight_decay": 0.5}])
    ref = torch.optim.AdamW([{"params": [a2], "lr": 0.3, "betas": (0.8, 0.95), "weight_decay": 0.0},
                             {"params": [b2], "lr": 0.002, "betas": (0.96, 0.95), "weight_decay": 0.5}], eps=1e-10)
    for _ in range(4):
        for p, q in ((a, a2), (b, b2)):
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            q.grad = p.grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, a2, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(b, b2, rtol=1e-13, atol=1e-13)
