"""`raychat sft`: chat finetuning of the base model, on Ray Train (or in this process with --no-ray).

    raychat sft --preset tiny_cpu --run-dir runs/tiny                   # 2 CPU workers, ~5 minutes
    raychat sft --preset tiny_cpu --run-dir runs/tiny --extra-jsonl my_convs.jsonl
    raychat sft --preset d20 --run-dir runs/d20                         # one 8-GPU node
    ray job submit -- raychat sft --preset d20 --run-dir /shared/runs/d20   # on a running cluster
"""

from __future__ import annotations

from raychat.train.harness import add_stage_args, run_stage


def add_arguments(p):
    add_stage_args(p, "sft")


def run(args):
    return run_stage("sft", args)
