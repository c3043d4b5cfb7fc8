"""Model: attention against a float64 reference, KV-cached decode vs full forward, every feature switch,
init, the depth dial and FLOPs accounting on the meta device."""

import copy
import math

import pytest
import torch
from conftest import fresh_gpt

from raychat.model import GPT, GPTConfig, KVCache, config_for_depth, model_card
from raychat.model.attention import attend, select_backend


def tiny_config(**kw):
    base = dict(sequence_len=32, vocab_size=97, n_layer=4, n_head=4, n_kv_head=2, n_embd=64, window_pattern="SL",
                short_window_frac=0.25)
    base.update(kw)
    return GPTConfig(**base)


def make_model(cfg, seed=0):
    m = fresh_gpt(cfg, seed)
    # give the zero-initialised parts non-trivial values so every path is exercised
    with torch.no_grad():
        for b in m.blocks:
            b.attn.c_proj.weight.normal_(0, 0.05)
            b.mlp.c_proj.weight.normal_(0, 0.05)
            if b.attn.ve_gate is not None:
                b.attn.ve_gate.weight.normal_(0, 0.1)
        if cfg.smear:
            m.smear_lambda.fill_(0.5)
            m.smear_gate.normal_(0, 0.1)
        if cfg.backout:
            m.backout_lambda.fill_(0.2)
        m.lm_head.weight.normal_(0, 0.05)
    return m.eval()


def naive_attention(q, k, v, window):
    """float64 reference: explicit scores, causal + window mask, GQA by repeating KV heads."""
    q, k, v = q.double(), k.double(), v.double()
    B, T, H, D = q.shape
    rep = H // k.size(2)
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (i - j < window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)


