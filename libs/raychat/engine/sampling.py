"""Sampling parameters and batched next-token sampling.

Every request carries its own temperature / top-k / top-p and its own random stream, and a batch mixes requests
freely, so sampling must be (a) per row and (b) reproducible regardless of which other requests happen to share
the batch. We get both by drawing one uniform number per sampled row from that request's own seeded
`random.Random` and sampling by inverse CDF (`searchsorted` on the cumulative probabilities): the tensor work is
one batched pass over all sampled rows, and a request's tokens depend only on its logits and its seed. A
per-request `torch.Generator` would need one `multinomial` call per row per step (Python overhead on CPU) and
gives different streams on CPU and CUDA; a Python RNG gives the same numbers everywhere.

Greedy rows (temperature 0) take the argmax and draw nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from raychat.common import RaychatError


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings.

    temperature: 0 = greedy (argmax), else logits are divided by it. top_k: keep the k most likely tokens
    (0 or None = no limit). top_p: nucleus sampling, keep the smallest set of tokens whose probability
    reaches top_p (1.0 = no limit). max_tokens: generated tokens (sampled + forced tool output) before
    finish_reason "length". seed: None = fresh randomness. stop_token_ids: extra ids that end the
    completion (besides <|assistant_end|> and <|bos|>). num_samples: completions of the same prompt,
    sharing one prefill.
    """

    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    num_samples: int = 1

    def __post_init__(self):
        if not (self.temperature >= 0.0) or self.temperature == float("inf"):
            raise RaychatError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise RaychatError(f"top_k must be an integer >= 0 (0 = no limit), got {self.top_k!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise RaychatError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise RaychatError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise RaychatError(f"num_samples must be an integer >= 1, got {self.num_samples!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise RaychatError(f"seed must be an integer or None, got {self.seed!r}")
        # accept any iterable of ints (lists from JSON), store a tuple so the dataclass stays hashable
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_rng(seed: int | None, sample_index: int = 0) -> random.Random:
    """The random stream of one completion. Samples of one request get distinct, reproducible streams."""
    if seed is None:
        return random.Random()  # seeded from os.urandom
    return random.Random(f"raychat:{seed}:{sample_index}")  # str seeds hash with sha512: stable everywhere


@torch.inference_mode()
def sample_rows(logits: torch.Tensor, params: list[SamplingParams], uniforms: list[float]) -> torch.Tensor:
    """Sample one token per row. logits (n, V) float; params/uniforms: one per row, uniforms in [0, 1).
    All rows must have temperature > 0 (greedy rows are handled by the caller with argmax). Returns (n,) int64.
    """
    n, V = logits.shape
    dev = logits.device
    temps = torch.tensor([p.temperature for p in params], device=dev, dtype=torch.float32)
    x = logits.float() / temps[:, None]
    ks = [min(p.top_k, V) if p.top_k else V for p in params]
    use_top_p = any(p.top_p < 1.0 for p in params)
    u = torch.tensor(uniforms, device=dev, dtype=torch.float32)[:, None]  # (n, 1)
    if max(ks) == V and not use_top_p:
        # plain temperature sampling: no sort needed, the CDF can be taken in vocabulary order
        cdf = torch.softmax(x, dim=-1).cumsum_(-1)  # (n, V)
        choice = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=V - 1)
        return choice.squeeze(1)
    kmax = max(ks)
    vals, idx = torch.topk(x, kmax, dim=-1)  # (n, kmax), sorted descending
    if min(ks) < kmax:
        k_row = torch.tensor(ks, device=dev)[:, None]
        vals.masked_fill_(torch.arange(kmax, device=dev)[None, :] >= k_row, float("-inf"))
    probs = torch.softmax(vals, dim=-1)  # (n, kmax)
    if use_top_p:
        top_p = torch.tensor([p.top_p for p in params], device=dev, dtype=torch.float32)[:, None]
        # drop a token when the tokens ranked above it already reach top_p (the first token always stays)
        before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)
    cdf = probs.cumsum(-1)
    choice = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=kmax - 1)  # (n, 1)
    return idx.gather(1, choice).squeeze(1)


def reference_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The distribution `sample_rows` draws from for one row (V,), written the obvious way; used by tests."""
    V = logits.size(-1)
    x = logits.double() / p.temperature
    k = min(p.top_k, V) if p.top_k else V
    kth = torch.sort(x, descending=True).values[k - 1]
    x = torch.where(x >= kth, x, torch.tensor(float("-inf"), dtype=x.dtype))
    probs = torch.softmax(x, dim=-1)
    if p.top_p < 1.0:
        sp, order = torch.sort(probs, descending=True)
        keep = (sp.cumsum(0) - sp) < p.top_p
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[order[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return probs
