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

from raychat.model import gemm

# Polar Express degree-5 coefficients (a, b, c), one polynomial per iteration, each minimax-optimal for the
# singular-value interval the previous one leaves (Amsel et al., arXiv:2505.16932). This set is the one nanochat
# runs (computed for 5 iterations with a 2e-2 safety factor and cushion 2): the safety factor is built in, so a
# singular value pushed slightly above 1 by bf16 round-off is not overshot. The set is optimised as a whole
# for five iterations; more (reference tests) continue with the Newton-Schulz quintic (15x - 10x^3 + 3x^5)/8,
# whose fixed point 1 attracts every singular value the five leave in (0, 1.2], so the result converges to
# U V^T.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
NEWTON_SCHULZ_QUINTIC = (1.875, -1.25, 0.375)


def muon_momentum(step: int, num_iterations: int | None = None, warmdown_ratio: float = 0.0,
                  warmup_steps: int = 400, start: float = 0.85, peak: float = 0.97, end: float = 0.90) -> float:
    """Muon momentum schedule: linear `start` -> `peak` over the warm-up, flat, then linear `peak` -> `end` over
    the learning-rate warm-down (the last round(warmdown_ratio x num_iterations) steps). Without num_iterations
    there is no warm-down (momentum stays at `peak`).

    The warm-up is `warmup_steps` (400, nanochat's) and takes precedence: a run shorter than ~1.5 x 400 steps
    never finishes it (the 300-step d4 race ends at 0.94 and never enters the warm-down branch), so its low-lr
    phase still raises the momentum (nanochat's rule exactly).

    A low momentum at the start lets the first, large and fast-changing gradients through without dragging a
    stale average along; a lower one at the end, when the lr is small, lets the last steps follow the current
    gradient (less averaging lag when there is little time left to undo it)."""
    wd_start = None
    if num_iterations is not None:
        warmdown_steps = round(warmdown_ratio * num_iterations)
        if warmdown_steps > 0:
            wd_start = num_iterations - warmdown_steps
    if warmup_steps > 0 and step < warmup_steps:
        frac = max(step, 0) / warmup_steps
        return start + frac * (peak - start)
    if wd_start is not None and step >= wd_start:
        progress = (step - wd_start) / (num_iterations - wd_start)
        return peak + progress * (end - peak)
    return peak


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
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)
    if steps < 1:
        raise ValueError(f"polar_express needs at least one iteration, got {steps}")
    extra = max(0, steps - len(POLAR_EXPRESS_COEFFS))
    coeffs = POLAR_EXPRESS_COEFFS[:steps] + (NEWTON_SCHULZ_QUINTIC,) * extra
    if gemm.uses_onednn(X, X, X.shape[-2] ** 2 * X.shape[-1]):  # the per-matrix X X^T, (s, s) from (s, l)
        # products by oneDNN (model/gemm.py), one matrix at a time: its calls take 2-D operands, and per matrix
        # the compiled step fuses each iteration's sums without stacking the stack's products
        X = torch.stack([_polar_iterations_2d(x, coeffs) for x in X.unbind(0)])
    else:
        for a, b, c in coeffs:
            A = X @ X.mT                                    # (k, s, s), s = min(m, n)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)     # b A + c A^2
            X = torch.baddbmm(X, B, X, beta=a, alpha=1.0)   # a X + B X  =  a X + b X^3 + c X^5
    if tall:
        X = X.mT
    return X.reshape(*batch, m, n)


def _polar_iterations_2d(X: Tensor, coeffs) -> Tensor:
    """polar_express's iterations on one (s, l) matrix, s <= l, the products through model/gemm.py."""
    for a, b, c in coeffs:
        A = gemm.mm_nt(X, X)
        B = b * A + c * gemm.mm_nn(A, A)
        X = a * X + gemm.mm_nn(B, X)
    return X


def muon_lr_multiplier(shape: torch.Size | tuple[int, ...]) -> float:
    """max(1, rows/cols)^0.5: an orthogonal update of a (rows, cols) matrix has RMS 1/sqrt(max(rows, cols));
    scaling tall matrices (rows = fan-out > fan-in) up keeps the per-element step comparable across shapes
    (modded-nanogpt / Keller's Muon)."""
    rows, cols = shape[-2], shape[-1]
    return max(1.0, rows / cols) ** 0.5


def _hp(x, like: Tensor):
    """A hyperparameter as an op against `like` takes it: a Python float as is (eager), a 0-D tensor (the
    compiled step's inputs, float64 on the host so they hold the Python value exactly) cast to like's compute
    dtype -- what ATen does with a Python scalar, so both paths round the same."""
    if isinstance(x, Tensor):
        return x.to(torch.promote_types(like.dtype, torch.float32))
    return x