def reference_forward(m: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The model's forward written out plainly in float64 from the parameters (the architecture as the module
    docstring describes it), independent of the module's code: rotary on the two halves of the head dim,
    QK-norm after it, GQA by repeating KV heads, value-embedding gate, smear, residual lambdas, backout, softcap."""
    c = m.config
    P = {k: v.double() for k, v in m.state_dict().items()}
    B, T = idx.shape
    H, Hkv, D = c.n_head, c.n_kv_head, c.head_dim

    def rms(x):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + torch.finfo(torch.float32).eps)

    inv = 1.0 / (c.rope_base ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]

    def rope(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], -1)

    x = rms(P["wte.weight"][idx])
    if c.smear:
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
        gate = torch.sigmoid(x[..., :24] @ P["smear_gate"])
        x = x + P["smear_lambda"] * gate[..., None] * prev
    x0, x_mid = x, None
    for i, w in enumerate(c.window_sizes()):
        p = f"blocks.{i}."
        x = P["resid_lambdas"][i] * x + P["x0_lambdas"][i] * x0
        h = rms(x)
        q = (h @ P[p + "attn.c_q.weight"].T).view(B, T, H, D)
        k = (h @ P[p + "attn.c_k.weight"].T).view(B, T, Hkv, D)
        v = (h @ P[p + "attn.c_v.weight"].T).view(B, T, Hkv, D)
        if c.has_value_embed(i):
            g = 2 * torch.sigmoid(h[..., :32] @ P[p + "attn.ve_gate.weight"].T)
            v = v + g[..., None] * P[f"value_embeds.{i}.weight"][idx].view(B, T, Hkv, D)
        q, k = rms(rope(q)), rms(rope(k))
        y = naive_attention(q, k, v, w).reshape(B, T, H * D)
        x = x + y @ P[p + "attn.c_proj.weight"].T
        h = torch.relu(rms(x) @ P[p + "mlp.c_fc.weight"].T) ** 2
        x = x + h @ P[p + "mlp.c_proj.weight"].T
        if i == c.n_layer // 2 - 1:
            x_mid = x
    if c.backout:
        x = x - P["backout_lambda"] * x_mid
    logits = rms(x) @ P["lm_head.weight"].T
    return c.logit_softcap * torch.tanh(logits / c.logit_softcap) if c.logit_softcap > 0 else logits


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 1}, {"smear": False, "backout": False, "value_embeds": False},
                                {"logit_softcap": 0.0}])
def test_forward_matches_float64_reference(kw):
    cfg = tiny_config(**kw)
    m = make_model(cfg)
    torch.manual_seed(3)
    idx = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        out = m(idx)
    torch.testing.assert_close(out.double(), reference_forward(m, idx), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("window", [None, 1, 5, 16])
def test_sdpa_matches_float64_reference(H, Hkv, window):
    torch.manual_seed(0)
    q = torch.randn(2, 16, H, 8)
    k = torch.randn(2, 16, Hkv, 8)
    v = torch.randn(2, 16, Hkv, 8)
    out = attend(q, k, v, window)
    ref = naive_attention(q, k, v, window)
    assert out.shape == (2, 16, H, 8)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)


def test_backend_on_cpu_is_sdpa_and_flash_requests_fail_clearly():
    assert select_backend("cpu")[0] == "sdpa"
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        select_backend("cpu", "fa3")
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("cpu", "xformers")


@pytest.mark.parametrize("B", [1, 2])  # B=1 takes the slice path (no masks), B=2 the indexed path
@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 1}, {"window_pattern": "L"}, {"smear": False, "backout": False},
                                {"value_embeds": False}])
def test_kv_cached_decode_matches_full_forward(kw, B):
    cfg = tiny_config(**kw)
    m = make_model(cfg)
    torch.manual_seed(1)
    T = 24
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    with torch.no_grad():
        full = m(idx)
        cache = KVCache.for_model(m, batch_size=B, max_seq_len=cfg.sequence_len)
        # prefill 10 tokens at once, then 3 tokens, then one at a time
        parts = [m(idx[:, :10], kv_cache=cache), m(idx[:, 10:13], kv_cache=cache)]
        parts += [m(idx[:, t:t + 1], kv_cache=cache) for t in range(13, T)]
        inc = torch.cat(parts, dim=1)
    assert cache.seqlens.tolist() == [T] * B
    torch.testing.assert_close(inc, full, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        last = m(idx[:, :10], kv_cache=KVCache.for_model(m, batch_size=B), last_only=True)
    assert last.shape == (B, 1, cfg.vocab_size)
    torch.testing.assert_close(last[:, 0], m(idx[:, :10])[:, -1], atol=1e-4, rtol=1e-4)


def test_kv_cache_rows_at_different_positions_are_independent():
    cfg = tiny_config()
    m = make_model(cfg)
    torch.manual_seed(2)
    a = torch.randint(0, cfg.vocab_size, (1, 12))
    b = torch.randint(0, cfg.vocab_size, (1, 7))
    with torch.no_grad():
        batch = KVCache.for_model(m, batch_size=2)
        ca = KVCache.for_model(m, batch_size=1)
        cb = KVCache.for_model(m, batch_size=1)
        m(a[:, :-1], kv_cache=ca)
        m(b[:, :-1], kv_cache=cb)
        batch.copy_row_from(ca, 0, 0)
        batch.copy_row_from(cb, 0, 1)
        nxt = torch.cat([a[:, -1:], b[:, -1:]], dim=0)
        step = m(nxt, kv_cache=batch)[:, -1]
        ref_a, ref_b = m(a)[:, -1], m(b)[:, -1]
    torch.testing.assert_close(step[0], ref_a[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(step[1], ref_b[0], atol=1e-4, rtol=1e-4)
    assert batch.seqlens.tolist() == [12, 7]
    batch.reset_rows([1])
    assert batch.seqlens.tolist() == [12, 0]
    assert 0 < batch.usage() < 1


def _rows(cache: KVCache, lo: int, hi: int) -> KVCache:
    """A view of rows lo..hi-1 (shares storage), as the engine's runner makes them."""
    v = copy.copy(cache)
    v.batch_size, v.seqlens, v.prev_emb = hi - lo, cache.seqlens[lo:hi], cache.prev_emb[lo:hi]
    v.k, v.v = [t[lo:hi] for t in cache.k], [t[lo:hi] for t in cache.v]
    return v


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 1, "smear": False}])
def test_packed_forward_equals_full_forwards(kw):
    """A PackedKV forward (rows 0-1 decoding one token each, row 2 extending its prefix by a 5-token chunk, in one
    (1, 7) input) gives each row's last logits as full forwards of the whole sequences do, and leaves every
    row at its new length."""
    from raychat.model.kv_cache import PackedKV

    cfg = tiny_config(**kw)
    m = make_model(cfg)
    torch.manual_seed(3)
    seqs = [torch.randint(0, cfg.vocab_size, (1, n)) for n in (9, 4, 15)]
    cached = (8, 3, 10)  # each row's prefix already in the cache
    with torch.no_grad():
        cache = KVCache.for_model(m, batch_size=3)
        for row, (s, n) in enumerate(zip(seqs, cached)):
            m(s[:, :n], kv_cache=_rows(cache, row, row + 1))
        idx = torch.cat([s[:, n:] for s, n in zip(seqs, cached)], dim=1)  # (1, 1 + 1 + 5)
        packed = PackedKV([(_rows(cache, 0, 2), 1), (_rows(cache, 2, 3), 5)])
        got = m(idx, kv_cache=packed)
        ref = torch.cat([m(s)[:, -1] for s in seqs])
        assert got.shape == (3, 1, cfg.vocab_size)
        torch.testing.assert_close(got[:, 0], ref, atol=1e-4, rtol=1e-4)
        assert cache.seqlens.tolist() == [9, 4, 15]
        with pytest.raises(ValueError, match="packed forward of 6 tokens"):
            m(idx[:, :6], kv_cache=packed)


