"""Training metrics: a JSONL file in the run directory (always), Prometheus gauges scrapeable while the job
runs (rank 0 serves them on --metrics-port / RAYCHAT_METRICS_PORT, default 9101, 0 = off, bound to
--metrics-host / RAYCHAT_METRICS_HOST, default 127.0.0.1: set 0.0.0.0 where Prometheus scrapes from another
host or container), wandb when a run name is given (WANDB_MODE=offline|disabled respected), and a progress bar
with ETA on the console.

Prometheus names follow CONVENTIONS.md; the job ("pretrain" | "sft" | "rl") is a label.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from raychat.progress import Progress

# name -> (help, key in the logged event)
_GAUGES = {
    "raychat_train_loss": ("training loss (nats/token)", "loss"),
    "raychat_train_tokens_per_second": ("training throughput, all workers", "tokens_per_second"),
    "raychat_train_mfu": ("model-FLOPs utilisation (0-1) against the device peak", "mfu"),
    "raychat_train_step_seconds": ("wall time of the last optimizer step", "step_seconds"),
    "raychat_val_bpb": ("validation bits per byte", "val_bpb"),
    "raychat_train_step": ("optimizer steps done", "step"),
    "raychat_train_lr_multiplier": ("learning-rate schedule multiplier", "lr"),
    "raychat_rl_mean_reward": ("GRPO mean reward of the last batch of rollouts", "mean_reward"),
}
METRIC_NAMES = tuple(_GAUGES)


class TrainMetrics:
    """One per job and process; only rank 0 writes files, serves Prometheus, talks to wandb and draws."""

    def __init__(self, run_dir: Path, job: str, rank: int = 0, total_steps: int = 0, start_step: int = 0,
                 wandb_run: str | None = None, config: dict | None = None, metrics_port: int | None = None,
                 metrics_host: str | None = None):
        self.job = job
        self.active = rank == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.progress = None
        self.wandb = None
        self.port = None
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.registry = CollectorRegistry()
        self.gauges = {n: Gauge(n, h, ["stage"], registry=self.registry) for n, (h, _) in _GAUGES.items()}
        port = int(os.environ.get("RAYCHAT_METRICS_PORT", 9101)) if metrics_port is None else metrics_port
        host = metrics_host or os.environ.get("RAYCHAT_METRICS_HOST") or "127.0.0.1"
        if port:
            try:
                server, _ = start_http_server(port, addr=host, registry=self.registry)
                self.port = server.server_port
                self._server = server
            except OSError as e:
                print(f"[metrics] Prometheus {host}:{port} unavailable ({e}); continuing without it", flush=True)
        if wandb_run:
            import wandb

            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "raychat"), name=wandb_run,
                                    config=config or {}, job_type=job)
        if total_steps:
            self.progress = Progress(total_steps - start_step, desc=job)
        self.log({"event": "start", "config": config or {}, "metrics_port": self.port})

    def log(self, event: dict) -> None:
        if not self.active:
            return
        event = {"job": self.job, "time": time.time(), **event}
        with self.path.open("a") as f:
            f.write(json.dumps(event, default=str) + "\n")
        for name, (_, key) in _GAUGES.items():
            v = event.get(key)
            if isinstance(v, (int, float)):
                self.gauges[name].labels(self.job).set(v)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in event.items() if isinstance(v, (int, float))}, step=event.get("step"))

    def step(self, n: int = 1, **postfix) -> None:
        if self.progress is not None:
            self.progress.update(n, **postfix)

    def close(self) -> None:
        if not self.active:
            return
        if self.progress is not None:
            self.progress.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.port is not None:
            self._server.shutdown()
