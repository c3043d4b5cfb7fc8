"""Schedules, as pure functions of the step (nanochat's current record recipe):
- learning-rate multiplier: linear warm-up over warmup_steps, constant, linear warm-down over the last
  warmdown_ratio of the run to final_lr_frac;
- Muon momentum: 0.85 -> 0.97 over 400 steps, then 0.97 -> 0.90 over the warm-down once the warm-up is over
  (`raychat.optim.muon_momentum`);
- Muon weight decay: a cosine from its base value to zero over the run.
The harness sets every stage's lr from `lr_multiplier`; pretraining's step calls `muon_schedule_` for the other
two."""

from __future__ import annotations

import math

from raychat.optim import muon_momentum  # noqa: F401  (re-exported: the loops import schedules from here)


def lr_multiplier(step: int, num_iterations: int, warmup_steps: int = 0, warmdown_ratio: float = 0.4,
                  final_lr_frac: float = 0.0) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    warmdown_steps = round(warmdown_ratio * num_iterations)
    start = num_iterations - warmdown_steps
    if step < start or warmdown_steps == 0:
        return 1.0
    progress = (num_iterations - step) / warmdown_steps  # 1 -> 0 over the warm-down
    return progress + (1 - progress) * final_lr_frac


def weight_decay_at(step: int, num_iterations: int, base: float, shape: str = "cosine") -> float:
    """Weight decay for `step`, falling to zero at the end of the run: late in training the (already small)
    learning rate times a full weight decay would keep shrinking weights that no longer get useful gradient
    signal. shape "cosine" (nanochat's: base x (1 + cos(pi t / n)) / 2, gentle at both ends) or "linear"
    (base x (1 - t / n), raychat's earlier rule)."""
    frac = step / max(num_iterations, 1)
    if shape == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * frac))
    if shape == "linear":
        return base * (1 - frac)
    raise ValueError(f"weight decay schedule shape must be 'cosine' or 'linear', got {shape!r}")


def muon_schedule_(optimizer, step: int, num_iterations: int, warmdown_ratio: float) -> None:
    """Set the Muon groups' momentum and weight decay for `step` (their base decay is remembered in
    initial_weight_decay on the first call). AdamW groups keep their (small, fixed) weight decay, scaled by their
    lr as decoupled decay is."""
    momentum = muon_momentum(step, num_iterations, warmdown_ratio)
    for g in optimizer.param_groups:
        if g["kind"] == "muon":
            g.setdefault("initial_weight_decay", g.get("weight_decay", 0.0))
            g["momentum"] = momentum
            g["weight_decay"] = weight_decay_at(step, num_iterations, g["initial_weight_decay"])