def test_kv_cache_overflow_is_a_clear_error():
    cfg = tiny_config()
    m = make_model(cfg)
    cache = KVCache.for_model(m, batch_size=1, max_seq_len=8)
    with pytest.raises(ValueError, match="KV cache overflow"):
        m(torch.zeros(1, 9, dtype=torch.long), kv_cache=cache)


def test_init_loss_is_log_vocab_and_blocks_start_as_identity():
    cfg = tiny_config(vocab_size=512)
    m = fresh_gpt(cfg)
    idx = torch.randint(0, 512, (4, 32))
    loss = m(idx, idx)
    assert abs(loss.item() - math.log(512)) < 0.05
    for b in m.blocks:
        assert b.attn.c_proj.weight.abs().sum() == 0 and b.mlp.c_proj.weight.abs().sum() == 0


def test_window_pattern_tiles_and_last_layer_is_full():
    cfg = tiny_config(n_layer=6, window_pattern="SSL", sequence_len=64, short_window_frac=0.25)
    assert cfg.window_sizes() == [16, 16, None, 16, 16, None]
    cfg = tiny_config(n_layer=3, window_pattern="S", sequence_len=64, short_window_frac=0.5)
    assert cfg.window_sizes() == [32, 32, None]


def test_windowed_attention_really_limits_context():
    # with a window of 1 token in every layer but the last, and the last layer full, changing the first token
    # must still change the last logits (through the full layer) ...
    cfg = tiny_config(window_pattern="S", short_window_frac=1 / 32, n_layer=2, smear=False)
    m = make_model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (1, 16))
    idx2 = idx.clone()
    idx2[0, 0] = (idx[0, 0] + 1) % cfg.vocab_size
    with torch.no_grad():
        assert not torch.allclose(m(idx)[0, -1], m(idx2)[0, -1])
        # ... while the windowed layer's attention output at the last position ignores the first token
        x = torch.randn(1, 16, 4, 16)
        x2 = x.clone()
        x2[:, 0] += 1.0
        w = cfg.window_sizes()[0]
        assert torch.allclose(attend(x, x, x, w)[:, -1], attend(x2, x2, x2, w)[:, -1])


def test_value_embeddings_on_alternating_layers_including_last():
    cfg = tiny_config(n_layer=5)
    m = make_model(cfg)
    assert sorted(int(k) for k in m.value_embeds) == [0, 2, 4]
    assert all((m.blocks[i].attn.ve_gate is not None) == (i in (0, 2, 4)) for i in range(5))
    off = make_model(tiny_config(n_layer=5, value_embeds=False))
    assert len(off.value_embeds) == 0 and off.num_params()["value_embeds"] == 0


@pytest.mark.parametrize("feature", ["smear", "backout", "value_embeds"])
def test_each_feature_changes_the_function(feature):
    cfg_on = tiny_config()
    m_on = make_model(cfg_on)
    m_off = make_model(tiny_config(**{feature: False}))
    # copy shared weights so only the feature differs
    m_off.load_state_dict({k: v for k, v in m_on.state_dict().items() if k in m_off.state_dict()}, strict=True)
    idx = torch.randint(0, cfg_on.vocab_size, (2, 16))
    with torch.no_grad():
        assert not torch.allclose(m_on(idx), m_off(idx))


def test_logit_softcap_bounds_logits_and_can_be_disabled():
    m = make_model(tiny_config(logit_softcap=2.0))
    with torch.no_grad():
        m.lm_head.weight.mul_(1000)
        logits = m(torch.randint(0, 97, (1, 8)))
    assert logits.dtype == torch.float32 and logits.abs().max() <= 2.0
    m2 = make_model(tiny_config(logit_softcap=0.0))
    with torch.no_grad():
        m2.lm_head.weight.mul_(1000)
        assert m2(torch.randint(0, 97, (1, 8))).abs().max() > 2.0


