"""The GPT model: config, architecture, attention backends, KV cache, the depth dial and FLOPs accounting."""

from raychat.model.depth import config_for_depth, model_card
from raychat.model.gpt import GPT, GPTConfig
from raychat.model.kv_cache import KVCache

__all__ = ["GPT", "GPTConfig", "KVCache", "config_for_depth", "model_card"]
