"""A tiny stand-in for raychat.model.GPT with the same `param_groups()` layout and `config.n_embd`, so the
optimizer tests do not depend on the model package. Shapes are chosen to cover every optimizer path:

- embedding / lm_head (96, 64): AdamW, dim 0 divisible by 2 -> state sharded along dim 0 at world size 2;
- value_embeds (33, 32) x 2: AdamW, 33 rows -> all-reduced and replicated (and >= MIN_SHARD_NUMEL elements);
- scalars (3,), (3,), (): AdamW, tiny -> replicated (one coalesced all-reduce);
- matrices: Muon groups (32, 64) x 6 and (64, 64) x 6 (wide/square, K divisible by 2), (64, 256) x 3 (wide)
  and (256, 64) x 3 (tall) with K = 3 -> the stack is padded to 4 at world size 2.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from raychat.optim import muon_momentum
from raychat.optim.optimizer import MIN_SHARD_NUMEL


def _norm(x):
    return F.rms_norm(x, (x.size(-1),))


class FakeBlock(nn.Module):
    def __init__(self, C: int, kv: int):
        super().__init__()
        self.c_q = nn.Parameter(torch.randn(C, C) * C**-0.5)
        self.c_k = nn.Parameter(torch.randn(kv, C) * C**-0.5)
        self.c_v = nn.Parameter(torch.randn(kv, C) * C**-0.5)
        self.c_proj = nn.Parameter(torch.randn(C, C) * C**-0.5)
        self.c_fc = nn.Parameter(torch.randn(4 * C, C) * C**-0.5)
        self.mlp_proj = nn.Parameter(torch.randn(C, 4 * C) * (4 * C) ** -0.5)

    def forward(self, x, ve):
        h = _norm(x)
        k, v = F.linear(h, self.c_k), F.linear(h, self.c_v)   # (B, T, kv)
        if ve is not None:
            v = v + ve
        mix = F.linear(h, self.c_q) * torch.cat([k, v], -1)     # a stand-in for attention, (B, T, C)
        x = x + F.linear(mix, self.c_proj)
        return x + F.linear(F.relu(F.linear(_norm(x), self.c_fc)).square(), self.mlp_proj)


class FakeGPT(nn.Module):
    def __init__(self, vocab: int = 96, n_embd: int = 64, n_layer: int = 3, ve_vocab: int = 33, seed: int = 0,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            kv = n_embd // 2
            self.config = SimpleNamespace(n_embd=n_embd, vocab_size=vocab, n_layer=n_layer)
            self.ve_vocab = ve_vocab
            self.wte = nn.Embedding(vocab, n_embd)
            self.value_embeds = nn.ModuleDict({"0": nn.Embedding(ve_vocab, kv), "2": nn.Embedding(ve_vocab, kv)})
            self.blocks = nn.ModuleList([FakeBlock(n_embd, kv) for _ in range(n_layer)])
            self.lm_head = nn.Linear(n_embd, vocab, bias=False)
            self.resid_lambdas = nn.Parameter(torch.ones(n_layer))
            self.x0_lambdas = nn.Parameter(torch.full((n_layer,), 0.1))
            self.smear_lambda = nn.Parameter(torch.tensor(0.05))   # 0-D, like GPT's smear/backout lambdas
        self.to(dtype)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "embedding": [self.wte.weight],
            "value_embeds": [e.weight for e in self.value_embeds.values()],
            "lm_head": [self.lm_head.weight],
            "matrices": list(self.blocks.parameters()),
            "scalars": [self.resid_lambdas, self.x0_lambdas, self.smear_lambda],
        }

    def forward(self, idx, targets):
        x = _norm(self.wte(idx))                                       # (B, T, C)
        x = x + self.smear_lambda * F.pad(x[:, :-1], (0, 0, 1, 0))     # mix in the previous token
        x0 = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx % self.ve_vocab) if str(i) in self.value_embeds else None
            x = block(x, ve)
        logits = self.lm_head(_norm(x))                                # (B, T, V), model dtype (fp64 in tests)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def batch(step: int, B: int = 8, T: int = 16, vocab: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(0, vocab, (B, T + 1), generator=g)
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def train_steps(model, opt, start: int, stop: int, rank: int = 0, world: int = 1) -> list[float]:
    """Steps start..stop-1 on this rank's slice of each global batch, with lr, Muon momentum and weight-decay
    schedules set the way the training loop drives them; the losses."""
    losses = []
    for step in range(start, stop):
        x, y = batch(step)                                  # the global batch, (8, 16)
        b = x.shape[0] // world
        loss = model(x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b])
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * (1.0 - 0.05 * step)
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step * 60)
                group["weight_decay"] = 0.2 * (1.0 - 0.1 * step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_fake_gpt_groups_cover_every_parameter_once():
    model = FakeGPT()
    groups = model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(p.ndim == 2 for p in groups["matrices"])
    # the paths the distributed test relies on really exist
    assert groups["embedding"][0].shape[0] % 2 == 0 and groups["embedding"][0].numel() >= MIN_SHARD_NUMEL
    assert all(p.shape[0] % 2 == 1 and p.numel() >= MIN_SHARD_NUMEL for p in groups["value_embeds"])
    x, y = batch(0)
    loss = model(x, y)
    assert loss.shape == () and abs(loss.item() - torch.log(torch.tensor(96.0)).item()) < 1.0
