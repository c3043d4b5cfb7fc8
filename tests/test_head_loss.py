"""The chunked head loss (model/head_loss.py) against torch's own lm_head -> soft-cap -> cross_entropy, in float64:
the value and both gradients, with ignored targets, with and without the soft-cap, with blocks that do not divide
the rows; and GPT.forward takes it exactly for the mean training loss on CPU with gradients on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raychat.model import GPT, GPTConfig
from raychat.model.head_loss import chunked_head_loss


def reference(x, w, y, cap):
    z = x @ w.T
    logits = cap * torch.tanh(z / cap) if cap > 0 else z
    return F.cross_entropy(logits, y, ignore_index=-1)


@pytest.mark.parametrize("cap,chunk", [(15.0, 7), (15.0, 64), (0.0, 5), (30.0, 1000)])
def test_value_and_gradients_equal_torch_in_float64(cap, chunk):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 16, dtype=torch.float64, generator=g, requires_grad=True)
    w = (torch.randn(40, 16, dtype=torch.float64, generator=g) * 2).requires_grad_()  # big logits: cap matters
    y = torch.randint(0, 40, (50,), generator=g)
    y[::6] = -1
    want = reference(x, w, y, cap)
    want.backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    got = chunked_head_loss(x, w, y, cap, chunk)
    (got * 3.0).backward()  # the incoming gradient scales both
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want.item(), abs=1e-12)
    assert torch.allclose(x.grad, 3 * gx, atol=1e-13, rtol=0) and torch.allclose(w.grad, 3 * gw, atol=1e-13, rtol=0)


def test_all_targets_ignored_is_nan_like_torch_and_bad_chunk_refused():
    x = torch.randn(4, 8, dtype=torch.float64)
    w = torch.randn(10, 8, dtype=torch.float64)
    y = torch.full((4,), -1)
    assert torch.isnan(reference(x, w, y, 15.0)) and torch.isnan(chunked_head_loss(x, w, y, 15.0, 2))
    with pytest.raises(ValueError, match="chunk_rows"):
        chunked_head_loss(x, w, y, 15.0, 0)


def tiny_gpt(dtype=torch.float32) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=96, n_layer=2, n_head=2, n_kv_head=2, n_embd=32),
                compute_dtype=dtype).to(dtype)
    model.init_weights()
    with torch.no_grad():  # init gives near-zero logits; make the soft-cap and the softmax do real work
        model.lm_head.weight.normal_(0, 0.5)
    return model


def test_gpt_training_loss_same_through_both_heads():
    model = tiny_gpt(torch.float64)
    idx = torch.randint(0, 96, (3, 32))
    tgt = torch.randint(0, 96, (3, 32))
    tgt[:, :5] = -1
    grads = []
    for rows in (0, 20):  # 96 rows in blocks of 20: the last block is short
        model.head_chunk_rows = rows
        model.zero_grad(set_to_none=True)
        loss = model(idx, tgt)
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    assert l1 == pytest.approx(l0, abs=1e-12) and g0.keys() == g1.keys()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-14, rtol=1e-10), name
    assert g0["lm_head.weight"].abs().min() > 0 and g0["wte.weight"].abs().max() > 0


def test_gpt_uses_the_chunked_head_only_for_the_mean_training_loss(monkeypatch):
    import raychat.model.gpt as gpt

    calls = []

    def spy(*a, **k):
        calls.append(a[-1])
        return chunked_head_loss(*a, **k)

    monkeypatch.setattr(gpt, "chunked_head_loss", spy)
    model = tiny_gpt()
    idx, tgt = torch.randint(0, 96, (2, 32)), torch.randint(0, 96, (2, 32))
    model(idx, tgt)
    assert calls == [GPT.head_chunk_rows]
    with torch.no_grad():
        plain = model(idx, tgt)                              # evaluation: no gradients, the plain head
    per_token = model(idx, tgt, loss_reduction="none")       # per-token losses (RL, evals): the plain head
    model.head_chunk_rows = 0
    off = model(idx, tgt)
    assert len(calls) == 1
    assert per_token.shape == (2, 32) and plain.item() == pytest.approx(per_token.mean().item(), rel=1e-6)
    assert off.item() == pytest.approx(plain.item(), rel=1e-6)
