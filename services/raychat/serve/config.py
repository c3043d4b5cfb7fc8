"""ServeConfig: everything `raychat serve`, `serve run/deploy` (via build_app) and KubeRay need to stand the
app up, in one flat dataclass validated at construction and printed as JSON at start.

Where the model comes from: `checkpoint` (a step dir, stage dir or run dir) wins; else `run_dir` + `stage`
(+ `step`, default latest). Resources: one engine per replica; on a GPU box `num_gpus=1` per replica (the
default when CUDA is visible to the process that builds the app), on CPU a fractional `num_cpus` so several
replicas and the ingress fit a small machine. Scaling: a fixed `replicas`, or `autoscaling` (Ray Serve's
autoscaling_config; `raychat serve --max-replicas M` fills it) which scales on ongoing requests per replica.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from raychat.serve.protocol import Limits

STAGES = ("base", "sft", "rl")
DEFAULT_CPU_KV_CACHE_MEMORY = 2 * 2**30  # as vLLM's CPU backend, a fixed space (its default is 4 GiB)
# A chunk shares its step with the decode: on a CPU a d4 decode step of 7 rows costs about what 32 prompt
# tokens do, so 32 left a stream's slowest gap at 1.95-2.27x its median and 16 keeps it at 1.6-1.8x
# (benchmarks/RESULTS.md, engine ITL rows) at a longer TTFT for the long prompt itself; a GPU has compute to
# spare for a decode step, so its chunks are vLLM-sized.
DEFAULT_PREFILL_CHUNK = {"cpu": 16, "cuda": 512}
# Ray Serve AutoscalingConfig fields we pass through (others are rejected so a typo does not vanish)
AUTOSCALING_KEYS = ("min_replicas", "initial_replicas", "max_replicas", "target_ongoing_requests",
                    "metrics_interval_s", "look_back_period_s", "upscale_delay_s", "downscale_delay_s",
                    "upscaling_factor", "downscaling_factor")


@dataclass
class ServeConfig:
    run_dir: str | None = None           # run directory (tokenizer/, checkpoints/<stage>/step_*)
    stage: str = "sft"                   # which checkpoints/<stage> to serve
    checkpoint: str | None = None        # explicit checkpoint path (step/stage/run dir); overrides run_dir+stage
    step: int | None = None              # checkpoint step (None = latest)
    model_name: str | None = None        # the id /v1/models reports (default raychat-<stage>)
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1                    # engine replicas (the minimum when autoscaling)
    autoscaling: dict | None = None      # Ray Serve autoscaling_config; None = fixed `replicas`
    api_key: str | None = None           # protects every route except /health (None = open)
    limits: Limits = field(default_factory=Limits)
    max_batch_size: int = 64             # sequences decoded together per engine at most (vLLM's max_num_seqs)
    kv_cache_memory: int | None = None   # KV-cache bytes per engine (None: gpu_memory_utilization on a GPU,
                                         # DEFAULT_CPU_KV_CACHE_MEMORY on CPU); slots = min(fit, max_batch_size)
    gpu_memory_utilization: float = 0.9  # share of the GPU's memory an engine may use, weights included (vLLM's)
    prefix_caching: bool = True          # a prompt starting with cached tokens prefills only the rest
    prefill_chunk: int | None = None     # prompt tokens prefilled per engine step beside decoding (chunked
                                         # prefill); 0 = off, None = DEFAULT_PREFILL_CHUNK for the device
    max_seq_len: int | None = None       # context per sequence (None = the model's sequence_len)
    stream_interval: int = 4             # tokens per replica -> ingress stream item after the first (vLLM's
                                         # stream_interval); clients still get one frame per text delta
    max_ongoing_requests: int | None = None  # Serve's per-replica cap (None = 2 * max_batch_size)
    num_cpus: float = 1.0                # CPUs per engine replica (fractional is fine on CPU)
    num_gpus: float | None = None        # GPUs per engine replica (None = 1 if CUDA is visible, else 0)
    ingress_replicas: int = 1
    ingress_cpus: float = 0.25
    device: str | None = None            # engine device override (cpu/cuda); None = detect
    dtype: str | None = None             # engine dtype override; None = detect (bf16 on SM80+, fp32 on CPU)
    enforce_eager: bool = False          # decode without CUDA graphs on a GPU (vLLM's --enforce-eager)
    compile_decode: bool = False         # CPU: decode steps compiled by torch.compile at start (ignored on a GPU)
    tool_timeout_s: float = 0.1          # deadline of one calculator call (a child process; killed beyond it)
    allowed_hosts: list[str] | None = None  # Host names answered (None = loopback + host without a key, else any)
    allowed_origins: list[str] = field(default_factory=list)  # other web origins whose pages may call this server
    web_dir: str | None = None           # static chat page (None = the repository's web/)
    app_name: str = "raychat"

    def __post_init__(self):
        if isinstance(self.limits, dict):
            self.limits = Limits(**self.limits)
        if self.checkpoint is None and self.run_dir is None:
            raise ValueError("serve needs a model: give --checkpoint PATH or --run-dir DIR (with --stage)")
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.step is not None and self.step < 0:
            raise ValueError(f"step must be >= 0, got {self.step}")
        if not (0 <= self.port <= 65535):
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not self.host:
            raise ValueError("host must not be empty")
        for name in ("replicas", "max_batch_size", "ingress_replicas", "stream_interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.kv_cache_memory is not None and (isinstance(self.kv_cache_memory, bool) or self.kv_cache_memory < 1):
            raise ValueError(f"kv_cache_memory must be a positive number of bytes, got {self.kv_cache_memory!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.prefill_chunk is not None and self.prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be >= 0 (0: whole prompts, None: the device's default), got "
                             f"{self.prefill_chunk}")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2, got {self.max_seq_len}")
        if self.max_ongoing_requests is None:
            self.max_ongoing_requests = 2 * self.max_batch_size
        if self.max_ongoing_requests < 1:
            raise ValueError(f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")
        for name in ("num_cpus", "ingress_cpus"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0 (fractions allowed), got {v!r}")
        if self.num_gpus is not None and not (self.num_gpus >= 0):
            raise ValueError(f"num_gpus must be >= 0, got {self.num_gpus}")
        if self.api_key is not None:
            if not self.api_key.strip():
                self.api_key = None
            elif any(c.isspace() or not c.isprintable() for c in self.api_key):
                raise ValueError("api_key must be printable characters without spaces")
        if self.autoscaling is not None:
            self.autoscaling = dict(self.autoscaling)
            unknown = sorted(set(self.autoscaling) - set(AUTOSCALING_KEYS))
            if unknown:
                raise ValueError(f"unknown autoscaling keys {unknown}; expected some of {', '.join(AUTOSCALING_KEYS)}")
            self.autoscaling.setdefault("min_replicas", self.replicas)
            self.autoscaling.setdefault("max_replicas", max(self.replicas, self.autoscaling["min_replicas"]))
            self.autoscaling.setdefault("target_ongoing_requests", self.max_batch_size)
            lo, hi = self.autoscaling["min_replicas"], self.autoscaling["max_replicas"]
            if not (0 <= lo <= hi and hi >= 1):
                raise ValueError(f"autoscaling needs 0 <= min_replicas <= max_replicas, max >= 1; got {lo}..{hi}")
            if self.autoscaling["target_ongoing_requests"] > self.max_ongoing_requests:
                raise ValueError("autoscaling target_ongoing_requests "
                                 f"({self.autoscaling['target_ongoing_requests']}) exceeds max_ongoing_requests "
                                 f"({self.max_ongoing_requests}): replicas would never look busy enough to scale")
        if not (isinstance(self.tool_timeout_s, int | float) and math.isfinite(self.tool_timeout_s)
                and self.tool_timeout_s > 0):
            raise ValueError(f"tool_timeout_s must be > 0, got {self.tool_timeout_s!r}")
        for name in ("allowed_hosts", "allowed_origins"):
            v = getattr(self, name)
            if isinstance(v, str):  # `serve run ... allowed_hosts=a.example,b.example`
                v = [h.strip() for h in v.split(",") if h.strip()]
            if v is not None and not all(isinstance(h, str) and h and not any(c.isspace() for c in h) for h in v):
                raise ValueError(f"{name} must be a list of names without spaces, got {v!r}")
            setattr(self, name, None if v is None else list(v))
        if self.model_name is None:
            self.model_name = f"raychat-{self.stage}"

    def engine_options(self, device_type: str) -> dict:
        """The Engine's keyword arguments (KV cache, prefill, compiled CPU decode) on a device of this type."""
        memory = {"kv_cache_memory": self.kv_cache_memory}
        if self.kv_cache_memory is None:
            memory = ({"gpu_memory_utilization": self.gpu_memory_utilization} if device_type == "cuda"
                      else {"kv_cache_memory": DEFAULT_CPU_KV_CACHE_MEMORY})
        default = DEFAULT_PREFILL_CHUNK.get(device_type, DEFAULT_PREFILL_CHUNK["cpu"])
        chunk = default if self.prefill_chunk is None else self.prefill_chunk
        return {**memory, "prefix_caching": self.prefix_caching, "prefill_chunk": chunk or None,
                "compile_decode": self.compile_decode and device_type == "cpu"}

    @property
    def model_path(self) -> str:
        return str(Path(self.checkpoint or self.run_dir).expanduser())

    def resolved_num_gpus(self) -> float:
        if self.num_gpus is not None:
            return float(self.num_gpus)
        import torch

        return 1.0 if torch.cuda.is_available() and self.device != "cpu" else 0.0

    def resolved_web_dir(self) -> Path:
        if self.web_dir:
            return Path(self.web_dir).expanduser()
        from raychat.common import REPO_ROOT

        return REPO_ROOT / "web"

    def to_dict(self, redact: bool = False) -> dict:
        d = asdict(self)
        if redact and d["api_key"]:
            d["api_key"] = "<set>"
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(redact=True), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ServeConfig:
        """From `serve run/deploy` args (strings from the CLI, typed values from YAML). Unknown keys are an
        error; RAYCHAT_API_KEY fills api_key when it is not given."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown serve config keys {unknown}; expected some of {', '.join(sorted(known))}")
        d = dict(d)
        for f in fields(cls):
            v = d.get(f.name)
            if isinstance(v, str) and f.type in ("int", "int | None", "float", "float | None"):
                d[f.name] = (int if f.type.startswith("int") else float)(v)
            elif isinstance(v, str) and f.name in ("limits", "autoscaling"):
                d[f.name] = json.loads(v)
        if not d.get("api_key") and os.environ.get("RAYCHAT_API_KEY"):
            d["api_key"] = os.environ["RAYCHAT_API_KEY"]
        return cls(**d)
