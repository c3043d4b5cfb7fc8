"""Bits per byte: validation loss that does not depend on the tokenizer.

Mean loss per token changes with the vocabulary (a bigger vocabulary has fewer, harder tokens), so models with
different tokenizers cannot be compared on it. Bits per byte can: total nats over the targets divided by ln 2 and
by the number of UTF-8 bytes those targets stand for,

    bpb = sum_t loss_t * [bytes_t > 0] / (ln 2 * sum_t bytes_t)

Special tokens (<|bos|>, chat markers) have 0 bytes and are left out of both sums; ignored targets (-1) too.
Over a fixed number of batches, so successive evals of one run see the same tokens. Distributed: each rank
takes its own batches, the two sums are all-reduced (a no-op at world size 1).
"""

from __future__ import annotations

import math

import torch

from raychat.common import get_dist_info


@torch.no_grad()
def evaluate_bpb(model, batches, steps: int, token_bytes: torch.Tensor) -> float:
    """model(x, y, loss_reduction="none") -> (B, T) per-token losses in nats; `batches` yields (x, y) (B, T) long;
    token_bytes (V,) long: bytes per token id, 0 for specials. Returns inf when no byte was seen."""
    total_nats, total_bytes = None, None
    it = iter(batches)
    for _ in range(steps):
        x, y = next(it)
        loss = model(x, y, loss_reduction="none").reshape(-1).float()      # (B*T,)
        y = y.reshape(-1)
        tb = token_bytes.to(y.device)
        valid = y >= 0
        nbytes = torch.where(valid, tb[torch.where(valid, y, torch.zeros_like(y))], torch.zeros_like(y))  # (B*T,)
        nats = (loss * (nbytes > 0)).sum(dtype=torch.float64)
        nb = nbytes.sum()
        total_nats = nats if total_nats is None else total_nats + nats
        total_bytes = nb if total_bytes is None else total_bytes + nb
    if total_nats is None:
        return float("inf")
    if get_dist_info(initialized_only=True).world_size > 1:
        torch.distributed.all_reduce(total_nats, op=torch.distributed.ReduceOp.SUM)
        torch.distributed.all_reduce(total_bytes, op=torch.distributed.ReduceOp.SUM)
    total_nats, total_bytes = total_nats.item(), total_bytes.item()
    if total_bytes == 0:
        return float("inf")
    return total_nats / (math.log(2) * total_bytes)
