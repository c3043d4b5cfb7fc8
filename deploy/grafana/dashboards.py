"""Generate raychat's two Grafana dashboards (training.json, serving.json) next to this file.

    python deploy/grafana/dashboards.py          # rewrite the JSON after changing a panel here

Dashboards are kept as code because Grafana's JSON is ~30 lines per panel of layout boilerplate: here each
panel is one line (title, PromQL, unit), layout is computed, and tests/test_deploy.py checks that the
checked-in JSON equals this script's output and that every metric name in a query is one the code exports
(raychat.serve.metrics / raychat.train.metrics METRIC_NAMES) or one Ray's own dashboards use.

Metric names follow ../shared/docs/CONVENTIONS.md: vLLM-style `raychat:*` for serving (histograms expose
`_bucket/_sum/_count`, counters `_total`), `raychat_train_*` / `raychat_val_bpb` gauges for training. Ratios
(MFU, KV-cache usage) are fractions 0..1, shown as percent. Stdlib only: runs without the venv.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"  # Grafana picks >= 4 scrape intervals: rate() never sees a single sample


# --- panel builders: each returns a dict without gridPos (layout() adds it) ---------------------------------

def _targets(queries: list[tuple[str, str]]) -> list[dict]:
    return [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
             "range": True} for i, (expr, legend) in enumerate(queries)]


def timeseries(title: str, queries: list[tuple[str, str]], unit: str = "short", width: int = 8,
               description: str = "", min_zero: bool = True) -> dict:
    defaults: dict = {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}}
    if min_zero:
        defaults["min"] = 0
    return {"type": "timeseries", "title": title, "description": description, "datasource": DATASOURCE,
            "targets": _targets(queries), "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "_w": width, "_h": 8}


def stat(title: str, expr: str, unit: str = "short", decimals: int | None = None, description: str = "") -> dict:
    defaults: dict = {"unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
            "targets": _targets([(expr, "")]), "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "none", "graphMode": "area", "textMode": "value"},
            "_w": 4, "_h": 4}


def quantiles(title: str, histogram: str, unit: str = "s", scale: str = "", width: int = 8,
              description: str = "") -> dict:
    """p50/p90/p99 of a Prometheus histogram across all replicas (sum the buckets first, then the quantile)."""
    queries = [(f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{RATE}]))){scale}", f"p{p}")
               for q, p in ((0.5, 50), (0.9, 90), (0.99, 99))]
    return timeseries(title, queries, unit=unit, width=width, description=description)


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": 24, "_h": 1}


def layout(panels: list[dict]) -> list[dict]:
    """Left-to-right, wrapping at Grafana's 24 columns; a row panel starts a new line. Assigns ids."""
    out, x, y, line_h = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        p = dict(p)
        w, h = p.pop("_w"), p.pop("_h")
        if p["type"] == "row" or x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        out.append(p)
        x, line_h = x + w, max(line_h, h)
        if p["type"] == "row":
            x, y, line_h = 0, y + h, 0
    return out


def dashboard(uid: str, title: str, description: str, tags: list[str], panels: list[dict]) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["raychat", *tags],
        "editable": True, "graphTooltip": 1, "refresh": "10s", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-3h", "to": "now"}, "timezone": "browser", "timepicker": {},
        "annotations": {"list": []}, "links": [],
        # A datasource variable instead of a fixed uid: the JSON also imports into any other Grafana.
        "templating": {"list": [{"name": "datasource", "label": "Data source", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
                                 "options": [], "includeAll": False, "multi": False}]},
        "panels": layout(panels),
    }


# --- the dashboards ------------------------------------------------------------------------------------------

GPU_PANELS = [
    timeseries("GPU utilization", [
        ("sum by (instance, GpuIndex, GpuDeviceName) (ray_node_gpus_utilization)", "{{instance}} GPU {{GpuIndex}}")],
        unit="percent", width=12, description="Per GPU, from Ray's node metrics (0-100)."),
    timeseries("GPU memory used", [
        ("sum by (instance, GpuIndex) (ray_node_gram_used) * 1024 * 1024", "{{instance}} GPU {{GpuIndex}}")],
        unit="bytes", width=12, description="Ray reports GPU memory in MiB."),
]


