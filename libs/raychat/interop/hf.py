"""Export a raychat checkpoint as a Hugging Face transformers model directory (`trust_remote_code=True`).

    <out>/config.json             GPTConfig's fields + auto_map -> modeling_raychat.RaychatConfig / RaychatForCausalLM
         /modeling_raychat.py      the standalone model (torch + transformers only; a copy of the file beside this)
         /model.safetensors        raychat's fp32 weights under raychat's own names
         /generation_config.json   greedy by default; stops at <|assistant_end|> and <|bos|> like raychat's engine
         /tokenizer.json + tokenizer_config.json + chat_template.jinja   PreTrainedTokenizerFast

The tokenizer is tiktoken's BPE turned into a `tokenizers` BPE by transformers' own TikTokenConverter (vocab
from the ranks, merges recovered from them, the same split regex, byte-level); the chat template renders
conversations the way libs/raychat/tokenizer/chat.py does. transformers is needed here (the dev extra) and is
imported only when exporting. The directory is written into a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from raychat.common import RaychatError

MODELING_FILE = Path(__file__).with_name("modeling_raychat.py")

# raychat's chat template (tokenizer/chat.py) in Jinja: <|bos|>, a leading system message merged into the first
# user message as "system\n\nuser", assistant content as a string or a list of text/python/python_output parts;
# with add_generation_prompt a trailing assistant message is dropped and <|assistant_start|> opens the reply.
CHAT_TEMPLATE = """\
{%- macro text_of(content) -%}
{%- if content is string -%}{{ content }}{%- else -%}{%- for p in content -%}{{ p['text'] }}{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(system='') -%}
{{- bos_token -}}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- if not loop.first -%}{{ raise_exception('a system message is only allowed first') }}{%- endif -%}
{%- set ns.system = text_of(message['content']) -%}
{%- elif message['role'] == 'user' -%}
<|user_start|>{%- if ns.system -%}{{ ns.system }}

{% endif -%}{{ text_of(message['content']) }}<|user_end|>
{%- set ns.system = '' -%}
{%- elif message['role'] == 'assistant' -%}
{%- if not (loop.last and add_generation_prompt) -%}
<|assistant_start|>
{%- if message['content'] is string -%}{{ message['content'] }}
{%- else -%}{%- for p in message['content'] -%}
{%- if p['type'] == 'python' -%}<|python_start|>{{ p['text'] }}<|python_end|>
{%- elif p['type'] == 'python_output' -%}<|output_start|>{{ p['text'] }}<|output_end|>
{%- else -%}{{ p['text'] }}{%- endif -%}
{%- endfor -%}{%- endif -%}
<|assistant_end|>
{%- endif -%}
{%- else -%}{{ raise_exception('unknown role ' + message['role'] + '; expected system, user or assistant') }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}
"""


def hf_tokenizer(tok, max_length: int | None = None):
    """raychat Tokenizer -> transformers PreTrainedTokenizerFast with the same ids, specials and chat template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _RanksConverter(TikTokenConverter):  # the ranks are in memory: no tiktoken file (or its cache) needed
        def load_tiktoken_bpe(self, _path):
            return tok.mergeable_ranks

    specials = sorted(tok.special_tokens, key=tok.special_tokens.get)
    backend = _RanksConverter(pattern=tok.pattern, extra_special_tokens=specials).converted()
    # like raychat's documents, a text encoded with add_special_tokens (transformers' default) starts with <|bos|>;
    # the chat template writes its own <|bos|> and apply_chat_template adds nothing
    bos = ("<|bos|>", tok.bos_id)
    backend.post_processor = processors.Sequence([
        backend.post_processor,
        processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[bos])])
    if backend.get_vocab_size() != tok.vocab_size:
        raise RaychatError(f"tokenizer conversion gave {backend.get_vocab_size()} ids, expected {tok.vocab_size}")
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|assistant_end|>",
                                   pad_token="<|bos|>", chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
                                   model_max_length=max_length)


def export_hf(path: str | os.PathLike, out: str | os.PathLike, stage: str = "sft", step: int | None = None) -> dict:
    """Write the checkpoint at `path` (run dir, stage dir or step dir) as a transformers directory `out`."""
    from safetensors.torch import load_file, save_file

    from raychat.checkpoint import find_tokenizer_dir, read_meta, resolve_checkpoint
    from raychat.model import GPTConfig
    from raychat.tokenizer import Tokenizer

    try:
        import transformers  # noqa: F401 - fail early with the fix, before anything is read or written
    except ImportError:
        raise RaychatError("exporting to transformers needs the `transformers` package: pip install 'raychat[dev]' "
                           "(or pip install transformers)") from None
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RaychatError(f"{out} already exists and is not an empty directory; choose another --out")
    ckpt = resolve_checkpoint(path, stage, step)
    meta = read_meta(ckpt)
    mc = meta.get("model_config")
    try:
        cfg = GPTConfig(**mc)
    except (TypeError, ValueError) as e:
        raise RaychatError(f"checkpoint {ckpt}: model_config is not a valid GPTConfig: {e}") from None
    tdir = find_tokenizer_dir(ckpt)
    if tdir is None:
        raise RaychatError(f"no tokenizer/ directory above {ckpt}; the export needs the run's tokenizer")
    tok = Tokenizer.load(tdir)
    if tok.vocab_size != cfg.vocab_size:
        raise RaychatError(f"tokenizer {tdir} has {tok.vocab_size} ids but the model {cfg.vocab_size}")
    try:
        state = load_file(str(ckpt / "model.safetensors"))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise RaychatError(f"checkpoint weights {ckpt / 'model.safetensors'} are unreadable: {e}") from None

    sp = tok.special_tokens
    stops = [sp["<|assistant_end|>"], sp["<|bos|>"]]
    config = {"architectures": ["RaychatForCausalLM"], "model_type": "raychat",
              "auto_map": {"AutoConfig": "modeling_raychat.RaychatConfig",
                           "AutoModelForCausalLM": "modeling_raychat.RaychatForCausalLM"},
              **cfg.to_dict(), "tie_word_embeddings": False, "dtype": "float32",
              # raychat's S window itself (its rounding rule stays in raychat): the same windows on both sides
              "short_window": next((w for w in cfg.window_sizes() if w is not None), cfg.short_window),
              "bos_token_id": sp["<|bos|>"], "eos_token_id": stops, "pad_token_id": sp["<|bos|>"]}
    generation = {"bos_token_id": sp["<|bos|>"], "eos_token_id": stops, "pad_token_id": sp["<|bos|>"],
                  "do_sample": False}
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        shutil.copyfile(MODELING_FILE, tmp / "modeling_raychat.py")
        hf_tokenizer(tok, cfg.sequence_len).save_pretrained(str(tmp))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "checkpoint": str(ckpt), "step": meta.get("step"), "files": sorted(os.listdir(out))}
