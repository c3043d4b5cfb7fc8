"""Training throughput and MFU on this machine: one optimizer step = forward + backward + MuonAdamW step, timed
after warm-up (training time only: no eval, no logging, no data wait: batches are pre-built), plus a projection
of the GPT-2-grade recipe's wall time and cost on 8xH100 from its FLOPs.

    python benchmarks/bench_train.py                  # table on stdout
    python benchmarks/bench_train.py --json out.json  # also JSON
    python benchmarks/bench_train.py --configs d12,d20,d24 --window-pattern SSSL --fp8 tensorwise  # the record
                                                      # recipe's step on one GPU (sliding windows, FP8 blocks)
    raychat bench train                               # the same, recorded into benchmarks/RESULTS.md

MFU = model FLOPs per token x tokens/s / peak, the peak being this CPU's measured fp32 GEMM rate (square
1024 matmuls, best of ~2 s) or the GPU's datasheet bf16 figure (also with --fp8: the figure stays comparable
across runs; FP8 matmuls can push it past what bf16 could reach). The attention backend of the run is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

# name -> (depth, width, head_dim, seq_len, device_batch, vocab, torch.compile)
CONFIGS = {
    # the reference implementation's small CPU configuration (issue 4's speed target), eager and compiled
    "ref-d4": (4, 256, 64, 256, 8, 8192, False),
    "ref-d4-compiled": (4, 256, 64, 256, 8, 8192, True),
    "d6": (6, 384, 64, 256, 8, 8192, False),
    "d6-compiled": (6, 384, 64, 256, 8, 8192, True),
}
# GPU configurations (the default on a CUDA box): the recipe's shapes, head_dim 128, vocab 32768, 2048 context,
# compiled, bf16. The device batch is what fits an 80 GB card at that depth (nanochat's choice).
GPU_CONFIGS = {
    "d12": (12, 768, 128, 2048, 32, 32768, True),
    "d20": (20, 1280, 128, 2048, 32, 32768, True),
    "d24": (24, 1536, 128, 2048, 16, 32768, True),
}


def convert_fp8(model, recipe: str) -> int:
    """torchao Float8Linear for the block linears whose dims are multiples of 16 (the training loop's rule)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    convert_to_float8_training(model.blocks, config=Float8LinearConfig.from_recipe_name(recipe),
                               module_filter_fn=lambda m, _: m.in_features % 16 == 0 and m.out_features % 16 == 0)
    return sum(type(m).__name__ == "Float8Linear" for m in model.blocks.modules())


