"""The training recipe's rules, each pinned with numbers worked out by hand (nanochat's current record recipe):
lr / momentum / weight-decay schedules, the scaling rules of `derive` at the d4 race and the d24 record preset,
short-window sizes, Muon+ renormalisation, and the schedules set on an optimizer's groups."""

from __future__ import annotations

import math

import pytest
import torch

from raychat.model import GPTConfig
from raychat.optim import MuonAdamW
from raychat.train.config import PretrainConfig, derive, get_preset
from raychat.train.schedule import lr_multiplier, weight_decay_at

# the d4 race of issue 16: width 256, 4 heads of 64, vocab 8192, seq 256, 2048 tokens per step, 300 steps
RACE = dict(depth=4, aspect_ratio=64, head_dim=64, seq_len=256, window_pattern="L", device_batch_size=8,
            total_batch_size=2048, num_iterations=300)


def test_defaults_are_nanochats():
    c = PretrainConfig()
    assert (c.embedding_lr, c.unembedding_lr, c.matrix_lr, c.scalar_lr) == (0.3, 0.008, 0.02, 0.5)
    assert (c.weight_decay, c.warmup_steps, c.warmdown_ratio, c.final_lr_frac) == (0.28, 40, 0.65, 0.05)
    assert c.target_param_data_ratio == 12.0


def test_lr_schedule_at_the_race():
    # 300 steps, warm-up 40, warm-down round(0.65 x 300) = 195 steps from step 105, final fraction 0.05
    lrm = [lr_multiplier(s, 300, 40, 0.65, 0.05) for s in range(301)]
    assert lrm[0] == pytest.approx(1 / 40) and lrm[19] == pytest.approx(0.5) and lrm[39] == 1.0
    assert lrm[40] == lrm[104] == lrm[105] == 1.0
    assert lrm[200] == pytest.approx(100 / 195 + 95 / 195 * 0.05)   # progress (300 - 200) / 195
    assert lrm[299] == pytest.approx(1 / 195 + 194 / 195 * 0.05)
    assert lrm[300] == pytest.approx(0.05)


def test_weight_decay_schedule_is_a_cosine_to_zero():
    assert weight_decay_at(0, 300, 0.3) == pytest.approx(0.3)
    assert weight_decay_at(75, 300, 0.3) == pytest.approx(0.15 * (1 + math.sqrt(0.5)))  # cos(pi/4)
    assert weight_decay_at(150, 300, 0.3) == pytest.approx(0.15)
    assert weight_decay_at(300, 300, 0.3) == pytest.approx(0.0, abs=1e-15)
    assert weight_decay_at(75, 300, 0.3, shape="linear") == pytest.approx(0.225)  # the earlier rule
    with pytest.raises(ValueError, match="cosine"):
        weight_decay_at(0, 300, 0.3, shape="step")


# scaling parameters (block matrices incl. value-embedding gates + lm_head), counted by hand:
# d4 race: 4 layers x (4 x 256^2 attention + 2 x 256 x 1024 MLP) + 2 gates of 32 x 4 + 8192 x 256
D4 = 4 * (4 * 256**2 + 2 * 256 * 1024) + 2 * 32 * 4 + 8192 * 256
# d12 reference at head dim 64 (width 768, 12 heads): 12 x 12 x 768^2 + 6 gates of 32 x 12 + 8192 x 768
D12_HD64 = 12 * 12 * 768**2 + 6 * 32 * 12 + 8192 * 768


def test_derive_at_the_race_scales_weight_decay_by_the_horizon():
    plan = derive(PretrainConfig(**RACE), 8192, 1)
    assert plan["scaling_params"] == D4 == 5_243_136
    lr_scale = (2048 / 2**19) ** 0.5                                 # 1/16
    assert plan["lr_scale"] == pytest.approx(lr_scale)
    assert plan["matrix_lr"] == pytest.approx(0.02 / 16) and plan["unembedding_lr"] == pytest.approx(0.008 / 16)
    # 0.28 x sqrt(B / B_ref) x D_ref / D: the horizons are 12 x params, so the ratio is D12 / D4 = 17.40 -> 0.3045
    assert plan["weight_decay"] == pytest.approx(0.28 / 16 * D12_HD64 / D4)
    assert plan["weight_decay"] == pytest.approx(0.3045, abs=1e-4)
    assert plan["num_iterations"] == 300 and plan["total_tokens"] == 300 * 2048


def test_derive_horizon_batch_and_iterations_from_depth():
    plan = derive(PretrainConfig(**{**RACE, "total_batch_size": -1, "num_iterations": -1}), 8192, 1)
    # D = 12 x 5,243,136 = 62,917,632; B = 2^19 (D4 / D12)^0.383 = 2^(19 - 1.578) -> 2^17
    assert plan["target_tokens"] == 12 * D4 == 62_917_632
    assert plan["total_batch_size"] == 2**17
    assert plan["num_iterations"] == 62_917_632 // 2**17 == 480       # floored, as nanochat does


