"""`raychat bench NAME|all` (NAME: train, engine, loader, core, muon, optim, gemm, serve, quality, decode-peer):
run the benchmarks in benchmarks/ and record their
tables in <out>/RESULTS.md (one section per benchmark, replaced on each run, with the exact command, machine,
load average, date and commit) and the raw output in <out>/results/<name>.txt.

<out> is `--out DIR`, else benchmarks/ of a writable source checkout (the repository's own record), else
$RAYCHAT_HOME/bench (inside the image the install folder belongs to root; the home folder is the user's).

    raychat bench train                  # training tokens/s + MFU vs this CPU's GEMM peak, GPU projection
    raychat bench engine                 # prefill/decode tokens/s, TTFT, continuous batching vs sequential
    raychat bench serve                  # 32 concurrent WebSocket clients against a local Ray Serve app
    raychat bench quality                # the d4 quality race: val bpb at equal tokens, training tokens/s
    raychat bench optim                  # MuonAdamW.step() ms, eager vs compiled, at the race's d4 and d8
    raychat bench gemm                   # fp32 products: torch's BLAS vs oneDNN at the race's and decode's shapes
    raychat bench decode-peer            # greedy decode tok/s vs nanochat's Engine on one checkpoint
    raychat bench all                    # everything above but decode-peer (and loader, core, muon)
    raychat bench train -- --steps 20    # extra arguments after -- go to the benchmark script
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from raychat.common import REPO_ROOT, RaychatError, code_version, default_runs_root

BENCHES = {
    "train": ["benchmarks/bench_train.py"],
    "engine": ["benchmarks/bench_engine.py"],
    "loader": ["benchmarks/bench_loader.py"],
    "core": ["benchmarks/bench_core.py"],
    "muon": ["benchmarks/bench_muon.py"],
    "optim": ["benchmarks/bench_optim.py"],
    "gemm": ["benchmarks/bench_gemm.py"],
    "serve": ["benchmarks/bench_serve.py"],
    "quality": ["benchmarks/bench_quality.py"],
    "decode-peer": ["benchmarks/bench_decode_peer.py"],
}
PEER_ONLY = ("decode-peer",)  # need a nanochat checkout and venv: run by name, not by `all`


def add_arguments(p):
    p.add_argument("which", choices=[*BENCHES, "all"], help="benchmark to run")
    p.add_argument("--no-record", action="store_true", help="print only; do not write RESULTS.md")
    p.add_argument("--out", default=None, help="folder for RESULTS.md and results/ (default: benchmarks/ of a "
                   "writable source checkout, else $RAYCHAT_HOME/bench)")


def results_dir(out: str | None) -> Path:
    """Where results go: --out, else the checkout's benchmarks/ when writable, else $RAYCHAT_HOME/bench."""
    if out:
        d = Path(out).expanduser()
    else:
        d = REPO_ROOT / "benchmarks"
        if not os.access(d, os.W_OK):
            d = default_runs_root().parent / "bench"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RaychatError(f"cannot create the benchmark results folder {d}: {e.strerror}; pass --out DIR") from None
    if not os.access(d, os.W_OK):
        raise RaychatError(f"benchmark results folder {d} is not writable; pass --out DIR")
    return d


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", {torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}{gpu}"


def record(name: str, cmd: str, output: str, load: str, out_dir: Path | None = None) -> None:
    out_dir = out_dir if out_dir is not None else REPO_ROOT / "benchmarks"
    results = out_dir / "RESULTS.md"
    raw_dir = out_dir / "results"
    raw_dir.mkdir(exist_ok=True)
    (raw_dir / f"{name}.txt").write_text(output)
    code = code_version()
    section = (f"<!-- bench:{name} -->\n## {name}\n\n- command: `{cmd}`\n- machine: {machine()}\n"
               f"- load average at start: {load}\n- date: {datetime.datetime.now().isoformat(timespec='seconds')}\n"
               f"- commit: {code['commit']}{' (dirty tree)' if code['dirty'] else ''}\n\n```\n{output.strip()}\n```\n"
               f"<!-- /bench:{name} -->")
    text = results.read_text() if results.is_file() else "# Benchmark results\n"
    pat = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pat.sub(lambda _: section, text) if pat.search(text) else text.rstrip() + "\n\n" + section + "\n"
    tmp = results.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, results)


def run(args):
    names = [n for n in BENCHES if n not in PEER_ONLY] if args.which == "all" else [args.which]
    args.extra = getattr(args, "passthrough", [])
    out_dir = None if args.no_record else results_dir(getattr(args, "out", None))
    failed = []
    for name in names:
        script = BENCHES[name]
        if not (REPO_ROOT / next(a for a in script if a.endswith(".py"))).is_file():
            raise RaychatError(f"benchmark script for {name!r} not found under {REPO_ROOT / 'benchmarks'}: "
                               "`raychat bench` runs from a source checkout")
        argv = [sys.executable, *script, *args.extra]
        cmd = "raychat bench " + name + (" -- " + " ".join(args.extra) if args.extra else "")
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\n===== {cmd} =====", flush=True)
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            out.append(line)
        if proc.wait() != 0:
            failed.append(name)
            continue
        if not args.no_record:
            record(name, cmd, "".join(out), load, out_dir)
            print(f"recorded in {out_dir / 'RESULTS.md'}", flush=True)
    if failed:
        raise RaychatError(f"benchmark(s) failed: {', '.join(failed)}")
    return 0
