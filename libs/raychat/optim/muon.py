"""Muon's math on a stack of same-shape matrices: Nesterov momentum -> Polar Express orthogonalization ->
NorMuon-style variance normalisation -> cautious weight decay + update. Pure functions on tensors, no
process groups: `MuonAdamW` (optimizer.py) calls them on whatever slice of a shape group this rank owns.

Muon (Keller Jordan, https://kellerjordan.github.io/posts/muon/) replaces the momentum of a 2-D weight by
the nearest semi-orthogonal matrix polar(M) = U V^T (M = U S V^T): steepest descent under the spectral norm,
so every direction of the layer moves by the same amount however ill-conditioned the gradient is.

polar(M) is approximated by Polar Express (Amsel, Persson, Musco, Gower 2025, https://arxiv.org/abs/2505.16932):
odd quintic iterations X <- a X + b (X X^T) X + c (X X^T)^2 X whose coefficients change per iteration, each
the minimax-optimal polynomial for the singular-value interval left by the previous one. It converges to
U V^T (unlike the fixed Newton-Schulz quintic of the original Muon, which plateaus around 0.7..1.2) and only
needs matmuls, so it runs in bf16 on tensor cores. Five iterations are the default (nanochat, modded-nanogpt).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Polar Express degree-5 coefficients (a, b, c), Algorithm 1 of arXiv:2505.16932 (computed for a smallest
# normalised singular value of 1e-3). Iterations past the 8th reuse the last polynomial, which equals the
# Newton-Schulz quintic (15x - 10x^3 + 3x^5)/8 "numerically". The paper divides all but the last by a safety
# factor 1.01 (a/1.01, b/1.01^3, c/1.01^5): bf16 round-off can push a singular value slightly above the
# interval the polynomial was optimised for, where an undamped polynomial would overshoot and blow up.
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS_COEFFS = tuple((a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]) + (
    _POLAR_EXPRESS_RAW[-1],)


def muon_momentum(step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """Momentum warm-up for Muon groups (nanochat): linear from `start` to `end` over `warmup_steps`, then flat.

    A low momentum at the start lets the first, large and fast-changing gradients through without dragging a
    stale average along. The loop sets `group["momentum"] = muon_momentum(step)` for every muon group."""
    frac = min(max(step, 0) / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    return start + frac * (end - start)


def orthogonalize_dtype(x: Tensor) -> torch.dtype:
    """bf16 on CUDA (tensor cores; Polar Express is stable there thanks to the safety factor), fp32 on CPU
    (bf16 matmul on CPU is slow) -- fp64 when the input is fp64, so reference tests can be exact."""
    if x.is_cuda:
        return torch.bfloat16
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def polar_express(G: Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> Tensor:
    """Approximate polar(G) = U V^T for a matrix or a stack of matrices G (..., m, n); returns `dtype`
    (default: `orthogonalize_dtype(G)`). Singular values of the result lie near 1 (see tests for the band)."""
    if G.ndim < 2:
        raise ValueError(f"polar_express needs a matrix or a stack of matrices, got shape {tuple(G.shape)}")
    dtype = dtype or orthogonalize_dtype(G)
    *batch, m, n = G.shape
    X = G.reshape(-1, m, n).to(dtype)                   # (k, m, n)
    tall = m > n
    if tall:
        X = X.mT                                        # (k, n, m): the Gram matrix X X^T is the small side
    # Scale so every singular value is <= 1: the Frobenius norm bounds the spectral norm. The 1.01 is the
    # paper's cushion for bf16 round-off; the eps keeps an all-zero update at zero instead of NaN.
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-7)
    coeffs = list(POLAR_EXPRESS_COEFFS[:steps]) + [POLAR_EXPRESS_COEFFS[-1]] * max(0, steps - len(POLAR_EXPRESS_COEFFS))
    for a, b, c in coeffs:
        A = X @ X.mT                                    # (k, s, s), s = min(m, n)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)     # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a, alpha=1.0)   # a X + B X  =  a X + b X^3 + c X^5
    if tall:
        X = X.mT
    return X.reshape(*batch, m, n)


def muon_lr_multiplier(shape: torch.Size | tuple[int, ...]) -> float:
    """max(1, rows/cols)^0.5: an orthogonal update of a (rows, cols) matrix has RMS 1/sqrt(max(rows, cols));
    scaling tall matrices (rows = fan-out > fan-in) up keeps the per-element step comparable across shapes
    (modded-nanogpt / Keller's Muon)."""
    rows, cols = shape[-2], shape[-1]
    return max(1.0, rows / cols) ** 0.5


def muon_update_(
    grads: Tensor,            # (k, m, n) this rank's gradients for k same-shape matrices; overwritten
    params: Tensor,           # (k, m, n) stacked parameters, updated in place
    momentum_buffer: Tensor,  # (k, m, n) first moment, param dtype
    second_moment: Tensor,    # (k, m, 1) if m >= n else (k, 1, n), fp32: NorMuon's factored variance
    *,
    lr: float,
    momentum: float,
    beta2: float,
    weight_decay: float,
    ns_steps: int,
) -> None:
    """One Muon step on a stack of matrices (the caller copies `params` back into the Parameters)."""
    m, n = params.shape[-2:]
    # Nesterov momentum: buf <- beta buf + (1 - beta) g ; u = (1 - beta) g + beta buf
    momentum_buffer.lerp_(grads, 1 - momentum)
    u = grads.lerp_(momentum_buffer, momentum)

    X = polar_express(u, steps=ns_steps).to(torch.float64 if params.dtype == torch.float64 else torch.float32)

    # NorMuon (arXiv:2510.05491) as nanochat does it: orthogonalization equalises the singular values but
    # leaves some rows (neurons) with far larger entries than others. Keep an EMA of the mean square per row
    # (tall/square matrices) or per column (wide ones: the longer side is reduced, so the state stays small),
    # divide by its root like Adam, then rescale so the Frobenius norm of the update is unchanged.
    red_dim = -1 if m >= n else -2
    red_size = X.size(red_dim)
    v_mean = X.square().mean(dim=red_dim, keepdim=True)                       # (k, m, 1) or (k, 1, n)
    second_moment.lerp_(v_mean.to(second_moment.dtype), 1 - beta2)
    step_size = second_moment.clamp_min(1e-10).rsqrt().to(X.dtype)            # (k, m, 1) or (k, 1, n)
    norm_sq = v_mean.sum(dim=(-2, -1), keepdim=True) * red_size               # (k, 1, 1) = ||X||_F^2
    new_norm_sq = (v_mean * step_size.square()).sum(dim=(-2, -1), keepdim=True) * red_size
    X.mul_(step_size * (norm_sq / new_norm_sq.clamp_min(1e-20)).sqrt())

    lr = lr * muon_lr_multiplier(params.shape)
    if weight_decay != 0:
        # Cautious weight decay (arXiv:2510.12402): decay only the entries where the update X (which is
        # subtracted) and the parameter agree in sign, i.e. where the step already moves towards zero;
        # elsewhere decay would fight the gradient. Scaled by the same (shape-scaled) lr as the update.
        mask = (X * params) >= 0
        params.sub_(params * mask, alpha=lr * weight_decay)
    params.sub_(X.to(params.dtype), alpha=lr)
