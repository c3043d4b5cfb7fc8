"""`raychat model-card`: the shape a depth gives, its parameter groups, scaling params and FLOPs per token.
Computed on the meta device, so a d26 card costs no memory.

    raychat model-card --depth 24 --vocab-size 32768 --seq-len 2048
"""

from __future__ import annotations

import json


def add_arguments(p):
    p.add_argument("--depth", type=int, required=True, help="number of transformer layers (the one dial)")
    p.add_argument("--vocab-size", type=int, default=32768, help="tokenizer vocabulary size")
    p.add_argument("--seq-len", type=int, default=2048, help="context length in tokens")
    p.add_argument("--aspect-ratio", type=int, default=64, help="width = depth x aspect ratio, rounded up to head_dim")
    p.add_argument("--head-dim", type=int, default=128, help="attention head dimension")
    p.add_argument("--window-pattern", default="SSSL", help="S = short window, L = full context; tiled over layers")
    p.add_argument("--n-kv-head", type=int, default=None, help="KV heads for grouped-query attention (default: heads)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args):
    from raychat.common import RaychatError
    from raychat.model import config_for_depth, model_card

    try:
        cfg = config_for_depth(args.depth, args.aspect_ratio, args.head_dim, args.vocab_size, args.seq_len,
                               args.window_pattern, args.n_kv_head)
    except ValueError as e:
        raise RaychatError(str(e)) from None
    card = model_card(cfg)
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    c = card["config"]
    print(f"depth {c['n_layer']}  width {c['n_embd']}  heads {c['n_head']} (kv {c['n_kv_head']})  "
          f"head_dim {card['head_dim']}  vocab {c['vocab_size']}  seq_len {c['sequence_len']}")
    print(f"windows per layer: {card['windows']}")
    print(f"value embeddings on layers: {card['value_embed_layers']}")
    print(f"{'parameter group':<16}{'params':>16}")
    for k, v in card["params"].items():
        print(f"{k:<16}{v:>16,}")
    print(f"{'scaling params':<16}{card['scaling_params']:>16,}  (block matrices + lm_head: the horizon scales "
          "with these)")
    print(f"{'FLOPs/token':<16}{card['flops_per_token']:>16,.0f}  (training, fwd+bwd: 6N + attention)")
    return 0
