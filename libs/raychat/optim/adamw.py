"""AdamW (Loshchilov & Hutter, https://arxiv.org/abs/1711.05101) as one multi-tensor step over lists of
tensors, the same op sequence as `torch.optim.AdamW(foreach=True)` so the two agree to round-off (tested).

Why not call torch.optim.AdamW: `MuonAdamW` updates *shards* (a dim-0 slice of an embedding on each rank,
with state only for that slice), which torch's optimizer cannot express; and one optimizer object owning all
groups keeps the checkpoint one state_dict per rank. `torch._foreach_*` ops launch one kernel per op for the
whole list on CUDA (no Python loop over parameters); on CPU they fall back to a loop inside ATen.

`adamw_tensor_step_` is the same step for one tensor with every hyperparameter a 0-D tensor: the form
`MuonAdamW(compile=True)` runs under torch.compile, where the whole step becomes one fused loop over the
tensor and a new lr or step count each step is a new input, not a recompile.
"""

from __future__ import annotations

import torch
from torch import Tensor


def adamw_step_(
    params: list[Tensor],       # parameters or dim-0 shards of them, updated in place
    grads: list[Tensor],        # same shapes as params (already averaged over ranks)
    exp_avgs: list[Tensor],     # first moments, same shapes
    exp_avg_sqs: list[Tensor],  # second moments, same shapes
    steps: list[int],           # per-tensor step count *after* this step (1 on the first step)
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """p <- p (1 - lr wd) - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps), with
    m <- beta1 m + (1 - beta1) g and v <- beta2 v + (1 - beta2) g^2. All lists must share device and dtype."""
    if not params:
        return
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)            # decoupled decay, before the update
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    # Bias corrections in Python floats (the step counts live on the host; no device sync).
    step_size = [-(lr / (1 - beta1**t)) for t in steps]
    bias2_sqrt = [(1 - beta2**t) ** 0.5 for t in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


def adamw_coefficients(step: int, *, lr: float, beta1: float, beta2: float, eps: float,
                       weight_decay: float) -> dict[str, float]:
    """The scalars of one AdamW step for `adamw_tensor_step_`, in Python floats as adamw_step_ computes them."""
    return {"decay": 1 - lr * weight_decay, "one_minus_beta1": 1 - beta1, "beta2": beta2,
            "one_minus_beta2": 1 - beta2, "bias2_sqrt": (1 - beta2**step) ** 0.5, "eps": eps,
            "step_size": -(lr / (1 - beta1**step))}


def adamw_tensor_step_(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
    *, decay: Tensor, one_minus_beta1: Tensor, beta2: Tensor, one_minus_beta2: Tensor, bias2_sqrt: Tensor,
    eps: Tensor, step_size: Tensor,  # `adamw_coefficients` as 0-D float64 CPU tensors
) -> None:
    """`adamw_step_`'s op sequence for one tensor (the decay always runs: at wd 0 it multiplies by exactly 1).
    The scalars come in combined on the host (a pow inside the compiled loop would run once per vector: it
    made the fused step no faster than eager) and are cast to the tensor's compute dtype, as ATen does with a
    Python scalar."""
    def c(x):
        return x.to(torch.promote_types(param.dtype, torch.float32))

    param.mul_(c(decay))
    exp_avg.lerp_(grad, c(one_minus_beta1))
    exp_avg_sq.mul_(c(beta2))
    exp_avg_sq.add_(grad * grad * c(one_minus_beta2))
    denom = exp_avg_sq.sqrt() / c(bias2_sqrt) + c(eps)
    param.add_(exp_avg / denom * c(step_size))
