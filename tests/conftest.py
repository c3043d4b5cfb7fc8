"""Shared fixtures. One Ray session for the whole test run (ray.init costs 10-17 s here), tiny run
directories (a trained tokenizer + a random-init tiny GPT checkpoint) built once per session."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _empty_data_folder(tmp_path_factory, monkeypatch):
    """Tests never read (or fill) the user's data folder: the data registry sees an empty one, so datasets come
    from ../shared/data (the development default) or from a test's own local hub."""
    monkeypatch.setenv("RAYCHAT_DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED.is_dir(), f"tests need the shared datasets at {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it: 2 CPUs, capped object store, no dashboard."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, object_store_memory=200 * 1024**2, include_dashboard=False,
                 configure_logging=False, log_to_driver=True,
                 runtime_env={"env_vars": {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}})
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - serve may never have started
        pass
    ray.shutdown()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it; a test binds it soon after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def scraping(url: str, needle: str, on_hit=None, interval: float = 0.05):
    """Scrape `url` in a background thread while the block runs. Yields the list of bodies that contained
    `needle` (filled as they come); `on_hit(body)` runs in the thread right after each, while the server is up."""
    hits, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                body = urllib.request.urlopen(url, timeout=1).read().decode()
                if needle in body:
                    hits.append(body)
                    if on_hit is not None:
                        on_hit(body)
            except OSError:
                pass
            time.sleep(interval)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield hits
    finally:
        stop.set()
        t.join(timeout=5)


def fresh_gpt(cfg, seed: int = 0):
    """A GPT on CPU with the model's own init (seeded)."""
    import torch

    from raychat.model import GPT

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    return model


def jittered_gpt(cfg, scale: float, seed: int = 0):
    """fresh_gpt, then every parameter moved by `scale` * N(0, 1): the init zeroes output projections, gates and
    lambdas, and a test of every path needs them all non-trivial."""
    import torch

    model = fresh_gpt(cfg, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def tiny_gpt(vocab_size: int, seq_len: int = 64, depth: int = 2, width: int = 64, seed: int = 0):
    """A random-init tiny GPT (head dim 32, full attention) whose zero-initialised output projections are given
    small random values, so positions get distinct logits (a fresh init would make every block the identity)."""
    import torch

    from raychat.model import GPTConfig

    cfg = GPTConfig(sequence_len=seq_len, vocab_size=vocab_size, n_layer=depth, n_head=width // 32,
                    n_kv_head=width // 32, n_embd=width, window_pattern="L")
    model = fresh_gpt(cfg, seed)
    with torch.no_grad():
        for b in model.blocks:
            b.attn.c_proj.weight.normal_(0, 0.02)
            b.mlp.c_proj.weight.normal_(0, 0.02)
        model.lm_head.weight.normal_(0, 0.02)
    return model


def make_tiny_run_dir(root: Path, *, vocab_size: int = 512, depth: int = 2, width: int = 64,
                      seq_len: int = 128, stages=("base",), never_stop: bool = False) -> Path:
    """A run directory with a BPE tokenizer trained on a slice of the shared Wikipedia shard and a random-init
    tiny GPT checkpoint in each requested stage. never_stop: zero the lm_head rows of the special tokens, so
    greedy decoding never picks one (every other token's random logit beats 0) and replies run to max_tokens."""
    import pyarrow.parquet as pq
    import torch

    from raychat.checkpoint import save_checkpoint
    from raychat.tokenizer import train_tokenizer

    texts = pq.read_table(SHARED / "pretrain" / "shard_00000.parquet", columns=["text"]).column("text")
    texts = texts.slice(0, 300).to_pylist()
    tok = train_tokenizer(iter(texts), vocab_size)
    tok.save(root / "tokenizer")
    model = tiny_gpt(tok.vocab_size, seq_len=seq_len, depth=depth, width=width)
    if never_stop:
        with torch.no_grad():
            for name in tok.special_tokens:
                model.lm_head.weight[tok.special_id(name)] = 0.0
    for stage in stages:
        save_checkpoint(root / "checkpoints" / stage, 1, model, config={"preset": "test"})
    return root


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    return make_tiny_run_dir(tmp_path_factory.mktemp("tiny_run"), stages=("base", "sft"))
