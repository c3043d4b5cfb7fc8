"""`raychat pretrain`: the base model, on Ray Train (or in this process with --no-ray).

    raychat pretrain --preset tiny_cpu --run-dir runs/tiny            # 2 CPU workers, a few minutes
    raychat pretrain --preset d12 --num-workers 8 --use-gpu           # one 8-GPU node
    ray job submit -- raychat pretrain --preset gpt2_8xh100           # on a running cluster
"""

from __future__ import annotations

from raychat.train.harness import add_stage_args, run_stage


def add_arguments(p):
    add_stage_args(p, "pretrain")


def run(args):
    return run_stage("pretrain", args)
