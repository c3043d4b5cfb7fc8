"""The GPT: architecture only (no process groups, no I/O, no logging).

Notable features, each a switch in GPTConfig where it is a research knob:
- token embedding -> RMSNorm (no learnable params) -> blocks -> RMSNorm -> untied lm_head; no biases anywhere
- rotary position embeddings (cos/sin cached as buffers, no learned positions); QK-norm after RoPE
- grouped-query attention (n_kv_head <= n_head, n_head % n_kv_head == 0)
- sliding-window attention from a pattern string tiled over the layers ("SSSL": S = a window of
  short_window_frac of the context, a quarter by default, L = full context); the last layer is always L
- value embeddings on alternating layers (the last included): a per-layer token table added to V through an
  input-dependent gate 2*sigmoid(W x[..., :32]) per KV head (init W=0 -> gate 1)
- per-layer learnable residual scalars: x = resid_lambda[i] * x + x0_lambda[i] * x0 (x0 = normed embedding)
- smear: x0[t] += lambda * sigmoid(w . x0[t][:24]) * x0[t-1]  (cheap bigram mixing; lambda starts at 0)
- backout: before the final norm subtract backout_lambda * (the residual after the middle layer)
- qk_scale: q and k multiplied by a constant after QK-norm (sharper attention; 1 = off; nanochat uses 1.2)
- MLP with ReLU^2 at 4x width; logit soft-capping c*tanh(logits/c) computed in float32 (the CPU training loss
  goes through model/head_loss.py: the same math in blocks of rows, logits never materialised)
- explicit compute dtype: fp32 master weights, Linear casts its weight to the activation dtype; no autocast

Built on the meta device, then `to_empty(device)` + `init_weights()`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from raychat.model import gemm
from raychat.model.attention import attend, attend_kvcache
from raychat.model.head_loss import chunked_head_loss
from raychat.model.kv_cache import PackedKV, join_tokens, split_tokens


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "SSSL"
    short_window_frac: float = 0.25  # S layers see this fraction of sequence_len (see window_sizes)
    short_window: int = 0  # an exact S window (keys seen, the query included) instead of the fraction; 0 = off
    value_embeds: bool = True
    smear: bool = True
    backout: bool = True
    logit_softcap: float = 15.0  # <= 0 disables
    rope_base: float = 10000.0
    rope_len_mult: int = 2  # rotary tables cover rope_len_mult * sequence_len positions
    qk_scale: float = 1.0  # q and k are multiplied by this after QK-norm (imported nanochat models: 1.2)
    backout_layer: int | None = None  # the block whose output backout subtracts; None = n_layer // 2 - 1

    def __post_init__(self):
        for name in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_kv_head > self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head {self.n_kv_head} must divide n_head {self.n_head}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if not self.window_pattern or set(self.window_pattern.upper()) - {"S", "L"}:
            raise ValueError(f"window_pattern {self.window_pattern!r} must be a non-empty string of S and L")
        if not 0.0 < self.short_window_frac <= 1.0:
            raise ValueError(f"short_window_frac must be in (0, 1], got {self.short_window_frac}")
        if self.backout_layer is not None and not 0 <= self.backout_layer < self.n_layer:
            raise ValueError(f"backout_layer must be in [0, {self.n_layer}), got {self.backout_layer}")
        if not 0 <= self.short_window <= self.sequence_len:
            raise ValueError(f"short_window must be in [0, sequence_len={self.sequence_len}], got {self.short_window}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def window_sizes(self) -> list[int | None]:
        """Per-layer attention window (None = full context). Pattern tiled over layers, last layer full.

        S = short_window_frac (a quarter, nanochat's) of the context, rounded up to a multiple of 128 (the
        flash-attention tile: a partial tile costs a whole one) once it exceeds 128, never above the context:
        512 at T=2048, 1024 at 4096. Shorter windows (small test models) stay exact. `short_window` > 0 sets the
        S window exactly (imported checkpoints, whose windows follow their own rule)."""
        pat = self.window_pattern.upper()
        short = self.short_window or max(1, math.ceil(self.sequence_len * self.short_window_frac))
        if short > 128 and not self.short_window:
            short = min(math.ceil(short / 128) * 128, self.sequence_len)
        w = [None if pat[i % len(pat)] == "L" else short for i in range(self.n_layer)]
        w[-1] = None
        return w

    def has_value_embed(self, i: int) -> bool:
        # alternating layers counted from the last one, so the last layer always has one
        return self.value_embeds and (self.n_layer - 1 - i) % 2 == 0

    def to_dict(self) -> dict:
        return asdict(self)


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Linear(nn.Linear):
    """Bias-free Linear with fp32 master weight cast to the activation dtype (no autocast needed); fp32 products on
    CPU go through model/gemm.py (oneDNN where it beats MKL on this CPU)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        pass  # GPT.init_weights() initialises every weight; torch's default init on meta tensors costs seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        return gemm.linear(x, w if w.dtype == x.dtype else w.to(x.dtype))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves (x1, x2) of the head dim: (x1 cos + x2 sin, x2 cos - x1 sin).

    x (B, T, H, D); cos = [c, c] and sin = [s, -s] over the full head dim (the model's tables), broadcastable
    to (B, T, 1, D). Written as x * cos + swap_halves(x) * sin: four kernels instead of nine, same products
    and sums (x2 c + x1 (-s) == x2 c - x1 s exactly)."""
    d = x.size(-1) // 2
    return x * cos + torch.cat([x[..., d:], x[..., :d]], dim=-1) * sin


def _embedding(num: int, dim: int) -> nn.Embedding:
    # an explicit (uninitialised) weight skips nn.Embedding's default init; GPT.init_weights() does the real one
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


class Attention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        C = config.n_embd
        self.c_q = Linear(C, self.n_head * self.head_dim)
        self.c_k = Linear(C, self.n_kv_head * self.head_dim)
        self.c_v = Linear(C, self.n_kv_head * self.head_dim)
        self.c_proj = Linear(C, C)
        self.ve_gate_channels = min(32, C)
        self.qk_scale = config.qk_scale
        self.ve_gate = Linear(self.ve_gate_channels, self.n_kv_head) if config.has_value_embed(layer_idx) else None

    def forward(self, x, ve, cos, sin, window, kv=None):
        """kv: None (training: causal attention over x), or (segments, packed) from the KV cache, which carry
        each segment's rotary slices, positions and masks (cos, sin are then unused)."""
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # v + 2 * sigmoid(gate) * ve, gate (B, T, H_kv) per KV head
            gate = torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))
            v = torch.addcmul(v, gate.unsqueeze(-1), ve.view(B, T, self.n_kv_head, self.head_dim), value=2)
        if kv is None:
            y = attend(*self._rotary_qk(q, k, cos, sin), v, window)
        else:
            segs, packed = kv
            i, ys = self.layer_idx, []
            for s, qs, ks, vs in zip(segs, split_tokens(segs, q, packed), split_tokens(segs, k, packed),
                                     split_tokens(segs, v, packed)):
                qs, ks = self._rotary_qk(qs, ks, s.cos, s.sin)
                mask = s.masks[window] if s.masks is not None else None
                ys.append(attend_kvcache(qs, ks, vs, s.cache.k[i], s.cache.v[i], s.cache.seqlens, window,
                                         s.positions, mask, s.L))
            y = join_tokens(ys, packed)
        return self.c_proj(y.reshape(B, T, -1))

    def _rotary_qk(self, q, k, cos, sin):
        # RoPE then QK-norm, on q and k together (one rotary and one norm instead of two each)
        qk = norm(apply_rotary(torch.cat([q, k], dim=2), cos, sin))
        if self.qk_scale != 1.0:
            qk = qk * self.qk_scale
        return qk.split([self.n_head, self.n_kv_head], dim=2)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = Attention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin, window, kv=None):
        x = x + self.attn(norm(x), ve, cos, sin, window, kv)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    packs_kv = True  # forward takes a kv_cache.PackedKV (the engine's runner asks before packing a step)
    head_chunk_rows = 256  # rows per block of the chunked training loss on CPU (model/head_loss.py); 0 = plain head

    def __init__(self, config: GPTConfig, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        C, L = config.n_embd, config.n_layer
        self.wte = _embedding(config.vocab_size, C)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(L)])
        self.lm_head = Linear(C, config.vocab_size)
        kv_dim = config.n_kv_head * config.head_dim
        self.value_embeds = nn.ModuleDict(
            {str(i): _embedding(config.vocab_size, kv_dim) for i in range(L) if config.has_value_embed(i)})
        self.resid_lambdas = nn.Parameter(torch.empty(L))
        self.x0_lambdas = nn.Parameter(torch.empty(L))
        self.smear_channels = min(24, C)
        if config.smear:
            self.smear_gate = nn.Parameter(torch.empty(self.smear_channels))
            self.smear_lambda = nn.Parameter(torch.empty(()))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.empty(()))
        self.windows = config.window_sizes()
        self.backout_at = config.n_layer // 2 - 1 if config.backout_layer is None else config.backout_layer
        n_pos = config.sequence_len * config.rope_len_mult
        # rotary tables over the full head dim: cos = [c, c], sin = [s, -s] (see apply_rotary)
        self.register_buffer("cos", torch.empty(n_pos, config.head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(n_pos, config.head_dim), persistent=False)

    # ---- init -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Parameter groups and their init (nanochat's recipe):
        - wte: N(0, 1)  (its output is RMS-normed, so the scale only matters relative to the lr)
        - lm_head: N(0, 0.001)  (near-zero logits at init: loss starts at ln(vocab))
        - attention q/k/v and mlp c_fc, value embeddings: U(-s, s), s = sqrt(3)/sqrt(n_embd) (unit-ish RMS)
        - attention and mlp output projections: 0 (every block starts as the identity)
        - ve_gate: 0 (gate = 2*sigmoid(0) = 1); resid_lambdas 1, x0_lambdas 0.1; smear/backout lambdas 0
        """
        c = self.config
        s = math.sqrt(3.0) / math.sqrt(c.n_embd)
        nn.init.normal_(self.wte.weight, 0.0, 1.0)
        nn.init.normal_(self.lm_head.weight, 0.0, 0.001)
        for b in self.blocks:
            for lin in (b.attn.c_q, b.attn.c_k, b.attn.c_v, b.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(b.attn.c_proj.weight)
            nn.init.zeros_(b.mlp.c_proj.weight)
            if b.attn.ve_gate is not None:
                nn.init.zeros_(b.attn.ve_gate.weight)
        for e in self.value_embeds.values():
            nn.init.uniform_(e.weight, -s, s)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        if c.smear:
            self.smear_gate.zero_()
            self.smear_lambda.zero_()
        if c.backout:
            self.backout_lambda.zero_()
        self._init_rotary()

    @torch.no_grad()
    def _init_rotary(self) -> None:
        c = self.config
        d = c.head_dim
        inv_freq = 1.0 / (c.rope_base ** (torch.arange(0, d, 2, dtype=torch.float32, device=self.cos.device) / d))
        t = torch.arange(self.cos.size(0), dtype=torch.float32, device=self.cos.device)
        freqs = torch.outer(t, inv_freq)
        c, s = freqs.cos(), freqs.sin()
        self.cos.copy_(torch.cat([c, c], dim=-1))
        self.sin.copy_(torch.cat([s, -s], dim=-1))

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        self.compute_dtype = dtype

    def get_device(self) -> torch.device:
        return self.wte.weight.device

    def token_embedding(self, idx: torch.Tensor) -> torch.Tensor:
        """The normed token embedding the blocks start from (and the smear state a KV cache keeps per row)."""
        return norm(self.wte(idx).to(self.compute_dtype))

    # ---- parameter accounting -------------------------------------------------------------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The optimizer's groups: AdamW for embedding/value_embeds/lm_head/scalars, Muon for matrices."""
        scalars = [self.resid_lambdas, self.x0_lambdas]
        if self.config.smear:
            scalars += [self.smear_gate, self.smear_lambda]
        if self.config.backout:
            scalars.append(self.backout_lambda)
        groups = {
            "embedding": [self.wte.weight],
            "value_embeds": [e.weight for e in self.value_embeds.values()],
            "lm_head": [self.lm_head.weight],
            "matrices": [p for p in self.blocks.parameters()],
            "scalars": scalars,
        }
        assert sum(len(v) for v in groups.values()) == len(list(self.parameters())), "a parameter has no group"
        return groups

    def num_params(self) -> dict[str, int]:
        counts = {k: sum(p.numel() for p in ps) for k, ps in self.param_groups().items()}
        counts["total"] = sum(counts.values())
        counts["scaling"] = counts["matrices"] + counts["lm_head"]
        return counts

    def num_flops_per_token(self) -> float:
        """Model FLOPs per token for a training step (forward + backward), the nanochat/PaLM convention:
        6 * (matmul params: block matrices + lm_head; embedding lookups are free) + attention scores and
        values, 12 * n_head * head_dim * span per layer, where span = min(window, sequence_len)."""
        c = self.config
        n = self.num_params()
        dense = 6 * (n["matrices"] + n["lm_head"])
        attn = sum(12 * c.n_head * c.head_dim * (w if w is not None else c.sequence_len) for w in self.windows)
        return float(dense + attn)

    # ---- forward --------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache=None,
                loss_reduction: str = "mean", last_only: bool = False):
        """-> loss (targets given) or logits (B, T, V) float32 (float64 in a float64 model); last_only: logits of the
        last position only (B, 1, V), e.g. for a prefill, where the vocab projection of every prompt position would
        be wasted.
        kv_cache: a KVCache (or a view of some of its rows): the new tokens extend each row from its length;
        or a PackedKV: idx is (1, N), several row ranges packed, and the logits are those of each row's last
        new token, (rows, 1, V)."""
        B, T = idx.shape
        dt = self.compute_dtype
        kv = None
        if kv_cache is None:
            if T > self.cos.size(0):
                raise ValueError(f"sequence of {T} tokens exceeds the rotary table ({self.cos.size(0)})")
            cos, sin = self.cos[None, :T, None].to(dt), self.sin[None, :T, None].to(dt)
        else:  # the cache computes positions, rotary slices and masks: one path for every cached forward
            packed = isinstance(kv_cache, PackedKV)
            segs = kv_cache.segments(T, self.cos, self.sin, self.windows, dt)
            kv, cos, sin = (segs, packed), None, None

        x = self.token_embedding(idx)
        if self.config.smear:
            if kv is None:
                prev = F.pad(x[:, :-1], (0, 0, 1, 0))
            else:  # the token before the first new one is the cached row's last embedding (none for a fresh row)
                parts = split_tokens(segs, x, packed)
                prevs = []
                for s, xs in zip(segs, parts):
                    first = (s.cache.prev_emb[:, None] * (s.cache.seqlens > 0)[:, None, None]).to(dt)
                    prevs.append(first if s.T == 1 else torch.cat([first, xs[:, :-1]], dim=1))
                prev = join_tokens(prevs, packed)
            g = torch.sigmoid(x[..., : self.smear_channels] @ self.smear_gate.to(dt))  # (B, T)
            smeared = x + (self.smear_lambda.to(dt) * g).unsqueeze(-1) * prev
            if kv is not None:  # after every read above: prev may be a view of prev_emb
                for s, xs in zip(segs, parts):
                    s.cache.prev_emb.copy_(xs[:, -1])
            x = smeared
        x0 = x
        x_mid = None
        resid, x0_scale = self.resid_lambdas.to(dt).unbind(), self.x0_lambdas.to(dt).unbind()
        for i, block in enumerate(self.blocks):
            x = resid[i] * x + x0_scale[i] * x0
            ve = self.value_embeds[str(i)](idx).to(dt) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, self.windows[i], kv)
            if i == self.backout_at:
                x_mid = x
        if self.config.backout and x_mid is not None:
            x = x - self.backout_lambda.to(dt) * x_mid
        x = norm(x)
        if kv is not None:
            for s in segs:
                s.cache.seqlens += s.T
            if packed:  # each row's last new token
                x = torch.cat([xs[:, -1] for xs in split_tokens(segs, x, True)])[:, None]
        if last_only:
            x = x[:, -1:]

        cap = self.config.logit_softcap
        if (targets is not None and loss_reduction == "mean" and self.head_chunk_rows > 0 and x.device.type == "cpu"
                and torch.is_grad_enabled()):
            # the training loss on CPU: lm_head + soft-cap + cross-entropy in cache-sized blocks of rows, the
            # (rows, vocab) logits never materialised (model/head_loss.py); same value and gradients
            return chunked_head_loss(x, self.lm_head.weight, targets, cap, self.head_chunk_rows)
        logits = self.lm_head(x)  # soft-cap in fp32 (tanh saturates badly in bf16), fp64 in a fp64 model
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)
        return loss.view(B, T) if loss_reduction == "none" else loss