def training() -> dict:
    panels = [
        row("Progress"),
        stat("Step", "max(raychat_train_step)", decimals=0),
        stat("Train loss", "max(raychat_train_loss)", decimals=3),
        stat("Validation bpb", "max(raychat_val_bpb)", decimals=4,
             description="Bits per byte on the validation shard: tokenizer-independent, lower is better."),
        stat("Tokens / s", "max(raychat_train_tokens_per_second)", unit="short",
             description="Whole job (all ranks), training loop time only."),
        stat("MFU", "max(raychat_train_mfu)", unit="percentunit", decimals=1,
             description="Model FLOPs per token x tokens/s / peak FLOPs (H100/H200 bf16: 989e12 per GPU)."),
        stat("Step time", "max(raychat_train_step_seconds)", unit="s", decimals=3),
        row("Curves"),
        timeseries("Training loss", [("raychat_train_loss", "{{stage}}")], unit="none", min_zero=False),
        timeseries("Validation bits per byte", [("raychat_val_bpb", "{{stage}}")], unit="none",
                   min_zero=False),
        timeseries("Step", [("raychat_train_step", "{{stage}}")], unit="none"),
        timeseries("Throughput", [("raychat_train_tokens_per_second", "{{stage}}")], unit="short"),
        timeseries("MFU", [("raychat_train_mfu", "{{stage}}")], unit="percentunit"),
        timeseries("Step time", [("raychat_train_step_seconds", "{{stage}}")], unit="s"),
        timeseries("Learning-rate multiplier", [("raychat_train_lr_multiplier", "{{stage}}")], unit="none", width=12,
                   description="The schedule's factor on every param group's initial lr (warmup, warmdown)."),
        timeseries("GRPO mean reward", [("raychat_rl_mean_reward", "{{stage}}")], unit="none", width=12,
                   min_zero=False, description="Mean reward of the last batch of rollouts (rl jobs only)."),
        row("GPUs"),
        *GPU_PANELS,
    ]
    return dashboard("raychat-training", "raychat / training",
                     "Pretraining, SFT and GRPO jobs: loss, validation bpb, throughput, MFU, step time, GPUs.",
                     ["training"], panels)


