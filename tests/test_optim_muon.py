"""The Muon half: Polar Express orthogonality, the stacked update against a naive per-matrix reference
(exact SVD polar factor, explicit MuonEq, NorMuon and cautious decay), momentum schedule, shape scaling."""

from __future__ import annotations

import pytest
import torch

from raychat.optim import MuonAdamW, muon_lr_multiplier, muon_momentum, polar_express


def _with_spectrum(shape, smallest, gen):
    """Random matrices (..., m, n) with singular values spread log-uniformly over [smallest, 1]."""
    G = torch.randn(shape, generator=gen, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    S = torch.logspace(0, torch.log10(torch.tensor(smallest)).item(), U.shape[-1], dtype=torch.float64)
    return U @ torch.diag_embed(S.expand(*shape[:-2], -1)) @ Vh


@pytest.mark.parametrize("shape", [(64, 160), (2, 96, 64), (3, 64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_polar_express_five_steps_is_near_orthogonal(shape, dtype):
    """5 iterations (the default) map condition numbers up to 300 into a narrow band around 1 -- in bf16 too."""
    G = _with_spectrum(shape, 1 / 300, torch.Generator().manual_seed(0)).to(torch.float32)
    X = polar_express(G, steps=5, dtype=dtype)
    assert X.dtype == dtype and X.shape == G.shape
    s = torch.linalg.svdvals(X.double())
    assert 0.8 < s.min().item() and s.max().item() < 1.2, (s.min().item(), s.max().item())
    assert abs(s.mean().item() - 1.0) < 0.1
    if dtype == torch.float32:  # scale invariance: Polar Express normalises its input (bf16 is too noisy here)
        diff = (polar_express(G * 1e3, steps=5, dtype=dtype) - X).norm() / X.norm()
        assert diff.item() < 1e-5


@pytest.mark.parametrize("shape", [(96, 64), (64, 96)])
def test_polar_express_converges_to_the_polar_factor(shape):
    """With more iterations (the five Polar Express polynomials, then the Newton-Schulz quintic) it is U V^T to
    float64 precision (Newton-Schulz-style methods with fixed slope-maximising coefficients plateau instead)."""
    G = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    torch.testing.assert_close(polar_express(G, steps=14), U @ Vh, atol=1e-10, rtol=0)


def test_polar_express_defaults_fp32_on_cpu_and_keeps_zero_at_zero():
    G = torch.zeros(2, 8, 4)
    X = polar_express(G)
    assert X.dtype == torch.float32 and torch.equal(X, torch.zeros_like(X))


def _reference_muon(p, grads, *, lr, momentum, beta2, wd, equilibrate=True):
    """One matrix, float64, written out plainly."""
    p = p.clone()
    m, n = p.shape
    buf = torch.zeros_like(p)
    v = torch.zeros(m if m >= n else n, dtype=p.dtype)
    for g in grads:
        buf = momentum * buf + (1 - momentum) * g
        u = (1 - momentum) * g + momentum * buf                      # Nesterov
        if equilibrate:                                              # MuonEq: every row gets the RMS row norm
            rms_row = (sum(u[i].norm() ** 2 for i in range(m)) / m).sqrt()
            u = torch.stack([u[i] * rms_row / u[i].norm() for i in range(m)])
        U, _, Vh = torch.linalg.svd(u, full_matrices=False)
        O = U @ Vh                                                   # exact polar factor: ||O||_F = sqrt(min(m, n))
        assert abs(O.norm().item() - min(m, n) ** 0.5) < 1e-9         # so Muon+'s renormalisation is the identity
        if m >= n:                                                   # per-row second moment
            v = beta2 * v + (1 - beta2) * (O**2).mean(dim=1)
            D = O / v.sqrt()[:, None]
        else:                                                        # per-column
            v = beta2 * v + (1 - beta2) * (O**2).mean(dim=0)
            D = O / v.sqrt()[None, :]
        D = D * (O.norm() / D.norm())
        lr_eff = lr * max(1.0, m / n) ** 0.5
        decayed = torch.where(D * p >= 0, p, torch.zeros_like(p))    # cautious: same sign only
        p = p - lr_eff * D - lr_eff * wd * decayed
    return p


@pytest.mark.parametrize("equilibrate", [True, False])
@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
def test_muon_step_matches_naive_reference(shape, equilibrate):
    gen = torch.Generator().manual_seed(2)
    K, steps = 3, 4
    init = [torch.randn(shape, generator=gen, dtype=torch.float64) * 0.1 for _ in range(K)]
    grads = [[torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(K)] for _ in range(steps)]
    params = [torch.nn.Parameter(t.clone()) for t in init]
    # 14 iterations (5 Polar Express + 9 Newton-Schulz) are exact to ~1e-15 for these matrices, see above.
    opt = MuonAdamW([{"kind": "muon", "params": params, "lr": 0.02, "momentum": 0.9, "ns_steps": 14,
                      "beta2": 0.95, "weight_decay": 0.5, "equilibrate": equilibrate}])
    for step in range(steps):
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        opt.step()
    for k in range(K):
        ref = _reference_muon(init[k], [grads[s][k] for s in range(steps)], lr=0.02, momentum=0.9, beta2=0.95, wd=0.5,
                              equilibrate=equilibrate)
        torch.testing.assert_close(params[k].detach(), ref, atol=1e-10, rtol=0)
        assert not torch.allclose(ref, init[k])
    # the mask really masked something: some entries were not decayed
    assert 0 < (torch.stack([p.detach() for p in params]) * torch.stack(init) > 0).float().mean() < 1


def test_cautious_weight_decay_with_zero_gradient_is_plain_decay():
    """A zero update agrees in sign with everything (0 >= 0): the whole matrix decays by lr_eff * wd."""
    p = torch.nn.Parameter(torch.randn(64, 16, dtype=torch.float64))
    before = p.detach().clone()
    opt = MuonAdamW([{"kind": "muon", "params": [p], "lr": 0.01, "weight_decay": 0.2}])
    p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(p.detach(), before * (1 - 0.01 * 2.0 * 0.2), rtol=1e-14, atol=0)  # tall: x2 lr


def test_muon_momentum_schedule_and_shape_multiplier():
    """0.85 -> 0.97 linearly over 400 steps, then 0.97 -> 0.90 over the lr warm-down; numbers worked by hand."""
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(200) == pytest.approx(0.91)                 # 0.85 + 0.12 * 200/400
    assert muon_momentum(400) == pytest.approx(0.97)
    assert muon_momentum(10_000) == pytest.approx(0.97)              # no run length: no warm-down
    # 2000 steps, warm-down 0.65: 1300 warm-down steps from step 700 (after the 400-step warm-up)
    assert muon_momentum(700, 2000, 0.65) == pytest.approx(0.97)
    assert muon_momentum(1350, 2000, 0.65) == pytest.approx(0.935)   # halfway: (0.97 + 0.90) / 2
    assert muon_momentum(2000, 2000, 0.65) == pytest.approx(0.90)
    # nanochat's exact rule (the default): the warm-up wins until step 400 even inside the warm-down
    assert muon_momentum(350, 1000, 0.65) == pytest.approx(0.955)    # 0.85 + 0.12 * 350/400; warm-down from 350
    assert muon_momentum(299, 300, 0.65) == pytest.approx(0.9397)    # the race never peaks
    assert muon_lr_multiplier((256, 64)) == 2.0      # tall: sqrt(rows / cols)
    assert muon_lr_multiplier((64, 256)) == 1.0      # wide
    assert muon_lr_multiplier((3, 64, 64)) == 1.0


def test_muon_group_needs_one_2d_shape():
    with pytest.raises(ValueError, match="one shape"):
        MuonAdamW([{"kind": "muon", "params": [torch.nn.Parameter(torch.zeros(4, 4)),
                                                torch.nn.Parameter(torch.zeros(4, 8))], "lr": 0.02}])
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([{"kind": "muon", "params": [torch.nn.Parameter(torch.zeros(4))], "lr": 0.02}])
    with pytest.raises(ValueError, match="kind"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(4))], "lr": 0.02}])
