"""The training loss of the head, chunked: lm_head, logit soft-cap and cross-entropy fused over blocks of rows.

The plain head materialises the (rows, vocab) logits in fp32, then passes over them several times (soft-cap, log-
sum-exp, gather; in backward softmax, the soft-cap's derivative, two GEMMs). At the d4 race (2,048 rows x 8,192
words) that tensor is 64 MiB, far larger than a CPU's caches, and the head was ~half of forward+backward. Here the
rows go through in blocks of `chunk_rows`: per block, z = x W^T, loss = lse(c tanh(z/c)) - logit[target] and its
gradient (softmax - onehot) (1 - tanh^2) / n, then dx = g W and dW += g^T x, while the block's logits are still in
cache. The gradients are computed in forward (as fused linear-cross-entropy kernels do) and only scaled by the
incoming gradient in backward, so the full logits never exist. Same math as `F.cross_entropy(c tanh(xW^T / c), y,
ignore_index=-1)` (mean over valid targets; all targets ignored gives nan as torch does), equal to round-off
(tests/test_head_loss.py, against that and float64).

Used by `GPT.forward` for the mean training loss on CPU with gradients on (`GPT.chunked_head`); on CUDA the
compiled graph keeps the plain head (this path is not measured there), and eval / per-token losses use it too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from raychat.model import gemm


def _block(z: Tensor, y: Tensor, cap: float, inv_n: Tensor) -> tuple[Tensor, Tensor]:
    """One block: (summed loss over its valid rows, d loss / d z in z's dtype)."""
    zf = z.to(inv_n.dtype)
    if cap > 0:
        t = torch.tanh(zf / cap)
        logits = cap * t
    else:
        logits = zf
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    valid = (y != -1)[:, None]
    y0 = y.clamp_min(0)[:, None]
    loss = ((lse - logits.gather(1, y0)) * valid).sum()
    g = torch.exp(logits - lse)
    g = g - (torch.arange(g.size(1), device=g.device)[None, :] == y0).to(g.dtype)
    if cap > 0:
        g = g * (1 - t * t)
    return loss, (g * (valid * inv_n)).to(z.dtype)


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, cap: float, chunk_rows: int) -> Tensor:
        w = weight if weight.dtype == x.dtype else weight.to(x.dtype)
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32 for fp32/bf16 activations, fp64 for fp64
        inv_n = 1.0 / (targets != -1).sum().to(acc)
        total = x.new_zeros((), dtype=acc)
        # the weight gradient accumulates as (D, V) = sum xc^T g where oneDNN runs the products (it is fastest with
        # the short side as rows), else as (V, D) in one fused addmm per block (torch's BLAS)
        rows = min(chunk_rows, x.size(0))
        transposed = gemm.uses_onednn(x, w, rows * w.shape[0] * w.shape[1])
        dxs = []
        dw = torch.zeros(w.shape[::-1] if transposed else w.shape, dtype=acc, device=w.device)
        for s in range(0, x.size(0), chunk_rows):
            xc = x[s:s + chunk_rows]
            loss, g = _block(gemm.mm_nt(xc, w), targets[s:s + chunk_rows], cap, inv_n)
            total = total + loss
            dxs.append(gemm.mm_nn(g, w))
            if transposed:
                dw.add_(gemm.mm_tn(xc, g).to(acc))
            else:
                dw = torch.addmm(dw, g.T, xc) if g.dtype == acc else dw + (g.T @ xc).to(acc)
        dw = dw.T.contiguous() if transposed else dw
        ctx.save_for_backward(torch.cat(dxs) if dxs else torch.zeros_like(x), dw.to(weight.dtype))
        return total * inv_n

    @staticmethod
    def backward(ctx, grad: Tensor):
        dx, dw = ctx.saved_tensors
        return dx * grad.to(dx.dtype), dw * grad.to(dw.dtype), None, None, None


def chunked_head_loss(x: Tensor, weight: Tensor, targets: Tensor, softcap: float = 0.0,
                      chunk_rows: int = 128) -> Tensor:
    """Mean cross-entropy of softcap * tanh((x @ weight.T) / softcap) against targets (-1 = ignored).
    x (..., D) activations, weight (V, D) the lm_head weight (cast to x's dtype), targets (...) int."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return _ChunkedHeadLoss.apply(x.reshape(-1, x.size(-1)), weight, targets.reshape(-1), float(softcap), chunk_rows)