def serving() -> dict:
    r = RATE
    panels = [
        row("Now"),
        stat("Requests / s", f"sum(rate(raychat:requests_total[{r}]))", decimals=2,
             description="Generation requests received; each ends as one success or one failure below."),
        stat("Running", "sum(raychat:num_requests_running)", decimals=0),
        stat("Waiting", "sum(raychat:num_requests_waiting)", decimals=0),
        stat("KV cache usage", "max(raychat:kv_cache_usage_perc)", unit="percentunit", decimals=1,
             description="Fullest replica: 1.0 = its KV cache is full and new requests wait."),
        stat("Output tokens / s", f"sum(rate(raychat:generation_tokens_total[{r}]))", decimals=0),
        stat("TTFT p99",
             f"histogram_quantile(0.99, sum by (le) (rate(raychat:time_to_first_token_seconds_bucket[{r}])))",
             unit="s", decimals=3),
        row("Requests"),
        timeseries("Finished requests by reason", [
            (f"sum by (finished_reason) (rate(raychat:request_success_total[{r}]))", "{{finished_reason}}")],
            unit="reqps", description="stop = end of turn, length = max_tokens, cancelled = stop/disconnect."),
        timeseries("Refused or failed requests by code", [
            (f"sum by (code) (rate(raychat:request_failure_total[{r}]))", "{{code}}")],
            unit="reqps", description="bad_request, context_length_exceeded, overloaded (429), unauthorized, "
                                      "internal: the error codes of the API and WebSocket protocol."),
        timeseries("Tokens / s", [(f"sum(rate(raychat:prompt_tokens_total[{r}]))", "prompt"),
                                  (f"sum(rate(raychat:generation_tokens_total[{r}]))", "generation")],
                   unit="short"),
        timeseries("Scheduler", [("sum(raychat:num_requests_running)", "running"),
                                 ("sum(raychat:num_requests_waiting)", "waiting")], unit="short",
                   description="Sequences decoding in the engines' batches, and requests queued for a slot."),
        timeseries("KV cache usage", [("raychat:kv_cache_usage_perc", "replica {{replica}}")],
                   unit="percentunit"),
        timeseries("Prefix cache hit rate", [
            (f"sum(rate(raychat:prefix_cache_hits_total[{r}])) / sum(rate(raychat:prefix_cache_queries_total[{r}]))",
             "hit rate")], unit="percentunit",
            description="Share of prompt tokens served from the KV cache instead of prefilled (vLLM's token rate)."),
        timeseries("Prompt tokens reused / s", [(f"sum(rate(raychat:prefix_cache_hits_total[{r}]))", "reused"),
                                                (f"sum(rate(raychat:prefix_cache_queries_total[{r}]))", "looked up")],
                   unit="short"),
        timeseries("KV cache capacity", [("raychat:kv_cache_capacity_tokens", "capacity {{replica}}"),
                                         ("raychat:prefix_cache_cached_tokens", "held {{replica}}")],
                   unit="short", description="Positions allocated from the memory budget (slots x context), "
                                             "and tokens the cache holds (running + reusable prefixes)."),
        timeseries("KV cache budget", [("raychat:kv_cache_budget_bytes", "budget {{replica}}")],
                   unit="bytes", description="The memory budget each replica's cache was sized from."),
        timeseries("KV cache slots", [("raychat:kv_cache_slots", "slots {{replica}}")], unit="short",
                   description="Sequences that can run at once: what fits the budget, at most --max-batch-size."),
        timeseries("Calculator tool calls / s", [(f"sum(rate(raychat:tool_calls_total[{r}]))", "tool calls")],
                   unit="short"),
        row("Latency"),
        quantiles("Time to first token", "raychat:time_to_first_token_seconds", width=12,
                  description="Request arrival to first streamed token (includes queueing and prefill)."),
        quantiles("Inter-token latency", "raychat:inter_token_latency_seconds", width=12),
        quantiles("End-to-end request latency", "raychat:e2e_request_latency_seconds", width=12),
        quantiles("Queue time", "raychat:request_queue_time_seconds", width=12,
                  description="Time a request waits before the engine schedules it."),
        row("Ray Serve"),
        timeseries("Ongoing HTTP requests", [("sum(ray_serve_num_ongoing_http_requests)", "ongoing")],
                   description="Requests in flight at the Serve proxies (WebSocket chats count while open)."),
        timeseries("HTTP requests / s by status", [
            (f"sum by (status_code) (rate(ray_serve_num_http_requests_total{{route!~\"/-/.*\"}}[{r}]))",
             "{{status_code}}")], unit="reqps"),
        timeseries("HTTP errors / s", [
            (f"sum by (error_code) (rate(ray_serve_num_http_error_requests_total[{r}]))", "{{error_code}}")],
            unit="reqps"),
        quantiles("HTTP latency at the proxy", "ray_serve_http_request_latency_ms", unit="ms", width=8),
        timeseries("Healthy replicas", [
            ("sum by (deployment) (ray_serve_deployment_replica_healthy)", "{{deployment}}")], unit="short"),
        timeseries("Queued at the router", [
            ("sum by (deployment) (ray_serve_deployment_queued_queries)", "{{deployment}}")], unit="short",
            description="Requests waiting for a replica slot: sustained > 0 means add replicas."),
        row("GPUs"),
        *GPU_PANELS,
    ]
    return dashboard("raychat-serving", "raychat / serving",
                     "The Serve app: traffic, scheduler and KV cache, TTFT / ITL / E2E / queue latency, "
                     "Ray Serve proxy and replicas, GPUs.", ["serving"], panels)


DASHBOARDS = {"training.json": training, "serving.json": serving}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    for name, build in DASHBOARDS.items():
        path = HERE / name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(render(build))
        tmp.replace(path)  # atomic: Grafana polls this folder
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
