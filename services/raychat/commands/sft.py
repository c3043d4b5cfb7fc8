"""`raychat sft`: chat finetuning of the base model, on Ray Train (or in this process with --no-ray).

    raychat sft --preset tiny_cpu --run-dir runs/tiny                   # 2 CPU workers, ~5 minutes
    raychat sft --preset tiny_cpu --run-dir runs/tiny --extra-jsonl my_convs.jsonl
    raychat sft --preset d20 --run-dir runs/d20                         # one 8-GPU node
    ray job submit -- raychat sft --preset d20 --run-dir /shared/runs/d20   # on a running cluster
"""

from __future__ import annotations

from raychat.commands.pretrain import add_launch_args
from raychat.train.cli_args import add_config_args
from raychat.train.sft import PRESETS, SFTConfig


def add_arguments(p):
    add_config_args(p, SFTConfig, PRESETS)
    p.add_argument("--extra-jsonl", action="append", default=[], metavar="PATH",
                   help="a JSONL file of conversations ({\"messages\": [...]} per line) to add to the mixture; "
                        "repeatable; weighted by --extra-weight")
    add_launch_args(p)


def prepare_config(cfg, args):
    """Absolute paths (Ray workers do not share our working directory) and the user's files validated here, so
    a bad line fails in one second with file:line instead of inside a worker."""
    from pathlib import Path

    from raychat.tasks import ChatJsonl

    extra = [str(Path(x).expanduser().resolve()) for x in getattr(args, "extra_jsonl", [])]
    for path in extra:
        ChatJsonl(path)
    kw = {"extra_jsonl": extra or cfg.extra_jsonl} if hasattr(cfg, "extra_jsonl") else {}
    if cfg.run_dir:
        kw["run_dir"] = str(Path(cfg.run_dir).expanduser().resolve())
    if getattr(cfg, "data_dir", ""):
        kw["data_dir"] = str(Path(cfg.data_dir).expanduser().resolve())
    return cfg.replace(**kw)


def run(args):
    from raychat.commands.pretrain import launch
    from raychat.train.cli_args import config_from_args

    cfg = prepare_config(config_from_args(args, SFTConfig, PRESETS), args)
    launch("raychat.train.sft", cfg, "sft", args)
    return 0