def test_record_preset_is_d24_ratio_8_fp8():
    cfg = get_preset("gpt2_8xh100")
    assert (cfg.depth, cfg.target_param_data_ratio, cfg.fp8, cfg.compile) == (24, 8.0, "tensorwise", True)
    plan = derive(cfg, 32768, 8)
    # d24, head dim 128: 24 x 12 x 1536^2 + 12 gates of 32 x 12 + 32768 x 1536 = 729,813,504
    d24 = 24 * 12 * 1536**2 + 12 * 32 * 12 + 32768 * 1536
    d12 = 12 * 12 * 768**2 + 6 * 32 * 6 + 32768 * 768              # 110,101,632
    assert plan["scaling_params"] == d24
    # B = 2^19 (d24 / d12)^0.383 = 2^19 x 2.064 -> 2^20; iterations = 8 x d24 // 2^20 = 5568
    assert plan["total_batch_size"] == 2**20
    assert plan["num_iterations"] == 8 * d24 // 2**20 == 5568
    assert plan["matrix_lr"] == pytest.approx(0.02 * 2**0.5)
    assert plan["weight_decay"] == pytest.approx(0.28 * 2**0.5 * d12 / d24)


@pytest.mark.parametrize("seq_len, frac, want", [
    (2048, 0.25, 512),    # a quarter of the context: 512 (nanochat's rule; a whole number of 128-tiles)
    (4096, 0.25, 1024),
    (1000, 0.25, 256),    # 250 -> rounded up to 2 tiles
    (2048, 0.5, 1024),    # the earlier half-context window, still available through short_window_frac
    (256, 0.25, 64),      # <= 128: exact (small models keep a real window)
    (130, 1.0, 130),      # rounded up to 256 but never beyond the context
])
def test_short_window_size(seq_len, frac, want):
    cfg = GPTConfig(sequence_len=seq_len, n_layer=4, window_pattern="SSSL", short_window_frac=frac)
    assert cfg.window_sizes() == [want, want, want, None]


def test_short_window_default_is_a_quarter():
    assert GPTConfig(sequence_len=2048, n_layer=4).window_sizes() == [512, 512, 512, None]


@pytest.mark.parametrize("renormalize", [True, False])
def test_muon_plus_snaps_the_update_norm(renormalize):
    """From a zero parameter one step moves it by -lr x update: with Muon+ the update's Frobenius norm is
    sqrt(min(m, n)) = 4 exactly (NorMuon keeps it); 2 Polar Express iterations alone fall short of that."""
    p = torch.nn.Parameter(torch.zeros(16, 32, dtype=torch.float64))
    p.grad = torch.randn(16, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opt = MuonAdamW([{"kind": "muon", "params": [p], "lr": 0.1, "ns_steps": 2, "renormalize": renormalize}])
    opt.step()
    norm = (p.detach() / 0.1).norm().item()
    if renormalize:
        assert norm == pytest.approx(4.0, rel=1e-12)
    else:
        assert abs(norm - 4.0) > 0.05


def test_lr_and_muon_schedule_set_each_group():
    """Step 200 of the race (300 steps, warm-down 0.65 = 195 steps from 105, to 5%): what the harness (lr) and
    pretraining's step (momentum, decay) set on each group, by hand."""
    from raychat.train.schedule import muon_schedule_

    cfg = PretrainConfig(**RACE)
    w = torch.nn.Parameter(torch.zeros(8, 8))
    b = torch.nn.Parameter(torch.zeros(8))
    opt = MuonAdamW([{"kind": "muon", "params": [w], "lr": 0.02, "weight_decay": 0.3},
                     {"kind": "adamw", "params": [b], "lr": 0.1, "weight_decay": 0.01}])
    lrm = lr_multiplier(200, 300, cfg.warmup_steps, cfg.warmdown_ratio, cfg.final_lr_frac)
    assert lrm == pytest.approx(100 / 195 + 95 / 195 * 0.05)
    muon_schedule_(opt, 200, 300, cfg.warmdown_ratio)
    muon, adam = opt.param_groups
    assert muon["momentum"] == pytest.approx(0.85 + 0.12 * 200 / 400)  # nanochat's: still warming up
    assert muon["weight_decay"] == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))   # 0.075
    assert muon["initial_weight_decay"] == 0.3
    assert adam["weight_decay"] == 0.01 and "momentum" not in adam


def test_muon_schedule_in_the_warm_down():
    """A 1000-step run, warm-down 0.65: the warm-down spans steps 350..1000; past the 400-step warm-up the
    momentum is on that line, 0.97 - 0.07 x (900 - 350) / 650 at step 900; weight decay 0.28 x (1 + cos(0.9 pi)) / 2
    by hand; the AdamW group is left alone."""
    import math

    import torch

    from raychat.train.schedule import muon_schedule_

    opt = torch.optim.SGD([{"params": [torch.zeros(2, 2)], "kind": "muon", "weight_decay": 0.28},
                           {"params": [torch.zeros(2)], "kind": "adamw", "weight_decay": 0.01}], lr=0.1)
    muon_schedule_(opt, 900, 1000, 0.65)
    muon, adamw = opt.param_groups
    assert muon["momentum"] == pytest.approx(0.97 - 0.07 * 550 / 650)
    assert muon["weight_decay"] == pytest.approx(0.28 * (1 + math.cos(0.9 * math.pi)) / 2)
    assert adamw["weight_decay"] == 0.01 and adamw["momentum"] == 0  # SGD's own default, untouched
