"""Prometheus metrics for serving, named after vLLM's (`vllm:` -> `raychat:`) so existing dashboards and
autoscalers fit. Exposed in the Prometheus text format at GET /metrics on the serving port.

Where each number comes from, given Ray Serve's process model (the ingress and every engine replica are
separate processes, each with its own prometheus_client state):
- request-level histograms and counters are recorded in the *ingress* (it sees every token stream go by,
  so TTFT/ITL/E2E are what a client experiences, Serve hop included);
- engine gauges (running, waiting, KV-cache usage and capacity) and the prefix-cache counters live in the
  engine replicas: the ingress asks every
  replica for them (`handle.broadcast("stats")`) when /metrics is scraped, and exports one series per
  replica (label `replica`), so `sum()`/`max()` in a dashboard work as with vLLM's per-engine label.
With several ingress replicas each scrape reaches one of them; for cluster-wide totals scrape Ray's own
metrics port, or run one ingress replica (the default).

Colons are legal in Prometheus metric names (vLLM uses them); every series carries `model_name`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# The exposition names (counters with their _total suffix). deploy/ tests check Grafana dashboards against
# this tuple, so a renamed metric cannot silently blank a panel.
METRIC_NAMES = (
    "raychat:time_to_first_token_seconds",
    "raychat:inter_token_latency_seconds",
    "raychat:e2e_request_latency_seconds",
    "raychat:request_queue_time_seconds",
    "raychat:prompt_tokens_total",
    "raychat:generation_tokens_total",
    "raychat:requests_total",
    "raychat:request_success_total",
    "raychat:request_failure_total",
    "raychat:tool_calls_total",
    "raychat:num_requests_running",
    "raychat:num_requests_waiting",
    "raychat:kv_cache_usage_perc",
    "raychat:kv_cache_budget_bytes",
    "raychat:kv_cache_capacity_tokens",
    "raychat:kv_cache_slots",
    "raychat:prefix_cache_cached_tokens",
    "raychat:prefix_cache_queries_total",
    "raychat:prefix_cache_hits_total",
)

# vLLM's buckets, extended downwards for small models on CPU (milliseconds matter there too)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                 60.0, 120.0, 300.0)


class _EngineGauges:
    """Custom collector: the engine gauges and counters as of the last stats pull, one series per replica.
    The prefix-cache counters count prompt tokens, as vLLM's: queries = tokens looked up, hits = tokens reused
    (not prefilled again), so hits/queries is the token hit rate and hits_total the reused tokens."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.stats: list[dict] = []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        specs = (("raychat:num_requests_running", "Requests in the engine's running batch.", "running"),
                 ("raychat:num_requests_waiting", "Requests waiting for a batch slot in the engine.", "waiting"),
                 ("raychat:kv_cache_usage_perc", "KV-cache usage, 0..1 (fraction of slots x positions in use).",
                  "kv_cache_usage"),
                 ("raychat:kv_cache_budget_bytes", "Memory budget the KV cache was sized from.",
                  "kv_cache_budget_bytes"),
                 ("raychat:kv_cache_capacity_tokens", "KV-cache positions allocated (slots x context).",
                  "kv_cache_capacity_tokens"),
                 ("raychat:kv_cache_slots", "KV-cache slots: sequences that can run at once.", "kv_cache_slots"),
                 ("raychat:prefix_cache_cached_tokens", "Tokens held in the KV cache (running and reusable).",
                  "kv_cache_cached_tokens"))
        counters = (("raychat:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                     "prefix_cache_queries"),
                    ("raychat:prefix_cache_hits", "Prompt tokens found in the prefix cache (reused, not prefilled).",
                     "prefix_cache_hits"))
        for family, group in ((GaugeMetricFamily, specs), (CounterMetricFamily, counters)):
            for name, doc, key in group:
                g = family(name, doc, labels=["model_name", "replica"])
                for s in self.stats:
                    g.add_metric([self.model_name, str(s.get("replica", "0"))], float(s.get(key, 0.0)))
                yield g


class ServeMetrics:
    """The serving metrics of one ingress process, in a registry of its own (so tests can build several
    apps in one process and Ray's own collectors never mix in)."""

    def __init__(self, model_name: str):
        disable_created_metrics()  # no `*_created` series (process-wide; vLLM's exposition has none either)
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        lab = ["model_name"]
        r = self.registry
        self.ttft = Histogram("raychat:time_to_first_token_seconds", "Request arrival to first generated token.",
                              lab, buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("raychat:inter_token_latency_seconds", "Time between consecutive generated tokens.",
                             lab, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("raychat:e2e_request_latency_seconds", "Request arrival to its last token.",
                             lab, buckets=E2E_BUCKETS, registry=r)
        self.queue = Histogram("raychat:request_queue_time_seconds",
                               "Request arrival to the engine replica accepting it (Serve routing + queue).",
                               lab, buckets=QUEUE_BUCKETS, registry=r)
        self.prompt_tokens = Counter("raychat:prompt_tokens_total", "Prompt tokens processed.", lab, registry=r)
        self.generation_tokens = Counter("raychat:generation_tokens_total", "Tokens generated (tool output included).",
                                         lab, registry=r)
        self.requests = Counter("raychat:requests_total", "Generation requests received (each ends as one success "
                                "or one failure).", lab, registry=r)
        self.success = Counter("raychat:request_success_total", "Finished requests by finish reason.",
                               lab + ["finished_reason"], registry=r)
        self.failure = Counter("raychat:request_failure_total", "Refused or failed requests by error code.",
                               lab + ["code"], registry=r)
        self.tool_calls = Counter("raychat:tool_calls_total", "Calculator calls made by the model.", lab, registry=r)
        self.engine = _EngineGauges(model_name)
        r.register(self.engine)
        # pre-create the label sets so the series exist (at 0) before the first request
        for m in (self.ttft, self.itl, self.e2e, self.queue, self.prompt_tokens, self.generation_tokens,
                  self.tool_calls, self.requests):
            m.labels(model_name)
        for reason in ("stop", "length", "cancelled"):
            self.success.labels(model_name, reason)

    # --- recording (called by the ingress as a stream goes by)
    def observe_request(self) -> None:
        self.requests.labels(self.model_name).inc()

    def observe_queue(self, seconds: float) -> None:
        self.queue.labels(self.model_name).observe(seconds)

    def observe_first_token(self, seconds: float) -> None:
        self.ttft.labels(self.model_name).observe(seconds)

    def observe_itl(self, seconds: float, n: int = 1) -> None:
        h = self.itl.labels(self.model_name)
        for _ in range(n):
            h.observe(seconds / n)

    def observe_tool_call(self) -> None:
        self.tool_calls.labels(self.model_name).inc()

    def observe_finished(self, finish_reason: str, prompt_tokens: int, completion_tokens: int, e2e_s: float) -> None:
        self.success.labels(self.model_name, finish_reason).inc()
        self.prompt_tokens.labels(self.model_name).inc(prompt_tokens)
        self.generation_tokens.labels(self.model_name).inc(completion_tokens)
        self.e2e.labels(self.model_name).observe(e2e_s)

    def observe_failure(self, code: str) -> None:
        self.failure.labels(self.model_name, code).inc()

    def set_engine_stats(self, stats: list[dict]) -> None:
        self.engine.stats = list(stats)

    def render(self) -> bytes:
        return generate_latest(self.registry)