def _sub_scaled_(y: Tensor, x: Tensor, a) -> None:
    """y -= a x: one fused op for a Python float, a multiply then a subtract for a 0-D tensor (alpha= takes
    numbers only; the compiled step fuses the two into one loop anyway)."""
    if isinstance(a, Tensor):
        y.sub_(x * _hp(a, y))
    else:
        y.sub_(x, alpha=a)


def muon_update_(
    grads: Tensor,            # (k, m, n) this rank's gradients for k same-shape matrices; overwritten
    params: Tensor,           # (k, m, n) stacked parameters, updated in place
    momentum_buffer: Tensor,  # (k, m, n) first moment, param dtype
    second_moment: Tensor,    # (k, m, 1) if m >= n else (k, 1, n), fp32: NorMuon's factored variance
    *,
    lr: float | Tensor,
    momentum: float | Tensor,
    beta2: float | Tensor,
    weight_decay: float | Tensor,
    ns_steps: int,
    equilibrate: bool = True,
    renormalize: bool = True,
) -> None:
    """One Muon step on a stack of matrices (the caller copies `params` back into the Parameters).
    equilibrate: MuonEq row equilibration before orthogonalizing; renormalize: Muon+ norm snap after it
    (both on in nanochat's current recipe; off reproduces the earlier Muon step).

    lr, momentum, beta2 and weight_decay are Python floats (eager) or 0-D float64 CPU tensors: the form the
    compiled step (MuonAdamW(compile=True)) passes, so that a new value each step is a new input, not a
    recompile. With a tensor weight_decay the decay always runs (at 0 it subtracts exact zeros)."""
    m, n = params.shape[-2:]
    # Nesterov momentum: buf <- beta buf + (1 - beta) g ; u = (1 - beta) g + beta buf
    momentum_buffer.lerp_(grads, _hp(1 - momentum, momentum_buffer))
    u = grads.lerp_(momentum_buffer, _hp(momentum, grads))
    if equilibrate:
        # MuonEq (arXiv:2603.28254): give every row the mean row norm (Frobenius norm unchanged), so one row
        # with a huge gradient does not dominate the spectrum; the polar iteration then starts from a better
        # conditioned matrix and converges further in the same five iterations.
        row = u.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        u = u * (u.norm(dim=(-2, -1), keepdim=True) / (m**0.5 * row))

    X = polar_express(u, steps=ns_steps).to(torch.float64 if params.dtype == torch.float64 else torch.float32)
    if renormalize:
        # Muon+ (arXiv:2602.21545): an exactly semi-orthogonal (m, n) matrix has Frobenius norm sqrt(min(m, n));
        # five iterations leave the smallest singular values short of 1, so snap the norm to that value.
        X = X * (min(m, n) ** 0.5 / X.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6))

    # NorMuon (arXiv:2510.05491) as nanochat does it: orthogonalization equalises the singular values but
    # leaves some rows (neurons) with far larger entries than others. Keep an EMA of the mean square per row
    # (tall/square matrices) or per column (wide ones: the longer side is reduced, so the state stays small),
    # divide by its root like Adam, then rescale so the Frobenius norm of the update is unchanged.
    red_dim = -1 if m >= n else -2
    red_size = X.size(red_dim)
    v_mean = X.square().mean(dim=red_dim, keepdim=True)                       # (k, m, 1) or (k, 1, n)
    second_moment.lerp_(v_mean.to(second_moment.dtype), _hp(1 - beta2, second_moment))
    step_size = second_moment.clamp_min(1e-10).rsqrt().to(X.dtype)            # (k, m, 1) or (k, 1, n)
    norm_sq = v_mean.sum(dim=(-2, -1), keepdim=True) * red_size               # (k, 1, 1) = ||X||_F^2
    new_norm_sq = (v_mean * step_size.square()).sum(dim=(-2, -1), keepdim=True) * red_size
    X.mul_(step_size * (norm_sq / new_norm_sq.clamp_min(1e-20)).sqrt())

    lr = lr * muon_lr_multiplier(params.shape)
    if isinstance(weight_decay, Tensor) or weight_decay != 0:
        # Cautious weight decay (arXiv:2510.12402): decay only the entries where the update X (which is
        # subtracted) and the parameter agree in sign, i.e. where the step already moves towards zero;
        # elsewhere decay would fight the gradient. Scaled by the same (shape-scaled) lr as the update.
        mask = (X * params) >= 0
        _sub_scaled_(params, params * mask, lr * weight_decay)
    _sub_scaled_(params, X.to(params.dtype), lr)

