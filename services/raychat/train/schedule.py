"""Schedules, as pure functions of the step: learning-rate multiplier (linear warm-up, constant, linear
warm-down to a final fraction), Muon momentum warm-up, and weight decay that follows the learning rate.
`apply_schedule` sets all three on an optimizer's groups for one step (what a training loop calls)."""

from __future__ import annotations

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


def weight_decay_at(step: int, num_iterations: int, base: float) -> float:
    """Decay linearly to zero over the run: late in training the (already small) learning rate times a full
    weight decay would keep shrinking weights that no longer get useful gradient signal."""
    return base * (1 - step / max(num_iterations, 1))


def apply_schedule(optimizer, step: int, num_iterations: int, cfg) -> float:
    """Set lr (every group), momentum and weight decay (Muon groups) for `step`; returns the lr multiplier.
    `cfg` carries warmup_steps, warmdown_ratio and final_lr_frac (a PretrainConfig). The groups' starting
    values are remembered in initial_lr / initial_weight_decay on the first call."""
    lrm = lr_multiplier(step, num_iterations, cfg.warmup_steps, cfg.warmdown_ratio, cfg.final_lr_frac)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
        g.setdefault("initial_weight_decay", g.get("weight_decay", 0.0))
        g["lr"] = g["initial_lr"] * lrm
        if g["kind"] == "muon":
            g["momentum"] = muon_momentum(step)
            g["weight_decay"] = weight_decay_at(step, num_iterations, g["initial_weight_decay"])
    return lrm