def test_residual_and_x0_lambdas_are_used():
    m = make_model(tiny_config())
    idx = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        a = m(idx)
        m.x0_lambdas.fill_(0.0)
        b = m(idx)
        m.resid_lambdas.fill_(0.5)
        c = m(idx)
    assert not torch.allclose(a, b) and not torch.allclose(b, c)


def test_loss_reduction_none_and_ignore_index():
    m = make_model(tiny_config())
    idx = torch.randint(0, 97, (2, 8))
    tgt = idx.clone()
    tgt[:, :3] = -1
    per_tok = m(idx, tgt, loss_reduction="none")
    assert per_tok.shape == (2, 8)
    assert (per_tok[:, :3] == 0).all()
    torch.testing.assert_close(per_tok[:, 3:].mean(), m(idx, tgt))


def test_compute_dtype_bf16_runs_with_fp32_master_weights():
    m = make_model(tiny_config())
    m.set_compute_dtype(torch.bfloat16)
    logits = m(torch.randint(0, 97, (1, 8)))
    assert logits.dtype == torch.float32  # soft-capped in fp32
    assert all(p.dtype == torch.float32 for p in m.parameters())


def test_param_groups_cover_every_parameter_once():
    m = make_model(tiny_config())
    groups = m.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    assert all(p.ndim == 2 for p in groups["matrices"])


def test_a_few_steps_learn_a_fixed_batch():
    m = make_model(tiny_config()).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    idx = torch.randint(0, 97, (4, 32))
    first = None
    for _ in range(30):
        loss = m(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_config_validation():
    with pytest.raises(ValueError, match="n_kv_head"):
        tiny_config(n_kv_head=3)
    with pytest.raises(ValueError, match="window_pattern"):
        tiny_config(window_pattern="SXL")
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(n_embd=66)


def test_depth_dial_and_d24_card_on_meta_device():
    c = config_for_depth(24, vocab_size=32768, seq_len=2048)
    assert (c.n_embd, c.n_head, c.head_dim) == (1536, 12, 128)
    assert config_for_depth(4, aspect_ratio=64, head_dim=64).n_embd == 256
    assert config_for_depth(5, aspect_ratio=50, head_dim=64).n_embd == 256  # 250 rounded up
    card = model_card(c)
    C, V, L = 1536, 32768, 24
    p = card["params"]
    assert p["embedding"] == V * C and p["lm_head"] == V * C
    assert p["value_embeds"] == 12 * V * C  # alternating layers, kv dim = C without GQA
    per_layer = 12 * C * C
    gates = 12 * 32 * 12  # ve_gate (n_kv_head x 32) on the 12 value-embed layers
    assert p["matrices"] == L * per_layer + gates
    assert card["scaling_params"] == p["matrices"] + p["lm_head"]
    windows = card["windows"]
    assert windows.count(512) == 18 and windows.count(2048) == 6  # S = a quarter of 2048
    expected = 6 * card["scaling_params"] + sum(12 * 12 * 128 * w for w in windows)
    assert card["flops_per_token"] == expected


def test_backend_choice_is_memoised_and_forgettable(monkeypatch):
    """Decided once per (device, request), re-decided after cache_clear (RAYCHAT_ATTN is read at decision time)."""
    select_backend.cache_clear()
    first = select_backend("cpu")
    assert select_backend("cpu") is first
    monkeypatch.setenv("RAYCHAT_ATTN", "fa2")
    with pytest.raises(RuntimeError, match="fa2 needs a CUDA GPU|needs a CUDA GPU"):
        select_backend("cpu")
    monkeypatch.delenv("RAYCHAT_ATTN")
    select_backend.cache_clear()
    assert select_backend("cpu") == first and select_backend("cpu") is not first


def test_window_masks_are_reused_but_bounded():
    """Prefill of prompts of every length must not keep one (T, T) mask per length alive."""
    from raychat.model import attention

    attention._MASKS.clear()
    m = attention._window_mask(40, 8, torch.device("cpu"))
    assert attention._window_mask(40, 8, torch.device("cpu")) is m
    for T in range(50, 90):
        attention._window_mask(T, 8, torch.device("cpu"))
    assert len(attention._MASKS) <= 16
    i, j = torch.arange(40)[:, None], torch.arange(40)[None]
    assert torch.equal(m, (j <= i) & (i - j < 8))
