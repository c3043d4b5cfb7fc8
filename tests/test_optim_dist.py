"""MuonAdamW across 2 processes (gloo, CPU) against the single-process run on the same global batch.

Each rank gets half of every batch; the loss is a mean, so the optimizer's averaged gradients equal the
single-process gradient and, after N steps with schedules on lr, momentum and weight decay, the parameters
must match the single-process run (fp64: to round-off; fp32: to fp32 round-off) and be bitwise identical on
both ranks. Each rank's state_dict is its shard only, and resuming from the per-rank shards reproduces the
uninterrupted run exactly.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from test_optim_fakes import FakeGPT, train_steps

from raychat.optim import build_optimizer

WORLD, STEPS, RESUME_AT = 2, 6, 3
# fp64: elementwise to 1e-10. fp32: relative Frobenius error per parameter. An elementwise fp32 bound would
# be unfair: averaging two half-batch gradients rounds differently from one full-batch mean, Polar Express
# amplifies round-off in directions with tiny singular values ~1000x, and NorMuon's per-row normalisation
# can then turn a row that is mostly such directions into a full-size step (seen: 1e-3 on one entry).
DTYPES = {"float64": (torch.float64, 1e-10), "float32": (torch.float32, 5e-4)}


def _state_shapes(model, opt):
    """{param name: {state key: shape}} for the params that have state on this rank."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: {k: tuple(v.shape) for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}


def _worker(rank, world, port, out_dir, keys=tuple(DTYPES), compile=False):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for key in keys:
            dtype = DTYPES[key][0]
            model = FakeGPT(dtype=dtype)
            opt = build_optimizer(model, weight_decay=0.2, compile=compile)
            train_steps(model, opt, 0, RESUME_AT, rank, world)
            ckpt = io.BytesIO()                             # this rank's checkpoint "file"
            torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, ckpt)
            train_steps(model, opt, RESUME_AT, STEPS, rank, world)

            ckpt.seek(0)
            loaded = torch.load(ckpt, weights_only=True)
            resumed = FakeGPT(dtype=dtype, seed=7)
            resumed.load_state_dict(loaded["model"])
            opt2 = build_optimizer(resumed, weight_decay=0.2, compile=compile)
            opt2.load_state_dict(loaded["optim"])
            train_steps(resumed, opt2, RESUME_AT, STEPS, rank, world)
            results[key] = {
                "final": {n: p.detach().clone() for n, p in model.named_parameters()},
                "resumed": {n: p.detach().clone() for n, p in resumed.named_parameters()},
                "shapes": _state_shapes(model, opt),
                "sharding": loaded["optim"]["sharding"],
            }
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path):
    port = free_port()
    mp.spawn(_worker, args=(WORLD, port, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    for key, (dtype, tol) in DTYPES.items():
        ref = FakeGPT(dtype=dtype)                          # single process, whole batch, no process group
        train_steps(ref, build_optimizer(ref, weight_decay=0.2), 0, STEPS)
        init = dict(FakeGPT(dtype=dtype).named_parameters())
        r0, r1 = ranks[0][key], ranks[1][key]
        for name, p in ref.named_parameters():
            assert torch.equal(r0["final"][name], r1["final"][name]), f"{key} {name}: ranks disagree"
            if dtype == torch.float64:
                torch.testing.assert_close(r0["final"][name], p.detach(), rtol=tol, atol=tol, msg=f"{key} {name}")
            else:
                rel = ((r0["final"][name] - p.detach()).norm() / p.detach().norm()).item()
                assert rel < tol, f"{key} {name}: relative error {rel:.2e}"
            assert not torch.equal(p, init[name]), f"{name} never moved"
            for r in (r0, r1):
                assert torch.equal(r["resumed"][name], r["final"][name]), f"{key} {name}: resume differs"
        assert [r0["sharding"], r1["sharding"]] == [{"rank": 0, "world_size": 2}, {"rank": 1, "world_size": 2}]

    # each rank holds only its shard of the state
    s0, s1 = ranks[0]["float64"]["shapes"], ranks[1]["float64"]["shapes"]
    assert s0["wte.weight"]["exp_avg"] == s1["wte.weight"]["exp_avg"] == (48, 64)          # 96 rows / 2
    assert s0["lm_head.weight"]["exp_avg_sq"] == (48, 64)
    assert s0["value_embeds.0.weight"]["exp_avg"] == (33, 32)                             # odd: replicated
    assert s0["smear_lambda"]["exp_avg"] == ()
    assert s0["blocks.0.c_q"]["momentum_buffer"] == s1["blocks.0.c_q"]["momentum_buffer"] == (3, 64, 64)
    assert s0["blocks.0.c_fc"]["momentum_buffer"] == (2, 256, 64)                        # K=3 -> 2 + 1
    assert s1["blocks.0.c_fc"]["momentum_buffer"] == (1, 256, 64)
    assert s1["blocks.0.mlp_proj"]["second_momentum_buffer"] == (1, 1, 256)
