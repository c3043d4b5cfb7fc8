"""`raychat export hf`: a checkpoint as a Hugging Face transformers directory (loaded with trust_remote_code).

    raychat export hf --run-dir runs/d20 --stage sft --out ~/hf/d20-sft
    raychat export hf --checkpoint runs/d20/checkpoints/base/step_021400 --out ~/hf/d20-base

then, in Python (transformers >= 5):

    model = AutoModelForCausalLM.from_pretrained("~/hf/d20-sft", trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained("~/hf/d20-sft", trust_remote_code=True)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt")["input_ids"]
    print(tok.decode(model.generate(ids, max_new_tokens=64)[0, ids.size(1):]))

Writes config.json, model.safetensors (fp32), modeling_raychat.py, generation_config.json and the tokenizer
(tokenizer.json, tokenizer_config.json, chat_template.jinja: raychat's chat template). The output directory
must not exist yet (or be empty); it appears complete or not at all.
"""

from __future__ import annotations

import json


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    h = sub.add_parser("hf", help="Hugging Face transformers directory (config.json, model.safetensors, tokenizer)")
    h.add_argument("--run-dir", default=None, help="run directory holding tokenizer/ and checkpoints/<stage>/")
    h.add_argument("--checkpoint", default=None, help="explicit checkpoint (step or stage dir); overrides --run-dir")
    h.add_argument("--stage", default="sft", choices=["base", "sft", "rl"], help="checkpoint stage to export")
    h.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    h.add_argument("--out", required=True, help="output directory (must not exist, or be empty)")
    h.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    from raychat.common import RaychatError
    from raychat.interop.hf import export_hf

    path = args.checkpoint or args.run_dir
    if path is None:
        raise RaychatError("give --run-dir RUN (or --checkpoint DIR)")
    out = export_hf(path, args.out, stage=args.stage, step=args.step)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"exported {out['checkpoint']} (step {out['step']}) -> {out['out']}: {', '.join(out['files'])}")
        print(f'load: AutoModelForCausalLM.from_pretrained("{out["out"]}", trust_remote_code=True)')
    return 0
