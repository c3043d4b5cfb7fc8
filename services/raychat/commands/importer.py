"""`raychat import nanochat`: turn a nanochat checkpoint + tokenizer into a raychat run directory.

    raychat import nanochat --checkpoint ~/.cache/nanochat/base_checkpoints/d20 \
        --tokenizer ~/.cache/nanochat/tokenizer --run-dir runs/d20
    raychat import nanochat --checkpoint ~/.cache/nanochat/chatsft_checkpoints/d20 --step 700 \
        --tokenizer ~/.cache/nanochat/tokenizer --run-dir runs/d20 --stage sft
    raychat chat --run-dir runs/d20 --stage sft        # then any raychat command: serve, eval, sft, rl, export

Reads `model_<step>.pt` + `meta_<step>.json` (the latest step unless --step) and the tokenizer directory's
`tokenizer.pkl` + `token_bytes.pt`; never runs a pickle (the weights load with weights_only, the tokenizer
through an unpickler that knows only tiktoken's Encoding). The layout is detected from the checkpoint's keys;
every nanochat vintage from the first release (the public nanochat-d32) to master is mapped, anything else is
refused with the keys that don't fit. Writes <run-dir>/checkpoints/<stage>/step_N and <run-dir>/tokenizer;
nothing that exists is overwritten.
"""

from __future__ import annotations

import json


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    n = sub.add_parser("nanochat", help="a checkpoint written by karpathy/nanochat")
    n.add_argument("--checkpoint", required=True, help="directory with nanochat's model_<step>.pt and meta_<step>.json")
    n.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest in the directory)")
    n.add_argument("--tokenizer", required=True, help="nanochat's tokenizer directory (tokenizer.pkl, token_bytes.pt)")
    n.add_argument("--run-dir", required=True, help="raychat run directory to write into")
    n.add_argument("--stage", default="base", choices=["base", "sft", "rl"],
                   help="which raychat stage the checkpoint becomes (base for base_train, sft for chat_sft, ...)")
    n.add_argument("--logit-softcap", type=float, default=15.0,
                   help="logit soft cap; nanochat used 20 only for checkpoints trained 2026-03-02..03-09 (default 15)")
    n.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    from raychat.interop.nanochat import import_checkpoint

    out = import_checkpoint(args.checkpoint, args.tokenizer, args.run_dir, stage=args.stage, step=args.step,
                            logit_softcap=args.logit_softcap)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    mc = out["model_config"]
    print(f"imported nanochat step {out['step']} ({out['vintage']} layout): d{mc['n_layer']}, width {mc['n_embd']}, "
          f"vocab {mc['vocab_size']}, context {mc['sequence_len']}, {out['num_params'] / 1e6:.1f}M params")
    print(f"  checkpoint {out['checkpoint']}\n  tokenizer  {out['tokenizer']}")
    print(f"next: raychat chat --run-dir {args.run_dir} --stage {args.stage}")
    return 0
