"""A raychat GPT for Hugging Face transformers (>= 5), loaded with `trust_remote_code=True`.

`raychat export hf` copies this file next to config.json and model.safetensors; it imports only torch and
transformers (never raychat), so the exported directory works anywhere. The parameter names are raychat's, so
model.safetensors is raychat's checkpoint as it is. It reproduces raychat's forward (libs/raychat/model/gpt.py):
token embedding -> RMSNorm (no parameters) -> smear (previous token's embedding through a gate) -> blocks with
per-layer resid/x0 scalars, attention with rotary embeddings, QK-norm (times qk_scale), grouped-query heads,
sliding windows and gated value embeddings, ReLU^2 MLP -> backout (minus a scaled middle-layer residual) ->
RMSNorm -> untied lm_head -> tanh soft-cap in fp32.

Batches may be left-padded (attention_mask): positions count real tokens only, padding is never attended to
and never smeared in. `generate` keeps a transformers DynamicCache of the (rotated, normed) keys and values;
smear needs the token before the new ones, which prepare_inputs_for_generation passes as `prev_ids` (taken from
input_ids, so beam search's reordering keeps it right). The cache holds every position: sliding windows are
masks, as in raychat's full forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DynamicCache, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class RaychatConfig(PreTrainedConfig):
    model_type = "raychat"

    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "SSSL"
    short_window_frac: float = 0.25
    short_window: int = 0
    value_embeds: bool = True
    smear: bool = True
    backout: bool = True
    logit_softcap: float = 15.0
    rope_base: float = 10000.0
    rope_len_mult: int = 2
    qk_scale: float = 1.0
    backout_layer: int | None = None
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def window_sizes(self) -> list[int | None]:
        """Keys a query sees per layer, itself included (None = all); the last layer always sees all. The export
        writes raychat's S window into short_window, so its rounding rule lives in raychat alone."""
        pat = self.window_pattern.upper()
        short = self.short_window or max(1, int(self.sequence_len * self.short_window_frac))
        w = [None if pat[i % len(pat)] == "L" else short for i in range(self.n_layer)]
        w[-1] = None
        return w

    def has_value_embed(self, i: int) -> bool:
        return self.value_embeds and (self.n_layer - 1 - i) % 2 == 0


def _norm(x):
    return F.rms_norm(x, (x.size(-1),))


class _Linear(nn.Linear):
    def __init__(self, n_in, n_out):
        super().__init__(n_in, n_out, bias=False)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype))


class _Attention(nn.Module):
    def __init__(self, c: RaychatConfig, i: int):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim, self.qk_scale = c.n_head, c.n_kv_head, c.head_dim, c.qk_scale
        self.c_q = _Linear(c.n_embd, c.n_head * c.head_dim)
        self.c_k = _Linear(c.n_embd, c.n_kv_head * c.head_dim)
        self.c_v = _Linear(c.n_embd, c.n_kv_head * c.head_dim)
        self.c_proj = _Linear(c.n_embd, c.n_embd)
        self.ve_gate_channels = min(32, c.n_embd)
        self.ve_gate = _Linear(self.ve_gate_channels, c.n_kv_head) if c.has_value_embed(i) else None

    def forward(self, x, ve, cos, sin, allowed, cache, layer_idx):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # v + 2 * sigmoid(gate(x[:32])) * ve, one gate per KV head
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        d = self.head_dim // 2
        # rotary on both halves: (x1 cos + x2 sin, x2 cos - x1 sin), then QK-norm
        q, k = (_norm(torch.cat([t[..., :d] * cos + t[..., d:] * sin, t[..., d:] * cos - t[..., :d] * sin], -1))
                * self.qk_scale for t in (q, k))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is not None:  # -> every position so far
            k, v = cache.update(k, v, layer_idx)
        rep = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class _MLP(nn.Module):
    def __init__(self, c: RaychatConfig):
        super().__init__()
        self.c_fc = _Linear(c.n_embd, 4 * c.n_embd)
        self.c_proj = _Linear(4 * c.n_embd, c.n_embd)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class _Block(nn.Module):
    def __init__(self, c: RaychatConfig, i: int):
        super().__init__()
        self.attn = _Attention(c, i)
        self.mlp = _MLP(c)

    def forward(self, x, ve, cos, sin, allowed, cache, layer_idx):
        x = x + self.attn(_norm(x), ve, cos, sin, allowed, cache, layer_idx)
        return x + self.mlp(_norm(x))


class RaychatForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = RaychatConfig
    base_model_prefix = "raychat"
    _no_split_modules = ["_Block"]
    _supports_sdpa = True

    def __init__(self, config: RaychatConfig):
        super().__init__(config)
        c, C, L = config, config.n_embd, config.n_layer
        self.wte = nn.Embedding(c.vocab_size, C)
        self.blocks = nn.ModuleList([_Block(c, i) for i in range(L)])
        self.lm_head = _Linear(C, c.vocab_size)
        kv_dim = c.n_kv_head * c.head_dim
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(c.vocab_size, kv_dim) for i in range(L)
                                           if c.has_value_embed(i)})
        self.resid_lambdas = nn.Parameter(torch.ones(L))
        self.x0_lambdas = nn.Parameter(torch.zeros(L))
        self.smear_channels = min(24, C)
        if c.smear:
            self.smear_gate = nn.Parameter(torch.zeros(self.smear_channels))
            self.smear_lambda = nn.Parameter(torch.zeros(()))
        if c.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(()))
        self.windows = c.window_sizes()
        self.backout_at = L // 2 - 1 if c.backout_layer is None else c.backout_layer
        self.post_init()

    def _init_weights(self, module):  # only for weights a checkpoint lacks (every raychat export has them all)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif module is self:
            nn.init.ones_(self.resid_lambdas)
            nn.init.zeros_(self.x0_lambdas)
            for name in ("smear_gate", "smear_lambda", "backout_lambda"):
                if hasattr(self, name):
                    nn.init.zeros_(getattr(self, name))

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def _rotary(self, positions: torch.Tensor, dtype):
        """positions (B, T) -> cos, sin (B, T, 1, head_dim / 2), computed in fp32 as raychat's tables are."""
        d = self.config.head_dim
        inv_freq = 1.0 / (self.config.rope_base ** (torch.arange(0, d, 2, dtype=torch.float32,
                                                                 device=positions.device) / d))
        freqs = positions.float()[..., None] * inv_freq
        return freqs.cos()[:, :, None].to(dtype), freqs.sin()[:, :, None].to(dtype)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward makes its own DynamicCache: transformers' would be built from per-layer config fields

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, past_key_values: DynamicCache | None = None,
                use_cache: bool | None = None, prev_ids: torch.LongTensor | None = None,
                **kwargs) -> CausalLMOutputWithPast:
        """input_ids (B, T): the new tokens; past_key_values: the cache of the positions before them (prev_ids
        (B, 1): the token just before them, for smear); attention_mask (B, past + T): 1 = real, 0 = padding."""
        B, T = input_ids.shape
        dev = input_ids.device
        cache = past_key_values
        if cache is None and use_cache:
            cache = DynamicCache()
        P = cache.get_seq_length() if cache is not None else 0
        S = P + T
        real = torch.ones(B, S, dtype=torch.bool, device=dev) if attention_mask is None else attention_mask.bool()
        if real.shape != (B, S):
            raise ValueError(f"attention_mask has shape {tuple(real.shape)}, expected ({B}, {S}) (cached + new)")
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)[:, P:]  # left padding: first real token = position 0
        i, j = torch.arange(P, S, device=dev)[:, None], torch.arange(S, device=dev)[None, :]
        diag = (i == j)[None]  # a padding query attends to itself only (no empty softmax rows)
        masks = {}
        for w in set(self.windows):
            ok = (j <= i) & (i - j < w) if w is not None else (j <= i)
            masks[w] = ((ok[None] & real[:, None, :]) | diag)[:, None]  # (B, 1, T, S)

        dt = self.lm_head.weight.dtype
        x = _norm(self.wte(input_ids).to(dt))
        if self.config.smear:
            if P > 0 and prev_ids is None:
                raise ValueError("a cached forward with smear needs prev_ids, the token before input_ids")
            first = _norm(self.wte(prev_ids).to(dt)) if P > 0 else torch.zeros_like(x[:, :1])
            prev = torch.cat([first, x[:, :-1]], 1) * real[:, P - 1:S - 1, None] if P > 0 else \
                F.pad(x[:, :-1] * real[:, :-1, None], (0, 0, 1, 0))  # nothing before the first real token
            g = torch.sigmoid(x[..., : self.smear_channels] @ self.smear_gate.to(dt))
            x = x + (self.smear_lambda.to(dt) * g).unsqueeze(-1) * prev
        cos, sin = self._rotary(positions, dt)
        x0, x_mid = x, None
        for n, block in enumerate(self.blocks):
            x = self.resid_lambdas[n].to(dt) * x + self.x0_lambdas[n].to(dt) * x0
            ve = self.value_embeds[str(n)](input_ids).to(dt) if str(n) in self.value_embeds else None
            x = block(x, ve, cos, sin, masks[self.windows[n]], cache, n)
            if n == self.backout_at:
                x_mid = x
        if self.config.backout and x_mid is not None:
            x = x - self.backout_lambda.to(dt) * x_mid
        logits = self.lm_head(_norm(x)).float()
        cap = self.config.logit_softcap
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:  # labels are the inputs (HF convention): predict token t + 1 from position t
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache if use_cache else None)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, use_cache=True,
                                      **kwargs):
        """generate's step: the tokens the cache hasn't seen, plus the one before them (for smear)."""
        P = past_key_values.get_seq_length() if past_key_values is not None else 0
        return {"input_ids": input_ids[:, P:], "prev_ids": input_ids[:, P - 1:P] if P > 0 else None,
                "attention_mask": attention_mask, "past_key_values": past_key_values, "use_cache": use_cache}
