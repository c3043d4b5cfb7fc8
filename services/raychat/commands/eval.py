"""`raychat eval base|chat`: score a checkpoint and write the results into <run>/evals/.

    raychat eval base --run-dir R --max-per-task 100     # CORE (per task + CSV), val bits-per-byte, samples
    raychat eval chat --run-dir R --stage sft --tasks ARC-Easy,MMLU,GSM8K,SpellingBee --max-per-task 50
Under torchrun the work is split across ranks (each rank a slice; counts all-reduced).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

DEFAULT_CHAT_TASKS = "ARC-Easy,ARC-Challenge,MMLU,GSM8K,HumanEval,SpellingBee"


def add_arguments(p):
    p.add_argument("kind", choices=["base", "chat"], help="base: CORE + bpb + samples; chat: chat evals + ChatCORE")
    p.add_argument("--run-dir", default=None, help="run directory (default ~/.cache/raychat/runs/default)")
    p.add_argument("--stage", default=None, help="checkpoint stage (default: base for `base`, sft for `chat`)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--eval-bundle", default=None, help="CORE bundle dir (default: ../shared/data/eval_bundle, then "
                   "the cache, then download)")
    p.add_argument("--download-bundle", action="store_true",
                   help="download the official 22-task CORE bundle if no local one is found (GPU boxes)")
    p.add_argument("--max-per-task", type=int, default=-1, help="examples per task; -1 = all")
    p.add_argument("--tasks", default=None, help=f"comma-separated task names (chat default: {DEFAULT_CHAT_TASKS}; "
                   "base default: every CORE task in the bundle)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    p.add_argument("--bpb-tokens", type=int, default=64 * 1024, help="validation tokens for bits-per-byte (base)")
    p.add_argument("--data-dir", default=None, help="pretraining shards for bpb (default: the downloaded climbmix "
                   "shards, in development ../shared/data/pretrain)")
    p.add_argument("--max-tokens", type=int, default=256, help="generation budget per answer (chat, generative)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: auto)")
    p.add_argument("--allow-unsandboxed-code", action="store_true",
                   help="run HumanEval's model-written code even where the bubblewrap sandbox is unavailable (then "
                   "only in-process guards apply: no filesystem, process or network isolation)")


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def run_base(args, model, tokenizer, meta, run_dir: Path) -> dict:
    import torch

    from raychat.data import PackedLoader
    from raychat.data.registry import MissingDataError, shard_dir
    from raychat.evals import evaluate_bpb, evaluate_core, find_eval_bundle, format_core_table, write_core_csv
    from raychat.train.pretrain import sample

    seq_len = model.config.sequence_len
    device = model.get_device()
    bundle = find_eval_bundle(args.eval_bundle, download=args.download_bundle)
    tasks = args.tasks.split(",") if args.tasks else None
    core = evaluate_core(model, tokenizer, bundle, device, max_per_task=args.max_per_task,
                         batch_size=args.batch_size, max_seq_len=seq_len, tasks=tasks)
    print(format_core_table(core))
    write_core_csv(core, run_dir / "evals" / "core.csv")
    data_dir = Path(args.data_dir) if args.data_dir else None
    if data_dir is None:
        try:
            data_dir = shard_dir("climbmix")     # downloaded, else the development default
        except MissingDataError as e:
            print(f"val bpb skipped: {e}")
    out = {"stage": args.stage or "base", "step": meta["step"], "checkpoint": meta["checkpoint_dir"], "core": core}
    if data_dir is not None:
        B = 8
        loader = PackedLoader(tokenizer, data_dir, split="val", batch_size=B, seq_len=seq_len, device=device,
                              prefetch=0)
        steps = max(1, args.bpb_tokens // (B * seq_len))
        with torch.no_grad():
            out["val_bpb"] = evaluate_bpb(model, loader, steps, tokenizer.token_bytes.to(device))
        loader.close()
        print(f"val bpb: {out['val_bpb']:.4f} over {steps * B * seq_len} tokens")
    out["samples"] = sample(model, tokenizer, max_tokens=24)
    for s in out["samples"]:
        print(f"[sample] {s!r}")
    return out


def run_chat(args, model, tokenizer, meta, run_dir: Path) -> dict:
    from raychat.engine import Engine
    from raychat.evals import chatcore, run_chat_eval

    names = (args.tasks or DEFAULT_CHAT_TASKS).split(",")
    engine = Engine(model, tokenizer, max_batch_size=args.batch_size, decode_layout="auto")
    results = {}
    for name in names:
        r = run_chat_eval(name, model, tokenizer, engine,
                          max_problems=None if args.max_per_task < 0 else args.max_per_task,
                          batch_size=args.batch_size, max_tokens=args.max_tokens)
        results[name] = r
        print(f"{name:<16} accuracy {r['accuracy']:.4f}  ({r['num_passed']}/{r['num_total']}, {r['seconds']:.1f} s)")
    score = chatcore(results)
    print(f"ChatCORE ({len(results)} tasks): {score:.4f}")
    return {"stage": args.stage, "step": meta["step"], "checkpoint": meta["checkpoint_dir"], "results": results,
            "chatcore": score}


def run(args):
    from raychat.checkpoint import load_model
    from raychat.common import RaychatError, resolve_run_dir

    args.stage = args.stage or ("base" if args.kind == "base" else "sft")
    if args.max_per_task == 0 or args.max_per_task < -1:
        raise RaychatError(f"--max-per-task must be positive or -1, got {args.max_per_task}")
    if args.kind == "chat" and "HumanEval" in (args.tasks or DEFAULT_CHAT_TASKS).split(","):
        from raychat.tools.execution import ALLOW_ENV, use_sandbox

        if args.allow_unsandboxed_code:
            os.environ[ALLOW_ENV] = "1"      # read where HumanEval grades the code
        use_sandbox()                        # no sandbox and no opt-in: stop now, not after the other tasks
    run_dir = resolve_run_dir(args.run_dir)
    model, tokenizer, meta = load_model(run_dir, stage=args.stage, step=args.step, device=args.device)
    if tokenizer is None:
        raise RaychatError(f"no tokenizer found beside checkpoint {meta['checkpoint_dir']}")
    t0 = time.time()
    out = (run_base if args.kind == "base" else run_chat)(args, model, tokenizer, meta, run_dir)
    out["seconds"] = time.time() - t0
    name = "base.json" if args.kind == "base" else f"chat_{args.stage}.json"
    _write_json(run_dir / "evals" / name, out)
    print(f"wrote {run_dir / 'evals' / name}")
    return 0