def build(depth, width, head_dim, seq_len, vocab, device, dtype, window_pattern="L", fp8=""):
    from raychat.model import GPT, GPTConfig
    from raychat.optim import build_optimizer

    cfg = GPTConfig(sequence_len=seq_len, vocab_size=vocab, n_layer=depth, n_head=width // head_dim,
                    n_kv_head=width // head_dim, n_embd=width, window_pattern=window_pattern)
    with torch.device("meta"):
        model = GPT(cfg, compute_dtype=dtype)
    model.to_empty(device=device)
    model.init_weights()
    opt = build_optimizer(model, matrix_lr=0.02, weight_decay=0.0)
    if fp8:
        convert_fp8(model, fp8)
    return model, opt


def bench_config(name, depth, width, head_dim, seq_len, batch, vocab, compile_, steps, warmup, device, dtype, peak,
                 window_pattern="L", fp8=""):
    from raychat.perf import mfu

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model, opt = build(depth, width, head_dim, seq_len, vocab, device, dtype, window_pattern, fp8)
    fwd = torch.compile(model, dynamic=False) if compile_ else model
    t_compile = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (batch, seq_len + 1), generator=g).to(device) for _ in range(4)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, fb_times = [], []
    for i in range(warmup + steps):
        b = batches[i % len(batches)]
        sync()
        t0 = time.perf_counter()
        loss = fwd(b[:, :-1], b[:, 1:])
        loss.backward()
        sync()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t2 = time.perf_counter()
        if i == 0:
            t_compile = t2 - t_compile  # first step: includes compilation when compiled
        if i >= warmup:
            times.append(t2 - t0)
            fb_times.append(t1 - t0)
    tokens = batch * seq_len
    step = statistics.median(times)
    fpt = model.num_flops_per_token()
    tps = tokens / step
    return {"config": name, "depth": depth, "width": width, "heads": width // head_dim, "seq_len": seq_len,
            "batch": batch, "vocab": vocab, "params": model.num_params()["total"], "flops_per_token": fpt,
            "median_step_s": step, "tokens_per_s": tps, "mfu": mfu(fpt, tps, peak),
            "fwd_bwd_s": statistics.median(fb_times), "optim_s": step - statistics.median(fb_times),
            "steps": steps, "compile": compile_, "first_step_s": t_compile, "window_pattern": window_pattern,
            "fp8": fp8 or "-",
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def projection(mfus=(0.4, 0.5), gpus: int = 8, peak: float = 989e12, fp8_peak: float = 1979e12,
               price_per_gpu_hour: float = 3.0) -> list[dict]:
    """Projected wall time and cost of pretraining each GPU preset from its FLOPs (not a measurement). For an
    FP8 preset the block matmuls (the FLOPs FP8 runs: 6 x block matrices per token) count against the FP8 peak
    (2x bf16 on H100), the lm_head and attention against the bf16 peak; MFU applies to both."""
    from raychat.model import model_card
    from raychat.train.config import derive, get_preset, model_config_for

    rows = []
    for preset in ("d12", "d20", "gpt2_8xh100"):
        cfg = get_preset(preset)
        plan = derive(cfg, 32768, cfg.num_workers)
        card = model_card(model_config_for(cfg, 32768))
        tokens = plan["total_tokens"]
        flops = card["flops_per_token"] * tokens
        fp8_flops = 6 * card["params"]["matrices"] * tokens if cfg.fp8 else 0.0
        for m in mfus:
            seconds = (fp8_flops / fp8_peak + (flops - fp8_flops) / peak) / (gpus * m)
            hours = seconds / 3600
            rows.append({"preset": preset, "depth": cfg.depth, "ratio": cfg.target_param_data_ratio,
                         "fp8": cfg.fp8 or "-", "tokens": tokens, "flops": flops, "mfu": m, "hours": hours,
                         "cost_usd": hours * gpus * price_per_gpu_hour})
    return rows


def to_markdown(res: dict) -> str:
    lines = [f"Peak: {res['peak_flops'] / 1e9:.1f} GFLOP/s ({res['peak_source']}); torch {res['torch']}, "
             f"{res['threads']} threads, dtype {res['dtype']}; attention {res['attention']}; window pattern "
             f"{res['window_pattern']}, fp8 {res['fp8'] or 'off'}.", "",
             "| config | depth | width | seq | batch | vocab | params | FLOPs/token | step (s) | tokens/s | MFU | "
             "fwd+bwd (s) | optim (s) | first step (s) | peak GPU mem |", "|" + "---|" * 15]
    for r in res["results"]:
        lines.append(f"| {r['config']} | {r['depth']} | {r['width']} | {r['seq_len']} | {r['batch']} | {r['vocab']} | "
                     f"{r['params'] / 1e6:.2f}M | {r['flops_per_token'] / 1e6:.1f}M | {r['median_step_s']:.3f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['mfu'] * 100:.1f}% | {r['fwd_bwd_s']:.3f} | {r['optim_s']:.3f} | "
                     f"{r['first_step_s']:.1f} | "
                     f"{'-' if r.get('peak_mem_gib') is None else format(r['peak_mem_gib'], '.1f') + ' GiB'} |")
    lines += ["", "Projection (not measured): pretraining on 8xH100 (989 TFLOP/s bf16, 1979 FP8 each), $3/GPU-hour; "
              "nanochat's measured record for the gpt2_8xh100 recipe (d24, ratio 8, FP8) is 1.65 h.", "",
              "| preset | depth | tokens:params | FP8 | tokens | FLOPs | MFU | hours | cost |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in res["projection"]:
        lines.append(f"| {p['preset']} | {p['depth']} | {p['ratio']:g} | {p['fp8']} | {p['tokens'] / 1e9:.2f}B | "
                     f"{p['flops']:.2e} | {p['mfu'] * 100:.0f}% | {p['hours']:.2f} | ${p['cost_usd']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    from raychat.common import detect_device
    from raychat.perf import measure_gemm_peak, peak_flops

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=None,
                    help="comma-separated subset of " + ",".join([*CONFIGS, *GPU_CONFIGS]) +
                         " (default: the CPU ones on a CPU, the GPU ones on a GPU)")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per config (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--window-pattern", default="L",
                    help="attention window pattern (the record recipe: SSSL; sliding windows need a flash backend "
                         "to be fast, SDPA masks them)")
    ap.add_argument("--fp8", default="", choices=["", "tensorwise", "rowwise"],
                    help="torchao FP8 block linears (CUDA SM89+; the record recipe: tensorwise)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    from raychat.model.attention import select_backend

    dev = detect_device()
    if args.fp8 and dev.device_type != "cuda":
        raise SystemExit("--fp8 needs a CUDA GPU with FP8 tensor cores (SM89+)")
    attn, why = select_backend(dev.device_type)
    if dev.device_type == "cpu":
        peak = measure_gemm_peak("cpu", torch.float32, seconds=2.0)
        src = f"measured fp32 GEMM, {torch.get_num_threads()} threads"
    else:
        peak, src = peak_flops(dev.device_type, dev.dtype)
        measured = measure_gemm_peak(dev.device, dev.dtype, n=8192, seconds=2.0)
        src += f"; measured {str(dev.dtype).removeprefix('torch.')} GEMM 8192^3 here: {measured / 1e12:.0f} TFLOP/s"
    table = CONFIGS if dev.device_type == "cpu" else GPU_CONFIGS
    all_configs = {**CONFIGS, **GPU_CONFIGS}
    results = []
    for name in (args.configs or ",".join(table)).split(","):
        if name not in all_configs:
            raise SystemExit(f"unknown config {name!r}; choose from {', '.join(all_configs)}")
        results.append(bench_config(name, *all_configs[name], args.steps, args.warmup, dev.device, dev.dtype, peak,
                                    args.window_pattern, args.fp8))
    res = {"peak_flops": peak, "peak_source": src, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "dtype": str(dev.dtype).removeprefix("torch."), "attention": f"{attn} ({why})",
           "window_pattern": args.window_pattern, "fp8": args.fp8, "results": results, "projection": projection()}
    md = to_markdown(res)
    print(md)
    res["markdown"] = md
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
