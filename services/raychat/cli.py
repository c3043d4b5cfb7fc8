"""The `raychat` console script. One subcommand per module in `raychat.commands`; each module defines
`add_arguments(parser)` and `run(args) -> int | None`. Modules are imported only when their command runs,
so `raychat info` does not pay for importing Ray.

User errors (`RaychatError`, bad flags) print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under raychat.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("info", "version, device, dtype and why, attention backend, torch/ray versions, CPU GEMM peak"),
    "model-card": ("model_card", "derived model shape, parameter groups, scaling params, FLOPs/token"),
    "data": ("data", "download real pretraining shards, or prepare your own corpus"),
    "tok-train": ("tok_train", "train the BPE tokenizer"),
    "tok-eval": ("tok_eval", "tokenizer compression table"),
    "pretrain": ("pretrain", "pretrain the base model on Ray Train"),
    "sft": ("sft", "chat finetuning (SFT) on Ray Train"),
    "rl": ("rl", "GRPO reinforcement learning on Ray Train"),
    "eval": ("eval", "evaluate a base (CORE, bpb) or chat checkpoint"),
    "report": ("report", "assemble report.md with plots in the run directory"),
    "chat": ("chat", "chat with a checkpoint in the terminal (-p for one shot)"),
    "serve": ("serve", "serve a checkpoint on Ray Serve: web chat, WebSocket, OpenAI API, metrics"),
    "bench": ("bench", "benchmarks -> benchmarks/RESULTS.md"),
    "selftest": ("selftest", "prove the GPU paths on this box (CPU subset elsewhere)"),
    "speedrun": ("speedrun", "the whole pipeline, resumable by stage"),
    "import": ("importer", "import a nanochat checkpoint and tokenizer into a run directory"),
    "export": ("export", "export a checkpoint for Hugging Face transformers (trust_remote_code)"),
}


def m_doc(mod: str) -> str | None:
    """The command module's docstring (usage examples) as the subcommand's --help description, without importing
    the module unless it is the one being run (parsing the file is cheap)."""
    import ast
    from importlib.util import find_spec

    spec = find_spec(f"raychat.commands.{mod}")
    if spec is None or spec.origin is None:
        return None
    with open(spec.origin) as f:
        return ast.get_docstring(ast.parse(f.read()))


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="raychat", description="Train and serve a GPT-2-grade chat model.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (mod, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=(m_doc(mod) or help_),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if only is None or name == only:
            # import lazily: only the command being run (or all, for `raychat --help`) pays its imports
            m = importlib.import_module(f"raychat.commands.{mod}")
            m.add_arguments(p)
            modules[name] = m
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from raychat.common import RaychatError

    argv = sys.argv[1:] if argv is None else argv
    cmd = next((a for a in argv if not a.startswith("-")), None)
    only = cmd if cmd in COMMANDS else None
    try:
        parser, modules = build_parser(only)
        # everything after a bare `--` is passed through untouched (e.g. `raychat bench train -- --steps 20`)
        tail: list[str] = []
        if "--" in argv:
            i = argv.index("--")
            argv, tail = argv[:i], argv[i + 1:]
        args = parser.parse_args(argv)
        args.passthrough = tail
        if args.command is None:
            parser.print_help()
            return 2
        rc = modules[args.command].run(args)
        return int(rc or 0)
    except RaychatError as e:
        print(f"raychat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raychat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
