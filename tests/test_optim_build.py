"""build_optimizer on a GPT-shaped fake model: groups and learning rates, a short training run, no collectives
at world size 1, and state_dict round trips (resume gives bit-identical next steps)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.distributed as dist
from conftest import free_port
from test_optim_fakes import FakeGPT, batch, train_steps

from raychat.common import RaychatError
from raychat.optim import MuonAdamW, build_optimizer


def test_build_optimizer_groups_and_learning_rates():
    """nanochat's per-group table: lr, betas and (decoupled) AdamW weight decay per group."""
    model = FakeGPT()
    opt = build_optimizer(model, embedding_lr=0.3, unembedding_lr=0.004, matrix_lr=0.02, scalar_lr=0.5,
                          weight_decay=0.2)
    assert isinstance(opt, MuonAdamW)
    s = (64 / 768) ** -0.5                      # n_embd = 64 -> AdamW lrs x sqrt(12)
    by_name = {g["name"]: g for g in opt.param_groups}
    want = {  # name: (lr, betas, weight decay)
        "lm_head": (0.004 * s, (0.8, 0.96), 0.01),
        "embedding": (0.3 * s, (0.8, 0.995), 0.001),
        "value_embeds": (0.15 * s, (0.8, 0.995), 0.01),
        "resid_lambdas": (0.005, (0.8, 0.95), 0.05),
        "x0_lambdas": (0.5, (0.96, 0.95), 0.0),
        "scalars": (0.2, (0.8, 0.95), 0.0),     # smear/backout: a fixed lr
    }
    for name, (lr, betas, wd) in want.items():
        g = by_name[name]
        assert (g["lr"], g["betas"], g["weight_decay"], g["eps"]) == (pytest.approx(lr), betas, wd, 1e-10), name
    assert by_name["resid_lambdas"]["params"] == [model.resid_lambdas]
    assert by_name["x0_lambdas"]["params"] == [model.x0_lambdas]
    assert by_name["scalars"]["params"] == [model.smear_lambda]
    muon = [g for g in opt.param_groups if g["kind"] == "muon"]
    assert sorted(tuple(g["params"][0].shape) for g in muon) == [(32, 64), (64, 64), (64, 256), (256, 64)]
    assert sorted(len(g["params"]) for g in muon) == [3, 3, 6, 6]
    for g in opt.param_groups:
        assert g["initial_lr"] == g["lr"] and g["kind"] in ("adamw", "muon")
        if g["kind"] == "muon":
            assert len({p.shape for p in g["params"]}) == 1 and g["lr"] == 0.02 and g["ns_steps"] == 5
            assert (g["weight_decay"], g["beta2"], g["equilibrate"], g["renormalize"]) == (0.2, 0.9, True, True)
    # adam_betas replaces every AdamW group's betas (the earlier single-betas behaviour)
    old = build_optimizer(model, adam_betas=(0.8, 0.95))
    assert {g["betas"] for g in old.param_groups if g["kind"] == "adamw"} == {(0.8, 0.95)}
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_build_optimizer_rejects_bad_groups():
    model = FakeGPT()
    orig = model.param_groups

    model.param_groups = lambda: {**orig(), "scalars": orig()["scalars"][:-1]}
    with pytest.raises(ValueError, match="misses 1 parameters"):
        build_optimizer(model)
    model.param_groups = lambda: {**orig(), "matrices": orig()["matrices"] + [model.x0_lambdas]}
    with pytest.raises(ValueError, match="both"):
        build_optimizer(model)
    model.param_groups = lambda: {**orig(), "matrices": orig()["matrices"] + orig()["scalars"],
                                  "scalars": []}
    with pytest.raises(ValueError, match="2-D"):
        build_optimizer(model)


def test_training_reduces_loss_and_uses_no_collectives_at_world_size_1(monkeypatch):
    """One code path: at world size 1 (even with an initialised group of size 1) no collective runs."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a collective was called at world size 1")
    port = free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        for name in ("reduce_scatter_single", "all_gather_single", "all_reduce", "reduce_scatter_tensor",
                     "all_gather_into_tensor", "broadcast"):
            monkeypatch.setattr(dist, name, forbidden)
        model = FakeGPT(dtype=torch.float32)
        opt = build_optimizer(model, weight_decay=0.1)
        losses = []
        for _ in range(10):                     # overfit one batch
            x, y = batch(0)
            loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()
    assert losses[-1] < 0.5 * losses[0], losses
    # state exists for every parameter's group, unsharded
    assert opt.state[model.wte.weight]["exp_avg"].shape == model.wte.weight.shape
    assert opt.state[model.blocks[0].c_fc]["momentum_buffer"].shape == (3, 256, 64)
    assert opt.state[model.blocks[0].c_fc]["second_momentum_buffer"].shape == (3, 256, 1)    # tall: per row
    assert opt.state[model.blocks[0].mlp_proj]["second_momentum_buffer"].shape == (3, 1, 256)  # wide: per col


def test_state_dict_round_trip_gives_identical_next_steps():
    model = FakeGPT()
    opt = build_optimizer(model, weight_decay=0.1)
    train_steps(model, opt, 0, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    train_steps(model, opt, 3, 6)                          # the uninterrupted run

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)               # what a checkpoint file gives back
    assert ckpt["optim"]["sharding"] == {"rank": 0, "world_size": 1}
    resumed = FakeGPT(seed=123)                             # different init, overwritten by the checkpoint
    resumed.load_state_dict(ckpt["model"])
    opt2 = build_optimizer(resumed, weight_decay=0.1)
    opt2.load_state_dict(ckpt["optim"])
    train_steps(resumed, opt2, 3, 6)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert opt2.state[resumed.wte.weight]["step"] == 6


def test_loading_another_ranks_state_is_a_clear_error():
    model = FakeGPT()
    opt = build_optimizer(model)
    train_steps(model, opt, 0, 1)
    sd = copy.deepcopy(opt.state_dict())
    sd["sharding"] = {"rank": 1, "world_size": 2}
    with pytest.raises(RaychatError, match="rank 1 of 2.*same world size"):
        build_optimizer(FakeGPT()).load_state_dict(sd)


def test_torchrun_env_without_a_process_group_means_world_size_1(monkeypatch):
    """RANK/WORLD_SIZE set (torchrun before init_process_group) cannot all-reduce: the optimizer stays unsharded."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = FakeGPT()
    opt = build_optimizer(model)
    train_steps(model, opt, 0, 1)
    assert opt.state_dict()["sharding"] == {"rank": 0, "world_size": 1}
