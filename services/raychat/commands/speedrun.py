"""`raychat speedrun`: the whole pipeline, each stage skipped when its output exists (so a rerun resumes):

    tokenizer -> tokenizer eval -> pretrain -> base eval (CORE + bpb + samples) -> SFT -> chat eval
    -> (optional) GRPO -> report card, then how to chat with the result.

    raychat speedrun --preset tiny_cpu --run-dir runs/tiny        # this CPU box, under 30 minutes
    raychat speedrun --preset gpt2_8xh100                         # one 8xH100 node (downloads data + evals)
    ray job submit -- raychat speedrun --preset gpt2_8xh100       # on a Ray cluster
Stage timings go to <run>/speedrun.json and into the report.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SpeedrunPreset:
    pretrain_preset: str
    sft_preset: str
    rl_preset: str
    vocab_size: int = 32768
    tok_max_chars: int = 2_000_000_000
    download_shards: int = 0            # 0 = use local data (../shared/data/pretrain or --data-dir)
    core_max_per_task: int = -1
    chat_tasks: str = "ARC-Easy,ARC-Challenge,MMLU,GSM8K,HumanEval,SpellingBee"
    chat_max_per_task: int = -1
    rl: bool = True
    hardware: str = "8xH100"
    extra_pretrain: list = field(default_factory=list)
    extra_sft: list = field(default_factory=list)
    extra_rl: list = field(default_factory=list)


PRESETS = {
    "tiny_cpu": SpeedrunPreset("tiny_cpu", "tiny_cpu", "tiny_cpu", vocab_size=8192, tok_max_chars=30_000_000,
                               core_max_per_task=100, chat_tasks="ARC-Easy,ARC-Challenge,MMLU,GSM8K,SpellingBee",
                               chat_max_per_task=40, rl=False, hardware="cpu"),
    # the whole pipeline on toy shapes in a couple of minutes: what the test suite runs end to end
    "smoke": SpeedrunPreset("tiny_cpu", "tiny_cpu", "tiny_cpu", vocab_size=512, tok_max_chars=2_000_000,
                            core_max_per_task=2, chat_tasks="ARC-Easy,SpellingBee", chat_max_per_task=2, rl=False,
                            hardware="cpu",
                            extra_pretrain=["--depth", "2", "--aspect-ratio", "32", "--head-dim", "32", "--seq-len",
                                            "128", "--device-batch-size", "4", "--total-batch-size", "512",
                                            "--num-iterations", "12", "--eval-every", "6", "--eval-tokens", "2048",
                                            "--sample-every", "-1", "--num-workers", "1", "--metrics-port", "0",
                                            "--compile", "false"],
                            extra_sft=["--num-iterations", "6", "--device-batch-size", "2", "--total-batch-rows", "2",
                                       "--synthetic-size", "50", "--num-val-examples", "8", "--eval-every", "-1",
                                       "--chat-eval-tasks", "", "--num-workers", "1", "--metrics-port", "0",
                                       "--mixture", "SimpleArithmetic,SpellingBee"]),
    "gpt2_8xh100": SpeedrunPreset("gpt2_8xh100", "gpt2_8xh100", "gpt2_8xh100", vocab_size=32768,
                                  tok_max_chars=2_000_000_000, download_shards=240, core_max_per_task=-1,
                                  chat_max_per_task=-1, rl=True, hardware="8xH100"),
}


def add_arguments(p):
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny_cpu", help="pipeline preset")
    p.add_argument("--run-dir", default=None, help="run directory (default ~/.cache/raychat/runs/<preset>)")
    p.add_argument("--data-dir", default=None, help="pretraining shards (default: ../shared/data/pretrain on CPU "
                   "presets; downloaded into <RAYCHAT_HOME>/data on GPU presets)")
    p.add_argument("--rl", dest="rl", action="store_true", default=None, help="include the GRPO stage")
    p.add_argument("--no-rl", dest="rl", action="store_false", help="skip the GRPO stage")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--run", default="", help="wandb run name prefix (default: no wandb)")
    p.add_argument("--no-ray", action="store_true", help="run the training stages in this process, without Ray")


def _cli(argv: list[str]) -> None:
    from raychat.cli import main
    from raychat.common import RaychatError

    print(f"\n$ raychat {' '.join(argv)}", flush=True)
    rc = main(argv)
    if rc != 0:
        raise RaychatError(f"stage command failed (exit {rc}): raychat {' '.join(argv)}")


def _final_checkpoint(run_dir: Path, stage: str) -> str:
    """'done' when the latest checkpoint of the stage is the final one, 'partial' when one exists, else ''."""
    from raychat.checkpoint import latest_checkpoint, read_meta

    ck = latest_checkpoint(run_dir / "checkpoints" / stage)
    if ck is None:
        return ""
    meta = read_meta(ck)
    planned = (meta.get("plan") or {}).get("num_iterations")
    return "done" if meta.get("final") or (planned is not None and meta.get("step") == planned) else "partial"


# ---- the data stage (owned by the data helper; raychat/data/registry.py) ----------------------------------------
TOKENIZER_CHARS_PER_SHARD = 250_000_000   # ClimbMix: ~250M characters per shard (nanochat: 8 shards for 2B chars)


def stage_data(args, preset: SpeedrunPreset) -> dict:
    """Fetch what the preset's stages read and is missing (`raychat data download --for PRESET`). The pretraining
    shards the tokenizer needs come first; the rest continue on a background thread while the tokenizer trains
    (as nanochat does); `wait()` blocks until they are there (called before pretraining). With --data-dir the
    pretraining shards are the user's and only the other datasets are fetched.
    -> {"data_dir": the pretraining shard folder, "wait": callable}"""
    from raychat.commands.data import preset_needs
    from raychat.data import registry

    needs, shards, dev_default = preset_needs(args.preset)
    shard_sets = [n for n in needs if registry.get(n).shard_repo]
    registry.ensure([n for n in needs if n not in shard_sets], dev_default=dev_default)
    if args.data_dir is not None or not shard_sets:
        return {"data_dir": args.data_dir, "wait": lambda: None}
    name = shard_sets[0]
    first = min(shards, max(1, -(-preset.tok_max_chars // TOKENIZER_CHARS_PER_SHARD)))
    registry.ensure([name], num_shards=first, dev_default=dev_default)
    rest = None
    if registry.missing([name], dev_default=dev_default, num_shards=shards):
        print(f"[data] {name}: shards {first}..{shards - 1} continue in the background", flush=True)
        rest = registry.Background([name], num_shards=shards, dev_default=dev_default, progress=False)
    return {"data_dir": str(registry.shard_dir(name, dev_default=dev_default)),
            "wait": rest.wait if rest is not None else lambda: None}


def run(args):
    from raychat.common import resolve_run_dir

    preset = PRESETS[args.preset]
    run_dir = resolve_run_dir(args.run_dir, args.preset)
    do_rl = preset.rl if args.rl is None else args.rl
    launch = (["--address", args.address] if args.address else []) + (["--no-ray"] if args.no_ray else [])
    wandb = (lambda s: ["--run", f"{args.run}-{s}"]) if args.run else (lambda s: [])
    state_path = run_dir / "speedrun.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    state.update({"preset": args.preset, "hardware": preset.hardware})
    state.setdefault("stages", {})

    def stage(name: str, done: bool, fn) -> None:
        if done:
            print(f"[speedrun] {name}: output exists, skipped", flush=True)
            state["stages"].setdefault(name, {"seconds": 0.0, "status": "skipped"})
            return
        print(f"\n[speedrun] ===== {name} =====", flush=True)
        t0 = time.time()
        fn()
        state["stages"][name] = {"seconds": round(time.time() - t0, 1), "status": "ran"}
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, state_path)

    rd = ["--run-dir", str(run_dir)]
    t_start = time.time()
    data: dict = {}
    stage("data", False, lambda: data.update(stage_data(args, preset)))   # data helper's stage: see stage_data
    data_dir = data["data_dir"]
    stage("tokenizer", (run_dir / "tokenizer" / "tokenizer.json").is_file(),
          lambda: _cli(["tok-train", *rd, "--data-dir", data_dir, "--vocab-size", str(preset.vocab_size),
                        "--max-chars", str(preset.tok_max_chars)]))
    stage("tokenizer_eval", (run_dir / "evals" / "tokenizer.json").is_file(),
          lambda: _cli(["tok-eval", *rd, "--data-dir", data_dir]))
    data["wait"]()                       # the pretraining shards still downloading in the background
    base = _final_checkpoint(run_dir, "base")
    stage("pretrain", base == "done",
          lambda: _cli(["pretrain", "--preset", preset.pretrain_preset, *rd, "--data-dir", data_dir, *launch,
                        *wandb("pretrain"), *(["--resume"] if base == "partial" else []), *preset.extra_pretrain]))
    stage("base_eval", (run_dir / "evals" / "base.json").is_file(),
          lambda: _cli(["eval", "base", *rd, "--data-dir", data_dir, "--max-per-task",
                        str(preset.core_max_per_task), *(["--download-bundle"] if preset.download_shards else [])]))
    sft = _final_checkpoint(run_dir, "sft")
    stage("sft", sft == "done",
          lambda: _cli(["sft", "--preset", preset.sft_preset, *rd, *launch, *wandb("sft"),
                        *(["--resume"] if sft == "partial" else []), *preset.extra_sft]))
    stage("chat_eval", (run_dir / "evals" / "chat_sft.json").is_file(),
          lambda: _cli(["eval", "chat", *rd, "--stage", "sft", "--tasks", preset.chat_tasks, "--max-per-task",
                        str(preset.chat_max_per_task)]))
    if do_rl:
        rl = _final_checkpoint(run_dir, "rl")
        stage("rl", rl == "done", lambda: _cli(["rl", "--preset", preset.rl_preset, *rd, *launch, *wandb("rl"),
                                                *(["--resume"] if rl == "partial" else []), *preset.extra_rl]))
        stage("rl_eval", (run_dir / "evals" / "chat_rl.json").is_file(),
              lambda: _cli(["eval", "chat", *rd, "--stage", "rl", "--tasks", "GSM8K", "--max-per-task",
                            str(preset.chat_max_per_task)]))
    stage("report", False, lambda: _cli(["report", *rd]))
    final = "rl" if do_rl else "sft"
    print(f"\n[speedrun] finished in {(time.time() - t_start) / 60:.1f} min; report: {run_dir / 'report.md'}")
    print("Chat with your model:")
    print(f"  raychat chat --run-dir {run_dir} --stage {final}                 # in the terminal")
    print(f"  raychat serve --run-dir {run_dir} --stage {final}                # then open http://127.0.0.1:8000")
    return 0
