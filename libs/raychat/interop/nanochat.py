"""Read a checkpoint and tokenizer written by nanochat (karpathy/nanochat) and turn them into raychat's.

nanochat writes `model_<step>.pt` (the model's state_dict, torch.save), `meta_<step>.json` (model_config,
user_config, loader state) and, in its tokenizer directory, `tokenizer.pkl` (a pickled tiktoken Encoding) and
`token_bytes.pt`. Nothing here runs a foreign pickle: the weights go through `torch.load(weights_only=True)`
and the tokenizer through an unpickler that knows one class, tiktoken's Encoding, and only keeps its state.

nanochat's model changed over time. The vintages below (from nanochat's git history of nanochat/gpt.py) are
told apart by the checkpoint's keys and the value-embedding gate's width; each maps onto GPTConfig switches:

    vintage        nanochat commits (dates)                      what changed
    original       3a5e0bc.. (2025-10-13..2026-01-11)           the first model; the public nanochat-d32 is one
    lambdas        aa530cd.. (2026-01-11..01-16)                + resid/x0 lambdas, windows (S = L // 2)
    value-embeds   e85db6b.. (2026-01-16..03-09)                + value embeddings on alternating layers, gate
                                                                   2*sigmoid over 32 channels
    gate12         6ed7d1d.. (2026-03-09..03-14)                gate 3*sigmoid over 12 channels, rope base
                                                                   100000, S = ceil(L/3/128)*128
    smear-backout  a825e63..92d63d4 (2026-03-14..)              + smear, backout (after block n_layer // 2),
                                                                   q and k * 1.2 after QK-norm, S = ceil(L/4/128)*128

Short-lived layouts in between (one value embedding per layer, v0 lambdas, engram) are refused with the keys
that don't fit. The mapping onto raychat, exact up to float rounding:
- nanochat's window (N, 0) lets a query see N keys before it plus itself: raychat's window N + 1; its "L" layers
  get (sequence_len, 0), which is the full context within sequence_len (raychat's limit), so L maps to None.
- the value-embedding gate 3*sigmoid: raychat's gate is 2*sigmoid, so the value-embedding table is scaled by 1.5
  (the gate multiplies it linearly); a 12-channel gate weight is zero-padded to raychat's 32 channels.
- rows padded to a multiple of 64 in wte, lm_head and the value embeddings are cropped to vocab_size.
- vintages without resid/x0 lambdas get 1 and 0 (x = 1 * x + 0 * x0 is x).
- one caveat: the value-embeds vintage ran with logit softcap 20 between 2026-03-02 (aba30cb) and 03-09; the
  files don't say which, so the importer takes 15 unless told otherwise (`logit_softcap`).
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from raychat.common import RaychatError
from raychat.tokenizer.bpe import SPECIAL_TOKENS, Tokenizer

MODEL_RE = re.compile(r"^model_(\d+)\.pt$")
CONFIG_FIELDS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "window_pattern")


@dataclass(frozen=True)
class Vintage:
    name: str
    commits: str
    lambdas: bool  # resid_lambdas / x0_lambdas
    ve_gate_channels: int  # 0 = no value embeddings
    ve_gate_scale: float  # nanochat's gate = scale * sigmoid(...)
    smear: bool  # smear_gate/smear_lambda and backout_lambda (they came together)
    rope_base: float
    qk_scale: float
    short_div: int  # S window: L // 2 (short_div 2, no rounding) or ceil(L / short_div / 128) * 128

    def short_window(self, seq_len: int) -> int:
        """nanochat's left window (keys before the query) of an S layer."""
        if self.short_div == 2:
            return seq_len // 2
        return -(-seq_len // self.short_div // 128) * 128


VINTAGES = (
    Vintage("smear-backout", "a825e63..92d63d4, 2026-03-14 on", True, 12, 3.0, True, 100000.0, 1.2, 4),
    Vintage("gate12", "6ed7d1d..a825e63, 2026-03-09..03-14", True, 12, 3.0, False, 100000.0, 1.0, 3),
    Vintage("value-embeds", "e85db6b..6ed7d1d, 2026-01-16..03-09", True, 32, 2.0, False, 10000.0, 1.0, 2),
    Vintage("lambdas", "aa530cd..e85db6b, 2026-01-11..01-16", True, 0, 0.0, False, 10000.0, 1.0, 2),
    Vintage("original", "3a5e0bc..aa530cd, 2025-10-13..2026-01-11 (the public nanochat-d32)", False, 0, 0.0, False,
            10000.0, 1.0, 2),
)


def has_ve(i: int, n_layer: int) -> bool:
    return i % 2 == (n_layer - 1) % 2


def expected_keys(v: Vintage, n_layer: int) -> set[str]:
    keys = {"transformer.wte.weight", "lm_head.weight"}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        keys |= {h + k for k in ("attn.c_q.weight", "attn.c_k.weight", "attn.c_v.weight", "attn.c_proj.weight",
                                 "mlp.c_fc.weight", "mlp.c_proj.weight")}
        if v.ve_gate_channels and has_ve(i, n_layer):
            keys |= {h + "attn.ve_gate.weight", f"value_embeds.{i}.weight"}
    if v.lambdas:
        keys |= {"resid_lambdas", "x0_lambdas"}
    if v.smear:
        keys |= {"smear_gate.weight", "smear_lambda", "backout_lambda"}
    return keys


# ---------------------------------------------------------------------------------------------- reading files
def find_step(ckpt_dir: Path, step: int | None) -> int:
    if not ckpt_dir.is_dir():
        raise RaychatError(f"nanochat checkpoint directory {ckpt_dir} does not exist")
    steps = sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := MODEL_RE.match(p.name)))
    if not steps:
        raise RaychatError(f"{ckpt_dir} holds no nanochat checkpoint (no model_<step>.pt)")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise RaychatError(f"{ckpt_dir} has no checkpoint at step {step} (have {steps})")
    return step


