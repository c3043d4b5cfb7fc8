"""`raychat rl`: GRPO reinforcement learning from the SFT checkpoint, on Ray Train (or in this process with
--no-ray).

    raychat rl --preset tiny_cpu --run-dir runs/tiny        # SimpleArithmetic, 2 CPU workers, ~3 minutes
    raychat rl --preset d20 --run-dir runs/d20              # GSM8K with the calculator, one 8-GPU node
    raychat rl --preset tiny_cpu --run-dir runs/tiny --resume
"""

from __future__ import annotations

from raychat.train.harness import add_stage_args, run_stage


def add_arguments(p):
    add_stage_args(p, "rl")


def run(args):
    return run_stage("rl", args)
