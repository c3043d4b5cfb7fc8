"""The depth dial: one integer decides the model shape (nanochat's recipe), plus the model card a user checks
before renting a GPU node. Everything here runs on the meta device: a d26 card allocates no memory."""

from __future__ import annotations

import math

import torch

from raychat.model.gpt import GPT, GPTConfig


def config_for_depth(depth: int, aspect_ratio: int = 64, head_dim: int = 128, vocab_size: int = 32768,
                     seq_len: int = 2048, window_pattern: str = "SSSL", n_kv_head: int | None = None,
                     **overrides) -> GPTConfig:
    """width = depth * aspect_ratio rounded up to a multiple of head_dim; heads = width / head_dim.
    n_kv_head defaults to n_head (no GQA); pass a divisor of n_head for grouped-query attention."""
    if depth < 1 or aspect_ratio < 1 or head_dim < 2:
        raise ValueError(f"depth, aspect_ratio and head_dim must be positive (got {depth}, {aspect_ratio}, {head_dim})")
    width = math.ceil(depth * aspect_ratio / head_dim) * head_dim
    n_head = width // head_dim
    return GPTConfig(sequence_len=seq_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head,
                     n_kv_head=n_kv_head or n_head, n_embd=width, window_pattern=window_pattern, **overrides)


def meta_model(config: GPTConfig) -> GPT:
    with torch.device("meta"):
        return GPT(config)


def model_card(config: GPTConfig) -> dict:
    """Shape, parameter groups, scaling parameters and FLOPs per token, computed on the meta device."""
    model = meta_model(config)
    counts = model.num_params()
    return {
        "config": config.to_dict(),
        "head_dim": config.head_dim,
        "windows": [w if w is not None else config.sequence_len for w in model.windows],
        "value_embed_layers": [i for i in range(config.n_layer) if config.has_value_embed(i)],
        "params": counts,
        "scaling_params": counts["scaling"],
        "flops_per_token": model.num_flops_per_token(),
    }
