"""The report card: <run>/report.md with PNG plots, assembled from what the stages left in the run directory
(metrics.jsonl, checkpoints' meta.json, evals/*.json, speedrun.json). A person should see the run at a glance:
environment and provenance, tokenizer, each stage's config, curves (loss and val bpb vs step and vs FLOPs),
CORE per task, chat evals per task, stage timings with total wall time and estimated cost, samples."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from raychat.checkpoint import STAGES, latest_checkpoint, read_meta
from raychat.common import code_version

# default hourly prices for the cost estimate (override with RAYCHAT_PRICE_PER_HOUR)
PRICE_PER_HOUR = {"8xH100": 24.0, "cpu": 0.0}


def read_events(run_dir: Path) -> list[dict]:
    p = run_dir / "metrics.jsonl"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash must not break the report
    return out


def _load_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def environment() -> dict:
    import torch

    env = {"code": code_version(), "python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        env["gpus"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    try:
        from importlib.metadata import version

        env["ray"] = version("ray")
    except Exception:  # noqa: BLE001
        env["ray"] = None
    return env


def _job_events(events: list[dict], job: str) -> list[dict]:
    """Every event of `job`, in order. A resumed run appends to the same curve; steps replayed after a restart
    appear twice and the plots keep the later value."""
    return [e for e in events if e.get("job") == job]


def plot_curves(events: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for job in ("pretrain", "sft", "rl"):
        ev = _job_events(events, job)
        train = {e["step"]: e for e in ev if e.get("event") == "train"}  # a replayed step keeps its last value
        evals = {e["step"]: e for e in ev if e.get("event") == "eval" and e.get("val_bpb") is not None}
        if not train:
            continue
        plan = next((e for e in ev if e.get("event") == "plan"), {})
        steps = sorted(train)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        axes[0].plot(steps, [train[s]["loss"] for s in steps], label="train loss (smoothed)")
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("loss (nats/token)")
        if evals:
            ax2 = axes[0].twinx()
            es = sorted(evals)
            ax2.plot(es, [evals[s]["val_bpb"] for s in es], "o-", color="tab:orange", label="val bpb")
            ax2.set_ylabel("val bits per byte")
        axes[0].set_title(f"{job}: loss and val bpb vs step")
        fpt, batch = plan.get("flops_per_token"), plan.get("total_batch_size")
        if fpt and batch:
            axes[1].plot([s * batch * fpt for s in steps], [train[s]["loss"] for s in steps])
            axes[1].set_xscale("log")
            axes[1].set_xlabel("training FLOPs")
            axes[1].set_title(f"{job}: loss vs FLOPs")
        elif job == "rl":
            rw = [e for e in ev if e.get("event") == "train" and "mean_reward" in e]
            axes[1].plot([e["step"] for e in rw], [e["mean_reward"] for e in rw])
            axes[1].set_xlabel("step")
            axes[1].set_title("rl: mean reward")
        else:
            axes[1].axis("off")
        fig.tight_layout()
        name = f"{job}_curves.png"
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        files.append(name)
    return files


def _fmt(v, nd=4):
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return "" if v is None else str(v)


def _table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return lines


def build_report(run_dir: str | os.PathLike, price_per_hour: float | None = None) -> Path:
    run_dir = Path(run_dir)
    events = read_events(run_dir)
    env = environment()
    md = [f"# raychat report: {run_dir.name}", ""]
    md += ["## Environment", ""]
    code = env.pop("code")
    md += [f"- code: raychat {code['version']}, commit `{code['commit']}`" + (" (dirty)" if code["dirty"] else "")]
    md += [f"- {k}: {v}" for k, v in env.items()]
    md.append("")

    tok_dir = run_dir / "tokenizer"
    if tok_dir.is_dir():
        md += ["## Tokenizer", ""]
        info = _load_json(tok_dir / "tokenizer.json") or _load_json(tok_dir / "meta.json") or {}
        vocab = info.get("vocab_size")
        md.append(f"- directory: `{tok_dir}`" + (f", vocab size {vocab}" if vocab else ""))
        tok_eval = _load_json(run_dir / "evals" / "tokenizer.json")
        if tok_eval and isinstance(tok_eval.get("rows"), list):
            rows = tok_eval["rows"]
            if rows:
                md.append("")
                keys = list(rows[0])
                md += _table(keys, [[r.get(k) for k in keys] for r in rows])
        md.append("")

    md += ["## Stages", ""]
    for stage in STAGES:
        ck = latest_checkpoint(run_dir / "checkpoints" / stage)
        if ck is None:
            continue
        meta = read_meta(ck)
        cfg = meta.get("config", {})
        mc = meta.get("model_config", {})
        keys = [k for k in ("preset", "depth", "num_iterations", "total_batch_size", "device_batch_size",
                            "num_workers", "matrix_lr", "embedding_lr") if k in cfg]
        md.append(f"### {stage} (step {meta.get('step')}, `{ck}`)")
        md.append(f"- model: {mc.get('n_layer')} layers, width {mc.get('n_embd')}, {mc.get('n_head')} heads, "
                  f"vocab {mc.get('vocab_size')}, context {mc.get('sequence_len')}")
        md.append("- config: " + ", ".join(f"{k}={cfg[k]}" for k in keys))
        p = meta.get("plan") or {}
        if p.get("total_batch_size"):
            md.append(f"- plan: {p.get('num_iterations')} steps x {p.get('total_batch_size')} tokens = "
                      f"{p.get('total_tokens')} tokens ({p.get('scaling_params')} scaling params)")
        elif p:
            md.append("- plan: " + ", ".join(f"{k}={v}" for k, v in p.items() if isinstance(v, (int, float, str))))
        if meta.get("total_training_time") is not None:
            md.append(f"- training time: {meta['total_training_time']:.1f} s (steps only)")
        if meta.get("val_bpb") is not None:
            md.append(f"- val bpb: {meta['val_bpb']:.4f}")
        md.append("")

    for job in ("pretrain", "sft", "rl"):
        tr = [e for e in _job_events(events, job) if e.get("event") == "train"]
        if tr:
            last = tr[-1]
            md.append(f"- {job}: last logged step {last.get('step')}, loss {_fmt(last.get('loss'))}, "
                      f"{_fmt(last.get('tokens_per_second'), 0)} tokens/s, MFU {_fmt(last.get('mfu'))}")
    plots = plot_curves(events, run_dir / "plots")
    if plots:
        md += ["", "## Curves", ""] + [f"![{p}](plots/{p})" for p in plots] + [""]

    base = _load_json(run_dir / "evals" / "base.json")
    if base and "core" in base:
        core = base["core"]
        md += ["## Base model: CORE", "", f"CORE = **{core['core_metric']:.4f}** over {core.get('num_tasks')} tasks "
               f"(max {core.get('max_per_task')} examples per task; GPT-2 scores 0.2565)", ""]
        md += _table(["task", "type", "n", "accuracy", "centered"],
                     [[t["label"], t["task_type"], core["num_examples"][t["label"]], core["results"][t["label"]],
                       core["centered_results"][t["label"]]] for t in core["tasks"]])
        if core.get("missing"):
            md.append("")
            md.append("Missing tasks: " + "; ".join(core["missing"]))
        if base.get("val_bpb") is not None:
            md += ["", f"Validation bits per byte: {base['val_bpb']:.4f}"]
        if base.get("samples"):
            md += ["", "Samples (greedy):", ""] + [f"- `{s!r}`" for s in base["samples"]]
        md.append("")

    for stage in STAGES:
        chat = _load_json(run_dir / "evals" / f"chat_{stage}.json")
        if not chat:
            continue
        md += [f"## Chat evals ({stage})", "", f"ChatCORE = **{chat['chatcore']:.4f}**", ""]
        md += _table(["task", "accuracy", "centered", "passed", "total"],
                     [[n, r["accuracy"], r.get("centered"), r.get("num_passed"), r.get("num_total")]
                      for n, r in chat["results"].items()])
        md.append("")

    sft_quick = _load_json(run_dir / "evals" / "sft_quick_chat_eval.json")
    if sft_quick and isinstance(sft_quick.get("results"), dict):
        res = {k: v for k, v in sft_quick["results"].items() if isinstance(v, dict)}
        md += [f"## SFT: quick chat eval at step {sft_quick.get('step')}", ""]
        md += _table(["task", "accuracy", "centered", "passed", "total"],
                     [[n, r.get("accuracy"), r.get("centered"), r.get("num_passed"), r.get("num_total")]
                      for n, r in res.items()])
        sft_val = [e for e in _job_events(events, "sft") if e.get("event") == "eval" and e.get("val_loss") is not None]
        if sft_val:
            md += ["", "Validation loss on held-out conversations: " +
                   ", ".join(f"step {e['step']}: {e['val_loss']:.4f}" for e in sft_val)]
        md.append("")
    rl = _load_json(run_dir / "evals" / "rl_pass_at_k.json")
    if rl and rl.get("evals"):
        k = rl.get("k")
        md += [f"## RL (GRPO) on {rl.get('task')}: pass@1 and pass@{k} before/after", ""]
        md += _table(["step", "pass@1", f"pass@{k}", "problems"],
                     [[e.get("step"), e.get("pass@1"), e.get("pass@k"), e.get("eval_problems")] for e in rl["evals"]])
        rewards = [e for e in _job_events(events, "rl") if e.get("event") == "train" and "mean_reward" in e]
        if rewards:
            md += ["", f"Mean reward: {rewards[0]['mean_reward']:.3f} at step {rewards[0]['step']} -> "
                   f"{rewards[-1]['mean_reward']:.3f} at step {rewards[-1]['step']}"]
        md.append("")

    speed = _load_json(run_dir / "speedrun.json")
    if speed and speed.get("stages"):
        total = sum(s.get("seconds", 0.0) for s in speed["stages"].values())
        hardware = speed.get("hardware", "cpu")
        price = price_per_hour if price_per_hour is not None else float(
            os.environ.get("RAYCHAT_PRICE_PER_HOUR", PRICE_PER_HOUR.get(hardware, 0.0)))
        md += ["## Timings", ""]
        md += _table(["stage", "seconds", "status"],
                     [[n, s.get("seconds"), s.get("status")] for n, s in speed["stages"].items()])
        md += ["", f"Total wall time {total / 60:.1f} min on {hardware}; estimated cost ${total / 3600 * price:.2f} "
               f"at ${price:.2f}/h.", ""]
    out = run_dir / "report.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, out)
    return out
