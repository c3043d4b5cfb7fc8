"""`raychat speedrun`: the whole pipeline, each stage skipped when its output exists (so a rerun resumes):

    tokenizer -> tokenizer eval -> pretrain -> base eval (CORE + bpb + samples) -> SFT -> chat eval
    -> (optional) GRPO -> report card, then how to chat with the result.

    raychat speedrun --preset tiny_cpu --run-dir runs/tiny        # this CPU box, under 30 minutes
    raychat speedrun --preset gpt2_8xh100                         # one 8xH100 node (downloads data + evals)
    ray job submit -- raychat speedrun --preset gpt2_8xh100       # on a Ray cluster
Stage timings go to <run>/speedrun.json and into the report. A preset whose chat eval includes HumanEval checks
at the start that the code sandbox works (or that --allow-unsandboxed-code was given), before any stage runs.

The pipeline is a list of `Stage(name, done, run)` built by `stages()`: a new stage is one more entry. Training
stages get typed configs (the preset ladder + this preset's overrides) and go straight to the train package's
launcher; the other stages call their command's `run` with the arguments that command's own parser defines.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SpeedrunPreset:
    model: str                          # the size on the training preset ladder (raychat.train.config.LADDER)
    vocab_size: int = 32768
    tok_max_chars: int = 2_000_000_000
    download_shards: int = 0            # 0 = use local data (../shared/data/pretrain or --data-dir)
    core_max_per_task: int = -1
    chat_tasks: str = "ARC-Easy,ARC-Challenge,MMLU,GSM8K,HumanEval,SpellingBee"
    chat_max_per_task: int = -1
    rl: bool = True
    hardware: str = "8xH100"
    overrides: dict = field(default_factory=dict)   # stage -> config fields on top of the ladder


PRESETS = {
    "tiny_cpu": SpeedrunPreset("tiny_cpu", vocab_size=8192, tok_max_chars=30_000_000, core_max_per_task=100,
                               chat_tasks="ARC-Easy,ARC-Challenge,MMLU,GSM8K,SpellingBee", chat_max_per_task=40,
                               rl=False, hardware="cpu"),
    # the whole pipeline on toy shapes in a couple of minutes: what the test suite runs end to end
    "smoke": SpeedrunPreset("tiny_cpu", vocab_size=512, tok_max_chars=2_000_000, core_max_per_task=2,
                            chat_tasks="ARC-Easy,SpellingBee", chat_max_per_task=2, rl=False, hardware="cpu",
                            overrides={
                                "pretrain": dict(depth=2, aspect_ratio=32, head_dim=32, seq_len=128,
                                                 device_batch_size=4, total_batch_size=512, num_iterations=12,
                                                 eval_every=6, eval_tokens=2048, sample_every=-1, num_workers=1,
                                                 metrics_port=0, compile=False),
                                "sft": dict(num_iterations=6, device_batch_size=2, total_batch_rows=2,
                                            synthetic_size=50, num_val_examples=8, eval_every=-1, chat_eval_tasks="",
                                            num_workers=1, metrics_port=0, mixture="SimpleArithmetic,SpellingBee")}),
    "gpt2_8xh100": SpeedrunPreset("gpt2_8xh100", vocab_size=32768, tok_max_chars=2_000_000_000, download_shards=240,
                                  core_max_per_task=-1, chat_max_per_task=-1, rl=True, hardware="8xH100"),
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
    p.add_argument("--allow-unsandboxed-code", action="store_true",
                   help="let the chat eval run HumanEval's model-written code where the bubblewrap sandbox is "
                   "unavailable (in-process guards only; see README, Security). Without it such a run stops at "
                   "the start, not after training")


@dataclass
class Stage:
    name: str
    done: Callable[[], bool]            # its output exists: skipped
    run: Callable[[], object]
    runs_code: bool = False             # runs model-written code (HumanEval): needs the sandbox or the opt-in


def command(name: str, *positional: str, **values) -> None:
    """`raychat <name>` through its module's own parser: its defaults, then `values` (typed, no flag strings)."""
    mod = importlib.import_module(f"raychat.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"raychat {name}")
    mod.add_arguments(parser)
    args = parser.parse_args(list(positional))
    for k, v in values.items():
        setattr(args, k, v)
    print(f"\n$ raychat {name.replace('_', '-')} {' '.join(positional)}", flush=True)
    mod.run(args)


def final_checkpoint(run_dir: Path, stage: str) -> str:
    """'done' when the latest checkpoint of the stage is the final one, 'partial' when one exists, else ''."""
    from raychat.checkpoint import latest_checkpoint, read_meta

    ck = latest_checkpoint(run_dir / "checkpoints" / stage)
    if ck is None:
        return ""
    meta = read_meta(ck)
    planned = (meta.get("plan") or {}).get("num_iterations")
    return "done" if meta.get("final") or (planned is not None and meta.get("step") == planned) else "partial"


def training(stage: str, ckpt_dir: str, preset: SpeedrunPreset, args, run_dir: Path,
             fields: Callable[[], dict] = dict) -> Stage:
    """A training stage: the ladder's config for the preset's model size, its overrides, the run's paths; resumed
    when a partial checkpoint exists. `fields()` is called when the stage runs (paths known only by then)."""
    from raychat.train.config import get_preset
    from raychat.train.harness import launch

    def run():
        cfg = get_preset(preset.model, stage).replace(run_dir=str(run_dir), **fields(),
                                                      **({"run": f"{args.run}-{stage}"} if args.run else {}),
                                                      **preset.overrides.get(stage, {}))
        launch(stage, cfg, resume=final_checkpoint(run_dir, ckpt_dir) == "partial", no_ray=args.no_ray,
               address=args.address)

    return Stage(stage, lambda: final_checkpoint(run_dir, ckpt_dir) == "done", run)


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


def stages(preset: SpeedrunPreset, args, run_dir: Path) -> list[Stage]:
    rd, exists = {"run_dir": str(run_dir)}, (lambda rel: lambda: (run_dir / rel).is_file())
    data: dict = {}                      # filled by the data stage: the shard folder and the background download

    def data_dir() -> str:
        return data["data_dir"]

    def pretrain_fields() -> dict:
        data["wait"]()                   # the pretraining shards still downloading in the background
        return {"data_dir": data_dir()}

    def chat_eval(name: str, stage: str, tasks: str) -> Stage:
        return Stage(name, exists(f"evals/chat_{stage}.json"),
                     lambda: command("eval", "chat", **rd, stage=stage, tasks=tasks,
                                     max_per_task=preset.chat_max_per_task,
                                     allow_unsandboxed_code=args.allow_unsandboxed_code),
                     runs_code="HumanEval" in tasks.split(","))

    out = [
        Stage("data", lambda: False, lambda: data.update(stage_data(args, preset))),
        Stage("tokenizer", exists("tokenizer/tokenizer.json"),
              lambda: command("tok_train", **rd, data_dir=data_dir(), vocab_size=preset.vocab_size,
                              max_chars=preset.tok_max_chars)),
        Stage("tokenizer_eval", exists("evals/tokenizer.json"),
              lambda: command("tok_eval", **rd, data_dir=data_dir())),
        training("pretrain", "base", preset, args, run_dir, pretrain_fields),
        Stage("base_eval", exists("evals/base.json"),
              lambda: command("eval", "base", **rd, data_dir=data_dir(), max_per_task=preset.core_max_per_task,
                              download_bundle=bool(preset.download_shards))),
        training("sft", "sft", preset, args, run_dir),
        chat_eval("chat_eval", "sft", preset.chat_tasks),
    ]
    if preset.rl if args.rl is None else args.rl:
        out += [training("rl", "rl", preset, args, run_dir), chat_eval("rl_eval", "rl", "GSM8K")]
    return out + [Stage("report", lambda: False, lambda: command("report", **rd))]




def run(args):
    from raychat.common import resolve_run_dir

    preset = PRESETS[args.preset]
    run_dir = resolve_run_dir(args.run_dir, args.preset)
    state_path = run_dir / "speedrun.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    state.update({"preset": args.preset, "hardware": preset.hardware})
    state.setdefault("stages", {})
    t_start = time.time()
    plan = stages(preset, args, run_dir)
    if any(stage.runs_code and not stage.done() for stage in plan):
        from raychat.tools.execution import ALLOW_ENV, use_sandbox

        if args.allow_unsandboxed_code:
            os.environ[ALLOW_ENV] = "1"
        use_sandbox()      # no sandbox and no opt-in: stop now, in seconds, not after hours of training
    for stage in plan:
        if stage.done():
            print(f"[speedrun] {stage.name}: output exists, skipped", flush=True)
            state["stages"].setdefault(stage.name, {"seconds": 0.0, "status": "skipped"})
            continue
        print(f"\n[speedrun] ===== {stage.name} =====", flush=True)
        t0 = time.time()
        stage.run()
        state["stages"][stage.name] = {"seconds": round(time.time() - t0, 1), "status": "ran"}
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, state_path)
    final = "rl" if any(s.name == "rl" for s in plan) else "sft"
    print(f"\n[speedrun] finished in {(time.time() - t_start) / 60:.1f} min; report: {run_dir / 'report.md'}")
    print("Chat with your model:")
    print(f"  raychat chat --run-dir {run_dir} --stage {final}                 # in the terminal")
    print(f"  raychat serve --run-dir {run_dir} --stage {final}                # then open http://127.0.0.1:8000")
    return 0