def read_checkpoint(ckpt_dir: str | Path, step: int | None = None) -> tuple[int, dict[str, torch.Tensor], dict]:
    """-> (step, state_dict with torch.compile's `_orig_mod.` prefix removed, meta)."""
    ckpt_dir = Path(ckpt_dir).expanduser()
    step = find_step(ckpt_dir, step)
    mpath, jpath = ckpt_dir / f"model_{step:06d}.pt", ckpt_dir / f"meta_{step:06d}.json"
    if not mpath.is_file():  # nanochat always pads to 6 digits; accept another width from a renamed file
        mpath = next(p for p in ckpt_dir.iterdir() if (m := MODEL_RE.match(p.name)) and int(m.group(1)) == step)
        jpath = ckpt_dir / f"meta_{mpath.name[6:-3]}.json"
    if not jpath.is_file():
        raise RaychatError(f"{ckpt_dir}: {mpath.name} has no {jpath.name} next to it (nanochat writes both)")
    try:
        meta = json.loads(jpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RaychatError(f"{jpath} is not readable JSON (truncated?): {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model_config"), dict):
        raise RaychatError(f"{jpath} has no model_config: not a nanochat checkpoint's meta file")
    try:
        state = torch.load(mpath, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RaychatError(f"{mpath} holds objects other than tensors, refused (weights_only): {e}") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... for a cut or corrupt file
        raise RaychatError(f"{mpath} is unreadable (truncated or corrupt?): {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RaychatError(f"{mpath} is not a state_dict of tensors")
    return step, {k.removeprefix("_orig_mod."): v for k, v in state.items()}, meta


class _EncodingState:
    """Stands in for tiktoken.core.Encoding while unpickling: BUILD hands it the state; nothing else runs."""

    state = None

    def __setstate__(self, state):
        self.state = state


class _TokenizerUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a nanochat tokenizer.pkl holds only a "
                                     "tiktoken Encoding")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id")


def read_tokenizer(tok_dir: str | Path) -> Tokenizer:
    """nanochat's tokenizer directory -> a raychat Tokenizer with the same ids (checked against token_bytes.pt)."""
    tok_dir = Path(tok_dir).expanduser()
    pkl = tok_dir / "tokenizer.pkl"
    if not pkl.is_file():
        raise RaychatError(f"no nanochat tokenizer at {tok_dir} (missing tokenizer.pkl)")
    try:
        with open(pkl, "rb") as f:
            obj = _TokenizerUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as e:
        raise RaychatError(f"{pkl} refused: {e}") from None
    state = obj.state if isinstance(obj, _EncodingState) else None
    if not isinstance(state, dict) or not {"pat_str", "mergeable_ranks", "special_tokens"} <= set(state):
        raise RaychatError(f"{pkl} is not a pickled tiktoken Encoding with its own ranks (got {type(obj).__name__})")
    ranks, specials, pattern = state["mergeable_ranks"], state["special_tokens"], state["pat_str"]
    if not (isinstance(pattern, str) and isinstance(ranks, dict) and isinstance(specials, dict)
            and all(isinstance(k, bytes) and isinstance(v, int) for k, v in ranks.items())
            and all(isinstance(k, str) and isinstance(v, int) for k, v in specials.items())):
        raise RaychatError(f"{pkl}: the Encoding's state has unexpected types")
    names = sorted(specials, key=specials.get)
    if set(names) != set(SPECIAL_TOKENS):
        raise RaychatError(f"{pkl}: special tokens {names} are not nanochat's/raychat's {SPECIAL_TOKENS}")
    tok = Tokenizer(ranks, pattern=pattern, special_tokens=names, name="nanochat")
    if tok.special_tokens != specials:
        raise RaychatError(f"{pkl}: special token ids {specials} do not follow the {len(ranks)} ranks")
    tb_path = tok_dir / "token_bytes.pt"
    if tb_path.is_file():
        try:
            tb = torch.load(tb_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise RaychatError(f"{tb_path} is unreadable (truncated or corrupt?): {e}") from None
        if not isinstance(tb, torch.Tensor) or not torch.equal(tb.long().flatten(), tok.token_bytes):
            raise RaychatError(f"{tb_path} does not match the ranks in {pkl} (files from different tokenizers?)")
    return tok


# ---------------------------------------------------------------------------------------------- mapping
def detect_vintage(state: dict[str, torch.Tensor], n_layer: int) -> Vintage:
    keys = set(state)
    for v in VINTAGES:
        if keys == expected_keys(v, n_layer):
            if not v.ve_gate_channels:
                return v
            gate = state[f"transformer.h.{n_layer - 1}.attn.ve_gate.weight"]
            if gate.ndim == 2 and gate.size(1) == v.ve_gate_channels:
                return v
    # nothing fits: name the closest layout and what differs from it
    best = min(VINTAGES, key=lambda v: len(keys ^ expected_keys(v, n_layer)))
    exp = expected_keys(best, n_layer)
    unknown, missing = sorted(keys - exp), sorted(exp - keys)
    if not unknown and not missing:
        gate = state[f"transformer.h.{n_layer - 1}.attn.ve_gate.weight"]
        raise RaychatError(f"unknown nanochat layout: value-embedding gate of shape {tuple(gate.shape)}; known "
                           "gates read 32 or 12 channels")
    raise RaychatError(f"unknown nanochat layout (closest: the {best.name} vintage, {best.commits}): "
                       f"unknown keys {unknown or 'none'}; missing keys {missing or 'none'}")


def _window_config(v: Vintage, mc: dict) -> dict:
    pattern = str(mc.get("window_pattern", "L")).upper()  # checkpoints before windows existed: full context
    L = int(mc["sequence_len"])
    if not pattern or set(pattern) - {"S", "L"}:
        raise RaychatError(f"nanochat window_pattern {pattern!r} is not a string of S and L")
    n_layer = int(mc["n_layer"])
    uses_short = any(pattern[i % len(pattern)] == "S" for i in range(n_layer - 1))
    window = v.short_window(L) + 1  # nanochat's left window excludes the query itself, raychat's includes it
    if not uses_short or window >= L:  # S as wide as the context: the same as L within sequence_len
        return {"window_pattern": "L"}
    return {"window_pattern": pattern, "short_window": window}


def model_config(v: Vintage, mc: dict, logit_softcap: float = 15.0) -> dict:
    """nanochat's model_config + vintage -> raychat GPTConfig kwargs."""
    unknown = sorted(set(mc) - set(CONFIG_FIELDS))
    missing = sorted(set(CONFIG_FIELDS[:-1]) - set(mc))
    if unknown or missing:
        raise RaychatError(f"nanochat model_config: unknown fields {unknown or 'none'}, missing {missing or 'none'}")
    try:
        cfg = {k: int(mc[k]) for k in CONFIG_FIELDS[:-1]}
    except (TypeError, ValueError):
        raise RaychatError(f"nanochat model_config has a non-integer size: {mc}") from None
    n_layer = cfg["n_layer"]
    cfg.update(_window_config(v, mc), value_embeds=bool(v.ve_gate_channels), smear=v.smear, backout=v.smear,
               logit_softcap=float(logit_softcap), rope_base=v.rope_base, qk_scale=v.qk_scale)
    if v.smear:
        cfg["backout_layer"] = n_layer // 2
    return cfg


def convert_state(v: Vintage, state: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """nanochat state_dict -> raychat GPT state_dict (fp32), shapes not yet checked (load_state_dict does)."""
    V, n_layer = cfg["vocab_size"], cfg["n_layer"]
    gate_channels = min(32, cfg["n_embd"])

    def rows(name: str) -> torch.Tensor:  # crop nanochat's padding of the vocabulary to a multiple of 64
        t = state[name]
        if t.ndim != 2 or not V <= t.size(0) < V + 64:
            raise RaychatError(f"{name} has shape {tuple(t.shape)}, expected ({V} (+ padding < 64), width)")
        return t[:V]

    out = {"wte.weight": rows("transformer.wte.weight"), "lm_head.weight": rows("lm_head.weight")}
    for i in range(n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for k in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[b + k + ".weight"] = state[h + k + ".weight"]
        if v.ve_gate_channels and has_ve(i, n_layer):
            gate = state[h + "attn.ve_gate.weight"]
            if gate.size(1) > gate_channels:
                raise RaychatError(f"{h}attn.ve_gate.weight reads {gate.size(1)} channels, raychat's gate reads "
                                   f"{gate_channels} (n_embd {cfg['n_embd']})")
            # the extra channels get weight 0: the gate's logits are unchanged
            out[b + "attn.ve_gate.weight"] = torch.nn.functional.pad(gate.float(), (0, gate_channels - gate.size(1)))
            # raychat's gate is 2*sigmoid; nanochat's is ve_gate_scale*sigmoid; the table absorbs the ratio
            out[f"value_embeds.{i}.weight"] = rows(f"value_embeds.{i}.weight").float() * (v.ve_gate_scale / 2.0)
    if v.lambdas:
        out["resid_lambdas"], out["x0_lambdas"] = state["resid_lambdas"], state["x0_lambdas"]
    else:
        out["resid_lambdas"], out["x0_lambdas"] = torch.ones(n_layer), torch.zeros(n_layer)
    if v.smear:
        out["smear_gate"] = state["smear_gate.weight"].reshape(-1)  # Linear(24, 1).weight (1, 24) -> (24,)
        out["smear_lambda"] = state["smear_lambda"].reshape(())
        out["backout_lambda"] = state["backout_lambda"].reshape(())
    return {k: t.detach().to(torch.float32).contiguous() for k, t in out.items()}


def load_nanochat(ckpt_dir: str | Path, step: int | None = None, logit_softcap: float = 15.0):
    """-> (raychat GPT in eval mode with nanochat's weights, step, vintage, nanochat meta)."""
    from raychat.checkpoint import build_model

    step, state, meta = read_checkpoint(ckpt_dir, step)
    mc = meta["model_config"]
    try:
        n_layer = int(mc["n_layer"])
    except (KeyError, TypeError, ValueError):
        raise RaychatError(f"nanochat model_config has no usable n_layer: {mc}") from None
    v = detect_vintage(state, n_layer)
    cfg = model_config(v, mc, logit_softcap)
    try:
        model = build_model(cfg)
    except ValueError as e:
        raise RaychatError(f"nanochat model_config {mc} does not make a valid model: {e}") from None
    new = convert_state(v, state, cfg)
    own = model.state_dict()
    bad = [f"{k}: {tuple(new[k].shape)} vs {tuple(own[k].shape)}" for k in own if new[k].shape != own[k].shape]
    if bad:
        raise RaychatError(f"nanochat weights do not fit model_config {mc}: {'; '.join(bad[:5])}")
    model.load_state_dict(new, strict=True)
    return model.eval(), step, v, meta


def import_checkpoint(ckpt_dir: str | Path, tok_dir: str | Path, run_dir: str | Path, stage: str = "base",
                      step: int | None = None, logit_softcap: float = 15.0) -> dict:
    """Write nanochat's checkpoint as <run_dir>/checkpoints/<stage>/step_N and its tokenizer as
    <run_dir>/tokenizer. Everything is read and checked before anything is written; an existing checkpoint at
    that step, or a different tokenizer already in the run directory, is refused (nothing is overwritten)."""
    from raychat.checkpoint import STAGES, save_checkpoint, step_dir_name

    if stage not in STAGES:
        raise RaychatError(f"unknown stage {stage!r}; expected one of {STAGES}")
    model, step, v, meta = load_nanochat(ckpt_dir, step, logit_softcap)
    tok = read_tokenizer(tok_dir)
    if tok.vocab_size != model.config.vocab_size:
        raise RaychatError(f"the tokenizer in {tok_dir} has {tok.vocab_size} ids, the model {model.config.vocab_size}:"
                           " not the tokenizer this checkpoint was trained with")
    run_dir = Path(run_dir).expanduser()
    tdir = run_dir / "tokenizer"
    if (tdir / "tokenizer.json").exists():
        have = Tokenizer.load(tdir)
        if (have.mergeable_ranks, have.pattern, have.special_tokens) != (tok.mergeable_ranks, tok.pattern,
                                                                         tok.special_tokens):
            raise RaychatError(f"{tdir} holds a different tokenizer; import into another --run-dir")
    root = run_dir / "checkpoints" / stage
    if (root / step_dir_name(step)).exists():
        raise RaychatError(f"{root / step_dir_name(step)} already exists; remove it or import into another "
                           "--run-dir")
    tok.save(tdir)
    source = {"format": "nanochat", "checkpoint": str(Path(ckpt_dir).expanduser().resolve()), "step": step,
              "vintage": v.name, "vintage_commits": v.commits, "model_config": meta["model_config"],
              "user_config": meta.get("user_config"), "val_bpb": meta.get("val_bpb")}
    out = save_checkpoint(root, step, model, config={"imported_from": source},
                          meta={"final": True, "imported_from": source, "val_bpb": meta.get("val_bpb")})
    return {"checkpoint": str(out), "tokenizer": str(tdir), "step": step, "vintage": v.name,
            "model_config": model.config.to_dict(), "num_params": model.num_params()["total"]}
