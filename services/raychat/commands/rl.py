"""`raychat rl`: GRPO reinforcement learning from the SFT checkpoint, on Ray Train (or in this process with
--no-ray).

    raychat rl --preset tiny_cpu --run-dir runs/tiny        # SimpleArithmetic, 2 CPU workers, ~3 minutes
    raychat rl --preset d20 --run-dir runs/d20              # GSM8K with the calculator, one 8-GPU node
    raychat rl --preset tiny_cpu --run-dir runs/tiny --resume
"""

from __future__ import annotations

from raychat.commands.pretrain import add_launch_args
from raychat.train.cli_args import add_config_args
from raychat.train.grpo import PRESETS, GRPOConfig


def add_arguments(p):
    add_config_args(p, GRPOConfig, PRESETS)
    add_launch_args(p)


def run(args):
    from raychat.commands.pretrain import launch
    from raychat.commands.sft import prepare_config
    from raychat.train.cli_args import config_from_args

    cfg = prepare_config(config_from_args(args, GRPOConfig, PRESETS), args)
    launch("raychat.train.grpo", cfg, "rl", args)
    return 0
